//! Helper programs for the benchmark harness (`dataplane-bench`), built as an object of their
//! own so the dataplane's object carries none of them:
//!
//! - `bench_amplify` and `bench_stamp`: the traffic generator's amplifier (these kernels
//!   have no pktgen, and some refuse live-frames test runs). Every seed frame the harness
//!   sends into the amplifier's veth leaves as `COPIES` frames through `AMPLIFY`, a
//!   broadcast redirect, in one batch; `bench_stamp`, the devmap program of each copy, gives
//!   it the next of `FLOWS` flows.
//! - `bench_redirect`: sends every frame to the device in slot 0 of its devmap; attached to a
//!   gateway port it is the bare-forwarding floor.
//! - `bench_fib_forward`: a bare FIB forwarder, what xdp-forward's `fib-full` mode does and
//!   nothing else: route lookup, TTL / hop limit, MAC rewrite, redirect through a devmap.
//! - `bench_sink`: counts frames and bytes per CPU and drops them, at the receiving veth.
//! - `bench_vary`: gives each run of BPF_PROG_TEST_RUN another flow, then tail-calls the
//!   program under test, so flow-cache figures see many keys instead of one hot entry.
//! - `bench_clock_*`: call one clock helper `CLOCK_CALLS` times, to price a clock read.
#![no_std]
#![no_main]

mod runtime;

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    bindings::{xdp_action, BPF_F_BROADCAST},
    btf_maps::{Array, DevMap, DevMapHash, PerCpuArray, ProgramArray},
    helpers::{
        bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, generated::bpf_fib_lookup,
    },
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use dataplane_common::wire::{self, ETH_HLEN, IPV4_MIN_HLEN, IPV6_HLEN, UDP_HLEN};

/// Slot 0: where `bench_redirect` sends frames.
#[btf_map]
static REDIRECT_TO: DevMap<1> = DevMap::new();
/// The amplifier's copies: every slot holds the generator's egress veth with `bench_stamp`.
#[btf_map]
static AMPLIFY: DevMap<COPIES> = DevMap::new();
/// The devices `bench_fib_forward` may redirect to, keyed by ifindex.
#[btf_map]
static FIB_EGRESS: DevMapHash<8> = DevMapHash::new();
/// Frames and bytes `bench_sink` received, per CPU.
#[btf_map]
static SINK: PerCpuArray<SinkCounters, 1> = PerCpuArray::new();
/// Slot 0: the program `bench_vary` hands each frame to.
#[btf_map]
static UNDER_TEST: ProgramArray<1> = ProgramArray::new();
/// Slot 0: how many distinct flows `bench_vary` cycles through.
#[btf_map]
static FLOWS: Array<u32, 1> = Array::new();
/// Per CPU: the index of the next flow `bench_vary` writes.
#[btf_map]
static NEXT_FLOW: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Layout shared with the harness: two u64 counters.
#[repr(C)]
pub struct SinkCounters {
    packets: u64,
    bytes: u64,
}

/// Frames the amplifier makes of each seed: a NAPI budget, so one poll of the receiving veth
/// takes a seed's copies in one batch.
const COPIES: usize = 64;
/// Ethernet + IPv6 + UDP headers.
const IPV6_HEADERS: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;
/// Ethernet + IPv4 + UDP headers.
const IPV4_HEADERS: usize = ETH_HLEN + IPV4_MIN_HLEN + UDP_HLEN;
/// Where a generated IPv4 frame's flow number goes: the low half of the source address
/// (with the header checksum updated), and the UDP source port.
const IPV4_SRC_LOW_OFFSET: usize = ETH_HLEN + wire::IPV4_SRC_OFFSET + 2;
const IPV4_CHECKSUM_OFFSET: usize = ETH_HLEN + wire::IPV4_CHECKSUM_OFFSET;
/// A generated IPv6 frame's flow number: the source address's last four bytes.
const IPV6_SRC_LOW_OFFSET: usize = ETH_HLEN + wire::IPV6_SRC_OFFSET + 12;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// Ethernet + IPv4 (no options) + UDP: where `bench_vary` writes the flow.
const IPV4_SRC_OFFSET: usize = ETH_HLEN + wire::IPV4_SRC_OFFSET;
const UDP_SRC_PORT_OFFSET: usize = ETH_HLEN + IPV4_MIN_HLEN;
/// Flow `i` gets source 198.18.0.0 + (i mod 2^17) (all of 198.18.0.0/15) and source port
/// BASE_SRC_PORT + i / 2^17.
const ADDR_BITS: u32 = 17;
const BASE_SRC_ADDR: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const BASE_SRC_PORT: u32 = 40000;
/// Flows are visited in the order `i * SCATTER mod flows` (a permutation while `flows` is no
/// multiple of this prime): consecutive packets belong to flows far apart, as in real
/// traffic, so no table gains from having placed consecutive flows side by side (an
/// allocator handing out entries in insertion order would, and a prefetcher would hide
/// every miss).
const SCATTER: u64 = 1_000_003;
/// Helper calls per run of a clock program: enough to lift one call's cost above the noise.
const CLOCK_CALLS: usize = 16;

