//! `dataplane stats`: counters and rates per interface and class, once or live.

use std::io::Write;

use anyhow::{bail, Context, Result};
use dataplane::{
    units::{format_bytes, format_pps, format_rate},
    view::{rows, ClassRow, Running},
};
use serde_json::json;

use super::Failed;
use crate::args::{Paths, StatsArgs};

pub fn execute(paths: &Paths, args: &StatsArgs) -> Result<(), Failed> {
    Ok(show(&Running::open(&paths.layout(), &paths.run())?, args)?)
}

fn show(running: &Running, o: &StatsArgs) -> Result<()> {
    if let Some(iface) = &o.iface {
        if !running.ifaces().iter().any(|(n, _)| n == iface) {
            bail!("interface {iface:?} is not registered with the dataplane");
        }
    }
    if let Some(class) = &o.class {
        if !running.classes().iter().any(|(n, _)| n == class) {
            bail!("no class named {class:?}");
        }
    }
    let mut before = running.sample()?;
    let mut shown = 0u64;
    loop {
        std::thread::sleep(o.interval);
        let after = running.sample()?;
        let (ifaces, classes) = rows(&before, &after);
        let classes: Vec<ClassRow> = classes
            .into_iter()
            .filter(|r| o.iface.as_ref().is_none_or(|i| &r.iface == i))
            .filter(|r| o.class.as_ref().is_none_or(|c| &r.class == c))
            .collect();
        let ifaces: Vec<_> = ifaces
            .into_iter()
            .filter(|r| o.iface.as_ref().is_none_or(|i| &r.iface == i))
            .collect();
        if o.json {
            println!(
                "{}",
                serde_json::to_string(&json!({
                    "generation": running.dp.generation()?,
                    "interval_secs": o.interval.as_secs_f64(),
                    "interfaces": ifaces,
                    "classes": classes,
                }))?
            );
        } else {
            if o.watch {
                // Clear the screen and home the cursor for the live table.
                print!("\x1b[2J\x1b[H");
                println!(
                    "dataplane stats, generation {}, every {:?} (Ctrl-C to stop)\n",
                    running.dp.generation()?,
                    o.interval
                );
            }
            class_table(&classes);
            for i in &ifaces {
                let reasons: Vec<String> =
                    i.reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{}: flow cache {} hits / {} misses; route lookups {}; redirect failures {}; \
                     outcomes: {}",
                    i.iface,
                    i.flow_cache_hits,
                    i.flow_cache_misses,
                    i.route_lookups,
                    i.redirect_failures,
                    if reasons.is_empty() {
                        "none".into()
                    } else {
                        reasons.join(" ")
                    }
                );
            }
        }
        std::io::stdout().flush().context("writing output")?;
        shown += 1;
        if !o.watch || o.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        before = after;
    }
}

fn class_table(rows: &[ClassRow]) {
    println!(
        "{:<12} {:<14} {:>12} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12} {:>12}",
        "IFACE",
        "CLASS",
        "PACKETS",
        "BYTES",
        "DROPS",
        "ECN-MARKED",
        "REMARKED",
        "PPS",
        "RATE",
        "DROP RATE"
    );
    for r in rows {
        println!(
            "{:<12} {:<14} {:>12} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12} {:>12}",
            r.iface,
            r.class,
            r.packets,
            format_bytes(r.bytes),
            r.dropped_packets,
            r.ecn_marked_packets,
            r.remarked_packets,
            format_pps(r.packets_per_sec),
            format_rate(r.bytes_per_sec as u64),
            format_pps(r.dropped_per_sec),
        );
    }
}
