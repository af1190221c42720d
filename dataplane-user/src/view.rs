//! What the read-only commands (`status`, `stats`, `class list`, `rule list`) and the metrics
//! exporter show, read from the pins and the state file, so they work with the daemon down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use dataplane_common::{
    maps::{ClassCounters, IfaceCounters},
    reason::Reason,
};
use serde::Serialize;

use crate::{
    config::Policy,
    control,
    dataplane::{Dataplane, PROGRAM_NAME},
    pins::{PinError, PinLayout, LAYOUT_VERSION},
    state::{RunDir, State},
};

/// The running dataplane as the pins and state file describe it.
pub struct Running {
    /// The adopted dataplane (read-only use).
    pub dp: Dataplane,
    /// The daemon's state (default when the file is missing).
    pub state: State,
    /// The policy in force, when the state holds it.
    pub policy: Option<Policy>,
    /// Whether a daemon answers on the control socket.
    pub daemon_running: bool,
    /// Pin layout.
    pub layout: PinLayout,
}

impl Running {
    /// Opens the pinned dataplane; a clear error when there is none.
    pub fn open(layout: &PinLayout, run: &RunDir) -> Result<Running> {
        if !layout.is_pinned() {
            layout.check_version()?;
            if layout.has_remnants() {
                // Maps or links without the program pin: a dataplane may well still run.
                return Err(PinError::Missing(layout.program(PROGRAM_NAME)).into());
            }
            anyhow::bail!(
                "no dataplane is pinned under {} (layout v{LAYOUT_VERSION}); start one with `dataplane run`",
                layout.root().display()
            );
        }
        let dp = Dataplane::adopt(layout)?;
        let state = run.read()?.unwrap_or_default();
        let policy = (!state.policy_text.is_empty())
            .then(|| Policy::from_toml_str(&state.policy_text, &state.policy_origin))
            .transpose()
            .context("the state file's policy")?;
        Ok(Running {
            dp,
            state,
            policy,
            daemon_running: control::is_running(&run.socket()),
            layout: layout.clone(),
        })
    }

    /// Class names by id, in policy order.
    pub fn classes(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = match &self.policy {
            Some(p) => p
                .classes
                .iter()
                .filter_map(|c| {
                    self.state
                        .ids
                        .classes
                        .get(&c.name)
                        .map(|id| (c.name.clone(), *id))
                })
                .collect(),
            None => Vec::new(),
        };
        if out.is_empty() {
            out = self
                .state
                .ids
                .classes
                .iter()
                .map(|(n, id)| (n.clone(), *id))
                .collect();
        }
        out
    }

    /// Interfaces with their slots: attached ones and those the policy names.
    pub fn ifaces(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .state
            .ids
            .ifaces
            .iter()
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        v.sort_by_key(|(_, s)| *s);
        v
    }

    /// Reads every counter now.
    pub fn sample(&self) -> Result<Sample> {
        let classes = self.classes();
        let mut ifaces = Vec::new();
        for (name, slot) in self.ifaces() {
            let counters = self.dp.iface_counters(slot)?;
            let mut per_class = Vec::new();
            for (class, id) in &classes {
                per_class.push((class.clone(), self.dp.class_counters(slot, *id)?));
            }
            ifaces.push(IfaceSample {
                name,
                counters,
                classes: per_class,
            });
        }
        Ok(Sample {
            at: SystemTime::now(),
            ifaces,
        })
    }

    /// The status summary.
    pub fn status(&self) -> Result<Status> {
        let stopped = self.daemon_running && process_stopped(self.state.daemon_pid);
        let info = self.dp.program()?.info()?;
        let loaded = info
            .loaded_at()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Status {
            pin_root: self.layout.root().display().to_string(),
            layout: LAYOUT_VERSION,
            program_id: info.id(),
            pass_program_id: self.dp.pass_program()?.info()?.id(),
            dataplane_uptime_secs: loaded.map(|l| now.saturating_sub(l).as_secs()),
            generation: self.dp.generation()?,
            policy_origin: self.state.policy_origin.clone(),
            interfaces: self
                .layout
                .attached()
                .into_iter()
                .map(|iface| AttachedIface {
                    mode: self
                        .state
                        .attached
                        .get(&iface)
                        .map_or("unknown", |m| m.label())
                        .to_string(),
                    ifindex: self
                        .state
                        .ifindexes
                        .get(&iface)
                        .copied()
                        .or_else(|| crate::dataplane::ifindex(&iface)),
                    iface,
                })
                .collect(),
            daemon: DaemonStatus {
                running: self.daemon_running && !stopped,
                stopped,
                pid: (self.state.daemon_pid != 0).then_some(self.state.daemon_pid),
                uptime_secs: (self.daemon_running && self.state.daemon_started > 0)
                    .then(|| now.as_secs().saturating_sub(self.state.daemon_started)),
            },
            reloads_ok: self.state.reloads_ok,
            reloads_error: self.state.reloads_error,
            last_error: self.state.last_error.clone(),
            kernel_log_level: self.state.kernel_log_level.clone(),
        })
    }
}

/// Counters of one interface at one moment.
#[derive(Clone, Debug)]
pub struct IfaceSample {
    /// Interface name.
    pub name: String,
    /// Outcomes by reason, flow cache.
    pub counters: IfaceCounters,
    /// Per class (name, counters), in policy order.
    pub classes: Vec<(String, ClassCounters)>,
}

/// Every counter at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was read.
    pub at: SystemTime,
    /// Per interface.
    pub ifaces: Vec<IfaceSample>,
}

