//! The dataplane XDP program: parse → classify → police → act → forward, every outcome counted
//! once.
//!
//! The entry parses, then calls the rest of the pipeline as a global BPF function, which the
//! verifier checks once on its own rather than once along each of the parser's paths (its
//! state after parsing differs by protocol, header lengths and tags, so it would not prune).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod act;
mod classify;
mod forward;
mod frame;
mod log;
mod maps;
mod police;
mod redirect;
mod runtime;
mod verifier;
mod window;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    macros::xdp,
    programs::XdpContext,
};
use dataplane_common::{
    action::is_ecn_capable,
    flow::FlowState,
    maps::{
        class_config_index, class_counter_index, ClassConfig, IfaceConfig, IfaceCounters,
        PolicySlot,
    },
    packet::{parse_into, PacketBytes, PacketMeta, TcpMeta},
    reason::Reason,
    GENERATION_SLOTS, MAX_CLASSES,
};

use crate::{
    frame::Frame,
    maps::{
        ACTIVE_SLOT, CLASSES, CLASS_COUNTERS, IFACE_COUNTERS, PACKET_SCRATCH, POLICY_SLOTS,
        SPRAY_UNKEYED,
    },
    police::Kind,
};

#[xdp]
pub fn dataplane(ctx: XdpContext) -> u32 {
    let iface_slot = maps::iface(ctx.ingress_ifindex() as u32).map_or(0, |i| i.slot);
    let outcome = match parse(&Frame::new(&ctx)) {
        Ok(()) => dataplane_pipeline(ctx.ctx, u64::from(iface_slot)),
        Err(reason) => Outcome::of(Err(reason)),
    };
    match Outcome::verdict(outcome) {
        Ok(action) => action,
        Err(reason) => {
            log::outcome(ctx.ctx, reason);
            record(iface_slot, reason)
        }
    }
}

/// Parses the frame into the per-CPU scratch, where the rest of the pipeline reads it.
#[inline(always)]
fn parse(frame: &Frame) -> Result<(), Reason> {
    let scratch = PACKET_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Reason::ScratchUnavailable)?;
    // SAFETY: per-CPU map value with room and alignment for a PacketMeta (checked at compile
    // time in maps.rs); XDP does not nest on one CPU; parse_into overwrites every field.
    parse_into(frame, unsafe { &mut *scratch.cast::<PacketMeta>() })
}

/// Everything after the parser, as a global function: the verdict of the parsed packet in
/// the scratch ([`Outcome`]).
#[no_mangle]
#[inline(never)]
pub extern "C" fn dataplane_pipeline(ctx: *mut xdp_md, iface_slot: u64) -> i64 {
    let ctx = XdpContext::new(ctx);
    let iface = maps::iface(ctx.ingress_ifindex() as u32);
    Outcome::of(pipeline(&ctx, &Frame::new(&ctx), iface, iface_slot as u32))
}

/// The pipeline's result as the scalar a global function returns: the XDP action, or
/// [`Outcome::REASON`] plus the reason.
struct Outcome;

impl Outcome {
    const REASON: i64 = 1 << 8;

    #[inline(always)]
    fn of(result: Result<u32, Reason>) -> i64 {
        match result {
            Ok(action) => i64::from(action),
            Err(reason) => Outcome::REASON | reason as i64,
        }
    }

    /// The action, or the reason (the verifier sees only a scalar come back).
    #[inline(always)]
    fn verdict(outcome: i64) -> Result<u32, Reason> {
        if outcome & Outcome::REASON != 0 {
            let index = verifier::reason_index(outcome as usize);
            return Err(Reason::ALL
                .get(index)
                .copied()
                .unwrap_or(Reason::ClassifierMiss));
        }
        // The pipeline ends in a redirect or a pass; nothing else comes back.
        Ok(if outcome == i64::from(xdp_action::XDP_REDIRECT) {
            xdp_action::XDP_REDIRECT
        } else {
            xdp_action::XDP_PASS
        })
    }
}