/// One seed frame in, `COPIES` frames out of the generator's egress veth, in one batch.
#[xdp]
pub fn bench_amplify(_ctx: XdpContext) -> u32 {
    AMPLIFY
        .redirect(0, u64::from(BPF_F_BROADCAST))
        .unwrap_or(xdp_action::XDP_ABORTED)
}

/// Each amplified copy's devmap program: the next of `FLOWS` flows (1: left as it is).
#[xdp(map = "devmap")]
pub fn bench_stamp(ctx: XdpContext) -> u32 {
    let flows = FLOWS.get(0).copied().unwrap_or(1);
    if flows > 1 {
        if let Some(next) = NEXT_FLOW.get_ptr_mut(0) {
            // SAFETY: per-CPU value; XDP does not nest on one CPU.
            let i = unsafe { *next } % flows;
            unsafe { *next = i + 1 };
            vary_generated(&ctx, scattered(i, flows));
        }
    }
    xdp_action::XDP_PASS
}

/// Makes a generated frame flow `i`: IPv4 takes the low half of its source address from
/// `i` (the header checksum follows, RFC 1624) and its source port from `i`'s high bits;
/// IPv6 takes the source address's last four bytes.
#[inline(always)]
fn vary_generated(ctx: &XdpContext, i: u32) {
    let start = ctx.data();
    if start + IPV4_HEADERS > ctx.data_end() {
        return;
    }
    // SAFETY: the bounds check above covers every access below up to IPV4_HEADERS.
    unsafe {
        let ethertype = *((start + 12) as *const [u8; 2]);
        if ethertype == ETHERTYPE_IPV4 {
            let low = (start + IPV4_SRC_LOW_OFFSET) as *mut [u8; 2];
            let check = (start + IPV4_CHECKSUM_OFFSET) as *mut [u8; 2];
            let old = u16::from_be_bytes(core::ptr::read_unaligned(low));
            let new = i as u16;
            let sum = !u16::from_be_bytes(core::ptr::read_unaligned(check)) as u32
                + (!old) as u32
                + new as u32;
            let sum = (sum & 0xffff) + (sum >> 16);
            let sum = (sum & 0xffff) + (sum >> 16);
            core::ptr::write_unaligned(low, new.to_be_bytes());
            core::ptr::write_unaligned(check, (!(sum as u16)).to_be_bytes());
            let port = ((BASE_SRC_PORT + (i >> 16)) as u16).to_be_bytes();
            core::ptr::write_unaligned((start + UDP_SRC_PORT_OFFSET) as *mut [u8; 2], port);
        } else if ethertype == ETHERTYPE_IPV6 && start + IPV6_HEADERS <= ctx.data_end() {
            core::ptr::write_unaligned(
                (start + IPV6_SRC_LOW_OFFSET) as *mut [u8; 4],
                i.to_be_bytes(),
            );
        }
    }
}

