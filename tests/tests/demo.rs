//! `dataplane demo`, the README's main job: it runs on its own, shows what the dataplane did
//! to each class, and leaves nothing behind, also when interrupted.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dataplane_tests::{daemon::binary, kernel::require_root};

/// Namespaces, pins and run directories of a demo process that has exited.
fn leftovers(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("dpt-{pid}-")))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    found.extend(netns);
    for path in [
        format!("/sys/fs/bpf/dataplane-demo-{pid}"),
        format!("/run/dataplane-demo-{pid}"),
    ] {
        if std::path::Path::new(&path).exists() {
            found.push(path);
        }
    }
    found
}

/// The numbers in the summary row of `class`: packets, ECN-marked, drops.
fn summary_row(out: &str, class: &str) -> (u64, u64, u64) {
    let summary = out.split("summary after").nth(1).expect("a summary");
    let row = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(class))
        .unwrap_or_else(|| panic!("no {class} row in:\n{summary}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let n = |i: usize| cols[i].parse::<u64>().unwrap_or_else(|_| panic!("{row}"));
    (n(1), n(cols.len() - 2), n(cols.len() - 1))
}

#[test]
fn the_demo_polices_the_ai_mix_and_cleans_up() {
    require_root();
    let child = Command::new(binary())
        .args(["demo", "--duration", "4s", "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // RoCEv2 at twice its ceiling: ECN-marked above the rate, dropped above the ceiling.
    let (packets, marked, dropped) = summary_row(&stdout, "rdma");
    assert!(
        packets > 1000 && marked > 0 && dropped > 0,
        "rdma: {packets} {marked} {dropped}"
    );
    // CNPs are never limited.
    let (cnps, _, cnp_drops) = summary_row(&stdout, "roce_cnp");
    assert!(cnps > 100 && cnp_drops == 0, "roce_cnp: {cnps} {cnp_drops}");
    for class in ["collective", "inference", "storage"] {
        assert!(summary_row(&stdout, class).0 > 0, "{class} carried traffic");
    }
    assert!(stdout.contains("forwarded in XDP"), "{stdout}");
    assert!(stdout.contains("metrics: http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("cleaned up"), "{stdout}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn ctrl_c_stops_the_demo_and_cleans_up() {
    require_root();
    let mut child = Command::new(binary())
        .args(["demo", "--duration", "60s", "--no-metrics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read");
        output += &line;
        output.push('\n');
        if line.contains("per class on the gateway") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no live table within 60 s:\n{output}"
        );
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    for line in lines {
        output += &line.expect("read");
        output.push('\n');
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}:\n{output}");
    assert!(
        output.contains("(interrupted)") && output.contains("cleaned up"),
        "{output}"
    );
    assert_eq!(leftovers(pid), Vec::<String>::new());
}
