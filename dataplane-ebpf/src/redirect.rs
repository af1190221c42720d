//! Redirect failures: what the XDP program redirected but the egress could not take is lost
//! after the program returned, where only the kernel's XDP tracepoints see it. Two small
//! tracepoint programs count those losses on the egress interface's slot, for frames between
//! interfaces the dataplane forwards from and to (tracepoints fire for every XDP program of
//! the host: a foreign program's failure is counted only if its interfaces' indexes are both
//! registered here).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use dataplane_common::maps::IfaceConfig;

use crate::maps::{iface, IFACE_COUNTERS};

/// Field offsets of `xdp:xdp_redirect_err` (see its `format` file in tracefs).
const REDIRECT_ERR_INGRESS: usize = 16;
const REDIRECT_ERR_EGRESS: usize = 24;
/// Field offsets of `xdp:xdp_devmap_xmit`.
const DEVMAP_XMIT_INGRESS: usize = 8;
const DEVMAP_XMIT_EGRESS: usize = 16;
const DEVMAP_XMIT_DROPS: usize = 20;

/// A redirect that failed at once (`xdp_do_redirect`: no such device, or a device that cannot
/// take XDP frames).
#[tracepoint]
pub fn redirect_error(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets inside the tracepoint's record, read with the probe helper.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(REDIRECT_ERR_INGRESS),
            ctx.read_at::<i32>(REDIRECT_ERR_EGRESS),
        )
    };
    if let (Ok(ingress), Ok(egress)) = fields {
        count(ingress, egress, 1);
    }
    0
}

/// Frames the egress driver dropped when the redirected batch was flushed to it.
#[tracepoint]
pub fn devmap_drops(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(DEVMAP_XMIT_INGRESS),
            ctx.read_at::<i32>(DEVMAP_XMIT_EGRESS),
            ctx.read_at::<i32>(DEVMAP_XMIT_DROPS),
        )
    };
    if let (Ok(ingress), Ok(egress), Ok(drops)) = fields {
        if drops > 0 {
            count(ingress, egress, drops as u64);
        }
    }
    0
}

#[inline(always)]
fn count(ingress: i32, egress: i32, frames: u64) {
    let forwards = iface(ingress as u32).is_some_and(|i| i.flags & IfaceConfig::FORWARD != 0);
    let Some(egress) = iface(egress as u32) else {
        return;
    };
    if !forwards {
        return;
    }
    if let Some(c) = IFACE_COUNTERS.get_ptr_mut(egress.slot) {
        // SAFETY: per-CPU value, and only these programs write this field (a count lost
        // to a rare nesting only blurs a counter).
        unsafe { (*c).redirect_failures += frames };
    }
}