/// Passes everything: the floor the pipeline's cost is measured against, and the program a
/// veth peer needs to accept redirected frames.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The single funnel for outcomes other than "passed or forwarded by policy": counts and picks
/// the verdict.
#[inline(always)]
fn record(iface_slot: u32, reason: Reason) -> u32 {
    if let Some(c) = IFACE_COUNTERS.get_ptr_mut(iface_slot) {
        // SAFETY: per-CPU value; XDP does not nest on one CPU. Index bounded by REASON_COUNT.
        if let Some(n) = unsafe {
            (*c).reasons
                .get_mut(verifier::reason_index(reason as usize))
        } {
            *n += 1;
        }
    }
    match reason {
        Reason::PolicyDrop | Reason::EcnNotCapable => xdp_action::XDP_DROP,
        // Everything else is passed: we never drop what we could not classify.
        _ => xdp_action::XDP_PASS,
    }
}

/// The verdict for a packet the policy lets through (`XDP_PASS`, or `XDP_REDIRECT` when
/// forwarded), or why it left early.
#[inline(always)]
fn pipeline(
    ctx: &XdpContext,
    frame: &Frame,
    iface: Option<&IfaceConfig>,
    iface_slot: u32,
) -> Result<u32, Reason> {
    let scratch = PACKET_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Reason::ScratchUnavailable)?;
    // SAFETY: the per-CPU scratch the entry's parser filled for this packet.
    let meta = unsafe { &*scratch.cast::<PacketMeta>() };

    let slot = ACTIVE_SLOT.get(0).copied().unwrap_or(0) % GENERATION_SLOTS as u32;
    let policy = POLICY_SLOTS.get(slot).ok_or(Reason::NoPolicy)?;
    if policy.generation == 0 {
        return Err(Reason::NoPolicy);
    }
    let iface_counters: Option<*mut IfaceCounters> = IFACE_COUNTERS.get_ptr_mut(iface_slot);
    if meta.spray_unkeyed {
        if let Some(n) = SPRAY_UNKEYED.get_ptr_mut(iface_slot) {
            // SAFETY: per-CPU value; XDP does not nest on one CPU.
            unsafe { *n += 1 };
        }
    }
    let (class, flow) =
        classify::class_of(meta, scratch, iface_slot, slot, policy, iface_counters)?;
    if class >= MAX_CLASSES as u32 {
        return Err(Reason::ClassifierMiss);
    }
    let cfg = CLASSES
        .get(class_config_index(slot, class))
        .ok_or(Reason::ClassifierMiss)?;

    let kind = match meta.tcp {
        Some(tcp) => tcp_steps(frame, meta, &tcp, flow, cfg, class, policy)?,
        None => Kind::Plain,
    };
    let bytes = frame.frame_len() as u32;
    let policed = police::police(
        class,
        slot,
        cfg,
        iface,
        ctx.ingress_ifindex() as u32,
        iface_slot,
        bytes,
        is_ecn_capable(meta.tos),
        kind,
        flow,
    );

    let counters = CLASS_COUNTERS.get_ptr_mut(class_counter_index(iface_slot, class));
    let tos = act::act(frame, meta, cfg, &policed, bytes, counters, flow)?;

    // Interfaces without forwarding pay one flag test.
    match iface {
        Some(iface) if iface.flags & IfaceConfig::FORWARD != 0 => {
            forward::forward(ctx, frame, meta, iface, tos, class, bytes, flow)
        }
        _ => Ok(xdp_action::XDP_PASS),
    }
}

/// TCP's part: window control on every TCP packet of a policy that has it, then, for a
/// flow the cache holds, whether this segment resends data (see `police::Kind`).
#[inline(always)]
fn tcp_steps(
    frame: &Frame,
    meta: &PacketMeta,
    tcp: &TcpMeta,
    flow: Option<*mut FlowState>,
    cfg: &ClassConfig,
    class: u32,
    policy: &PolicySlot,
) -> Result<Kind, Reason> {
    if policy.flags & PolicySlot::WINDOW_CONTROL != 0 {
        window::on_tcp(frame, meta, tcp, policy)?;
    }
    let Some(flow) = flow else {
        return Ok(Kind::Plain);
    };
    // SAFETY: the flow entry's pointer, valid for this run (see classify::class_of).
    let flow = unsafe { &mut *flow };
    let Some(end) = tcp.data_end else {
        return Ok(Kind::Plain);
    };
    if cfg.window.is_on() {
        window::register(meta, flow, class, policy.generation);
    }
    Ok(if flow.note_tcp_data(end) {
        Kind::Repair
    } else {
        Kind::Plain
    })
}
