//! Control plane: time to apply policies of 1k / 10k / 100k rules, the resident memory of a
//! process holding a loaded dataplane, and kernel map memory per rule and per flow.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{bail, Context, Result};
use aya::maps::MapInfo;
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use dataplane_common::{flow::cache_entries, maps::names, MAX_RULES};
use dataplane_lab::{daemon::Daemon, frames::Frame, kernel::run_repeated, netns::VethNs};
use indicatif::ProgressBar;

use crate::{
    per_packet::{group_thousands, CATALOGUE},
    plot::{si, Plot},
    programs::BenchPrograms,
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Settings,
};

/// Flows put into the cache for the per-flow memory figure.
const FLOWS: u32 = 100_000;
/// Maps whose size depends on the rules.
const RULE_MAPS: [&str; 5] = [
    names::POLICY_SLOTS,
    names::RULE_CLASSES,
    names::FIELD_TABLE,
    names::PREFIXES,
    names::VECTOR_POOL,
];
/// Destination ports the prefix rules spread over.
const RULE_PORTS: u32 = 8;

/// `n` rules, each a distinct /32 source in 198.18.0.0/15 and one of a few UDP ports: every
/// rule adds an LPM entry and a rule vector.
fn prefix_rules(n: u32) -> String {
    let mut toml = String::from("[[class]]\nname = \"default\"\n[[class]]\nname = \"bulk\"\n");
    for i in 0..n {
        let a = u32::from_be_bytes([198, 18, 0, 0]) + i % (1 << 17);
        let [a0, a1, a2, a3] = a.to_be_bytes();
        toml.push_str(&format!(
            "[[rule]]\nclass = \"bulk\"\nsrc = \"{a0}.{a1}.{a2}.{a3}/32\"\nprotocol = \"udp\"\n\
             dst_port = {}\n",
            5_000 + i % RULE_PORTS
        ));
    }
    toml
}

/// Apply-time samples (seconds) of one rule count: parse+validate, compile, write.
struct ApplyTimes {
    rules: u32,
    parse: Vec<f64>,
    compile: Vec<f64>,
    write: Vec<f64>,
    refused: Option<String>,
}

fn apply_times(rules: u32, rounds: usize, bar: &ProgressBar) -> Result<ApplyTimes> {
    let text = prefix_rules(rules);
    let mut t = ApplyTimes {
        rules,
        parse: Vec::new(),
        compile: Vec::new(),
        write: Vec::new(),
        refused: None,
    };
    for _ in 0..rounds {
        // A fresh dataplane each round (not timed): apply waits while a slot it just
        // switched away from may still be read, which would add to a second apply.
        let mut dp = Dataplane::load()?;
        let start = Instant::now();
        let policy = match Policy::from_toml_str(&text, &format!("{rules} rules")) {
            Ok(p) => p,
            Err(e) => {
                t.refused = Some(e.to_string());
                bar.inc(1);
                return Ok(t);
            }
        };
        let parsed = Instant::now();
        let compiled = CompiledPolicy::new(&policy);
        let compiled_at = Instant::now();
        dp.apply(&compiled).context("apply")?;
        let written = Instant::now();
        t.parse.push((parsed - start).as_secs_f64());
        t.compile.push((compiled_at - parsed).as_secs_f64());
        t.write.push((written - compiled_at).as_secs_f64());
        bar.inc(1);
    }
    Ok(t)
}

/// memlock and max entries of every BPF map this process holds, by name.
fn map_memory() -> Result<BTreeMap<String, (u32, u64)>> {
    let mut out = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let info = MapInfo::from_id(id as u32)?;
        let name = info.name_as_str().unwrap_or("?").to_string();
        out.insert(name, (info.max_entries(), memlock));
    }
    Ok(out)
}

fn sum(maps: &BTreeMap<String, (u32, u64)>, which: &[&str]) -> u64 {
    which
        .iter()
        .filter_map(|n| maps.get(*n))
        .map(|(_, m)| m)
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1048576.0)
}

/// (rules, maps) after applying each rule count, and the flow cache before/after FLOWS flows.
type MemorySnapshots = (
    BTreeMap<String, (u32, u64)>,
    Vec<(u32, BTreeMap<String, (u32, u64)>)>,
    BTreeMap<String, (u32, u64)>,
);

