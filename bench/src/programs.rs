//! The harness's helper programs (`dataplane-ebpf/src/bench.rs`): one loaded copy of the
//! object per use, each with its own maps.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, DevMap, DevMapHash, PerCpuArray, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use dataplane::dataplane::BENCH_OBJECT;

/// Frames `bench_redirect` hands to the redirect per batch in live-frames mode: the NAPI
/// budget, and below the veth ring (256) so a batch never overflows it.
pub const LIVE_BATCH: u32 = 64;

/// Headers `bench_generate` restores (TEMPLATE_BYTES and IPV4_HEADERS in the object):
/// Ethernet + IPv6 + UDP, or Ethernet + IPv4 + UDP.
const TEMPLATE_BYTES: usize = 14 + 40 + 8;
const IPV4_HEADERS: usize = 14 + 20 + 8;

/// Per-CPU counters of `bench_sink` (layout of `SinkCounters` in the eBPF object).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SinkCounters {
    packets: u64,
    bytes: u64,
}

// SAFETY: two u64, no padding.
unsafe impl aya::Pod for SinkCounters {}

/// One loaded copy of the helper object.
pub struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    pub fn load() -> Result<BenchPrograms> {
        Ok(BenchPrograms {
            ebpf: Ebpf::load(BENCH_OBJECT).context("loading the bench eBPF object")?,
        })
    }

    /// Program `name`, loaded into the kernel on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the bench object has no program {name}"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(prog)
    }

    /// Program `name` for test runs (loaded first with [`BenchPrograms::program`]).
    pub fn loaded(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("the bench object has no program {name}"))?
            .try_into()?)
    }

    /// Makes `bench_redirect` and `bench_generate` send frames to `ifindex` (of the calling
    /// thread's namespace).
    pub fn redirect_to(&mut self, ifindex: u32) -> Result<()> {
        let mut map: DevMap<_> = DevMap::try_from(
            self.ebpf
                .map_mut("REDIRECT_TO")
                .context("map REDIRECT_TO")?,
        )?;
        map.set(0, ifindex, None, 0)?;
        Ok(())
    }

    /// Attaches `name` to `iface` of the calling thread's namespace, natively.
    pub fn attach(&mut self, name: &str, iface: &str) -> Result<()> {
        self.program(name)?
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        Ok(())
    }

    /// Frames and bytes `bench_sink` has counted, summed over CPUs.
    pub fn sink_counters(&self) -> Result<(u64, u64)> {
        let map: PerCpuArray<_, SinkCounters> =
            PerCpuArray::try_from(self.ebpf.map("SINK").context("map SINK")?)?;
        let values = map.get(&0, 0)?;
        Ok(values
            .iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
    }

    /// Makes `bench_vary` cycle through `flows` flows and then run `target`.
    pub fn vary_into(&mut self, target: &ProgramFd, flows: u32) -> Result<()> {
        self.program("bench_vary")?;
        let mut under_test: ProgramArray<_> =
            ProgramArray::try_from(self.ebpf.map_mut("UNDER_TEST").context("map UNDER_TEST")?)?;
        under_test.set(0, target, 0)?;
        let mut n: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("FLOWS").context("map FLOWS")?)?;
        n.set(0, flows, 0)?;
        Ok(())
    }

    /// Makes `bench_fib_forward` able to redirect to `ifindex` (of the calling thread's
    /// namespace).
    pub fn fib_egress(&mut self, ifindex: u32) -> Result<()> {
        let mut map: DevMapHash<_> =
            DevMapHash::try_from(self.ebpf.map_mut("FIB_EGRESS").context("map FIB_EGRESS")?)?;
        map.insert(ifindex, ifindex, None, 0)?;
        Ok(())
    }

    /// Makes `bench_generate` cycle through `flows` flows (1: every frame as given).
    pub fn generate_flows(&mut self, flows: u32) -> Result<()> {
        let mut n: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("FLOWS").context("map FLOWS")?)?;
        n.set(0, flows, 0)?;
        Ok(())
    }

    /// Runs `bench_generate` over `count` copies of `frame` as live frames; returns how long
    /// the call took, which includes the softirq work it triggers on this CPU (the
    /// receiving veths' NAPI runs when each batch re-enables bottom halves).
    pub fn generate(&mut self, frame: &[u8], count: u32) -> Result<Duration> {
        let ipv6 = frame.get(12..14) == Some(&[0x86, 0xdd][..]);
        let len = if ipv6 { TEMPLATE_BYTES } else { IPV4_HEADERS };
        let mut headers = [0u8; TEMPLATE_BYTES];
        headers[..len].copy_from_slice(
            frame
                .get(..len)
                .context("the generator's frame is shorter than its headers")?,
        );
        let mut template: Array<_, [u8; TEMPLATE_BYTES]> =
            Array::try_from(self.ebpf.map_mut("TEMPLATE").context("map TEMPLATE")?)?;
        template.set(0, headers, 0)?;
        let mut template_len: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut("TEMPLATE_LEN")
                .context("map TEMPLATE_LEN")?,
        )?;
        template_len.set(0, len as u32, 0)?;
        let prog = self.program("bench_generate")?;
        let start = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
        Ok(start.elapsed())
    }
}
