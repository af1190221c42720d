//! What the kernel keeps per flow, beside the flow's cached class: TCP's highest sequence
//! (so a retransmission is told from new data), the flow's next hop (so a forwarded flow
//! skips the route lookup) and the flow's own counters, which `dataplane top` reads. A policy
//! change starts every flow's entry afresh.
//!
//! The flow cache is one table of two-entry sets per CPU, all in one array ([`cache_set`]):
//! a lookup is an index computation and one or two loads, where a hash map's lookup (hashing
//! the key again, walking a bucket) cost more than the rest of a cached packet's path
//! together. Each CPU owns its part, so entries are written without atomics and never torn;
//! a flow that RSS (or a migrating sender) spreads over several CPUs has an entry on each,
//! and user space adds them up. A collision costs a classification, never a wrong class (the
//! entry's whole key is compared).
//!
//! Which flow keeps a contested set is decided by [`admit`]: each entry has a score, one up
//! per hit and one down per newcomer refused, and a newcomer only displaces an entry whose
//! score ran out. A flow that sends a packet per newcomer refused in its set holds its entry
//! against a flood of new flows (a scan, a burst of short RPCs), an idle one gives it up
//! after at most [`MAX_CACHE_SCORE`] newcomers, and a set cycled through by three flows
//! still serves two of them, where a direct-mapped table (or an LRU) would miss every time.

/// Flow-cache slots the whole table has at most, as a memory budget (128 bytes each: 32 MiB);
/// each CPU gets a power-of-two part of it.
pub const FLOW_CACHE_BUDGET: u32 = 262_144;
/// log2 of the fewest slots one CPU's table has (machines of more than 64 CPUs exceed the
/// budget rather than cache fewer flows per CPU).
pub const MIN_CACHE_BITS: u32 = 12;
/// log2 of the most slots one CPU's table has.
pub const MAX_CACHE_BITS: u32 = 17;
/// Highest score an entry reaches: a flow that stopped sending loses its entry after at most
/// this many newcomers were refused in its set.
pub const MAX_CACHE_SCORE: u8 = 64;

/// log2 of the slots of each CPU's table on a machine of `cpus` possible CPUs: the largest
/// power of two within the budget's share, clamped to `MIN_CACHE_BITS..=MAX_CACHE_BITS`.
pub const fn cache_bits(cpus: u32) -> u32 {
    let cpus = if cpus == 0 { 1 } else { cpus };
    let share = FLOW_CACHE_BUDGET / cpus;
    let bits = if share == 0 {
        0
    } else {
        31 - share.leading_zeros()
    };
    if bits < MIN_CACHE_BITS {
        MIN_CACHE_BITS
    } else if bits > MAX_CACHE_BITS {
        MAX_CACHE_BITS
    } else {
        bits
    }
}

/// Entries of the whole flow-cache array on a machine of `cpus` possible CPUs.
pub const fn cache_entries(cpus: u32) -> u32 {
    let cpus = if cpus == 0 { 1 } else { cpus };
    cpus << cache_bits(cpus)
}

