//! Policing in the kernel: offered load far above the configured rates through
//! BPF_PROG_TEST_RUN, on one and two CPUs at once, admitted bytes read from the class counters.
//! Admitted rate: the median over five windows of the admitted bytes per second, sampled
//! while the senders run and the buckets overflow (so neither the senders' start nor the
//! buckets' initial burst counts), within ±1% of the configured rate.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use dataplane::{compile::CompiledPolicy, dataplane::Dataplane};
use dataplane_common::policer::{Colour, LeaseParams, TICKS_PER_NS};
use dataplane_lab::{
    frames::Frame,
    kernel::{load_policy, pin_to_cpu, run_once, run_repeated, run_until_stopped, SenderEnd},
};

const FRAME_BYTES: usize = 1000;
const XDP_PASS: u32 = 2;
/// Time the senders run before the first sample, so the buckets are in steady state.
const WARM_UP: Duration = Duration::from_millis(150);
/// Time over which the counters are sampled, in this many windows (an odd number: the median
/// window is the measurement). Five windows of 500 ms: a sender the VM's host stalls (steal
/// time, seen in CI now and then) skews the windows around each stall, and the median stays
/// clean with two such windows.
const WINDOW: Duration = Duration::from_millis(2500);
const WINDOWS: usize = 5;
/// How precisely a counter sample's moment must be known (0.2% of a window), the pause between
/// its reads, and how long to try for a sample taken while every class overflows.
const SAMPLE_SLACK: Duration = Duration::from_millis(1);
const SAMPLE_PAUSE: Duration = Duration::from_micros(100);
const SAMPLE_BOUND: Duration = Duration::from_secs(2);
/// Bounds every sender in time: far beyond warm-up and window, even on a slow machine.
const SENDER_BOUND: Duration = Duration::from_secs(30);

/// Policing tests measure rates: they must not share the CPUs with each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bursts large enough that a sender thread preempted for a few milliseconds does not lose
/// tokens (which would measure the load generator, not the policer); offered load far above
/// the rates drains them within the warm-up.
const BURST: &str = "32MiB";
/// Link and class bursts under contention: a class's initial burst is guaranteed traffic the
/// link must carry even beyond its own burst, and that overdraft has to drain within the
/// warm-up (2 x 4 MiB at 1 Gbit/s: 67 ms).
const LINK_BURST: &str = "4MiB";

fn udp_frame(dport: u16) -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(40000, dport)
        .pad_to(FRAME_BYTES)
        .build()
}

