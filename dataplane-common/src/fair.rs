//! Fairness inside a class: every cached flow has a phantom queue of its own, a GCRA at its
//! fair share of the class's rate (the rate divided by the flows that sent in the current or
//! the last epoch of [`EPOCH_NS`]), kept in its flow-cache entry. Where the class's bucket
//! is congested, the flow's standing in its own queue decides its packet (see [`standing`]):
//!
//! - a flow within its share is never signalled early (the AQM passes it over);
//! - a flow over its share while the class's phantom queue holds more than half its burst
//!   gets CE on its ECN-capable packets, so the class's congestion signal reaches the flows
//!   that take more than their share instead of whichever flow sends next;
//! - otherwise the AQM, where on, and the class's bucket decide, as without fairness.
//!
//! The bucket's limit is the same for every flow: an allowance beyond it for flows under
//! their share would let a flood that pauses now and then take a second burst each time
//! (history: docs/design.md). Only the exact path (a class near its rate) keeps these
//! queues: green traffic spent from per-CPU leases, a class well under its rate, needs no
//! fairness.

/// log2 of an epoch in ns (8.4 ms): long enough that a flow of the class sends at least one
/// packet in it while it is active (a window per round trip, or a paced stream), short enough
/// that flows that stopped leave the count within two epochs.
pub const EPOCH_SHIFT: u32 = 23;
/// One epoch, ns.
pub const EPOCH_NS: u64 = 1 << EPOCH_SHIFT;

/// A class's fairness configuration (user space fills it; `bucket` is
/// [`crate::policer::Aqm::NONE`] when off).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FairControl {
    /// The bucket whose rate is shared: [`crate::policer::Aqm::COMMITTED`] or
    /// [`crate::policer::Aqm::PEAK`], or [`crate::policer::Aqm::NONE`] when off.
    pub bucket: u32,
    /// The fair backlog (ns) up to which a flow is within its share: half the bucket's
    /// burst time. Its queue holds at most twice this ([`charge`]).
    pub tolerance_ns: u32,
    /// The class's rate per epoch in units of [`UNIT_BYTES`] (see [`counted_units`]); set
    /// wherever the class counts its flows (fair shares or a shared TCP window), 0 where it
    /// counts none.
    pub epoch_units: u32,
    /// Padding.
    pub _pad: u32,
}

impl Default for FairControl {
    fn default() -> Self {
        FairControl::OFF
    }
}

impl FairControl {
    /// No per-flow fairness.
    pub const OFF: FairControl = FairControl {
        bucket: crate::policer::Aqm::NONE,
        tolerance_ns: 0,
        epoch_units: 0,
        _pad: 0,
    };
    /// The largest tolerance: a flow's queue spans at most a second, so its wrapping 32-bit
    /// time stays unambiguous.
    pub const MAX_TOLERANCE_NS: u32 = 500_000_000;

    /// Whether the class shares its rate among its flows.
    #[inline(always)]
    pub const fn is_on(&self) -> bool {
        self.bucket != crate::policer::Aqm::NONE
    }
}

/// A class's count of its active flows, shared by all CPUs without a lock (a lost count or
/// a racing rollover only blurs the share for an epoch).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FairState {
    /// The epoch `active` counts (see [`epoch_of`]).
    pub epoch: u32,
    /// Flows that sent enough in that epoch (through the exact path) to count.
    pub active: u32,
    /// Flows counted in the epoch before it (0 when the class was idle then).
    pub active_last: u32,
    /// Padding.
    pub _pad: u32,
}

/// The flows a class counted in its epoch, one bit per flow hash ([`seen_bit`]): a flow that
/// RSS or a migrating sender spreads over CPUs has a cache entry on each, and is counted
/// once. Cleared when the epoch rolls over.
pub type SeenFlows = [u64; SEEN_WORDS];

