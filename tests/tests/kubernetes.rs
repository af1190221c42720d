//! The Kubernetes manifests in deploy/kubernetes: valid against the Kubernetes API schemas
//! (offline, `kubernetes-validate` from the tools `cargo xtask setup` installs), consistent
//! with each other and with the binary; the kubelet's way of updating a ConfigMap volume
//! (an atomic swap of the `..data` symlink) replayed against the daemon's file watcher; and
//! the image they name (`cargo xtask image`; `cargo xtask test` builds it first): its name,
//! command and mount points are the DaemonSet's, and it runs as the DaemonSet's container
//! (crun, the pod's command line, capabilities and volumes) on a veth of the test's.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use dataplane_lab::{
    daemon::{binary, Daemon},
    exporter,
    netns::{netns_run, VethNs},
    scratch::{self, die_with_parent, Scratch},
};
use serde_json::{json, Value};

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
    let args = container_args(
        container,
        config["data"]["iface"].as_str().expect("iface"),
        "198.18.0.1",
    );
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

/// The container's arguments with the variables the pod spec sets: the ConfigMap's
/// interface and the node's address.
fn container_args(container: &Value, iface: &str, node_ip: &str) -> Vec<String> {
    let args: Vec<String> = strings(&container["args"])
        .iter()
        .map(|a| {
            a.replace("$(DATAPLANE_IFACE)", iface)
                .replace("$(NODE_IP)", node_ip)
        })
        .collect();
    assert!(args.iter().all(|a| !a.contains("$(")), "{args:?}");
    args
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
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

/// The image archive `cargo xtask image` builds, unpacked into a scratch tree: the OCI
/// layout and the root file system its layers make.
struct Image {
    archive: PathBuf,
    layout: PathBuf,
    rootfs: PathBuf,
    /// index.json, and Docker's manifest.json beside it.
    index: Value,
    docker: Value,
    /// The image's configuration (entrypoint, environment).
    config: Value,
    scratch: Scratch,
}

impl Image {
    fn open() -> Image {
        let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../target/image/dataplane-{}.tar",
            env!("CARGO_PKG_VERSION")
        ));
        assert!(
            archive.exists(),
            "{} is missing: build it with `cargo xtask image` (cargo xtask test does)",
            archive.display()
        );
        // Pins of those runs went onto the node's bpffs under their ids.
        let scratch = Scratch::create("dp-oci", &[Path::new("/sys/fs/bpf")]);
        let layout = scratch.dir.join("layout");
        let rootfs = scratch.dir.join("rootfs");
        for dir in [&layout, &rootfs] {
            std::fs::create_dir(dir).expect("directory");
        }
        tar(&["-xf"], &archive, &layout);
        let read = |path: PathBuf| -> Value {
            let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::from_slice(&text).expect("JSON")
        };
        let blob = |digest: &Value| -> PathBuf {
            let digest = digest.as_str().expect("digest");
            layout.join("blobs/sha256").join(
                digest
                    .strip_prefix("sha256:")
                    .unwrap_or_else(|| panic!("{digest}")),
            )
        };
        let index = read(layout.join("index.json"));
        let docker = read(layout.join("manifest.json"));
        let manifest = read(blob(&index["manifests"][0]["digest"]));
        let config = read(blob(&manifest["config"]["digest"]));
        for layer in manifest["layers"].as_array().expect("layers") {
            tar(&["-xzf"], &blob(&layer["digest"]), &rootfs);
        }
        Image {
            archive,
            layout,
            rootfs,
            index,
            docker,
            config,
            scratch,
        }
    }

    /// Where the container's `inside` (an absolute path) is in the unpacked image.
    fn path(&self, inside: &str) -> PathBuf {
        self.rootfs.join(inside.trim_start_matches('/'))
    }
}

