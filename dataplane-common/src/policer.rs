//! Two-rate three-colour marking (RFC 2698 semantics) and the per-interface link budget,
//! as GCRA ("virtual scheduling"): each bucket is one timestamp, the theoretical arrival
//! time (TAT), so one compare-and-swap updates it exactly across CPUs.
//!
//! Time is in ticks of 1/256 ns so that a 64-byte packet at 400 Gbit/s (1.28 ns) still costs a
//! whole number of ticks with < 0.4% rounding. Timestamps wrap; all comparisons use wrapping
//! differences.

/// Ticks per nanosecond.
pub const TICKS_PER_NS: u64 = 256;

/// A packet's colour.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    /// Within the committed (guaranteed) rate.
    Green = 0,
    /// Above the committed rate, within the peak rate.
    Yellow = 1,
    /// Above the peak rate.
    Red = 2,
}

impl Colour {
    /// The colour numbered `n` (`colour as u32`); anything above is red.
    pub const fn of(n: u32) -> Colour {
        match n {
            0 => Colour::Green,
            1 => Colour::Yellow,
            _ => Colour::Red,
        }
    }
}

/// Number of colours.
pub const COLOURS: usize = 3;

/// Lowest rate a bucket enforces exactly: below it a byte costs more ticks than the 32.32
/// fixed point of [`BucketParams::ticks_per_byte`] holds (2^32 ticks, 16.8 ms).
pub const MIN_RATE_BYTES_PER_SEC: u64 = 60;

/// A rate and burst, precomputed in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketParams {
    /// Cost of one byte in ticks, 32.32 fixed point. 0 means "no limit".
    pub ticks_per_byte: u64,
    /// Burst tolerance in ticks: how far the TAT may run ahead of now.
    pub burst_ticks: u64,
}

impl BucketParams {
    /// No limit: every packet conforms.
    pub const UNLIMITED: BucketParams = BucketParams {
        ticks_per_byte: 0,
        burst_ticks: 0,
    };

    /// A bucket of `rate` bytes per second holding `burst` bytes. `rate` must be > 0.
    pub fn new(rate_bytes_per_sec: u64, burst_bytes: u64) -> BucketParams {
        let ticks_per_sec = 1_000_000_000u128 * u128::from(TICKS_PER_NS);
        let tpb = (ticks_per_sec << 32) / u128::from(rate_bytes_per_sec.max(1));
        let ticks_per_byte = u64::try_from(tpb).unwrap_or(u64::MAX);
        let burst = (u128::from(burst_bytes) * tpb) >> 32;
        BucketParams {
            ticks_per_byte,
            burst_ticks: u64::try_from(burst)
                .unwrap_or(i64::MAX as u64)
                .min(i64::MAX as u64),
        }
    }

    /// Whether this bucket limits anything.
    #[inline(always)]
    pub const fn is_limited(&self) -> bool {
        self.ticks_per_byte != 0
    }

    /// Cost of `bytes` in ticks (no 128-bit multiply: the eBPF target has none).
    #[inline(always)]
    pub const fn cost(&self, bytes: u32) -> u64 {
        let bytes = bytes as u64;
        let whole = self.ticks_per_byte >> 32;
        let frac = self.ticks_per_byte & 0xffff_ffff;
        bytes.wrapping_mul(whole).wrapping_add((bytes * frac) >> 32)
    }
}

/// Converts nanoseconds to ticks.
#[inline(always)]
pub const fn ns_to_ticks(ns: u64) -> u64 {
    ns.wrapping_mul(TICKS_PER_NS)
}

/// How far `tat` runs ahead of `now` (0 when it lies in the past).
#[inline(always)]
const fn backlog(tat: u64, now: u64) -> u64 {
    let d = tat.wrapping_sub(now) as i64;
    if d > 0 {
        d as u64
    } else {
        0
    }
}

