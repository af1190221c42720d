//! What the read-only commands (`status`, `stats`, `top`, `class list`, `rule list`) and the
//! metrics exporter show, read from the pins and the state file, so they work with the daemon down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane_common::{
    fair::{epoch_of, flows_sharing_at},
    maps::{ClassCounters, FlowEntry, FlowKey, IfaceCounters, PolicerState},
    reason::Reason,
    spray::UET_CONNECTIONLESS,
    ROCEV2_UDP_PORT,
};
use serde::Serialize;

use crate::{
    config::{ConfigError, Policy},
    control,
    dataplane::{Dataplane, DataplaneError, PROGRAM_NAME},
    pins::{PinError, PinLayout, LAYOUT_VERSION},
    state::{RunDir, State, StateError},
};

/// Why the running dataplane cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Nothing is pinned under the root.
    #[error(
        "no dataplane is pinned under {} (layout v{LAYOUT_VERSION}); start one with \
         `dataplane run`",
        .0.display()
    )]
    NotPinned(std::path::PathBuf),
    /// The pins are incomplete, foreign or of another layout.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The kernel side could not be read.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The state file could not be read.
    #[error(transparent)]
    State(#[from] StateError),
    /// The state file's policy does not parse.
    #[error("the state file's policy: {0}")]
    StatePolicy(ConfigError),
    /// The state file holds no policy.
    #[error("the state file holds no policy (was the dataplane started by this version?)")]
    NoPolicy,
    /// The state file is behind the kernel.
    #[error(
        "the state file describes generation {state}, but the kernel enforces generation \
         {kernel}: the daemon could not write its state (it retries; see its log), so the \
         policy in force cannot be shown"
    )]
    StateBehind {
        /// The state file's generation.
        state: u32,
        /// The kernel's.
        kernel: u32,
    },
    /// The program's information could not be read.
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
}

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
    pub fn open(layout: &PinLayout, run: &RunDir) -> Result<Running, ViewError> {
        if !layout.is_pinned() {
            if let Some(version) = layout.check_version()? {
                let found = layout.of_version(version).dir();
                return Err(PinError::OlderVersion { found, version }.into());
            }
            if layout.has_remnants() {
                // Maps or links without the program pin: a dataplane may well still run.
                return Err(PinError::Missing(layout.program(PROGRAM_NAME)).into());
            }
            return Err(ViewError::NotPinned(layout.root().to_path_buf()));
        }
        let dp = Dataplane::adopt(layout)?;
        let state = run.read()?.unwrap_or_default();
        let policy = (!state.policy_text.is_empty())
            .then(|| Policy::from_toml_str(&state.policy_text, &state.policy_origin))
            .transpose()
            .map_err(ViewError::StatePolicy)?;
        Ok(Running {
            dp,
            state,
            policy,
            daemon_running: control::is_running(&run.socket()),
            layout: layout.clone(),
        })
    }

    /// The policy in force, as the state file holds it: an error when there is none, or when
    /// the file is behind the kernel (the daemon applied a generation it could not write
    /// down yet), so no listing shows an older policy than the one enforced.
    pub fn policy_in_force(&self) -> Result<&Policy, ViewError> {
        let policy = self.policy.as_ref().ok_or(ViewError::NoPolicy)?;
        let kernel = self.dp.generation()?;
        if kernel != self.state.generation {
            return Err(ViewError::StateBehind {
                state: self.state.generation,
                kernel,
            });
        }
        Ok(policy)
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
    pub fn sample(&self) -> Result<Sample, ViewError> {
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
    pub fn status(&self) -> Result<Status, ViewError> {
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
            state_generation: self.state.generation,
            route_generation: self.dp.route_generation()?.get()?,
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
            fleet: self.state.fleet.clone(),
            release: self.state.release.clone(),
            unfinished_upgrade: self.layout.check_version()?.map(|version| {
                let links = self.layout.of_version(version).attached();
                (version, links)
            }),
            kernel: crate::kernel::KernelSupport::probe().ok().cloned(),
            verified: if self.state.verified.is_empty() {
                self.dp.verified()?
            } else {
                self.state.verified.clone()
            },
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
    /// Bytes per second offered (classified) over the interval.
    pub bytes_per_sec: f64,
    /// Bytes per second admitted (classified and not dropped) over the interval.
    pub admitted_bytes_per_sec: f64,
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
    /// Route lookups for packets arriving here (forwarded flows on a cached next hop need
    /// none).
    pub route_lookups: u64,
    /// Frames forwarded out of this interface that it could not take.
    pub redirect_failures: u64,
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
            route_lookups: iface.counters.route_lookups,
            redirect_failures: iface.counters.redirect_failures,
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
                admitted_bytes_per_sec: rate(
                    c.bytes.saturating_sub(c.dropped_bytes),
                    p.bytes.saturating_sub(p.dropped_bytes),
                ),
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
    /// Generation the state file describes (behind `generation` while the daemon cannot
    /// write it).
    pub state_generation: u32,
    /// Route generation: moves on every routing change the daemon heard of, and each
    /// forwarded flow looks its route up again after a move.
    pub route_generation: u32,
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
    /// The fleet the daemon takes its policy from, and how it stands with it.
    pub fleet: Option<crate::state::FleetState>,
    /// The release that loaded the running dataplane (empty: one from before releases were
    /// recorded).
    pub release: String,
    /// An older layout still pinned beside this one (an upgrade that has not finished), and
    /// the interfaces whose links still run its program.
    pub unfinished_upgrade: Option<(u32, Vec<String>)>,
    /// The kernel's features as probed now (absent where the probes could not run).
    pub kernel: Option<crate::kernel::KernelSupport>,
    /// What verifying each XDP program cost.
    pub verified: Vec<crate::kernel::Verified>,
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

/// One flow in `dataplane top`.
#[derive(Clone, Debug, Serialize)]
pub struct FlowRow {
    /// Ingress interface.
    pub iface: String,
    /// "tcp", "udp" or the IP protocol number.
    pub protocol: String,
    /// Source address and port (only the address for a sprayed connection: its source
    /// ports are entropy).
    pub src: String,
    /// Destination address and port.
    pub dst: String,
    /// A sprayed transport's connection (see `dataplane_common::spray`): `qp 0x001234` for
    /// RoCEv2, `pdc 42` (the source PDC id) or `no pdc` for UET; absent for other flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Packets the flow offered since it entered the flow cache.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes per second offered over the interval.
    pub bytes_per_sec: f64,
    /// Share of the class's offered rate over the interval (0..=1).
    pub share: f64,
    /// Packets dropped.
    pub dropped_packets: u32,
    /// Packets newly marked CE.
    pub marked_packets: u32,
    /// TCP retransmissions admitted on the repair allowance.
    pub repaired_packets: u32,
}

/// A class in `dataplane top`: its heaviest flows.
#[derive(Clone, Debug, Serialize)]
pub struct ClassFlows {
    /// Class name.
    pub class: String,
    /// Flows of the class the cache holds.
    pub flows: usize,
    /// Bytes per second its flows offered over the interval.
    pub bytes_per_sec: f64,
    /// The TCP window each of the class's flows gets (bytes, its share of the class window),
    /// 0 while it narrows none.
    pub tcp_window_bytes: u32,
    /// The round trip of the class's TCP connections as the window control measured it from
    /// their handshakes (µs), 0 before a first one.
    pub round_trip_us: u32,
    /// The flows its rate is shared by (`flow_fairness`: the flows that sent in the last
    /// epoch while the class was near its rate); 0 while none did.
    pub sharing_flows: u32,
    /// The heaviest flows by rate over the interval, then by bytes.
    pub top: Vec<FlowRow>,
}

/// A class's shared policer state as `dataplane top` read it.
pub struct ClassReading {
    /// Class name.
    pub name: String,
    /// Class id.
    pub id: u32,
    /// Its policer state.
    pub state: PolicerState,
    /// The fair-share epoch at the read (`dataplane_common::fair::epoch_of` of the kernel
    /// clock).
    pub epoch: u32,
}

impl ClassReading {
    /// Reads class `id`'s state now.
    pub fn read(dp: &Dataplane, name: String, id: u32) -> Result<ClassReading, DataplaneError> {
        Ok(ClassReading {
            name,
            id,
            state: dp.policer_state(id)?,
            epoch: epoch_of(crate::dataplane::monotonic_ns()),
        })
    }
}

/// What `dataplane top` shows: per class of `classes`, its `limit` heaviest flows between two
/// reads of the flow cache `secs` apart. Entries of other generations than `generation`
/// belong to an older policy's classes and are left out.
pub fn top_flows(
    before: &[FlowEntry],
    after: &[FlowEntry],
    secs: f64,
    generation: u32,
    classes: &[ClassReading],
    ifaces: &[(String, u32)],
    limit: usize,
) -> Vec<ClassFlows> {
    let secs = secs.max(1e-9);
    let earlier: std::collections::HashMap<FlowKey, &FlowEntry> =
        before.iter().map(|e| (e.key, e)).collect();
    classes
        .iter()
        .map(|c| {
            let mut rows: Vec<FlowRow> = after
                .iter()
                .filter(|e| e.generation == generation && e.class == c.id)
                .map(|e| {
                    // A flow new in the interval offered all its bytes in it.
                    let then = earlier
                        .get(&e.key)
                        .filter(|b| b.generation == generation)
                        .map_or(0, |b| b.state.bytes);
                    flow_row(e, ifaces, e.state.bytes.saturating_sub(then) as f64 / secs)
                })
                .collect();
            let total: f64 = rows.iter().map(|r| r.bytes_per_sec).sum();
            for r in &mut rows {
                r.share = if total > 0.0 {
                    r.bytes_per_sec / total
                } else {
                    0.0
                };
            }
            rows.sort_by(|a, b| {
                b.bytes_per_sec
                    .total_cmp(&a.bytes_per_sec)
                    .then(b.bytes.cmp(&a.bytes))
            });
            let flows = rows.len();
            rows.truncate(limit);
            ClassFlows {
                class: c.name.clone(),
                flows,
                bytes_per_sec: total,
                tcp_window_bytes: c.state.window.flow_bytes,
                round_trip_us: c.state.window.rtt_us,
                sharing_flows: flows_sharing_at(&c.state.fair, c.epoch),
                top: rows,
            }
        })
        .collect()
}

fn flow_row(e: &FlowEntry, ifaces: &[(String, u32)], bytes_per_sec: f64) -> FlowRow {
    let k = &e.key;
    let addr = |a: &[u8; 16]| -> std::net::IpAddr {
        if k.flags & FlowKey::FLAG_V6 != 0 {
            std::net::Ipv6Addr::from(*a).into()
        } else {
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        }
    };
    let sprayed = k.flags & FlowKey::FLAG_CONNECTION != 0;
    let end = |a: &[u8; 16], port: Option<u16>| {
        let ip = addr(a);
        match (k.flags & FlowKey::FLAG_PORTS != 0, port) {
            (true, Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
            _ => ip.to_string(),
        }
    };
    FlowRow {
        iface: ifaces
            .iter()
            .find(|(_, s)| *s == u32::from(k.iface_slot))
            .map_or_else(|| format!("slot {}", k.iface_slot), |(n, _)| n.clone()),
        protocol: match k.protocol {
            6 => "tcp".into(),
            17 => "udp".into(),
            p => p.to_string(),
        },
        src: end(&k.src, (!sprayed).then_some(k.src_port)),
        dst: end(&k.dst, Some(k.dst_port)),
        connection: sprayed.then(|| match (k.dst_port, k.connection) {
            (ROCEV2_UDP_PORT, qp) => format!("qp {qp:#08x}"),
            (_, UET_CONNECTIONLESS) => "no pdc".to_string(),
            (_, pdc) => format!("pdc {pdc}"),
        }),
        packets: e.state.packets,
        bytes: e.state.bytes,
        bytes_per_sec,
        share: 0.0,
        dropped_packets: e.state.dropped_packets,
        marked_packets: e.state.marked_packets,
        repaired_packets: e.state.repaired_packets,
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::{fair::FairState, flow::FlowState, window::WindowState};

    use super::*;

    fn flow(port: u16, class: u32, generation: u32, bytes: u64) -> FlowEntry {
        FlowEntry {
            key: FlowKey {
                src: [198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                dst: [198, 19, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                src_port: port,
                dst_port: 5201,
                iface_slot: 1,
                protocol: 6,
                flags: FlowKey::FLAG_PORTS,
                ..FlowKey::default()
            },
            generation,
            class,
            state: FlowState {
                bytes,
                packets: bytes / 1000,
                ..FlowState::default()
            },
        }
    }

    #[test]
    fn top_ranks_a_class_s_flows_by_rate_with_their_shares() {
        let before = [flow(1, 1, 2, 1000), flow(2, 1, 2, 500_000)];
        let after = [
            flow(1, 1, 2, 301_000),
            flow(2, 1, 2, 600_000),
            flow(3, 1, 2, 100_000),   // new in the interval
            flow(4, 0, 2, 9_000_000), // another class
            flow(5, 1, 1, 9_000_000), // an older policy's class 1
        ];
        let state = PolicerState {
            window: WindowState {
                window_bytes: 3 * 2896,
                rtt_us: 5_000,
                flow_bytes: 2896,
                ..WindowState::default()
            },
            fair: FairState {
                epoch: 40,
                active: 2,
                active_last: 3,
                _pad: 0,
            },
            ..PolicerState::default()
        };
        let classes = [ClassReading {
            name: "bulk".to_string(),
            id: 1,
            state,
            epoch: 40,
        }];
        let ifaces = [("g0".to_string(), 1)];
        let top = top_flows(&before, &after, 2.0, 2, &classes, &ifaces, 2);
        assert_eq!(top.len(), 1);
        let bulk = &top[0];
        assert_eq!(
            (
                bulk.flows,
                bulk.tcp_window_bytes,
                bulk.round_trip_us,
                bulk.sharing_flows
            ),
            (3, 2896, 5_000, 3)
        );
        assert_eq!(bulk.bytes_per_sec, 250_000.0);
        let rows: Vec<(&str, f64, f64)> = bulk
            .top
            .iter()
            .map(|r| (r.src.as_str(), r.bytes_per_sec, r.share))
            .collect();
        assert_eq!(
            rows,
            [
                ("198.18.1.2:1", 150_000.0, 0.6),
                ("198.18.1.2:2", 50_000.0, 0.2)
            ],
            "two of three flows, heaviest first"
        );
        assert_eq!(bulk.top[0].dst, "198.19.0.2:5201");
        assert_eq!(
            (bulk.top[0].iface.as_str(), bulk.top[0].protocol.as_str()),
            ("g0", "tcp")
        );
    }

    #[test]
    fn a_sprayed_connection_s_row_names_its_connection_not_a_source_port() {
        let mut e = flow(0, 1, 2, 1000);
        e.key.protocol = 17;
        e.key.flags |= FlowKey::FLAG_CONNECTION;
        for (port, connection, shown) in [
            (4791, 0x12_3456, "qp 0x123456"),
            (4793, 42, "pdc 42"),
            (4793, UET_CONNECTIONLESS, "no pdc"),
        ] {
            e.key.dst_port = port;
            e.key.connection = connection;
            let row = flow_row(&e, &[], 0.0);
            assert_eq!(row.src, "198.18.1.2", "no source port");
            assert_eq!(row.dst, format!("198.19.0.2:{port}"));
            assert_eq!(row.connection.as_deref(), Some(shown));
        }
        assert_eq!(flow_row(&flow(7, 1, 2, 1), &[], 0.0).connection, None);
        assert_eq!(flow_row(&flow(7, 1, 2, 1), &[], 0.0).src, "198.18.1.2:7");
    }
}
