//! What a benchmark section hands back, and BENCHMARKS.md written from it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{machine::Machine, plot::Plot, Settings};

/// A markdown table (also written as JSON with `--tables-json`, which the kernel matrix's
/// section reads back).
#[derive(Clone, Serialize, Deserialize)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, header: &[&str]) -> Table {
        Table {
            caption: caption.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// How a measured figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The figure could not be taken (feature absent, limit refused it).
    NotMeasured,
}

impl Verdict {
    pub fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// A target from the issue and what this run measured against it.
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub verdict: Verdict,
    /// What limits the figure, for misses and figures not taken.
    pub note: String,
}

/// One part of the benchmark.
pub struct Section {
    /// Stable anchor and heading, e.g. "Per-packet cost".
    pub title: &'static str,
    /// How it was measured: pinning, warm-up, repeats, what exactly is timed.
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    pub targets: Vec<Target>,
    /// What the numbers do not show.
    pub caveats: Vec<String>,
}

impl Section {
    pub fn new(title: &'static str) -> Section {
        Section {
            title,
            method: Vec::new(),
            tables: Vec::new(),
            plots: Vec::new(),
            targets: Vec::new(),
            caveats: Vec::new(),
        }
    }
}

/// The titles every report has, in order (the smoke test checks each is present); the last
/// is the kernel matrix's (`kernels`), which `main` adds after the others.
pub const SECTION_TITLES: [&str; 7] = [
    "Per-packet cost",
    "Gateway throughput",
    "Policing accuracy",
    "Control plane",
    "TCP through a class",
    "Host and kernel agreement",
    "Kernels",
];

/// BENCHMARKS.md for `sections`, with plots referenced relative to the report.
pub fn markdown(
    machine: &Machine,
    settings: &Settings,
    sections: &[Section],
    plot_dir: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}` ({} run, {}). Every figure is the median of the \
         rounds with the min–max range in parentheses; every comparison is a ratio of figures \
         measured in the same run, taken round by round. Benchmarks are not timed tests: \
         nothing here passes or fails CI.\n",
        settings.mode.flag(),
        settings.mode.name(),
        machine.date
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine.rows() {
        let _ = writeln!(md, "- **{k}**: {v}");
    }
    let _ = writeln!(md, "\n## Targets\n");
    let _ = writeln!(
        md,
        "| target | goal | measured | verdict | what limits it |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for t in sections.iter().flat_map(|s| &s.targets) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            t.verdict.label(),
            t.note
        );
    }
    for (i, s) in sections.iter().enumerate() {
        let _ = writeln!(md, "\n## {}. {}\n", i + 1, s.title);
        let _ = writeln!(md, "**Method.**\n");
        for m in &s.method {
            let _ = writeln!(md, "- {m}");
        }
        for t in &s.tables {
            let _ = writeln!(md, "\n{}\n", t.caption);
            let _ = writeln!(md, "| {} |", t.header.join(" | "));
            let _ = writeln!(
                md,
                "|{}",
                t.header
                    .iter()
                    .enumerate()
                    .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                    .collect::<String>()
            );
            for r in &t.rows {
                let _ = writeln!(md, "| {} |", r.join(" | "));
            }
        }
        for p in &s.plots {
            let _ = writeln!(md, "\n![{}]({plot_dir}/{})", p.title(), p.file());
        }
        if !s.targets.is_empty() {
            let _ = writeln!(md, "\n**Targets.**\n");
            for t in &s.targets {
                let _ = writeln!(
                    md,
                    "- {}: goal {}, measured {} — {}{}",
                    t.name,
                    t.goal,
                    t.measured,
                    t.verdict.label(),
                    if t.note.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", t.note)
                    }
                );
            }
        }
        let _ = writeln!(md, "\n**What these numbers do not show.**\n");
        for c in &s.caveats {
            let _ = writeln!(md, "- {c}");
        }
    }
    md
}