/// Admitted (green, yellow) bytes per class over a window and the window's length.
///
/// Each sender offers load from its own CPU until the last sample is taken. A sample counts
/// only when every class refused a packet for want of tokens while it was read: its buckets
/// were empty then, so the bytes admitted between two samples are what the rate allows over
/// the time between them, whatever the senders did in between (a stalled sender's debt is
/// repaid before the next sample), and neither the senders' start nor the buckets' initial
/// burst can enter the figures.
fn measure(
    dp: &Dataplane,
    iface_slot: u32,
    classes: &[u32],
    senders: &[(&[u8], usize)],
) -> (Vec<(f64, f64)>, Duration) {
    let prog = dp.program().expect("program");
    let stop = AtomicBool::new(false);
    // Per class: green bytes, yellow bytes, packets refused for want of tokens (drops that
    // were not the AQM's early ones).
    let read = || -> Vec<(f64, f64, u64)> {
        classes
            .iter()
            .map(|&class| {
                let c = dp.class_counters(iface_slot, class).expect("counters");
                let bytes = |colour: Colour| {
                    (c.colour_packets[colour as usize] * FRAME_BYTES as u64) as f64
                };
                let refused = c.dropped_packets - c.early_dropped_packets;
                (bytes(Colour::Green), bytes(Colour::Yellow), refused)
            })
            .collect()
    };
    // A sample is the counters and the moment they were read: three reads close together,
    // with pauses between them that let a sender sharing the sampler's CPU run, taken when
    // every class refused a packet between the first and the second read and again between
    // the second and the third. Its values are those of the middle read, at the middle
    // moment. A refusal means the bucket was full then, so the middle read lies between two
    // moments of a full bucket: its admitted bytes are within the rate times the reads' span
    // (SAMPLE_SLACK) of what a full bucket allows at the middle moment. One refusal around
    // a single read is not enough: a sender the machine stalled just before it comes back
    // with the stall's tokens, spends them in a burst after the read, and the read counts
    // low by all of them (seen: several milliseconds of the rate, in the first window).
    let sample = || -> (Instant, Vec<(f64, f64)>) {
        let start = Instant::now();
        loop {
            let before = Instant::now();
            let first = read();
            std::thread::sleep(SAMPLE_PAUSE);
            let middle = read();
            std::thread::sleep(SAMPLE_PAUSE);
            let last = read();
            let after = Instant::now();
            let refused = |a: &[(f64, f64, u64)], b: &[(f64, f64, u64)]| {
                a.iter().zip(b).all(|(a, b)| b.2 > a.2)
            };
            if after - before <= SAMPLE_SLACK && refused(&first, &middle) && refused(&middle, &last)
            {
                let values = middle.iter().map(|m| (m.0, m.1)).collect();
                return (before + (after - before) / 2, values);
            }
            assert!(
                start.elapsed() < SAMPLE_BOUND,
                "no moment in {SAMPLE_BOUND:?} when every class refused packets: \
                 the offered load does not exceed the rates"
            );
        }
    };
    let samples = std::thread::scope(|s| {
        let handles: Vec<_> = senders
            .iter()
            .map(|&(frame, cpu)| {
                let stop = &stop;
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    run_until_stopped(prog, frame, stop, SENDER_BOUND)
                })
            })
            .collect();
        std::thread::sleep(WARM_UP);
        let mut samples = vec![sample()];
        for _ in 0..WINDOWS {
            std::thread::sleep(WINDOW / WINDOWS as u32);
            samples.push(sample());
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            assert_eq!(
                h.join().expect("sender thread"),
                SenderEnd::Stopped,
                "a sender ran out of time before the last sample"
            );
        }
        samples
    });
    // Per class and colour, the median rate over the windows: a sender the scheduler stalled
    // lets tokens pile up (or, past the burst, lapse), which skews the windows around the
    // stall, not the median. Reported as bytes over one window of the median's length.
    let rate = |w: &[(Instant, Vec<(f64, f64)>)], class: usize, colour: fn(&(f64, f64)) -> f64| {
        (colour(&w[1].1[class]) - colour(&w[0].1[class])) / (w[1].0 - w[0].0).as_secs_f64()
    };
    let median = |class: usize, colour: fn(&(f64, f64)) -> f64| {
        let mut rates: Vec<f64> = samples.windows(2).map(|w| rate(w, class, colour)).collect();
        // Every window's rate goes to the log: a failing median shows whether one window
        // or all of them ran over.
        eprintln!("class {class} windows (B/s): {rates:.0?}");
        rates.sort_by(f64::total_cmp);
        rates[WINDOWS / 2]
    };
    let window = (samples[WINDOWS].0 - samples[0].0) / WINDOWS as u32;
    let secs = window.as_secs_f64();
    let admitted = (0..classes.len())
        .map(|c| (median(c, |v| v.0) * secs, median(c, |v| v.1) * secs))
        .collect();
    (admitted, window)
}

fn assert_rate(what: &str, bytes: f64, elapsed: Duration, rate_bps: f64, tolerance: f64) {
    let rate = rate_bps / 8.0;
    let got = bytes / elapsed.as_secs_f64();
    let err = (got - rate) / rate;
    eprintln!(
        "{what}: configured {rate:.0} B/s, admitted {got:.0} B/s ({:+.3}%)",
        err * 100.0
    );
    assert!(
        err.abs() <= tolerance,
        "{what}: admitted {got:.0} B/s vs {rate:.0} B/s configured ({:+.3}%)",
        err * 100.0
    );
}

/// Loads `toml` with the flow cache off. Under BPF_PROG_TEST_RUN a sender whose policy has
/// the (LRU) flow cache on pauses now and then (measured: about 7% of the time at 1 Gbit/s,
/// with the code of before the TCP work too), which reads as rate error whatever the
/// buckets do; the cause is not found yet (see the notes). These tests measure the
/// buckets, which classification does not touch.
fn load(toml: &str) -> (Dataplane, dataplane::config::Policy) {
    load_policy(&format!("flow_cache = \"off\"\n{toml}"))
}

fn policy(rate: &str) -> String {
    format!(
        r#"
[[class]]
name = "default"

[[class]]
name = "limited"
rate = "{rate}"
burst = "{BURST}"
exceed = "drop"

[[rule]]
class = "limited"
protocol = "udp"
dst_port = 5001
"#
    )
}

