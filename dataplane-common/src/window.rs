//! TCP window control: a class whose flows send faster than its rate gets their receive
//! windows narrowed on the ACKs that return through the gateway, so TCP slows down before
//! the policer has to drop anything. A window-limited sender sends at window / RTT and
//! queues the rest in its own socket buffer: the network path gains no queue, and the
//! sender loses no packets (the failure of TCP behind plain policers).
//!
//! One window per class, in bytes, is shared by the flows of the class: each flow's ACKs
//! advertise the window divided by the flows that sent in the last epoch (the count the
//! class keeps for its fair shares, `crate::fair`), so flows with the same round-trip time
//! get the same rate, and a flow that joins or leaves changes every flow's share within an
//! epoch, without waiting for the controller. The window follows the class's phantom queue (the enforcing bucket's backlog, the delay a
//! shaper would add): each round trip it is scaled to the rate its senders admitted and
//! steered towards the target backlog (see [`window_update`]). The
//! window is advertised in each connection's own scale, learnt from its SYN-ACK.

use crate::policer::Aqm;

/// Smallest window handed to a sender: two full segments, so a clamped sender still sends
/// whole segments and its ACK clock keeps running.
pub const MIN_WINDOW_BYTES: u32 = 2 * 1448;

/// Window control of a class (user space fills it; `bucket` is [`Aqm::NONE`] when off).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowControl {
    /// Standing phantom backlog (ns) the window steers to; the first packet above it starts
    /// the clamp.
    pub target_ns: u64,
    /// Time between two adjustments (ns): about the time senders take to follow one.
    pub interval_ns: u64,
    /// Largest window (bytes): the window that no longer limits flows of interest.
    pub max_bytes: u32,
    /// The window (bytes) the class starts from when it first runs above its target: the
    /// rate times [`START_RTT_US`].
    pub start_bytes: u32,
    /// Padding.
    pub _pad: u32,
    /// The bucket whose phantom queue is followed: [`Aqm::COMMITTED`] or [`Aqm::PEAK`], or
    /// [`Aqm::NONE`] when window control is off.
    pub bucket: u32,
}

impl Default for WindowControl {
    fn default() -> Self {
        WindowControl::OFF
    }
}

impl WindowControl {
    /// No window control.
    pub const OFF: WindowControl = WindowControl {
        target_ns: 0,
        interval_ns: 0,
        max_bytes: 0,
        start_bytes: 0,
        _pad: 0,
        bucket: Aqm::NONE,
    };

    /// Whether the class controls its flows' windows.
    #[inline(always)]
    pub const fn is_on(&self) -> bool {
        self.bucket != Aqm::NONE
    }
}

/// The controller's state per class, shared by all CPUs without a lock: two CPUs racing
/// at an adjustment both compute it from the same old state, so one of the equal writes wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowState {
    /// When (ns) the window last moved: a period runs from there.
    pub last_update_ns: u64,
    /// The smallest phantom backlog (ns) seen since the last adjustment: the standing part
    /// of the queue a shaper would hold, without the bursts that come and go within a
    /// round trip.
    pub min_backlog_ns: u64,
    /// The class's window (bytes), shared by its flows; 0 until the class first runs above
    /// its target (no clamp).
    pub window_bytes: u32,
    /// The round trip of the class's flows (µs, a moving average of handshake samples, see
    /// [`rtt_sample_us`]); 0 until a first sample.
    pub rtt_us: u32,
    /// Each flow's share of the window ([`share_of`] the flows sharing it), kept with the
    /// window by the policer so that the ACK path reads one word; 0 while no clamp.
    pub flow_bytes: u32,
    /// The standing backlog (µs) the last adjustment saw: the next one compares its own with
    /// it to learn the rate the window admitted.
    pub last_standing_us: u32,
}

/// The longest handshake-to-data time taken as a round trip sample: a connection that idles
/// before its first data tells nothing about its path.
pub const MAX_RTT_SAMPLE_US: u32 = 1_000_000;

