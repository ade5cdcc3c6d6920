//! The invalid objects of the last pass, kept up to date as objects and
//! plans change instead of being collected from every object again.
//!
//! One report can have several causes (two copies of an object, a Service
//! and its plan), and the result lists it once: each report is counted, and
//! dropped when its last cause goes.

use std::collections::BTreeMap;

use super::types::InvalidObject;

#[derive(Debug, Default)]
pub(super) struct Reports {
    causes: BTreeMap<InvalidObject, usize>,
}

impl Reports {
    pub(super) fn add(&mut self, reports: &[InvalidObject]) {
        for report in reports {
            *self.causes.entry(report.clone()).or_default() += 1;
        }
    }

    pub(super) fn remove(&mut self, reports: &[InvalidObject]) {
        for report in reports {
            if let Some(count) = self.causes.get_mut(report) {
                *count -= 1;
                if *count == 0 {
                    self.causes.remove(report);
                }
            }
        }
    }

    /// Every report once, sorted.
    pub(super) fn iter(&self) -> impl Iterator<Item = &InvalidObject> {
        self.causes.keys()
    }
}

impl FromIterator<InvalidObject> for Reports {
    fn from_iter<I: IntoIterator<Item = InvalidObject>>(reports: I) -> Self {
        let mut causes: BTreeMap<InvalidObject, usize> = BTreeMap::new();
        for report in reports {
            *causes.entry(report).or_default() += 1;
        }
        Reports { causes }
    }
}
