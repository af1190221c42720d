//! Policing accuracy: configured against admitted rate from 1 Mbit/s up to what one CPU can
//! offer, on one and two sending CPUs; and what the policer's clock read costs.

use anyhow::Result;
use aya::programs::Xdp;
use dataplane::dataplane::Dataplane;
use dataplane_lab::{
    frames::Frame,
    kernel::{load_policy, pin_to_cpu, run_repeated},
    rates::{admitted_rates, Sampling},
};
use indicatif::ProgressBar;

use crate::{
    plot::{si, Plot},
    programs::BenchPrograms,
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Settings,
};

const FRAME_BYTES: usize = 1000;
/// Rates below the top one (bit/s).
const RATES: [f64; 5] = [1e6, 10e6, 100e6, 1e9, 10e9];
/// The top rate is what one CPU offers divided by this: the senders must stay above it even
/// while other work shares the CPUs (below it, idle tokens beyond the burst are lost and
/// the admitted rate falls short of the configured one).
const TOP_SHARE: f64 = 4.0;
/// Target: admitted within this fraction of the configured rate.
const TOLERANCE: f64 = 0.01;
/// The longest stall of a sender (preempted, or its virtual CPU descheduled) the burst
/// covers, in seconds of the rate: a sender idle for longer than the burst loses tokens,
/// which measures the load generator, not the policer (32 MiB is 16 ms at 17 Gbit/s, and
/// such stalls took 1.1% from that row). Offered load far above the rate drains the burst
/// before the first sample (`dataplane_lab::rates` waits for refusals).
const STALL_COVER_SECS: f64 = 0.1;
/// The least burst, for the low rates.
const MIN_BURST_BYTES: u64 = 32 << 20;

/// The burst of a class of `rate_bps`: [`STALL_COVER_SECS`] of it, at least
/// [`MIN_BURST_BYTES`].
fn burst_bytes(rate_bps: f64) -> u64 {
    ((rate_bps / 8.0 * STALL_COVER_SECS) as u64).max(MIN_BURST_BYTES)
}
/// Clock helpers per run of a clock program (CLOCK_CALLS in the eBPF object).
const CLOCK_CALLS: f64 = 16.0;

fn policy(rate_bps: f64) -> String {
    format!(
        "[[class]]\nname = \"default\"\n[[class]]\nname = \"limited\"\nrate = \"{}bit\"\n\
         burst = \"{}B\"\nexceed = \"drop\"\n[[rule]]\nclass = \"limited\"\n\
         protocol = \"udp\"\ndst_port = 5001\n",
        rate_bps as u64,
        burst_bytes(rate_bps)
    )
}

fn frame() -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(40000, 5001)
        .pad_to(FRAME_BYTES)
        .build()
}

/// Green and offered bits per second over one window (see `dataplane_lab::rates`), with
/// `cpus` senders.
fn admitted(
    dp: &Dataplane,
    class: u32,
    frame: &[u8],
    cpus: usize,
    settings: &Settings,
) -> Result<(f64, f64)> {
    let senders: Vec<(&[u8], usize)> = (0..cpus).map(|cpu| (frame, cpu)).collect();
    let sampling = Sampling {
        warm_up: settings.warm_up,
        window: settings.window,
        windows: 1,
    };
    let rates = admitted_rates(dp, 0, &[class], &senders, FRAME_BYTES, &sampling)?;
    Ok((rates[0].green * 8.0, rates[0].offered * 8.0))
}

