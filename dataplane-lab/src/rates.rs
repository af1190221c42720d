//! Admitted rates of policed classes under offered load far above their rates, through
//! BPF_PROG_TEST_RUN: the sampling the policing tests and the accuracy benchmark share.
//!
//! Each sender offers one frame back to back from its own CPU until the last sample is taken.
//! A sample counts only when every class refused a packet for want of tokens both just before
//! and just after its middle read: its buckets were full on both sides of that read, so the
//! bytes admitted between two samples are what the rate allows over the time between them,
//! whatever the senders did in between (a stalled sender's debt is repaid before the next
//! sample), and neither the senders' start nor the buckets' initial burst can enter the
//! figures. A refusal on one side only is not enough: a sender the machine stalled just
//! before the read comes back with the stall's tokens, spends them in a burst after it, and
//! the read counts low by all of them (seen: several milliseconds of the rate).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use dataplane::dataplane::Dataplane;
use dataplane_common::policer::Colour;

use crate::kernel::{pin_to_cpu, run_until_stopped, SenderEnd};

/// The variable that scales the rate tests' configured and offered rates (and the bursts
/// and pacing that go with them): `cargo xtask vm` sets it under QEMU's emulator, whose
/// packet path carries about a tenth of what a CPU does, so that the offered load can
/// still exceed the rates. Unset, the scale is 1.
pub const RATE_SCALE_VAR: &str = "DATAPLANE_TEST_RATE_SCALE";

/// This run's rate scale, in (0, 1]; a value that is not one stops the test naming it.
pub fn rate_scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var(RATE_SCALE_VAR) {
        Err(_) => 1.0,
        Ok(text) => match text.parse::<f64>() {
            Ok(scale) if scale > 0.0 && scale <= 1.0 => {
                eprintln!("{RATE_SCALE_VAR}={scale}: rates, bursts and pacing scaled");
                scale
            }
            _ => panic!("{RATE_SCALE_VAR}={text:?}: expected a number in (0, 1]"),
        },
    })
}

/// `bits_per_second` at this run's scale: the figure, and the text a policy takes.
pub fn scaled_rate(bits_per_second: f64) -> (f64, String) {
    let bps = (bits_per_second * rate_scale()).round();
    (bps, format!("{bps:.0}bit"))
}

/// A burst of `bytes` at this run's scale, as a policy writes it: the same time's worth of
/// the scaled rate.
pub fn scaled_size(bytes: f64) -> String {
    format!("{:.0}B", (bytes * rate_scale()).round())
}

/// A pacing interval at this run's scale: the same packets, sent less often.
pub fn scaled_interval(interval: Duration) -> Duration {
    interval.div_f64(rate_scale())
}

/// How a measurement samples.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Time the senders run before the first sample, so the buckets are in steady state.
    pub warm_up: Duration,
    /// Time between two samples.
    pub window: Duration,
    /// Windows measured; each rate is their median (an odd number: a sender the machine
    /// stalls skews the windows around the stall, not the median).
    pub windows: usize,
}

/// What one class admitted, in bytes per second.
#[derive(Clone, Debug)]
pub struct ClassRates {
    /// Green (committed) bytes per second: the median over the windows.
    pub green: f64,
    /// Yellow (between committed and peak) bytes per second: the median over the windows.
    pub yellow: f64,
    /// Bytes per second offered to the class, over all the windows.
    pub offered: f64,
    /// Every window's green rate, in order.
    pub green_windows: Vec<f64>,
}

/// How precisely a sample's moment must be known (its reads' span), the pause between its
/// reads (it lets a sender sharing the sampler's CPU run), and how long to try for one. The
/// span and the bound stretch with the rate scale (an emulator's reads and sleeps take
/// longer), as the callers' windows do, so the error a span allows stays the same.
const SAMPLE_SLACK: Duration = Duration::from_millis(1);
const SAMPLE_PAUSE: Duration = Duration::from_micros(100);
const SAMPLE_BOUND: Duration = Duration::from_secs(2);
/// Bounds every sender in time, far beyond any warm-up and window here.
const SENDER_BOUND: Duration = Duration::from_secs(60);

