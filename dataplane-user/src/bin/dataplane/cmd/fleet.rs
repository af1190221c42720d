//! `dataplane fleet`: the fleet's gateways, and its policy.

use anyhow::Context;
use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    dataplane::Dataplane,
    fleet::{Fleet, FleetConfig, GatewayReport},
};

use super::{Failed, EXIT_REJECTED};
use crate::{
    args::{FleetArgs, FleetCommand},
    output::print_json,
};

pub fn execute(command: FleetCommand) -> Result<(), Failed> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match command {
        FleetCommand::Status { fleet, json } => {
            let reports = runtime.block_on(async {
                let mut fleet = Fleet::connect(config(fleet)).await?;
                fleet.reports().await
            });
            let reports = reports.context("reading the gateways' reports")?;
            if json {
                print_json(&reports)?;
            } else {
                print(&reports);
            }
            Ok(())
        }
        FleetCommand::Push { file, fleet } => {
            // The checks every gateway applies, here first: a policy no gateway would take
            // never reaches them.
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rejected = |error: anyhow::Error| Failed {
                code: EXIT_REJECTED,
                error,
            };
            let policy = Policy::from_toml_str(&text, &file.display().to_string())
                .map_err(|e| rejected(e.into()))?;
            Dataplane::check_fits(&CompiledPolicy::new(&policy))
                .map_err(|e| rejected(anyhow::anyhow!("{}: {e}", file.display())))?;
            let config = config(fleet);
            let key = config.policy_key();
            let revision = runtime
                .block_on(async {
                    let mut fleet = Fleet::connect(config).await?;
                    fleet.push_policy(&text).await
                })
                .context("writing the fleet's policy")?;
            println!("{}: pushed to {key} at revision {revision}", file.display());
            Ok(())
        }
    }
}

fn config(args: FleetArgs) -> FleetConfig {
    FleetConfig {
        endpoints: args.etcd,
        prefix: args.etcd_prefix,
        gateway: String::new(),
    }
}

fn print(reports: &[GatewayReport]) {
    if reports.is_empty() {
        println!("no gateway reports (none runs with --etcd on this prefix, or all stopped)");
        return;
    }
    println!(
        "{:<20} {:>9} {:>10}  {:<30} REFUSED",
        "GATEWAY", "REVISION", "GENERATION", "INTERFACES"
    );
    for r in reports {
        let ifaces: Vec<String> = r
            .interfaces
            .iter()
            .map(|(name, mode)| format!("{name}:{}", mode.as_deref().unwrap_or("detached")))
            .collect();
        let refused = r.rejected.as_ref().map_or("-".to_string(), |x| {
            format!("revision {}: {}", x.revision, x.error)
        });
        println!(
            "{:<20} {:>9} {:>10}  {:<30} {refused}",
            r.gateway,
            r.revision,
            r.generation,
            ifaces.join(" ")
        );
    }
}
