//! TCP window control: a class whose flows send faster than its rate gets their receive
//! windows narrowed on the ACKs that return through the gateway, so TCP slows down before
//! the policer has to drop anything. A window-limited sender sends at window / RTT and
//! queues the rest in its own socket buffer: the network path gains no queue, and the
//! sender loses no packets (the failure of TCP behind plain policers).
//!
//! One window per class, in bytes, applies to every flow of the class: flows with the same
//! round-trip time get the same rate, which is per-flow fairness without per-flow queues.
//! The window follows the class's phantom queue (the enforcing bucket's backlog, the delay a
//! shaper would add): above the target it shrinks, below half the target it grows. The
//! window is advertised in each connection's own scale, learnt from its SYN-ACK.

use crate::policer::Aqm;

/// Smallest window handed to a sender: two full segments, so a clamped sender still sends
/// whole segments and its ACK clock keeps running.
pub const MIN_WINDOW_BYTES: u32 = 2 * 1448;

/// Window control of a class (user space fills it; `bucket` is [`Aqm::NONE`] when off).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowControl {
    /// Phantom backlog (ns) above which the window shrinks; below half of it, it grows.
    pub target_ns: u64,
    /// Time between two adjustments (ns): about the time senders take to follow one.
    pub interval_ns: u64,
    /// Largest window (bytes): the window that no longer limits flows of interest.
    pub max_bytes: u32,
    /// The window (bytes) the class starts from when it first runs above its target.
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
    /// When (ns) the next adjustment may come.
    pub next_update_ns: u64,
    /// The window (bytes) advertised to the class's flows; 0 until the class first runs
    /// above its target (no clamp).
    pub window_bytes: u32,
    /// Padding.
    pub _pad: u32,
}

/// Adjusts the class's window for a phantom backlog of `backlog_ns` (the bucket's burst is
/// `burst_ns`) seen at `now_ns`; a change waits an interval after the last one. Returns
/// whether it changed.
#[inline(always)]
pub fn window_update(
    ctl: &WindowControl,
    state: &mut WindowState,
    backlog_ns: u64,
    burst_ns: u64,
    now_ns: u64,
) -> bool {
    if (now_ns.wrapping_sub(state.next_update_ns) as i64) < 0 {
        return false;
    }
    let w = state.window_bytes;
    let next = if backlog_ns > ctl.target_ns {
        // Start from the start window, then shrink: fast while the bucket is nearly full
        // (drops are near), gently above the target.
        let from = if w == 0 { ctl.start_bytes } else { w };
        let shrunk = if backlog_ns > burst_ns / 2 {
            from / 2
        } else {
            from - from / 8
        };
        max(shrunk, MIN_WINDOW_BYTES)
    } else if w != 0 && backlog_ns < ctl.target_ns / 2 {
        min(w.saturating_add(w / 16 + 1), ctl.max_bytes)
    } else {
        w
    };
    if next == w {
        // Nothing changed: the next packet may adjust (the class may just now have crossed
        // its target).
        return false;
    }
    state.window_bytes = next;
    state.next_update_ns = now_ns.wrapping_add(ctl.interval_ns);
    true
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

    #[test]
    fn no_clamp_until_the_class_runs_over_its_target() {
        let mut s = WindowState::default();
        assert!(!window_update(&ctl(), &mut s, 0, 10 * MS, 0));
        assert!(!window_update(&ctl(), &mut s, MS / 2, 10 * MS, 2 * MS));
        assert_eq!(s.window_bytes, 0);
        assert!(window_update(&ctl(), &mut s, 2 * MS, 10 * MS, 4 * MS));
        assert_eq!(s.window_bytes, (1 << 16) - (1 << 13));
    }

    #[test]
    fn shrinks_fast_near_the_limit_and_grows_below_half_the_target() {
        let mut s = WindowState {
            window_bytes: 64_000,
            ..WindowState::default()
        };
        window_update(&ctl(), &mut s, 6 * MS, 10 * MS, 0);
        assert_eq!(s.window_bytes, 32_000, "halved above half the burst");
        window_update(&ctl(), &mut s, 2 * MS, 10 * MS, MS);
        assert_eq!(s.window_bytes, 28_000, "an eighth off above the target");
        window_update(&ctl(), &mut s, MS * 3 / 4, 10 * MS, 2 * MS);
        assert_eq!(
            s.window_bytes, 28_000,
            "held between half the target and the target"
        );
        window_update(&ctl(), &mut s, 0, 10 * MS, 3 * MS);
        assert_eq!(
            s.window_bytes,
            28_000 + 1750 + 1,
            "a sixteenth more below half"
        );
    }

    #[test]
    fn adjusts_once_per_interval_and_stays_in_bounds() {
        let mut s = WindowState {
            window_bytes: MIN_WINDOW_BYTES,
            ..WindowState::default()
        };
        assert!(!window_update(&ctl(), &mut s, 9 * MS, 10 * MS, 0));
        assert_eq!(s.window_bytes, MIN_WINDOW_BYTES, "never below two segments");
        assert_eq!(s.next_update_ns, 0, "no change starts no interval");
        s.window_bytes = 100_000;
        assert!(window_update(&ctl(), &mut s, 9 * MS, 10 * MS, MS / 2));
        assert!(
            !window_update(&ctl(), &mut s, 9 * MS, 10 * MS, MS),
            "too soon"
        );
        assert_eq!(s.window_bytes, 50_000);
        s.window_bytes = (1 << 20) - 1;
        window_update(&ctl(), &mut s, 0, 10 * MS, 5 * MS);
        assert_eq!(s.window_bytes, 1 << 20, "never above the largest window");
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
}
