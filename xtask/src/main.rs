//! Project tasks: `setup` installs what a fresh Debian machine needs, `test` runs every test
//! (host and kernel) the way CI does, `bench` runs the benchmarks and writes BENCHMARKS.md,
//! `package` and `image` build the .deb and the OCI image.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod image;
mod package;
mod releases;
mod vm;

/// Debian packages: the eBPF toolchain (rustc with a prebuilt BPF `core`, LLVM 22 for
/// bpf-linker) and the tools the kernel tests and benchmarks drive.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "bpftool",
    "nftables",
    "ethtool",
    // libbpf-rs builds its vendored libbpf: it needs libelf and zlib headers, make, pkg-config.
    "libelf-dev",
    "pkg-config",
    "make",
    // promtool and a real server for the exporter tests (tests pick free ports; they never
    // touch the packaged service's 9090).
    "prometheus",
    // systemd-analyze checks the shipped unit.
    "systemd",
    "iperf3",
    // ping through a loaded class (bench part 5); setpriv (util-linux) runs a CLI test as nobody.
    "iputils-ping",
    "util-linux",
    // The Kubernetes manifests' offline schema check runs in a virtual environment of its own.
    "python3-venv",
    // A fleet's policy and gateway reports live in etcd (the tests run a 3-member cluster on
    // loopback); the etcd client crate compiles etcd's protobuf definitions with protoc.
    "etcd-server",
    "protobuf-compiler",
    "libprotobuf-dev",
    // `cargo xtask vm`: Debian's kernels in QEMU, a busybox initramfs (cpio), their modules
    // (kmod's depmod and modprobe; xz unpacks them), apt's archive keys.
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "cpio",
    "xz-utils",
    "debian-archive-keyring",
    // `cargo xtask package`: dpkg-shlibdeps for the .deb's Depends, strip.
    "dpkg-dev",
    "binutils",
    // The package and image tests: a fresh Debian root to install the .deb into, a runtime
    // for the image, and skopeo to read the image as container tools do.
    "debootstrap",
    "crun",
    "skopeo",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, which drives the fuzz targets in `fuzz/` (libFuzzer, coverage-guided).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Python tools the tests use, installed from PyPI into [`PYTHON_TOOLS`] (never into the
/// system's Python): the Kubernetes schema validator of the manifests in deploy/kubernetes.
const PYTHON_PACKAGES: &[&str] = &["kubernetes-validate==1.37.0"];
/// The virtual environment of [`PYTHON_PACKAGES`] (the tests find its tools there).
const PYTHON_TOOLS: &str = "/opt/dataplane-tools";
/// Fuzz targets and what the test command's short run of each does (libFuzzer flags).
const FUZZ_TARGETS: [(&str, &[&str]); 2] = [
    ("packet_parse", &["-runs=500000", "-max_len=512"]),
    ("policy_parse", &["-runs=100000", "-max_len=4096"]),
];

#[derive(Parser)]
#[command(about = "dataplane project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages and bpf-linker the build and tests need (idempotent, root).
    Setup,
    /// The main job on the embedded default: `dataplane demo` (release build, root).
    Demo {
        /// Arguments for `dataplane demo` (e.g. --duration 60s).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format and lint checks, every host and kernel test, then the kernel suites on Debian
    /// 12's 6.1 and the newest Debian kernel in QEMU (root).
    Test {
        /// Skip the kernels in QEMU (this machine's kernel only).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Benchmarks: writes BENCHMARKS.md and bench/plots/ at the workspace root (root).
    Bench {
        /// Fewer repeats and shorter windows: about 1.5 minutes.
        #[arg(long)]
        quick: bool,
        /// Write BENCHMARKS.md and bench/plots/ here instead.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only these parts (1-7; repeatable; 7 boots the kernel matrix).
        #[arg(long)]
        only: Vec<u8>,
    },
    /// Debian's kernels in QEMU (fetched with apt, cached): the suites or a command in each.
    Vm(vm::Args),
    /// The .deb: target/package/dataplane_<version>_<arch>.deb (release build).
    Package,
    /// The OCI image the Kubernetes manifests name: target/image/dataplane-<version>.tar
    /// (release build).
    Image,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::Test { no_vm, args } => test(&args, !no_vm),
        Task::Bench { quick, out, only } => bench(quick, out, &only),
        Task::Demo { args } => demo(&args),
        Task::Vm(args) => vm::run(args),
        Task::Package => package::build(&workspace_root()).map(drop),
        Task::Image => image::build(&workspace_root()).map(drop),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn require_root(task: &str) -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u`")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!(
            "`cargo xtask {task}` must run as root (it needs apt-get, CAP_BPF and CAP_NET_ADMIN)"
        );
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn setup() -> Result<()> {
    require_root("setup")?;
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("Debian packages: all present");
    } else {
        eprintln!("Debian packages: installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if linker.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        eprintln!("bpf-linker {BPF_LINKER_VERSION}: present");
    } else {
        eprintln!("bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22");
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--version", BPF_LINKER_VERSION, "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    let pip = Path::new(PYTHON_TOOLS).join("bin/pip");
    let frozen = Command::new(&pip).arg("freeze").output();
    let have = frozen.map_or(String::new(), |o| {
        String::from_utf8_lossy(&o.stdout).into_owned()
    });
    if PYTHON_PACKAGES
        .iter()
        .all(|p| have.lines().any(|l| l == *p))
    {
        eprintln!("Python tools in {PYTHON_TOOLS}: present");
    } else {
        eprintln!(
            "Python tools in {PYTHON_TOOLS}: installing {}",
            PYTHON_PACKAGES.join(" ")
        );
        run(Command::new("/usr/bin/python3").args(["-m", "venv", PYTHON_TOOLS]))?;
        run(Command::new(&pip)
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES))?;
    }
    let fuzz = Command::new("cargo").args(["fuzz", "--version"]).output();
    if fuzz.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)) {
        eprintln!("cargo-fuzz {CARGO_FUZZ_VERSION}: present");
    } else {
        eprintln!("cargo-fuzz {CARGO_FUZZ_VERSION}: installing");
        run(Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .args(["--version", CARGO_FUZZ_VERSION]))?;
    }
    eprintln!("setup complete");
    Ok(())
}

/// Builds target/release/dataplane (the demo and the benchmarks run the real binary).
fn build_release_binary(root: &Path) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args([
        "build",
        "--release",
        "-p",
        "dataplane-user",
        "--bins",
    ]))
}

fn demo(args: &[String]) -> Result<()> {
    require_root("demo")?;
    let root = workspace_root();
    build_release_binary(&root)?;
    run(Command::new(root.join("target/release/dataplane"))
        .arg("demo")
        .args(args))
}

fn test(args: &[String], vm: bool) -> Result<()> {
    require_root("test")?;
    let root = workspace_root();
    let ebpf = root.join("dataplane-ebpf");
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo")
        .current_dir(&ebpf)
        .args(["fmt", "--check"]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate is linted for the host target (clippy has no BPF `core`); it uses one
    // unstable feature (core_intrinsics, for atomics), hence RUSTC_BOOTSTRAP.
    run(Command::new("cargo")
        .current_dir(&ebpf)
        .args([
            "clippy",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(root.join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1"))?;
    // The daemon tests run the real `dataplane` binary; the package tests install the .deb
    // and run the image.
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "dataplane-user",
        "--bins",
    ]))?;
    package::build(&root)?;
    image::build(&root)?;
    // The upgrade test runs today's main and this tree's next layout too.
    releases::build(&root)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    let (passed, failed, ok) = run_tests(&mut cmd)?;
    // One closing line for the whole run: cargo's own last line is that of whichever test
    // binary ran last (often an empty doc-test run).
    println!("tests: {passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("{failed} tests failed");
    }
    fuzz_short(&root)?;
    if vm {
        vm::run(vm::Args::ci())?;
    }
    Ok(())
}

/// A short coverage-guided run of each fuzz target from the committed corpus and seeds (new
/// inputs go to a scratch directory, so the tree stays clean); a crash fails the test
/// command.
fn fuzz_short(root: &Path) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("dataplane-fuzz-{}", std::process::id()));
    for (target, flags) in FUZZ_TARGETS {
        let new_inputs = scratch.join(target);
        std::fs::create_dir_all(&new_inputs)
            .with_context(|| format!("creating {}", new_inputs.display()))?;
        // No sanitizer (the Debian toolchain ships no ASan runtime for Rust); libFuzzer's
        // coverage and crash detection need only the instrumentation, which stable rustc
        // applies with RUSTC_BOOTSTRAP for cargo-fuzz's flags.
        let outcome = run(Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .args(["fuzz", "run", "--sanitizer", "none", "--release", target])
            .arg(&new_inputs)
            .arg(format!("corpus/{target}"))
            .arg(format!("seeds/{target}"))
            .arg("--")
            .args(flags)
            .env("RUSTC_BOOTSTRAP", "1"));
        let _ = std::fs::remove_dir_all(&new_inputs);
        outcome?;
        println!("fuzz {target}: {} without a crash", flags[0]);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Runs the harness (`dataplane-bench`, a workspace crate: xtask itself must not depend on
/// the dataplane crates, which need the eBPF toolchain that `setup` installs).
fn bench(quick: bool, out: Option<PathBuf>, only: &[u8]) -> Result<()> {
    require_root("bench")?;
    let root = workspace_root();
    // The control-plane figures run the real daemon binary; the kernel matrix's guests run
    // both binaries.
    build_release_binary(&root)?;
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "dataplane-bench",
    ]))?;
    let mut cmd = Command::new(root.join("target/release/dataplane-bench"));
    cmd.current_dir(&root)
        .arg("--out")
        .arg(out.unwrap_or_else(|| root.clone()));
    if quick {
        cmd.arg("--quick");
    }
    for part in only {
        cmd.args(["--only", &part.to_string()]);
    }
    if only.is_empty() || only.contains(&KERNELS_PART) {
        let kernels = root.join("target/vm/bench");
        vm::bench_matrix(&kernels)?;
        cmd.arg("--kernels").arg(kernels);
    }
    run(&mut cmd)
}

/// The bench's part that boots the kernel matrix.
const KERNELS_PART: u8 = 7;

/// Runs `cargo test`, echoing its output, and adds up its `test result:` lines.
fn run_tests(cmd: &mut Command) -> Result<(u64, u64, bool)> {
    eprintln!("+ {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait()?;
    Ok((passed, failed, status.success()))
}

/// The number just before `label` in "ok. 14 passed; 0 failed; ...".
fn count_before(text: &str, label: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
