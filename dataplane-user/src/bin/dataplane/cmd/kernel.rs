//! `dataplane kernel`, and what `--version` says of the kernel.

use anyhow::Context;
use dataplane::{
    dataplane::Dataplane,
    kernel::{KernelSupport, Verified, FEATURES},
    pins::LAYOUT_VERSION,
};
use serde::Serialize;

use super::Failed;
use crate::output::print_json;

/// `dataplane kernel --json`.
#[derive(Serialize)]
struct Report<'a> {
    kernel: &'a KernelSupport,
    /// Why the dataplane cannot run here; absent when it can.
    refused: Option<String>,
    /// One entry per XDP program of the object (absent when refused before loading).
    verified: Vec<Verified>,
}

pub fn execute(json: bool) -> Result<(), Failed> {
    let kernel = KernelSupport::probe().context("probing this kernel")?;
    let (refused, verified) = match kernel.require() {
        Err(e) => (Some(e.to_string()), Vec::new()),
        Ok(()) => match Dataplane::load().and_then(|dp| dp.verified()) {
            Ok(verified) => (None, verified),
            Err(e) => (Some(e.to_string()), Vec::new()),
        },
    };
    if json {
        print_json(&Report {
            kernel,
            refused: refused.clone(),
            verified,
        })?;
    } else {
        println!("kernel:   {}", kernel.release);
        println!(
            "object:   variant {} (one object for every supported kernel)",
            kernel.variant
        );
        println!("features:");
        for (feature, probed) in FEATURES.iter().zip(&kernel.features) {
            let state = if probed.present {
                "on".to_string()
            } else {
                format!("OFF ({})", probed.why_not)
            };
            println!(
                "  {:<16} {state}: {} (Linux {}), for {}",
                feature.name, feature.what, feature.since, feature.used_for
            );
        }
        for v in &verified {
            println!("verifier: {}: {}", v.program, v.describe());
        }
    }
    match refused {
        Some(why) => Err(anyhow::anyhow!("the dataplane cannot run on this kernel: {why}").into()),
        None => Ok(()),
    }
}

/// `dataplane --version`: the build, its pinned layout and this kernel's features.
pub fn long_version() -> String {
    let kernel = match KernelSupport::probe() {
        Ok(k) => match k.require() {
            Ok(()) => k.summary(),
            Err(e) => format!("{}\nrefused: {e}", k.summary()),
        },
        Err(e) => format!(
            "kernel {}: features not probed ({e})",
            dataplane::kernel::release()
        ),
    };
    format!(
        "{} (pinned layout v{LAYOUT_VERSION})\n{kernel}",
        env!("CARGO_PKG_VERSION")
    )
}
