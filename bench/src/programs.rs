//! The harness's helper programs (`dataplane-ebpf/src/bench.rs`): one loaded copy of the
//! object per use, each with its own maps.

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, DevMap, DevMapHash, PerCpuArray, ProgramArray},
    programs::{ProgramFd, Xdp, XdpMode},
    Ebpf,
};
use dataplane::dataplane::BENCH_OBJECT;

/// Frames `bench_amplify` makes of each seed (COPIES in the object).
pub const COPIES: u32 = 64;

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

    /// Makes `bench_redirect` send frames to `ifindex` (of the calling thread's namespace).
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

    /// Makes `bench_amplify`, on `iface`, send `COPIES` copies of every frame out of `to`,
    /// each through `bench_stamp` (both of the calling thread's namespace).
    pub fn amplify(&mut self, iface: &str, to: u32) -> Result<()> {
        let stamp = self.program("bench_stamp")?.fd()?.try_clone()?;
        let mut copies: DevMap<_> =
            DevMap::try_from(self.ebpf.map_mut("AMPLIFY").context("map AMPLIFY")?)?;
        for slot in 0..COPIES {
            copies.set(slot, to, Some(&stamp), 0)?;
        }
        self.attach("bench_amplify", iface)
    }

    /// Makes `bench_stamp` cycle through `flows` flows (1: every copy as its seed).
    pub fn generate_flows(&mut self, flows: u32) -> Result<()> {
        let mut n: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("FLOWS").context("map FLOWS")?)?;
        n.set(0, flows, 0)?;
        Ok(())
    }
}