#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    REDIRECT_TO
        .redirect(0, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

/// xdp-forward's `fib-full` mode: the kernel's route lookup with its routing rules, then
/// TTL / hop limit, MACs and a devmap redirect. What it cannot forward goes to the kernel.
#[xdp]
pub fn bench_fib_forward(ctx: XdpContext) -> u32 {
    fib_forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn fib_forward(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    if start + 14 + 20 > ctx.data_end() {
        return None;
    }
    // SAFETY: all zeroes is the plain C struct's "no input" state.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    // SAFETY: the bounds checks cover every header access below.
    let ipv4 = unsafe { *((start + 12) as *const [u8; 2]) } == ETHERTYPE_IPV4;
    let ip = start + 14;
    unsafe {
        if ipv4 {
            let h = &*(ip as *const [u8; 20]);
            if h[8] <= 1 {
                return None;
            }
            fib.family = 2;
            fib.__bindgen_anon_2.tos = h[1];
            fib.l4_protocol = h[9];
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([h[2], h[3]]);
            core::ptr::copy_nonoverlapping(
                h.as_ptr().add(12),
                core::ptr::addr_of_mut!(fib.__bindgen_anon_3) as *mut u8,
                4,
            );
            core::ptr::copy_nonoverlapping(
                h.as_ptr().add(16),
                core::ptr::addr_of_mut!(fib.__bindgen_anon_4) as *mut u8,
                4,
            );
        } else {
            if start + 14 + 40 > ctx.data_end() {
                return None;
            }
            let h = &*(ip as *const [u8; 40]);
            if h[7] <= 1 {
                return None;
            }
            fib.family = 10;
            fib.__bindgen_anon_2.flowinfo =
                u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) & 0x0fff_ffffu32.to_be();
            fib.l4_protocol = h[6];
            fib.__bindgen_anon_1.tot_len = u16::from_be_bytes([h[4], h[5]]);
            core::ptr::copy_nonoverlapping(
                h.as_ptr().add(8),
                core::ptr::addr_of_mut!(fib.__bindgen_anon_3) as *mut u8,
                16,
            );
            core::ptr::copy_nonoverlapping(
                h.as_ptr().add(24),
                core::ptr::addr_of_mut!(fib.__bindgen_anon_4) as *mut u8,
                16,
            );
        }
    }
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the context and a parameter struct of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe {
        if ipv4 {
            let h = &mut *(ip as *mut [u8; 20]);
            let old = u16::from_be_bytes([h[8], h[9]]);
            h[8] -= 1;
            let new = u16::from_be_bytes([h[8], h[9]]);
            let sum = !u16::from_be_bytes([h[10], h[11]]) as u32 + (!old) as u32 + new as u32;
            let sum = (sum & 0xffff) + (sum >> 16);
            let sum = (sum & 0xffff) + (sum >> 16);
            let check = (!(sum as u16)).to_be_bytes();
            h[10] = check[0];
            h[11] = check[1];
        } else {
            let h = &mut *(ip as *mut [u8; 40]);
            h[7] -= 1;
        }
        let eth = &mut *(start as *mut [u8; 12]);
        eth[..6].copy_from_slice(&fib.dmac);
        eth[6..].copy_from_slice(&fib.smac);
    }
    FIB_EGRESS.redirect(fib.ifindex, 0).ok()
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    if let Some(c) = SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU value; XDP does not nest on one CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_vary(ctx: XdpContext) -> u32 {
    let flows = FLOWS.get(0).copied().unwrap_or(1).max(1);
    if let Some(next) = NEXT_FLOW.get_ptr_mut(0) {
        // SAFETY: per-CPU value; XDP does not nest on one CPU.
        let i = unsafe { *next } % flows;
        unsafe { *next = i + 1 };
        write_flow(&ctx, scattered(i, flows));
    }
    // SAFETY: ctx and the map are valid; the call does not return when the slot is set.
    unsafe { UNDER_TEST.tail_call(&ctx, 0) };
    // Only reached with an empty slot: a harness bug, visible as an aborted verdict.
    xdp_action::XDP_ABORTED
}

/// The `i`th flow visited of `flows` (see [`SCATTER`]).
#[inline(always)]
fn scattered(i: u32, flows: u32) -> u32 {
    (u64::from(i) * SCATTER % u64::from(flows.max(1))) as u32
}

#[inline(always)]
fn write_flow(ctx: &XdpContext, i: u32) {
    let start = ctx.data();
    if start + UDP_SRC_PORT_OFFSET + 2 > ctx.data_end() {
        return;
    }
    let addr = (BASE_SRC_ADDR + (i & ((1 << ADDR_BITS) - 1))).to_be_bytes();
    let port = ((BASE_SRC_PORT + (i >> ADDR_BITS)) as u16).to_be_bytes();
    // SAFETY: the bounds check above covers both writes.
    unsafe {
        core::ptr::write_unaligned((start + IPV4_SRC_OFFSET) as *mut [u8; 4], addr);
        core::ptr::write_unaligned((start + UDP_SRC_PORT_OFFSET) as *mut [u8; 2], port);
    }
}

/// Calls `clock` CLOCK_CALLS times; the verdict depends on the readings so none is elided.
#[inline(always)]
fn read_clock(clock: unsafe fn() -> u64) -> u32 {
    let mut acc = 0u64;
    for _ in 0..CLOCK_CALLS {
        // SAFETY: clock helpers have no preconditions.
        acc ^= unsafe { clock() };
    }
    if acc == u64::MAX {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The clock the policer uses.
#[xdp]
pub fn bench_clock_ktime(_ctx: XdpContext) -> u32 {
    read_clock(bpf_ktime_get_ns)
}

/// The jiffy-resolution alternative.
#[xdp]
pub fn bench_clock_coarse(_ctx: XdpContext) -> u32 {
    read_clock(bpf_ktime_get_coarse_ns)
}

/// Monotonic including suspend.
#[xdp]
pub fn bench_clock_boot(_ctx: XdpContext) -> u32 {
    read_clock(bpf_ktime_get_boot_ns)
}