fn memory_snapshots() -> Result<MemorySnapshots> {
    let empty = {
        let _dp = Dataplane::load()?;
        map_memory()?
    };
    let mut by_rules = Vec::new();
    for n in [10, 1_000, 10_000] {
        let mut dp = Dataplane::load()?;
        dp.apply(&CompiledPolicy::new(&Policy::from_toml_str(
            &prefix_rules(n),
            "rules",
        )?))?;
        by_rules.push((n, map_memory()?));
    }
    let with_flows = {
        let mut dp = Dataplane::load()?;
        let mut compiled = CompiledPolicy::new(&Policy::from_toml_str(&prefix_rules(10), "r")?);
        compiled.flow_cache = true;
        dp.apply(&compiled)?;
        let mut vary = BenchPrograms::load()?;
        vary.vary_into(dp.program()?.fd()?, FLOWS)?;
        let frame = Frame::eth()
            .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
            .udp(40000, 5000)
            .pad_to(64)
            .build();
        run_repeated(vary.loaded("bench_vary")?, &frame, FLOWS);
        let cached = dp.iface_counters(0)?.flow_cache_misses;
        if cached < u64::from(FLOWS) / 2 {
            bail!("only {cached} flows went into the cache");
        }
        map_memory()?
    };
    Ok((empty, by_rules, with_flows))
}

/// VmRSS and VmHWM (KiB) of the real daemon (`dataplane run`, default policy) once it is
/// attached to a veth and answering on its control socket, and again after `IDLE`.
fn daemon_rss() -> Result<[(u64, u64); 2]> {
    // The helpers assert like tests do; a failure here becomes this section's error.
    std::panic::catch_unwind(|| {
        let veth = VethNs::create();
        let mut daemon = Daemon::create();
        daemon.write_config(CATALOGUE);
        daemon.start(&["--iface", &veth.root_if]);
        let pid = daemon.pid().context("the daemon is not running")?;
        let ready = memory_of(pid)?;
        std::thread::sleep(IDLE);
        let idle = memory_of(pid)?;
        daemon.stop();
        Ok([ready, idle])
    })
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        bail!("running the daemon failed: {msg}")
    })
}

