//! `dataplane-bench`: measures the dataplane (per-packet cost, gateway throughput, policing
//! accuracy, control plane) and writes BENCHMARKS.md with SVG plots. Run as root, usually
//! through `cargo xtask bench [--quick]`.

mod agreement;
mod control;
mod generator;
mod kernels;
mod machine;
mod memory;
mod netns;
mod per_packet;
mod plot;
mod policing;
mod programs;
mod report;
mod stats;
mod tcp;
mod throughput;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    machine::Machine,
    report::{Section, Table, SECTION_TITLES},
};

#[derive(Parser)]
#[command(about = "Benchmarks the dataplane and writes BENCHMARKS.md and plots (root)")]
struct Cli {
    /// Fewer repeats, rounds and shorter windows: finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// Tiny counts, for the test suite's smoke test: exercises every part of the harness in
    /// seconds; the figures mean nothing.
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Directory for BENCHMARKS.md; the plots go to `<out>/bench/plots/`.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Run only these sections (1-7; repeatable), for working on one of them.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=7))]
    only: Vec<u8>,
    /// The kernel matrix's results, one directory per kernel (`cargo xtask bench` runs the
    /// guests and passes this); without it section 7 says it was not run.
    #[arg(long)]
    kernels: Option<PathBuf>,
    /// Also write every section's tables here as JSON (what a guest of the kernel matrix
    /// hands back).
    #[arg(long)]
    tables_json: Option<PathBuf>,
}

/// How long the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Quick,
    Smoke,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Quick => "quick",
            Mode::Smoke => "smoke-test",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Mode::Full => "",
            Mode::Quick => " --quick",
            Mode::Smoke => " --smoke",
        }
    }
}

/// Counts and durations of one mode.
pub struct Settings {
    pub mode: Mode,
    /// Per-packet cost: BPF_PROG_TEST_RUN repeats per figure and round.
    pub repeat: u32,
    /// Rounds of every measurement (the figures' median and min–max are over these).
    pub rounds: usize,
    /// Throughput: frames the generator sends per figure and round.
    pub frames: u32,
    /// Policing: time the senders run before the first counter sample.
    pub warm_up: Duration,
    /// Policing: time between the two counter samples.
    pub window: Duration,
    /// Rule counts of the per-packet rows (the control plane uses all but the first); the
    /// last is above the rule limit, to record the refusal.
    pub rule_counts: [u32; 4],
}

/// The rule counts: 10 / 1k / 10k / 100k.
const RULE_COUNTS: [u32; 4] = [10, 1_000, 10_000, 100_000];

impl Settings {
    fn of(mode: Mode) -> Settings {
        match mode {
            Mode::Full => Settings {
                mode,
                repeat: 1_000_000,
                rounds: 5,
                frames: 4_000_000,
                warm_up: Duration::from_millis(150),
                window: Duration::from_millis(1500),
                rule_counts: RULE_COUNTS,
            },
            Mode::Quick => Settings {
                mode,
                repeat: 100_000,
                rounds: 3,
                frames: 300_000,
                warm_up: Duration::from_millis(50),
                window: Duration::from_millis(300),
                rule_counts: RULE_COUNTS,
            },
            Mode::Smoke => Settings {
                mode,
                repeat: 2_000,
                rounds: 1,
                frames: 5_000,
                warm_up: Duration::from_millis(20),
                window: Duration::from_millis(60),
                // Large policies take seconds to parse in a debug build.
                rule_counts: [10, 100, 1_000, 20_000],
            },
        }
    }
}

/// A progress bar for one section (drawn only on a terminal).
pub fn progress(index: usize, title: &str, steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:32}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{} {title}", index + 1, SECTION_TITLES.len()));
    bar
}

/// Every section of the report, in order.
const SECTIONS: [fn(&Settings, &ProgressBar) -> Result<Section>; 6] = [
    per_packet::run,
    throughput::run,
    policing::run,
    control::run,
    tcp::run,
    agreement::run,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    match benchmark(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn benchmark(cli: &Cli) -> Result<()> {
    dataplane_lab::kernel::require_root();
    // The control-plane section runs the real daemon: the `dataplane` binary built next to
    // this one (cargo xtask bench and cargo xtask test build it), unless DATAPLANE_BIN says.
    if std::env::var_os("DATAPLANE_BIN").is_none() {
        let daemon = std::env::current_exe()?.with_file_name("dataplane");
        anyhow::ensure!(
            daemon.exists(),
            "{} is missing: build it first with `cargo build -p dataplane-user --bins` \
             (cargo xtask bench does), or name it in DATAPLANE_BIN",
            daemon.display()
        );
        // Still single-threaded here.
        std::env::set_var("DATAPLANE_BIN", daemon);
    }
    let mode = match (cli.quick, cli.smoke) {
        (_, true) => Mode::Smoke,
        (true, _) => Mode::Quick,
        _ => Mode::Full,
    };
    let settings = Settings::of(mode);
    let machine = Machine::probe();
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for (i, (section, title)) in SECTIONS.iter().zip(SECTION_TITLES).enumerate() {
        if !cli.only.is_empty() && !cli.only.contains(&(i as u8 + 1)) {
            continue;
        }
        let bar = progress(i, title, 1);
        match section(&settings, &bar) {
            Ok(s) => {
                bar.finish_with_message("done");
                sections.push(s);
            }
            Err(e) => {
                bar.abandon_with_message("failed");
                // Keep going: the other sections' figures are still worth writing down.
                let mut s = Section::new(title);
                s.caveats.push(format!("This section failed: {e:#}"));
                failed.push(format!("{title}: {e:#}"));
                sections.push(s);
            }
        }
    }
    let kernels = SECTION_TITLES.len() as u8;
    if cli.only.is_empty() || cli.only.contains(&kernels) {
        let host: Vec<Table> = sections
            .iter()
            .find(|s| s.title == SECTION_TITLES[0])
            .map_or_else(Vec::new, |s| s.tables.clone());
        sections.push(kernels::section(cli.kernels.as_deref(), &host)?);
    }
    if let Some(path) = &cli.tables_json {
        let tables: Vec<&Table> = sections.iter().flat_map(|s| &s.tables).collect();
        std::fs::write(path, serde_json::to_vec_pretty(&tables)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    write(&cli.out, &machine, &settings, &sections)?;
    if !failed.is_empty() {
        anyhow::bail!("sections failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

/// Where the plots go, relative to BENCHMARKS.md.
const PLOT_DIR: &str = "bench/plots";

fn write(out: &Path, machine: &Machine, settings: &Settings, sections: &[Section]) -> Result<()> {
    let plots = out.join(PLOT_DIR);
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    for p in sections.iter().flat_map(|s| &s.plots) {
        p.render(&plots)
            .with_context(|| format!("plotting {}", p.file()))?;
    }
    let md = report::markdown(machine, settings, sections, PLOT_DIR);
    let path = out.join("BENCHMARKS.md");
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {} and {}/", path.display(), plots.display());
    Ok(())
}
