//! Forward: the flow's cached next hop, or a route lookup in the kernel's FIB
//! (`bpf_fib_lookup`, which honours routing rules, neighbour state and MTUs), then a redirect through the device map to the egress interface
//! with the MACs rewritten and the TTL / hop limit decremented. Whatever the lookup cannot
//! finish goes to the kernel, counted by reason: it resolves neighbours, sends ICMP errors
//! and fragments.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{bpf_fib_lookup, bpf_jiffies64},
    programs::XdpContext,
    EbpfContext,
};
use dataplane_common::{
    flow::{FlowState, NextHop},
    forward::{
        af, fib_verdict, forwardable, ipv4_decrement_ttl, ipv6_decrement_hop_limit, routable_v4,
        routable_v6,
    },
    maps::{class_counter_index, IfaceConfig},
    packet::{Family, PacketMeta},
    reason::Reason,
    wire::{
        ETH_HLEN, IPV4_CHECKSUM_OFFSET, IPV4_DST_OFFSET, IPV4_MIN_HLEN, IPV4_SRC_OFFSET,
        IPV4_TTL_OFFSET, IPV6_DST_OFFSET, IPV6_HLEN, IPV6_HOP_LIMIT_OFFSET, IPV6_SRC_OFFSET,
        MAC_LEN,
    },
};

use crate::{
    frame::Frame,
    maps::{
        iface, EGRESS_DEVICES, FIB_SCRATCH, FORWARD_COUNTERS, IFACE_COUNTERS, ROUTE_GENERATION,
    },
};

/// IPv4 header bytes we write: up to and including the checksum.
const IPV4_HEAD: usize = IPV4_CHECKSUM_OFFSET + 2;
/// IPv6 header bytes we write: up to and including the hop limit.
const IPV6_HEAD: usize = IPV6_HOP_LIMIT_OFFSET + 1;
/// Traffic class and flow label bits of the first IPv6 header word (without the version).
const IPV6_FLOWINFO_MASK: u32 = 0x0fff_ffff;

/// Forwards a packet the policy let through: `Ok(XDP_REDIRECT)`, or why the kernel gets it.
/// A flow the cache holds reuses its next hop while it is valid (see `NextHop`); otherwise
/// the kernel's route lookup answers, and the flow keeps the answer. Nothing in the frame
/// changes before the redirect is set up, so a packet handed to the kernel is the one that
/// arrived (after the policy's DSCP/ECN rewrite).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &XdpContext,
    frame: &Frame,
    meta: &PacketMeta,
    iface: &IfaceConfig,
    tos: u8,
    class: u32,
    bytes: u32,
    flow: Option<*mut FlowState>,
) -> Result<u32, Reason> {
    let dst_mac = frame
        .slice_mut::<MAC_LEN>(0)
        .ok_or(Reason::TruncatedEthernet)?;
    // SAFETY: slice_mut checked the bytes lie inside the frame.
    let dst_mac = unsafe { &*dst_mac };
    // Also guarantees the IP header starts at ETH_HLEN (no VLAN tags).
    forwardable(meta, dst_mac, &iface.mac)?;
    let tot_len = routable_length(frame, meta)?;

    // Only a flow the cache holds reads the route generation and the clock. Read before the
    // lookup: a change after this read leaves what the lookup stores stale at once, never
    // the other way round.
    let cached = flow.map(|flow| {
        // SAFETY: the helper takes no arguments.
        let now = unsafe { bpf_jiffies64() } as u32;
        (flow, ROUTE_GENERATION.get(0).copied().unwrap_or(0), now)
    });
    if let Some((flow, route_generation, now)) = cached {
        // SAFETY: the flow entry's pointer, valid for this run (see classify::class_of).
        let hop = unsafe { &(*flow).next_hop };
        if hop.usable(route_generation, now, tos, tot_len) {
            return send(
                frame,
                meta,
                hop.egress_ifindex,
                u32::from(hop.egress_slot),
                &hop.dst_mac,
                &hop.src_mac,
                class,
                bytes,
            );
        }
    }

    if let Some(c) = IFACE_COUNTERS.get_ptr_mut(iface.slot) {
        // SAFETY: per-CPU value; XDP does not nest on one CPU.
        unsafe { (*c).route_lookups += 1 };
    }
    let fib = lookup(ctx, frame, meta, tos, tot_len)?;
    let egress = fib.ifindex;
    let egress_slot = egress_slot(egress)?;
    if let Some((flow, route_generation, now)) = cached {
        // SAFETY: as above; after a successful lookup the length field holds the MTU.
        unsafe {
            (*flow).next_hop = NextHop {
                route_generation,
                egress_ifindex: egress,
                egress_slot: egress_slot as u16,
                mtu: fib.__bindgen_anon_1.mtu_result,
                dscp: tos >> 2,
                _pad: 0,
                dst_mac: fib.dmac,
                src_mac: fib.smac,
                looked_up: now,
            };
        }
    }
    send(
        frame,
        meta,
        egress,
        egress_slot,
        &fib.dmac,
        &fib.smac,
        class,
        bytes,
    )
}