/// The round trip a connection's first data segment shows: the time since its SYN passed
/// the gateway (`syn_us`, 0 when the SYN was not seen), SYN to data being one round trip
/// through the gateway (SYN, SYN-ACK, the handshake's ACK and the first data back to back).
/// `None` without a SYN or when the connection idled.
#[inline(always)]
pub const fn rtt_sample_us(syn_us: u32, now_us: u32) -> Option<u32> {
    if syn_us == 0 {
        return None;
    }
    let rtt = now_us.wrapping_sub(syn_us);
    if rtt == 0 || rtt > MAX_RTT_SAMPLE_US {
        None
    } else {
        Some(rtt)
    }
}

/// The class's round trip after a new sample: an eighth of the way towards it (the first
/// sample is taken as it is).
#[inline(always)]
pub const fn rtt_average_us(average_us: u32, sample_us: u32) -> u32 {
    if average_us == 0 {
        sample_us
    } else {
        ((average_us as u64 * 7 + sample_us as u64) / 8) as u32
    }
}

/// Follows the phantom backlog `backlog_ns` of one packet of the class seen at `now_ns` (the
/// bucket's burst is `burst_ns`; `flows` share the window), and adjusts the class's window.
///
/// The first packet over the target clamps: the window starts from the start window, scaled
/// to the class's round trip when that is longer than the data-centre one it assumes (the
/// flows then share it, so flows starting at once cannot each take the whole of it). From
/// then on the window moves once per period: an interval, or the class's round trip when
/// that is longer (senders need a round trip to follow a window). It follows the smallest
/// backlog of the period, the standing queue: a window-limited sender sends its window in
/// one burst per round trip, so the backlog peaks at a window's worth each round trip even
/// when the class is not overloaded.
///
/// A phantom queue does not slow its senders as a real one does: it only adds up what the
/// window admits beyond the rate. So each adjustment matches the rate first: the standing
/// backlog's growth over the period tells by how much the window's senders outran the rate
/// (or fell short of it), and the window is scaled by the inverse (of half that excess: one
/// period's minimum is noisy). Then it steers the backlog back to the target, half the way
/// each period (fixed steps swing the window around the rate; history: docs/design.md). At
/// most it halves or grows an eighth per period, halves above half the burst (drops are
/// near), and never goes under two segments per flow. Writes `state` only where it changes,
/// and returns whether it did.
#[inline(always)]
pub fn window_update(
    ctl: &WindowControl,
    state: &mut WindowState,
    backlog_ns: u64,
    burst_ns: u64,
    now_ns: u64,
    flows: u32,
) -> bool {
    let w = state.window_bytes;
    // Unclamped, no period runs: the first packet over the target starts the window.
    let standing = if w == 0 || backlog_ns < state.min_backlog_ns {
        backlog_ns
    } else {
        state.min_backlog_ns
    };
    let next = if w == 0 {
        if backlog_ns <= ctl.target_ns {
            return false;
        }
        let from = start_window(ctl, state.rtt_us);
        if backlog_ns > burst_ns / 2 {
            from / 2
        } else {
            from - from / 8
        }
    } else {
        let rtt_ns = state.rtt_us as u64 * 1_000;
        let period = if rtt_ns > ctl.interval_ns {
            rtt_ns
        } else {
            ctl.interval_ns
        };
        let elapsed = now_ns.wrapping_sub(state.last_update_ns);
        if (elapsed as i64) < period as i64 {
            if standing == state.min_backlog_ns {
                return false;
            }
            state.min_backlog_ns = standing;
            return true;
        }
        if standing > burst_ns / 2 {
            w / 2
        } else {
            rate_matched(
                w,
                elapsed,
                state.last_standing_us as u64 * 1_000,
                standing,
                ctl.target_ns,
            )
        }
    };
    let floor = min(
        MIN_WINDOW_BYTES.saturating_mul(max(flows, 1)),
        max(ctl.max_bytes, MIN_WINDOW_BYTES),
    );
    state.window_bytes = min(max(next, floor), max(ctl.max_bytes, floor));
    // A new period: its minimum starts over.
    state.min_backlog_ns = u64::MAX;
    state.last_update_ns = now_ns;
    let standing_us = standing / 1_000;
    state.last_standing_us = if standing_us > u32::MAX as u64 {
        u32::MAX
    } else {
        standing_us as u32
    };
    true
}