/// One read of a class's counters: green bytes, yellow bytes, offered bytes, and packets
/// refused for want of tokens (drops that were not the AQM's early ones).
#[derive(Clone, Copy)]
struct Read {
    green: f64,
    yellow: f64,
    offered: f64,
    refused: u64,
}

/// The admitted rates of `classes` (ids, on interface slot `iface_slot`) while `senders`
/// (frame, CPU) offer `frame_bytes`-byte frames, sampled as `sampling` says.
pub fn admitted_rates(
    dp: &Dataplane,
    iface_slot: u32,
    classes: &[u32],
    senders: &[(&[u8], usize)],
    frame_bytes: usize,
    sampling: &Sampling,
) -> Result<Vec<ClassRates>> {
    ensure!(
        sampling.windows > 0,
        "a measurement needs at least one window"
    );
    let prog = dp.program()?;
    let stop = AtomicBool::new(false);
    let read = || -> Result<Vec<Read>> {
        classes
            .iter()
            .map(|&class| {
                let c = dp.class_counters(iface_slot, class)?;
                let bytes = |packets: u64| (packets * frame_bytes as u64) as f64;
                Ok(Read {
                    green: bytes(c.colour_packets[Colour::Green as usize]),
                    yellow: bytes(c.colour_packets[Colour::Yellow as usize]),
                    offered: bytes(c.packets),
                    refused: c.dropped_packets - c.early_dropped_packets,
                })
            })
            .collect()
    };
    let (slack, bound) = (scaled_interval(SAMPLE_SLACK), scaled_interval(SAMPLE_BOUND));
    let sample = || -> Result<(Instant, Vec<Read>)> {
        let start = Instant::now();
        loop {
            let before = Instant::now();
            let first = read()?;
            std::thread::sleep(SAMPLE_PAUSE);
            let middle = read()?;
            std::thread::sleep(SAMPLE_PAUSE);
            let last = read()?;
            let after = Instant::now();
            let refused =
                |a: &[Read], b: &[Read]| a.iter().zip(b).all(|(a, b)| b.refused > a.refused);
            if after - before <= slack && refused(&first, &middle) && refused(&middle, &last) {
                return Ok((before + (after - before) / 2, middle));
            }
            if start.elapsed() >= bound {
                bail!(
                    "no moment in {bound:?} when every class refused packets within \
                     {slack:?}: the offered load does not exceed the rates"
                );
            }
        }
    };
    let samples = std::thread::scope(|s| -> Result<Vec<(Instant, Vec<Read>)>> {
        let handles: Vec<_> = senders
            .iter()
            .map(|&(frame, cpu)| {
                let stop = &stop;
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    run_until_stopped(prog, frame, stop, scaled_interval(SENDER_BOUND))
                })
            })
            .collect();
        std::thread::sleep(sampling.warm_up);
        let taken = (|| {
            let mut samples = vec![sample()?];
            for _ in 0..sampling.windows {
                std::thread::sleep(sampling.window);
                samples.push(sample()?);
            }
            Ok(samples)
        })();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let end = h
                .join()
                .map_err(|_| anyhow::anyhow!("a sender thread panicked"))?;
            if end != SenderEnd::Stopped {
                bail!("a sender ran out of time before the last sample");
            }
        }
        taken
    })?;
    let per_window = |class: usize, value: fn(&Read) -> f64| -> Vec<f64> {
        samples
            .windows(2)
            .map(|w| {
                let secs = (w[1].0 - w[0].0).as_secs_f64();
                (value(&w[1].1[class]) - value(&w[0].1[class])) / secs
            })
            .collect()
    };
    let median = |mut rates: Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let span = (last.0 - first.0).as_secs_f64();
    Ok((0..classes.len())
        .map(|c| {
            let green_windows = per_window(c, |r| r.green);
            ClassRates {
                green: median(green_windows.clone()),
                yellow: median(per_window(c, |r| r.yellow)),
                offered: (last.1[c].offered - first.1[c].offered) / span,
                green_windows,
            }
        })
        .collect())
}
