//! `dataplane run`: adopt or load the pinned dataplane, attach, apply the policy, then serve
//! the control socket, reload on SIGHUP / `dataplane reload` / a changed config file, and exit
//! on SIGTERM or Ctrl-C leaving the dataplane running.
//!
//! One room per concern: this module holds the daemon's state and how a policy is applied;
//! [`run`] its event loop; `requests` the control socket's requests; `watch` what it checks
//! every watch interval (interfaces, egresses) and how it follows the config file; `fleet` how
//! it follows etcd.

mod fleet;
mod requests;
mod run;
mod watch;

pub use run::{enter_netns, run};

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::programs::XdpMode;
use tracing::{debug, error, info, warn};

use crate::{
    compile::CompiledPolicy,
    config::{read_policy_text, Policy},
    control::{Failure, Response},
    dataplane::{Dataplane, DataplaneError, Opened},
    fleet::{Demands, FleetConfig},
    kernel::KernelSupport,
    kernel_log::KernelLogLevel,
    metrics::{ClassInfo, ConfigView, FleetView, Iface, KernelView, Reloads},
    netdev::XdpFeatures,
    pins::{PinError, PinLayout},
    routes::FollowError,
    state::{AttachMode, FleetState, RunDir, State, StateError},
    upgrade::Upgrade,
};

use watch::FileDigest;

/// The default AI catalogue, built in so the binary runs without a file.
pub const DEFAULT_POLICY: &str = include_str!("../../../config/default.toml");
/// Origin of the built-in policy in messages.
pub const BUILT_IN: &str = "built-in config/default.toml";

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ModeChoice {
    /// Driver (native) XDP; fail if the driver lacks it.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// Native, falling back to generic with a warning when the driver lacks it.
    Auto,
}

/// What `dataplane run` was asked to do.
#[derive(Debug)]
pub struct DaemonConfig {
    /// Interfaces to attach to.
    pub ifaces: Vec<String>,
    /// Policy file; the built-in catalogue when absent.
    pub config: Option<PathBuf>,
    /// Attach mode.
    pub mode: ModeChoice,
    /// Pin layout.
    pub layout: PinLayout,
    /// Run directory (state, socket).
    pub run: RunDir,
    /// How often interfaces, egresses and the state file are checked (and the control loop
    /// stamps its heartbeat); the config file is followed by inotify.
    pub watch_interval: Duration,
    /// Kernel log level at start.
    pub kernel_log: KernelLogLevel,
    /// Listener to serve Prometheus metrics on (bound by the caller before anything else, so
    /// a taken port fails the start before the dataplane is touched); `None` = no metrics.
    pub metrics: Option<std::net::TcpListener>,
    /// The fleet to take the policy from instead of a file (see [`crate::fleet`]).
    pub fleet: Option<FleetConfig>,
}

