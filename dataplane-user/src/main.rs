//! `dataplane`: load the XDP classifier/policer onto interfaces with a policy file.

use std::path::PathBuf;

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
        /// Policy file.
        #[arg(long, env = "DATAPLANE_CONFIG", default_value = "config/default.toml")]
        config: PathBuf,
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
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run {
            ifaces,
            config,
            xdp_mode,
        } => run(&ifaces, &config, xdp_mode).await,
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

async fn run(ifaces: &[String], config: &std::path::Path, mode: Mode) -> Result<()> {
    let policy = Policy::load(config)?;
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
