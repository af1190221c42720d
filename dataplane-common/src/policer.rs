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

/// Number of colours.
pub const COLOURS: usize = 3;

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

/// Per-class policer configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrTcm {
    /// Committed rate and burst (CIR/CBS); unlimited = no guarantee, never green.
    pub committed: BucketParams,
    /// Peak rate and burst (PIR/PBS); unlimited = never red.
    pub peak: BucketParams,
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
}
