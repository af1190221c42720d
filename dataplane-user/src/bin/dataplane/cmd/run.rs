//! `dataplane run`: the daemon.

use anyhow::Context;
use dataplane::{
    daemon::{self, DaemonConfig},
    fleet::FleetConfig,
};

use super::Failed;
use crate::args::{Paths, RunArgs};

pub fn execute(paths: &Paths, args: RunArgs) -> Result<(), Failed> {
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
        fleet: if args.etcd.is_empty() {
            None
        } else {
            Some(FleetConfig {
                endpoints: args.etcd,
                prefix: args.etcd_prefix,
                gateway: match args.gateway {
                    Some(name) => name,
                    None => host_name()?,
                },
            })
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(daemon::run(cfg))?;
    Ok(())
}

/// The host's name (the gateway's default name in a fleet).
fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name (name the gateway with --gateway)")?;
    Ok(name.trim().to_string())
}