/// The running daemon's state; one request at a time holds it.
pub struct Daemon {
    dp: Dataplane,
    state: State,
    cfg: DaemonConfig,
    /// Last text read from the config file (to notice changes).
    file_text: Option<FileDigest>,
    /// The policy in force as written, comments included: what runtime edits change and
    /// `--save` writes (the state file keeps it without comments).
    source_text: String,
    /// Set by a full detach: the daemon exits after answering.
    exit: bool,
    /// The policy in force (parsed `state.policy_text`).
    policy: Option<Policy>,
    /// What metrics scrapes report against; replaced after every change.
    metrics_view: Arc<std::sync::Mutex<ConfigView>>,
    /// Why the state file could not be written after the last change (retried every watch
    /// interval until it is).
    unsaved: Option<String>,
    /// Interfaces the daemon keeps attached: those it was started with and those it adopted,
    /// less those detached by command. Followed every watch interval.
    wanted: std::collections::BTreeSet<String>,
    /// Redirect failures per interface slot when last looked at (see
    /// [`Daemon::warn_redirect_failures`]).
    redirect_failures: std::collections::BTreeMap<u32, u64>,
    /// The kernel's XDP features of interfaces (`None`: this kernel cannot say).
    xdp_features: Option<XdpFeatures>,
    /// Egress interfaces found unable to take redirected frames at the last look.
    unready_egresses: std::collections::BTreeSet<String>,
    /// The share of each fleet class's budget this gateway enforces (class name -> fraction;
    /// a class not listed enforces its whole budget), see [`crate::fleet`].
    fleet_shares: std::collections::BTreeMap<String, f64>,
    /// Offered bytes of each fleet class (all interfaces) at the last demand measurement.
    fleet_offered: std::collections::BTreeMap<String, (Instant, u64)>,
    /// The demand measured last (bytes/s per fleet class).
    fleet_demand: Demands,
}

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the control socket.
    #[error(
        "a dataplane daemon is already running (it answers on {}); stop it first",
        .0.display()
    )]
    AlreadyRunning(PathBuf),
    /// The config file could not be read.
    #[error("reading {}: {cause}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The policy was rejected or could not be loaded at start.
    #[error("{0}")]
    Policy(String),
    /// Attaching to an interface failed.
    #[error("attaching to {iface} in {mode}: {cause}")]
    Attach {
        /// The interface.
        iface: String,
        /// The mode tried, with a hint where one helps.
        mode: &'static str,
        /// Why.
        cause: Box<DataplaneError>,
    },
    /// The redirect-failure counters could not be attached.
    #[error("attaching the redirect-failure counters to the XDP tracepoints: {0}")]
    Redirects(DataplaneError),
    /// The kernel side failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The pins are foreign, of another layout, or locked by another daemon.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// Routing changes cannot be followed.
    #[error(transparent)]
    Routes(#[from] FollowError),
    /// The daemon's network namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] dataplane_netns::NetnsError),
    /// An operating-system resource the daemon needs (run directory, sockets, signals).
    #[error("{what}: {cause}")]
    Io {
        /// What the daemon was doing.
        what: String,
        /// Why it failed.
        cause: std::io::Error,
    },
}

impl DaemonError {
    /// An I/O failure while doing `what`.
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
        let what = what.into();
        move |cause| DaemonError::Io { what, cause }
    }
}

/// Why applying a policy text failed.
enum ApplyError {
    /// The text or change is invalid: nothing changed.
    Rejected(String),
    /// The kernel refused: nothing changed that the old policy depends on.
    Failed(String),
}

impl ApplyError {
    fn response(self, generation: u32) -> Response {
        let (failure, message) = match self {
            ApplyError::Rejected(m) => (Failure::Rejected, m),
            ApplyError::Failed(m) => (Failure::Failed, m),
        };
        Response {
            message,
            failure: Some(failure),
            generation,
        }
    }
}

/// Longest error kept in the state file (and so in `status`): an error quoting a huge value
/// from a rejected file must not grow the state.
const MAX_STORED_ERROR: usize = 2048;