/// The first of the two slots of the set of a flow whose key hashes to `hash`, in CPU
/// `cpu`'s table of `2^bits` slots (the second is the next one): the hash's halves folded
/// together, times a 64-bit odd constant, top bits (Fibonacci hashing). The key hash alone
/// would not do: [`crate::maps::FlowKey::hash`] is a sum of 32 x 32-bit products, so keys
/// that differ in one field (consecutive addresses) get hashes that grow with the field and
/// share their top bits; without the fold, the multiply still left a sixth of the sets idle
/// that random ones would use.
#[inline(always)]
pub fn cache_set(cpu: u32, bits: u32, hash: u64) -> u32 {
    let h = (hash ^ hash >> 32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let bits = bits.clamp(MIN_CACHE_BITS, MAX_CACHE_BITS);
    (cpu << bits) | (((h >> (65 - bits)) as u32) << 1)
}

/// Which entry of its set a flow that missed takes, given the set's two entries and the
/// policy generation: an entry of another generation (or a slot never filled) first, then
/// one whose score ran out. When both hold flows of this generation that still score, the
/// newcomer is refused (it is classified, not cached) and both scores go down by one.
#[inline(always)]
pub fn admit(
    generation: u32,
    first: &mut crate::maps::FlowEntry,
    second: &mut crate::maps::FlowEntry,
) -> Option<usize> {
    if first.generation != generation {
        return Some(0);
    }
    if second.generation != generation {
        return Some(1);
    }
    if first.state.cache_score == 0 {
        return Some(0);
    }
    if second.state.cache_score == 0 {
        return Some(1);
    }
    first.state.cache_score -= 1;
    second.state.cache_score -= 1;
    None
}

/// Per-flow state, in each flow-cache entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Sequence number just past the highest TCP data the flow has sent (valid with
    /// [`FlowState::TCP_SEEN`]).
    pub tcp_high: u32,
    /// [`FlowState::TCP_SEEN`] | [`FlowState::RETURN_REGISTERED`].
    pub flags: u8,
    /// The entry's claim on its cache set (see [`admit`]): 1 when cached, one up per hit
    /// (to [`MAX_CACHE_SCORE`]), one down per newcomer refused.
    pub cache_score: u8,
    /// Low bits of the epoch of the flow's last packet through its class's exact path (see
    /// [`crate::fair`]).
    pub fair_epoch: u8,
    /// What the flow sent in that epoch, in units of [`crate::fair::UNIT_BYTES`] (see
    /// [`crate::fair::note_sent`]).
    pub fair_epoch_units: u8,
    /// Packets the flow offered.
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
    /// Of those, packets dropped.
    pub dropped_packets: u32,
    /// Packets newly marked CE.
    pub marked_packets: u32,
    /// TCP retransmissions admitted on the repair allowance (see `policer::repair_limit`).
    pub repaired_packets: u32,
    /// The theoretical arrival time (wrapping ns) of the flow's own phantom queue at its fair
    /// share of its class (see [`crate::fair::charge`]).
    pub fair_tat_ns: u32,
    /// What the route lookup answered for the flow's last forwarded packet.
    pub next_hop: NextHop,
}

/// The route lookup's answer for one flow (`bpf_fib_lookup`: egress, MACs, MTU), reused
/// while nothing it depends on can have changed: the route generation (bumped by the daemon on
/// every route, rule, neighbour, address or interface change the kernel reports) is the one it
/// was looked up under, it is younger than [`NextHop::MAX_AGE_JIFFIES`] (a bound on staleness
/// while no daemon runs), the packet carries the DSCP it was looked up with (routing rules may
/// select on it) and fits the egress MTU (a larger one goes to the lookup, which hands it to
/// the kernel to fragment or answer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Route generation of the lookup.
    pub route_generation: u32,
    /// Egress interface; 0 while the flow has no next hop.
    pub egress_ifindex: u32,
    /// The egress interface's counter slot.
    pub egress_slot: u16,
    /// The egress MTU the lookup reported.
    pub mtu: u16,
    /// The DSCP (TOS without the ECN bits) of the lookup.
    pub dscp: u8,
    /// Padding, always zero.
    pub _pad: u8,
    /// Next hop's MAC.
    pub dst_mac: [u8; 6],
    /// Egress interface's MAC.
    pub src_mac: [u8; 6],
    /// Low 32 bits of `jiffies` at the lookup.
    pub looked_up: u32,
}

impl NextHop {
    /// Oldest next hop used without a new lookup, in jiffies: 0.25 s at HZ=1000, 1 s at
    /// HZ=250. Route changes are followed through the route generation within milliseconds;
    /// this bounds how long a flow could follow a stale route while no daemon listens.
    pub const MAX_AGE_JIFFIES: u32 = 256;

    /// Whether a packet of `tot_len` bytes (the lookup's measure: the IP packet) and TOS `tos`
    /// may be forwarded on this next hop at route generation `route_generation` and `jiffies`.
    #[inline(always)]
    pub fn usable(&self, route_generation: u32, jiffies: u32, tos: u8, tot_len: u16) -> bool {
        self.egress_ifindex != 0
            && self.route_generation == route_generation
            && jiffies.wrapping_sub(self.looked_up) < Self::MAX_AGE_JIFFIES
            && self.dscp == tos >> 2
            && tot_len <= self.mtu
    }
}

impl FlowState {
    /// A new entry's state.
    pub const CACHED: FlowState = FlowState {
        tcp_high: 0,
        flags: 0,
        cache_score: 1,
        fair_epoch: 0,
        fair_epoch_units: 0,
        packets: 0,
        bytes: 0,
        dropped_packets: 0,
        marked_packets: 0,
        repaired_packets: 0,
        fair_tat_ns: 0,
        next_hop: NextHop {
            route_generation: 0,
            egress_ifindex: 0,
            egress_slot: 0,
            mtu: 0,
            dscp: 0,
            _pad: 0,
            dst_mac: [0; 6],
            src_mac: [0; 6],
            looked_up: 0,
        },
    };

