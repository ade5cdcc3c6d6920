//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table
//! of prime size in which every backend owns about the same number of
//! entries, filled so that adding or removing one backend moves about 1/N
//! of the entries. Every node computes the same table from the same
//! backends (the hash below is fixed, and backends are taken in sorted
//! order), so a flow reaches the same backend whichever node it arrives at.

/// Whether `n` is prime (trial division: table sizes are at most a few
/// hundred thousand, checked once at start).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// FNV-1a, 64 bits, from a given basis: fixed, so every node agrees.
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The table: entry i holds an index into `backends` (each a backend's
/// identity, e.g. its address and port bytes). `size` must be prime and
/// `backends` non-empty and without duplicates.
pub fn table(backends: &[Vec<u8>], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    assert!(!backends.is_empty(), "a Maglev table needs backends");
    let m = u64::from(size);
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, b) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, b) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entries = vec![u32::MAX; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            // Each backend takes its next preferred entry that is free. The
            // permutation visits every entry (size is prime, skip < size),
            // so this ends.
            let mut c = (offset + next[i] * skip) % m;
            while entries[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entries[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == entries.len() {
                break 'fill;
            }
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![10, 0, 0, i, 0x1f, 0x90]).collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(251) && is_prime(16_381) && is_prime(65_537));
        assert!(!is_prime(0) && !is_prime(1) && !is_prime(16_383) && !is_prime(65_536));
    }

    #[test]
    fn every_entry_filled_and_balanced() {
        let b = backends(7);
        let t = table(&b, 16_381);
        let mut owned = [0usize; 7];
        for e in &t {
            owned[*e as usize] += 1;
        }
        let fair = 16_381 / 7;
        for o in owned {
            assert!(o.abs_diff(fair) <= 1, "{owned:?}");
        }
    }

    #[test]
    fn deterministic() {
        assert_eq!(table(&backends(5), 251), table(&backends(5), 251));
    }

    #[test]
    fn one_backend_more_moves_about_one_nth() {
        let before = table(&backends(9), 16_381);
        let after = table(&backends(10), 16_381);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Ideal: 1/10 of the entries go to the new backend.
        let ideal = 16_381 / 10;
        assert!(moved >= ideal, "moved {moved}");
        assert!(moved < ideal * 13 / 10, "moved {moved}, ideal {ideal}");
        // Entries that moved went to the new backend, nearly all.
        let to_new = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b && **b == 9)
            .count();
        assert!(to_new * 10 >= moved * 9, "{to_new} of {moved}");
    }
}
