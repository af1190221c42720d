//! The kernel under the tests: the dataplane runs on it (and the verifier keeps half its
//! budget in reserve), or it refuses to start with one line naming what is missing. Run on
//! this machine's kernel by `cargo xtask test`, and on Debian's 6.1 to 7.2 (and 5.10, which
//! is refused) by `cargo xtask vm`.

use std::process::Command;

use dataplane::{
    dataplane::Dataplane,
    kernel::{name, KernelSupport, FEATURES, VERIFIER_BUDGET},
};
use dataplane_lab::{daemon::binary, kernel::require_root};

/// The most of the verifier's budget the object may take on any kernel we support: the
/// rest is headroom for the next feature, and for older kernels, whose verifiers prune less
/// (the same object takes 2.5 times as many instructions on 6.1 as on 6.18).
const HEADROOM_SHARE: f64 = 0.5;

#[test]
fn the_object_verifies_within_half_the_verifier_budget() {
    require_root();
    let kernel = KernelSupport::probe().expect("the probes run as root");
    if let Some(why) = kernel.missing(name::ATOMICS) {
        // Below the minimum the object is never loaded: see the test below.
        let refused = Dataplane::load().err().expect("refused before loading");
        assert!(
            refused.to_string().contains("Linux 5.12"),
            "{refused}; {why}"
        );
        return;
    }
    let dp = Dataplane::load().expect("the object loads and verifies");
    for v in dp.verified().expect("program info") {
        let instructions = v.instructions.unwrap_or_else(|| {
            panic!(
                "{}: this kernel ({}) does not count verified instructions",
                v.program, kernel.release
            )
        });
        eprintln!("{} on {}: {}", v.program, kernel.release, v.describe());
        assert!(
            f64::from(instructions) <= HEADROOM_SHARE * f64::from(VERIFIER_BUDGET),
            "{} takes {instructions} of the verifier's {VERIFIER_BUDGET} instructions on {}: \
             over half, so the next feature could fail on an older kernel",
            v.program,
            kernel.release
        );
    }
}

#[test]
fn the_kernel_command_reports_every_feature_and_the_verifiers_cost() {
    require_root();
    let out = Command::new(binary())
        .args(["kernel", "--json"])
        .output()
        .expect("run dataplane kernel");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("dataplane kernel --json prints JSON");
    let features = report["kernel"]["features"]
        .as_array()
        .expect("a feature list");
    let names: Vec<&str> = features.iter().filter_map(|f| f["name"].as_str()).collect();
    let expected: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
    assert_eq!(names, expected);
    for f in features {
        let present = f["present"].as_bool().expect("present is a boolean");
        let why = f["why_not"].as_str().unwrap_or_default();
        assert_eq!(present, why.is_empty(), "a missing feature says why: {f}");
    }
    let kernel = KernelSupport::probe().expect("probes");
    match kernel.require() {
        Ok(()) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(report["refused"].is_null(), "{report}");
            let programs: Vec<&str> = report["verified"]
                .as_array()
                .expect("verified programs")
                .iter()
                .filter_map(|v| v["program"].as_str())
                .collect();
            assert_eq!(programs, ["dataplane", "xdp_pass"]);
            assert!(report["verified"][0]["instructions"].as_u64().unwrap_or(0) > 1000);
        }
        Err(refusal) => {
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(
                report["refused"].as_str(),
                Some(refusal.to_string().as_str())
            );
        }
    }
}

#[test]
fn below_the_minimum_the_daemon_refuses_in_one_line_naming_the_kernel_needed() {
    require_root();
    let kernel = KernelSupport::probe().expect("probes");
    let version = Command::new(binary())
        .arg("--version")
        .output()
        .expect("run dataplane --version");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.contains(&kernel.release), "{version}");
    assert!(version.contains("variant full"), "{version}");
    if kernel.require().is_ok() {
        // Where it runs, --version says every feature is on or why one is off.
        for (feature, probed) in FEATURES.iter().zip(&kernel.features) {
            assert_eq!(
                !probed.present,
                version.contains(&format!("{} off", feature.name)),
                "{version}"
            );
        }
        return;
    }
    // Below the minimum (5.10 in the kernel matrix): one line, no verifier dump.
    let out = Command::new(binary())
        .args(["run", "--iface", "lo", "--no-metrics"])
        .env("DATAPLANE_PIN_ROOT", "/sys/fs/bpf/dp-kernel-refused")
        .env("DATAPLANE_RUN_DIR", "/run/dp-kernel-refused")
        .output()
        .expect("run dataplane run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("Linux 5.12 or newer"), "{stderr}");
    assert!(errors[0].contains(&kernel.release), "{stderr}");
    assert!(!stderr.contains("processed "), "no verifier dump: {stderr}");
}