/// Checks the addresses are ones the kernel would forward and returns the IP packet's length
/// (what the route lookup compares with the egress MTU).
#[inline(always)]
fn routable_length(frame: &Frame, meta: &PacketMeta) -> Result<u16, Reason> {
    match meta.family {
        Family::V4 => {
            let h = ipv4_header(frame)?;
            routable_v4(h[IPV4_SRC_OFFSET], h[IPV4_DST_OFFSET])?;
            Ok(u16::from_be_bytes([h[2], h[3]]))
        }
        Family::V6 => {
            let h = ipv6_header(frame)?;
            let (src, dst) = ipv6_addresses(h);
            routable_v6(src, dst)?;
            Ok(u16::from_be_bytes([h[4], h[5]]).saturating_add(IPV6_HLEN as u16))
        }
    }
}

/// The frame's IPv4 header (without options), bounds-checked.
#[inline(always)]
fn ipv4_header(frame: &Frame) -> Result<&[u8; IPV4_MIN_HLEN], Reason> {
    let h = frame
        .slice_mut::<IPV4_MIN_HLEN>(ETH_HLEN)
        .ok_or(Reason::TruncatedIpv4)?;
    // SAFETY: slice_mut checked the bytes lie inside the frame.
    Ok(unsafe { &*h })
}

/// The frame's IPv6 header, bounds-checked.
#[inline(always)]
fn ipv6_header(frame: &Frame) -> Result<&[u8; IPV6_HLEN], Reason> {
    let h = frame
        .slice_mut::<IPV6_HLEN>(ETH_HLEN)
        .ok_or(Reason::TruncatedIpv6)?;
    // SAFETY: slice_mut checked the bytes lie inside the frame.
    Ok(unsafe { &*h })
}

/// The source and destination of a checked IPv6 header.
#[inline(always)]
fn ipv6_addresses(h: &[u8; IPV6_HLEN]) -> (&[u8; 16], &[u8; 16]) {
    // SAFETY: 16 bytes each, inside the header.
    unsafe {
        (
            &*(h.as_ptr().add(IPV6_SRC_OFFSET) as *const [u8; 16]),
            &*(h.as_ptr().add(IPV6_DST_OFFSET) as *const [u8; 16]),
        )
    }
}

/// The kernel's route lookup (`bpf_fib_lookup`, which honours routing rules, neighbour state
/// and MTUs) for the packet as the policy left it: its answer, or why the kernel gets it.
#[inline(always)]
fn lookup<'a>(
    ctx: &XdpContext,
    frame: &Frame,
    meta: &PacketMeta,
    tos: u8,
    tot_len: u16,
) -> Result<&'a FibParams, Reason> {
    let fib = FIB_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Reason::ScratchUnavailable)?;
    // SAFETY: per-CPU map value, XDP does not nest on one CPU; all zeroes is the plain C
    // struct's "no input" state (the previous packet's results must not leak in).
    let fib = unsafe {
        core::ptr::write_bytes(fib, 0, 1);
        &mut *fib
    };
    fib.l4_protocol = meta.protocol;
    fib.sport = meta.src_port.to_be();
    fib.dport = meta.dst_port.to_be();
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = tot_len;
    match meta.family {
        Family::V4 => {
            let h = ipv4_header(frame)?;
            fib.family = af::INET;
            fib.__bindgen_anon_2.tos = tos;
            // Addresses stay in network byte order, as the helper wants them.
            // SAFETY: four bytes each, inside the checked header, into plain map memory.
            unsafe {
                copy_bytes::<4, _>(&h[IPV4_SRC_OFFSET], addr_of_mut!(fib.__bindgen_anon_3));
                copy_bytes::<4, _>(&h[IPV4_DST_OFFSET], addr_of_mut!(fib.__bindgen_anon_4));
            }
        }
        Family::V6 => {
            let h = ipv6_header(frame)?;
            let (src, dst) = ipv6_addresses(h);
            fib.family = af::INET6;
            // The traffic class as the policy left it, and the flow label.
            fib.__bindgen_anon_2.flowinfo =
                u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) & IPV6_FLOWINFO_MASK.to_be();
            // SAFETY: 16 bytes each, inside the checked header, into plain map memory.
            unsafe {
                copy_bytes::<16, _>(&src[0], addr_of_mut!(fib.__bindgen_anon_3));
                copy_bytes::<16, _>(&dst[0], addr_of_mut!(fib.__bindgen_anon_4));
            }
        }
    }
    // SAFETY: the context and a parameter struct of the size we pass.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    fib_verdict(ret)?;
    Ok(fib)
}