#[test]
fn committed_rate_holds_on_one_cpu() {
    let _serial = serial();
    for (rate, bps) in [("100Mbit", 100e6), ("1Gbit", 1e9), ("5Gbit", 5e9)] {
        let (dp, p) = load(&policy(rate));
        let class = p.class_id("limited").expect("class");
        let frame = udp_frame(5001);
        let (admitted, elapsed) = measure(&dp, 0, &[class], &[(&frame, 0)]);
        let offered = dp.class_counters(0, class).expect("counters").bytes as f64;
        assert!(
            offered > 2.0 * admitted[0].0,
            "{rate}: offered load must exceed the rate"
        );
        assert_rate(rate, admitted[0].0, elapsed, bps, 0.01);
    }
}

#[test]
fn committed_rate_holds_across_two_cpus() {
    let _serial = serial();
    let (dp, p) = load(&policy("2Gbit"));
    let class = p.class_id("limited").expect("class");
    let frame = udp_frame(5001);
    let (admitted, elapsed) = measure(&dp, 0, &[class], &[(&frame, 0), (&frame, 1)]);
    assert_rate("2Gbit on two CPUs", admitted[0].0, elapsed, 2e9, 0.01);
}

#[test]
fn peak_rate_separates_yellow_from_red() {
    let _serial = serial();
    let toml = r#"
[[class]]
name = "default"

[[class]]
name = "burst"
rate = "500Mbit"
ceil = "1500Mbit"
burst = "32MiB"
exceed = "pass"
violate = "drop"

[[rule]]
class = "burst"
protocol = "udp"
dst_port = 5001
"#;
    let (dp, p) = load(toml);
    let class = p.class_id("burst").expect("class");
    let frame = udp_frame(5001);
    let (admitted, elapsed) = measure(&dp, 0, &[class], &[(&frame, 0)]);
    let (green, yellow) = admitted[0];
    let c = dp.class_counters(0, class).expect("counters");
    assert!(c.dropped_packets > 0 && c.dropped_packets == c.colour_packets[Colour::Red as usize]);
    assert_rate("green (committed)", green, elapsed, 500e6, 0.01);
    assert_rate(
        "green + yellow (peak)",
        green + yellow,
        elapsed,
        1500e6,
        0.01,
    );
}

/// Link budget 1 Gbit/s on loopback (BPF_PROG_TEST_RUN's ingress device); `hi` (priority 7)
/// and `lo` (priority 0) each offer far more from their own CPU.
fn contention_policy(hi_rate: &str, lo_rate: &str) -> String {
    format!(
        r#"
[[interface]]
name = "lo"
link_rate = "1Gbit"
link_burst = "{LINK_BURST}"

[[class]]
name = "default"

[[class]]
name = "hi"
priority = 7
rate = "{hi_rate}"
burst = "{LINK_BURST}"
exceed = "pass"
violate = "drop"

[[class]]
name = "lo"
priority = 0
rate = "{lo_rate}"
burst = "{LINK_BURST}"
exceed = "pass"
violate = "drop"

[[rule]]
class = "hi"
protocol = "udp"
dst_port = 5001

[[rule]]
class = "lo"
protocol = "udp"
dst_port = 5002
"#
    )
}

/// Admitted (green + yellow) bytes of `hi` and `lo` while both contend, and the time.
fn contend(toml: &str) -> (f64, f64, Duration) {
    let (mut dp, p) = load(toml);
    dp.register_interfaces(&p, &[]).expect("register lo");
    let hi = p.class_id("hi").expect("hi");
    let lo = p.class_id("lo").expect("lo");
    let (hi_frame, lo_frame) = (udp_frame(5001), udp_frame(5002));
    let (admitted, elapsed) = measure(&dp, 1, &[hi, lo], &[(&hi_frame, 0), (&lo_frame, 1)]);
    let sum = |(g, y): (f64, f64)| g + y;
    (sum(admitted[0]), sum(admitted[1]), elapsed)
}

#[test]
fn low_priority_loses_first_when_the_link_budget_runs_low() {
    let _serial = serial();
    // Nothing guaranteed: the excess of both competes for the link by priority alone.
    let (hi, lo, elapsed) = contend(&contention_policy("1kbit", "1kbit"));
    let link = 1e9 / 8.0 * elapsed.as_secs_f64();
    eprintln!(
        "hi {:.1}% of link, lo {:.1}% of link",
        hi / link * 100.0,
        lo / link * 100.0
    );
    assert_rate("hi + lo (link budget)", hi + lo, elapsed, 1e9, 0.01);
    assert!(
        hi > 0.95 * link,
        "high priority keeps the link under contention"
    );
    assert!(lo < 0.05 * link, "low priority loses first");
}

