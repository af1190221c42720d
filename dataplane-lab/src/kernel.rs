//! Helpers for tests that load the real XDP object into the running kernel.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};

/// Fails the test loudly unless it runs as root: kernel tests never skip.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "kernel tests need root (CAP_BPF, CAP_NET_ADMIN): run `sudo cargo xtask test`"
    );
}

/// Parses `toml`, loads a fresh dataplane and applies the policy.
pub fn load_policy(toml: &str) -> (Dataplane, Policy) {
    require_root();
    let policy = Policy::from_toml_str(toml, "test policy").expect("test policy is valid");
    let mut dp = Dataplane::load().expect("the XDP object loads and passes the verifier");
    dp.apply(&CompiledPolicy::new(&policy))
        .expect("policy applies");
    (dp, policy)
}

/// Ifindex of loopback, the device BPF_PROG_TEST_RUN attributes frames to by default.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// The context (`struct xdp_md`) of a BPF_PROG_TEST_RUN run of a `frame_len`-byte frame that
/// arrived on interface `ingress` (which must exist in the caller's namespace).
pub fn ingress_ctx(ingress: u32, frame_len: usize) -> Vec<u8> {
    // data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, frame_len as u32, 0, ingress, 0, 0];
    md.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Result of one frame through BPF_PROG_TEST_RUN.
pub struct Run {
    /// XDP verdict.
    pub action: u32,
    /// The frame after the program (rewrites included).
    pub output: Vec<u8>,
}

/// Runs `frame` through `prog` once.
pub fn run_once(prog: &Xdp, frame: &[u8]) -> Run {
    try_run_once(prog, frame).expect("BPF_PROG_TEST_RUN")
}

/// Runs `frame` through `prog` once; the kernel refuses frames shorter than an Ethernet
/// header before the program sees them.
pub fn try_run_once(prog: &Xdp, frame: &[u8]) -> Result<Run, aya::programs::ProgramError> {
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..TestRunOptions::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(Run {
        action: res.return_value,
        output: out,
    })
}

/// Runs `frame` `repeat` times; returns the kernel's mean time per run in nanoseconds.
pub fn run_repeated(prog: &Xdp, frame: &[u8], repeat: u32) -> f64 {
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    res.duration.as_nanos() as f64
}

/// Packets per BPF_PROG_TEST_RUN call of [`run_until_stopped`]: tens of milliseconds of load,
/// so the sender notices `stop` soon yet rarely leaves the kernel (each return to user space
/// lets the scheduler in; measured, calls of 50 000 packets spread admitted rates by ±1%);
/// the microseconds between calls lose no tokens in a bucket of any burst the tests use.
const CHUNK: u32 = 1_000_000;

/// Why a [`run_until_stopped`] sender ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderEnd {
    /// `stop` was set: the sender offered load until the measurement said stop.
    Stopped,
    /// The time bound ran out first.
    TimedOut,
}

/// Offers `frame` to `prog` back to back, in calls of [`CHUNK`] runs, until `stop` is set or
/// `bound` has passed (every load loop is bounded). The load runs for as long as the
/// measurement needs, whatever the machine's speed: nothing is sized from a calibration.
pub fn run_until_stopped(
    prog: &Xdp,
    frame: &[u8],
    stop: &AtomicBool,
    bound: Duration,
) -> SenderEnd {
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if start.elapsed() > bound {
            return SenderEnd::TimedOut;
        }
        run_repeated(prog, frame, CHUNK);
    }
    SenderEnd::Stopped
}

/// Keeps the calling thread on the CPU it runs on now: the flow cache is per CPU, so a test
/// that counts its hits and misses must run every frame on one CPU (a frame the scheduler
/// moved to another meets that CPU's table, a miss).
pub fn stay_on_this_cpu() {
    // SAFETY: a call without arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu)
        .unwrap_or_else(|_| panic!("sched_getcpu: {}", std::io::Error::last_os_error()));
    pin_to_cpu(cpu);
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}