/// The window `w` scaled to the rate, over a period of `elapsed_ns` whose standing backlog
/// went from `last_ns` to `standing_ns`: the senders admitted `elapsed + standing - last`
/// of the rate's time, so the window is scaled by `elapsed / (elapsed + (standing - last) /
/// 2)` to take back half of what they sent beyond the rate (or make up half of what they
/// fell short), and by `(elapsed + (target - standing) / 2) / elapsed` to close half the
/// distance to the target. Within half and nine eighths of `w`.
#[inline(always)]
fn rate_matched(w: u32, elapsed_ns: u64, last_ns: u64, standing_ns: u64, target_ns: u64) -> u32 {
    // After a longer idle time the backlogs compared tell nothing more; bounded, the
    // products below stay within 64 bits.
    let e = elapsed_ns.min(MAX_PERIOD_NS);
    let (lo, hi) = (e / 2, 2 * e);
    let aimed =
        (2 * e + target_ns.min(MAX_PERIOD_NS)).saturating_sub(standing_ns.min(MAX_PERIOD_NS)) / 2;
    let admitted =
        (2 * e + standing_ns.min(MAX_PERIOD_NS)).saturating_sub(last_ns.min(MAX_PERIOD_NS)) / 2;
    // Both within [e/2, 2e] (and the divisor not 0): the ratio stays within [1/4, 4].
    let aimed = aimed.max(lo).min(hi);
    let admitted = admitted.max(lo).min(hi).max(1);
    let w = w as u64;
    let scaled = (w * aimed / admitted).max(w / 2).min(w + w / 8 + 1);
    scaled.min(u32::MAX as u64) as u32
}

/// The longest period a rate is learnt over (ns).
const MAX_PERIOD_NS: u64 = 1_000_000_000;

/// Keeps [`WindowState::flow_bytes`] at the share of the window `flows` flows get; whether
/// it changed.
#[inline(always)]
pub fn share_window(state: &mut WindowState, flows: u32) -> bool {
    let share = share_of(state.window_bytes, flows);
    if share == state.flow_bytes {
        return false;
    }
    state.flow_bytes = share;
    true
}

/// The window a class starts from: its start window is the rate times a data-centre round
/// trip ([`START_RTT_US`]); a class whose flows have a longer one starts from the rate times
/// theirs, at most the largest window.
#[inline(always)]
fn start_window(ctl: &WindowControl, rtt_us: u32) -> u32 {
    if rtt_us <= START_RTT_US {
        return ctl.start_bytes;
    }
    let scaled = ctl.start_bytes as u64 * rtt_us as u64 / START_RTT_US as u64;
    if scaled > ctl.max_bytes as u64 {
        ctl.max_bytes
    } else {
        scaled as u32
    }
}

/// The round trip (µs) the start window ([`WindowControl::start_bytes`]) is made for.
pub const START_RTT_US: u32 = 1_000;

/// The segment size assumed for a connection whose SYN-ACK announced no MSS: Ethernet's
/// (1500-byte MTU), the largest data segment of such a path.
pub const DEFAULT_SEGMENT_BYTES: u32 = 1460;

/// Acknowledged bytes after which a flow's share of the window's rounding is drawn again
/// (per flow, from its acknowledgement number, so no clock is read on the ACK path).
const DITHER_SHIFT: u32 = 16;