/// GCRA test: the new TAT if a packet of cost `cost` conforms with tolerance `limit`,
/// `None` if it does not.
#[inline(always)]
pub const fn gcra_admit(tat: u64, now: u64, cost: u64, limit: u64) -> Option<u64> {
    let b = backlog(tat, now);
    if b + cost > limit {
        None
    } else {
        Some(now.wrapping_add(b + cost))
    }
}

/// Tolerance a TCP retransmission sees: twice the bucket's burst. A policer that drops the
/// retransmission of a segment it dropped before leaves the sender only its retransmission
/// timeout (200 ms at least on Linux), the loss storm that makes TCP collapse behind
/// policers. Retransmissions are still charged, so the long-run rate stays exact; the second
/// burst bounds what a sender that resends on purpose can take above it.
#[inline(always)]
pub const fn repair_limit(burst_ticks: u64) -> u64 {
    burst_ticks.saturating_mul(2)
}

/// GCRA update that always admits (guaranteed traffic on the link budget), capping the
/// backlog at `cap` so an over-committed link recovers once the excess stops.
#[inline(always)]
pub const fn gcra_force(tat: u64, now: u64, cost: u64, cap: u64) -> u64 {
    let b = backlog(tat, now) + cost;
    now.wrapping_add(if b > cap { cap } else { b })
}

/// Link-budget tolerance for priority `priority` (0..=7): lower priorities may only use the
/// lower part of the burst, so when the budget runs low they lose first.
#[inline(always)]
pub const fn priority_limit(burst_ticks: u64, priority: u8) -> u64 {
    let p = if priority > 7 { 7 } else { priority } as u64;
    burst_ticks / 8 * (p + 1)
}

/// Active queue management on a class's phantom queue. The enforcing bucket's backlog
/// (TAT − now) is the time a packet would wait in a shaper at the bucket's rate: its phantom
/// sojourn time. While that sojourn is above `target_ns`, one packet per `interval_ns` is
/// signalled (CE if ECN-capable, else dropped): senders get one signal per reaction time
/// instead of losing the whole burst that fills the bucket, and no packet is held.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Aqm {
    /// Phantom sojourn time (ns) above which packets are signalled.
    pub target_ns: u64,
    /// Least time between two signals (ns).
    pub interval_ns: u64,
    /// Which bucket's phantom queue: [`Aqm::COMMITTED`], [`Aqm::PEAK`] or [`Aqm::NONE`].
    pub bucket: u32,
    /// Padding.
    pub _pad: u32,
}

impl Default for Aqm {
    fn default() -> Self {
        Aqm::OFF
    }
}

impl Aqm {
    /// The committed bucket's phantom queue.
    pub const COMMITTED: u32 = 0;
    /// The peak bucket's phantom queue.
    pub const PEAK: u32 = 1;
    /// No AQM.
    pub const NONE: u32 = u32::MAX;
    /// No early signals: the buckets refuse only when full.
    pub const OFF: Aqm = Aqm {
        target_ns: 0,
        interval_ns: 0,
        bucket: Aqm::NONE,
        _pad: 0,
    };
}

/// The AQM's state per class, shared by all CPUs and updated without a lock: two CPUs racing
/// may both signal once, which errs towards one extra signal.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AqmState {
    /// When (ns) the next signal may come while signalling.
    pub next_signal_ns: u64,
    /// 1 while the sojourn is above target.
    pub signalling: u32,
    /// Padding.
    pub _pad: u32,
}

/// Whether a signal is due for a packet that finds a phantom sojourn of `sojourn_ns` at
/// `now_ns` (it is given only if the bucket takes the packet: see [`aqm_signalled`]). Ends a
/// signalling episode when the sojourn is back at or below the target.
#[inline(always)]
pub fn aqm_due(aqm: &Aqm, state: &mut AqmState, sojourn_ns: u64, now_ns: u64) -> bool {
    if sojourn_ns <= aqm.target_ns {
        state.signalling = 0;
        return false;
    }
    state.signalling == 0 || (now_ns.wrapping_sub(state.next_signal_ns) as i64) >= 0
}

