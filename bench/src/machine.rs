//! What the figures were measured on.

use std::process::Command;

/// The machine, kernel and build a run measured.
pub struct Machine {
    pub date: String,
    rows: Vec<(&'static str, String)>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let virtualised = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory = read("/proc/meminfo")
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            })
            .map_or("unknown".into(), |kb| {
                format!("{:.1} GiB", kb as f64 / 1048576.0)
            });
        let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let commit = command("git", &["-C", workspace, "rev-parse", "--short", "HEAD"])
            .map(|c| {
                // The outputs of earlier runs are not changes to what is measured.
                let dirty = command(
                    "git",
                    &[
                        "-C",
                        workspace,
                        "status",
                        "--porcelain",
                        "--untracked-files=no",
                        "--",
                        ".",
                        ":!BENCHMARKS.md",
                        ":!bench/plots",
                    ],
                )
                .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{c} (with uncommitted changes)")
                } else {
                    c
                }
            })
            .unwrap_or_else(|| "unknown".into());
        let rows = vec![
            (
                "CPU",
                format!(
                    "{model}, {cpus} CPUs{}",
                    if virtualised {
                        " (virtual machine: the hypervisor flag is set)"
                    } else {
                        ""
                    }
                ),
            ),
            ("memory", memory),
            (
                "kernel",
                read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            ),
            (
                "clock source",
                read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                    .unwrap_or_else(|| "unknown".into()),
            ),
            (
                "BPF JIT",
                match read("/proc/sys/net/core/bpf_jit_enable").as_deref() {
                    Some("0") => "off (interpreter)".to_string(),
                    Some(v) => format!("on (bpf_jit_enable = {v})"),
                    None => "unknown".into(),
                },
            ),
            ("commit", commit),
        ];
        Machine {
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown date".into()),
            rows,
        }
    }

    pub fn rows(&self) -> &[(&'static str, String)] {
        &self.rows
    }
}
