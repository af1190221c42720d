//! Human tables and `--json` for the read-only commands.

use std::{io::Write, time::Duration};

use anyhow::{bail, Context, Result};
use dataplane::{
    units::{format_bytes, format_pps, format_rate},
    view::{rows, top_flows, ClassRow, Running, Status},
};
use serde_json::json;

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// `dataplane status`.
pub fn status(s: &Status, json: bool) -> Result<()> {
    if json {
        return print_json(s);
    }
    println!(
        "dataplane: layout v{} at {}, program id {} (pass program {}), up {}",
        s.layout,
        s.pin_root,
        s.program_id,
        s.pass_program_id,
        s.dataplane_uptime_secs.map_or("?".into(), duration)
    );
    println!(
        "policy:    generation {} from {}",
        s.generation,
        if s.policy_origin.is_empty() {
            "(unknown: no state file)"
        } else {
            &s.policy_origin
        }
    );
    println!(
        "routes:    generation {} (moves with every routing change the daemon hears of)",
        s.route_generation
    );
    if s.state_generation != 0 && s.state_generation != s.generation {
        println!(
            "WARNING:   the state file still describes generation {}: the daemon could not \
             write it (it retries; see its log); class and rule listings wait for it",
            s.state_generation
        );
    }
    match (s.daemon.running, s.daemon.pid) {
        (false, Some(pid)) if s.daemon.stopped => println!(
            "daemon:    stopped (pid {pid}: SIGSTOP or a debugger), not answering; \
             `kill -CONT {pid}` resumes it (the dataplane keeps working from its pins)"
        ),
        (true, pid) => println!(
            "daemon:    running (pid {}), up {}",
            pid.map_or("?".into(), |p| p.to_string()),
            s.daemon.uptime_secs.map_or("?".into(), duration)
        ),
        (false, _) => {
            println!("daemon:    not running (the dataplane keeps working from its pins)")
        }
    }
    println!(
        "reloads:   {} ok, {} rejected{}",
        s.reloads_ok,
        s.reloads_error,
        s.last_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (last: {e})"))
    );
    println!("kernel log: {}", s.kernel_log_level);
    if s.interfaces.is_empty() {
        println!("interfaces: none attached");
    }
    for i in &s.interfaces {
        println!(
            "  {:<16} {:<8} ifindex {}{}",
            i.iface,
            i.mode,
            i.ifindex.map_or("-".into(), |x| x.to_string()),
            if i.mode == "generic" {
                "  WARNING: generic mode (slow path)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Options of `dataplane stats`.
pub struct StatsOptions {
    pub iface: Option<String>,
    pub class: Option<String>,
    pub json: bool,
    pub watch: bool,
    pub interval: Duration,
    pub count: Option<u64>,
}

/// `dataplane stats`.
pub fn stats(running: &Running, o: &StatsOptions) -> Result<()> {
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

/// The policy's classes with every default filled in, as the file would say them.
fn class_tables(running: &Running) -> Result<Vec<toml::Table>> {
    let policy = running.policy_in_force()?;
    let text = policy.to_toml_string()?;
    let doc: toml::Table = toml::from_str(&text)?;
    Ok(doc
        .get("class")
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_table().cloned()).collect())
        .unwrap_or_default())
}

fn field(t: &toml::Table, key: &str) -> String {
    match t.get(key) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// `dataplane class list`.
pub fn class_list(running: &Running, json: bool) -> Result<()> {
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
pub fn class_show(running: &Running, name: &str, json: bool) -> Result<()> {
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

/// `dataplane rule list`: the rules as the policy spells them, with their index.
pub fn rule_list(running: &Running, json: bool) -> Result<()> {
    running.policy_in_force()?;
    let doc: toml::Table = toml::from_str(&running.state.policy_text)
        .context("the state file holds no readable policy")?;
    let rules: Vec<toml::Table> = doc
        .get("rule")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_table().cloned()).collect())
        .unwrap_or_default();
    if json {
        let v: Vec<serde_json::Value> = rules
            .iter()
            .enumerate()
            .map(|(i, t)| json!({ "index": i, "rule": t }))
            .collect();
        return print_json(&v);
    }
    println!("{:>5}  {:<16} MATCH", "INDEX", "CLASS");
    for (i, t) in rules.iter().enumerate() {
        let matches: Vec<String> = t
            .iter()
            .filter(|(k, _)| *k != "class")
            .map(|(k, v)| match v {
                toml::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        println!(
            "{i:>5}  {:<16} {}",
            field(t, "class"),
            if matches.is_empty() {
                "(everything)".into()
            } else {
                matches.join(" ")
            }
        );
    }
    Ok(())
}

/// Options of `dataplane top`.
pub struct TopOptions {
    pub class: Option<String>,
    pub json: bool,
    pub interval: Duration,
    pub limit: usize,
}

/// `dataplane top`: each class's heaviest flows, from the flow cache's entries.
pub fn top(running: &Running, o: &TopOptions) -> Result<()> {
    let mut classes = Vec::new();
    for (name, id) in running.classes() {
        if o.class.as_ref().is_none_or(|c| c == &name) {
            let window = running.dp.policer_state(id)?.window;
            classes.push((name, id, window));
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
        println!(
            "{}: {} flows, {} offered, TCP window {window}{round_trip}",
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
                format!("{} -> {}", f.src, f.dst),
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
