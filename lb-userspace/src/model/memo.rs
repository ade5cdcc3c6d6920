//! Results derived from API objects, remembered by object identity.
//!
//! Reflector stores hand out the same `Arc` for an object until it
//! changes, so pointer equality means "unchanged". The memo keeps the `Arc`
//! it derived from, so the pointer cannot be freed and reused by another
//! object while the entry lives.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::FoldHashMap;

/// Something derived from one object, holding that object.
pub(super) trait Derived {
    type Object;
    fn object(&self) -> &Arc<Self::Object>;
}

/// One derived value per object of the last input, in input order.
#[derive(Debug)]
pub(super) struct ByObject<V: Derived> {
    /// The objects of `entries`, apart: comparing them reads one
    /// contiguous list rather than every value (a cache miss each).
    objects: Vec<Arc<V::Object>>,
    entries: Vec<Arc<V>>,
}

/// What one `update` changed: the values derived for new objects and those
/// of objects gone. An object that only moved in the input is in neither.
#[derive(Debug)]
pub(super) struct Changes<V> {
    pub added: Vec<Arc<V>>,
    pub removed: Vec<Arc<V>>,
}

impl<V: Derived> Default for ByObject<V> {
    fn default() -> Self {
        Self {
            objects: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl<V> Changes<V> {
    pub(super) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl<V: Derived> ByObject<V> {
    /// Derives a value for every object, reusing the last pass' value for an
    /// object seen then; values of objects gone are dropped. Objects at the
    /// same place as last time cost a pointer comparison, without hashing
    /// or rebuilding the list (sources list objects in a stable order, so
    /// one change touches one place).
    pub(super) fn update(
        &mut self,
        objects: &[Arc<V::Object>],
        mut derive: impl FnMut(&Arc<V::Object>) -> V,
    ) -> Changes<V> {
        let common = self.objects.len().min(objects.len());
        let moved: Vec<usize> = (0..common)
            .filter(|&i| !Arc::ptr_eq(&self.objects[i], &objects[i]))
            .collect();
        let mut changes = Changes {
            added: Vec::new(),
            removed: Vec::new(),
        };
        if moved.is_empty() && self.entries.len() == objects.len() {
            return changes;
        }

        // Values no longer at their object's place, by object pointer.
        let mut loose: FoldHashMap<*const V::Object, Arc<V>> = FoldHashMap::default();
        let displaced = moved.iter().map(|&i| &self.entries[i]);
        for value in displaced.chain(&self.entries[common..]) {
            match loose.entry(Arc::as_ptr(value.object())) {
                // One object listed twice: its second value is dropped and
                // derived anew.
                Entry::Occupied(_) => changes.removed.push(value.clone()),
                Entry::Vacant(v) => {
                    v.insert(value.clone());
                }
            }
        }
        let mut place = |object: &Arc<V::Object>| {
            loose.remove(&Arc::as_ptr(object)).unwrap_or_else(|| {
                let value = Arc::new(derive(object));
                changes.added.push(value.clone());
                value
            })
        };
        self.entries.truncate(objects.len());
        self.objects.truncate(objects.len());
        for i in moved {
            self.entries[i] = place(&objects[i]);
            self.objects[i] = objects[i].clone();
        }
        for object in &objects[common..] {
            let value = place(object);
            self.entries.push(value);
            self.objects.push(object.clone());
        }
        changes.removed.extend(loose.into_values());
        changes
    }

    /// Every value, in the order of the last input.
    pub(super) fn all(&self) -> &[Arc<V>] {
        &self.entries
    }

    pub(super) fn clear(&mut self) {
        self.objects.clear();
        self.entries.clear();
    }
}
