//! TCP through a class, against what a user would run instead: real Linux TCP (iperf3, cubic)
//! from a client through the gateway to a server, with ECN off and on, at several class
//! rates and stream counts, through (1) the kernel's HTB shaper at the class rate on kernel
//! forwarding, (2) the dataplane as configured by default (TCP window control, retransmission
//! repair and per-flow fair shares), (3) the dataplane with `flow_fairness = false`, (4) the
//! dataplane with `tcp_window = false`. Each
//! run builds its own topology (`dataplane_lab::tcp`). A second sweep adds a realistic
//! round trip to the path and compares (1) with (2).

use std::time::Duration;

use anyhow::Result;
use dataplane_lab::tcp::{tcp_through_class, Enforcer, TcpCase, TcpRun, MSS, PING_JITTER_MS};
use indicatif::ProgressBar;

use crate::{
    plot::Plot,
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Mode, Settings,
};

/// The enforcers compared, HTB first (the others are measured against it).
fn enforcers() -> [(&'static str, Enforcer); 4] {
    [
        ("HTB (kernel forwarding)", Enforcer::Htb),
        ("dataplane defaults", Enforcer::Dataplane(String::new())),
        (
            "dataplane, flow_fairness = false",
            Enforcer::Dataplane("flow_fairness = false".into()),
        ),
        (
            "dataplane, tcp_window = false",
            Enforcer::Dataplane("tcp_window = false".into()),
        ),
    ]
}

/// The round trip the second sweep adds to the path (a delay line on the return path).
const ADDED_RTT: Duration = Duration::from_millis(5);

/// One sweep's settings: every rate × stream count × ECN setting, through `enforcers`, with
/// `added_rtt` on the path.
struct Sweep<'a> {
    rates: &'a [u32],
    streams: &'a [u32],
    ecns: &'a [bool],
    secs: u32,
    added_rtt: Duration,
    enforcers: &'a [(&'static str, Enforcer)],
}

/// What a sweep found: its table, plot bars and how many cases met each target.
#[derive(Default)]
struct Tally {
    cases: usize,
    goodput_met: usize,
    retrans_met: usize,
    latency_met: usize,
    fair_met: usize,
    goodput_missed: Vec<String>,
    retrans_missed: Vec<String>,
    fair_missed: Vec<String>,
    latency_missed: Vec<String>,
}

