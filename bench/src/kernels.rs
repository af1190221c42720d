//! The kernel matrix: for each of Debian's kernels, what `cargo xtask bench` found when it
//! booted it in QEMU (`cargo xtask vm`): whether the dataplane loads, the verifier's
//! instructions and time, and part 1's per-packet ratios measured inside the guest.
//!
//! xtask runs the guests and leaves, per kernel, a directory: `kernel.json` and `kernel.rc`
//! (`dataplane kernel --json` and its exit status), `kernel.err` (its stderr) and, where it
//! loads, `per_packet.json` (part 1's tables, `--tables-json`). This section reads them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::report::{Section, Table};

/// Part 1's rows shown per kernel (labels as part 1 writes them).
const ROWS: [&str; 7] = [
    "IPv4 RoCEv2 BTH before any policy (parse, count, pass)",
    "IPv4 RoCEv2 BTH (rdma), cache hit",
    "IPv4 RoCEv2 BTH (rdma), cache off",
    "IPv6 TCP (inference), cache hit",
    "10000 rules, last matches, cache off",
    "IPv4 RoCEv2 BTH, class over its rate (exact path), cache hit, flow_fairness = true",
    "100k flows cycled, cache on",
];
/// The column of part 1's main table that holds the ratio to the empty program.
const RATIO_COLUMN: &str = "× floor";

/// What `dataplane kernel --json` prints (the parts read here).
#[derive(Deserialize)]
struct KernelReport {
    kernel: KernelSupport,
    refused: Option<String>,
    verified: Vec<Verified>,
}

#[derive(Deserialize)]
struct KernelSupport {
    release: String,
    variant: String,
    features: Vec<Probed>,
}

#[derive(Deserialize)]
struct Probed {
    name: String,
    present: bool,
}

#[derive(Deserialize)]
struct Verified {
    program: String,
    instructions: Option<u32>,
    load_ms: Option<u64>,
}

/// One kernel's directory, read.
struct Guest {
    name: String,
    report: Option<KernelReport>,
    /// Why there is no report, or why the dataplane does not run.
    trouble: Option<String>,
    per_packet: Vec<Table>,
}

impl Guest {
    fn read(dir: &Path) -> Guest {
        let name = dir
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned());
        let text = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let report: Option<KernelReport> =
            text("kernel.json").and_then(|t| serde_json::from_str(&t).ok());
        let trouble = match &report {
            Some(r) => r.refused.clone(),
            None => Some(
                text("kernel.err")
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the guest left no report".into()),
            ),
        };
        let per_packet = text("per_packet.json")
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Guest {
            name,
            report,
            trouble,
            per_packet,
        }
    }

    /// Part 1's ratio of row `label` to the empty program, as the guest's table shows it.
    fn ratio(&self, label: &str) -> Option<&str> {
        self.per_packet.iter().find_map(|t| {
            let column = t.header.iter().position(|h| h == RATIO_COLUMN)?;
            t.rows
                .iter()
                .find(|r| r.first().is_some_and(|c| c == label))
                .and_then(|r| r.get(column))
                .map(String::as_str)
        })
    }
}

