//! The Prometheus exporter over a real loaded dataplane: frames of known classes through
//! BPF_PROG_TEST_RUN, then the exposition checked by `promtool`, served over HTTP, and
//! scraped by a real Prometheus server whose API must report exactly what was sent (and
//! whose evaluation of `deploy/prometheus/alerts.yml` must raise the expected alerts). The
//! operator artefacts (alert rules, their unit test, the Grafana dashboard) are checked
//! against the real exposition too.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use dataplane::{
    config::Policy,
    dataplane::Dataplane,
    metrics::{
        encode, http::SnapshotSource, snapshot, ConfigView, CounterReader, Format, Iface,
        MetricsSnapshot, Reloads, BUILD_VERSION,
    },
};
use dataplane_common::reason::Reason;
use dataplane_lab::{
    exporter::{agent, get, Exporter},
    frames::{Frame, V4_DST, V4_SRC},
    kernel::{load_policy, run_once},
    prometheus::{Prometheus, Sample},
};

/// Every class takes a different action on yellow, and none has a committed rate, so every
/// packet is yellow and meets its class's `exceed` action exactly once.
const POLICY: &str = r#"
flow_cache = "on"

[[interface]]
name = "lo"

[[class]]
name = "default"

[[class]]
name = "rdma"
priority = 6
ceil = "50Gbit"
exceed = "ecn"

[[class]]
name = "bulk"
priority = 1
exceed = "drop"

[[class]]
name = "web"
priority = 4
exceed = "remark"
remark_dscp = 10

[[rule]]
class = "rdma"
protocol = "udp"
dst_port = 4791

[[rule]]
class = "bulk"
protocol = "tcp"
dst_port = 5001

[[rule]]
class = "web"
protocol = "tcp"
dst_port = 443
"#;

/// BPF_PROG_TEST_RUN frames arrive on loopback, the policy's first interface: slot 1.
const LO_SLOT: u32 = 1;
/// ECN field of an ECN-capable (ECT(0)) packet.
const ECT0: u8 = 0b10;
/// How long Prometheus gets to show a value (a scrape and a rule evaluation every second).
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

/// What one class was sent and what its action must have done.
struct ClassTraffic {
    class: &'static str,
    frame: Vec<u8>,
    packets: u64,
    dropped: u64,
    ecn_marked: u64,
    remarked: u64,
}

impl ClassTraffic {
    fn bytes(&self) -> u64 {
        self.packets * self.frame.len() as u64
    }
}

/// Malformed and non-IP frames sent, by reason.
const TRUNCATED_IPV4_FRAMES: u64 = 2;
const NOT_IP_FRAMES: u64 = 1;

fn class_traffic() -> Vec<ClassTraffic> {
    let v4 = || Frame::eth().ipv4(V4_SRC, V4_DST);
    vec![
        ClassTraffic {
            class: "rdma",
            frame: v4().tos(ECT0).udp(49_152, 4791).roce_bth(0x0a).build(),
            packets: 5,
            dropped: 0,
            ecn_marked: 5,
            remarked: 0,
        },
        ClassTraffic {
            class: "bulk",
            frame: v4().tcp(40_000, 5001).payload(100).build(),
            packets: 7,
            dropped: 7,
            ecn_marked: 0,
            remarked: 0,
        },
        ClassTraffic {
            class: "web",
            frame: v4().tcp(40_001, 443).payload(200).build(),
            packets: 11,
            dropped: 0,
            ecn_marked: 0,
            remarked: 11,
        },
        ClassTraffic {
            class: "default",
            frame: v4().udp(40_002, 9).build(),
            packets: 3,
            dropped: 0,
            ecn_marked: 0,
            remarked: 0,
        },
    ]
}

