//! `cargo xtask vm`: Debian's kernels, fetched with apt into a cache and booted in QEMU with
//! this machine's files shared into the guest, run the test suites (or a command) against
//! the real eBPF object, and a pass/fail table per kernel and suite.

mod guest;
mod initramfs;
mod kernels;
mod qemu;
mod suites;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use kernels::{Kernel, Package};
use qemu::{Accel, Guest, Netns};

/// Starts each line the guest's scripts print for the host to act on.
const MARK: &str = "@@dataplane-vm";
/// 9p mount tags: the host's root, and the run's share.
const ROOT_TAG: &str = "hostroot";
const IO_TAG: &str = "vmio";
/// The guest's second stage, in the share.
const GUEST_SCRIPT: &str = "guest.sh";
/// apt's state and the extracted kernels; never the host's /boot or /lib/modules.
const CACHE: &str = "/var/cache/dataplane-vm";
/// Host tools and the Debian packages that have them.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("xz", "xz-utils"),
    ("apt-get", "apt"),
    ("dpkg", "dpkg"),
    ("ip", "iproute2"),
];

#[derive(clap::Args)]
pub struct Args {
    /// A kernel to boot (repeatable).
    #[arg(long = "kernel", value_name = "K", required = true,
          value_parser = clap::builder::PossibleValuesParser::new(kernels::names()))]
    kernels: Vec<String>,
    /// Four multi-queue virtio-net NICs with native XDP, cabled vcli<->vgin, vgout<->vsrv.
    #[arg(long)]
    nics: bool,
    /// Run this shell command in the guest (cwd: the workspace) instead of test suites.
    #[arg(long, value_name = "CMD", conflicts_with = "suites")]
    exec: Option<String>,
    /// With --exec: skip building the workspace first.
    #[arg(long, requires = "exec")]
    no_build: bool,
    /// Re-resolve the kernels against Debian's indexes (otherwise the cache is reused).
    #[arg(long)]
    refresh: bool,
    /// Seconds each kernel's job may run (the boot has its own bound).
    #[arg(long, value_name = "SECONDS", default_value_t = TIMEOUT_SECS)]
    timeout: u64,
    /// Guest memory (QEMU's -m).
    #[arg(long, default_value = MEMORY)]
    memory: String,
    /// Guest CPUs.
    #[arg(long, default_value_t = SMP)]
    smp: u32,
    /// libtest's --test-threads for the suites.
    #[arg(long, default_value_t = TEST_THREADS)]
    test_threads: u32,
    /// Where the JSON summary goes [default: target/vm/report.json].
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Copy each kernel's share (what its job wrote under /vm) to DIR/<kernel>.
    #[arg(long, value_name = "DIR")]
    collect: Option<PathBuf>,
    /// Test suites to run [default: kernel corpus classifier policing flow_cache differential spray].
    #[arg(value_name = "SUITE",
          value_parser = clap::builder::PossibleValuesParser::new(suites::names()))]
    suites: Vec<String>,
}