/// The section, from the guests' directories under `dir` (`None`: the matrix did not run).
pub fn section(dir: Option<&Path>, host_per_packet: &[Table]) -> Result<Section> {
    let mut s = Section::new("Kernels");
    s.method = vec![
        "`cargo xtask bench` boots each of Debian's kernels with `cargo xtask vm` (QEMU; the \
         host's files shared into the guest read-only; emulated with TCG where KVM cannot run \
         Debian's kernels, as on these machines). In each guest it runs `dataplane kernel \
         --json` (the probed features, whether the dataplane runs, and the verifier's \
         instructions and the load's time for the object) and, where the dataplane runs, part \
         1 (`dataplane-bench --quick --only 1`) against the guest's own kernel."
            .into(),
        "Per-packet figures are ratios to the empty XDP program measured in the same guest \
         and run (part 1's \"× floor\"), next to the host's from part 1 of this run."
            .into(),
    ];
    s.caveats = vec![
        "An emulator: absolute times (the load times included) are many times the hardware's \
         and carry the emulation's costs, which are not a CPU's; only ratios within one guest \
         compare, and only roughly across kernels."
            .into(),
        "Debian's kernels only: Ubuntu's 5.15 and 6.8 and RHEL 9's 5.14 are not fetched.".into(),
    ];
    let Some(dir) = dir else {
        s.caveats.push(
            "Not run: `cargo xtask bench` runs the kernel matrix and passes its results with \
             `--kernels`; this run had none."
                .into(),
        );
        return Ok(s);
    };
    let mut guests: Vec<Guest> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p: PathBuf| Guest::read(&p))
        .collect();
    guests.sort_by_key(|g| version_key(&g.name));

    let mut loads = Table::new(
        "Whether the dataplane loads, with which variant, and what the verifier took (of its \
         1 000 000 instructions; half is the limit `tests/tests/kernel.rs` enforces).",
        &[
            "kernel",
            "release",
            "loads",
            "variant",
            "verifier instructions",
            "share of the budget",
            "load time in the emulator",
            "features off",
        ],
    );
    for g in &guests {
        let Some(r) = &g.report else {
            loads.row(vec![
                g.name.clone(),
                "?".into(),
                format!("no report: {}", g.trouble.clone().unwrap_or_default()),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        let program = r.verified.iter().find(|v| v.program == "dataplane");
        let off: Vec<&str> = r
            .kernel
            .features
            .iter()
            .filter(|f| !f.present)
            .map(|f| f.name.as_str())
            .collect();
        loads.row(vec![
            g.name.clone(),
            r.kernel.release.clone(),
            match &r.refused {
                None => "yes".into(),
                Some(why) => format!("no: {why}"),
            },
            // A kernel that refuses the dataplane runs no variant of it.
            if r.refused.is_some() {
                "–".into()
            } else {
                r.kernel.variant.clone()
            },
            program
                .and_then(|p| p.instructions)
                .map_or("–".into(), |n| n.to_string()),
            program
                .and_then(|p| p.instructions)
                .map_or("–".into(), |n| format!("{:.0}%", f64::from(n) / 1e4)),
            program
                .and_then(|p| p.load_ms)
                .map_or("–".into(), |ms| format!("{:.1} s", ms as f64 / 1e3)),
            if off.is_empty() {
                "none".into()
            } else {
                off.join(", ")
            },
        ]);
    }
    s.tables.push(loads);

    let running: Vec<&Guest> = guests
        .iter()
        .filter(|g| g.report.as_ref().is_some_and(|r| r.refused.is_none()))
        .collect();
    let mut header = vec!["case (× the empty program)".to_string(), "host".to_string()];
    header.extend(running.iter().map(|g| g.name.clone()));
    let mut ratios = Table::new(
        "Part 1's per-packet cost as a ratio to the empty XDP program (median, min–max over \
         rounds), on the host and in each guest.",
        &header.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let host = Guest {
        name: "host".into(),
        report: None,
        trouble: None,
        per_packet: host_per_packet.to_vec(),
    };
    for label in ROWS {
        let mut row = vec![label.to_string(), host.ratio(label).unwrap_or("–").into()];
        row.extend(
            running
                .iter()
                .map(|g| g.ratio(label).unwrap_or("not measured").to_string()),
        );
        ratios.row(row);
    }
    s.tables.push(ratios);
    Ok(s)
}

/// Orders kernel names as versions ("5.10" before "6.1" before "6.12" before "6.12-deb13").
fn version_key(name: &str) -> Vec<u32> {
    name.split(['.', '-'])
        .map(|p| p.trim_start_matches("deb").parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_sort_as_versions() {
        let mut names = vec!["7.2", "6.12-deb13", "5.10", "6.12", "6.1"];
        names.sort_by_key(|n| version_key(n));
        assert_eq!(names, ["5.10", "6.1", "6.12", "6.12-deb13", "7.2"]);
    }

    #[test]
    fn a_guests_ratio_is_read_from_its_tables_by_column_name() {
        let g = Guest {
            name: "6.1".into(),
            report: None,
            trouble: None,
            per_packet: vec![{
                let mut t = Table::new("", &["case", "ns/packet", RATIO_COLUMN]);
                t.row(vec![ROWS[1].into(), "90".into(), "3.10 (3.0–3.2)".into()]);
                t
            }],
        };
        assert_eq!(g.ratio(ROWS[1]), Some("3.10 (3.0–3.2)"));
        assert_eq!(g.ratio(ROWS[0]), None);
    }
}