/// A dataplane with `POLICY`, loopback registered, and `class_traffic()` plus the malformed
/// and non-IP frames sent through it.
fn loaded_with_traffic() -> (Dataplane, Policy, Vec<ClassTraffic>) {
    let (mut dp, policy) = load_policy(POLICY);
    let missing = dp
        .register_interfaces(&policy, &[])
        .expect("register loopback");
    assert!(missing.is_empty(), "lo exists: {missing:?}");
    let traffic = class_traffic();
    for t in &traffic {
        send(&dp, &t.frame, t.packets);
    }
    // Eight bytes of a 20-byte IPv4 header.
    let udp = Frame::eth().ipv4(V4_SRC, V4_DST).udp(1, 2);
    let truncated = udp.clone().truncate(udp.l3_offset() + 8).build();
    send(&dp, &truncated, TRUNCATED_IPV4_FRAMES);
    send(&dp, &Frame::arp().build(), NOT_IP_FRAMES);
    (dp, policy, traffic)
}

fn send(dp: &Dataplane, frame: &[u8], count: u64) {
    let prog = dp.program().expect("program");
    for _ in 0..count {
        run_once(prog, frame);
    }
}

/// Snapshots of the real counters as the daemon would take them: loopback (slot 1, not
/// attached: frames come through BPF_PROG_TEST_RUN), generation 1, one successful load.
fn source(dp: &Dataplane, policy: &Policy) -> SnapshotSource {
    let reader = CounterReader::new(dp).expect("counter maps open");
    let ifaces = vec![Iface {
        name: "lo".into(),
        slot: LO_SLOT,
        attached: None,
    }];
    let reloads = Reloads { ok: 1, error: 0 };
    let view = ConfigView::in_file_order(policy, ifaces, 1, reloads);
    Arc::new(move || Ok(snapshot(&reader, &view)?))
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs `promtool args...` with `stdin`; panics with its output unless it succeeds.
fn promtool(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; `cargo xtask setup`)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Sample names in a text exposition (`name{labels} value` or `name value`).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `dataplane_*` metric name in `text` (queries of the dashboard or the rules); the
/// series of recording rules (`level:dataplane_...:operation`, deploy/prometheus/fleet.yml)
/// are not exported names and are left out.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dataplane_") {
        let recorded = rest[..at].ends_with(':');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if !recorded {
            names.insert(name);
        }
    }
    names
}

/// Every PromQL expression of the dashboard, its template variables set to "all".
fn dashboard_queries() -> Vec<String> {
    let path = deploy("grafana/dataplane.json");
    let text = std::fs::read_to_string(&path).expect("dashboard readable");
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            exprs.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                    .replace("$instance", ".*")
                    .replace("$iface", ".*")
                    .replace("$class", ".*"),
            );
        }
    }
    assert!(!exprs.is_empty(), "the dashboard has queries");
    exprs
}

