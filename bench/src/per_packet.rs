//! Per-packet cost under BPF_PROG_TEST_RUN: the pipeline against an empty XDP program, by
//! protocol, flow-cache hit or full classification, rule count and number of live flows.

use anyhow::{Context, Result};
use aya::programs::Xdp;
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use dataplane_common::policer::Colour;
use dataplane_lab::{
    frames::Frame,
    kernel::{pin_to_cpu, run_repeated},
};
use indicatif::ProgressBar;

use crate::{
    plot::Plot,
    programs::BenchPrograms,
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Settings,
};

/// The CPU every measurement thread is pinned to.
pub const CPU: usize = 0;
/// The default policy: the AI catalogue.
pub const CATALOGUE: &str = include_str!("../../config/default.toml");
/// Flows cycled through in the flow-cache rows (one CPU's table holds 2^17 on 2 CPUs).
const FLOW_COUNTS: [u32; 3] = [1_000, 100_000, 1_000_000];
/// Rules of the policy the flow rows run against.
const FLOW_POLICY_RULES: u32 = 1_000;
/// Target: a cache hit costs at most this much above the empty program.
const HIT_BUDGET_NS: f64 = 35.0;
/// Target: 100k rules cost at most this factor of 10 rules on cache hits.
const RULE_SCALING_LIMIT: f64 = 1.2;

/// One measured row: a program and the frame it runs on.
struct Case<'a> {
    label: String,
    prog: &'a Xdp,
    frame: Vec<u8>,
    /// The dataplane behind `prog`, for its counters.
    dp: Option<&'a Dataplane>,
    samples: Vec<f64>,
    counters_before: Counters,
}

/// Colour and flow-cache counters of a dataplane, summed over classes (interface slot 0:
/// test runs come from loopback, which no policy registers).
#[derive(Default, Clone, Copy)]
struct Counters {
    colours: [u64; 3],
    dropped: u64,
    hits: u64,
    misses: u64,
}

fn counters(dp: Option<&Dataplane>) -> Counters {
    let Some(dp) = dp else {
        return Counters::default();
    };
    let mut c = Counters::default();
    for class in 0..dataplane_common::MAX_CLASSES as u32 {
        if let Ok(cc) = dp.class_counters(0, class) {
            for (i, n) in cc.colour_packets.iter().enumerate() {
                c.colours[i] += n;
            }
            c.dropped += cc.dropped_packets;
        }
    }
    if let Ok(ic) = dp.iface_counters(0) {
        c.hits = ic.flow_cache_hits;
        c.misses = ic.flow_cache_misses;
    }
    c
}

/// Label of the row that prices parsing and counting alone.
const NO_POLICY: &str = "IPv4 RoCEv2 BTH before any policy (parse, count, pass)";
/// Label of the cache-hit row of a class without rates.
const UNPOLICED_HIT: &str = "10 rules, last matches, cache hit";
/// Label of the floor of the flow rows.
const VARIED_FLOOR: &str = "empty XDP program, keys varied (floor of the flow rows)";

impl<'a> Case<'a> {
    fn new(label: String, prog: &'a Xdp, frame: &[u8], dp: Option<&'a Dataplane>) -> Case<'a> {
        Case {
            label,
            prog,
            frame: frame.to_vec(),
            dp,
            samples: Vec::new(),
            counters_before: Counters::default(),
        }
    }

    /// "green 100%, passed" and "hits 99.9%" over everything this case ran.
    fn outcome(&self) -> (String, String) {
        let (b, a) = (self.counters_before, counters(self.dp));
        let colours: Vec<u64> = (0..3).map(|i| a.colours[i] - b.colours[i]).collect();
        let total: u64 = colours.iter().sum();
        let colour = if self.dp.is_none() {
            "–".to_string()
        } else if total == 0 {
            "no class: passed".to_string()
        } else {
            let names = [Colour::Green, Colour::Yellow, Colour::Red].map(|c| match c {
                Colour::Green => "green",
                Colour::Yellow => "yellow",
                Colour::Red => "red",
            });
            let mut parts: Vec<String> = colours
                .iter()
                .zip(names)
                .filter(|(n, _)| **n * 100 >= total)
                .map(|(n, name)| format!("{name} {:.0}%", *n as f64 * 100.0 / total as f64))
                .collect();
            let dropped = a.dropped - b.dropped;
            parts.push(format!(
                "dropped {:.0}%",
                dropped as f64 * 100.0 / total as f64
            ));
            parts.join(", ")
        };
        let (hits, misses) = (a.hits - b.hits, a.misses - b.misses);
        let cache = if self.dp.is_none() {
            "–".to_string()
        } else if hits + misses == 0 {
            "not consulted".to_string()
        } else if hits == 0 {
            "0% (every packet classified)".to_string()
        } else {
            format!(
                "{:.1}% hits",
                hits as f64 * 100.0 / (hits + misses).max(1) as f64
            )
        };
        (colour, cache)
    }
}

