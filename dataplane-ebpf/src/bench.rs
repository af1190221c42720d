//! Helper programs for the benchmark harness (`dataplane-bench`), built as an object of their
//! own so the dataplane's object carries none of them:
//!
//! - `bench_generate`: the in-kernel traffic generator (this kernel has no pktgen), run with
//!   BPF_F_TEST_XDP_LIVE_FRAMES: restores the frame's headers, then redirects like
//!   `bench_redirect`.
//! - `bench_redirect`: sends every frame to the device in slot 0 of its devmap; attached to a
//!   gateway port it is the bare-forwarding floor.
//! - `bench_sink`: counts frames and bytes per CPU and drops them, at the receiving veth.
//! - `bench_vary`: gives each run of BPF_PROG_TEST_RUN another flow, then tail-calls the
//!   program under test, so flow-cache figures see many keys instead of one hot entry.
//! - `bench_clock_*`: call one clock helper `CLOCK_CALLS` times, to price a clock read.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, DevMap, PerCpuArray, ProgramArray},
    helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{btf_map, xdp},
    programs::XdpContext,
};

/// Slot 0: where `bench_redirect` and `bench_generate` send frames.
#[btf_map]
static REDIRECT_TO: DevMap<1> = DevMap::new();
/// Slot 0: the headers `bench_generate` writes into every frame.
#[btf_map]
static TEMPLATE: Array<[u8; TEMPLATE_BYTES], 1> = Array::new();
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

/// Ethernet + IPv4 + UDP headers, restored by `bench_generate`.
const TEMPLATE_BYTES: usize = 14 + 20 + 8;
/// Ethernet + IPv4 (no options) + UDP: where `bench_vary` writes the flow.
const IPV4_SRC_OFFSET: usize = 14 + 12;
const UDP_SRC_PORT_OFFSET: usize = 14 + 20;
/// Flow `i` gets source 198.18.0.0 + (i mod 2^17) (all of 198.18.0.0/15) and source port
/// BASE_SRC_PORT + i / 2^17.
const ADDR_BITS: u32 = 17;
const BASE_SRC_ADDR: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const BASE_SRC_PORT: u32 = 40000;
/// Helper calls per run of a clock program: enough to lift one call's cost above the noise.
const CLOCK_CALLS: usize = 16;

/// Live-frames mode recycles pages without restoring their contents, and a forwarding
/// gateway rewrites MACs and TTL in place: without the restore, recycled frames would come
/// back addressed to the wrong host.
#[xdp]
pub fn bench_generate(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if let Some(t) = TEMPLATE.get(0) {
        if start + TEMPLATE_BYTES <= ctx.data_end() {
            // SAFETY: the bounds check above covers the write.
            unsafe { core::ptr::write_unaligned(start as *mut [u8; TEMPLATE_BYTES], *t) };
        }
    }
    REDIRECT_TO
        .redirect(0, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
}

#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    REDIRECT_TO
        .redirect(0, 0)
        .unwrap_or(xdp_action::XDP_ABORTED)
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
        write_flow(&ctx, i);
    }
    // SAFETY: ctx and the map are valid; the call does not return when the slot is set.
    unsafe { UNDER_TEST.tail_call(&ctx, 0) };
    // Only reached with an empty slot: a harness bug, visible as an aborted verdict.
    xdp_action::XDP_ABORTED
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
