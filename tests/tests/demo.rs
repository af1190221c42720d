//! `dataplane demo`, the README's main job: it runs on its own, shows what the dataplane did
//! to each class, and leaves nothing behind, also when interrupted.

use std::{
    io::{BufRead, BufReader, Lines},
    process::{Child, ChildStdout, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use dataplane::units::parse_rate;
use dataplane_lab::{daemon::binary, kernel::require_root};

/// Demos measure rates and build topologies: on two cores they must not run at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// The columns of the summary row of `class`.
fn summary_cols<'a>(out: &'a str, class: &str) -> Vec<&'a str> {
    let summary = out.split("summary after").nth(1).expect("a summary");
    summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(class))
        .unwrap_or_else(|| panic!("no {class} row in:\n{summary}"))
        .split_whitespace()
        .collect()
}

/// The numbers in the summary row of `class`: packets, ECN-marked, drops.
fn summary_row(out: &str, class: &str) -> (u64, u64, u64) {
    let cols = summary_cols(out, class);
    let n = |i: usize| {
        cols[i]
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{cols:?}"))
    };
    (n(1), n(cols.len() - 2), n(cols.len() - 1))
}

/// The offered and admitted rates and the configured rate and ceiling in the summary row of
/// `class`, bytes per second (`None` for "-").
fn summary_rates(out: &str, class: &str) -> [Option<u64>; 4] {
    let cols = summary_cols(out, class);
    let rate = |i: usize| {
        (cols[i] != "-").then(|| parse_rate(cols[i]).unwrap_or_else(|e| panic!("{cols:?}: {e}")))
    };
    [rate(3), rate(4), rate(5), rate(6)]
}

#[test]
fn the_demo_polices_the_ai_mix_and_cleans_up() {
    require_root();
    let _serial = serial();
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
    // The summary shows what was offered apart from what was admitted: RoCEv2 is offered
    // twice its ceiling and admitted no more than the ceiling (plus a burst).
    let [offered, admitted, _, ceil] = summary_rates(&stdout, "rdma");
    let (offered, admitted, ceil) = (
        offered.expect("offered"),
        admitted.expect("admitted"),
        ceil.expect("ceil"),
    );
    assert!(
        offered > ceil * 3 / 2 && admitted <= ceil * 21 / 20,
        "rdma: offered {offered} B/s, admitted {admitted} B/s, ceiling {ceil} B/s"
    );
    // The TCP classes, offered more than their guarantee, get most of it within seconds of
    // starting (measured over 4 s: 0.85 of the guarantee and up; over 20 s, 1.0 and up).
    for class in ["collective", "storage"] {
        let [_, admitted, rate, _] = summary_rates(&stdout, class);
        let (admitted, rate) = (admitted.expect("admitted"), rate.expect("rate"));
        assert!(
            admitted * 10 >= rate * 7,
            "{class}: admitted {admitted} B/s of a {rate} B/s guarantee"
        );
    }
    assert!(
        summary_row(&stdout, "inference").0 > 0,
        "inference carried traffic"
    );
    assert!(stdout.contains("forwarded in XDP"), "{stdout}");
    assert!(stdout.contains("metrics: http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("cleaned up"), "{stdout}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

/// Processes (other than the demo itself) whose command line names demo `pid`'s pins: its
/// daemon.
fn demo_daemons(pid: u32) -> Vec<u32> {
    let pins = format!("/sys/fs/bpf/dataplane-demo-{pid}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != pid)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|arg| arg == pins.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// What demo `pid` left, removed on drop whether the test passed or not: its daemon
/// (SIGKILL), then its pins, run directory and namespaces, the way an operator would.
struct Cleanup(u32);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for daemon in demo_daemons(self.0) {
            // SAFETY: kill(2) on the daemon our demo started.
            unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new(binary())
            .args([
                "--pin-root",
                &format!("/sys/fs/bpf/dataplane-demo-{}", self.0),
            ])
            .arg("detach")
            .output();
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/dataplane-demo-{}", self.0));
        let _ = std::fs::remove_dir_all(format!("/run/dataplane-demo-{}", self.0));
        for netns in leftovers(self.0)
            .into_iter()
            .filter(|n| !n.starts_with('/'))
        {
            let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        }
    }
}

/// Starts `dataplane demo ARGS` and reads its output until the live table shows.
fn demo_with_live_table(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>, String) {
    let mut child = Command::new(binary())
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read");
        output += &line;
        output.push('\n');
        if line.contains("per class on the gateway") {
            return (child, lines, output);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no live table within 60 s:\n{output}");
}

/// Waits (bounded) for `child` to exit.
fn exits_within(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the demo did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_stops_the_demo_and_cleans_up() {
    require_root();
    let _serial = serial();
    let (mut child, lines, mut output) =
        demo_with_live_table(&["--duration", "60s", "--no-metrics"]);
    let pid = child.id();
    let _cleanup = Cleanup(pid);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    for line in lines {
        output += &line.expect("read");
        output.push('\n');
    }
    let status = exits_within(&mut child, Duration::from_secs(60));
    assert!(status.success(), "{status}:\n{output}");
    assert!(
        output.contains("(interrupted)") && output.contains("cleaned up"),
        "{output}"
    );
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

/// A closed terminal (SIGHUP) stops the demo as Ctrl-C does: its daemon stopped, nothing left.
#[test]
fn a_hangup_stops_the_demo_and_cleans_up() {
    require_root();
    let _serial = serial();
    let (mut child, lines, _) = demo_with_live_table(&["--duration", "60s", "--no-metrics"]);
    let pid = child.id();
    let _cleanup = Cleanup(pid);
    // The terminal is gone: nobody reads the output any more.
    drop(lines);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    exits_within(&mut child, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !demo_daemons(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(demo_daemons(pid), Vec::<u32>::new(), "its daemon runs on");
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

/// A demo killed outright (SIGKILL: no cleanup of its own) takes its daemon with it, and the
/// next run on the same metrics port starts and removes what the killed one left.
#[test]
fn a_killed_demo_leaves_nothing_that_breaks_the_next_run() {
    require_root();
    let _serial = serial();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let (mut first, _lines, _) =
        demo_with_live_table(&["--duration", "60s", "--metrics-addr", &metrics]);
    let pid = first.id();
    let _cleanup = Cleanup(pid);
    let _ = first.kill();
    let _ = first.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !demo_daemons(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(demo_daemons(pid), Vec::<u32>::new(), "its daemon runs on");

    let next = Command::new(binary())
        .args(["demo", "--duration", "2s", "--metrics-addr", &metrics])
        .output()
        .expect("run the next demo");
    let stdout = String::from_utf8_lossy(&next.stdout);
    assert!(
        next.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert!(stdout.contains("cleaned up"), "{stdout}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "the killed demo's leftovers"
    );
}