fn load(policy: &Policy, flow_cache: bool) -> Result<Dataplane> {
    let mut dp = Dataplane::load().context("loading the XDP object")?;
    let mut compiled = CompiledPolicy::new(policy);
    compiled.flow_cache = flow_cache;
    dp.apply(&compiled).context("applying the policy")?;
    Ok(dp)
}

/// One class of 1 Mbit/s for RoCEv2, far below what the test runs offer.
fn over_rate_policy(flow_fairness: bool) -> String {
    format!(
        "[[class]]\nname = \"default\"\n[[class]]\nname = \"capped\"\nrate = \"1Mbit\"\n\
         exceed = \"drop\"\nflow_fairness = {flow_fairness}\n[[rule]]\nclass = \"capped\"\n\
         protocol = \"udp\"\ndst_port = 4791\n"
    )
}

fn over_rate_label(flow_fairness: bool) -> String {
    format!(
        "IPv4 RoCEv2 BTH, class over its rate (exact path), cache hit, flow_fairness = \
         {flow_fairness}"
    )
}

/// `n` rules on distinct UDP destination ports, all of class "bulk" (not policed).
pub fn port_rules(n: u32) -> String {
    let mut toml = String::from("[[class]]\nname = \"default\"\n[[class]]\nname = \"bulk\"\n");
    for i in 0..n {
        toml.push_str(&format!(
            "[[rule]]\nclass = \"bulk\"\nprotocol = \"udp\"\ndst_port = {}\n",
            1_000 + i % 64_000
        ));
    }
    toml
}

fn v4_udp(dport: u16) -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(40000, dport)
        .pad_to(64)
        .build()
}

const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Measures on a thread of its own pinned to CPU: the caller's affinity (inherited by every
/// thread the later sections start) stays as it was.
pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(CPU);
            measure(settings, bar)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the per-packet measurement thread panicked"))?
    })
}