/// Records a signal given at `now_ns`: the next may come one interval later.
#[inline(always)]
pub fn aqm_signalled(aqm: &Aqm, state: &mut AqmState, now_ns: u64) {
    state.signalling = 1;
    state.next_signal_ns = now_ns.wrapping_add(aqm.interval_ns);
}

/// The phantom backlog of a bucket in ns: how far its TAT runs ahead of `now` (ticks).
#[inline(always)]
pub const fn backlog_ns(tat: u64, now: u64) -> u64 {
    backlog(tat, now) / TICKS_PER_NS
}

/// Per-class policer configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrTcm {
    /// Committed rate and burst (CIR/CBS); unlimited = no guarantee, never green.
    pub committed: BucketParams,
    /// Peak rate and burst (PIR/PBS); unlimited = never red.
    pub peak: BucketParams,
}

/// The TAT of a bucket whose rate changes from `old` to `new` at `now` (ticks): the backlog
/// it holds stays the same in bytes (its lead scales with the cost of a byte), at most the
/// new burst. Without it a bucket slowed down and then sped up would keep a lead of many
/// times its new burst and refuse everything until time caught up.
pub fn rescale_tat(tat: u64, now: u64, old: &BucketParams, new: &BucketParams) -> u64 {
    let lead = backlog(tat, now);
    if lead == 0 || !old.is_limited() || !new.is_limited() {
        return now.wrapping_add(lead.min(new.burst_ticks));
    }
    let scaled = u128::from(lead) * u128::from(new.ticks_per_byte) / u128::from(old.ticks_per_byte);
    let scaled = u64::try_from(scaled).unwrap_or(u64::MAX);
    now.wrapping_add(scaled.min(new.burst_ticks))
}

/// Token leases: a CPU takes a slice of a class's green budget from the shared buckets with
/// one compare-and-swap per bucket and spends it on its own, without reading the clock or
/// touching the shared line again until the slice runs out.
///
/// Accuracy: a lease is reserved in the shared buckets before any of it is spent, so a
/// class never admits more than its buckets allow (no over-admission, on any number of
/// CPUs). What a CPU holds unspent when its traffic moves elsewhere is admitted later or not
/// at all: the class may fall short of its rate by at most one lease per CPU (`bytes` × CPUs)
/// per such move. Leases are only taken while a bucket's phantom backlog stays under its
/// `*_limit_ticks` (a quarter of its burst, and half its AQM or window target), so a class
/// running near its rate, where the marks, early drops and window decisions fall, takes
/// every packet through the exact per-packet path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseParams {
    /// Bytes per lease; 0: no leases (the class has no committed rate, or its limits leave
    /// no room for a lease worth taking).
    pub bytes: u32,
    /// Padding.
    pub _pad: u32,
    /// Largest committed backlog (ticks) a lease may leave behind.
    pub committed_limit_ticks: u64,
    /// Largest peak backlog (ticks) a lease may leave behind (unused without a peak rate).
    pub peak_limit_ticks: u64,
}

impl LeaseParams {
    /// No leases: every packet takes the exact path.
    pub const OFF: LeaseParams = LeaseParams {
        bytes: 0,
        _pad: 0,
        committed_limit_ticks: 0,
        peak_limit_ticks: 0,
    };
    /// The largest lease: what one CPU may hold unspent.
    pub const MAX_BYTES: u32 = 64 * 1024;
    /// The smallest lease worth taking: three full frames per clock read.
    pub const MIN_BYTES: u32 = 3 * 1514;

