//! `dataplane`: the daemon (`run`) and the operator CLI.
//!
//! Exit codes: 0 success; 1 error; 2 bad command line; 3 no daemon running (changing
//! commands); 4 invalid config or change rejected (nothing changed).

mod demo;
mod output;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    control::{self, ClientError, Failure, Request},
    daemon::{self, DaemonConfig, ModeChoice},
    dataplane::Dataplane,
    edit::{ClassChange, RuleText},
    kernel_log::KernelLogLevel,
    metrics,
    pins::{PinLayout, DEFAULT_PIN_ROOT, LAYOUT_VERSION},
    state::{RunDir, DEFAULT_RUN_DIR},
    units,
    view::Running,
};

#[derive(Parser)]
#[command(
    version,
    about = "XDP classifier, policer and forwarder for AI traffic",
    after_help = "Exit codes: 0 ok, 1 error, 2 bad command line, 3 no daemon running, 4 invalid config or change rejected (nothing changed)."
)]
struct Cli {
    #[command(flatten)]
    paths: Paths,
    #[command(subcommand)]
    command: Command,
}

/// Where the pinned dataplane and the daemon's run directory live.
#[derive(Args, Clone)]
struct Paths {
    /// bpffs directory holding the pinned dataplane.
    #[arg(long, global = true, env = "DATAPLANE_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Directory of the daemon's state file and control socket.
    #[arg(long, global = true, env = "DATAPLANE_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
}

impl Paths {
    fn layout(&self) -> PinLayout {
        PinLayout::new(&self.pin_root)
    }

    fn run(&self) -> RunDir {
        RunDir::new(&self.run_dir)
    }
}

#[derive(Subcommand)]
enum Command {
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
    Top {
        /// Only this class.
        #[arg(long)]
        class: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Interval rates are measured over.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Flows shown per class.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
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
    /// Detach the dataplane from interfaces, or remove it entirely.
    Detach {
        /// Only these interfaces (repeatable); without it everything is removed.
        #[arg(long = "iface", value_parser = interface_name)]
        ifaces: Vec<String>,
        /// Remove a pinned layout of another version instead (see `dataplane status` errors).
        #[arg(long)]
        layout: Option<u32>,
    },
    /// Set the level of kernel-side log lines forwarded to the daemon's log.
    KernelLog {
        /// off, error, warn, info, debug or trace.
        level: KernelLogLevel,
    },
    /// The main job on the embedded default: a namespace topology (clients -> gateway ->
    /// server), the daemon on the gateway with the built-in AI catalogue and forwarding, a
    /// bounded mix of AI traffic, a live per-class table and a summary. Cleans up on exit.
    Demo {
        /// How long the traffic runs.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Where the daemon serves metrics.
        #[arg(long, default_value = metrics::DEFAULT_METRICS_ADDR)]
        metrics_addr: SocketAddr,
        /// Do not serve metrics.
        #[arg(long, conflicts_with = "metrics_addr")]
        no_metrics: bool,
    },
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required = true, value_parser = interface_name)]
    ifaces: Vec<String>,
    /// Policy file, watched for changes; without one, the built-in AI catalogue.
    #[arg(long, env = "DATAPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// XDP attach mode; `auto` falls back to generic with a warning.
    #[arg(long, value_enum, default_value_t = ModeChoice::Native)]
    xdp_mode: ModeChoice,
    /// Kernel log level at start.
    #[arg(long, default_value = "off")]
    kernel_log: KernelLogLevel,
    /// How often to check the config file for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    watch_interval: Duration,
    /// Serve Prometheus metrics (/metrics, /healthz) on this address (port 0: any free port).
    #[arg(long, default_value = metrics::DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Do not serve metrics.
    #[arg(long, conflicts_with = "metrics_addr")]
    no_metrics: bool,
    /// Attach to interfaces of this network namespace (`ip netns` name). Pins, the control
    /// socket and the metrics listener stay in the host's namespaces.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Args)]