fn measure(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    bar.set_message("loading");
    let catalogue = Policy::from_toml_str(CATALOGUE, "config/default.toml")?;
    let no_policy = Dataplane::load().context("loading the XDP object")?;
    let cached = load(&catalogue, true)?;
    let uncached = load(&catalogue, false)?;
    let floor_prog = cached.pass_program()?;

    // Small frames: the catalogue's classes stay under their committed rates at the rate
    // BPF_PROG_TEST_RUN offers them, so the full conforming path (police + act) is timed.
    let v4_tcp = Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .tcp(40000, 29500)
        .pad_to(64)
        .build();
    let v6_tcp = Frame::eth()
        .ipv6(V6_SRC, V6_DST)
        .tcp(40000, 8001)
        .pad_to(80)
        .build();
    let v4_roce = Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(49152, 4791)
        .roce_bth(0x0a)
        .pad_to(64)
        .build();
    let v6_roce = Frame::eth()
        .ipv6(V6_SRC, V6_DST)
        .udp(49152, 4791)
        .roce_bth(0x0a)
        .pad_to(80)
        .build();

    bar.set_message("loading rule sets");
    let mut refused = Vec::new();
    let mut rule_dps = Vec::new();
    for n in settings.rule_counts {
        match Policy::from_toml_str(&port_rules(n), &format!("{n} rules")) {
            Ok(p) => rule_dps.push((n, load(&p, true)?, load(&p, false)?)),
            Err(e) => refused.push((n, e.to_string())),
        }
    }

    bar.set_message("loading over-rate cases");
    // A class far over its rate: every packet takes the policer's exact path (no lease), with
    // and without the flows' fair queues.
    let mut over_rate = Vec::new();
    for fairness in [true, false] {
        let policy = Policy::from_toml_str(&over_rate_policy(fairness), "over-rate policy")?;
        over_rate.push((fairness, load(&policy, true)?));
    }

    bar.set_message("loading flow-cache cases");
    let flow_policy = Policy::from_toml_str(&port_rules(FLOW_POLICY_RULES), "flow policy")?;
    let flow_frame = v4_udp(1_000);
    let mut varied_floor = BenchPrograms::load()?;
    varied_floor.vary_into(floor_prog.fd()?, *FLOW_COUNTS.last().expect("counts"))?;
    let mut flow_cases = Vec::new();
    for n in FLOW_COUNTS {
        let dp = load(&flow_policy, true)?;
        let mut vary = BenchPrograms::load()?;
        vary.vary_into(dp.program()?.fd()?, n)?;
        // One pass over every flow first, so the measured runs find the cache populated.
        run_repeated(vary.loaded("bench_vary")?, &flow_frame, n);
        flow_cases.push((n, dp, vary));
    }

    let mut cases = vec![Case::new(
        "empty XDP program (floor)".into(),
        floor_prog,
        &v4_tcp,
        None,
    )];
    cases.push(Case::new(
        NO_POLICY.into(),
        no_policy.program()?,
        &v4_roce,
        Some(&no_policy),
    ));
    for (name, frame) in [
        ("IPv4 TCP (collective)", &v4_tcp),
        ("IPv6 TCP (inference)", &v6_tcp),
        ("IPv4 RoCEv2 BTH (rdma)", &v4_roce),
        ("IPv6 RoCEv2 BTH (rdma)", &v6_roce),
    ] {
        cases.push(Case::new(
            format!("{name}, cache hit"),
            cached.program()?,
            frame,
            Some(&cached),
        ));
        cases.push(Case::new(
            format!("{name}, cache off"),
            uncached.program()?,
            frame,
            Some(&uncached),
        ));
    }
    for (n, hit, miss) in &rule_dps {
        let frame = v4_udp((1_000 + (n - 1) % 64_000) as u16);
        cases.push(Case::new(
            format!("{n} rules, last matches, cache hit"),
            hit.program()?,
            &frame,
            Some(hit),
        ));
        cases.push(Case::new(
            format!("{n} rules, last matches, cache off"),
            miss.program()?,
            &frame,
            Some(miss),
        ));
    }
    for (fairness, dp) in &over_rate {
        cases.push(Case::new(
            over_rate_label(*fairness),
            dp.program()?,
            &v4_roce,
            Some(dp),
        ));
    }
    cases.push(Case::new(
        VARIED_FLOOR.into(),
        varied_floor.loaded("bench_vary")?,
        &flow_frame,
        None,
    ));
    for (n, dp, vary) in &flow_cases {
        cases.push(Case::new(
            format!("{} flows cycled, cache on", crate::plot::si(f64::from(*n))),
            vary.loaded("bench_vary")?,
            &flow_frame,
            Some(dp),
        ));
    }

    bar.set_length((cases.len() * (settings.rounds + 1)) as u64);
    bar.set_message("warm-up");
    for c in cases.iter_mut() {
        c.counters_before = counters(c.dp);
        run_repeated(c.prog, &c.frame, (settings.repeat / 10).max(1));
        bar.inc(1);
    }
    // Rounds interleave the cases, so drift on the machine spreads over all of them alike.
    for round in 0..settings.rounds {
        bar.set_message(format!("round {}/{}", round + 1, settings.rounds));
        for c in cases.iter_mut() {
            c.samples
                .push(run_repeated(c.prog, &c.frame, settings.repeat));
            bar.inc(1);
        }
    }

    Ok(report(settings, &cases, &refused, &rule_dps))
}

