//! TCP through a class, against what a user would run instead: real Linux TCP (iperf3, cubic)
//! from a client through the gateway to a server, with ECN off and on, at several class
//! rates and stream counts, through (1) the kernel's HTB shaper at the class rate on kernel
//! forwarding, (2) the dataplane's policer as configured by default, (3) the policer with a
//! 4 MiB burst and the phantom-queue AQM (`aqm = true`). Each run builds its own topology.

use std::{process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    dataplane::Dataplane,
    topology::{netns_command, netns_run, Topology},
};
use indicatif::ProgressBar;

use crate::{
    plot::Plot,
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Mode, Settings,
};

/// Payload of a full segment on a 1500-byte MTU with timestamps.
const MSS: f64 = 1448.0;
const IPERF_PORT: u16 = 5201;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Enforcer {
    Htb,
    Policer,
    PolicerAqm,
}

impl Enforcer {
    const ALL: [Enforcer; 3] = [Enforcer::Htb, Enforcer::Policer, Enforcer::PolicerAqm];

    fn label(self) -> &'static str {
        match self {
            Enforcer::Htb => "HTB (kernel forwarding)",
            Enforcer::Policer => "policer, default burst",
            Enforcer::PolicerAqm => "policer, 4 MiB burst + AQM",
        }
    }
}

/// One iperf3 run's figures.
struct Run {
    goodput_bps: f64,
    retransmit_share: f64,
    jain: f64,
    /// Mean ping RTT through the loaded class, and the idle path's, in ms.
    ping_loaded_ms: f64,
    ping_idle_ms: f64,
}

fn policy(topo: &Topology, rate_mbit: u32, enforcer: Enforcer) -> String {
    let extra = match enforcer {
        Enforcer::PolicerAqm => "burst = \"4MiB\"\naqm = true\n",
        _ => "",
    };
    let ifaces: String = topo
        .gateway_ifaces()
        .iter()
        .map(|i| format!("[[interface]]\nname = \"{i}\"\nforward = true\n"))
        .collect();
    format!(
        "{ifaces}[[class]]\nname = \"default\"\n[[class]]\nname = \"bulk\"\nrate = \"{rate_mbit}Mbit\"\n\
         exceed = \"drop\"\nviolate = \"drop\"\n{extra}\
         [[rule]]\nclass = \"bulk\"\nprotocol = \"tcp\"\ndst_port = {IPERF_PORT}\n\
         [[rule]]\nclass = \"bulk\"\nprotocol = \"icmp\"\n"
    )
}

/// The mean of `ping`'s summary line ("rtt min/avg/max/mdev = a/b/c/d ms").
fn ping_mean_ms(output: &str) -> Result<f64> {
    output
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.contains("min/avg")))
        .and_then(|(_, v)| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no ping summary in {output:?}"))
}

