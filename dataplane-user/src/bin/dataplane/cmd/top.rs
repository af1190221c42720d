//! `dataplane top`: each class's heaviest flows, from the flow cache's entries.

use std::io::Write;

use anyhow::{bail, Context, Result};
use dataplane::{
    units::{format_bytes, format_rate},
    view::{top_flows, ClassReading, Running},
};
use serde_json::json;

use super::Failed;
use crate::args::{Paths, TopArgs};

pub fn execute(paths: &Paths, args: &TopArgs) -> Result<(), Failed> {
    Ok(show(&Running::open(&paths.layout(), &paths.run())?, args)?)
}

fn show(running: &Running, o: &TopArgs) -> Result<()> {
    let mut classes = Vec::new();
    for (name, id) in running.classes() {
        if o.class.as_ref().is_none_or(|c| c == &name) {
            classes.push(ClassReading::read(&running.dp, name, id)?);
        }
    }
    if let Some(class) = &o.class {
        if classes.is_empty() {
            bail!("no class named {class:?}");
        }
    }
    let before = running.dp.flows()?;
    let started = std::time::Instant::now();
    std::thread::sleep(o.interval);
    let after = running.dp.flows()?;
    let secs = started.elapsed().as_secs_f64();
    let generation = running.dp.generation()?;
    let top = top_flows(
        &before,
        &after,
        secs,
        generation,
        &classes,
        &running.ifaces(),
        o.limit,
    );
    if o.json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "generation": generation,
                "interval_secs": secs,
                "classes": top,
            }))?
        );
        return Ok(());
    }
    for c in &top {
        let window = if c.tcp_window_bytes == 0 {
            String::from("none")
        } else {
            format_bytes(u64::from(c.tcp_window_bytes))
        };
        let round_trip = if c.round_trip_us == 0 {
            String::new()
        } else {
            format!(", round trip {:.2} ms", f64::from(c.round_trip_us) / 1e3)
        };
        let sharing = if c.sharing_flows == 0 {
            String::new()
        } else {
            format!(", rate shared by {} flows", c.sharing_flows)
        };
        println!(
            "{}: {} flows, {} offered, TCP window {window}{round_trip}{sharing}",
            c.class,
            c.flows,
            format_rate(c.bytes_per_sec as u64)
        );
        if c.top.is_empty() {
            continue;
        }
        println!(
            "  {:<5} {:<8} {:<46} {:>12} {:>7} {:>10} {:>8} {:>8} {:>9}",
            "PROTO", "IFACE", "FLOW", "RATE", "SHARE", "BYTES", "DROPS", "MARKS", "REPAIRED"
        );
        for f in &c.top {
            println!(
                "  {:<5} {:<8} {:<46} {:>12} {:>6.1}% {:>10} {:>8} {:>8} {:>9}",
                f.protocol,
                f.iface,
                match &f.connection {
                    Some(c) => format!("{} -> {} {c}", f.src, f.dst),
                    None => format!("{} -> {}", f.src, f.dst),
                },
                format_rate(f.bytes_per_sec as u64),
                f.share * 100.0,
                format_bytes(f.bytes),
                f.dropped_packets,
                f.marked_packets,
                f.repaired_packets
            );
        }
    }
    std::io::stdout().flush().context("writing output")
}
