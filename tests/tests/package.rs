//! The .deb (`cargo xtask package`; `cargo xtask test` builds it first) in a fresh Debian
//! root: it installs, `dataplane --version` runs there, the unit names the package's paths,
//! the installed daemon attaches to a veth of a namespace of the test's, and removing the
//! package leaves nothing attached, pinned, running or installed, whether the daemon was
//! stopped first (as `systemctl stop` does) or still runs.
//!
//! The root is Debian 12 from debootstrap (Debian's archive), cached as a tarball in
//! /var/cache/dataplane-tests and unpacked afresh for every run. Its mounts (proc, sysfs,
//! /dev, /run, and the bpffs the daemon mounts itself) live in a private mount namespace
//! held by one process of the test: they vanish with it, and the tree is deleted from this
//! namespace, where nothing is mounted under it.

use std::{
    io::{BufRead, BufReader},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use dataplane_lab::{
    netns::VethNs,
    scratch::{self, die_with_parent, Scratch},
};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const CACHE: &str = "/var/cache/dataplane-tests";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn deb() -> PathBuf {
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let path = repo(&format!(
        "target/package/dataplane_{VERSION}_{}.deb",
        arch.trim()
    ));
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo xtask package` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Debian's minimal root as a tarball, debootstrapped once (under a lock: test processes
/// may run side by side).
fn debian_tarball() -> PathBuf {
    let cache = Path::new(CACHE);
    std::fs::create_dir_all(cache).expect("cache directory");
    let tarball = cache.join(format!("debian-{SUITE}-minbase.tar"));
    let lock = std::fs::File::create(cache.join(".lock")).expect("lock file");
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if tarball.exists() {
        return tarball;
    }
    let partial = cache.join(format!("debian-{SUITE}.partial"));
    scratch::remove_tree(&partial);
    // debootstrap mounts proc and sysfs in the root it builds: in a namespace of its own.
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .args(["debootstrap", "--variant=minbase", SUITE])
        .arg(&partial)
        .arg(MIRROR));
    let archives = partial.join("var/cache/apt/archives");
    for entry in std::fs::read_dir(&archives).expect("apt archives") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(&path).expect("remove a downloaded package");
        }
    }
    let part = tarball.with_extension("tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&partial)
        .arg("-cf")
        .arg(&part)
        .arg("."));
    std::fs::rename(&part, &tarball).expect("cache the root");
    scratch::remove_tree(&partial);
    tarball
}

/// A fresh Debian root in a scratch tree, its mounts in a private mount namespace that
/// `holder` keeps alive (until its stdin closes, or the test dies).
struct Root {
    path: PathBuf,
    holder: Child,
    holder_stdin: Option<ChildStdin>,
    scratch: Scratch,
}

/// Mounts what a running system has (in the holder's namespace only), then waits.
const HOLDER: &str = r#"set -e
R="$1"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=0755 tmpfs "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
echo ready
exec cat >/dev/null
"#;

impl Root {
    fn create() -> Root {
        let tarball = debian_tarball();
        let scratch = Scratch::create("dp-deb", &[]);
        let path = scratch.dir.join("root");
        std::fs::create_dir(&path).expect("root directory");
        run(Command::new("tar")
            .arg("-C")
            .arg(&path)
            .arg("-xf")
            .arg(&tarball));
        let mut holder = die_with_parent(
            Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    HOLDER,
                    "sh",
                ])
                .arg(&path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
        .spawn()
        .expect("unshare");
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("holder's stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("holder's line");
        assert_eq!(
            line.trim(),
            "ready",
            "mounting the root failed: {:?}",
            holder.try_wait()
        );
        let holder_stdin = holder.stdin.take();
        Root {
            path,
            holder,
            holder_stdin,
            scratch,
        }
    }

    /// `args` run inside the root (chrooted, in the holder's mount namespace).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg("chroot")
            .arg(&self.path)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LANG", "C");
        die_with_parent(&mut c);
        c
    }

    /// Runs `args` in the root; they must succeed. Their stdout.
    fn ok(&self, args: &[&str]) -> String {
        run(&mut self.command(args))
    }

    /// Whether `path` exists in the root, as its own processes see it (mounts included).
    fn holds(&self, path: &str) -> bool {
        self.command(&["test", "-e", path])
            .status()
            .expect("test")
            .success()
    }

    /// A file of the root, read from outside (only for paths on the root's own tree).
    fn file(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Its namespace, with every mount and the bpffs the daemon pinned on, goes with it.
        drop(self.holder_stdin.take());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // `scratch`, the last field, then removes the tree.
    }
}

/// A daemon in the root, killed if the test ends first.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Waits for it to exit; its status, or a failure after `within`.
    fn exits(&mut self, within: Duration, log: &Path) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon still runs after {within:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `KEY=value` lines of an environment file, quotes removed.
fn environment(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The unit's `key=` command line with the environment file's values, as systemd runs it.
fn unit_command(unit: &str, key: &str, env: &[(String, String)]) -> Vec<String> {
    let mut line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the unit"))
        .to_string();
    for (k, v) in env {
        line = line
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    assert!(!line.contains('$'), "unset variable in {key}: {line}");
    line.split_whitespace().map(str::to_owned).collect()
}

/// Starts the daemon as the installed unit would, with the installed environment file.
fn start(root: &Root, net: &VethNs, log: &Path) -> Running {
    let unit = std::fs::read_to_string(root.file("/usr/lib/systemd/system/dataplane.service"))
        .expect("the installed unit");
    let env_file = unit
        .lines()
        .find_map(|l| l.strip_prefix("EnvironmentFile="))
        .expect("EnvironmentFile");
    let env = environment(&std::fs::read_to_string(root.file(env_file)).expect("env file"));
    let pre = unit_command(&unit, "ExecStartPre", &env);
    let args: Vec<&str> = pre.iter().map(String::as_str).collect();
    root.ok(&args);
    let exec = unit_command(&unit, "ExecStart", &env);
    let args: Vec<&str> = exec.iter().map(String::as_str).collect();
    let stderr = std::fs::File::create(log).expect("daemon log");
    let mut daemon = Running(
        root.command(&args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start the daemon"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !net.xdp_attached() {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            panic!(
                "the daemon exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not attached within 30 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

/// Everything the dataplane and the package leave is gone.
/// `binary` is the installed program's [`scratch::file_id`].
fn nothing_left(root: &Root, net: &VethNs, binary: (u64, u64), conffiles_kept: bool) {
    assert!(!net.xdp_attached(), "XDP is still attached");
    // The pins' absence means something only on a mounted bpffs.
    assert_eq!(
        root.ok(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"]).trim(),
        "bpf_fs"
    );
    for path in [
        "/sys/fs/bpf/dataplane",
        "/run/dataplane",
        "/usr/sbin/dataplane",
        "/usr/lib/systemd/system/dataplane.service",
        "/usr/share/dataplane",
        "/usr/share/man/man1/dataplane.1.gz",
    ] {
        assert!(!root.holds(path), "{path} is left");
    }
    for conffile in ["/etc/dataplane/policy.toml", "/etc/default/dataplane"] {
        assert_eq!(root.holds(conffile), conffiles_kept, "{conffile}");
    }
    assert_eq!(
        scratch::processes_running(binary),
        Vec::<u32>::new(),
        "running"
    );
}

#[test]
fn the_deb_installs_runs_and_removes_without_a_trace() {
    let deb = deb();
    let net = VethNs::create();
    let root = Root::create();
    std::fs::copy(&deb, root.file("/tmp/dataplane.deb")).expect("copy the .deb");
    root.ok(&["dpkg", "-i", "/tmp/dataplane.deb"]);

    let version = root.ok(&["dataplane", "--version"]);
    assert!(
        version.starts_with(&format!("dataplane {VERSION} ")),
        "{version}"
    );
    let listed = root.ok(&["dpkg", "-L", "dataplane"]);
    for path in [
        "/usr/sbin/dataplane",
        "/usr/lib/systemd/system/dataplane.service",
        "/etc/default/dataplane",
        "/etc/dataplane/policy.toml",
        "/usr/share/man/man1/dataplane.1.gz",
        "/usr/share/man/man1/dataplane-run.1.gz",
        "/usr/share/bash-completion/completions/dataplane",
        "/usr/share/zsh/vendor-completions/_dataplane",
        "/usr/share/fish/vendor_completions.d/dataplane.fish",
        "/usr/share/dataplane/grafana/dataplane.json",
        "/usr/share/dataplane/prometheus/alerts.yml",
        "/usr/share/dataplane/prometheus/fleet.yml",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} not installed");
    }
    let conffiles = root.ok(&["dpkg-query", "-W", "-f=${Conffiles}", "dataplane"]);
    for conffile in ["/etc/dataplane/policy.toml", "/etc/default/dataplane"] {
        assert!(conffiles.contains(conffile), "{conffile}: {conffiles}");
    }
    for (installed, source) in [
        ("/etc/dataplane/policy.toml", "config/default.toml"),
        (
            "/usr/lib/systemd/system/dataplane.service",
            "deploy/systemd/dataplane.service",
        ),
    ] {
        assert_eq!(
            std::fs::read(root.file(installed)).expect("installed"),
            std::fs::read(repo(source)).expect("source"),
            "{installed}"
        );
    }
    let page = root.ok(&["zcat", "/usr/share/man/man1/dataplane-run.1.gz"]);
    assert!(page.contains(".TH dataplane-run 1"), "{page}");

    // The unit's programs and files are where the package put them.
    let unit = std::fs::read_to_string(root.file("/usr/lib/systemd/system/dataplane.service"))
        .expect("unit");
    let env_file = unit
        .lines()
        .find_map(|l| l.strip_prefix("EnvironmentFile="))
        .expect("EnvironmentFile");
    let defaults = std::fs::read_to_string(root.file(env_file)).expect("env file");
    let env = environment(&defaults);
    for key in ["ExecStartPre", "ExecStart"] {
        let program = unit_command(&unit, key, &env).remove(0);
        let mode = std::fs::metadata(root.file(&program))
            .unwrap_or_else(|e| panic!("{key} {program}: {e}"))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{program} is not executable");
    }
    let config = &env
        .iter()
        .find(|(k, _)| k == "DATAPLANE_CONFIG")
        .expect("DATAPLANE_CONFIG")
        .1;
    assert!(root.file(config).is_file(), "{config}");

    // The operator's part: the interfaces (metrics off: ports are shared with other tests).
    let edited: String = defaults
        .lines()
        .map(|l| {
            if l.starts_with("DATAPLANE_IFACES=") {
                format!("DATAPLANE_IFACES=\"--iface {}\"", net.root_if)
            } else if l.starts_with("DATAPLANE_OPTS=") {
                "DATAPLANE_OPTS=\"--no-metrics\"".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    std::fs::write(root.file(env_file), edited).expect("edit the defaults");
    let log = root.scratch.dir.join("daemon.log");

    // Stopped as `systemctl stop` stops it (SIGTERM): the dataplane stays attached and
    // pinned; removing the package takes it off (prerm's `dataplane detach` on the pins).
    let mut daemon = start(&root, &net, &log);
    let binary = scratch::file_id(&root.file("/usr/sbin/dataplane"));
    assert_eq!(scratch::processes_running(binary), [daemon.0.id()]);
    let status = root.ok(&["dataplane", "status", "--json"]);
    assert!(status.contains(&net.root_if), "{status}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    daemon.exits(Duration::from_secs(10), &log);
    assert!(
        net.xdp_attached(),
        "a stopped daemon leaves the dataplane on"
    );
    assert!(root.holds("/sys/fs/bpf/dataplane"));
    root.ok(&["dpkg", "-r", "dataplane"]);
    nothing_left(&root, &net, binary, true);

    // Installed again (the edited defaults kept), and removed while the daemon runs: prerm's
    // detach goes through the daemon, which removes the dataplane and exits.
    root.ok(&["dpkg", "-i", "/tmp/dataplane.deb"]);
    let mut daemon = start(&root, &net, &log);
    let binary = scratch::file_id(&root.file("/usr/sbin/dataplane"));
    assert_eq!(scratch::processes_running(binary), [daemon.0.id()]);
    assert!(root.holds("/sys/fs/bpf/dataplane"));
    root.ok(&["dpkg", "--purge", "dataplane"]);
    let status = daemon.exits(Duration::from_secs(10), &log);
    assert!(
        status.success(),
        "the daemon: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    nothing_left(&root, &net, binary, false);
    let state = root
        .command(&["dpkg-query", "-W", "-f=${Status}", "dataplane"])
        .output()
        .expect("dpkg-query");
    assert!(
        !String::from_utf8_lossy(&state.stdout).contains("installed"),
        "still known to dpkg: {}",
        String::from_utf8_lossy(&state.stdout)
    );
}
