//! Turning the demo's answers into plain text: who answered each request,
//! counts per backend, a bar chart. Pure, so it is tested without root.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sandbox::Reply;

/// One request's outcome: the reply, or why none came.
pub(crate) type Answer = Result<Reply, String>;

/// What a failed request shows in the per-request sequence.
pub(crate) const FAILED: &str = "--";

/// The short form of one answer: the backend's name, or [`FAILED`].
pub(crate) fn answer_label(answer: &Answer) -> &str {
    match answer {
        Ok(reply) => &reply.server,
        Err(_) => FAILED,
    }
}

/// Answers of one series of requests, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Every expected backend (0 when it never answered), plus any
    /// unexpected name that answered.
    pub counts: BTreeMap<String, u32>,
    pub total: u32,
    pub failed: u32,
    pub first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new(backends: &[&str], answers: &[Answer]) -> Tally {
        let mut t = Tally {
            counts: backends.iter().map(|b| (b.to_string(), 0)).collect(),
            ..Tally::default()
        };
        for a in answers {
            t.total += 1;
            match a {
                Ok(reply) => *t.counts.entry(reply.server.clone()).or_default() += 1,
                Err(e) => {
                    t.failed += 1;
                    t.first_error.get_or_insert_with(|| e.clone());
                }
            }
        }
        t
    }

    pub(crate) fn answered(&self) -> u32 {
        self.total - self.failed
    }

    /// Backends that never answered.
    pub(crate) fn silent(&self) -> Vec<&str> {
        self.counts
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(b, _)| b.as_str())
            .collect()
    }

    /// What went wrong with this series (`what` names it), empty if
    /// every request was answered and every backend answered at least once.
    pub(crate) fn problems(&self, what: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.failed > 0 {
            out.push(format!(
                "{what}: {} of {} requests failed (first: {})",
                self.failed,
                self.total,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        let silent = self.silent();
        if !silent.is_empty() {
            out.push(format!(
                "{what}: {} never answered in {} requests (backends are picked at random, \
                 so with very few requests this can happen)",
                silent.join(", "),
                self.total
            ));
        }
        out
    }

    /// `b0 10  b1 9  b2 11`.
    pub(crate) fn compact(&self) -> String {
        self.counts
            .iter()
            .map(|(b, n)| format!("{b} {n}"))
            .collect::<Vec<_>>()
            .join("  ")
    }
}

/// One line per backend: name, detail (e.g. its address), a bar of `#`
/// scaled so the largest count is `width` wide (any answer gets at least
/// one `#`), and the count.
pub(crate) fn bar_chart(
    tally: &Tally,
    detail: impl Fn(&str) -> String,
    width: usize,
) -> Vec<String> {
    let max = tally.counts.values().copied().max().unwrap_or(0).max(1);
    let rows: Vec<(&String, String, u32)> = tally
        .counts
        .iter()
        .map(|(b, n)| (b, detail(b), *n))
        .collect();
    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let detail_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let count_w = max.to_string().len();
    rows.iter()
        .map(|(b, d, n)| {
            let len = (*n as usize * width).div_ceil(max as usize);
            let mut line = String::new();
            let _ = write!(
                line,
                "{b:<name_w$}  {d:<detail_w$}  {:<width$}  {n:>count_w$}",
                "#".repeat(len)
            );
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(server: &str) -> Answer {
        let addr = "10.244.0.1:40000".parse().unwrap();
        Ok(Reply {
            server: server.to_string(),
            seen_peer: addr,
            local: addr,
            peer: None,
            from: None,
        })
    }

    #[test]
    fn tally_counts_every_expected_backend() {
        let answers = vec![
            reply("b0"),
            reply("b0"),
            Err("timed out".into()),
            reply("b2"),
        ];
        let t = Tally::new(&["b0", "b1", "b2"], &answers);
        assert_eq!(t.total, 4);
        assert_eq!(t.failed, 1);
        assert_eq!(t.answered(), 3);
        assert_eq!(t.silent(), vec!["b1"]);
        assert_eq!(t.compact(), "b0 2  b1 0  b2 1");
        let problems = t.problems("TCP");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("1 of 4 requests failed (first: timed out)"));
        assert!(problems[1].contains("b1 never answered"));
        assert_eq!(answer_label(&answers[2]), FAILED);
    }

    #[test]
    fn clean_series_has_no_problems() {
        let answers = vec![reply("b0"), reply("b1"), reply("b2")];
        assert!(
            Tally::new(&["b0", "b1", "b2"], &answers)
                .problems("x")
                .is_empty()
        );
    }

    #[test]
    fn bars_scale_to_the_largest_count() {
        let answers: Vec<Answer> = ["b0", "b0", "b0", "b0", "b1"]
            .iter()
            .map(|b| reply(b))
            .collect();
        let t = Tally::new(&["b0", "b1", "b2"], &answers);
        let lines = bar_chart(&t, |b| format!("<{b}>"), 8);
        assert_eq!(
            lines,
            vec![
                "b0  <b0>  ########  4",
                "b1  <b1>  ##        1",
                "b2  <b2>            0",
            ]
        );
    }
}