/// How long the daemon idles before the second memory reading.
const IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// (VmRSS, VmHWM) in KiB of process `pid`.
fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((kb("VmRSS:")?, kb("VmHWM:")?))
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    let rounds = settings.rounds;
    let counts = &settings.rule_counts[1..];
    bar.set_length((counts.len() * rounds + 2) as u64);
    bar.set_message("apply times");
    let mut applies = Vec::new();
    for &n in counts {
        applies.push(apply_times(n, rounds, bar)?);
    }
    bar.set_message("resident memory");
    let [(rss, hwm), (idle_rss, _)] = daemon_rss()?;
    bar.inc(1);
    bar.set_message("map memory");
    let (empty, by_rules, with_flows) = memory_snapshots()?;
    bar.inc(1);

    let mut s = Section::new("Control plane");
    s.method = vec![
        format!(
            "Apply time: a policy of N rules, each a distinct /32 source address in \
             198.18.0.0/15 and one of {RULE_PORTS} UDP destination ports (every rule adds an \
             LPM entry and a rule vector), timed in three steps: parse + validate the TOML \
             text, compile to kernel tables, write the tables into the kernel's maps and \
             switch generation (`Dataplane::apply`). {rounds} rounds, each on a freshly \
             loaded dataplane (loading is not timed)."
        ),
        format!(
            "Resident memory: the daemon (`dataplane run`, the `dataplane` binary next to \
             this harness) with the default policy, attached natively to a veth, its own pin \
             root and run directory; VmRSS and VmHWM from /proc/<pid>/status once its \
             control socket answers, and VmRSS again after {} s idle.",
            IDLE.as_secs()
        ),
        "Map memory: `memlock` of every map from /proc/self/fdinfo (the kernel's own \
         account of each map's memory), on a loaded dataplane with no policy, with 10 / \
         1k / 10k rules, and after 100k flows went through the flow cache."
            .into(),
    ];
    let mut table = Table::new(
        "Time to apply (ms, median and min–max over rounds).",
        &[
            "rules",
            "parse + validate",
            "compile",
            "write + switch",
            "total",
        ],
    );
    let mut series: Vec<(String, Vec<(f64, Figure)>)> = vec![("total".into(), Vec::new())];
    for a in &applies {
        if let Some(e) = &a.refused {
            table.row(vec![
                group_thousands(a.rules as usize),
                format!("refused: limit {} ({e})", group_thousands(MAX_RULES)),
                "–".into(),
                "–".into(),
                "–".into(),
            ]);
            continue;
        }
        let ms = |v: &[f64]| Figure::of(&v.iter().map(|x| x * 1e3).collect::<Vec<_>>());
        let total: Vec<f64> = (0..a.parse.len())
            .map(|i| a.parse[i] + a.compile[i] + a.write[i])
            .collect();
        table.row(vec![
            group_thousands(a.rules as usize),
            ms(&a.parse).show(1),
            ms(&a.compile).show(1),
            ms(&a.write).show(1),
            ms(&total).show(1),
        ]);
        series[0].1.push((f64::from(a.rules), ms(&total)));
    }
    s.tables.push(table);
    s.plots.push(Plot::Lines {
        file: "control_plane.svg".into(),
        title: "Time to apply a policy (ms)".into(),
        x_label: "rules".into(),
        y_label: "ms".into(),
        series,
    });

    let mut mem = Table::new(
        &format!(
            "Resident memory of the daemon: VmRSS {} MiB when ready ({} MiB after {} s idle), \
             peak (VmHWM) {} MiB. Kernel map memory (memlock) per map:",
            format_args!("{:.1}", rss as f64 / 1024.0),
            format_args!("{:.1}", idle_rss as f64 / 1024.0),
            IDLE.as_secs(),
            format_args!("{:.1}", hwm as f64 / 1024.0)
        ),
        &[
            "map",
            "max entries",
            "no policy",
            "10k rules",
            "after 100k flows",
        ],
    );
    let ten_k = &by_rules.last().expect("rule snapshots").1;
    for (name, (max, m)) in &empty {
        let at = |snap: &BTreeMap<String, (u32, u64)>| {
            snap.get(name)
                .map_or("–".to_string(), |(_, b)| mib(*b).to_string())
        };
        mem.row(vec![
            format!("`{name}`"),
            si(f64::from(*max)),
            mib(*m),
            at(ten_k),
            at(&with_flows),
        ]);
    }
    let total = |snap: &BTreeMap<String, (u32, u64)>| snap.values().map(|(_, m)| m).sum::<u64>();
    mem.row(vec![
        "**all maps**".into(),
        "".into(),
        mib(total(&empty)),
        mib(total(ten_k)),
        mib(total(&with_flows)),
    ]);
    s.tables.push(mem);

    let rule_fixed = sum(&empty, &RULE_MAPS);
    let mut per_rule = Table::new(
        "Map memory per rule and per flow.",
        &["quantity", "bytes", "how"],
    );
    per_rule.row(vec![
        "rule tables, reserved per rule slot".into(),
        format!("{:.0}", rule_fixed as f64 / MAX_RULES as f64),
        format!(
            "{} (rule maps with no policy) / {} rules",
            mib(rule_fixed),
            group_thousands(MAX_RULES)
        ),
    ]);
    let (first_n, first) = &by_rules[1];
    let (last_n, last) = by_rules.last().expect("rule snapshots");
    let growth = (sum(last, &RULE_MAPS) as f64 - sum(first, &RULE_MAPS) as f64)
        / f64::from(last_n - first_n);
    per_rule.row(vec![
        "growth per added rule".into(),
        format!("{growth:.0}"),
        format!(
            "(rule maps at {} - at {}) / {} rules: LPM entries (not preallocated); arrays do \
             not grow",
            si(f64::from(*last_n)),
            si(f64::from(*first_n)),
            si(f64::from(last_n - first_n))
        ),
    ]);
    let flow_cache =
        |snap: &BTreeMap<String, (u32, u64)>| snap.get(names::FLOW_CACHE).map_or(0, |(_, m)| *m);
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let entries = cache_entries(u32::try_from(cpus)?);
    per_rule.row(vec![
        "flow cache, per cached flow".into(),
        format!("{:.0}", flow_cache(&empty) as f64 / f64::from(entries)),
        format!(
            "{} / {} entries ({cpus} CPUs' tables of two-entry sets), preallocated: {} after {} \
             flows",
            mib(flow_cache(&empty)),
            group_thousands(entries as usize),
            mib(flow_cache(&with_flows)),
            si(f64::from(FLOWS))
        ),
    ]);
    s.tables.push(per_rule);

    s.targets.push(Target {
        name: "apply 100k rules".into(),
        goal: "time it".into(),
        measured: applies
            .iter()
            .find(|a| a.rules == 100_000)
            .and_then(|a| a.refused.as_ref())
            .map_or("applied".into(), |_| {
                format!("refused: limit {}", group_thousands(MAX_RULES))
            }),
        verdict: Verdict::NotMeasured,
        note: format!("policies hold at most {} rules", group_thousands(MAX_RULES)),
    });
    s.caveats = vec![
        "Apply time is for a new policy written into an idle generation slot; a real \
         daemon also reads the file and may wait the 50 ms quiescence between two switches."
            .into(),
        "VmRSS is user-space memory only; the maps live in kernel memory (the memlock \
         figures), most of it preallocated whether rules and flows use it or not."
            .into(),
        "Memory of an idle daemon with one interface; it does not show growth under \
         operator traffic on the control socket or with many interfaces."
            .into(),
    ];
    Ok(s)
}
