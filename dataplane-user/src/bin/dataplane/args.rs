//! The command line: clap types only; `cmd` runs them.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use dataplane::{
    config::{ClassText, RuleText},
    daemon::ModeChoice,
    fleet,
    kernel_log::KernelLogLevel,
    metrics,
    pins::{PinLayout, DEFAULT_PIN_ROOT},
    state::{RunDir, DEFAULT_RUN_DIR},
};

#[derive(Parser)]
#[command(
    name = "dataplane",
    version,
    about = "XDP classifier, policer and forwarder for AI traffic",
    after_help = "Exit codes: 0 ok, 1 error, 2 bad command line, 3 no daemon running, 4 invalid config or change rejected (nothing changed)."
)]
pub struct Cli {
    #[command(flatten)]
    pub paths: Paths,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the pinned dataplane and the daemon's run directory live.
#[derive(Args, Clone)]
pub struct Paths {
    /// bpffs directory holding the pinned dataplane.
    #[arg(long, global = true, env = "DATAPLANE_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// Directory of the daemon's state file and control socket.
    #[arg(long, global = true, env = "DATAPLANE_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

impl Paths {
    pub fn layout(&self) -> PinLayout {
        PinLayout::new(&self.pin_root)
    }

    pub fn run(&self) -> RunDir {
        RunDir::new(&self.run_dir)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: load (or re-adopt) the dataplane, attach, apply the policy, serve the
    /// control socket. On exit the dataplane stays attached.
    Run(RunArgs),
    /// Interfaces, modes, program ids, generation, uptime.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Per interface and class: packets, bytes, drops, ECN marks, remarks, rates.
    Stats(StatsArgs),
    /// Per class, its heaviest flows (from the kernel's flow cache): 5-tuple, rate, share,
    /// drops, ECN marks, repaired retransmissions; and the class's TCP window.
    Top(TopArgs),
    /// Classes: list, show, change.
    Class {
        #[command(subcommand)]
        command: ClassCommand,
    },
    /// Rules: list, add, delete.
    Rule {
        #[command(subcommand)]
        command: RuleCommand,
    },
    /// Re-read the config file and apply it (as SIGHUP does).
    Reload,
    /// Policy files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A fleet of gateways sharing one policy through etcd (`run --etcd`).
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Detach the dataplane from interfaces, or remove it entirely.
    Detach(DetachArgs),
    /// This kernel: the BPF features the dataplane probes (and why any is off), whether the
    /// dataplane can run here, and what verifying its object costs (it is loaded and
    /// verified, not attached). Exit code 1 where the dataplane cannot run.
    Kernel {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Set the level of kernel-side log lines forwarded to the daemon's log.
    KernelLog {
        /// off, error, warn, info, debug or trace.
        level: KernelLogLevel,
    },
    /// The main job on the embedded default: a namespace topology (clients -> gateway ->
    /// server), the daemon on the gateway with the built-in AI catalogue and forwarding, a
    /// bounded mix of AI traffic, a live per-class table and a summary. Cleans up on exit.
    Demo(DemoArgs),
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (dataplane.1 and one per subcommand) into DIR; the .deb's build runs
    /// it.
    #[command(hide = true)]
    Manpages {
        /// Directory to write them into (created if missing).
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required = true, value_parser = interface_name)]
    pub ifaces: Vec<String>,
    /// Policy file, watched for changes; without one, the built-in AI catalogue.
    #[arg(long, env = "DATAPLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// XDP attach mode; `auto` falls back to generic with a warning.
    #[arg(long, value_enum, default_value_t = ModeChoice::Native)]
    pub xdp_mode: ModeChoice,
    /// Kernel log level at start.
    #[arg(long, default_value = "off")]
    pub kernel_log: KernelLogLevel,
    /// How often to check the interfaces and the state file (the config file is followed as
    /// it changes).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub watch_interval: Duration,
    /// Serve Prometheus metrics (/metrics, /healthz) on this address (port 0: any free port).
    #[arg(long, default_value = metrics::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Do not serve metrics.
    #[arg(long, conflicts_with = "metrics_addr")]
    pub no_metrics: bool,
    /// Attach to interfaces of this network namespace (`ip netns` name). Pins, the control
    /// socket and the metrics listener stay in the host's namespaces.
    #[arg(long)]
    pub netns: Option<String>,
    /// Take the policy from the fleet's etcd (client URLs, comma-separated) instead of a
    /// file: every gateway applies the same revision, and reports under its name.
    #[arg(
        long,
        env = "DATAPLANE_ETCD",
        value_delimiter = ',',
        conflicts_with = "config"
    )]
    pub etcd: Vec<String>,
    /// The fleet's key prefix in etcd.
    #[arg(long, default_value = fleet::DEFAULT_PREFIX, requires = "etcd")]
    pub etcd_prefix: String,
    /// This gateway's name in the fleet (default: the host name).
    #[arg(long, requires = "etcd")]
    pub gateway: Option<String>,
}

/// Where a fleet's etcd is.
#[derive(Args)]
pub struct FleetArgs {
    /// The fleet's etcd (client URLs, comma-separated).
    #[arg(long, env = "DATAPLANE_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The fleet's key prefix in etcd.
    #[arg(long, default_value = fleet::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

#[derive(Subcommand)]
pub enum FleetCommand {
    /// Every gateway's report: the policy revision in force, the last refused and why, its
    /// interfaces (a gateway whose daemon stopped drops out when its lease expires).
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate a policy file here, then make it the fleet's policy.
    Push {
        /// Policy file.
        file: PathBuf,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Args)]
pub struct StatsArgs {
    /// Only this interface.
    #[arg(long)]
    pub iface: Option<String>,
    /// Only this class.
    #[arg(long)]
    pub class: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Refresh a live table until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Interval rates are measured over (and the refresh period of --watch).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// With --watch, stop after this many refreshes.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Args)]
pub struct TopArgs {
    /// Only this class.
    #[arg(long)]
    pub class: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Interval rates are measured over.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Flows shown per class.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

#[derive(Args)]
pub struct DetachArgs {
    /// Only these interfaces (repeatable); without it everything is removed.
    #[arg(long = "iface", value_parser = interface_name)]
    pub ifaces: Vec<String>,
    /// Remove a pinned layout of another version instead (see `dataplane status` errors).
    #[arg(long)]
    pub layout: Option<u32>,
}

#[derive(Args)]
pub struct DemoArgs {
    /// How long the traffic runs.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the daemon serves metrics.
    #[arg(long, default_value = metrics::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Do not serve metrics.
    #[arg(long, conflicts_with = "metrics_addr")]
    pub no_metrics: bool,
}

#[derive(Subcommand)]
pub enum ClassCommand {
    /// All classes with their configuration.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One class: configuration and counters per interface.
    Show {
        /// Class name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Change a class at runtime (through the daemon); options not given keep their value
    /// (an option's "Default" is what a class in a file without it gets).
    Set(Box<ClassSetArgs>),
}

#[derive(Args)]
pub struct ClassSetArgs {
    #[command(flatten)]
    pub class: ClassText,
    /// Also write the change to the config file, so a restart keeps it.
    #[arg(long)]
    pub save: bool,
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Rules in match order, with their index.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule (through the daemon).
    Add(Box<RuleAddArgs>),
    /// Delete rule INDEX (as `rule list` numbers them).
    Del {
        /// Rule index.
        index: usize,
        /// Also write the change to the config file.
        #[arg(long)]
        save: bool,
    },
}

#[derive(Args)]
pub struct RuleAddArgs {
    #[command(flatten)]
    pub rule: RuleText,
    /// Insert before this rule index (default: append).
    #[arg(long)]
    pub position: Option<usize>,
    /// Also write the change to the config file.
    #[arg(long)]
    pub save: bool,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a policy file without applying it.
    Check {
        /// Policy file.
        file: PathBuf,
        /// An interface the daemon is started with (`run --iface`), counted as the daemon
        /// counts it; repeat for several.
        #[arg(long = "iface", value_parser = interface_name)]
        ifaces: Vec<String>,
    },
}

pub fn interface_name(s: &str) -> Result<String, String> {
    dataplane::pins::check_interface_name(s).map_err(|e| e.to_string())?;
    dataplane::config::check_interface_name(s)?;
    Ok(s.to_string())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}, use ms, s or m")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("{s:?} must be between 0 and a day"));
    }
    Ok(Duration::from_secs_f64(secs))
}
