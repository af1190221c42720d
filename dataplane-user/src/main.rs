//! `dataplane`: load the XDP classifier/policer onto interfaces with a policy file.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use clap::{Parser, Subcommand, ValueEnum};
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use tracing::{info, warn};

#[derive(Parser)]
#[command(version, about = "XDP classifier and per-class policer for AI traffic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the dataplane onto interfaces with a policy and run until Ctrl-C.
    Run {
        /// Interface to attach to (repeatable).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Policy file; without one, the built-in AI catalogue (config/default.toml).
        #[arg(long, env = "DATAPLANE_CONFIG")]
        config: Option<PathBuf>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = Mode::Native)]
        xdp_mode: Mode,
    },
    /// Commands on policy files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a policy file without applying it.
    Check {
        /// Policy file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Driver (native) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

#[tokio::main]
async fn main() -> ExitCode {
    match dispatch(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Run {
            ifaces,
            config,
            xdp_mode,
        } => run(&ifaces, config.as_deref(), xdp_mode).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let policy = Policy::load(&file)?;
            println!(
                "{}: ok ({} classes, {} rules)",
                file.display(),
                policy.classes.len(),
                policy.rules.len()
            );
            Ok(())
        }
    }
}

/// The default AI catalogue, built in so the binary runs without a file.
const DEFAULT_POLICY: &str = include_str!("../../config/default.toml");

async fn run(ifaces: &[String], config: Option<&std::path::Path>, mode: Mode) -> Result<()> {
    let policy = match config {
        Some(path) => Policy::load(path)?,
        None => Policy::from_toml_str(DEFAULT_POLICY, "built-in config/default.toml")?,
    };
    let mut dp = Dataplane::load().context("loading the XDP program")?;
    for missing in dp.register_interfaces(&policy, ifaces)? {
        warn!(iface = %missing, "interface in the policy does not exist here; its rules cannot match");
    }
    let generation = dp.apply(&CompiledPolicy::new(&policy))?;
    let mode = match mode {
        Mode::Native => XdpMode::Driver,
        Mode::Generic => XdpMode::Skb,
    };
    for iface in ifaces {
        dp.attach(iface, mode)
            .with_context(|| format!("attaching to {iface}"))?;
        info!(%iface, generation, "attached");
    }
    tokio::signal::ctrl_c().await?;
    info!("detaching");
    Ok(())
}
