//! `dataplane class list | show | set`.

use anyhow::{bail, Result};
use dataplane::{control::Request, units::format_bytes, view::Running};
use serde_json::json;

use super::{call, Failed, EXIT_REJECTED};
use crate::{
    args::{ClassCommand, Paths},
    output::{class_tables, field, print_json},
};

pub fn execute(paths: &Paths, command: ClassCommand) -> Result<(), Failed> {
    match command {
        ClassCommand::List { json } => {
            list(&Running::open(&paths.layout(), &paths.run())?, json)?;
            Ok(())
        }
        ClassCommand::Show { name, json } => {
            show(&Running::open(&paths.layout(), &paths.run())?, &name, json)?;
            Ok(())
        }
        ClassCommand::Set(set) => {
            // A typo in a unit fails here, before reaching the daemon (or finding none).
            set.class.check_units().map_err(|e| Failed {
                code: EXIT_REJECTED,
                error: anyhow::anyhow!("--{} {:?}: {}", e.key.replace('_', "-"), e.value, e.reason),
            })?;
            call(
                paths,
                &Request::SetClass {
                    change: set.class,
                    save: set.save,
                },
            )
        }
    }
}

/// `dataplane class list`.
fn list(running: &Running, json: bool) -> Result<()> {
    let tables = class_tables(running)?;
    if json {
        let ids = &running.state.ids.classes;
        let v: Vec<serde_json::Value> = tables
            .iter()
            .map(|t| {
                let mut j = serde_json::to_value(t).unwrap_or_default();
                if let (Some(obj), Some(id)) = (j.as_object_mut(), ids.get(&field(t, "name"))) {
                    obj.insert("id".into(), json!(id));
                }
                j
            })
            .collect();
        return print_json(&v);
    }
    println!(
        "{:<16} {:>4} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8}",
        "CLASS", "PRIO", "RATE", "CEIL", "BURST", "CEIL BURST", "EXCEED", "VIOLATE"
    );
    for t in &tables {
        println!(
            "{:<16} {:>4} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8}",
            field(t, "name"),
            field(t, "priority"),
            field(t, "rate"),
            field(t, "ceil"),
            field(t, "burst"),
            field(t, "ceil_burst"),
            field(t, "exceed"),
            field(t, "violate"),
        );
    }
    Ok(())
}

/// `dataplane class show NAME`.
fn show(running: &Running, name: &str, json: bool) -> Result<()> {
    let tables = class_tables(running)?;
    let Some(table) = tables.iter().find(|t| field(t, "name") == name) else {
        bail!("no class named {name:?}");
    };
    let id = running.state.ids.classes.get(name).copied();
    let mut per_iface = Vec::new();
    if let Some(id) = id {
        for (iface, slot) in running.ifaces() {
            per_iface.push((iface, running.dp.class_counters(slot, id)?));
        }
    }
    if json {
        let counters: Vec<serde_json::Value> = per_iface
            .iter()
            .map(|(iface, c)| {
                json!({
                    "iface": iface,
                    "packets": c.packets,
                    "bytes": c.bytes,
                    "green_packets": c.colour_packets[0],
                    "yellow_packets": c.colour_packets[1],
                    "red_packets": c.colour_packets[2],
                    "dropped_packets": c.dropped_packets,
                    "dropped_bytes": c.dropped_bytes,
                    "ecn_marked_packets": c.ecn_marked_packets,
                    "remarked_packets": c.remarked_packets,
                })
            })
            .collect();
        return print_json(&json!({ "id": id, "config": table, "counters": counters }));
    }
    println!(
        "class {name} (id {})",
        id.map_or("?".into(), |i| i.to_string())
    );
    for (k, v) in table {
        if k != "name" {
            println!(
                "  {k:<12} {}",
                match v {
                    toml::Value::String(s) => s.clone(),
                    v => v.to_string(),
                }
            );
        }
    }
    for (iface, c) in &per_iface {
        println!(
            "  {iface}: {} packets, {}; green {} yellow {} red {}; dropped {}, ECN-marked {}, remarked {}",
            c.packets,
            format_bytes(c.bytes),
            c.colour_packets[0],
            c.colour_packets[1],
            c.colour_packets[2],
            c.dropped_packets,
            c.ecn_marked_packets,
            c.remarked_packets
        );
    }
    Ok(())
}