    /// Notes a cache hit (see [`admit`]).
    #[inline(always)]
    pub fn note_hit(&mut self) {
        if self.cache_score < MAX_CACHE_SCORE {
            self.cache_score += 1;
        }
    }

    /// Adds `other`'s counts (the same flow's entry on another CPU) to these.
    pub fn add_counts(&mut self, other: &FlowState) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.dropped_packets += other.dropped_packets;
        self.marked_packets += other.marked_packets;
        self.repaired_packets += other.repaired_packets;
    }

    /// `tcp_high` holds a sequence number.
    pub const TCP_SEEN: u8 = 1;
    /// The flow's reply direction was registered for window control (entries start afresh
    /// with each policy generation, and so does this).
    pub const RETURN_REGISTERED: u8 = 2;

    /// Notes a TCP segment whose data ends at `end`; true when the segment resends data the
    /// flow already sent (it ends at or before the highest end seen).
    #[inline(always)]
    pub fn note_tcp_data(&mut self, end: u32) -> bool {
        if self.flags & Self::TCP_SEEN == 0 {
            self.flags |= Self::TCP_SEEN;
            self.tcp_high = end;
            return false;
        }
        // Sequence space wraps: compare by signed distance (RFC 793's SEQ_GT).
        if (end.wrapping_sub(self.tcp_high) as i32) > 0 {
            self.tcp_high = end;
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn each_cpu_gets_a_power_of_two_share_of_the_budget() {
        assert_eq!(cache_bits(1), MAX_CACHE_BITS);
        assert_eq!(cache_bits(2), 17);
        assert_eq!(cache_bits(3), 16, "87 381 slots round down to 65 536");
        assert_eq!(cache_bits(4), 16);
        assert_eq!(cache_bits(64), 12);
        assert_eq!(cache_bits(1024), MIN_CACHE_BITS);
        assert_eq!(cache_bits(0), cache_bits(1));
        for cpus in 1..=64 {
            assert!(cache_entries(cpus) <= FLOW_CACHE_BUDGET.max(2 << MAX_CACHE_BITS));
            assert!(cache_entries(cpus) > FLOW_CACHE_BUDGET / 2 || cpus < 2);
        }
    }

    #[test]
    fn sets_stay_inside_their_cpus_part_and_spread_over_it() {
        let bits = 12;
        let mut seen = [0u32; 1 << 11];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..(1 << 15) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let first = cache_set(3, bits, x);
            assert_eq!(first >> bits, 3, "CPU 3's part");
            assert_eq!(first % 2, 0, "a set is an even slot and the next");
            seen[((first & ((1 << bits) - 1)) / 2) as usize] += 1;
        }
        // 16 flows per set on average: every set is used, none holds more than 3×.
        assert!(
            seen.iter().all(|&n| n > 0 && n < 48),
            "{:?}",
            seen.iter().max()
        );
        for h in [0, 1, u64::MAX, x] {
            assert_eq!(
                cache_set(1, 40, h) >> MAX_CACHE_BITS,
                1,
                "bits clamped to the most"
            );
            assert_eq!(
                cache_set(1, 0, h) >> MIN_CACHE_BITS,
                1,
                "bits clamped to the fewest"
            );
        }
    }

    /// One cache set under a sequence of flow ids; whether each packet hit.
    fn run_set(generation: u32, flows: impl Iterator<Item = u16>) -> Vec<bool> {
        use crate::maps::FlowEntry;
        let mut ways = [FlowEntry::default(), FlowEntry::default()];
        flows
            .map(|id| {
                if let Some(w) = ways
                    .iter_mut()
                    .find(|w| w.generation == generation && w.key.src_port == id)
                {
                    w.state.note_hit();
                    return true;
                }
                let [first, second] = &mut ways;
                if let Some(i) = admit(generation, first, second) {
                    ways[i] = FlowEntry {
                        generation,
                        state: FlowState::CACHED,
                        ..FlowEntry::default()
                    };
                    ways[i].key.src_port = id;
                }
                false
            })
            .collect()
    }

    #[test]
    fn three_flows_cycling_through_a_set_keep_two_of_them_cached() {
        let hits = run_set(1, (0..3000).map(|i| (i % 3) as u16));
        let late = &hits[300..];
        let rate = late.iter().filter(|&&h| h).count() as f64 / late.len() as f64;
        assert!((rate - 2.0 / 3.0).abs() < 0.01, "hit rate {rate}");
        assert!(run_set(1, (0..100).map(|i| (i % 2) as u16))[2..]
            .iter()
            .all(|&h| h));
    }

    #[test]
    fn a_flood_of_new_flows_does_not_evict_flows_that_keep_sending() {
        // Two long flows (1 and 2) send a packet each per new flow that tries the set.
        let seq = (0..1000u16).flat_map(|i| [1, 2, 1000 + i]);
        let hits = run_set(1, seq);
        let long: Vec<bool> = hits.chunks(3).skip(1).flat_map(|c| [c[0], c[1]]).collect();
        assert!(long.iter().all(|&h| h), "the long flows always hit");
        assert!(
            hits.chunks(3).all(|c| !c[2]),
            "the new flows are classified, not cached"
        );
        // At half that rate the long flows' claims run out: newcomers get in.
        let seq = (0..1000u16).flat_map(|i| [1, 2, 1000 + 2 * i, 1001 + 2 * i]);
        assert!(run_set(1, seq).chunks(4).any(|c| !c[0] || !c[1]));
    }

    #[test]
    fn an_idle_flow_gives_its_entry_up_and_a_new_policy_takes_every_entry() {
        // Flow 1 goes quiet after 100 packets; flow 2 keeps sending; new flows arrive.
        let mut seq: Vec<u16> = (0..100).flat_map(|_| [1, 2]).collect();
        seq.extend((0..200u16).flat_map(|i| [2, 1000 + i]));
        seq.push(1);
        let hits = run_set(1, seq.iter().copied());
        assert!(!hits[hits.len() - 1], "flow 1 lost its entry to a newcomer");
        assert!(
            hits[200..600].chunks(2).all(|c| c[0]),
            "flow 2 kept its entry"
        );

        let entry = |generation: u32, score: u8| {
            let mut e = crate::maps::FlowEntry {
                generation,
                ..Default::default()
            };
            e.state.cache_score = score;
            e
        };
        let (mut first, mut second) = (entry(1, 9), entry(1, 9));
        assert_eq!(
            admit(2, &mut first, &mut second),
            Some(0),
            "another generation's entry"
        );
        let (mut first, mut second) = (entry(2, 9), entry(2, 0));
        assert_eq!(
            admit(2, &mut first, &mut second),
            Some(1),
            "a score run out"
        );
        let (mut first, mut second) = (entry(2, 9), entry(2, 1));
        assert_eq!(admit(2, &mut first, &mut second), None, "both still score");
        assert_eq!((first.state.cache_score, second.state.cache_score), (8, 0));
    }

    fn hop() -> NextHop {
        NextHop {
            route_generation: 7,
            egress_ifindex: 3,
            egress_slot: 2,
            mtu: 1500,
            dscp: 10,
            _pad: 0,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            looked_up: u32::MAX - 10,
        }
    }

    #[test]
    fn a_next_hop_serves_its_route_generation_dscp_and_mtu_while_young() {
        let h = hop();
        let tos = 10 << 2;
        assert!(h.usable(7, u32::MAX - 10, tos, 1500));
        assert!(
            h.usable(7, 100, tos | 0b11, 64),
            "jiffies wrap; ECN bits do not matter"
        );
        assert!(!h.usable(8, u32::MAX, tos, 64), "routes changed");
        assert!(
            !h.usable(7, u32::MAX, 0, 64),
            "another DSCP may route elsewhere"
        );
        assert!(
            !h.usable(7, u32::MAX, tos, 1501),
            "too large: the lookup decides"
        );
        let old = (u32::MAX - 10).wrapping_add(NextHop::MAX_AGE_JIFFIES);
        assert!(!h.usable(7, old, tos, 64), "too old");
        assert!(h.usable(7, old - 1, tos, 64));
        assert!(!NextHop::default().usable(0, 0, 0, 0), "no next hop yet");
    }

    #[test]
    fn first_segment_is_new_data() {
        let mut f = FlowState::default();
        assert!(!f.note_tcp_data(1000));
        assert_eq!(f.tcp_high, 1000);
    }

    #[test]
    fn resent_data_is_a_retransmission_and_new_data_is_not() {
        let mut f = FlowState::default();
        assert!(!f.note_tcp_data(1448));
        assert!(!f.note_tcp_data(2896));
        assert!(f.note_tcp_data(1448), "resent first segment");
        assert!(
            f.note_tcp_data(2896),
            "resent highest segment (tail loss probe)"
        );
        assert!(!f.note_tcp_data(4344));
        assert_eq!(f.tcp_high, 4344);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut f = FlowState::default();
        assert!(!f.note_tcp_data(u32::MAX - 100));
        assert!(!f.note_tcp_data(1348), "new data across the wrap");
        assert!(
            f.note_tcp_data(u32::MAX - 100),
            "old data from before the wrap"
        );
        assert_eq!(f.tcp_high, 1348);
    }
}
