//! A real Prometheus server for tests (Debian's `prometheus` package): started on a free
//! loopback port with its own config and a temporary data directory, scraping the given
//! targets every second as job `dataplane`, queried over its HTTP API; killed and its
//! directory removed on drop (also when the test fails).

use std::{
    collections::BTreeMap,
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

/// The Prometheus binary.
pub const PROMETHEUS: &str = "prometheus";
/// Scrape and rule evaluation interval of the test server.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How long the server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried when the free port we picked was taken before Prometheus bound it.
const START_ATTEMPTS: usize = 3;
const POLL: Duration = Duration::from_millis(100);
/// Per-request timeout of the API client.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One sample of an instant-vector query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Labels, `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A running Prometheus server.
pub struct Prometheus {
    child: Child,
    dir: TempDir,
    base: String,
    agent: ureq::Agent,
}

/// A free TCP port on loopback for a server a test starts (free when this returns; the
/// caller binds it soon after). Taken below the kernel's ephemeral range, from a counter of
/// this process: neither a client's outgoing connection nor another test of this process
/// can take it before the server binds it. (A port from binding port 0 is an ephemeral one
/// that a connection may take meanwhile: an etcd member then failed with "address already
/// in use".)
pub fn free_loopback_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(ephemeral_ports_start().saturating_sub(FIRST_SERVER_PORT)).max(1);
    // Processes of parallel test runs start apart.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = FIRST_SERVER_PORT + n as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port from {FIRST_SERVER_PORT} up to the ephemeral range");
}

/// The first port [`free_loopback_port`] hands out.
const FIRST_SERVER_PORT: u16 = 10_000;

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`; Linux's
/// default 32768 when it cannot be read).
fn ephemeral_ports_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        // Non-2xx answers are results to look at, not transport errors.
        .http_status_as_error(false)
        .build()
        .into()
}

impl Prometheus {
    /// Starts a server that scrapes `targets` (job `dataplane`) every [`SCRAPE_INTERVAL`]
    /// and evaluates `rule_files`, and waits until it is ready. Panics with the server's
    /// log if it does not come up.
    pub fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Prometheus::start_with(
            &format!(
                "  - job_name: dataplane\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
            rule_files,
        )
    }

    /// Starts a server that federates `leaf`: it takes the leaf's series matching
    /// `matchers` from its `/federate` endpoint, with their own labels (job, instance), and
    /// evaluates `rule_files` on them, as a global server over per-site ones does.
    pub fn federating(leaf: &Prometheus, matchers: &[&str], rule_files: &[&Path]) -> Prometheus {
        let leaf_addr = leaf.base.trim_start_matches("http://");
        let matchers: Vec<String> = matchers.iter().map(|m| format!("'{m}'")).collect();
        Prometheus::start_with(
            &format!(
                "  - job_name: federate\n    honor_labels: true\n    metrics_path: /federate\n    \
                 params:\n      'match[]': [{}]\n    static_configs:\n      - targets: ['{leaf_addr}']\n",
                matchers.join(", ")
            ),
            rule_files,
        )
    }

    /// Starts a server with `scrape_configs` (the YAML list's items) and `rule_files`.
    fn start_with(scrape_configs: &str, rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("dataplane-prometheus-")
            .tempdir()
            .expect("temporary directory for Prometheus");
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, config_yaml(scrape_configs, rule_files)).expect("write prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        let agent = agent();
        let mut log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_loopback_port();
            let log_file = fs::File::create(&log_path).expect("create prometheus.log");
            let mut child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start `{PROMETHEUS}` (run `cargo xtask setup`): {e}")
                });
            let base = format!("http://127.0.0.1:{port}");
            if wait_ready(&mut child, &agent, &base) {
                return Prometheus {
                    child,
                    dir,
                    base,
                    agent,
                };
            }
            stop(&mut child);
            log = fs::read_to_string(&log_path).unwrap_or_default();
            // Another process took the port between our probe and Prometheus's bind.
            if !log.contains("address already in use") {
                break;
            }
        }
        panic!("Prometheus did not become ready; its log:\n{log}");
    }

    /// The server's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; `Err` carries Prometheus's error (bad PromQL, ...).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let mut resp = self
            .agent
            .get(format!("{}/api/v1/query", self.base))
            .query("query", promql)
            .call()
            .map_err(|e| format!("GET /api/v1/query: {e}"))?;
        let body: Value = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("/api/v1/query answered no JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("query {promql:?} failed: {body}"));
        }
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or_else(|| format!("no result array in {body}"))?
                .iter()
                .map(|s| parse_sample(&s["metric"], &s["value"]))
                .collect(),
            Some("scalar") => Ok(vec![parse_sample(&Value::Null, &data["result"])?]),
            other => Err(format!("unexpected result type {other:?} in {body}")),
        }
    }

    /// Repeats `promql` until `done` accepts the result or `timeout` passes; returns the
    /// accepted result. Panics with the last result (or error) on timeout.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if let Ok(samples) = &result {
                if done(samples) {
                    return samples.clone();
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{promql:?} did not reach the expected value within {timeout:?}; last: \
                     {result:?}\nPrometheus log:\n{}",
                    self.log()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop(&mut self.child);
        // `dir` (TempDir) removes the config, the log and the TSDB after this.
    }
}

/// Polls `/-/ready`; false if the process exited or the time ran out.
fn wait_ready(child: &mut Child, agent: &ureq::Agent, base: &str) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        let ready = agent
            .get(format!("{base}/-/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return true;
        }
        thread::sleep(POLL);
    }
    false
}

fn stop(child: &mut Child) {
    // Already exited is fine; the wait reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

fn parse_sample(metric: &Value, value: &Value) -> Result<Sample, String> {
    let labels = match metric.as_object() {
        Some(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        None => BTreeMap::new(),
    };
    // The API's value is [timestamp, "string"].
    let text = value[1]
        .as_str()
        .ok_or_else(|| format!("sample value is not [time, \"value\"]: {value}"))?;
    let value = match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t.parse().map_err(|e| format!("sample value {t:?}: {e}"))?,
    };
    Ok(Sample { labels, value })
}

fn config_yaml(scrape_configs: &str, rule_files: &[&Path]) -> String {
    let secs = SCRAPE_INTERVAL.as_secs();
    let rules: Vec<String> = rule_files
        .iter()
        .map(|p| format!("  - '{}'\n", absolute(p).display()))
        .collect();
    format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  \
         evaluation_interval: {secs}s\nrule_files:\n{}scrape_configs:\n{scrape_configs}",
        if rules.is_empty() {
            "  []\n".to_owned()
        } else {
            rules.concat()
        },
    )
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
