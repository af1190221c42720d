//! What one read of memory the CPU caches do not hold costs on this machine: the floor under
//! any per-flow state that many flows visited in turn must read.

use std::time::Instant;

/// Bytes of each entry visited (one flow-cache entry).
const ENTRY: usize = core::mem::size_of::<dataplane_common::maps::FlowEntry>();

/// Nanoseconds per visit when `visits` visits go through the `ENTRY`-byte entries of a
/// `bytes`-long table in one random cycle, each visit reading the entry's first word (the next
/// entry's index, so no two visits overlap, as one packet's flow lookup follows the last's)
/// and counting in its last (a flow's key and its counters lie at the two ends of its entry).
/// User space on 4 KiB pages, like the map's vmalloc area; the calling thread should be
/// pinned.
pub fn entry_visit_ns(bytes: usize, visits: usize) -> f64 {
    let words_per_entry = ENTRY / 8;
    let entries = (bytes / ENTRY).max(2);
    // Sattolo's shuffle: a permutation that is one cycle through every entry.
    let mut next: Vec<u32> = (0..entries as u32).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..entries).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % i as u64) as usize;
        next.swap(i, j);
    }
    let mut table = vec![0u64; entries * words_per_entry];
    for (i, n) in next.iter().enumerate() {
        table[i * words_per_entry] = u64::from(*n);
    }
    let mut chase = |count: usize| {
        let mut at = 0usize;
        for _ in 0..count {
            let entry = at * words_per_entry;
            at = table[entry] as usize;
            table[entry + words_per_entry - 1] += 1;
        }
        std::hint::black_box(at)
    };
    // One lap first, so every page is present and the timed reads are of memory only.
    chase(entries);
    let start = Instant::now();
    chase(visits);
    start.elapsed().as_secs_f64() * 1e9 / visits as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_past_the_caches_reads_slower_than_one_inside_them() {
        let small = entry_visit_ns(16 << 10, 200_000);
        let large = entry_visit_ns(64 << 20, 200_000);
        assert!(
            large > 2.0 * small,
            "16 KiB: {small:.1} ns, 64 MiB: {large:.1} ns per read"
        );
    }
}
