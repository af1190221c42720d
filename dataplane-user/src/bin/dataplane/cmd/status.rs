//! `dataplane status`.

use anyhow::Result;
use dataplane::view::{Running, Status};

use super::Failed;
use crate::{args::Paths, output::print_json};

pub fn execute(paths: &Paths, json: bool) -> Result<(), Failed> {
    let running = Running::open(&paths.layout(), &paths.run())?;
    print(&running.status()?, json)?;
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

fn print(s: &Status, json: bool) -> Result<()> {
    if json {
        return print_json(s);
    }
    println!(
        "dataplane: release {}, layout v{} at {}, program id {} (pass program {}), up {}",
        if s.release.is_empty() {
            "unknown (pinned before releases were recorded)"
        } else {
            &s.release
        },
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
    if let Some((version, links)) = &s.unfinished_upgrade {
        println!(
            "WARNING:   an upgrade from layout v{version} has not finished: {} still run its \
             program; `dataplane run` finishes it",
            if links.is_empty() {
                "no interfaces".to_string()
            } else {
                links.join(", ")
            }
        );
    }
    if let Some(k) = &s.kernel {
        println!("kernel:    {}", k.summary().trim_start_matches("kernel "));
    }
    for v in &s.verified {
        println!("verifier:  {}: {}", v.program, v.describe());
    }
    println!("kernel log: {}", s.kernel_log_level);
    if let Some(f) = &s.fleet {
        let ago = duration(now_secs().saturating_sub(f.since));
        println!(
            "fleet:     gateway {} of {}/ at {}; policy revision {}; etcd {}",
            f.gateway,
            f.prefix,
            f.endpoints.join(","),
            f.revision,
            if f.connected {
                format!("connected for {ago}")
            } else {
                format!("NOT ANSWERING for {ago}: the policy in force stays, reconnecting")
            }
        );
        if let Some(r) = &f.rejected {
            println!("           refused revision {}: {}", r.revision, r.error);
        }
    }
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