/// Sends the packet to `egress`: TTL / hop limit decremented, MACs rewritten, counted on the
/// egress interface's slot. An expired packet goes to the kernel as it arrived (the kernel
/// sends the ICMP error): the TTL is decided before anything is written.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send(
    frame: &Frame,
    meta: &PacketMeta,
    egress: u32,
    egress_slot: u32,
    dst_mac: &[u8; MAC_LEN],
    src_mac: &[u8; MAC_LEN],
    class: u32,
    bytes: u32,
) -> Result<u32, Reason> {
    let action = if meta.family == Family::V4 {
        let h = frame
            .slice_mut::<IPV4_HEAD>(ETH_HLEN)
            .ok_or(Reason::TruncatedIpv4)?;
        // SAFETY: slice_mut checked the bytes lie inside the frame.
        let h = unsafe { &mut *h };
        let check = u16::from_be_bytes([h[IPV4_CHECKSUM_OFFSET], h[IPV4_CHECKSUM_OFFSET + 1]]);
        let (ttl, check) = ipv4_decrement_ttl(h[IPV4_TTL_OFFSET], h[IPV4_TTL_OFFSET + 1], check)?;
        let action = redirect(egress)?;
        h[IPV4_TTL_OFFSET] = ttl;
        let check = check.to_be_bytes();
        h[IPV4_CHECKSUM_OFFSET] = check[0];
        h[IPV4_CHECKSUM_OFFSET + 1] = check[1];
        action
    } else {
        let h = frame
            .slice_mut::<IPV6_HEAD>(ETH_HLEN)
            .ok_or(Reason::TruncatedIpv6)?;
        // SAFETY: as above.
        let h = unsafe { &mut *h };
        let hop_limit = ipv6_decrement_hop_limit(h[IPV6_HOP_LIMIT_OFFSET])?;
        let action = redirect(egress)?;
        h[IPV6_HOP_LIMIT_OFFSET] = hop_limit;
        action
    };
    let eth = frame
        .slice_mut::<{ 2 * MAC_LEN }>(0)
        .ok_or(Reason::TruncatedEthernet)?;
    // SAFETY: as above.
    let eth = unsafe { &mut *eth };
    eth[..MAC_LEN].copy_from_slice(dst_mac);
    eth[MAC_LEN..].copy_from_slice(src_mac);
    count(egress_slot, class, bytes);
    Ok(action)
}

/// Copies `N` bytes from the frame into a field of the parameter block.
///
/// # Safety
/// `N` bytes must be readable at `from` and writable at `to`.
#[inline(always)]
unsafe fn copy_bytes<const N: usize, T>(from: &u8, to: *mut T) {
    core::ptr::copy_nonoverlapping(from as *const u8, to as *mut u8, N);
}

/// The counter slot of the egress interface the lookup chose. Only registered interfaces are
/// in the device map, and they are registered interfaces too: checking that first gives the
/// clearer reason.
#[inline(always)]
fn egress_slot(egress: u32) -> Result<u32, Reason> {
    Ok(iface(egress).ok_or(Reason::EgressNotRegistered)?.slot)
}

/// Sets up the redirect to `egress`. On a device-map miss (an interface unregistered since
/// the lookup) the helper falls back to `XDP_PASS`, reported as a reason.
#[inline(always)]
fn redirect(egress: u32) -> Result<u32, Reason> {
    EGRESS_DEVICES
        .redirect(egress, u64::from(xdp_action::XDP_PASS))
        .map_err(|_| Reason::RedirectFailed)
}

/// Counts a forwarded packet on its egress interface's slot.
#[inline(always)]
fn count(egress_slot: u32, class: u32, bytes: u32) {
    if let Some(c) = FORWARD_COUNTERS.get_ptr_mut(class_counter_index(egress_slot, class)) {
        // SAFETY: per-CPU value; XDP does not nest on one CPU.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += u64::from(bytes);
    }
}
