//! Test suites: a name for a test binary of `dataplane-tests` (and its libtest arguments), built
//! on the host and run in the guest.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Suite name, test binary (tests/tests/<binary>.rs), libtest arguments (a filter, or
/// `--ignored` for the tests that need the guest's NICs). One line per suite.
#[rustfmt::skip] // a table, one suite a line
const SUITES: &[(&str, &str, &[&str])] = &[
    ("kernel",       "kernel",         &[]),
    ("corpus",       "xdp_corpus",     &[]),
    ("classifier",   "classifier",     &[]),
    ("policing",     "policing",       POLICING_IN_A_GUEST),
    ("flow_cache",   "flow_cache",     &[]),
    ("differential", "differential",   &[]),
    ("spray",        "spray",          &[]),
    ("control",      "daemon",         &[]),
    ("forwarding",   "forwarding",     &[]),
    ("libbpf",       "libbpf_interop", &[]),
    ("virtio",       "virtio",         &["--ignored"]),
];

/// The policing suite in a guest leaves out its two link-budget contention tests (they run
/// on the host, in `cargo xtask test`): they need both senders running without pause, and
/// the emulator's vCPUs stall, so the link share one leaves goes to the other (measured on
/// 6.1: lo +9% of its guarantee, the link -1.8%).
const POLICING_IN_A_GUEST: &[&str] = &[
    "--skip",
    "low_priority_loses_first_when_the_link_budget_runs_low",
    "--skip",
    "guaranteed_rates_hold_under_link_contention",
];

/// Suites that need `--nics`.
pub const NEED_NICS: &[&str] = &["virtio"];

/// What runs without a SUITE or `--exec`: the suites that check what the loaded object
/// does through BPF_PROG_TEST_RUN, frame by frame and (policing) at rate. Under the
/// emulator the rate tests scale their rates by `Accel::rate_scale`. The suites that drive
/// traffic through namespaces and the daemon (forwarding, control) take minutes there (the
/// control suite about 17 on 6.1): name them to run them.
pub const DEFAULT: &[&str] = &[
    "kernel",
    "corpus",
    "classifier",
    "policing",
    "flow_cache",
    "differential",
    "spray",
];

const TESTS_PACKAGE: &str = "dataplane-tests";

/// A suite ready to run: its binary as built on the host.
pub struct Suite {
    pub name: &'static str,
    pub binary: &'static str,
    pub args: &'static [&'static str],
    pub executable: PathBuf,
    /// The package's directory: cargo runs test binaries there.
    pub dir: PathBuf,
}

/// What SUITE takes.
pub fn names() -> impl Iterator<Item = &'static str> {
    SUITES.iter().map(|s| s.0)
}

/// Builds what the guest runs: the `dataplane` binary (the daemon tests start it) and the
/// test binaries, whose paths come from cargo's JSON messages.
pub fn build(root: &Path, names: &[String]) -> Result<Vec<Suite>> {
    crate::run(Command::new("cargo").current_dir(root).args([
        "build",
        "-p",
        "dataplane-user",
        "--bins",
    ]))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args([
            "test",
            "-p",
            TESTS_PACKAGE,
            "--no-run",
            "--message-format=json",
        ])
        .stdout(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    let mut built: HashMap<String, (PathBuf, PathBuf)> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] != "compiler-artifact" || !is_test {
            continue;
        }
        if let (Some(name), Some(exe), Some(manifest)) = (
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
        ) {
            let dir = Path::new(manifest)
                .parent()
                .with_context(|| format!("odd manifest path {manifest}"))?;
            built.insert(name.to_string(), (PathBuf::from(exe), dir.to_path_buf()));
        }
    }
    names
        .iter()
        .map(|name| {
            let &(name, binary, args) = SUITES
                .iter()
                .find(|s| s.0 == name)
                .with_context(|| format!("unknown suite `{name}`"))?;
            let (executable, dir) = built.get(binary).cloned().with_context(|| {
                format!("cargo built no test binary `{binary}` in {TESTS_PACKAGE} (suite {name})")
            })?;
            Ok(Suite {
                name,
                binary,
                args,
                executable,
                dir,
            })
        })
        .collect()
}

/// A suite's outcome from the files its run left in the share.
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
    /// The binary's exit status; None if it never finished.
    pub exit_code: Option<i32>,
    /// libtest printed a `test result:` line.
    pub reported: bool,
}

pub fn outcome(share: &Path, name: &str) -> Outcome {
    let log = fs::read_to_string(share.join(format!("suite-{name}.log"))).unwrap_or_default();
    let (mut passed, mut failed, mut reported) = (0, 0, false);
    for line in log.lines() {
        if let Some(rest) = line.trim_end().strip_prefix("test result: ") {
            passed += crate::count_before(rest, " passed");
            failed += crate::count_before(rest, " failed");
            reported = true;
        }
    }
    let exit_code = fs::read_to_string(share.join(format!("suite-{name}.rc")))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Outcome {
        passed,
        failed,
        exit_code,
        reported,
    }
}
