//! Kernel-side log lines (aya-log), gated by the LOG_LEVEL map user space sets at runtime.
//! Off by default: then an outcome costs one array read here and nothing else.

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use aya_log_ebpf::{debug, error};
use dataplane_common::reason::Reason;

use crate::maps::LOG_LEVEL;

/// Levels as user space writes them (dataplane::kernel_log::KernelLogLevel).
const LEVEL_ERROR: u32 = 1;
const LEVEL_DEBUG: u32 = 4;

#[inline(always)]
fn level() -> u32 {
    LOG_LEVEL.get(0).copied().unwrap_or(0)
}

/// Logs an outcome other than "passed by policy": drops at debug, states that should never
/// happen at error. Not inlined: the log record is built on the stack, which the pipeline's
/// frame leaves no room for; only the LOG_LEVEL check is paid inline.
#[inline(never)]
fn emit(raw: *mut xdp_md, reason: Reason, level: u32) {
    let ctx = &XdpContext::new(raw);
    let ifindex = ctx.ingress_ifindex() as u32;
    match reason {
        Reason::ClassifierMiss if level >= LEVEL_ERROR => {
            error!(ctx, "ifindex {}: classifier returned no class", ifindex);
        }
        _ if level >= LEVEL_DEBUG => {
            debug!(ctx, "ifindex {}: outcome {}", ifindex, reason.label());
        }
        _ => {}
    }
}

/// Logs `reason` for the packet of context `ctx` if the level asks for it. Takes the raw
/// context pointer: a reference would pin the context to the pipeline's crowded stack.
#[inline(always)]
pub fn outcome(ctx: *mut xdp_md, reason: Reason) {
    let level = level();
    if level != 0 {
        emit(ctx, reason, level);
    }
}