#[test]
fn guaranteed_rates_hold_under_link_contention() {
    let _serial = serial();
    // lo is guaranteed 200 Mbit/s, hi 300 Mbit/s; hi (higher priority) takes the rest.
    let (hi, lo, elapsed) = contend(&contention_policy("300Mbit", "200Mbit"));
    assert_rate("lo keeps its guarantee", lo, elapsed, 200e6, 0.01);
    assert_rate("hi gets the rest of the link", hi, elapsed, 800e6, 0.01);
}

/// The phantom queue's AQM under a flood far above the rate: the backlog stands above the
/// target, so one packet per interval is signalled (CE on ECN-capable packets, a drop for the
/// others); the admitted rate stays exact.
///
/// BPF_PROG_TEST_RUN hands every repetition of a call the frame as the last one left it, so
/// after the first CE in a call an ECN-capable frame is already CE and further marks are not
/// new: marks are counted exactly only for frames that are not ECN-capable (early drops).
#[test]
fn aqm_signals_once_per_interval_and_keeps_the_rate() {
    let _serial = serial();
    let toml = |dport: u16| {
        format!(
            r#"
[[class]]
name = "default"

[[class]]
name = "managed"
rate = "200Mbit"
burst = "{BURST}"
exceed = "drop"
aqm = true
aqm_target = "1ms"
aqm_interval = "20ms"

[[rule]]
class = "managed"
protocol = "udp"
dst_port = {dport}
"#
        )
    };
    for (what, tos) in [("ECN-capable", 0b10u8), ("not ECN-capable", 0)] {
        let (dp, p) = load(&toml(5001));
        let class = p.class_id("managed").expect("class");
        let frame = Frame::eth()
            .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
            .tos(tos)
            .udp(40000, 5001)
            .pad_to(FRAME_BYTES)
            .build();
        let before = dp.class_counters(0, class).expect("counters");
        let (admitted, elapsed) = measure(&dp, 0, &[class], &[(&frame, 0)]);
        let after = dp.class_counters(0, class).expect("counters");
        assert_rate(what, admitted[0].0, elapsed, 200e6, 0.01);
        let (marked, dropped) = (
            after.early_marked_packets - before.early_marked_packets,
            after.early_dropped_packets - before.early_dropped_packets,
        );
        if tos != 0 {
            eprintln!("{what}: {marked} early marks, {dropped} early drops");
            assert!(marked > 0, "{what}: marked early");
            assert_eq!(
                dropped, 0,
                "{what}: an ECN-capable packet is never dropped early"
            );
            continue;
        }
        let (signals, other) = (dropped, marked);
        // One signal per 20 ms while the backlog stands above the target, over a run of at
        // least the window and less than twice warm-up and window. The lower bound is half
        // the ideal count: measured, the test harness gives one signal per 25 ms or so.
        let least = (elapsed.as_secs_f64() / 20e-3 * 0.5) as u64;
        let most = ((WARM_UP + WINDOW).as_secs_f64() * 2.0 / 20e-3) as u64;
        eprintln!("{what}: {signals} early signals over {elapsed:?} (expected {least}..={most})");
        assert!(
            (least..=most).contains(&signals),
            "{what}: {signals} early signals, expected {least}..={most}"
        );
        assert_eq!(other, 0, "{what}: the other kind of signal never happens");
        assert!(
            after.dropped_packets - before.dropped_packets > 10 * signals,
            "{what}: the flood still overflows the bucket"
        );
    }
}

