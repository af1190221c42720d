//! The Kubernetes manifests in deploy/kubernetes: valid against the Kubernetes API schemas
//! (offline, `kubernetes-validate` from the tools `cargo xtask setup` installs), consistent
//! with each other and with the binary; and the kubelet's way of updating a ConfigMap volume
//! (an atomic swap of the `..data` symlink) replayed against the daemon's file watcher.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use dataplane_lab::{
    daemon::{binary, Daemon},
    netns::VethNs,
};
use serde_json::Value;

/// Where `cargo xtask setup` installs the Python tools.
const TOOLS: &str = "/opt/dataplane-tools/bin";

/// The daemon test runs the real daemon on a veth: not beside another.
static SERIAL: Mutex<()> = Mutex::new(());

fn manifest(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(file)
}

fn tool(name: &str) -> PathBuf {
    let path = Path::new(TOOLS).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` (as root)",
        path.display()
    );
    path
}

/// The documents of a YAML file, as JSON values (PyYAML, from the validator's environment).
fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

/// `kubernetes-validate --strict` on `path`: success and its output.
fn validate(path: &Path) -> (bool, String) {
    let out = Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .arg(path)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_manifests_pass_the_kubernetes_schemas() {
    let path = manifest("dataplane.yaml");
    let (ok, text) = validate(&path);
    assert!(ok, "{text}");
    for resource in [
        "namespace/dataplane",
        "configmap/dataplane-policy",
        "daemonset/dataplane",
        "service/dataplane-metrics",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{resource} not validated: {text}"
        );
    }
    // The validator does reject what breaks the schema: a string where a boolean belongs.
    let broken = std::env::temp_dir().join(format!("dp-k8s-{}.yaml", std::process::id()));
    let yaml = std::fs::read_to_string(&path).expect("manifest");
    assert!(yaml.contains("hostNetwork: true"));
    std::fs::write(
        &broken,
        yaml.replace("hostNetwork: true", "hostNetwork: \"yes\""),
    )
    .expect("write");
    let (ok, text) = validate(&broken);
    let _ = std::fs::remove_file(&broken);
    assert!(!ok, "a broken DaemonSet passed: {text}");
}

#[test]
fn the_daemonset_runs_unprivileged_and_its_scrapers_find_it() {
    let docs = documents(&manifest("dataplane.yaml"));
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let container = &spec["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"]),
        "the same capabilities as the systemd unit"
    );
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    // The pins outlive the pod; the tracepoints are named under the node's tracefs.
    assert_eq!(
        host_paths,
        ["/sys/fs/bpf", "/sys/kernel/tracing", "/run/dataplane"]
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_eq!(container["ports"][0]["name"], "metrics");

    // Both scrapers select the DaemonSet's pods, on its metrics port.
    let service = of_kind(&docs, "Service");
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(&labels[key], value, "Service selector {key}");
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let monitors = documents(&manifest("podmonitor.yaml"));
    let monitor = of_kind(&monitors, "PodMonitor");
    let selected = &monitor["spec"]["selector"]["matchLabels"];
    for (key, value) in selected.as_object().expect("matchLabels") {
        assert_eq!(&labels[key], value, "PodMonitor selector {key}");
    }
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");

    // The ConfigMap's policy is one the daemon accepts.
    let config = of_kind(&docs, "ConfigMap");
    let policy = config["data"]["dataplane.toml"].as_str().expect("policy");
    let file = std::env::temp_dir().join(format!("dp-k8s-policy-{}.toml", std::process::id()));
    std::fs::write(&file, policy).expect("write policy");
    let out = Command::new(binary())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .expect("dataplane config check");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "the ConfigMap's policy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The container's command line parses, with the variables the pod spec sets.
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            a.as_str()
                .expect("string")
                .replace(
                    "$(DATAPLANE_IFACE)",
                    config["data"]["iface"].as_str().expect("iface"),
                )
                .replace("$(NODE_IP)", "198.18.0.1")
        })
        .collect();
    assert!(args.iter().all(|a| !a.contains("$(")), "{args:?}");
    // --help after the arguments: clap rejects any unknown one before printing help.
    let out = Command::new(binary())
        .args(&args)
        .arg("--help")
        .output()
        .expect("dataplane");
    assert!(
        out.status.success(),
        "dataplane {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A policy with one class limited to `rate` on UDP 5001.
fn policy(rate: &str) -> String {
    format!(
        "[[class]]\nname = \"default\"\n[[class]]\nname = \"limited\"\nrate = \"{rate}\"\n\
         exceed = \"drop\"\n[[rule]]\nclass = \"limited\"\nprotocol = \"udp\"\ndst_port = 5001\n"
    )
}

/// A ConfigMap volume as the kubelet lays it out: the data in a timestamped directory, a
/// `..data` symlink to it, and the key's file a symlink through `..data`.
struct ConfigMapVolume {
    dir: PathBuf,
    key: String,
    version: u32,
}

impl ConfigMapVolume {
    /// Lays out the volume with `text` under `key`, in `dir`.
    fn new(dir: &Path, key: &str, text: &str) -> ConfigMapVolume {
        let mut volume = ConfigMapVolume {
            dir: dir.to_path_buf(),
            key: key.to_string(),
            version: 0,
        };
        volume.update(text);
        std::os::unix::fs::symlink(Path::new("..data").join(key), volume.dir.join(&volume.key))
            .expect("key symlink");
        volume
    }

    /// What the kubelet's atomic writer does on an update: writes the new data into a new
    /// timestamped directory, points `..data_tmp` at it, renames that over `..data` (the
    /// atomic step), then removes the old directory.
    fn update(&mut self, text: &str) {
        self.version += 1;
        let old = self
            .dir
            .join(format!("..2026_11_30_00_00_0{}", self.version - 1));
        let new = self
            .dir
            .join(format!("..2026_11_30_00_00_0{}", self.version));
        std::fs::create_dir(&new).expect("data dir");
        std::fs::write(new.join(&self.key), text).expect("data");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(new.file_name().expect("name"), &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        let _ = std::fs::remove_dir_all(old);
    }
}

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_configmap_update_is_applied_once_and_a_bad_one_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = VethNs::create();
    let mut d = Daemon::create();
    let key = d
        .config_path()
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let mut volume = ConfigMapVolume::new(&d.dir, &key, &policy("8Mbit"));
    d.start(&["--iface", &net.root_if]);
    let generation = |d: &Daemon| d.status()["generation"].as_u64().expect("generation");
    let rate = |d: &Daemon| d.ok(&["class", "list"]);
    let before = generation(&d);
    assert!(rate(&d).contains(" 8Mbit "), "{}", rate(&d));

    volume.update(&policy("16Mbit"));
    eventually(
        "the updated ConfigMap applied",
        Duration::from_secs(10),
        || generation(&d) > before,
    );
    // Several watch intervals (200 ms) later: applied once, not once per symlink step.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(generation(&d), before + 1, "applied once: {}", d.log());
    assert!(rate(&d).contains(" 16Mbit "), "{}", rate(&d));

    let errors = |d: &Daemon| d.status()["reloads_error"].as_u64().unwrap_or(0);
    let errors_before = errors(&d);
    volume.update(&policy("fast"));
    eventually("the bad ConfigMap refused", Duration::from_secs(10), || {
        errors(&d) > errors_before
    });
    std::thread::sleep(Duration::from_millis(1500));
    let status = d.status();
    assert_eq!(
        status["generation"].as_u64(),
        Some(before + 1),
        "the policy in force stays"
    );
    assert_eq!(errors(&d), errors_before + 1, "refused once: {}", d.log());
    assert!(
        status["last_error"].as_str().unwrap_or("").contains("rate"),
        "{status}"
    );
    assert!(rate(&d).contains(" 16Mbit "), "{}", rate(&d));
}