    /// Leases for a class of `committed` bucket (holding `committed_burst_bytes`) and `peak`
    /// bucket, whose phantom queues are watched with targets `targets_ns` (committed, peak;
    /// `u64::MAX` where nothing watches): a sixteenth of the committed burst, at most
    /// [`Self::MAX_BYTES`], and small enough that a lease fits twice under each limit.
    pub fn for_class(
        committed: &BucketParams,
        committed_burst_bytes: u64,
        peak: &BucketParams,
        targets_ns: [u64; 2],
    ) -> LeaseParams {
        if !committed.is_limited() {
            return LeaseParams::OFF;
        }
        let limit = |bucket: &BucketParams, target_ns: u64| {
            let target = target_ns.saturating_mul(TICKS_PER_NS) / 2;
            (bucket.burst_ticks / 4).min(target)
        };
        let committed_limit_ticks = limit(committed, targets_ns[0]);
        let peak_limit_ticks = limit(peak, targets_ns[1]);
        // The bytes whose cost is half of `limit` on `bucket`.
        let fitting = |bucket: &BucketParams, limit: u64| {
            let bytes = (u128::from(limit / 2) << 32) / u128::from(bucket.ticks_per_byte.max(1));
            u64::try_from(bytes).unwrap_or(u64::MAX)
        };
        let mut bytes = (committed_burst_bytes / 16)
            .min(u64::from(Self::MAX_BYTES))
            .min(fitting(committed, committed_limit_ticks));
        if peak.is_limited() {
            bytes = bytes.min(fitting(peak, peak_limit_ticks));
        }
        if bytes < u64::from(Self::MIN_BYTES) {
            return LeaseParams::OFF;
        }
        LeaseParams {
            bytes: bytes as u32,
            _pad: 0,
            committed_limit_ticks,
            peak_limit_ticks,
        }
    }

    /// Whether the class takes leases.
    #[inline(always)]
    pub const fn is_on(&self) -> bool {
        self.bytes != 0
    }
}

/// One CPU's lease of a class: the bytes left of it, and what the CPU's last exact-path
/// packet of the class knew of its flow count, so that the packets spent from the lease count
/// their flows too (see [`crate::fair::note_leased`]). Without that, a class held under its
/// rate (where its window control keeps it) counted only the flows whose packets happened to
/// find the lease empty: one of 16 at 1 Gbit/s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// Bytes left of the lease.
    pub left: u32,
    /// The epoch ([`crate::fair::epoch_of`]) of the CPU's last exact-path packet of the class.
    pub epoch: u32,
    /// The units a flow sends in that epoch to count ([`crate::fair::counted_units`]); 0 when
    /// the class does not count its flows.
    pub count_units: u32,
    /// Padding.
    pub _pad: u32,
}