fn bounded_error(mut e: String) -> String {
    if e.len() > MAX_STORED_ERROR {
        let mut cut = MAX_STORED_ERROR;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        let dropped = e.len() - cut;
        e.truncate(cut);
        e.push_str(&format!("… ({dropped} more bytes)"));
    }
    e
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_config(path: &std::path::Path) -> Result<String, ApplyError> {
    read_policy_text(path)
        .map_err(|e| ApplyError::Rejected(format!("reading {}: {e}", path.display())))
}

/// The attach modes as errors name them.
const NATIVE: &str = "native mode (use --xdp-mode auto or generic if the driver lacks XDP)";
const GENERIC: &str = "generic mode";

/// Says so when XDP frames redirected out of `iface` would take its driver's locked
/// shared-queue mode (judged before attaching: the driver changes its queues then).
fn warn_if_xdp_tx_locked(iface: &str) {
    let cpus = match aya::util::nr_cpus() {
        Ok(n) => n as u32,
        Err((what, e)) => return warn!(%iface, "cannot count the CPUs ({what}: {e})"),
    };
    match crate::netdev::xdp_tx_locked(iface, cpus) {
        Ok(Some(why)) => warn!(%iface, "{why}"),
        Ok(None) => {}
        // Not every device answers ethtool (a veth in some kernels, tunnels): nothing to say.
        Err(e) => debug!(%iface, "its driver and channels are unknown: {e}"),
    }
}

fn attach_error(iface: &str, mode: &'static str) -> impl FnOnce(DataplaneError) -> DaemonError {
    let iface = iface.to_string();
    move |cause| DaemonError::Attach {
        iface,
        mode,
        cause: Box::new(cause),
    }
}

impl Daemon {
    /// Adopts or loads the dataplane, applies the policy, attaches. With an adopted dataplane
    /// an invalid config does not stop the daemon: the policy in force stays and the error is
    /// reported like a failed reload.
    pub fn start(cfg: DaemonConfig) -> Result<Daemon, DaemonError> {
        let (text, origin) = match &cfg.config {
            Some(path) => (
                read_policy_text(path).map_err(|cause| DaemonError::ReadConfig {
                    path: path.clone(),
                    cause,
                })?,
                path.display().to_string(),
            ),
            None => (DEFAULT_POLICY.to_string(), BUILT_IN.to_string()),
        };
        // Which build pinned what runs, as the state says: this one's is adopted as it is.
        let pinned_object = cfg.run.read().ok().flatten().map(|s| s.object);
        let (dp, opened) = Dataplane::open_pinned(&cfg.layout, pinned_object.as_deref())?;
        let layout = cfg.layout.clone();
        let fresh = matches!(opened, Opened::Fresh);
        Daemon::start_with(cfg, dp, opened, text, origin).inspect_err(|_| {
            // A dataplane this start created and could not finish goes away again. An
            // upgrade that could not finish leaves the old program on every link it had not
            // moved (the policy it applied may be in force there, in shared maps).
            if fresh {
                let _ = layout.remove_version(crate::pins::LAYOUT_VERSION);
            }
        })
    }

    fn start_with(
        cfg: DaemonConfig,
        dp: Dataplane,
        opened: Opened,
        text: String,
        origin: String,
    ) -> Result<Daemon, DaemonError> {
        // An adopted or upgraded dataplane keeps its ids and the policy in force.
        let adopted = !matches!(opened, Opened::Fresh);
        let upgrade = match opened {
            Opened::Upgrading(upgrade) => Some(upgrade),
            Opened::Fresh | Opened::Adopted => None,
        };
        let previous = if adopted { cfg.run.read()? } else { None };
        let mut state = match previous {
            Some(mut state) => {
                // A state file is not trusted blindly: ids that would make two classes share
                // counters and a policer, or that no map holds, are dropped (fresh ids follow).
                for dropped in state.ids.repair() {
                    warn!(
                        state = %cfg.run.state_file().display(),
                        "state file repaired: dropped {dropped}; it gets a fresh id"
                    );
                }
                state
            }
            None => {
                if adopted {
                    warn!(
                        state = %cfg.run.state_file().display(),
                        "adopted a pinned dataplane without its state file: class and interface ids start afresh"
                    );
                }
                State::default()
            }
        };
        // Interfaces attached before (pins, of the layout upgraded from too) stay attached;
        // requested ones are added.
        let upgraded_links = upgrade.as_ref().map_or_else(Vec::new, Upgrade::attached);
        for iface in cfg.layout.attached().into_iter().chain(upgraded_links) {
            state.attached.entry(iface).or_insert(AttachMode::Native);
        }
        state.attached.retain(|iface, _| {
            cfg.layout.link(iface).exists()
                || upgrade
                    .as_ref()
                    .is_some_and(|u| u.attached().contains(iface))
        });
        state.daemon_pid = std::process::id();
        state.daemon_started = now_secs();
        // The load's cost and the release are known to the daemon that loaded; an adopting
        // one keeps their word.
        if upgrade.is_some() || !adopted || state.verified.is_empty() {
            state.verified = dp.verified()?;
        }
        if upgrade.is_some() || !adopted {
            state.release = crate::metrics::BUILD_VERSION.to_string();
            state.object = crate::dataplane::object_digest().to_string();
        }
        // In a fleet, what is in force came from etcd: a restart keeps it until etcd says
        // otherwise (fail static), rather than falling back to the built-in catalogue.
        let (text, origin) = match &cfg.fleet {
            Some(fleet) if !state.policy_text.is_empty() => {
                let kept = state.fleet.take().unwrap_or_default();
                state.fleet = Some(FleetState {
                    gateway: fleet.gateway.clone(),
                    endpoints: fleet.endpoints.clone(),
                    prefix: fleet.prefix.clone(),
                    connected: false,
                    since: now_secs(),
                    ..kept
                });
                (state.policy_text.clone(), state.policy_origin.clone())
            }
            Some(fleet) => {
                state.fleet = Some(FleetState {
                    gateway: fleet.gateway.clone(),
                    endpoints: fleet.endpoints.clone(),
                    prefix: fleet.prefix.clone(),
                    since: now_secs(),
                    ..FleetState::default()
                });
                (text, origin)
            }
            None => {
                state.fleet = None;
                (text, origin)
            }
        };
        state.kernel_log_level = cfg.kernel_log.label().to_string();
        cfg.run
            .create()
            .map_err(DaemonError::io("creating the run directory"))?;
        let mut daemon = Daemon {
            dp,
            state,
            file_text: cfg.config.as_ref().map(|_| FileDigest::of(&text)),
            source_text: String::new(),
            cfg,
            exit: false,
            policy: None,
            metrics_view: Arc::default(),
            unsaved: None,
            wanted: std::collections::BTreeSet::new(),
            redirect_failures: std::collections::BTreeMap::new(),
            xdp_features: XdpFeatures::open().unwrap_or_else(|e| {
                warn!("cannot ask the kernel for interfaces' XDP features: {e}");
                None
            }),
            unready_egresses: std::collections::BTreeSet::new(),
            fleet_shares: std::collections::BTreeMap::new(),
            fleet_offered: std::collections::BTreeMap::new(),
            fleet_demand: Demands::new(),
        };
        if !daemon.state.policy_text.is_empty() {
            daemon.policy =
                Policy::from_toml_str(&daemon.state.policy_text, &daemon.state.policy_origin).ok();
            // What runtime edits change while a rejected config leaves this policy in force.
            daemon.source_text = daemon.state.policy_text.clone();
        }
        daemon.dp.set_kernel_log_level(daemon.cfg.kernel_log)?;
        if adopted && upgrade.is_none() {
            info!(generation = daemon.state.generation, attached = ?daemon.state.attached.keys().collect::<Vec<_>>(),
                "adopted the pinned dataplane; traffic was not interrupted");
        }
        match daemon.apply_text(&text, &origin) {
            Ok(generation) => info!(generation, %origin, "policy applied"),
            Err(ApplyError::Rejected(e)) if adopted => {
                error!(%origin, "config rejected, the policy in force stays: {e}");
                daemon.record_failure(e);
                if upgrade.is_some() {
                    // The new program gets the policy in force before any link moves to it.
                    let (text, origin) = (
                        daemon.state.policy_text.clone(),
                        daemon.state.policy_origin.clone(),
                    );
                    daemon.apply_text(&text, &origin).map_err(
                        |(ApplyError::Rejected(e) | ApplyError::Failed(e))| {
                            DaemonError::Policy(format!(
                                "upgrade stopped, the running dataplane is unchanged: the \
                                 policy in force does not apply to this release: {e}"
                            ))
                        },
                    )?;
                }
            }
            Err(ApplyError::Rejected(e) | ApplyError::Failed(e)) => {
                return Err(DaemonError::Policy(e))
            }
        }
        if let Some(upgrade) = &upgrade {
            let layout = daemon.cfg.layout.clone();
            let moved = daemon.dp.complete_upgrade(&layout, upgrade)?;
            info!(
                from_layout = upgrade.from_version(),
                to_layout = crate::pins::LAYOUT_VERSION,
                release = crate::metrics::BUILD_VERSION,
                links = ?moved,
                "upgraded the pinned dataplane in place; every link switched program atomically"
            );
        }
        let wanted = daemon.cfg.ifaces.clone();
        for iface in &wanted {
            daemon.attach(iface)?;
        }
        daemon.wanted = daemon
            .state
            .attached
            .keys()
            .cloned()
            .chain(wanted)
            .collect();
        daemon.save_state()?;
        daemon.check_egresses();
        Ok(daemon)
    }

    fn attach(&mut self, iface: &str) -> Result<(), DaemonError> {
        if let Some(mode) = self.state.attached.get(iface) {
            info!(%iface, mode = mode.label(), "already attached (adopted), left as is");
            return Ok(());
        }
        let layout = self.cfg.layout.clone();
        if self.cfg.mode != ModeChoice::Generic {
            warn_if_xdp_tx_locked(iface);
        }
        let mode = match self.cfg.mode {
            ModeChoice::Native => {
                self.dp
                    .attach_pinned(iface, XdpMode::Driver, &layout)
                    .map_err(attach_error(iface, NATIVE))?;
                AttachMode::Native
            }
            ModeChoice::Generic => {
                self.dp
                    .attach_pinned(iface, XdpMode::Skb, &layout)
                    .map_err(attach_error(iface, GENERIC))?;
                AttachMode::Generic
            }
            ModeChoice::Auto => match self.dp.attach_pinned(iface, XdpMode::Driver, &layout) {
                Ok(()) => AttachMode::Native,
                Err(e) => {
                    warn!(%iface, "NATIVE XDP FAILED ({e}); FALLING BACK TO GENERIC MODE: every packet pays for an skb first, expect a fraction of native throughput");
                    self.dp
                        .attach_pinned(iface, XdpMode::Skb, &layout)
                        .map_err(attach_error(iface, GENERIC))?;
                    AttachMode::Generic
                }
            },
        };
        info!(%iface, mode = mode.label(), "attached");
        self.state.attached.insert(iface.to_string(), mode);
        // Recorded here, where the interface is visible: a daemon run with --netns sees it,
        // the CLI in the host's namespace does not.
        if let Some(index) = crate::dataplane::ifindex(iface) {
            self.state.ifindexes.insert(iface.to_string(), index);
        }
        Ok(())
    }

    /// Validates `text`, gives its classes and interfaces their stable ids, writes the new
    /// generation beside the live one and switches. On any error nothing the live generation
    /// uses has changed.
    fn apply_text(&mut self, text: &str, origin: &str) -> Result<u32, ApplyError> {
        let policy =
            Policy::from_toml_str(text, origin).map_err(|e| ApplyError::Rejected(e.to_string()))?;
        self.apply_policy(text, origin, &policy)
    }

    fn apply_policy(
        &mut self,
        text: &str,
        origin: &str,
        policy: &Policy,
    ) -> Result<u32, ApplyError> {
        // Interfaces about to be attached get their slots in the same generation.
        let mut attached: Vec<String> = self.state.attached.keys().cloned().collect();
        for iface in &self.cfg.ifaces {
            if !attached.contains(iface) {
                attached.push(iface.clone());
            }
        }
        let (ids, assignment) = self
            .state
            .ids
            .assign(policy, &attached)
            .map_err(ApplyError::Rejected)?;
        let mut compiled = CompiledPolicy::with_ids(
            policy,
            &assignment.class_ids,
            &assignment.policy_iface_slots,
        );
        // A fleet class enforces this gateway's share of its budget from the start.
        for (spec, id) in policy.classes.iter().zip(&assignment.class_ids) {
            if let Some(config) = self.shared_class(spec) {
                compiled.classes[*id as usize] = config;
            }
        }
        Dataplane::check_fits(&compiled).map_err(|e| ApplyError::Rejected(e.to_string()))?;
        let failed = |e: crate::dataplane::DataplaneError| ApplyError::Failed(e.to_string());
        for class in &assignment.fresh_classes {
            self.dp.reset_class(*class).map_err(failed)?;
        }
        for slot in &assignment.fresh_ifaces {
            self.dp.reset_iface(*slot).map_err(failed)?;
        }
        for missing in self
            .dp
            .register_slots(policy, &assignment.ifaces)
            .map_err(failed)?
        {
            warn!(iface = %missing, "interface in the policy does not exist here; its rules cannot match");
        }
        let generation = self.dp.apply(&compiled).map_err(failed)?;
        // Interfaces the policy and attachments no longer name stop being counted apart.
        let gone: Vec<String> = self
            .state
            .ids
            .ifaces
            .keys()
            .filter(|n| !ids.ifaces.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Err(e) = self.dp.unregister_iface(&name) {
                warn!(iface = %name, "unregistering: {e}");
            }
        }
        self.state.ids = ids;
        self.state.generation = generation;
        self.source_text = text.to_string();
        self.state.policy_text =
            crate::config::without_comments(text).unwrap_or_else(|| text.to_string());
        self.state.policy_origin = origin.to_string();
        self.policy = Some(policy.clone());
        Ok(generation)
    }

    pub(super) fn record_failure(&mut self, e: String) {
        self.state.reloads_error += 1;
        self.state.last_error = Some(bounded_error(e));
    }

    /// Writes the state file and publishes the new configuration to metrics scrapes.
    pub(super) fn save_state(&self) -> Result<(), StateError> {
        self.publish_metrics_view();
        // Compiling a large policy allocates tens of MB for a moment; give them back so the
        // daemon's resident size stays that of the policy in force.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        self.cfg.run.write(&self.state)
    }

    pub(super) fn publish_metrics_view(&self) {
        let classes = self.policy.as_ref().map_or_else(Vec::new, |p| {
            p.classes
                .iter()
                .filter_map(|c| {
                    let id = self.state.ids.classes.get(&c.name)?;
                    Some((ClassInfo::from(c), *id))
                })
                .collect()
        });
        let ifaces = self
            .state
            .ids
            .ifaces
            .iter()
            .map(|(name, slot)| Iface {
                name: name.clone(),
                slot: *slot,
                attached: self.state.attached.get(name).copied(),
            })
            .collect();
        let view = ConfigView {
            classes,
            ifaces,
            kernel: KernelSupport::probe().ok().map(|k| KernelView {
                support: k.clone(),
                verified: self.state.verified.clone(),
            }),
            generation: self.state.generation,
            reloads: Reloads {
                ok: self.state.reloads_ok,
                error: self.state.reloads_error,
            },
            fleet: self.state.fleet.as_ref().map(|f| FleetView {
                connected: f.connected,
                revision: f.revision,
                classes: self
                    .fleet_budgets()
                    .into_iter()
                    .map(|(class, budget)| {
                        let fraction = self.fleet_shares.get(&class).copied().unwrap_or(1.0);
                        let demand = self.fleet_demand.get(&class).copied().unwrap_or(0);
                        let share = (budget as f64 * fraction) as u64;
                        (class, share, demand)
                    })
                    .collect(),
            }),
        };
        *self.metrics_view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    pub(super) fn ok(&self, message: String) -> Response {
        Response {
            message,
            failure: None,
            generation: self.state.generation,
        }
    }

    /// Answers a change that is in force: it stays in force whether or not the state file
    /// can be written; when it cannot, the answer says so, the daemon retries every watch
    /// interval, and the read-only commands refuse to show the older policy meanwhile.
    pub(super) fn persist(&mut self, message: String) -> Response {
        match self.save_state() {
            Ok(()) => {
                self.unsaved = None;
                self.ok(message)
            }
            Err(e) => {
                let why = format!("{e}");
                error!("the change is in force, but the state file was not written: {why}");
                self.unsaved = Some(why.clone());
                self.ok(format!(
                    "{message} (in force; warning: the state file could not be written: {why}; \
                     the daemon retries every {:?})",
                    self.cfg.watch_interval
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_are_bounded_on_a_char_boundary() {
        assert_eq!(bounded_error("short".into()), "short");
        let long = "é".repeat(5000);
        let kept = bounded_error(long.clone());
        assert!(kept.len() < MAX_STORED_ERROR + 40, "{}", kept.len());
        assert!(kept.ends_with(" more bytes)"));
        assert!(long.starts_with(kept.split('…').next().expect("prefix")));
    }
}