fn line_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The snapshot of the real counters holds exactly what was sent; its text exposition
/// passes `promtool check metrics` without a lint warning and names every metric the
/// dashboard and the alert rules query.
#[test]
fn exposition_of_real_counters_is_exact_and_passes_promtool() {
    let (dp, policy, traffic) = loaded_with_traffic();
    let source = source(&dp, &policy);
    let snap: MetricsSnapshot = source().expect("snapshot");

    let lo = &snap.ifaces[0];
    for t in &traffic {
        let id = policy.class_id(t.class).expect("class") as usize;
        let c = &lo.classes[id].counters;
        assert_eq!(
            (
                c.packets,
                c.bytes,
                c.dropped_packets,
                c.ecn_marked_packets,
                c.remarked_packets
            ),
            (t.packets, t.bytes(), t.dropped, t.ecn_marked, t.remarked),
            "class {}: (packets, bytes, dropped, ECN-marked, re-marked)",
            t.class
        );
    }
    assert_eq!(
        lo.counters.reasons[Reason::TruncatedIpv4 as usize],
        TRUNCATED_IPV4_FRAMES
    );
    assert_eq!(lo.counters.reasons[Reason::NotIp as usize], NOT_IP_FRAMES);

    let text = encode(snap, Format::PrometheusText).expect("encodes");
    let lint = promtool(&["check", "metrics"], &text);
    assert!(lint.trim().is_empty(), "promtool lint findings:\n{lint}");

    for t in &traffic {
        let labels = format!(r#"{{iface="lo",class="{}"}}"#, t.class);
        for (metric, expected) in [
            ("dataplane_class_packets_total", t.packets),
            ("dataplane_class_bytes_total", t.bytes()),
            ("dataplane_class_dropped_packets_total", t.dropped),
            (
                "dataplane_class_dropped_bytes_total",
                t.dropped * t.frame.len() as u64,
            ),
            ("dataplane_class_ecn_marked_packets_total", t.ecn_marked),
            ("dataplane_class_remarked_packets_total", t.remarked),
            ("dataplane_class_forwarded_packets_total", 0),
        ] {
            let series = format!("{metric}{labels}");
            assert_eq!(
                line_value(&text, &series),
                Some(expected as f64),
                "{series} in\n{text}"
            );
        }
    }
    let classified: u64 = traffic.iter().map(|t| t.packets).sum();
    let flows = traffic.len() as u64;
    for (series, expected) in [
        (
            r#"dataplane_parse_errors_total{iface="lo",reason="truncated_ipv4"}"#,
            TRUNCATED_IPV4_FRAMES,
        ),
        (
            r#"dataplane_reason_packets_total{iface="lo",reason="not_ip"}"#,
            NOT_IP_FRAMES,
        ),
        // One flow per class: its first packet misses the cache, the rest hit.
        (
            r#"dataplane_flow_cache_lookups_total{iface="lo",result="miss"}"#,
            flows,
        ),
        (
            r#"dataplane_flow_cache_lookups_total{iface="lo",result="hit"}"#,
            classified - flows,
        ),
        (r#"dataplane_class_priority{class="rdma"}"#, 6),
        (
            r#"dataplane_class_ceil_bytes_per_second{class="rdma"}"#,
            50_000_000_000 / 8,
        ),
        (r#"dataplane_class_rate_bytes_per_second{class="web"}"#, 0),
        (r#"dataplane_xdp_attached{iface="lo",mode="none"}"#, 0),
        ("dataplane_config_generation", 1),
        (r#"dataplane_config_reloads_total{result="ok"}"#, 1),
    ] {
        assert_eq!(
            line_value(&text, series),
            Some(expected as f64),
            "{series} in\n{text}"
        );
    }
    assert!(
        !text.contains(r#"dataplane_parse_errors_total{iface="lo",reason="not_ip"}"#),
        "non-IP traffic is not a parse error"
    );
    assert!(
        line_value(
            &text,
            r#"dataplane_class_ceil_bytes_per_second{class="bulk"}"#
        )
        .is_none(),
        "a class without a ceiling has no ceiling series"
    );

    let exported = sample_names(&text);
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts.yml");
    let queried = metric_names_in(&dashboard_queries().join("\n"))
        .into_iter()
        .chain(metric_names_in(&rules));
    for name in queried {
        assert!(
            exported.contains(&name),
            "{name} is queried by the dashboard or the alerts but not exported; exported: {exported:?}"
        );
    }
}

/// `/metrics` in both formats, `/healthz`, 404 elsewhere, 405 for other methods, 500 with
/// the reason when the snapshot cannot be taken.
#[test]
fn http_server_serves_metrics_and_health() {
    let (dp, policy, traffic) = loaded_with_traffic();
    let exporter = Exporter::start(source(&dp, &policy));
    let agent = agent();
    let rdma = r#"dataplane_class_packets_total{iface="lo",class="rdma"}"#;

    let text = get(&agent, &exporter.url("/metrics"), None);
    assert_eq!(text.status, 200);
    assert_eq!(
        text.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        line_value(&text.body, rdma),
        Some(traffic[0].packets as f64)
    );
    let build = format!(r#"dataplane_build_info{{version="{BUILD_VERSION}"}} 1"#);
    assert!(text.body.lines().any(|l| l == build), "{}", text.body);

    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let om = get(&agent, &exporter.url("/metrics"), Some(accept));
    assert_eq!(om.status, 200);
    assert!(
        om.content_type
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        om.content_type
    );
    assert!(om.body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert_eq!(line_value(&om.body, rdma), Some(traffic[0].packets as f64));

    assert_eq!(get(&agent, &exporter.url("/healthz"), None).status, 200);
    assert_eq!(get(&agent, &exporter.url("/"), None).status, 404);
    assert_eq!(get(&agent, &exporter.url("/metrics/x"), None).status, 404);
    let post = agent
        .post(exporter.url("/metrics"))
        .send("")
        .expect("POST answered");
    assert_eq!(post.status().as_u16(), 405);

    let failing: SnapshotSource = Arc::new(|| Err("counter map unreadable".into()));
    let broken = Exporter::start(failing);
    let failed = get(&agent, &broken.url("/metrics"), None);
    assert_eq!(failed.status, 500);
    assert!(
        failed.body.contains("counter map unreadable"),
        "{}",
        failed.body
    );
    assert_eq!(get(&agent, &broken.url("/healthz"), None).status, 200);
}

fn single_value(samples: &[Sample]) -> Option<f64> {
    match samples {
        [s] => Some(s.value),
        _ => None,
    }
}

fn wait_value(prometheus: &Prometheus, promql: &str, expected: f64) {
    prometheus.wait_for(promql, PROMETHEUS_WAIT, |s| {
        single_value(s) == Some(expected)
    });
}

/// A real Prometheus scrapes the exporter every second: its query API reports exactly the
/// counts sent per class, the configured gauges, and after more drops the alert rules put
/// `DataplaneClassDropping` (and, loopback not being attached, `DataplaneDetached`) pending.
/// Every dashboard query is valid PromQL on that server.
#[test]
fn prometheus_scrapes_what_was_sent() {
    let (dp, policy, traffic) = loaded_with_traffic();
    let exporter = Exporter::start(source(&dp, &policy));
    let prometheus = Prometheus::start(&[exporter.addr], &[&deploy("prometheus/alerts.yml")]);

    wait_value(&prometheus, r#"up{job="dataplane"}"#, 1.0);
    for t in &traffic {
        let sel = format!(r#"{{job="dataplane",iface="lo",class="{}"}}"#, t.class);
        for (metric, expected) in [
            ("dataplane_class_packets_total", t.packets),
            ("dataplane_class_bytes_total", t.bytes()),
            ("dataplane_class_dropped_packets_total", t.dropped),
            ("dataplane_class_ecn_marked_packets_total", t.ecn_marked),
            ("dataplane_class_remarked_packets_total", t.remarked),
        ] {
            wait_value(&prometheus, &format!("{metric}{sel}"), expected as f64);
        }
    }
    for (promql, expected) in [
        (
            r#"dataplane_parse_errors_total{iface="lo",reason="truncated_ipv4"}"#,
            TRUNCATED_IPV4_FRAMES as f64,
        ),
        (
            r#"sum(dataplane_parse_errors_total{iface="lo"})"#,
            TRUNCATED_IPV4_FRAMES as f64,
        ),
        (
            r#"dataplane_reason_packets_total{iface="lo",reason="not_ip"}"#,
            NOT_IP_FRAMES as f64,
        ),
        (
            r#"sum(dataplane_flow_cache_lookups_total{iface="lo"})"#,
            traffic.iter().map(|t| t.packets).sum::<u64>() as f64,
        ),
        (r#"dataplane_class_priority{class="bulk"}"#, 1.0),
        (
            r#"dataplane_class_ceil_bytes_per_second{class="rdma"}"#,
            6.25e9,
        ),
        (r#"dataplane_xdp_attached{iface="lo",mode="none"}"#, 0.0),
        ("dataplane_config_generation", 1.0),
        (r#"dataplane_config_reloads_total{result="error"}"#, 0.0),
        (
            &format!(r#"dataplane_build_info{{version="{BUILD_VERSION}"}}"#),
            1.0,
        ),
    ] {
        wait_value(&prometheus, promql, expected);
    }

    // More drops after Prometheus has the first value: the drop rate turns positive.
    let bulk = &traffic[1];
    assert_eq!(bulk.class, "bulk");
    send(&dp, &bulk.frame, bulk.packets);
    wait_value(
        &prometheus,
        r#"dataplane_class_dropped_packets_total{class="bulk"}"#,
        (2 * bulk.dropped) as f64,
    );
    let dropping = prometheus.wait_for(
        r#"ALERTS{alertname="DataplaneClassDropping"}"#,
        PROMETHEUS_WAIT,
        |s| !s.is_empty(),
    );
    let classes: Vec<&str> = dropping
        .iter()
        .map(|s| s.labels["class"].as_str())
        .collect();
    assert_eq!(classes, ["bulk"], "only bulk drops: {dropping:?}");
    assert_eq!(dropping[0].labels["alertstate"], "pending", "for: 5m");
    prometheus.wait_for(
        r#"ALERTS{alertname="DataplaneDetached",iface="lo"}"#,
        PROMETHEUS_WAIT,
        |s| s.len() == 1,
    );

    for query in dashboard_queries() {
        if let Err(e) = prometheus.query(&query) {
            panic!("dashboard query {query:?} is not valid PromQL here: {e}");
        }
    }
    // The headroom panel divides a class's throughput by its ceiling: one series per class
    // with a ceiling (rdma).
    let headroom = dashboard_queries()
        .into_iter()
        .find(|q| q.contains("/ on (instance, class) dataplane_class_ceil_bytes_per_second"))
        .expect("the dashboard has a throughput / ceiling panel");
    prometheus.wait_for(&headroom, PROMETHEUS_WAIT, |s| {
        s.len() == 1 && s[0].labels["class"] == "rdma"
    });
}

/// `promtool check rules` accepts the alert rules, and their unit test passes.
#[test]
fn alert_rules_pass_promtool() {
    let rules = deploy("prometheus/alerts.yml");
    let out = promtool(&["check", "rules", rules.to_str().expect("utf-8 path")], "");
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let unit = deploy("prometheus/alerts_test.yml");
    let out = promtool(&["test", "rules", unit.to_str().expect("utf-8 path")], "");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The phantom-backlog gauge reads the enforcing bucket's lead over the kernel's clock: 100
/// conforming 1000-byte frames at 1 MB/s put 100 ms ahead of now, and the gauge shows that
/// less the time since; a class without rates shows 0.
#[test]
fn phantom_backlog_gauge_reads_the_bucket() {
    let (mut dp, policy) = load_policy(
        "[[class]]\nname = \"default\"\n[[class]]\nname = \"paced\"\nrate = \"8Mbit\"\n\
         burst = \"1MiB\"\nexceed = \"drop\"\n[[rule]]\nclass = \"paced\"\nprotocol = \"udp\"\n\
         dst_port = 7000\n",
    );
    dp.register_interfaces(&policy, &[])
        .expect("register loopback");
    let frame = Frame::eth()
        .ipv4(V4_SRC, V4_DST)
        .udp(40_000, 7000)
        .pad_to(1000)
        .build();
    let sent = std::time::Instant::now();
    send(&dp, &frame, 100);
    let snap = source(&dp, &policy)().expect("snapshot");
    let elapsed = sent.elapsed().as_secs_f64();
    let index = |name: &str| {
        snap.classes
            .iter()
            .position(|c| c.name == name)
            .expect("class")
    };
    let at = |name: &str| snap.phantom_backlog_seconds[index(name)];
    let paced = at("paced");
    assert!(
        paced <= 0.1 + 1e-3 && paced >= 0.1 - elapsed - 1e-3,
        "backlog {paced} s, {elapsed} s after sending 100 ms worth"
    );
    assert_eq!(at("default"), 0.0);
    // 100 ms over a 1 ms target: the TCP window control has narrowed to two segments.
    let window = |name: &str| snap.tcp_window_bytes[index(name)];
    assert_eq!(
        (window("paced"), window("default")),
        (u64::from(dataplane_common::window::MIN_WINDOW_BYTES), 0)
    );
    let text = encode(snap, Format::PrometheusText).expect("encodes");
    assert!(
        text.contains("dataplane_class_phantom_backlog_seconds{class=\"paced\"} 0.0"),
        "{text}"
    );
}