fn sweep(
    sweep: &Sweep,
    table: &mut Table,
    bars: &mut Vec<(String, Figure)>,
    bar: &ProgressBar,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let rtt_label = if sweep.added_rtt.is_zero() {
        String::new()
    } else {
        format!(" +{} ms", sweep.added_rtt.as_millis())
    };
    for &rate in sweep.rates {
        for &n in sweep.streams {
            for &ecn in sweep.ecns {
                let mut htb: Option<TcpRun> = None;
                for (i, (label, enforcer)) in sweep.enforcers.iter().enumerate() {
                    bar.set_message(format!("{rate} Mbit/s ×{n} ecn={ecn}{rtt_label} {label}"));
                    let case = TcpCase {
                        rate_mbit: rate,
                        streams: n,
                        ecn,
                        added_rtt: sweep.added_rtt,
                        secs: sweep.secs,
                    };
                    let r = tcp_through_class(case, enforcer)?;
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
                    bars.push((
                        format!(
                            "{rate}M ×{n}{}{rtt_label} {label}",
                            if ecn { " ECN" } else { "" }
                        ),
                        Figure::of(&[r.goodput_bps / rate_bps]),
                    ));
                    match (i, &htb) {
                        (0, _) => htb = Some(r),
                        (1, Some(h)) => tally.add(rate, n, ecn, &r, h),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(tally)
}

impl Tally {
    /// Scores the dataplane defaults' run `r` against HTB's `h` in the same case.
    fn add(&mut self, rate: u32, n: u32, ecn: bool, r: &TcpRun, h: &TcpRun) {
        let rate_bps = f64::from(rate) * 1e6;
        self.cases += 1;
        let goodput = r.goodput_bps >= 0.95 * h.goodput_bps && r.goodput_bps >= 0.9 * rate_bps;
        let retrans = r.retransmit_share <= if ecn { 0.001 } else { 0.01 };
        let fair = r.jain >= 0.9;
        self.goodput_met += usize::from(goodput);
        self.retrans_met += usize::from(retrans);
        let latency = r.adds_a_tenth_of_the_latency_of(h);
        self.latency_met += usize::from(latency);
        self.fair_met += usize::from(fair);
        let case = format!("{rate} Mbit/s ×{n}{}", if ecn { " ECN" } else { "" });
        if !latency {
            self.latency_missed.push(format!(
                "{case} (+{:.2} ms, HTB +{:.2} ms)",
                r.added_latency_ms(),
                h.added_latency_ms()
            ));
        }
        for (met, missed) in [
            (goodput, &mut self.goodput_missed),
            (retrans, &mut self.retrans_missed),
            (fair, &mut self.fair_missed),
        ] {
            if !met {
                missed.push(case.clone());
            }
        }
    }

    /// The four targets, named with `scope` ("" or " over a 5 ms round trip"); `limits`
    /// says what limits goodput and retransmits where they miss.
    fn targets(&self, scope: &str, limits: &str) -> Vec<Target> {
        let of = |met: usize| format!("{met} of {} cases", self.cases);
        let all = |met: usize| Verdict::of(self.cases > 0 && met == self.cases);
        let missed = |cases: &[String], why: &str| {
            if cases.is_empty() {
                String::new()
            } else {
                format!("missed in: {}. {why}", cases.join(", "))
            }
        };
        vec![
            Target {
                name: format!("TCP goodput (dataplane defaults{scope})"),
                goal: "≥ 0.95 × HTB and ≥ 0.9 × rate".into(),
                measured: of(self.goodput_met),
                verdict: all(self.goodput_met),
                note: missed(&self.goodput_missed, limits),
            },
            Target {
                name: format!("Retransmitted segments (dataplane defaults{scope})"),
                goal: "≤ 1% (ECN off), ≤ 0.1% (ECN on)".into(),
                measured: of(self.retrans_met),
                verdict: all(self.retrans_met),
                note: missed(&self.retrans_missed, limits),
            },
            Target {
                name: format!("Jain's fairness over the streams (dataplane defaults{scope})"),
                goal: "≥ 0.9".into(),
                measured: of(self.fair_met),
                verdict: all(self.fair_met),
                note: missed(
                    &self.fair_missed,
                    "where only the policer's drops can hold the flows (below two segments \
                     per round trip), the flows that wait out a loss's timeout fall behind the \
                     others; fair shares mark the flows over their share and leave those under \
                     it alone, but a flow in a timeout sends nothing to leave alone",
                ),
            },
            Target {
                name: format!("Added ping latency (dataplane defaults{scope})"),
                goal: format!(
                    "≤ 0.1 × HTB's (or ≤ {PING_JITTER_MS} ms, ping's own jitter, where HTB adds \
                     little)"
                ),
                measured: of(self.latency_met),
                verdict: all(self.latency_met),
                note: if self.latency_missed.is_empty() {
                    "a policer holds no packet".into()
                } else {
                    format!(
                        "missed in: {}. A policer holds no packet; what it adds is the \
                         senders' load on the machine's two CPUs",
                        self.latency_missed.join(", ")
                    )
                },
            },
        ]
    }
}

fn results_table(title: &str) -> Table {
    Table::new(
        title,
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
    )
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    let (rates, streams, ecns, secs): (&[u32], &[u32], &[bool], u32) = match settings.mode {
        Mode::Full => (&[100, 300, 1000], &[1, 4, 16], &[false, true], 5),
        Mode::Quick => (&[300, 1000], &[1, 4], &[false], 3),
        Mode::Smoke => (&[1000], &[1], &[false], 2),
    };
    let (far_rates, far_streams, far_ecns): (&[u32], &[u32], &[bool]) = match settings.mode {
        Mode::Full => (&[100, 300, 1000], &[1, 4, 16], &[false, true]),
        Mode::Quick => (&[100, 300], &[1, 4], &[false]),
        Mode::Smoke => (&[100], &[1], &[false]),
    };
    let enforcers = enforcers();
    let near = Sweep {
        rates,
        streams,
        ecns,
        secs,
        added_rtt: Duration::ZERO,
        enforcers: &enforcers,
    };
    // Over a longer round trip: HTB against the defaults only.
    let far = Sweep {
        rates: far_rates,
        streams: far_streams,
        ecns: far_ecns,
        secs: secs.max(5),
        added_rtt: ADDED_RTT,
        enforcers: &enforcers[..2],
    };
    let runs = |s: &Sweep| s.rates.len() * s.streams.len() * s.ecns.len() * s.enforcers.len();
    bar.set_length((runs(&near) + runs(&far)) as u64);
    let mut near_table = results_table(
        "Veth path (tens of microseconds): goodput, retransmitted segments, Jain's fairness \
         over the streams and mean ping RTT through the loaded class (idle path in brackets), \
         per enforcer",
    );
    let mut far_table = results_table(&format!(
        "Over a {} ms round trip (a delay line on the server's return path): the same figures",
        ADDED_RTT.as_millis()
    ));
    let mut near_bars = Vec::new();
    let mut far_bars = Vec::new();
    let near_tally = sweep(&near, &mut near_table, &mut near_bars, bar)?;
    let far_tally = sweep(&far, &mut far_table, &mut far_bars, bar)?;
    let mut section = Section::new("TCP through a class");
    section.method = vec![
        format!(
            "iperf3 (cubic) for {secs} s ({} s over the longer round trip) from a client \
             through the gateway to a server, one fresh namespace topology per run; ECN set on \
             both hosts (`net.ipv4.tcp_ecn`). Goodput and fairness from the receiver's \
             per-stream figures; retransmits from the sender, as a share of the segments sent \
             (bytes / {MSS} B). Ping every 10 ms from the client to the server through the \
             same class while the streams run.",
            far.secs
        ),
        "HTB: kernel forwarding with `tc qdisc htb` at the class rate on the gateway's \
         server-facing interface. Dataplane: forwarding in XDP, one class of that rate \
         (`exceed = \"drop\"`) for TCP to the iperf3 port and ICMP; by default its TCP window \
         control narrows the windows of the returning ACKs, retransmissions see a second \
         burst, and each flow's own phantom queue at its fair share marks the flows over it \
         and leaves those under it alone (`flow_fairness`)."
            .into(),
        format!(
            "The longer round trip: this kernel has no netem, so a thread holds every packet \
             the server sends for {} ms (a TUN device in the server's namespace, sent on to the \
             gateway through a packet socket; `dataplane_lab::delay`). Both enforcers see the \
             same path.",
            ADDED_RTT.as_millis()
        ),
    ];
    section.tables.push(near_table);
    section.tables.push(far_table);
    section.plots.push(Plot::Bars {
        file: "tcp.svg".into(),
        title: "TCP goodput as a share of the class rate (veth path)".into(),
        unit: "× class rate".into(),
        bars: near_bars,
    });
    section.plots.push(Plot::Bars {
        file: "tcp_rtt.svg".into(),
        title: format!(
            "TCP goodput as a share of the class rate, {} ms round trip",
            ADDED_RTT.as_millis()
        ),
        unit: "× class rate".into(),
        bars: far_bars,
    });
    let floor = "Window control cannot hold a flow below two segments per round trip \
                 (a smaller window stalls TCP on delayed ACKs); on a veth path of tens of \
                 microseconds that is several hundred Mbit/s per flow, so there the policer's \
                 drops hold the rest";
    section.targets = near_tally.targets("", floor);
    section.targets.extend(far_tally.targets(
        &format!(", {} ms round trip", ADDED_RTT.as_millis()),
        "see the table",
    ));
    section.caveats = vec![
        "On the veth path the round trip is tens of microseconds and the two CPUs also run \
         both TCP ends; a shaper's queue is then most of the RTT, which is why HTB's goodput \
         holds at low rates per flow. The second table gives the path a realistic round trip \
         with a user-space delay line, which also takes CPU from both ends."
            .into(),
    ];
    Ok(section)
}
