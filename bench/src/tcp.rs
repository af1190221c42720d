//! TCP through a class, against what a user would run instead: real Linux TCP (iperf3, cubic)
//! from a client through the gateway to a server, with ECN off and on, at several class
//! rates and stream counts, through (1) the kernel's HTB shaper at the class rate on kernel
//! forwarding, (2) the dataplane as configured by default (TCP window control and
//! retransmission repair), (3) the dataplane with `tcp_window = false` (repair only). Each
//! run builds its own topology (`dataplane_tests::tcp`).

use anyhow::Result;
use dataplane_tests::tcp::{tcp_through_class, Enforcer, TcpRun, MSS};
use indicatif::ProgressBar;

use crate::{
    plot::Plot,
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Mode, Settings,
};

/// The enforcers compared, HTB first (the others are measured against it).
fn enforcers() -> [(&'static str, Enforcer); 3] {
    [
        ("HTB (kernel forwarding)", Enforcer::Htb),
        ("dataplane defaults", Enforcer::Dataplane(String::new())),
        (
            "dataplane, tcp_window = false",
            Enforcer::Dataplane("tcp_window = false".into()),
        ),
    ]
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    let (rates, streams, ecns, secs): (&[u32], &[u32], &[bool], u32) = match settings.mode {
        Mode::Full => (&[100, 300, 1000], &[1, 4, 16], &[false, true], 5),
        Mode::Quick => (&[300, 1000], &[1, 4], &[false], 3),
        Mode::Smoke => (&[1000], &[1], &[false], 2),
    };
    let enforcers = enforcers();
    bar.set_length((rates.len() * streams.len() * ecns.len() * enforcers.len()) as u64);
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
    let (mut cases, mut goodput_met, mut retrans_met, mut latency_met, mut fair_met) =
        (0, 0, 0, 0, 0);
    let (mut goodput_missed, mut retrans_missed) = (Vec::new(), Vec::new());
    for &rate in rates {
        for &n in streams {
            for &ecn in ecns {
                let mut htb: Option<TcpRun> = None;
                for (i, (label, enforcer)) in enforcers.iter().enumerate() {
                    bar.set_message(format!("{rate} Mbit/s ×{n} ecn={ecn} {label}"));
                    let r = tcp_through_class(rate, n, ecn, enforcer, secs)?;
                    bar.inc(1);
                    let rate_bps = f64::from(rate) * 1e6;
                    let vs_htb = htb.as_ref().map(|h| r.goodput_bps / h.goodput_bps);
                    table.row(vec![
                        format!("{rate} Mbit/s"),
                        n.to_string(),
                        if ecn { "on" } else { "off" }.into(),
                        (*label).into(),
                        format!("{:.0} Mbit/s", r.goodput_bps / 1e6),
                        format!("{:.2}", r.goodput_bps / rate_bps),
                        vs_htb.map_or("—".into(), |v| format!("{v:.2}")),
                        format!("{:.2}%", r.retransmit_share * 100.0),
                        format!("{:.2}", r.jain),
                        format!("{:.2} ({:.2})", r.ping_loaded_ms, r.ping_idle_ms),
                    ]);
                    goodput_bars.push((
                        format!("{rate}M ×{n}{} {label}", if ecn { " ECN" } else { "" }),
                        Figure::of(&[r.goodput_bps / rate_bps]),
                    ));
                    match (i, &htb) {
                        (0, _) => htb = Some(r),
                        (1, Some(h)) => {
                            cases += 1;
                            let goodput = r.goodput_bps >= 0.95 * h.goodput_bps
                                && r.goodput_bps >= 0.9 * rate_bps;
                            let retrans = r.retransmit_share <= if ecn { 0.001 } else { 0.01 };
                            goodput_met += usize::from(goodput);
                            retrans_met += usize::from(retrans);
                            latency_met +=
                                usize::from(r.added_latency_ms() <= 0.1 * h.added_latency_ms());
                            fair_met += usize::from(r.jain >= 0.9);
                            let case =
                                format!("{rate} Mbit/s ×{n}{}", if ecn { " ECN" } else { "" });
                            if !goodput {
                                goodput_missed.push(case.clone());
                            }
                            if !retrans {
                                retrans_missed.push(case);
                            }
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
         server-facing interface. Dataplane: forwarding in XDP, one class of that rate \
         (`exceed = \"drop\"`) for TCP to the iperf3 port and ICMP; by default its TCP window \
         control narrows the windows of the returning ACKs and retransmissions see a second \
         burst."
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
    let missed = |cases: &[String]| {
        if cases.is_empty() {
            String::new()
        } else {
            format!("missed in: {}. ", cases.join(", "))
        }
    };
    let floor = "Window control cannot hold a flow below two segments per round trip \
                 (a smaller window stalls TCP on delayed ACKs); on a veth path of tens of \
                 microseconds that is several hundred Mbit/s per flow, so there the policer's \
                 drops hold the rest";
    section.targets = vec![
        Target {
            name: "TCP goodput (dataplane defaults)".into(),
            goal: "≥ 0.95 × HTB and ≥ 0.9 × rate".into(),
            measured: of(goodput_met),
            verdict: Verdict::of(cases > 0 && goodput_met == cases),
            note: format!("{}{floor}", missed(&goodput_missed)),
        },
        Target {
            name: "Retransmitted segments (dataplane defaults)".into(),
            goal: "≤ 1% (ECN off), ≤ 0.1% (ECN on)".into(),
            measured: of(retrans_met),
            verdict: Verdict::of(cases > 0 && retrans_met == cases),
            note: format!("{}as above", missed(&retrans_missed)),
        },
        Target {
            name: "Jain's fairness over the streams (dataplane defaults)".into(),
            goal: "≥ 0.9".into(),
            measured: of(fair_met),
            verdict: Verdict::of(cases > 0 && fair_met == cases),
            note: "one window for all flows of a class".into(),
        },
        Target {
            name: "Added ping latency (dataplane defaults)".into(),
            goal: "≤ 0.1 × HTB's".into(),
            measured: of(latency_met),
            verdict: Verdict::of(cases > 0 && latency_met == cases),
            note: "a policer holds no packet".into(),
        },
    ];
    section.caveats = vec![
        "A veth path's RTT is tens of microseconds and the two CPUs also run both TCP ends; a \
         shaper's queue is then most of the RTT, which is why HTB's goodput holds at low \
         rates per flow. The kernel here has no netem to give the path a realistic RTT."
            .into(),
    ];
    Ok(section)
}