struct Row {
    rate: f64,
    cpus: usize,
    /// Admitted/configured - 1, per round.
    errors: Vec<f64>,
    offered: Vec<f64>,
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    let frame = frame();
    // Calibrate: what one CPU offers, to pick the top rate (the policer must still drop).
    let (probe, _) = load_policy(&policy(1e9));
    let program = probe.program()?;
    // On a thread of its own: the caller's affinity, inherited by later sections' threads and
    // processes, stays as it was.
    let ns_per_packet = std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(crate::per_packet::CPU);
            run_repeated(program, &frame, 200_000).max(1.0)
        })
        .join()
    })
    .map_err(|_| anyhow::anyhow!("the calibration thread panicked"))?;
    drop(probe);
    let one_cpu_bps = FRAME_BYTES as f64 * 8.0 / (ns_per_packet * 1e-9);
    let top = (one_cpu_bps / TOP_SHARE / 1e9).floor() * 1e9;
    let mut rates: Vec<f64> = match settings.mode {
        crate::Mode::Full => RATES.to_vec(),
        _ => vec![1e6, 1e9],
    };
    if top > *rates.last().expect("rates") {
        rates.push(top);
    }

    let mut rows: Vec<Row> = Vec::new();
    for &rate in &rates {
        for cpus in [1, 2] {
            rows.push(Row {
                rate,
                cpus,
                errors: Vec::new(),
                offered: Vec::new(),
            });
        }
    }
    let rounds = settings.rounds.min(3);
    bar.set_length((rows.len() * rounds + 4) as u64);
    for round in 0..rounds {
        bar.set_message(format!("round {}/{rounds}", round + 1));
        for row in rows.iter_mut() {
            let (dp, p) = load_policy(&policy(row.rate));
            let class = p.class_id("limited").expect("class in the policy");
            let (green, offered) = admitted(&dp, class, &frame, row.cpus, settings)?;
            row.errors.push(green / row.rate - 1.0);
            row.offered.push(offered);
            bar.inc(1);
        }
    }

    bar.set_message("clock sources");
    let clocks = clock_costs(settings, bar)?;
    let mut s = Section::new("Policing accuracy");
    s.method = vec![
        format!(
            "One class with a committed rate R (burst: {} ms of R, at least {} MiB, so a \
             sender stalled for less keeps its tokens; exceed = drop) matched by a UDP \
             rule; {FRAME_BYTES}-byte frames offered through BPF_PROG_TEST_RUN far above R by \
             one sender (CPU 0) or two (CPUs 0 and 1) on the same class, each one long call.",
            STALL_COVER_SECS * 1e3,
            MIN_BURST_BYTES >> 20
        ),
        format!(
            "After a warm-up of {} ms (which drains the burst) the class's green-packet \
             counter is sampled twice, {} ms apart, while every sender still runs; admitted \
             rate = green bytes between the samples / the time between them. A sample is a \
             read taken between two refusals of the bucket (one just before, one just after), \
             so a sender stalled just before it cannot make it count low \
             (`dataplane_lab::rates`). A fresh dataplane per measurement, {rounds} rounds.",
            settings.warm_up.as_millis(),
            settings.window.as_millis()
        ),
        format!(
            "Rates from 1 Mbit/s up to a quarter of what one CPU offers here ({}bit/s of \
             {FRAME_BYTES}-byte frames, {ns_per_packet:.0} ns per packet), so even the top \
             rate is policed, not merely carried.",
            si(one_cpu_bps)
        ),
        format!(
            "Clock cost: helper programs call one clock helper {CLOCK_CALLS} times per run; \
             cost per call = (their time - the empty program's) / {CLOCK_CALLS}, same \
             method as the per-packet section."
        ),
    ];
    let mut table = Table::new(
        "Admitted vs configured rate: error in % (median, min–max over rounds).",
        &[
            "configured",
            "sending CPUs",
            "offered (median)",
            "admitted error %",
        ],
    );
    let mut series: Vec<(String, Vec<(f64, Figure)>)> = vec![
        ("one sending CPU".into(), Vec::new()),
        ("two sending CPUs".into(), Vec::new()),
    ];
    let mut worst: f64 = 0.0;
    for row in &rows {
        let err = Figure::of(&row.errors.iter().map(|e| e * 100.0).collect::<Vec<_>>());
        worst = worst.max(err.median.abs());
        table.row(vec![
            format!("{}bit/s", si(row.rate)),
            row.cpus.to_string(),
            format!("{}bit/s", si(Figure::of(&row.offered).median)),
            format!("{:+.3} ({:+.3}–{:+.3})", err.median, err.min, err.max),
        ]);
        series[row.cpus - 1].1.push((row.rate, err));
    }
    s.tables.push(table);
    let mut clock_table = Table::new(
        "Clock helpers: ns per call (median, min–max).",
        &["helper", "ns per call", "note"],
    );
    for (name, f, note) in &clocks {
        clock_table.row(vec![format!("`{name}`"), f.show(2), note.to_string()]);
    }
    s.tables.push(clock_table);
    s.plots.push(Plot::Lines {
        file: "policing.svg".into(),
        title: "Admitted vs configured rate (error %, min–max bars)".into(),
        x_label: "configured rate (bit/s)".into(),
        y_label: "admitted error (%)".into(),
        series,
    });
    s.targets.push(Target {
        name: "policing accuracy, 1 and 2 CPUs".into(),
        goal: format!("within ±{:.0}%", TOLERANCE * 100.0),
        measured: format!("worst median error {worst:.3}%"),
        verdict: Verdict::of(worst <= TOLERANCE * 100.0),
        note: if settings.mode == crate::Mode::Full {
            String::new()
        } else {
            "short window: at low rates a few packets make up the window".into()
        },
    });
    s.caveats = vec![
        "The offered load comes from BPF_PROG_TEST_RUN, not a NIC: it is steady, so the \
         figures show the policer's arithmetic and its cross-CPU compare-and-swap, not \
         bursts from real interrupt coalescing."
            .into(),
        "Admitted bytes are counted in whole frames of 1000 bytes; at 1 Mbit/s a window \
         holds a few hundred frames, so one frame is a noticeable share of the error."
            .into(),
        "Rates above what the senders offer cannot be checked here (the policer would \
         simply pass everything)."
            .into(),
    ];
    Ok(s)
}