/// Spends `bytes` of a CPU's lease holding `left`: the bytes left after, or `None` when the
/// lease cannot cover the packet (the packet takes the exact path).
#[inline(always)]
pub const fn lease_spend(left: u32, bytes: u32) -> Option<u32> {
    if left >= bytes {
        Some(left - bytes)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single-threaded reference trTCM over the GCRA primitives, as the kernel runs it.
    fn mark(p: &TrTcm, tats: &mut (u64, u64), now: u64, bytes: u32) -> Colour {
        if p.peak.is_limited() {
            match gcra_admit(tats.1, now, p.peak.cost(bytes), p.peak.burst_ticks) {
                Some(t) => tats.1 = t,
                None => return Colour::Red,
            }
        }
        if !p.committed.is_limited() {
            return Colour::Yellow;
        }
        match gcra_admit(
            tats.0,
            now,
            p.committed.cost(bytes),
            p.committed.burst_ticks,
        ) {
            Some(t) => {
                tats.0 = t;
                Colour::Green
            }
            None => Colour::Yellow,
        }
    }

    #[test]
    fn cost_matches_rate_to_a_part_in_a_thousand() {
        for rate in [125_000u64, 1_250_000_000, 50_000_000_000] {
            let b = BucketParams::new(rate, 10_000);
            let expect = 1500.0 * 256e9 / rate as f64;
            let got = b.cost(1500) as f64;
            assert!(
                (got - expect).abs() / expect < 1e-3,
                "rate {rate}: {got} vs {expect}"
            );
        }
    }

    #[test]
    fn the_lowest_rate_still_costs_exactly() {
        let b = BucketParams::new(MIN_RATE_BYTES_PER_SEC, 1514);
        let expect = 1514.0 * 256e9 / MIN_RATE_BYTES_PER_SEC as f64;
        let got = b.cost(1514) as f64;
        assert!((got - expect).abs() / expect < 1e-6, "{got} vs {expect}");
        // One below: the cost saturates, which the config refuses to let happen.
        let below = BucketParams::new(MIN_RATE_BYTES_PER_SEC - 1, 1514);
        assert_eq!(below.ticks_per_byte, u64::MAX);
    }

    #[test]
    fn admitted_rate_converges_to_committed_and_peak() {
        // 1 Gbit/s committed, 2 Gbit/s peak, offered 8 Gbit/s of 1000-byte packets for 1 s.
        let p = TrTcm {
            committed: BucketParams::new(125_000_000, 20_000),
            peak: BucketParams::new(250_000_000, 20_000),
        };
        let mut tats = (0, 0);
        let (mut green, mut yellow) = (0u64, 0u64);
        let step_ns = 1000;
        for i in 0..1_000_000u64 {
            match mark(&p, &mut tats, ns_to_ticks(i * step_ns), 1000) {
                Colour::Green => green += 1000,
                Colour::Yellow => yellow += 1000,
                Colour::Red => {}
            }
        }
        let within = |got: u64, want: f64| (got as f64 - want).abs() / want < 0.001;
        assert!(within(green, 125_000_000.0), "green {green}");
        assert!(
            within(green + yellow, 250_000_000.0),
            "green+yellow {}",
            green + yellow
        );
    }

    #[test]
    fn burst_is_admitted_at_once_then_rate() {
        let b = BucketParams::new(1_000_000, 10_000);
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..100 {
            if let Some(t) = gcra_admit(tat, 0, b.cost(1000), b.burst_ticks) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10, "a full 10 kB burst, no more");
    }

    #[test]
    fn timestamps_wrap_cleanly() {
        let b = BucketParams::new(1_000_000, 2_000);
        let now = u64::MAX - 10;
        let tat = gcra_admit(now, now, b.cost(1000), b.burst_ticks).expect("first fits");
        assert!(tat < now, "wrapped");
        assert!(gcra_admit(tat, now, b.cost(1000), b.burst_ticks).is_some());
        assert!(gcra_admit(
            tat.wrapping_add(b.cost(1000)),
            now,
            b.cost(1000),
            b.burst_ticks
        )
        .is_none());
    }

    #[test]
    fn aqm_signals_once_per_interval_while_above_target() {
        extern crate std;
        let aqm = Aqm {
            target_ns: 1_000,
            interval_ns: 100_000,
            bucket: Aqm::COMMITTED,
            _pad: 0,
        };
        let signal = |st: &mut AqmState, sojourn, t| {
            let due = aqm_due(&aqm, st, sojourn, t);
            if due {
                aqm_signalled(&aqm, st, t);
            }
            due
        };
        let mut st = AqmState::default();
        assert!(!(0..100).any(|t| signal(&mut st, 1_000, t * 1000)));
        // A due signal not given (the bucket refused the packet) stays due.
        assert!(aqm_due(&aqm, &mut st, 5_000, 100));
        assert!(aqm_due(&aqm, &mut st, 5_000, 200));
        // Above target: at once, then one per interval.
        let signals: std::vec::Vec<u64> = (200_000..1_200_000)
            .step_by(100)
            .filter(|&t| signal(&mut st, 5_000, t))
            .collect();
        assert_eq!(signals.len(), 10, "{signals:?}");
        assert_eq!(signals[0], 200_000, "the first without delay");
        assert!(signals.windows(2).all(|w| w[1] - w[0] == 100_000));
        // Below target: none; back above: at once.
        assert!(!signal(&mut st, 10, 1_200_000));
        assert!(signal(&mut st, 5_000, 1_200_100));
        // Time wraps.
        let mut st = AqmState::default();
        assert!(signal(&mut st, 5_000, u64::MAX - 10));
        assert!(!signal(&mut st, 5_000, 5));
        assert!(signal(&mut st, 5_000, 100_000));
    }

    #[test]
    fn forced_updates_cap_the_backlog() {
        assert_eq!(gcra_force(0, 1000, 50, 100), 1050);
        assert_eq!(gcra_force(1090, 1000, 50, 100), 1100);
    }

    #[test]
    fn priority_limits_grow_with_priority() {
        let limits: [u64; 8] = core::array::from_fn(|p| priority_limit(800, p as u8));
        assert_eq!(limits[0], 100);
        assert_eq!(limits[7], 800);
        assert!(limits.windows(2).all(|w| w[0] < w[1]));
    }
    #[test]
    fn leases_are_a_sixteenth_of_the_burst_under_the_limits() {
        let none = [u64::MAX, u64::MAX];
        // 1 Gbit/s, 1.25 MB burst: capped at 64 KiB.
        let c = BucketParams::new(125_000_000, 1_250_000);
        let l = LeaseParams::for_class(&c, 1_250_000, &BucketParams::UNLIMITED, none);
        assert_eq!(l.bytes, LeaseParams::MAX_BYTES);
        assert_eq!(l.committed_limit_ticks, c.burst_ticks / 4);
        assert!(2 * c.cost(l.bytes) <= l.committed_limit_ticks, "fits twice");
        // 10 Gbit/s with a 1 ms AQM target: half the target holds 0.5 ms = 625 000 B.
        let c = BucketParams::new(1_250_000_000, 12_500_000);
        let l = LeaseParams::for_class(
            &c,
            12_500_000,
            &BucketParams::UNLIMITED,
            [1_000_000, u64::MAX],
        );
        assert_eq!(l.committed_limit_ticks, 500_000 * TICKS_PER_NS);
        assert_eq!(l.bytes, LeaseParams::MAX_BYTES);
        // 100 Mbit/s with the 1 ms target: a lease would be 3 125 B, too small to take.
        let c = BucketParams::new(12_500_000, 125_000);
        let l =
            LeaseParams::for_class(&c, 125_000, &BucketParams::UNLIMITED, [1_000_000, u64::MAX]);
        assert_eq!(l, LeaseParams::OFF);
        // Without a target it is a sixteenth of the burst.
        let l = LeaseParams::for_class(&c, 125_000, &BucketParams::UNLIMITED, none);
        assert_eq!(l.bytes, 125_000 / 16);
        // A narrow peak bucket shrinks it.
        let p = BucketParams::new(12_500_000, 40_000);
        let l = LeaseParams::for_class(&c, 125_000, &p, none);
        assert_eq!(l.peak_limit_ticks, p.burst_ticks / 4);
        assert!(2 * p.cost(l.bytes) <= l.peak_limit_ticks);
        assert!(l.bytes < 125_000 / 16);
        // No committed rate: never green, no leases.
        let l = LeaseParams::for_class(&BucketParams::UNLIMITED, 0, &p, none);
        assert!(!l.is_on());
    }

    #[test]
    fn a_lease_covers_whole_packets_only() {
        assert_eq!(lease_spend(3000, 1500), Some(1500));
        assert_eq!(lease_spend(1500, 1500), Some(0));
        assert_eq!(lease_spend(1499, 1500), None);
        assert_eq!(lease_spend(0, 64), None);
    }

    #[test]
    fn a_rescaled_bucket_keeps_its_backlog_in_bytes() {
        let slow = BucketParams::new(1_000, 100_000);
        let fast = BucketParams::new(100_000, 100_000);
        let now = 1_000_000;
        // 50 000 bytes queued at 1 000 B/s: 50 s ahead; at 100 000 B/s the same bytes are 0.5 s.
        let tat = now + slow.cost(50_000);
        let rescaled = rescale_tat(tat, now, &slow, &fast);
        assert!(rescaled.abs_diff(now + fast.cost(50_000)) <= 1);
        // Slowing down can't put the lead beyond the new burst.
        let full = now + fast.burst_ticks;
        assert_eq!(
            rescale_tat(full, now, &fast, &slow),
            now + slow.cost(100_000).min(slow.burst_ticks)
        );
        // A bucket with no backlog stays so.
        assert_eq!(rescale_tat(now - 5, now, &slow, &fast), now);
    }
}
