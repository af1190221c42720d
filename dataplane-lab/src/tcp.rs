//! Real Linux TCP (iperf3, cubic) through one class, against what a user would run instead:
//! a fresh namespace topology (client → gateway → server) per run, the class enforced either
//! by the kernel's HTB shaper on kernel forwarding or by the dataplane forwarding in XDP, and
//! pings through the loaded class. Shared by the TCP tests and `cargo xtask bench`.

use std::{process::Stdio, sync::atomic::Ordering, time::Duration};

use crate::{
    delay::ReturnDelay,
    net::forwarding_interfaces,
    netns::{netns_command, netns_run},
    topology::{AttachTopology, Topology},
};
use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use dataplane_common::{maps::ClassCounters, window::WindowState, MAX_IFACES};

/// Payload of a full segment on a 1500-byte MTU with timestamps.
pub const MSS: f64 = 1448.0;
/// The id of the class the runs police (the policy's second class).
const BULK_CLASS: u32 = 1;
/// The iperf3 port the class's rule matches.
pub const IPERF_PORT: u16 = 5201;

/// What enforces the class rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcer {
    /// `tc qdisc htb` at the rate on the gateway's server-facing interface, kernel
    /// forwarding.
    Htb,
    /// The dataplane, one class of the rate with `exceed = "drop"` and these extra class
    /// keys (TOML lines).
    Dataplane(String),
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct TcpRun {
    /// Receiver goodput (payload bits per second).
    pub goodput_bps: f64,
    /// Retransmitted segments as a share of the segments sent.
    pub retransmit_share: f64,
    /// Jain's fairness index over the streams' goodputs.
    pub jain: f64,
    /// Mean ping RTT through the loaded class, ms.
    pub ping_loaded_ms: f64,
    /// Mean ping RTT of the idle path, ms.
    pub ping_idle_ms: f64,
    /// The class's round trip as the dataplane's window control measured it (µs; 0 under
    /// HTB or before a handshake was seen).
    pub measured_rtt_us: u32,
    /// The class's TCP window at the end of the run (bytes; 0 under HTB or while none).
    pub window_bytes: u32,
    /// What the class did to the run's packets, over all interfaces (zero under HTB).
    pub class: ClassCounters,
}

/// Ping's own jitter on a busy two-CPU machine (ms): an idle veth path reads 0.02 to 0.09
/// ms from one run to the next, so a smaller difference is none.
pub const PING_JITTER_MS: f64 = 0.05;

impl TcpRun {
    /// Ping latency the loaded class added over the idle path, ms.
    pub fn added_latency_ms(&self) -> f64 {
        (self.ping_loaded_ms - self.ping_idle_ms).max(0.0)
    }

    /// Whether this run added at most a tenth of the ping latency `htb`'s run added, or no
    /// more than ping's jitter ([`PING_JITTER_MS`]) where HTB itself adds little.
    pub fn adds_a_tenth_of_the_latency_of(&self, htb: &TcpRun) -> bool {
        self.added_latency_ms() <= (0.1 * htb.added_latency_ms()).max(PING_JITTER_MS)
    }
}

/// The dataplane policy of a run: the class for TCP to the iperf3 port and ICMP.
fn policy(topo: &Topology, rate_mbit: u32, extra: &str) -> String {
    let ifaces = forwarding_interfaces(topo);
    format!(
        "{ifaces}[[class]]\nname = \"default\"\n[[class]]\nname = \"bulk\"\nrate = \"{rate_mbit}Mbit\"\n\
         exceed = \"drop\"\nviolate = \"drop\"\n{extra}\n\
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

/// One TCP run's setting.
#[derive(Clone, Copy, Debug)]
pub struct TcpCase {
    /// The class rate, Mbit/s.
    pub rate_mbit: u32,
    /// iperf3 streams.
    pub streams: u32,
    /// ECN on both hosts.
    pub ecn: bool,
    /// Round trip added to the path (a delay line on the server's return path), on top of the
    /// veths' tens of microseconds.
    pub added_rtt: Duration,
    /// iperf3's run time, s.
    pub secs: u32,
}

/// `case.streams` iperf3 streams for `case.secs` seconds through a class of `case.rate_mbit`
/// enforced by `enforcer`.
pub fn tcp_through_class(case: TcpCase, enforcer: &Enforcer) -> Result<TcpRun> {
    let TcpCase {
        rate_mbit,
        streams,
        ecn,
        added_rtt,
        secs,
    } = case;
    let topo = Topology::new(1)?;
    let delay = if added_rtt.is_zero() {
        None
    } else {
        Some(ReturnDelay::start(&topo, added_rtt)?)
    };
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
        Enforcer::Dataplane(extra) => {
            let policy = Policy::from_toml_str(&policy(&topo, rate_mbit, extra), "tcp run")?;
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
    let (window, class) = match &dp {
        Some(dp) => (dp.policer_state(BULK_CLASS)?.window, class_totals(dp)?),
        None => (WindowState::default(), ClassCounters::default()),
    };
    drop(dp);
    if let Some(delay) = delay {
        let delayed = delay.counts().delayed.load(Ordering::Relaxed);
        delay.stop()?;
        if delayed == 0 {
            bail!("the delay line carried no packet");
        }
    }
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
    Ok(TcpRun {
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
        measured_rtt_us: window.rtt_us,
        window_bytes: window.window_bytes,
        class,
    })
}

/// The policed class's counters, added up over the interface slots.
fn class_totals(dp: &Dataplane) -> Result<ClassCounters> {
    let mut total = ClassCounters::default();
    for slot in 0..MAX_IFACES as u32 {
        total.add(&dp.class_counters(slot, BULK_CLASS)?);
    }
    Ok(total)
}
