//! Cost of one Prometheus scrape with 64 classes on 8 interfaces over a real loaded
//! dataplane. Run as root: `cargo bench -p dataplane-bench --bench scrape`.
//!
//! Method: every figure is the median (and min–max) of `ROUNDS` scrapes after `WARMUP`
//! unmeasured ones: reading and summing the per-CPU counters (`snapshot`), encoding them
//! (both formats), and a whole `GET /metrics` over loopback to the exporter's HTTP server.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    dataplane::Dataplane,
    metrics::{encode, snapshot, ConfigView, CounterReader, Format, Iface, Reloads},
};
use dataplane_lab::{
    exporter::{agent, get, Exporter},
    kernel::require_root,
};

const CLASSES: usize = 64;
const IFACES: u32 = 8;
const WARMUP: usize = 5;
const ROUNDS: usize = 101;

fn policy() -> Policy {
    let mut toml = String::from("default_class = \"c00\"\n");
    for i in 0..CLASSES {
        toml.push_str(&format!(
            "[[class]]\nname = \"c{i:02}\"\nrate = \"{}Mbit\"\nceil = \"{}Mbit\"\n",
            100 + i,
            200 + i
        ));
    }
    Policy::from_toml_str(&toml, "scrape bench").expect("bench policy")
}

fn measure(mut scrape: impl FnMut()) -> String {
    for _ in 0..WARMUP {
        scrape();
    }
    let mut times: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            scrape();
            start.elapsed()
        })
        .collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:7.3} ms  ({:.3}–{:.3})",
        ms(times[ROUNDS / 2]),
        ms(times[0]),
        ms(times[ROUNDS - 1])
    )
}

fn main() {
    require_root();
    let policy = policy();
    let mut dp = Dataplane::load().expect("load the XDP object");
    let generation = dp.apply(&CompiledPolicy::new(&policy)).expect("apply");
    let reader = CounterReader::new(&dp).expect("counter maps");
    let ifaces: Vec<Iface> = (1..=IFACES)
        .map(|slot| Iface {
            name: format!("eth{}", slot - 1),
            slot,
            attached: Some(dataplane::metrics::AttachMode::Native),
        })
        .collect();
    let view = ConfigView::in_file_order(&policy, ifaces, generation, Reloads::default());
    let take = move || snapshot(&reader, &view);
    let sample = take().expect("snapshot");
    let text = encode(sample.clone(), Format::PrometheusText).expect("encode");
    let series = text.lines().filter(|l| !l.starts_with('#')).count();

    println!(
        "scrape cost, {CLASSES} classes x {IFACES} interfaces ({series} series, {} bytes of text), median of {ROUNDS}:",
        text.len()
    );
    println!(
        "  read + sum counters   {}",
        measure(|| {
            take().expect("snapshot");
        })
    );
    println!(
        "  encode, text 0.0.4    {}",
        measure(|| {
            encode(sample.clone(), Format::PrometheusText).expect("encode");
        })
    );
    println!(
        "  encode, OpenMetrics   {}",
        measure(|| {
            encode(sample.clone(), Format::OpenMetrics).expect("encode");
        })
    );
    let exporter = Exporter::start(Arc::new(move || Ok(take()?)));
    let agent = agent();
    let url = exporter.url("/metrics");
    println!(
        "  GET /metrics (HTTP)   {}",
        measure(|| {
            let answer = get(&agent, &url, None);
            assert_eq!(answer.status, 200, "{}", answer.body);
        })
    );
}