fn report(
    settings: &Settings,
    cases: &[Case],
    refused: &[(u32, String)],
    rule_dps: &[(u32, Dataplane, Dataplane)],
) -> Section {
    let floor = &cases[0].samples;
    let varied_floor = cases
        .iter()
        .find(|c| c.label == VARIED_FLOOR)
        .map(|c| c.samples.clone())
        .unwrap_or_else(|| floor.clone());
    let mut s = Section::new("Per-packet cost");
    s.method = vec![
        "BPF_PROG_TEST_RUN on the real object in the running kernel (JIT on); the thread is \
         pinned to CPU 0."
            .into(),
        format!(
            "Each figure is the kernel's mean time per program run over {} runs of one frame \
             (the kernel times the loop around the program, not the syscall), taken in {} \
             rounds after a warm-up of a tenth of that; rounds interleave every row, so \
             drift spreads over all rows alike.",
            settings.repeat, settings.rounds
        ),
        "Floor: an empty XDP program (`xdp_pass`) on the same frame. \"× floor\" and \"+ns\" \
         are taken round by round against the floor of the same round."
            .into(),
        "Protocol rows run the default policy (the AI catalogue, `config/default.toml`) on \
         64-byte (IPv4) and 80-byte (IPv6) frames, small enough that the classes stay under \
         their committed rates, so the conforming path (police + act) is timed. \"cache \
         off\" is the same policy compiled without the flow cache: the full classification \
         of every packet."
            .into(),
        "Rule rows: N rules on distinct UDP destination ports, the matching rule last, of a \
         class without rates (the policer is skipped)."
            .into(),
        "Over-rate rows: one class of 1 Mbit/s (`exceed = \"drop\"`) for the RoCEv2 frame, \
         far below what the runs offer, so every packet takes the policer's exact path (clock \
         read, compare-and-swap on the shared buckets; no lease) and nearly all are dropped; \
         with and without the flows' fair queues (`flow_fairness`)."
            .into(),
        format!(
            "Flow rows: `bench_vary` (a helper program) rewrites each run's source address \
             and port to the next of N flows (198.18.0.0/15 × ports) and tail-calls the \
             pipeline (a {FLOW_POLICY_RULES}-rule policy, cache on); the cache is filled by \
             one pass over all flows first. Their floor is `bench_vary` tail-calling the \
             empty program, so the rewrite and the tail call are subtracted."
        ),
    ];
    let mut table = Table::new(
        "ns per packet: median (min–max) over the rounds.",
        &[
            "case",
            "ns/packet",
            "× floor",
            "+ns over floor",
            "colours, verdict",
            "flow cache",
        ],
    );
    let mut bars = Vec::new();
    for c in cases {
        let fl = if c.label.contains("flows cycled") {
            &varied_floor
        } else {
            floor
        };
        let f = Figure::of(&c.samples);
        let (colour, cache) = c.outcome();
        table.row(vec![
            c.label.clone(),
            f.show(1),
            Figure::ratio(&c.samples, fl).show(2),
            Figure::difference(&c.samples, fl).show(1),
            colour,
            cache,
        ]);
        bars.push((c.label.clone(), f));
    }
    for (n, e) in refused {
        table.row(vec![
            format!("{n} rules"),
            format!(
                "refused: limit {} ({e})",
                group_thousands(dataplane_common::MAX_RULES)
            ),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
        ]);
    }
    s.tables.push(table);
    s.plots.push(Plot::Bars {
        file: "per_packet.svg".into(),
        title: "Per-packet cost under BPF_PROG_TEST_RUN (ns, median and min–max)".into(),
        unit: "ns per packet".into(),
        bars,
    });

    let find = |label: &str| cases.iter().find(|c| c.label == label);
    if let Some(hit) = find("IPv4 RoCEv2 BTH (rdma), cache hit") {
        let over = Figure::difference(&hit.samples, floor);
        s.targets.push(Target {
            name: "cache-hit path (IPv4 RoCEv2, catalogue, policed green)".into(),
            goal: format!("≤ floor + {HIT_BUDGET_NS} ns"),
            measured: format!("floor + {} ns", over.show(1)),
            verdict: Verdict::of(over.median <= HIT_BUDGET_NS),
            note: hit_budget_note(&find),
        });
    }
    // The same budget on a class without rates: the cache-hit path without the policer.
    if let Some(hit) = find(UNPOLICED_HIT) {
        let over = Figure::difference(&hit.samples, floor);
        s.targets.push(Target {
            name: "cache-hit path, class without rates (10-rule row)".into(),
            goal: format!("≤ floor + {HIT_BUDGET_NS} ns"),
            measured: format!("floor + {} ns", over.show(1)),
            verdict: Verdict::of(over.median <= HIT_BUDGET_NS),
            note: String::new(),
        });
    }
    let rule_hit = |n: u32| find(&format!("{n} rules, last matches, cache hit"));
    let counts = settings.rule_counts;
    let ten = rule_hit(counts[0]);
    let largest = counts[counts.len() - 1];
    match (ten, rule_hit(largest)) {
        (Some(ten), Some(big)) => {
            let r = Figure::ratio(&big.samples, &ten.samples);
            s.targets.push(Target {
                name: format!("{largest} rules vs {} rules, cache hits", counts[0]),
                goal: format!("≤ {RULE_SCALING_LIMIT}×"),
                measured: format!("{}×", r.show(2)),
                verdict: Verdict::of(r.median <= RULE_SCALING_LIMIT),
                note: String::new(),
            });
        }
        (Some(ten), None) => {
            let biggest = rule_dps.last().map(|(n, _, _)| *n).unwrap_or(0);
            let measured = rule_hit(biggest)
                .map(|b| Figure::ratio(&b.samples, &ten.samples).show(2))
                .unwrap_or_else(|| "–".into());
            s.targets.push(Target {
                name: format!("{largest} rules vs {} rules, cache hits", counts[0]),
                goal: format!("≤ {RULE_SCALING_LIMIT}×"),
                measured: format!(
                    "refused: limit {}; {biggest} rules: {measured}×",
                    group_thousands(dataplane_common::MAX_RULES)
                ),
                verdict: Verdict::NotMeasured,
                note: format!(
                    "policies hold at most {} rules (one bit each in a rule vector)",
                    group_thousands(dataplane_common::MAX_RULES)
                ),
            });
        }
        _ => {}
    }
    s.caveats = vec![
        "BPF_PROG_TEST_RUN runs the program on one frame in a tight loop: caches and branch \
         predictors are warm, no driver, DMA, skb or NAPI cost is included. Real traffic \
         with many flows and a cold cache costs more; the flow rows show part of that."
            .into(),
        "The policer's state is shared by all CPUs; these runs use one CPU, so the \
         compare-and-swaps never contend here."
            .into(),
        "The flow rows run on one CPU, so every flow lands in that CPU's table (2^17 slots \
         in two-entry sets on a 2-CPU machine; RSS spreads real flows over all CPUs' \
         tables): at 100k flows about 28% of packets miss (sets of three or more flows), \
         at 1M nearly all, so that row is the cost of a miss (lookup, classification, the \
         entry's write). Flows are visited in a scattered order, so at 100k and 1M flows \
         nearly every lookup also misses the CPU caches."
            .into(),
        "Times are the kernel's mean over all runs of a round, not a per-packet \
         distribution: tails are not visible."
            .into(),
    ];
    s
}

/// Where the cache-hit path's time goes, from other rows of the same run.
fn hit_budget_note<'a>(find: &impl Fn(&str) -> Option<&'a Case<'a>>) -> String {
    let floor = find("empty XDP program (floor)").map(|c| Figure::of(&c.samples).median);
    let at = |label: &str| {
        find(label)
            .zip(floor)
            .map(|(c, f)| format!("{:.0}", Figure::of(&c.samples).median - f))
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "parse + interface lookup + counting alone cost floor + {} ns (row \"{NO_POLICY}\"); \
         a cache hit of an unpoliced class floor + {} ns (10-rule row: the flow table's set \
         is one index computation and load); a green packet of a class under its rate then \
         spends its CPU's lease inline (no call, no clock read, no shared line), and the \
         policer (a global BPF function) is called only when the lease runs out",
        at(NO_POLICY),
        at(UNPOLICED_HIT)
    )
}

/// 16384 -> "16 384".
pub fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}
