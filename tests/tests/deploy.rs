//! The operator artefacts in deploy/systemd: systemd accepts the unit, and the command line
//! it runs (with the shipped defaults) is one the binary accepts.

use std::{path::Path, process::Command};

use dataplane_lab::daemon::binary;

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY="value"` lines of the environment file.
fn environment() -> Vec<(String, String)> {
    deploy("dataplane.default")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

#[test]
fn systemd_accepts_the_unit() {
    let unit =
        deploy("dataplane.service").replace("/usr/sbin/dataplane", &binary().display().to_string());
    let dir = std::env::temp_dir().join(format!("dp-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("dataplane.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_units_command_line_parses() {
    let unit = deploy("dataplane.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut line = exec.to_string();
    for (k, v) in environment() {
        line = line
            .replace(&format!("${{{k}}}"), &v)
            .replace(&format!("${k}"), &v);
    }
    assert!(
        !line.contains('$'),
        "every variable is set by the default file: {line}"
    );
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert_eq!(args.first(), Some(&"run"));
    // --help after the arguments: clap rejects any unknown one before printing help.
    let out = Command::new(binary())
        .args(&args)
        .arg("--help")
        .output()
        .expect("run dataplane");
    assert!(
        out.status.success(),
        "dataplane {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
}