/// The kernel clock the policer reads (`bpf_ktime_get_ns`), in ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Leases (`policer::LeaseParams`): a class well under its rate takes green traffic from a
/// per-CPU lease reserved in the shared bucket beforehand; packets the lease covers leave the
/// shared state untouched, and the next lease is reserved when it runs out.
#[test]
fn green_traffic_spends_per_cpu_leases_reserved_in_the_shared_bucket() {
    let _serial = serial();
    let (dp, p) = load(&policy("10Gbit"));
    let class = p.class_id("limited").expect("class");
    let config = CompiledPolicy::new(&p).classes[class as usize];
    let lease = config.lease.bytes;
    assert_eq!(lease, LeaseParams::MAX_BYTES, "10 Gbit/s leases 64 KiB");
    let prog = dp.program().expect("program");
    let frame = udp_frame(5001);
    let tat = || {
        dp.policer_state(class)
            .expect("policer state")
            .committed_tat
    };
    let cost_ns = |bytes: u32| config.policer.committed.cost(bytes) / TICKS_PER_NS;
    std::thread::scope(|s| {
        s.spawn(|| {
            // One CPU: the lease is this CPU's.
            pin_to_cpu(0);
            let before = monotonic_ns();
            assert_eq!(run_once(prog, &frame).action, XDP_PASS);
            let first = tat();
            let after = monotonic_ns();
            // The bucket was idle: the TAT is the run's moment (between `before` and `after`)
            // plus the packet and a lease, 53 µs at 10 Gbit/s.
            let ahead_ns = (first / TICKS_PER_NS).saturating_sub(before);
            let reserved = cost_ns(FRAME_BYTES as u32 + lease);
            assert!(
                (reserved..=reserved + (after - before)).contains(&ahead_ns),
                "the first packet reserves a lease: the TAT is {ahead_ns} ns ahead, the packet \
                 and a lease cost {reserved} ns"
            );
            let covered = lease as usize / FRAME_BYTES;
            for _ in 0..covered {
                assert_eq!(run_once(prog, &frame).action, XDP_PASS);
            }
            assert_eq!(tat(), first, "{covered} packets spent the lease alone");
            assert_eq!(run_once(prog, &frame).action, XDP_PASS);
            assert!(
                tat() >= first + config.policer.committed.cost(lease),
                "the next packet reserved the next lease"
            );
        })
        .join()
        .expect("the pinned thread");
    });
    let c = dp.class_counters(0, class).expect("counters");
    assert_eq!(
        c.colour_packets[Colour::Green as usize],
        lease as u64 / FRAME_BYTES as u64 + 2
    );
}

/// The accuracy bound of leases, on both CPUs at once: a class never admits more than its
/// bucket allows (leases are reserved before they are spent), and falls short by at most one
/// lease per CPU. Both CPUs offer far more than the rate from a full bucket; the green bytes
/// must lie between the burst less two leases and the burst plus what the rate adds over the
/// whole run.
#[test]
fn leases_never_admit_more_than_the_bucket_across_cpus() {
    let _serial = serial();
    const RATE: f64 = 100e6 / 8.0;
    const BURST_BYTES: f64 = 4.0 * 1024.0 * 1024.0;
    let (dp, p) = load(
        "[[class]]\nname = \"default\"\n[[class]]\nname = \"limited\"\nrate = \"100Mbit\"\n\
         burst = \"4MiB\"\nexceed = \"drop\"\ntcp_window = false\n\
         [[rule]]\nclass = \"limited\"\nprotocol = \"udp\"\ndst_port = 5001\n",
    );
    let class = p.class_id("limited").expect("class");
    let lease = f64::from(CompiledPolicy::new(&p).classes[class as usize].lease.bytes);
    assert_eq!(lease, f64::from(LeaseParams::MAX_BYTES));
    let prog = dp.program().expect("program");
    let frame = udp_frame(5001);
    let start = Instant::now();
    std::thread::scope(|s| {
        for cpu in [0, 1] {
            let frame = &frame;
            s.spawn(move || {
                pin_to_cpu(cpu);
                // 20 MB offered per CPU, five times the burst.
                let _ = run_repeated(prog, frame, 20_000);
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let c = dp.class_counters(0, class).expect("counters");
    let green = (c.colour_packets[Colour::Green as usize] * FRAME_BYTES as u64) as f64;
    let offered = (c.packets * FRAME_BYTES as u64) as f64;
    eprintln!(
        "green {green:.0} B of {offered:.0} offered in {:.1} ms; burst {BURST_BYTES:.0}, \
         lease {lease:.0}",
        elapsed * 1e3
    );
    assert!(
        offered > 4.0 * BURST_BYTES,
        "the senders offered {offered:.0} B"
    );
    assert!(
        green <= BURST_BYTES + RATE * elapsed + FRAME_BYTES as f64,
        "over-admitted: {green:.0} B green, at most {:.0}",
        BURST_BYTES + RATE * elapsed
    );
    assert!(
        green >= BURST_BYTES - 2.0 * lease - FRAME_BYTES as f64,
        "more than a lease per CPU lost: {green:.0} B green of a {BURST_BYTES:.0} B burst"
    );
}