impl Sample {
    /// The counters of every interface added up, as one interface named `name`.
    pub fn merged(&self, name: &str) -> Sample {
        let mut all = IfaceSample {
            name: name.to_string(),
            counters: IfaceCounters::default(),
            classes: Vec::new(),
        };
        for iface in &self.ifaces {
            all.counters.add(&iface.counters);
            for (class, c) in &iface.classes {
                match all.classes.iter_mut().find(|(n, _)| n == class) {
                    Some((_, sum)) => sum.add(c),
                    None => all.classes.push((class.clone(), *c)),
                }
            }
        }
        Sample {
            at: self.at,
            ifaces: vec![all],
        }
    }
}

/// One row of `dataplane stats`.
#[derive(Clone, Debug, Serialize)]
pub struct ClassRow {
    /// Interface.
    pub iface: String,
    /// Class.
    pub class: String,
    /// Packets classified.
    pub packets: u64,
    /// Bytes classified.
    pub bytes: u64,
    /// Packets dropped by policy.
    pub dropped_packets: u64,
    /// Bytes dropped by policy.
    pub dropped_bytes: u64,
    /// Packets ECN-marked.
    pub ecn_marked_packets: u64,
    /// Packets re-marked (DSCP).
    pub remarked_packets: u64,
    /// Packets per second over the interval.
    pub packets_per_sec: f64,
    /// Bytes per second over the interval.
    pub bytes_per_sec: f64,
    /// Drops per second over the interval.
    pub dropped_per_sec: f64,
}

/// Per-interface outcome counts in `dataplane stats`.
#[derive(Clone, Debug, Serialize)]
pub struct IfaceRow {
    /// Interface.
    pub iface: String,
    /// Count per outcome reason (only non-zero ones).
    pub reasons: std::collections::BTreeMap<&'static str, u64>,
    /// Flow-cache hits.
    pub flow_cache_hits: u64,
    /// Flow-cache misses.
    pub flow_cache_misses: u64,
}

/// Rows of `dataplane stats` from two samples (rates over the time between them).
pub fn rows(before: &Sample, after: &Sample) -> (Vec<IfaceRow>, Vec<ClassRow>) {
    let secs = after
        .at
        .duration_since(before.at)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
        .max(1e-9);
    let mut ifaces = Vec::new();
    let mut classes = Vec::new();
    for iface in &after.ifaces {
        let prev = before.ifaces.iter().find(|i| i.name == iface.name);
        ifaces.push(IfaceRow {
            iface: iface.name.clone(),
            reasons: Reason::ALL
                .iter()
                .map(|r| (r.label(), iface.counters.reasons[*r as usize]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            flow_cache_hits: iface.counters.flow_cache_hits,
            flow_cache_misses: iface.counters.flow_cache_misses,
        });
        for (class, c) in &iface.classes {
            let p = prev
                .and_then(|p| p.classes.iter().find(|(n, _)| n == class))
                .map(|(_, c)| *c)
                .unwrap_or_default();
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            classes.push(ClassRow {
                iface: iface.name.clone(),
                class: class.clone(),
                packets: c.packets,
                bytes: c.bytes,
                dropped_packets: c.dropped_packets,
                dropped_bytes: c.dropped_bytes,
                ecn_marked_packets: c.ecn_marked_packets,
                remarked_packets: c.remarked_packets,
                packets_per_sec: rate(c.packets, p.packets),
                bytes_per_sec: rate(c.bytes, p.bytes),
                dropped_per_sec: rate(c.dropped_packets, p.dropped_packets),
            });
        }
    }
    (ifaces, classes)
}

/// `dataplane status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Pin root.
    pub pin_root: String,
    /// Layout version.
    pub layout: u32,
    /// Kernel id of the dataplane program.
    pub program_id: u32,
    /// Kernel id of the pass program.
    pub pass_program_id: u32,
    /// Seconds since the program was loaded.
    pub dataplane_uptime_secs: Option<u64>,
    /// Generation in force.
    pub generation: u32,
    /// Where the policy came from.
    pub policy_origin: String,
    /// Attached interfaces.
    pub interfaces: Vec<AttachedIface>,
    /// The daemon.
    pub daemon: DaemonStatus,
    /// Successful reloads.
    pub reloads_ok: u64,
    /// Rejected reloads.
    pub reloads_error: u64,
    /// Last rejected reload.
    pub last_error: Option<String>,
    /// Kernel log level.
    pub kernel_log_level: String,
}

/// An attached interface.
#[derive(Clone, Debug, Serialize)]
pub struct AttachedIface {
    /// Name.
    pub iface: String,
    /// "native" or "generic".
    pub mode: String,
    /// Ifindex, when the interface exists.
    pub ifindex: Option<u32>,
}

/// Whether process `pid` is stopped (state T or t in /proc/PID/stat).
fn process_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses and may hold spaces.
            let after = stat.rsplit_once(')')?.1;
            after
                .split_whitespace()
                .next()
                .map(|st| st == "T" || st == "t")
        })
        .unwrap_or(false)
}

/// The daemon's part of the status.
#[derive(Clone, Debug, Serialize)]
pub struct DaemonStatus {
    /// Whether it answers on its socket.
    pub running: bool,
    /// Its process is stopped (SIGSTOP, a debugger): it would accept a connection but not
    /// answer it.
    pub stopped: bool,
    /// Pid of the last daemon.
    pub pid: Option<u32>,
    /// Seconds it has been running.
    pub uptime_secs: Option<u64>,
}
