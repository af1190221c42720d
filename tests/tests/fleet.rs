//! The Prometheus view of a fleet of gateways: the recording rules of
//! deploy/prometheus/fleet.yml pass `promtool` and their unit test, and, end to end, two real
//! daemons (two gateways, each on a veth of its own) scraped by a site Prometheus that a
//! global Prometheus federates: the global server's fleet aggregates match what was sent
//! through both gateways.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use dataplane_lab::{daemon::Daemon, netns::VethNs, prometheus::Prometheus, traffic};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus")
        .join(file)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask setup`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
    text
}

#[test]
fn fleet_rules_pass_promtool_and_their_unit_test() {
    let rules = deploy("fleet.yml");
    let out = promtool(&["check", "rules", rules.to_str().expect("utf-8 path")]);
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
    let unit = deploy("fleet_test.yml");
    let out = promtool(&["test", "rules", unit.to_str().expect("utf-8 path")]);
    assert!(out.contains("SUCCESS"), "{out}");
}

const STEADY_PORT: u16 = 5002;

/// One class without rates on UDP 5002 and one limited to 8 Mbit/s (1 000 000 B/s).
const POLICY: &str = "[[class]]\nname = \"default\"\n[[class]]\nname = \"steady\"\n\
    [[class]]\nname = \"limited\"\nrate = \"8Mbit\"\nexceed = \"drop\"\n\
    [[rule]]\nclass = \"steady\"\nprotocol = \"udp\"\ndst_port = 5002\n\
    [[rule]]\nclass = \"limited\"\nprotocol = \"udp\"\ndst_port = 5001\n";

/// A gateway: a daemon on a veth of its own.
struct Gateway {
    net: VethNs,
    daemon: Daemon,
}

impl Gateway {
    fn start() -> Gateway {
        let net = VethNs::create();
        let mut daemon = Daemon::create();
        daemon.write_config(POLICY);
        daemon.start(&["--iface", &net.root_if]);
        Gateway { net, daemon }
    }

    /// Sends `count` datagrams of the steady class through the gateway; all arrive.
    fn send_steady(&self, count: u64) {
        let dst = SocketAddr::V4(SocketAddrV4::new(self.net.root_addr, STEADY_PORT));
        let sink = traffic::Sink::bind(dst);
        let sent = self
            .net
            .run(move || traffic::send_paced(dst, 100, 2000, Duration::from_secs(5), count));
        assert_eq!(sent, count);
        assert_eq!(sink.settle(), count);
    }
}

#[test]
fn a_global_prometheus_sees_the_fleet_through_federation() {
    let gateways = [Gateway::start(), Gateway::start()];
    let counts = [700, 1300];
    for (gateway, count) in gateways.iter().zip(counts) {
        gateway.send_steady(count);
    }
    let targets: Vec<SocketAddr> = gateways
        .iter()
        .map(|g| g.daemon.status_state_metrics_addr())
        .collect();
    let site = Prometheus::start(&targets, &[]);
    let fleet = deploy("fleet.yml");
    let global = Prometheus::federating(&site, &["{job=\"dataplane\"}"], &[fleet.as_path()]);
    // The rules run every 15 s: allow a few rounds.
    let within = Duration::from_secs(60);
    let total: u64 = counts.iter().sum();
    global.wait_for(
        "class:dataplane_class_packets:sum{class=\"steady\"}",
        within,
        |s| s.len() == 1 && s[0].value == total as f64,
    );
    global.wait_for(
        "class:dataplane_gateways:count{class=\"limited\"}",
        within,
        |s| s.len() == 1 && s[0].value == 2.0,
    );
    global.wait_for(
        "class:dataplane_class_rate_bytes_per_second:sum{class=\"limited\"}",
        within,
        |s| s.len() == 1 && s[0].value == 2_000_000.0,
    );
    // Per gateway, under its own instance label (kept through federation).
    global.wait_for(
        "instance_class:dataplane_class_bytes:rate1m{class=\"steady\"}",
        within,
        |s| {
            let mut instances: Vec<&str> = s
                .iter()
                .filter_map(|x| x.labels.get("instance").map(String::as_str))
                .collect();
            instances.sort_unstable();
            instances.dedup();
            s.len() == 2 && instances.len() == 2
        },
    );
}