/// Words of [`SeenFlows`]: 256 bits, so that 16 flows collide with about 40%
/// probability (one of them then uncounted), 64 with one or two uncounted on average.
pub const SEEN_WORDS: usize = 4;

/// The word and bit of a flow's hash in [`SeenFlows`].
#[inline(always)]
pub const fn seen_bit(flow_hash: u64) -> (usize, u64) {
    // The hash's top bits, after a multiply that spreads every input bit over them.
    let h = (flow_hash ^ flow_hash >> 32).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56;
    ((h as usize >> 6) % SEEN_WORDS, 1 << (h & 63))
}

/// The epoch of time `now_ns`.
#[inline(always)]
pub const fn epoch_of(now_ns: u64) -> u32 {
    (now_ns >> EPOCH_SHIFT) as u32
}

/// The class's count for `epoch`: `state` itself while it counts that epoch, else a new
/// count that keeps the one it had as the last epoch's when that epoch was the one before.
#[inline(always)]
pub const fn roll(state: FairState, epoch: u32) -> FairState {
    if state.epoch == epoch {
        return state;
    }
    FairState {
        epoch,
        active: 0,
        active_last: if epoch.wrapping_sub(state.epoch) == 1 {
            state.active
        } else {
            0
        },
        _pad: 0,
    }
}

/// The flows the class's rate is shared by: the larger of this epoch's count so far and the
/// last epoch's, at least one.
#[inline(always)]
pub const fn sharing_flows(state: &FairState) -> u32 {
    let n = if state.active > state.active_last {
        state.active
    } else {
        state.active_last
    };
    if n == 0 {
        1
    } else {
        n
    }
}

/// The flows sharing the class's rate as seen at a time in epoch `epoch` (for display): the
/// count of `state` while it is current, its count as the last epoch's one epoch later, and
/// 0 once the class has sent nothing through its exact path for a whole epoch.
pub const fn flows_sharing_at(state: &FairState, epoch: u32) -> u32 {
    match epoch.wrapping_sub(state.epoch) {
        0 => sharing_flows(state),
        1 => {
            if state.active == 0 {
                1
            } else {
                state.active
            }
        }
        _ => 0,
    }
}

/// The flows [`counted_units`] adds to those counted so far.
pub const MORE_FLOWS: u32 = 7;

/// Bytes of a flow's epoch count unit ([`note_sent`]).
pub const UNIT_BYTES: u32 = 512;
/// The fewest units a flow sends in an epoch to count as sharing the class (2 KiB: more than
/// a ping per epoch or a control connection's few messages).
pub const MIN_COUNTED_UNITS: u32 = 4;

/// The units a flow sends in an epoch to count among the flows sharing the class, whose
/// rate is `epoch_units` per epoch and which `sharing` flows shared so far: an eighth of the
/// share each would get with [`MORE_FLOWS`] more, at least [`MIN_COUNTED_UNITS`], at most
/// 255. A flow that sends less takes so little that counting it would only cut the others'
/// shares (and shares that jump whenever a ping falls into an epoch or not). The flows to
/// come let flows that start together count in their first round trips, while each initial
/// window is still small. (A sum, not a bound: one more branch here takes the verifier's
/// count past its limit.)
#[inline(always)]
pub const fn counted_units(epoch_units: u32, sharing: u32) -> u8 {
    // In u64: the divisor cannot wrap to zero (a possible division by zero panics, which
    // the kernel refuses).
    let units = epoch_units as u64 / (sharing as u64 + MORE_FLOWS as u64) / 8;
    if units < MIN_COUNTED_UNITS as u64 {
        MIN_COUNTED_UNITS as u8
    } else if units > 255 {
        255
    } else {
        units as u8
    }
}