/// The window one flow is given under a share of `window_bytes` (see
/// [`WindowState::flow_bytes`]): the share moved by a draw in [-½, ½) segment, and never
/// under two segments.
///
/// Senders fill a window in whole segments, so every flow of a window of 2.9 segments sends
/// 2 per round trip: with many flows, each near two segments, the class's rate moves in
/// steps of a segment per flow, and the window control cannot find the rate between two
/// steps. Drawn apart, a share of the flows rounds up and the rest down, so the class's
/// rate follows the window smoothly. The draw comes from the flow's hash and its
/// acknowledged bytes (`ack`), anew every 64 KiB: each flow gets the larger windows as
/// often as the others. Two segments is the least a window may hold: with one, the
/// receiver's delayed acknowledgement (40 ms on Linux) waits for a second segment that
/// cannot come. `segment_bytes` is the connection's MSS (0: not announced,
/// [`DEFAULT_SEGMENT_BYTES`]); 0 for `window_bytes` stays 0 (no clamp).
#[inline(always)]
pub const fn flow_window(window_bytes: u32, segment_bytes: u16, flow_hash: u64, ack: u32) -> u32 {
    if window_bytes == 0 {
        return 0;
    }
    let segment = if segment_bytes == 0 {
        DEFAULT_SEGMENT_BYTES
    } else {
        segment_bytes as u32
    };
    let draw = mix(flow_hash ^ (ack >> DITHER_SHIFT) as u64);
    // A fraction of a segment in [0, segment), from the draw's top 32 bits.
    let offset = (((draw >> 32) * segment as u64) >> 32) as u32;
    let dithered = (window_bytes as u64 + offset as u64).saturating_sub(segment as u64 / 2);
    let floor = 2 * segment as u64;
    let w = if dithered < floor { floor } else { dithered };
    if w > u32::MAX as u64 {
        u32::MAX
    } else {
        w as u32
    }
}

/// One flow's share of a class window of `window_bytes` shared by `flows` (before the draw
/// and the floor of [`flow_window`]).
#[inline(always)]
pub const fn share_of(window_bytes: u32, flows: u32) -> u32 {
    window_bytes / if flows == 0 { 1 } else { flows }
}

/// A 64-bit finalizer (MurmurHash3's): every input bit moves every output bit, so close
/// acknowledgement numbers give unrelated draws.
#[inline(always)]
const fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The window field to write into an ACK that advertises `field` in units of
/// 2^`scale` bytes, under a class window of `window_bytes`; `None` when the ACK already
/// advertises no more (a window is only ever narrowed, never widened).
#[inline(always)]
pub const fn clamp_window(field: u16, scale: u8, window_bytes: u32) -> Option<u16> {
    if window_bytes == 0 {
        return None;
    }
    let scale = if scale > 14 { 14 } else { scale };
    // Round up so the advertised window is never below the class window.
    let units = (window_bytes as u64 + (1 << scale) - 1) >> scale;
    let units = if units == 0 { 1 } else { units };
    if units >= field as u64 {
        None
    } else {
        Some(units as u16)
    }
}

const fn max(a: u32, b: u32) -> u32 {
    if a > b {
        a
    } else {
        b
    }
}

const fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ctl() -> WindowControl {
        WindowControl {
            target_ns: MS,
            interval_ns: MS,
            max_bytes: 1 << 20,
            start_bytes: 1 << 16,
            _pad: 0,
            bucket: Aqm::COMMITTED,
        }
    }

    /// Feeds one period: `backlogs` seen during it, then a packet with `last` at `at` (the
    /// period's end), which decides.
    fn period(s: &mut WindowState, backlogs: &[u64], last: u64, at: u64) -> bool {
        for &b in backlogs {
            window_update(&ctl(), s, b, 10 * MS, at - 1, 1);
        }
        window_update(&ctl(), s, last, 10 * MS, at, 1)
    }

    /// A clamped class whose last adjustment, at 0, saw a standing backlog of
    /// `last_standing_us`.
    fn clamped_at(window_bytes: u32, last_standing_us: u32) -> WindowState {
        WindowState {
            window_bytes,
            last_update_ns: 0,
            min_backlog_ns: u64::MAX,
            last_standing_us,
            ..WindowState::default()
        }
    }

    /// Clamped, its last adjustment at the target.
    fn clamped(window_bytes: u32) -> WindowState {
        clamped_at(window_bytes, 1_000)
    }

    #[test]
    fn no_clamp_until_the_class_runs_over_its_target() {
        let mut s = WindowState::default();
        assert!(!window_update(&ctl(), &mut s, 0, 10 * MS, 0, 1));
        assert!(
            !window_update(&ctl(), &mut s, MS, 10 * MS, MS, 1),
            "at the target"
        );
        assert_eq!(s, WindowState::default(), "nothing written while unclamped");
        assert!(window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 2 * MS, 1));
        assert_eq!(
            s.window_bytes,
            (1 << 16) - (1 << 13),
            "the start window less an eighth"
        );
        assert_eq!(s.last_update_ns, 2 * MS, "a period starts");
        assert_eq!(
            s.last_standing_us, 2_000,
            "from the backlog that started it"
        );
        s = WindowState::default();
        window_update(&ctl(), &mut s, 6 * MS, 10 * MS, 0, 1);
        assert_eq!(s.window_bytes, 1 << 15, "halved above half the burst");
    }

    #[test]
    fn the_window_is_scaled_to_the_rate_its_senders_admitted() {
        // The standing backlog grew by 0.2 ms in a 1 ms period: the senders admitted 1.2
        // times the rate. Half of that is taken back, and half of the way from 1.2 ms to the
        // target: 64 000 * 0.9 / 1.1.
        let mut s = clamped(64_000);
        period(&mut s, &[], MS + MS / 5, MS);
        assert_eq!(s.window_bytes, 52_363);
        assert_eq!(s.last_standing_us, 1_200);
        // Admitted at the rate, at the target: the window holds.
        let mut s = clamped(64_000);
        period(&mut s, &[], MS, MS);
        assert_eq!(s.window_bytes, 64_000, "the rate and the target: held");
        // The backlog fell by 0.4 ms (0.6 of the rate) to 0.6 ms: 64 000 * 1.2 / 0.8, at
        // most an eighth more in one period.
        let mut s = clamped(64_000);
        period(&mut s, &[], MS * 3 / 5, MS);
        assert_eq!(s.window_bytes, 72_001, "an eighth more at most");
        // Over the target but no longer growing: only the steering, 64 000 * 0.75.
        let mut s = clamped_at(64_000, 1_500);
        period(&mut s, &[], MS * 3 / 2, MS);
        assert_eq!(s.window_bytes, 48_000);
    }

    #[test]
    fn the_window_settles_at_the_rate_whatever_share_of_it_senders_use() {
        // A fluid model: each 1 ms period the senders of a window `w` admit `use * w` bytes
        // where the rate takes 100 000; the phantom backlog adds up the difference.
        let bdp = 100_000.0;
        for use_tenths in [5u32, 8, 10] {
            let share = f64::from(use_tenths) / 10.0;
            let mut s = WindowState::default();
            let mut backlog_ns = 2.0 * MS as f64;
            for k in 1..=200u64 {
                window_update(&ctl(), &mut s, backlog_ns as u64, 100 * MS, k * MS, 1);
                let admitted = share * f64::from(s.window_bytes);
                backlog_ns = (backlog_ns + (admitted / bdp - 1.0) * MS as f64).max(0.0);
            }
            let admitted = share * f64::from(s.window_bytes) / bdp;
            assert!(
                (admitted - 1.0).abs() < 0.01,
                "senders using {share} of it: {admitted:.3} of the rate"
            );
            assert!(
                (backlog_ns - MS as f64).abs() < 0.1 * MS as f64,
                "backlog {backlog_ns:.0} ns, the target 1 ms"
            );
        }
    }

    #[test]
    fn the_standing_backlog_decides_not_the_bursts() {
        // A window's burst each round trip: the backlog peaks high, then drains to the target.
        let mut s = clamped(64_000);
        period(&mut s, &[4 * MS, 2 * MS, MS], 3 * MS, MS);
        assert_eq!(s.window_bytes, 64_000, "standing at the target: held");
        s = clamped(64_000);
        period(&mut s, &[8 * MS, 6 * MS], 7 * MS, MS);
        assert_eq!(
            s.window_bytes, 32_000,
            "standing above half the burst: halved"
        );
        assert_eq!(s.min_backlog_ns, u64::MAX, "the next period starts over");
    }

    #[test]
    fn adjusts_once_per_period_and_stays_in_bounds() {
        let mut s = clamped(MIN_WINDOW_BYTES);
        period(&mut s, &[9 * MS], 9 * MS, MS);
        assert_eq!(s.window_bytes, MIN_WINDOW_BYTES, "never below two segments");
        s = clamped(100_000);
        assert!(window_update(&ctl(), &mut s, 9 * MS, 10 * MS, MS, 1));
        assert_eq!(s.window_bytes, 50_000);
        assert!(window_update(&ctl(), &mut s, 9 * MS, 10 * MS, MS + 1, 1));
        assert!(
            !window_update(&ctl(), &mut s, 9 * MS, 10 * MS, MS + 2, 1),
            "too soon, and no new minimum: nothing to write"
        );
        assert_eq!(s.window_bytes, 50_000);
        s = clamped_at((1 << 20) - 1, 0);
        period(&mut s, &[0], 0, MS);
        assert_eq!(s.window_bytes, 1 << 20, "never above the largest window");
        // After an idle hour the comparison is bounded: no overflow, at most an eighth more.
        s = clamped_at(u32::MAX / 2, 0);
        let hour = 3_600_000 * MS;
        window_update(&ctl(), &mut s, 0, 10 * MS, hour, 1);
        assert_eq!(s.window_bytes, 1 << 20);
    }

    #[test]
    fn clamps_in_the_connection_s_scale_and_never_widens() {
        assert_eq!(clamp_window(0x2000, 7, 0), None, "no class window yet");
        assert_eq!(clamp_window(0x2000, 7, 64_000), Some(500));
        assert_eq!(clamp_window(0x2000, 7, 64_001), Some(501), "rounded up");
        assert_eq!(clamp_window(400, 7, 64_000), None, "already narrower");
        assert_eq!(clamp_window(65_535, 0, 64_000), Some(64_000), "no scaling");
        assert_eq!(clamp_window(100, 14, 1000), Some(1), "at least one unit");
        assert_eq!(
            clamp_window(100, 20, 1 << 15),
            Some(2),
            "scale capped at 14 (RFC 7323)"
        );
    }
    #[test]
    fn a_long_round_trip_spaces_adjustments_and_scales_the_start_window() {
        let mut s = WindowState {
            rtt_us: 5_000,
            min_backlog_ns: u64::MAX,
            ..WindowState::default()
        };
        assert!(window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 0, 1));
        let start = (1u32 << 16) * 5;
        assert_eq!(
            s.window_bytes,
            start - start / 8,
            "five data-centre windows"
        );
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 5 * MS - 1, 1);
        assert_eq!(s.window_bytes, start - start / 8, "too soon");
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 5 * MS, 1);
        assert!(s.window_bytes < start - start / 8, "a round trip later");
        assert_eq!(s.last_update_ns, 5 * MS);
        s = WindowState {
            rtt_us: 900_000,
            min_backlog_ns: u64::MAX,
            ..WindowState::default()
        };
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 0, 1);
        assert_eq!(s.window_bytes, (1 << 20) - (1 << 17), "the start is capped");
        s = WindowState {
            rtt_us: 200,
            window_bytes: 64_000,
            last_standing_us: 1_000,
            min_backlog_ns: u64::MAX,
            ..WindowState::default()
        };
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, MS - 1, 1);
        assert_eq!(s.window_bytes, 64_000, "too soon");
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, MS, 1);
        assert!(
            s.window_bytes < 64_000,
            "a short round trip keeps the interval"
        );
    }

    #[test]
    fn flows_share_the_class_window_and_it_keeps_two_segments_each() {
        // 16 flows: the start window is the class's, a sixteenth each.
        let mut s = WindowState::default();
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 0, 16);
        let start = 1u32 << 16;
        assert_eq!(
            s.window_bytes,
            start - start / 8,
            "the class's start window"
        );
        assert_eq!(share_of(s.window_bytes, 16), (start - start / 8) / 16);
        // Each flow's share follows the count: a seventeenth flow shrinks every share at once.
        assert!(share_window(&mut s, 16));
        assert_eq!(s.flow_bytes, (start - start / 8) / 16);
        assert!(!share_window(&mut s, 16), "unchanged: nothing to write");
        assert!(share_window(&mut s, 17));
        assert_eq!(s.flow_bytes, (start - start / 8) / 17);
        // The window never sinks below two segments per flow.
        let mut s = clamped(100_000);
        period(&mut s, &[9 * MS], 9 * MS, MS);
        assert_eq!(s.window_bytes, 50_000);
        window_update(&ctl(), &mut s, 9 * MS, 10 * MS, 3 * MS, 40);
        assert_eq!(
            s.window_bytes,
            40 * MIN_WINDOW_BYTES,
            "two segments for each of 40"
        );
        window_update(&ctl(), &mut s, 9 * MS, 10 * MS, 5 * MS, 1_000);
        assert_eq!(
            s.window_bytes,
            1 << 20,
            "and never above the largest window"
        );
        assert_eq!(share_of(1000, 0), 1000, "no count yet: one flow");
    }

    #[test]
    fn round_trips_come_from_handshakes_and_average_slowly() {
        assert_eq!(rtt_sample_us(0, 500), None, "no SYN seen");
        assert_eq!(rtt_sample_us(1_000, 6_000), Some(5_000));
        assert_eq!(
            rtt_sample_us(u32::MAX - 99, 100),
            Some(200),
            "the clock wraps"
        );
        assert_eq!(
            rtt_sample_us(1, MAX_RTT_SAMPLE_US + 2),
            None,
            "an idle connection"
        );
        assert_eq!(rtt_average_us(0, 5_000), 5_000, "the first sample as it is");
        assert_eq!(rtt_average_us(8_000, 0), 7_000);
        assert_eq!(rtt_average_us(u32::MAX, u32::MAX), u32::MAX, "no overflow");
    }

    #[test]
    fn flow_windows_round_apart_so_the_class_rate_follows_the_window() {
        let seg = 1448u32;
        // Whole segments per flow, averaged over many flows, against the class window: the
        // mean moves with the window in small steps, not a segment at a time.
        for tenths in 25..=60u32 {
            let window = seg * tenths / 10;
            let flows = 20_000u64;
            let whole: u64 = (0..flows)
                .map(|f| {
                    let hash = f.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    u64::from(flow_window(window, seg as u16, hash, 0) / seg)
                })
                .sum();
            let mean = whole as f64 / flows as f64;
            let expect = f64::from(window) / f64::from(seg) - 0.5;
            assert!(
                (mean - expect).abs() < 0.05,
                "{tenths}/10 segments: {mean:.3} whole segments per flow, {expect:.3} expected"
            );
        }
    }

    #[test]
    fn each_flow_draws_again_as_it_goes_so_none_keeps_the_small_window() {
        let (seg, window) = (1448u16, 4000u32);
        for flow in 0..50u64 {
            let hash = flow.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let steps = 2_000u32;
            let sum: u64 = (0..steps)
                .map(|i| u64::from(flow_window(window, seg, hash, i << 16)))
                .sum();
            let mean = sum as f64 / f64::from(steps);
            assert!(
                (mean / f64::from(window) - 1.0).abs() < 0.03,
                "flow {flow}: mean window {mean:.0} B of {window}"
            );
            // Within one 64 KiB stretch of acknowledgements the draw stays.
            assert_eq!(
                flow_window(window, seg, hash, 5 << 16),
                flow_window(window, seg, hash, (5 << 16) + 60_000)
            );
        }
    }

    #[test]
    fn flow_windows_keep_two_segments_and_no_clamp_stays_none() {
        assert_eq!(flow_window(0, 1448, 7, 0), 0, "no clamp");
        for hash in 0..1_000u64 {
            assert!(flow_window(MIN_WINDOW_BYTES, 0, hash, 0) >= 2 * DEFAULT_SEGMENT_BYTES);
            assert!(flow_window(100, 8948, hash, 0) >= 2 * 8948, "jumbo frames");
            let w = flow_window(1 << 20, 1448, hash, 0);
            assert!(((1 << 20) - 724..(1 << 20) + 724).contains(&w), "{w}");
        }
        for hash in 0..100u64 {
            assert!(
                flow_window(u32::MAX, 1448, hash, 0) >= u32::MAX - 724,
                "no overflow"
            );
        }
    }
}
