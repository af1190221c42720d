//! Act: apply the class's action for the packet's colour and rewrite the DS field
//! (IPv4 checksum updated incrementally, IPv6 traffic class split across two bytes).

use dataplane_common::{
    action::{apply, mark_ce, Outcome},
    checksum::replace_word,
    flow::FlowState,
    maps::{ClassConfig, ClassCounters},
    packet::{Family, PacketMeta},
    reason::Reason,
    wire::IPV4_CHECKSUM_OFFSET,
};

use crate::{
    frame::Frame,
    police::{Policed, Signal},
};

/// Applies the action (and an early signal) and counts the packet for its class and flow;
/// the DS field the packet leaves with, or `Err` for drops and failed rewrites.
#[inline(always)]
pub fn act(
    frame: &Frame,
    meta: &PacketMeta,
    cfg: &ClassConfig,
    policed: &Policed,
    bytes: u32,
    counters: Option<*mut ClassCounters>,
    flow: Option<*mut FlowState>,
) -> Result<u8, Reason> {
    let colour = policed.colour;
    let outcome = match policed.signal {
        Signal::None => apply(cfg.actions[colour as usize], meta.tos),
        Signal::Mark => mark_ce(apply(cfg.actions[colour as usize], meta.tos)),
        Signal::Drop => Outcome::Drop,
    };
    if let Some(f) = flow {
        // SAFETY: the flow entry's pointer (see classify::class_of); plain data.
        count_flow(unsafe { &mut *f }, &outcome, policed.repaired, bytes);
    }
    if let Some(c) = counters {
        // SAFETY: per-CPU value; XDP does not nest on one CPU.
        let c = unsafe { &mut *c };
        c.packets += 1;
        if policed.repaired {
            c.repaired_packets += 1;
        }
        c.bytes += u64::from(bytes);
        c.colour_packets[colour as usize] += 1;
        match outcome {
            Outcome::Drop | Outcome::DropNotEct => {
                c.dropped_packets += 1;
                c.dropped_bytes += u64::from(bytes);
                if policed.signal == Signal::Drop {
                    c.early_dropped_packets += 1;
                }
            }
            Outcome::Pass {
                ecn_marked,
                remarked,
                ..
            } => {
                if ecn_marked {
                    c.ecn_marked_packets += 1;
                    c.ecn_marked_bytes += u64::from(bytes);
                    if policed.signal == Signal::Mark {
                        c.early_marked_packets += 1;
                    }
                }
                if remarked {
                    c.remarked_packets += 1;
                    c.remarked_bytes += u64::from(bytes);
                }
            }
        }
    }
    match outcome {
        Outcome::Drop => Err(Reason::PolicyDrop),
        Outcome::DropNotEct => Err(Reason::EcnNotCapable),
        Outcome::Pass { tos, .. } if tos != meta.tos => rewrite_tos(frame, meta, tos).map(|()| tos),
        Outcome::Pass { tos, .. } => Ok(tos),
    }
}

#[inline(always)]
fn count_flow(f: &mut FlowState, outcome: &Outcome, repaired: bool, bytes: u32) {
    f.packets += 1;
    f.bytes += u64::from(bytes);
    match outcome {
        Outcome::Drop | Outcome::DropNotEct => f.dropped_packets += 1,
        Outcome::Pass {
            ecn_marked: true, ..
        } => f.marked_packets += 1,
        Outcome::Pass { .. } => {}
    }
    if repaired {
        f.repaired_packets += 1;
    }
}

#[inline(always)]
fn rewrite_tos(frame: &Frame, meta: &PacketMeta, tos: u8) -> Result<(), Reason> {
    match meta.family {
        Family::V4 => {
            let h = frame
                .slice_mut::<{ IPV4_CHECKSUM_OFFSET + 2 }>(meta.l3_offset)
                .ok_or(Reason::RewriteFailed)?;
            // SAFETY: slice_mut checked the bytes lie inside the frame.
            let h = unsafe { &mut *h };
            let old = u16::from_be_bytes([h[0], h[1]]);
            let new = u16::from_be_bytes([h[0], tos]);
            let check = u16::from_be_bytes([h[IPV4_CHECKSUM_OFFSET], h[IPV4_CHECKSUM_OFFSET + 1]]);
            h[1] = tos;
            let check = replace_word(check, old, new).to_be_bytes();
            h[IPV4_CHECKSUM_OFFSET] = check[0];
            h[IPV4_CHECKSUM_OFFSET + 1] = check[1];
        }
        Family::V6 => {
            let h = frame
                .slice_mut::<2>(meta.l3_offset)
                .ok_or(Reason::RewriteFailed)?;
            // SAFETY: as above.
            let h = unsafe { &mut *h };
            h[0] = (h[0] & 0xf0) | (tos >> 4);
            h[1] = (h[1] & 0x0f) | (tos << 4);
        }
    }
    Ok(())
}
