//! The machine's memory latency: nanoseconds per dependent random read
//! (a pointer chase over a random cycle) in working sets of several sizes.
//!
//! It puts the eBPF run time figures in scale: a connect to a random one
//! of many Services makes a chain of dependent map reads (frontend, slot,
//! backend, reverse-translation bucket), and once the maps outgrow the
//! caches each read costs about what a chase step costs here.

use std::time::Instant;

use serde::Serialize;

use super::stats::Rng;

#[derive(Clone, Debug, Serialize)]
pub struct MemLatency {
    pub working_set_mib: usize,
    pub ns_per_read: f64,
}

/// Cache line size: one read per line, so that every step is a new line.
const LINE: usize = 64;
const STEPS: usize = 2_000_000;

/// Measures 1, 4, 16 and 64 MiB working sets (about a second in all).
pub(crate) fn measure(seed: u64) -> Vec<MemLatency> {
    [1, 4, 16, 64]
        .into_iter()
        .map(|mib| MemLatency {
            working_set_mib: mib,
            ns_per_read: chase(mib << 20, seed),
        })
        .collect()
}

fn chase(bytes: usize, seed: u64) -> f64 {
    let stride = LINE / size_of::<usize>();
    let lines = bytes / LINE;
    // A random order of the lines (Fisher-Yates), linked into one cycle.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = Rng::new(seed);
    for i in (1..lines).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    let mut next = vec![0usize; lines * stride];
    for (i, &line) in order.iter().enumerate() {
        next[line * stride] = order[(i + 1) % lines] * stride;
    }
    let mut p = order[0] * stride;
    let t = Instant::now();
    for _ in 0..STEPS {
        p = next[p];
    }
    let ns = t.elapsed().as_nanos() as f64 / STEPS as f64;
    std::hint::black_box(p);
    ns
}