/// Notes `bytes` sent by a flow whose epoch count is `flow_units` in the epoch with low bits
/// `flow_epoch`, in `epoch`: the flow's new epoch and count (units of [`UNIT_BYTES`], rounded
/// up, saturating), and whether it has just reached `threshold` units and is to be counted
/// in the class's epoch (once per epoch).
#[inline(always)]
pub const fn note_sent(
    flow_epoch: u8,
    flow_units: u8,
    epoch: u32,
    bytes: u32,
    threshold: u8,
) -> (u8, u8, bool) {
    let before = if flow_epoch == epoch as u8 {
        flow_units
    } else {
        0
    };
    let units = bytes.div_ceil(UNIT_BYTES);
    let after = if units >= 255 {
        255
    } else {
        before.saturating_add(units as u8)
    };
    (epoch as u8, after, before < threshold && after >= threshold)
}

/// Notes `bytes` a flow sent from a CPU's lease, which knew the class in `epoch` with
/// threshold `threshold` (see [`crate::policer::Lease`]): the flow's new fair queue arrival
/// time, epoch and count, and whether it has just reached the threshold and is to be counted
/// ([`note_sent`]); `None` when the lease's epoch is behind the flow's (another CPU's exact
/// path saw it later: its count stays there). A flow back from idle starts its fair queue
/// empty, as [`charge`] would start it: the epoch's start is past.
#[inline(always)]
pub const fn note_leased(
    flow_tat_ns: u32,
    flow_epoch: u8,
    flow_units: u8,
    epoch: u32,
    bytes: u32,
    threshold: u8,
) -> Option<(u32, u8, u8, bool)> {
    let behind = (epoch as u8).wrapping_sub(flow_epoch);
    if behind > u8::MAX / 2 {
        return None;
    }
    let tat = if behind <= 1 {
        flow_tat_ns
    } else {
        ((epoch as u64) << EPOCH_SHIFT) as u32
    };
    let (flow_epoch, units, counted) = note_sent(flow_epoch, flow_units, epoch, bytes, threshold);
    Some((tat, flow_epoch, units, counted))
}

/// Charges a packet that costs `cost_ns` at the flow's share (its cost at the class's rate
/// times the flows sharing it) to the flow's queue, whose theoretical arrival time is
/// `tat_ns` (wrapping ns) and whose last packet fell in the epoch with low bits
/// `flow_epoch`, at `now_ns` in epoch `epoch`. Returns the flow's fair backlog after the
/// packet (ns) and its new arrival time. A flow idle for an epoch or more starts empty (its
/// stored time may be of any age); the backlog never exceeds `cap_ns`, so a flow that
/// slows to its share is within it again after at most `cap_ns`.
#[inline(always)]
pub const fn charge(
    tat_ns: u32,
    flow_epoch: u8,
    epoch: u32,
    now_ns: u64,
    cost_ns: u64,
    cap_ns: u32,
) -> (u32, u32) {
    let now = now_ns as u32;
    let recent = (epoch as u8).wrapping_sub(flow_epoch) <= 1;
    let lead = tat_ns.wrapping_sub(now) as i32;
    let backlog = if recent && lead > 0 { lead as u64 } else { 0 };
    let after = backlog + cost_ns;
    let after = if after > cap_ns as u64 {
        cap_ns
    } else {
        after as u32
    };
    (after, now.wrapping_add(after))
}

/// Where a flow stands in its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Within its share: never signalled early.
    Within,
    /// Over its share while the class is congested: signalled early.
    Over,
    /// Neither: the class's bucket decides.
    Neutral,
}