impl Args {
    /// What `cargo xtask test` runs: every default suite and the NIC suite on Debian 12's
    /// kernel (the oldest supported) and the newest.
    pub fn ci() -> Args {
        Args {
            kernels: CI_KERNELS.iter().map(|k| k.to_string()).collect(),
            nics: true,
            exec: None,
            no_build: false,
            refresh: false,
            timeout: TIMEOUT_SECS,
            memory: MEMORY.into(),
            smp: SMP,
            test_threads: TEST_THREADS,
            report: None,
            collect: None,
            suites: suites::DEFAULT
                .iter()
                .chain(suites::NEED_NICS)
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// Boots of one kernel before a guest that dies while booting counts as a failure.
const BOOT_ATTEMPTS: u32 = 3;

/// Defaults: a kernel's job bound, the guest's memory and CPUs (as this machine's), and one
/// test at a time (the suites' timing tests must not share the CPUs).
const TIMEOUT_SECS: u64 = 1800;
const MEMORY: &str = "4G";
const SMP: u32 = 2;
const TEST_THREADS: u32 = 1;

/// The kernels of `cargo xtask test`: the oldest supported and the newest.
const CI_KERNELS: [&str; 2] = ["6.1", "newest"];

#[derive(Serialize)]
struct Report {
    started_unix: u64,
    accelerator: &'static str,
    accelerator_reason: &'static str,
    /// What the rate tests scaled their rates by (`DATAPLANE_TEST_RATE_SCALE`).
    rate_scale: f64,
    nics: bool,
    exec: Option<String>,
    kernels: Vec<KernelReport>,
}

#[derive(Serialize)]
struct KernelReport {
    kernel: String,
    suite: String,
    release: String,
    packages: Vec<Package>,
    boot_seconds: Option<f64>,
    seconds: f64,
    exit_code: Option<i32>,
    error: Option<String>,
    ok: bool,
    console_log: PathBuf,
    suites: Vec<SuiteReport>,
}

#[derive(Serialize)]
struct SuiteReport {
    name: String,
    binary: String,
    passed: u64,
    failed: u64,
    seconds: Option<f64>,
    exit_code: Option<i32>,
    ok: bool,
}

pub fn run(args: Args) -> Result<()> {
    crate::require_root("vm")?;
    let specs = kernels::select(&args.kernels);
    let suite_names: Vec<String> = match (&args.exec, args.suites.is_empty()) {
        (Some(_), _) => Vec::new(),
        (None, true) => suites::DEFAULT.iter().map(|s| s.to_string()).collect(),
        (None, false) => args.suites.clone(),
    };
    if let Some(suite) = suite_names
        .iter()
        .find(|s| !args.nics && suites::NEED_NICS.contains(&s.as_str()))
    {
        bail!("suite {suite} needs the guest's NICs: add --nics");
    }
    check_host_tools()?;
    let root = crate::workspace_root();
    let out_dir = root.join("target/vm");
    let report_path = args.report.clone().unwrap_or(out_dir.join("report.json"));
    let cache = Path::new(CACHE);
    let kernels = specs
        .iter()
        .map(|spec| kernels::ensure(cache, spec, args.refresh))
        .collect::<Result<Vec<_>>>()?;
    let suites = if args.no_build {
        Vec::new()
    } else {
        suites::build(&root, &suite_names)?
    };
    let (accel, why) = Accel::choose();
    eprintln!("accelerator: {} ({why})", accel.name());
    let job = match &args.exec {
        Some(command) => guest::exec_job(command),
        None => guest::suites_job(&suites, args.test_threads, accel.rate_scale()),
    };
    // From here on Ctrl-C stops the guest and lets the clean-up (the namespace) run.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("installing the Ctrl-C handler")?;
    }
    let netns = if args.nics {
        Some(Netns::create()?)
    } else {
        None
    };
    let mut report = Report {
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        accelerator: accel.name(),
        accelerator_reason: why,
        rate_scale: accel.rate_scale(),
        nics: args.nics,
        exec: args.exec.clone(),
        kernels: Vec::new(),
    };
    for kernel in &kernels {
        let dir = run_dir(&out_dir.join(&kernel.name))?;
        let share = dir.join("share");
        fs::create_dir(&share).with_context(|| format!("creating {}", share.display()))?;
        write_file(
            &share.join(GUEST_SCRIPT),
            &guest::stage2(kernel, &root, args.nics),
        )?;
        write_file(&share.join("job.sh"), &job)?;
        let initramfs = initramfs::ensure(kernel)?;
        let console_log = dir.join("console.log");
        eprintln!(
            "kernel {}: booting {} ({})",
            kernel.name,
            kernel.release,
            kernel.versions()
        );
        let started = Instant::now();
        let guest = Guest {
            kernel,
            initramfs: &initramfs,
            accel: &accel,
            memory: &args.memory,
            smp: args.smp,
            netns: netns.as_ref(),
            share: &share,
            console_log: &console_log,
            timeout: Duration::from_secs(args.timeout),
            interrupted: &interrupted,
        };
        let mut run = guest.run()?;
        // Emulated kernels now and then die while booting (an int3 oops patching kernel
        // text under multi-threaded TCG was seen on 6.12): a guest that never reached its
        // job boots again; one that failed in its job does not.
        for attempt in 2..=BOOT_ATTEMPTS {
            if run.boot.is_some() || run.error.is_none() {
                break;
            }
            eprintln!(
                "kernel {}: the guest died before its job started; booting again \
                 (attempt {attempt} of {BOOT_ATTEMPTS})",
                kernel.name
            );
            run = guest.run()?;
        }
        if let Some(collect) = &args.collect {
            copy_files(&share, &collect.join(&kernel.name))?;
        }
        let kernel_report = kernel_report(kernel, &suites, &share, run, started, console_log);
        if let Some(error) = &kernel_report.error {
            eprintln!("kernel {}: FAILED: {error}", kernel.name);
        }
        report.kernels.push(kernel_report);
    }
    drop(netns);
    print_table(&report);
    if let Some(dir) = report_path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    eprintln!("report: {}", report_path.display());
    let failed: Vec<&str> = report
        .kernels
        .iter()
        .filter(|k| !k.ok)
        .map(|k| k.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

fn kernel_report(
    kernel: &Kernel,
    suites: &[suites::Suite],
    share: &Path,
    run: qemu::Run,
    started: Instant,
    console_log: PathBuf,
) -> KernelReport {
    let mark = |text: String| {
        run.marks
            .iter()
            .find(|(m, _)| *m == text)
            .map(|(_, at)| *at)
    };
    let suites: Vec<SuiteReport> = suites
        .iter()
        .map(|s| {
            let o = suites::outcome(share, s.name);
            let seconds = match (
                mark(format!("suite-start {}", s.name)),
                mark(format!("suite-end {}", s.name)),
            ) {
                (Some(a), Some(b)) => Some(b.duration_since(a).as_secs_f64()),
                _ => None,
            };
            SuiteReport {
                name: s.name.to_string(),
                binary: s.binary.to_string(),
                passed: o.passed,
                failed: o.failed,
                seconds,
                exit_code: o.exit_code,
                ok: o.exit_code == Some(0) && o.failed == 0 && o.reported,
            }
        })
        .collect();
    let ok = run.error.is_none() && run.exit_code == Some(0) && suites.iter().all(|s| s.ok);
    KernelReport {
        kernel: kernel.name.clone(),
        suite: kernel.suite.clone(),
        release: kernel.release.clone(),
        packages: kernel.packages.clone(),
        boot_seconds: run.boot.map(|d| d.as_secs_f64()),
        seconds: started.elapsed().as_secs_f64(),
        exit_code: run.exit_code,
        error: run.error,
        ok,
        console_log,
        suites,
    }
}

fn print_table(report: &Report) {
    println!();
    if report.exec.is_none() && report.rate_scale < 1.0 {
        println!(
            "rate tests scaled by {} under {} (DATAPLANE_TEST_RATE_SCALE)",
            report.rate_scale, report.accelerator
        );
    }
    println!(
        "{:<11} {:<22} {:<20} {:<5} {:>6}  {:<13} {:>6} {:>6} {:>8}  result",
        "kernel", "release", "version", "accel", "boot", "suite", "passed", "failed", "seconds"
    );
    for k in &report.kernels {
        let version = k.packages.first().map_or("", |p| p.version.as_str());
        let boot = k
            .boot_seconds
            .map_or("-".to_string(), |b| format!("{b:.1}s"));
        let head = format!(
            "{:<11} {:<22} {:<20} {:<5} {:>6}",
            k.kernel, k.release, version, report.accelerator, boot
        );
        let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
        if k.suites.is_empty() {
            let what = if k.error.is_some() {
                "no exit code"
            } else {
                verdict(k.ok)
            };
            let code = k.exit_code.map_or("-".to_string(), |c| c.to_string());
            println!(
                "{head}  {:<13} {:>6} {:>6} {:>8.1}  {what} (exit {code})",
                "exec", "-", "-", k.seconds
            );
        }
        for s in &k.suites {
            let seconds = s.seconds.map_or("-".to_string(), |t| format!("{t:.1}"));
            println!(
                "{head}  {:<13} {:>6} {:>6} {:>8}  {}",
                s.name,
                s.passed,
                s.failed,
                seconds,
                verdict(s.ok)
            );
        }
    }
}

fn check_host_tools() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(tool, _)| !std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
        .map(|(_, package)| *package)
        .chain((!crate::package_installed("busybox-static")).then_some("busybox-static"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing Debian packages: {} (cargo xtask setup installs them)",
            missing.join(" ")
        );
    }
    Ok(())
}

/// This run's directory for one kernel (console log, share), fresh: concurrent runs each
/// have their own, and those of finished runs go when the next one starts.
fn run_dir(kernel_dir: &Path) -> Result<PathBuf> {
    let pid = std::process::id();
    if let Ok(entries) = fs::read_dir(kernel_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_prefix("run-")
                .is_some_and(|p| p == pid.to_string() || !running(p));
            if stale {
                // Only files this command and its guests wrote: nothing is mounted there.
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
    }
    let dir = kernel_dir.join(format!("run-{pid}"));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `pid` is a live `cargo xtask` (of a concurrent run).
fn running(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "xtask")
}

/// Copies the files directly in `from` into `to` (created).
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().context("a file has a name")?;
            fs::copy(&path, to.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// What `cargo xtask bench` asks of every kernel (its part 7): `dataplane kernel --json`
/// and, where the dataplane runs, part 1 in the guest, the results in `dir/<kernel>`.
/// A kernel whose job fails is said and left out; the section names it.
pub fn bench_matrix(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => {}
    }
    let args = Args {
        kernels: vec!["all".into()],
        exec: Some(BENCH_JOB.into()),
        no_build: true,
        collect: Some(dir.to_path_buf()),
        suites: Vec::new(),
        ..Args::ci()
    };
    if let Err(e) = run(args) {
        eprintln!("the kernel matrix's bench: {e:#}; its section shows what was measured");
    }
    Ok(())
}

/// A bench guest's job (cwd: the workspace; the release binaries are built).
const BENCH_JOB: &str = r#"target/release/dataplane kernel --json >/vm/kernel.json 2>/vm/kernel.err
echo $? >/vm/kernel.rc
[ "$(cat /vm/kernel.rc)" = 0 ] || exit 0
target/release/dataplane-bench --quick --only 1 --out /vm/bench --tables-json /vm/per_packet.json
"#;

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs `cmd` and returns its stdout; on failure the error carries its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` for its effect; its output shows only if it fails.
fn quiet(cmd: &mut Command) -> Result<()> {
    output(cmd).map(drop)
}