fn one_run(rate_mbit: u32, streams: u32, ecn: bool, enforcer: Enforcer, secs: u32) -> Result<Run> {
    let topo = Topology::new(1)?;
    let (client, server) = (&topo.clients[0], &topo.server);
    for ns in [&client.netns, &server.netns] {
        netns_run(
            ns,
            "sysctl",
            &["-qw", &format!("net.ipv4.tcp_ecn={}", u8::from(ecn))],
        )?;
    }
    let mut dp = None;
    match enforcer {
        Enforcer::Htb => {
            let gw = &topo.gateway;
            let dev = &server.gateway_iface;
            netns_run(
                gw,
                "tc",
                &[
                    "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1",
                ],
            )?;
            let rate = format!("{rate_mbit}mbit");
            netns_run(
                gw,
                "tc",
                &[
                    "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate",
                    &rate, "ceil", &rate,
                ],
            )?;
        }
        Enforcer::Policer | Enforcer::PolicerAqm => {
            let policy = Policy::from_toml_str(&policy(&topo, rate_mbit, enforcer), "tcp bench")?;
            let mut loaded = Dataplane::load()?;
            loaded.apply(&CompiledPolicy::new(&policy))?;
            topo.attach(&mut loaded, &policy, XdpMode::Driver)?;
            dp = Some(loaded);
        }
    }
    let target = server.v4.to_string();
    let ping_idle_ms = ping_mean_ms(&netns_run(
        &client.netns,
        "ping",
        &["-q", "-i", "0.01", "-c", "30", &target],
    )?)?;
    let mut iperf_server = netns_command(&server.netns, "iperf3")
        .args(["-s", "-1", "-B", &target, "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server (cargo xtask setup installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    // Pings through the loaded class during the middle of the run.
    let ping_count = (secs.saturating_sub(1) * 100).max(50).to_string();
    let mut ping = netns_command(&client.netns, "ping");
    ping.args(["-q", "-i", "0.01", "-c", &ping_count, &target])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let (iperf, pinged) = std::thread::scope(|s| {
        let pinger = s.spawn(move || -> Result<String> {
            std::thread::sleep(Duration::from_millis(500));
            let out = ping.output()?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        });
        let iperf = netns_command(&client.netns, "iperf3")
            .args(["-c", &target, "-p", &IPERF_PORT.to_string(), "-J"])
            .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
            .output();
        (iperf, pinger.join())
    });
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    drop(dp);
    let iperf = iperf.context("iperf3 client")?;
    let json: serde_json::Value = serde_json::from_slice(&iperf.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&iperf.stdout)))?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &json["end"];
    let sent_bytes = end["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
    let retransmits = end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    let rates: Vec<f64> = end["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["receiver"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|r| r * r).sum();
    let pinged = pinged.map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
    Ok(Run {
        goodput_bps: end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0),
        retransmit_share: retransmits / (sent_bytes / MSS).max(1.0),
        jain: if squares > 0.0 {
            sum * sum / (rates.len() as f64 * squares)
        } else {
            0.0
        },
        // Every ping lost (a saturated policer may drop them all) reads as no summary: count
        // it as the idle path's, since nothing was held.
        ping_loaded_ms: ping_mean_ms(&pinged).unwrap_or(ping_idle_ms),
        ping_idle_ms,
    })
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    let (rates, streams, ecns, secs): (&[u32], &[u32], &[bool], u32) = match settings.mode {
        Mode::Full => (&[100, 300, 1000], &[1, 4, 16], &[false, true], 5),
        Mode::Quick => (&[300], &[1, 4], &[false], 3),
        Mode::Smoke => (&[300], &[1], &[false], 2),
    };
    bar.set_length((rates.len() * streams.len() * ecns.len() * Enforcer::ALL.len()) as u64);
    let mut table = Table::new(
        "Goodput, retransmitted segments, Jain's fairness over the streams and mean ping RTT \
         through the loaded class (idle path in brackets), per enforcer",
        &[
            "rate",
            "streams",
            "ECN",
            "enforcer",
            "goodput",
            "× rate",
            "× HTB",
            "retransmits",
            "Jain",
            "ping ms",
        ],
    );
    let mut goodput_bars = Vec::new();
    let (mut cases, mut goodput_met, mut retrans_met, mut latency_met) = (0, 0, 0, 0);
    for &rate in rates {
        for &n in streams {
            for &ecn in ecns {
                let mut htb = None;
                for enforcer in Enforcer::ALL {
                    bar.set_message(format!("{rate} Mbit/s ×{n} ecn={ecn} {}", enforcer.label()));
                    let r = one_run(rate, n, ecn, enforcer, secs)?;
                    bar.inc(1);
                    let rate_bps = f64::from(rate) * 1e6;
                    let vs_htb = htb.as_ref().map(|h: &Run| r.goodput_bps / h.goodput_bps);
                    table.row(vec![
                        format!("{rate} Mbit/s"),
                        n.to_string(),
                        if ecn { "on" } else { "off" }.into(),
                        enforcer.label().into(),
                        format!("{:.0} Mbit/s", r.goodput_bps / 1e6),
                        format!("{:.2}", r.goodput_bps / rate_bps),
                        vs_htb.map_or("—".into(), |v| format!("{v:.2}")),
                        format!("{:.2}%", r.retransmit_share * 100.0),
                        format!("{:.2}", r.jain),
                        format!("{:.2} ({:.2})", r.ping_loaded_ms, r.ping_idle_ms),
                    ]);
                    goodput_bars.push((
                        format!(
                            "{rate}M ×{n}{} {}",
                            if ecn { " ECN" } else { "" },
                            enforcer.label()
                        ),
                        Figure::of(&[r.goodput_bps / rate_bps]),
                    ));
                    match (enforcer, &htb) {
                        (Enforcer::Htb, _) => htb = Some(r),
                        (Enforcer::PolicerAqm, Some(h)) => {
                            cases += 1;
                            goodput_met += usize::from(
                                r.goodput_bps >= 0.95 * h.goodput_bps
                                    && r.goodput_bps >= 0.9 * rate_bps,
                            );
                            retrans_met +=
                                usize::from(r.retransmit_share <= if ecn { 0.001 } else { 0.01 });
                            let added = |x: &Run| (x.ping_loaded_ms - x.ping_idle_ms).max(0.0);
                            latency_met += usize::from(added(&r) <= 0.1 * added(h));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let mut section = Section::new("TCP through a class");
    section.method = vec![
        format!(
            "iperf3 (cubic) for {secs} s from a client through the gateway to a server, one fresh \
             namespace topology per run; ECN set on both hosts (`net.ipv4.tcp_ecn`). Goodput and \
             fairness from the receiver's per-stream figures; retransmits from the sender, as a \
             share of the segments sent (bytes / {MSS} B). Ping every 10 ms from the client to the \
             server through the same class while the streams run."
        ),
        "HTB: kernel forwarding with `tc qdisc htb` at the class rate on the gateway's \
         server-facing interface. Policer: the dataplane forwarding in XDP, one class of that \
         rate (`exceed = \"drop\"`) for TCP to the iperf3 port and ICMP."
            .into(),
    ];
    section.tables.push(table);
    section.plots.push(Plot::Bars {
        file: "tcp.svg".into(),
        title: "TCP goodput as a share of the class rate".into(),
        unit: "× class rate".into(),
        bars: goodput_bars,
    });
    let of = |met: usize| format!("{met} of {cases} cases");
    section.targets = vec![
        Target {
            name: "TCP goodput (policer + AQM)".into(),
            goal: "≥ 0.95 × HTB and ≥ 0.9 × rate".into(),
            measured: of(goodput_met),
            verdict: Verdict::of(cases > 0 && goodput_met == cases),
            note: "retransmission timeouts after the phantom queue overflows: at a sub-ms RTT \
                   cubic keeps its rate through isolated losses and marks, so only timeouts \
                   bring it down"
                .into(),
        },
        Target {
            name: "Retransmitted segments (policer + AQM)".into(),
            goal: "≤ 1% (ECN off), ≤ 0.1% (ECN on)".into(),
            measured: of(retrans_met),
            verdict: Verdict::of(cases > 0 && retrans_met == cases),
            note: "as above".into(),
        },
        Target {
            name: "Added ping latency (policer + AQM)".into(),
            goal: "≤ 0.1 × HTB's".into(),
            measured: of(latency_met),
            verdict: Verdict::of(cases > 0 && latency_met == cases),
            note: "a policer holds no packet".into(),
        },
    ];
    section.caveats = vec![
        "A veth path's RTT is tens of microseconds and the two CPUs also run both TCP ends; a \
         shaper's queue is then most of the RTT, which is why HTB's goodput holds."
            .into(),
    ];
    Ok(section)
}