fn tar(mode: &[&str], archive: &Path, into: &Path) {
    let out = Command::new("tar")
        .args(mode)
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_holds_what_the_daemonset_names() {
    let docs = documents(&manifest("dataplane.yaml"));
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let reference = container["image"].as_str().expect("image");
    let image = Image::open();

    // Its name: Docker's manifest (docker load, podman load), containerd's annotation (ctr
    // images import; the kubelet normalizes the name the same way), the layout's tag.
    assert_eq!(image.docker[0]["RepoTags"], json!([reference]));
    let (_, tag) = reference.rsplit_once(':').expect("a tagged reference");
    let annotations = &image.index["manifests"][0]["annotations"];
    assert_eq!(annotations["org.opencontainers.image.ref.name"], tag);
    assert_eq!(
        annotations["io.containerd.image.name"],
        format!("docker.io/library/{reference}")
    );
    // containers/image (skopeo; podman and CRI-O read images with it) finds it under that
    // name in either format and copies every blob, checking each against its digest.
    let archive = image.archive.display();
    for (from, to) in [
        (
            format!("docker-archive:{archive}:{reference}"),
            format!(
                "oci:{}:{tag}",
                image.scratch.dir.join("copy-docker").display()
            ),
        ),
        (
            format!("oci-archive:{archive}:{tag}"),
            format!("oci:{}:{tag}", image.scratch.dir.join("copy-oci").display()),
        ),
    ] {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", &from, &to])
            .output()
            .expect("skopeo (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "skopeo copy {from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(image.layout.join("oci-layout").is_file());

    // The command is the image's entrypoint and an executable of the image.
    let command = strings(&container["command"]);
    assert_eq!(strings(&image.config["config"]["Entrypoint"]), command);
    let binary = image.path(&command[0]);
    let mode = std::fs::metadata(&binary)
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()))
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{} is not executable", command[0]);
    // Every volume has its mount point in the image (the root file system is read-only).
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let at = mount["mountPath"].as_str().expect("mountPath");
        assert!(image.path(at).is_dir(), "no {at} in the image");
    }
    // The arguments parse with the image's own binary and libraries.
    let config = of_kind(&docs, "ConfigMap");
    let args = container_args(
        container,
        config["data"]["iface"].as_str().expect("iface"),
        "198.18.0.1",
    );
    let out = Command::new("chroot")
        .arg(&image.rootfs)
        .args(&command)
        .args(&args)
        .arg("--help")
        .output()
        .expect("chroot");
    assert!(
        out.status.success(),
        "{command:?} {args:?} in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container run by crun in the foreground, as the init of a PID namespace of its own:
/// when crun dies (killed on drop, or with the test), the kernel kills the container too.
/// Its mount namespace is private too, with the cgroup hierarchy hidden: crun refuses a host
/// with cgroup v1 and v2 side by side (these machines), and the test needs no resource
/// limits, so cgroups are off.
struct Container {
    id: String,
    /// `unshare`, whose child is crun.
    child: Child,
    log: PathBuf,
    /// The image's binary ([`scratch::file_id`]): what the container's process runs.
    binary: (u64, u64),
}

impl Container {
    /// Runs `spec` (an OCI runtime configuration) as container `id`.
    fn run(image: &Image, id: &str, spec: &Value) -> Container {
        let command = spec["process"]["args"][0].as_str().expect("command");
        let dir = &image.scratch.dir;
        let bundle = dir.join(format!("bundle-{id}"));
        std::fs::create_dir_all(&bundle).expect("bundle");
        std::fs::write(bundle.join("config.json"), spec.to_string()).expect("config.json");
        let log = dir.join(format!("{id}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let child = die_with_parent(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private"])
                .args(["--pid", "--fork", "--kill-child", "sh", "-c"])
                .arg(
                    "mount -t tmpfs -o size=64k none /sys/fs/cgroup && \
                     exec crun --root \"$0\" --cgroup-manager=disabled run --bundle \"$1\" \"$2\"",
                )
                .arg(dir.join("state"))
                .arg(&bundle)
                .arg(id)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        )
        .spawn()
        .expect("unshare and crun (cargo xtask setup installs crun)");
        Container {
            id: id.to_owned(),
            child,
            log,
            binary: scratch::file_id(&image.path(command)),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the container to end; its exit status.
    fn exits(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {} still runs after {within:?}:\n{}",
                self.id,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Signals the container's process (the runtime's part when the kubelet stops a pod).
    fn signal(&self, signal: libc::c_int) {
        let running = scratch::processes_running(self.binary);
        assert_eq!(
            running.len(),
            1,
            "one process in the container: {running:?}"
        );
        // SAFETY: kill(2) on the container's process, found by the program it runs.
        assert_eq!(unsafe { libc::kill(running[0] as i32, signal) }, 0);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of the node's bpffs standing in for its root (the DaemonSet mounts
/// /sys/fs/bpf): the test's pins stay apart from any other dataplane. Removed on drop.
struct NodeBpffs(PathBuf);

impl Drop for NodeBpffs {
    fn drop(&mut self) {
        scratch::remove_tree(&self.0);
    }
}

/// Capability numbers (linux/capability.h) of those the DaemonSet adds.
const CAPABILITIES: &[(&str, u32)] = &[
    ("NET_ADMIN", 12),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("PERFMON", 38),
    ("BPF", 39),
];

/// The OCI runtime configuration a kubelet would give the DaemonSet's container: its
/// command line (`args` substituted), user, capabilities, read-only root and volumes on
/// the host network (no network namespace); the mounts are [`volume_mounts`].
fn runtime_spec(image: &Image, container: &Value, args: &[String], env: &[String]) -> Value {
    let security = &container["securityContext"];
    // What this process can pass on: these machines run without CAP_SYS_RESOURCE (locked
    // memory, which kernels since 5.11 no longer charge BPF maps to).
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapBnd:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .expect("CapBnd");
    let capabilities: Vec<String> = strings(&security["capabilities"]["add"])
        .iter()
        .filter(|c| {
            let bit = CAPABILITIES
                .iter()
                .find(|(name, _)| name == c)
                .unwrap_or_else(|| panic!("capability {c} unknown to the test"))
                .1;
            let held = bounding & (1 << bit) != 0;
            if !held {
                eprintln!("CAP_{c}: not in this process's bounding set, not granted");
            }
            held
        })
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(
        security["capabilities"]["drop"],
        json!(["ALL"]),
        "only what it adds"
    );
    let mut image_env = strings(&image.config["config"]["Env"]);
    image_env.extend(env.iter().cloned());
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": security["runAsUser"], "gid": 0},
            "args": args,
            "env": image_env,
            "cwd": "/",
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            "noNewPrivileges": security["allowPrivilegeEscalation"] == false,
        },
        "root": {"path": image.rootfs, "readonly": security["readOnlyRootFilesystem"]},
        "hostname": "dataplane",
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

/// The pod's volumes as the test provides them: `/sys/fs/bpf` a directory of the node's
/// bpffs, tracefs mounted afresh (the node's own, without binding the host's /sys into a
/// tree of the test's), the run directory and the ConfigMap's files in the scratch tree.
fn volume_mounts(
    pod: &Value,
    container: &Value,
    config_map: &Value,
    bpffs: &Path,
    scratch: &Scratch,
) -> Vec<Value> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        // A non-privileged container's /sys is read-only.
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let name = &mount["name"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let at = mount["mountPath"].as_str().expect("mountPath");
        let access = if mount["readOnly"] == true {
            "ro"
        } else {
            "rw"
        };
        let bind = |source: &Path| {
            json!({"destination": at, "type": "bind", "source": source,
                   "options": ["rbind", access]})
        };
        let entry = if let Some(host) = volume["hostPath"]["path"].as_str() {
            match host {
                "/sys/fs/bpf" => bind(bpffs),
                "/sys/kernel/tracing" => json!({"destination": at, "type": "tracefs",
                                                "source": "tracefs", "options": [access]}),
                "/run/dataplane" => {
                    let dir = scratch.dir.join("run");
                    std::fs::create_dir_all(&dir).expect("run directory");
                    bind(&dir)
                }
                other => panic!("a hostPath this test does not provide: {other}"),
            }
        } else {
            let from = volume["configMap"]["name"].as_str().expect("configMap");
            assert_eq!(config_map["metadata"]["name"], from);
            let dir = scratch
                .dir
                .join(format!("volume-{}", name.as_str().expect("name")));
            std::fs::create_dir_all(&dir).expect("volume directory");
            for item in volume["configMap"]["items"].as_array().expect("items") {
                let key = item["key"].as_str().expect("key");
                let text = config_map["data"][key].as_str().expect("ConfigMap data");
                std::fs::write(dir.join(item["path"].as_str().expect("path")), text)
                    .expect("ConfigMap file");
            }
            bind(&dir)
        };
        mounts.push(entry);
    }
    mounts
}

/// GETs `url`; its status and body, or None while nothing answers.
fn http_get(url: &str) -> Option<(u16, String)> {
    let mut response = exporter::agent().get(url).call().ok()?;
    let body = response.body_mut().read_to_string().ok()?;
    Some((response.status().as_u16(), body))
}

/// The value of the series `series` (name and labels, exactly) in an exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn the_image_runs_as_the_daemonset_says() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let docs = documents(&manifest("dataplane.yaml"));
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "the metrics are on the node's address"
    );
    let container = &pod["containers"][0];
    let config_map = of_kind(&docs, "ConfigMap");
    let net = VethNs::create();
    let image = Image::open();
    let bpffs = NodeBpffs(Path::new("/sys/fs/bpf").join(&image.scratch.id));
    std::fs::create_dir(&bpffs.0).expect("a directory on the node's bpffs");

    // The pod's command line with the node's address and the test's interface.
    let node_ip = net.root_addr.to_string();
    let mut args = strings(&container["command"]);
    args.extend(container_args(container, &net.root_if, &node_ip));
    let env = vec![
        format!("DATAPLANE_IFACE={}", net.root_if),
        format!("NODE_IP={node_ip}"),
    ];
    let mut spec = runtime_spec(&image, container, &args, &env);
    spec["mounts"] = json!(volume_mounts(
        pod,
        container,
        config_map,
        &bpffs.0,
        &image.scratch
    ));
    let mut daemon = Container::run(&image, "daemon", &spec);

    let port = &container["ports"][0]["containerPort"];
    let url = |path: &str| format!("http://{node_ip}:{port}{path}");
    let attached = format!(
        "dataplane_xdp_attached{{iface=\"{}\",mode=\"native\"}}",
        net.root_if
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, metrics)) = http_get(&url("/metrics")) {
            if sample(&metrics, &attached) == Some(1.0) {
                break;
            }
        }
        if let Some(status) = daemon.child.try_wait().expect("wait") {
            panic!("the container exited ({status}):\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "not attached and serving within 30 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(net.xdp_attached());
    let probe = container["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .expect("probe path");
    assert_eq!(http_get(&url(probe)).map(|(s, _)| s), Some(200), "{probe}");

    // Traffic through the interface is classified and counted (ICMP: the default class).
    netns_run(
        &net.ns,
        "ping",
        &[
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "1",
            &net.root_addr.to_string(),
        ],
    )
    .expect("ping through the dataplane");
    let (_, metrics) = http_get(&url("/metrics")).expect("metrics");
    let counted = sample(
        &metrics,
        &format!(
            "dataplane_class_packets_total{{iface=\"{}\",class=\"default\"}}",
            net.root_if
        ),
    );
    assert!(counted >= Some(5.0), "counted {counted:?}");

    // The kubelet stops a pod with SIGTERM: the daemon exits, and the dataplane stays on,
    // pinned on the node's bpffs for the next pod.
    daemon.signal(libc::SIGTERM);
    let status = daemon.exits(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", daemon.log());
    assert!(net.xdp_attached(), "the dataplane outlives the pod");
    assert!(bpffs.0.join("dataplane").is_dir(), "pinned on the node");

    // `dataplane detach` from the image with the pod's volumes removes it all.
    let mut detach_args = strings(&container["command"]);
    detach_args.push("detach".into());
    let mut spec = runtime_spec(&image, container, &detach_args, &env);
    spec["mounts"] = json!(volume_mounts(
        pod,
        container,
        config_map,
        &bpffs.0,
        &image.scratch
    ));
    let mut detach = Container::run(&image, "detach", &spec);
    let status = detach.exits(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", detach.log());
    assert!(!net.xdp_attached(), "still attached");
    let left: Vec<_> = std::fs::read_dir(&bpffs.0)
        .expect("the node's bpffs directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "pins left: {left:?}");
    assert_eq!(
        scratch::processes_running(detach.binary),
        Vec::<u32>::new(),
        "processes of the image"
    );
}