struct StatsArgs {
    /// Only this interface.
    #[arg(long)]
    iface: Option<String>,
    /// Only this class.
    #[arg(long)]
    class: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Refresh a live table until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Interval rates are measured over (and the refresh period of --watch).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// With --watch, stop after this many refreshes.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Subcommand)]
enum ClassCommand {
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
    /// Change a class at runtime (through the daemon).
    Set(Box<ClassSetArgs>),
}

#[derive(Args)]
struct ClassSetArgs {
    /// Class name.
    name: String,
    /// Committed (guaranteed) rate, e.g. 40Gbit.
    #[arg(long)]
    rate: Option<String>,
    /// Peak rate (ceil), e.g. 50Gbit.
    #[arg(long)]
    ceil: Option<String>,
    /// Committed burst, e.g. 4MiB.
    #[arg(long)]
    burst: Option<String>,
    /// Peak burst.
    #[arg(long)]
    ceil_burst: Option<String>,
    /// Priority, 0 (lowest) to 7.
    #[arg(long)]
    priority: Option<i64>,
    /// Action above the rate: pass, drop, ecn or remark.
    #[arg(long)]
    exceed: Option<String>,
    /// Action above the ceil: pass, drop, ecn or remark.
    #[arg(long)]
    violate: Option<String>,
    /// DSCP written on conforming packets.
    #[arg(long)]
    dscp: Option<i64>,
    /// DSCP written by the remark action.
    #[arg(long)]
    remark_dscp: Option<i64>,
    /// Also write the change to the config file, so a restart keeps it.
    #[arg(long)]
    save: bool,
}

#[derive(Subcommand)]
enum RuleCommand {
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
struct RuleAddArgs {
    /// Class matching packets get.
    #[arg(long)]
    class: String,
    /// Source prefix.
    #[arg(long)]
    src: Option<String>,
    /// Destination prefix.
    #[arg(long)]
    dst: Option<String>,
    /// Protocol: tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    protocol: Option<String>,
    /// Source port or range.
    #[arg(long)]
    src_port: Option<String>,
    /// Destination port or range.
    #[arg(long)]
    dst_port: Option<String>,
    /// DSCP.
    #[arg(long)]
    dscp: Option<i64>,
    /// Ingress interface.
    #[arg(long)]
    iface: Option<String>,
    /// RoCEv2 opcode: cnp, rc, uc, rd, ud, a number or a range.
    #[arg(long)]
    roce_opcode: Option<String>,
    /// Insert before this rule index (default: append).
    #[arg(long)]
    position: Option<usize>,
    /// Also write the change to the config file.
    #[arg(long)]
    save: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a policy file without applying it.
    Check {
        /// Policy file.
        file: PathBuf,
    },
}

fn interface_name(s: &str) -> Result<String, String> {
    dataplane::pins::check_interface_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// An error with the exit code scripts rely on.
struct Failed {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failed {
    fn from(error: anyhow::Error) -> Failed {
        Failed { code: 1, error }
    }
}

const EXIT_NO_DAEMON: u8 = 3;
const EXIT_REJECTED: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Demo { .. }) {
        // A command's output cut short (`dataplane rule list | head -1`) ends it quietly, as
        // any Unix filter, instead of a panic in println!. The daemon keeps ignoring SIGPIPE.
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn dispatch(cli: Cli) -> Result<(), Failed> {
    let paths = cli.paths;
    match cli.command {
        Command::Run(args) => run(&paths, args),
        Command::Status { json } => {
            let running = Running::open(&paths.layout(), &paths.run())?;
            output::status(&running.status()?, json)?;
            Ok(())
        }
        Command::Stats(args) => Ok(output::stats(
            &Running::open(&paths.layout(), &paths.run())?,
            &output::StatsOptions {
                iface: args.iface,
                class: args.class,
                json: args.json,
                watch: args.watch,
                interval: args.interval,
                count: args.count,
            },
        )?),
        Command::Top {
            class,
            json,
            interval,
            limit,
        } => Ok(output::top(
            &Running::open(&paths.layout(), &paths.run())?,
            &output::TopOptions {
                class,
                json,
                interval,
                limit,
            },
        )?),
        Command::Class { command } => class(&paths, command),
        Command::Rule { command } => rule(&paths, command),
        Command::Reload => call(&paths, &Request::Reload),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let policy = Policy::load(&file).map_err(|e| Failed {
                code: EXIT_REJECTED,
                error: e.into(),
            })?;
            // The same capacity check the daemon applies before it writes anything.
            Dataplane::check_fits(&CompiledPolicy::new(&policy)).map_err(|e| Failed {
                code: EXIT_REJECTED,
                error: anyhow::anyhow!("{}: {e}", file.display()),
            })?;
            println!(
                "{}: ok ({} classes, {} rules)",
                file.display(),
                policy.classes.len(),
                policy.rules.len()
            );
            Ok(())
        }
        Command::Detach { ifaces, layout } => detach(&paths, ifaces, layout),
        Command::KernelLog { level } => call(
            &paths,
            &Request::KernelLogLevel {
                level: level.label().to_string(),
            },
        ),
        Command::Demo {
            duration,
            metrics_addr,
            no_metrics,
        } => Ok(demo::run(&demo::DemoOptions {
            duration,
            metrics_addr: (!no_metrics).then_some(metrics_addr),
        })?),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dataplane",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn run(paths: &Paths, args: RunArgs) -> Result<(), Failed> {
    let metrics = if args.no_metrics {
        None
    } else {
        Some(
            std::net::TcpListener::bind(args.metrics_addr).with_context(|| {
                format!(
                    "serving metrics on {} (choose another with --metrics-addr, or --no-metrics)",
                    args.metrics_addr
                )
            })?,
        )
    };
    // Before the runtime starts: its threads inherit the namespace.
    if let Some(netns) = &args.netns {
        daemon::enter_netns(netns)?;
    }
    let cfg = DaemonConfig {
        ifaces: args.ifaces,
        config: args.config,
        mode: args.xdp_mode,
        layout: paths.layout(),
        run: paths.run(),
        watch_interval: args.watch_interval,
        kernel_log: args.kernel_log,
        metrics,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(daemon::run(cfg))?;
    Ok(())
}

/// Sends a changing request to the daemon and maps its answer to output and exit code.
fn call(paths: &Paths, request: &Request) -> Result<(), Failed> {
    let response = control::call(&paths.run().socket(), request).map_err(|e| Failed {
        code: match e {
            ClientError::NotRunning { .. } => EXIT_NO_DAEMON,
            ClientError::PermissionDenied { .. } | ClientError::Protocol { .. } => 1,
        },
        error: e.into(),
    })?;
    match response.failure {
        None => {
            println!("{}", response.message);
            Ok(())
        }
        Some(failure) => Err(Failed {
            code: match failure {
                Failure::Rejected => EXIT_REJECTED,
                Failure::Failed => 1,
            },
            error: anyhow::anyhow!(
                "{} (generation {} stays in force)",
                response.message,
                response.generation
            ),
        }),
    }
}

fn class(paths: &Paths, command: ClassCommand) -> Result<(), Failed> {
    match command {
        ClassCommand::List { json } => {
            let running = Running::open(&paths.layout(), &paths.run())?;
            output::class_list(&running, json)?;
            Ok(())
        }
        ClassCommand::Show { name, json } => {
            let running = Running::open(&paths.layout(), &paths.run())?;
            output::class_show(&running, &name, json)?;
            Ok(())
        }
        ClassCommand::Set(a) => {
            // Check units here too, so a typo fails before reaching the daemon.
            for (field, v) in [("--rate", &a.rate), ("--ceil", &a.ceil)] {
                if let Some(v) = v {
                    units::parse_rate(v).map_err(|e| Failed {
                        code: EXIT_REJECTED,
                        error: anyhow::anyhow!("{field} {v:?}: {e}"),
                    })?;
                }
            }
            for (field, v) in [("--burst", &a.burst), ("--ceil-burst", &a.ceil_burst)] {
                if let Some(v) = v {
                    units::parse_size(v).map_err(|e| Failed {
                        code: EXIT_REJECTED,
                        error: anyhow::anyhow!("{field} {v:?}: {e}"),
                    })?;
                }
            }
            let change = ClassChange {
                name: a.name,
                rate: a.rate,
                ceil: a.ceil,
                burst: a.burst,
                ceil_burst: a.ceil_burst,
                priority: a.priority,
                exceed: a.exceed,
                violate: a.violate,
                dscp: a.dscp,
                remark_dscp: a.remark_dscp,
            };
            call(
                paths,
                &Request::SetClass {
                    change,
                    save: a.save,
                },
            )
        }
    }
}

fn rule(paths: &Paths, command: RuleCommand) -> Result<(), Failed> {
    match command {
        RuleCommand::List { json } => {
            let running = Running::open(&paths.layout(), &paths.run())?;
            output::rule_list(&running, json)?;
            Ok(())
        }
        RuleCommand::Add(a) => call(
            paths,
            &Request::AddRule {
                rule: RuleText {
                    class: a.class,
                    src: a.src,
                    dst: a.dst,
                    protocol: a.protocol,
                    src_port: a.src_port,
                    dst_port: a.dst_port,
                    dscp: a.dscp,
                    iface: a.iface,
                    roce_opcode: a.roce_opcode,
                },
                position: a.position,
                save: a.save,
            },
        ),
        RuleCommand::Del { index, save } => call(paths, &Request::DeleteRule { index, save }),
    }
}

fn detach(paths: &Paths, ifaces: Vec<String>, layout: Option<u32>) -> Result<(), Failed> {
    let pins = paths.layout();
    if let Some(version) = layout {
        if pins.remove_version(version).map_err(anyhow::Error::from)? {
            println!("removed layout v{version} under {}", pins.root().display());
        } else {
            println!("no layout v{version} under {}", pins.root().display());
        }
        return Ok(());
    }
    let run = paths.run();
    if control::is_running(&run.socket()) {
        return call(paths, &Request::Detach { ifaces });
    }
    // No daemon: work on the pins directly.
    if ifaces.is_empty() {
        let removed = pins
            .remove_version(LAYOUT_VERSION)
            .map_err(anyhow::Error::from)?;
        run.clear();
        if removed {
            println!("detached; dataplane removed");
        } else {
            println!("nothing to detach under {}", pins.root().display());
        }
        return Ok(());
    }
    for iface in &ifaces {
        if !pins.unpin_link(iface).map_err(anyhow::Error::from)? {
            return Err(Failed {
                code: EXIT_REJECTED,
                error: anyhow::anyhow!("{iface} is not attached"),
            });
        }
    }
    if let Some(mut state) = run.read()? {
        for iface in &ifaces {
            state.attached.remove(iface);
            state.ifindexes.remove(iface);
        }
        run.write(&state)?;
    }
    println!("detached from {}", ifaces.join(", "));
    Ok(())
}