/// A flow's standing from its fair backlog after the packet (`fair_backlog_ns`, see
/// [`charge`]) and the class's phantom backlog (`class_backlog_ns`, burst `burst_ns`).
#[inline(always)]
pub const fn standing(
    ctl: &FairControl,
    fair_backlog_ns: u32,
    class_backlog_ns: u64,
    burst_ns: u64,
) -> Standing {
    if fair_backlog_ns <= ctl.tolerance_ns {
        Standing::Within
    } else if class_backlog_ns > burst_ns / 2 {
        Standing::Over
    } else {
        Standing::Neutral
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ctl() -> FairControl {
        FairControl {
            bucket: crate::policer::Aqm::COMMITTED,
            tolerance_ns: 5 * MS as u32,
            epoch_units: 205,
            _pad: 0,
        }
    }

    #[test]
    fn epochs_keep_the_last_count_only_when_adjacent() {
        let s = FairState {
            epoch: 7,
            active: 12,
            active_last: 3,
            _pad: 0,
        };
        assert_eq!(roll(s, 7), s);
        let next = roll(s, 8);
        assert_eq!((next.epoch, next.active, next.active_last), (8, 0, 12));
        assert_eq!(sharing_flows(&next), 12);
        let later = roll(s, 10);
        assert_eq!((later.active, later.active_last), (0, 0));
        assert_eq!(sharing_flows(&later), 1);
        // Wrapping epochs.
        let wrapped = roll(
            FairState {
                epoch: u32::MAX,
                active: 4,
                ..s
            },
            0,
        );
        assert_eq!(wrapped.active_last, 4);
        // What a reader sees at later times.
        assert_eq!(flows_sharing_at(&s, 7), 12);
        assert_eq!(flows_sharing_at(&s, 8), 12);
        assert_eq!(flows_sharing_at(&s, 9), 0, "idle for a whole epoch");
    }

    #[test]
    fn flow_hashes_spread_over_the_seen_bits() {
        let mut bits = [0u64; SEEN_WORDS];
        for f in 0..64u64 {
            // Consecutive ports: hashes as FlowKey::hash gives them differ in few bits.
            let (w, b) = seen_bit(0x1234_5678_0000_0000 + f * 0x1_0001);
            bits[w] |= b;
        }
        let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
        assert!(set >= 50, "64 flows set {set} of 256 bits");
    }

    #[test]
    fn a_flow_is_counted_once_per_epoch_and_only_when_it_sends_enough() {
        // 1 Gbit/s: 1 MB per epoch, 2048 units; 16 flows counted: 11 units to count.
        assert_eq!(counted_units(2048, 16), 11);
        // One flow counted so far: an eighth of an eighth of the rate, 32 units (16 kB).
        assert_eq!(counted_units(2048, 1), 32);
        assert_eq!(counted_units(2048, 0), 36);
        // 100 Mbit/s: 105 kB per epoch, 205 units; 2 units, so the least.
        let threshold = counted_units(205, 4);
        assert_eq!(threshold, MIN_COUNTED_UNITS as u8);
        let (mut e, mut u) = (0u8, 0u8);
        let mut counted = 0;
        for _ in 0..10 {
            let (ne, nu, c) = note_sent(e, u, 7, 1514, threshold);
            (e, u) = (ne, nu);
            counted += u32::from(c);
        }
        assert_eq!((e, u, counted), (7, 30, 1), "once, at the second frame");
        // A new epoch starts the count over.
        let (e2, u2, c) = note_sent(e, u, 8, 1514, threshold);
        assert_eq!((e2, u2, c), (8, 3, false));
        // A ping per epoch never counts.
        let (_, u, c) = note_sent(0, 0, 9, 98, threshold);
        assert_eq!((u, c), (1, false));
        // Bounds: at least 4 units, at most 255; one large frame may cross at once.
        assert_eq!(counted_units(10, 100), MIN_COUNTED_UNITS as u8);
        assert_eq!(counted_units(u32::MAX, 0), 255);
        assert_eq!(note_sent(0, 254, 0, 64 * 1024, 255), (0, 255, true));
        assert_eq!(
            note_sent(3, 255, 3, 1514, 255),
            (3, 255, false),
            "saturates"
        );
    }

    #[test]
    fn a_flow_at_its_share_stays_within_and_one_above_it_goes_over() {
        // 4 flows sharing: each packet costs 4 x its class cost.
        let (mut at_share, mut above) = ((0u32, 0u8), (0u32, 0u8));
        let cost = 100_000; // 100 µs per packet at the flow's share
        let mut now = 10 * MS;
        for _ in 0..1000 {
            let epoch = epoch_of(now);
            // One packet per 100 µs: exactly the share.
            let (b, t) = charge(at_share.0, at_share.1, epoch, now, cost, 10 * MS as u32);
            at_share = (t, epoch as u8);
            assert!(standing(&ctl(), b, 9 * MS, 10 * MS) == Standing::Within);
            // Two per 100 µs: twice the share.
            for _ in 0..2 {
                let (b, t) = charge(above.0, above.1, epoch, now, cost, 10 * MS as u32);
                above = (t, epoch as u8);
                let _ = b;
            }
            now += 100_000;
        }
        let (b, _) = charge(above.0, above.1, epoch_of(now), now, cost, 10 * MS as u32);
        assert_eq!(b, 10 * MS as u32, "capped");
        assert_eq!(standing(&ctl(), b, 9 * MS, 10 * MS), Standing::Over);
        assert_eq!(standing(&ctl(), b, 4 * MS, 10 * MS), Standing::Neutral);
    }

    #[test]
    fn leased_packets_count_their_flows_and_a_flow_back_from_idle_starts_empty() {
        // 4 units (2 KiB) to count: two 1500-byte packets in one epoch.
        assert_eq!(
            note_leased(7, 10, 0, 10, 1500, 4),
            Some((7, 10, 3, false)),
            "a recent flow keeps its queue"
        );
        assert_eq!(note_leased(7, 10, 3, 10, 1500, 4), Some((7, 10, 6, true)));
        assert_eq!(
            note_leased(7, 10, 6, 10, 1500, 4),
            Some((7, 10, 9, false)),
            "counted once per epoch"
        );
        assert_eq!(
            note_leased(7, 10, 9, 11, 1500, 4),
            Some((7, 11, 3, false)),
            "a new epoch counts anew"
        );
        let (tat, epoch, units, counted) = note_leased(7, 10, 9, 13, 64, 4).expect("ahead");
        assert_eq!((epoch, units, counted), (13, 1, false));
        assert_eq!(
            tat,
            (13u64 << EPOCH_SHIFT) as u32,
            "idle: the epoch's start"
        );
        let now = (13u64 << EPOCH_SHIFT) + 1_000;
        assert_eq!(
            charge(tat, epoch, 13, now, 500, u32::MAX).0,
            500,
            "so its queue is empty at the exact path"
        );
        assert_eq!(
            note_leased(7, 12, 5, 11, 1500, 4),
            None,
            "a lease behind the flow's epoch leaves it alone"
        );
    }

    #[test]
    fn a_flow_back_from_idle_starts_empty() {
        // A full queue, then two epochs of silence: the stale time is not taken as backlog.
        let now = 100 * EPOCH_NS;
        let (b, t) = charge(0, 0, epoch_of(now), now, 1_000, 10 * MS as u32);
        assert_eq!(b, 1_000);
        let later = now + 3 * EPOCH_NS;
        let (b, _) = charge(
            t.wrapping_add(5 * MS as u32),
            epoch_of(now) as u8,
            epoch_of(later),
            later,
            1_000,
            10 * MS as u32,
        );
        assert_eq!(b, 1_000);
        // Within an epoch the backlog carries over, wrapping time included.
        let wrap = (u32::MAX as u64 + 1) * 3 - 500;
        let (b1, t1) = charge(0, 0, epoch_of(wrap), wrap, 2_000, 10 * MS as u32);
        let (b2, _) = charge(
            t1,
            epoch_of(wrap) as u8,
            epoch_of(wrap + 1_000),
            wrap + 1_000,
            2_000,
            10 * MS as u32,
        );
        assert_eq!((b1, b2), (2_000, 3_000));
    }
}
