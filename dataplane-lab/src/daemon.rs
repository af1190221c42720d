//! The `dataplane` binary run as a daemon by a test, with its own pin root and run directory,
//! killed and its dataplane removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a daemon expected to fail at start may take to do so.
const FAIL_WITHIN: Duration = Duration::from_secs(60);

/// The `dataplane` binary next to the test executable (`cargo xtask test` builds it first);
/// `DATAPLANE_BIN` overrides.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAPLANE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("dataplane");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p dataplane-user --bins` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// Another release's `dataplane` binary, for the upgrade test: `target/upgrade/<release>/`
/// holds what `cargo xtask test` built (today's main at layout v7, and this tree's next
/// layout).
pub fn release_binary(release: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/upgrade")
        .join(release)
        .join("dataplane");
    assert!(
        bin.exists(),
        "{} is missing: `cargo xtask test` builds the upgrade test's releases first",
        bin.display()
    );
    bin
}

/// Paths and process of one test daemon.
pub struct Daemon {
    /// Pin root (on bpffs).
    pub pin_root: PathBuf,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Scratch directory for the config file and logs.
    pub dir: PathBuf,
    /// The `dataplane` binary its commands run ([`binary`] unless changed: the upgrade
    /// test runs several releases on one pin root).
    pub bin: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Fresh unique paths; nothing runs yet.
    pub fn create() -> Daemon {
        crate::kernel::require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("dp-test-{}-{n}", std::process::id());
        let d = Daemon {
            pin_root: PathBuf::from("/sys/fs/bpf").join(&id),
            run_dir: PathBuf::from("/run").join(&id),
            dir: std::env::temp_dir().join(&id),
            bin: binary(),
            child: None,
        };
        let _ = std::fs::remove_dir_all(&d.dir);
        std::fs::create_dir_all(&d.dir).expect("scratch dir");
        d
    }

    /// The config file path (written by [`Daemon::write_config`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }

    /// Writes the config file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A `dataplane` command aimed at this daemon's pins and run directory.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("DATAPLANE_PIN_ROOT", &self.pin_root)
            .env("DATAPLANE_RUN_DIR", &self.run_dir)
            .env("RUST_LOG", "info")
            .env_remove("DATAPLANE_CONFIG");
        c
    }

    /// Runs a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run dataplane")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "dataplane {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `dataplane run --config <file> <args>` (without `--config` when `args` has
    /// `--etcd`) and waits until its socket answers.
    pub fn start(&mut self, args: &[&str]) {
        self.start_under(&[], args);
    }

    /// [`Daemon::start`] with the daemon run by `wrapper` (a program and its arguments that
    /// end by executing the rest of their command line in the same process, as `unshare`
    /// does), given the daemon's environment.
    pub fn start_under(&mut self, wrapper: &[&str], args: &[&str]) {
        assert!(self.child.is_none(), "daemon already started");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        // A gateway of a fleet takes its policy from etcd, not from a file.
        let config = if args.contains(&"--etcd") {
            vec![]
        } else {
            vec!["--config".into(), self.config_path().into_os_string()]
        };
        let daemon = self.command();
        let mut command = match wrapper.split_first() {
            None => daemon,
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(daemon.get_program());
                for (key, value) in daemon.get_envs() {
                    match value {
                        Some(value) => c.env(key, value),
                        None => c.env_remove(key),
                    };
                }
                c
            }
        };
        let child = command
            .arg("run")
            .args(config)
            .args(if args.contains(&"--watch-interval") {
                &[][..]
            } else {
                &["--watch-interval", "200ms"][..]
            })
            // Tests run side by side: any free port unless the test picks one.
            .args(if args.contains(&"--metrics-addr") {
                &[][..]
            } else {
                &["--metrics-addr", "127.0.0.1:0"][..]
            })
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dataplane run");
        self.child = Some(child);
        let socket = self.run_dir.join("control.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dataplane::control::is_running(&socket) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the daemon exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon was not ready within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the daemon expecting it to fail; returns its exit code and log. One that runs
    /// instead is killed after [`FAIL_WITHIN`] and fails the test.
    pub fn start_fails(&self, args: &[&str]) -> (i32, String) {
        let mut child = self
            .command()
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dataplane");
        let deadline = Instant::now() + FAIL_WITHIN;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child
                    .wait_with_output()
                    .expect("the killed daemon's output");
                panic!(
                    "the daemon was expected to fail but ran for {FAIL_WITHIN:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("the daemon's output");
        assert!(!out.status.success(), "the daemon was expected to fail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the daemon with SIGKILL (no cleanup of any kind).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().expect("wait for daemon");
            assert!(
                status.success(),
                "daemon exit after SIGTERM: {status}\n{}",
                self.log()
            );
        }
    }

    /// Waits (bounded) for the daemon process to exit by itself; returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGHUP to the daemon.
    pub fn hangup(&self) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    /// `dataplane stats --json` parsed, for one sample over `interval`.
    pub fn stats(&self) -> serde_json::Value {
        let out = self.ok(&["stats", "--json", "--interval", "100ms"]);
        serde_json::from_str(&out).expect("stats --json is JSON")
    }

    /// A class counter from `stats --json`.
    pub fn class_counter(&self, iface: &str, class: &str, counter: &str) -> u64 {
        let stats = self.stats();
        stats["classes"]
            .as_array()
            .expect("classes array")
            .iter()
            .find(|r| r["iface"] == iface && r["class"] == class)
            .and_then(|r| r[counter].as_u64())
            .unwrap_or_else(|| panic!("no {counter} for {iface}/{class} in {stats}"))
    }

    /// An interface counter from `stats --json` (`route_lookups`, `redirect_failures`, ...).
    pub fn iface_counter(&self, iface: &str, counter: &str) -> u64 {
        let stats = self.stats();
        stats["interfaces"]
            .as_array()
            .expect("interfaces array")
            .iter()
            .find(|r| r["iface"] == iface)
            .and_then(|r| r[counter].as_u64())
            .unwrap_or_else(|| panic!("no {counter} for {iface} in {stats}"))
    }

    /// Where the daemon serves metrics (from its state file).
    pub fn status_state_metrics_addr(&self) -> std::net::SocketAddr {
        let text = std::fs::read_to_string(self.run_dir.join("state.json")).expect("state file");
        let state: serde_json::Value = serde_json::from_str(&text).expect("state is JSON");
        state["metrics_addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address in {text}"))
    }

    /// `dataplane status --json` parsed.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Remove the dataplane without the daemon: the same path an operator would take.
        let _ = self.command().arg("detach").output();
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
