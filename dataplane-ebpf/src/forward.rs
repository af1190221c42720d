//! Forward: route lookup in the kernel's FIB (`bpf_fib_lookup`, which honours routing rules,
//! neighbour state and MTUs), then a redirect through the device map to the egress interface
//! with the MACs rewritten and the TTL / hop limit decremented. Whatever the lookup cannot
//! finish goes to the kernel, counted by reason: it resolves neighbours, sends ICMP errors
//! and fragments.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
    EbpfContext,
};
use dataplane_common::{
    forward::{
        af, fib_verdict, forwardable, ipv4_decrement_ttl, ipv6_decrement_hop_limit, routable_v4,
        routable_v6, ETH_HLEN, IPV4_CHECKSUM_OFFSET, IPV4_TTL_OFFSET, IPV6_HOP_LIMIT_OFFSET,
        MAC_LEN,
    },
    maps::{class_counter_index, IfaceConfig},
    packet::{Family, PacketMeta},
    reason::Reason,
};

use crate::{
    frame::Frame,
    maps::{EGRESS_DEVICES, FIB_SCRATCH, FORWARD_COUNTERS, IFACES},
};

/// IPv4 header bytes we write: up to and including the checksum.
const IPV4_HEAD: usize = IPV4_CHECKSUM_OFFSET + 2;
const IPV4_MIN_HLEN: usize = 20;
const IPV4_SRC_OFFSET: usize = 12;
const IPV4_DST_OFFSET: usize = 16;
/// IPv6 header bytes we write: up to and including the hop limit.
const IPV6_HEAD: usize = IPV6_HOP_LIMIT_OFFSET + 1;
const IPV6_HLEN: usize = 40;
const IPV6_SRC_OFFSET: usize = 8;
const IPV6_DST_OFFSET: usize = 24;
/// Traffic class and flow label bits of the first IPv6 header word (without the version).
const IPV6_FLOWINFO_MASK: u32 = 0x0fff_ffff;

/// Forwards a packet the policy let through: `Ok(XDP_REDIRECT)`, or why the kernel gets it.
/// Nothing in the frame changes before the redirect is set up, so a packet handed to the
/// kernel is the one that arrived (after the policy's DSCP/ECN rewrite).
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    frame: &Frame,
    meta: &PacketMeta,
    iface: &IfaceConfig,
    tos: u8,
    class: u32,
    bytes: u32,
) -> Result<u32, Reason> {
    let dst_mac = frame
        .slice_mut::<MAC_LEN>(0)
        .ok_or(Reason::TruncatedEthernet)?;
    // SAFETY: slice_mut checked the bytes lie inside the frame.
    let dst_mac = unsafe { &*dst_mac };
    // Also guarantees the IP header starts at ETH_HLEN (no VLAN tags).
    forwardable(meta, dst_mac, &iface.mac)?;

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
    match meta.family {
        Family::V4 => {
            let h = frame
                .slice_mut::<IPV4_MIN_HLEN>(ETH_HLEN)
                .ok_or(Reason::TruncatedIpv4)?;
            // SAFETY: as above.
            let h = unsafe { &*h };
            routable_v4(h[IPV4_SRC_OFFSET], h[IPV4_DST_OFFSET])?;
            fib.family = af::INET;
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([h[2], h[3]]);
            fib.__bindgen_anon_2.tos = tos;
            // Addresses stay in network byte order, as the helper wants them.
            // SAFETY: four bytes each, inside the checked header, into plain map memory.
            unsafe {
                copy_bytes::<4, _>(&h[IPV4_SRC_OFFSET], addr_of_mut!(fib.__bindgen_anon_3));
                copy_bytes::<4, _>(&h[IPV4_DST_OFFSET], addr_of_mut!(fib.__bindgen_anon_4));
            }
        }
        Family::V6 => {
            let h = frame
                .slice_mut::<IPV6_HLEN>(ETH_HLEN)
                .ok_or(Reason::TruncatedIpv6)?;
            // SAFETY: as above.
            let h = unsafe { &*h };
            // SAFETY: 16 bytes each, inside the checked header.
            let (src, dst) = unsafe {
                (
                    &*(h.as_ptr().add(IPV6_SRC_OFFSET) as *const [u8; 16]),
                    &*(h.as_ptr().add(IPV6_DST_OFFSET) as *const [u8; 16]),
                )
            };
            routable_v6(src, dst)?;
            fib.family = af::INET6;
            // The MTU check compares the whole IPv6 packet.
            fib.__bindgen_anon_1.tot_len =
                u16::from_be_bytes([h[4], h[5]]).saturating_add(IPV6_HLEN as u16);
            // The traffic class as the policy left it, and the flow label.
            fib.__bindgen_anon_2.flowinfo =
                u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) & IPV6_FLOWINFO_MASK.to_be();
            // SAFETY: as for IPv4.
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

    // Decide the TTL before anything is written: an expired packet goes to the kernel as it
    // arrived, and the kernel sends the ICMP error.
    let egress = fib.ifindex;
    let (action, egress_slot) = if meta.family == Family::V4 {
        let h = frame
            .slice_mut::<IPV4_HEAD>(ETH_HLEN)
            .ok_or(Reason::TruncatedIpv4)?;
        // SAFETY: as above.
        let h = unsafe { &mut *h };
        let check = u16::from_be_bytes([h[IPV4_CHECKSUM_OFFSET], h[IPV4_CHECKSUM_OFFSET + 1]]);
        let (ttl, check) = ipv4_decrement_ttl(h[IPV4_TTL_OFFSET], h[IPV4_TTL_OFFSET + 1], check)?;
        let redirected = redirect(egress)?;
        h[IPV4_TTL_OFFSET] = ttl;
        let check = check.to_be_bytes();
        h[IPV4_CHECKSUM_OFFSET] = check[0];
        h[IPV4_CHECKSUM_OFFSET + 1] = check[1];
        redirected
    } else {
        let h = frame
            .slice_mut::<IPV6_HEAD>(ETH_HLEN)
            .ok_or(Reason::TruncatedIpv6)?;
        // SAFETY: as above.
        let h = unsafe { &mut *h };
        let hop_limit = ipv6_decrement_hop_limit(h[IPV6_HOP_LIMIT_OFFSET])?;
        let redirected = redirect(egress)?;
        h[IPV6_HOP_LIMIT_OFFSET] = hop_limit;
        redirected
    };
    let eth = frame
        .slice_mut::<{ 2 * MAC_LEN }>(0)
        .ok_or(Reason::TruncatedEthernet)?;
    // SAFETY: as above.
    let eth = unsafe { &mut *eth };
    eth[..MAC_LEN].copy_from_slice(&fib.dmac);
    eth[MAC_LEN..].copy_from_slice(&fib.smac);
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

/// Sets up the redirect to `egress` and returns the verdict and the egress interface's slot.
/// Only registered interfaces are in the device map, and they are in `IFACES` too: checking
/// that first gives the clearer reason. On a device-map miss the helper falls back to
/// `XDP_PASS`, reported as a reason.
#[inline(always)]
fn redirect(egress: u32) -> Result<(u32, u32), Reason> {
    // SAFETY: hash values are plain data, replaced whole by user space.
    let slot = unsafe { IFACES.get(egress) }
        .ok_or(Reason::EgressNotRegistered)?
        .slot;
    let action = EGRESS_DEVICES
        .redirect(egress, u64::from(xdp_action::XDP_PASS))
        .map_err(|_| Reason::RedirectFailed)?;
    Ok((action, slot))
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