/// ns per call of each clock helper (the policer uses `bpf_ktime_get_ns`).
fn clock_costs(
    settings: &Settings,
    bar: &ProgressBar,
) -> Result<Vec<(&'static str, Figure, &'static str)>> {
    let clocks = [
        (
            "bench_clock_ktime",
            "bpf_ktime_get_ns",
            "the policer's clock (CLOCK_MONOTONIC, ns)",
        ),
        (
            "bench_clock_coarse",
            "bpf_ktime_get_coarse_ns",
            "jiffy resolution: too coarse for GCRA at high rates",
        ),
        (
            "bench_clock_boot",
            "bpf_ktime_get_boot_ns",
            "CLOCK_BOOTTIME, counts suspend",
        ),
    ];
    let mut programs = BenchPrograms::load()?;
    for (prog, _, _) in clocks {
        programs.program(prog)?;
    }
    let dp = Dataplane::load()?;
    let empty = dp.pass_program()?;
    let frame = frame();
    let mut progs: Vec<&Xdp> = vec![empty];
    for (prog, _, _) in clocks {
        progs.push(programs.loaded(prog)?);
    }
    let mut samples = vec![Vec::new(); progs.len()];
    for p in &progs {
        run_repeated(p, &frame, (settings.repeat / 10).max(1));
    }
    for _ in 0..settings.rounds {
        for (i, p) in progs.iter().enumerate() {
            samples[i].push(run_repeated(p, &frame, settings.repeat));
        }
    }
    bar.inc(4);
    Ok(clocks
        .iter()
        .enumerate()
        .map(|(i, (_, helper, note))| {
            let per_call: Vec<f64> = samples[i + 1]
                .iter()
                .zip(&samples[0])
                .map(|(t, e)| (t - e) / CLOCK_CALLS)
                .collect();
            (*helper, Figure::of(&per_call), *note)
        })
        .collect())
}
