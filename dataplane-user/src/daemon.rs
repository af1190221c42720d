//! `dataplane run`: adopt or load the pinned dataplane, attach, apply the policy, then serve
//! the control socket, reload on SIGHUP / `dataplane reload` / a changed config file, and exit
//! on SIGTERM or Ctrl-C leaving the dataplane running.

use std::{
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{debug, error, info, warn};

use crate::{
    compile::class_config,
    compile::CompiledPolicy,
    config::ClassSpec,
    config::{read_policy_text, Policy},
    control::{Failure, Request, Response, MAX_REQUEST_BYTES, REQUEST_TIMEOUT},
    dataplane::Dataplane,
    detach::{self, DetachError},
    edit,
    fleet::{
        own_fractions, Demands, Fleet, FleetConfig, FleetError, GatewayReport, Rejection,
        REPORT_RENEWAL, SHARE_PERIOD,
    },
    kernel_log::{self, KernelLogLevel},
    metrics::{
        self, http::SnapshotSource, snapshot, ClassInfo, ConfigView, CounterReader, FleetView,
        Iface, Reloads,
    },
    netdev::XdpFeatures,
    pins::PinLayout,
    routes::FollowError,
    state::{AttachMode, FleetState, RunDir, State},
};

/// The default AI catalogue, built in so the binary runs without a file.
pub const DEFAULT_POLICY: &str = include_str!("../../config/default.toml");
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
    /// How often the config file is checked for changes.
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
    /// A changed text seen in the config file and since when, until it settles.
    pending_file: Option<(FileDigest, Instant)>,
    /// The config file's metadata when the watcher last read it.
    file_stamp: Option<FileStamp>,
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

/// What the file watcher remembers of a config file's text: enough to notice a change, not
/// the text (a rejected file of many MiB must not stay in memory).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileDigest {
    len: usize,
    hash: u64,
}

impl FileDigest {
    fn of(text: &str) -> FileDigest {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        FileDigest {
            len: text.len(),
            hash: h.finish(),
        }
    }
}

/// What the file watcher checks before reading a config file: size, modification and change
/// times (nanoseconds) and inode. Any write or replacement moves at least one of them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: u64,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
        }
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

/// Allocations from this size on are mapped on their own (glibc's default before it adapts).
const MMAP_THRESHOLD: i32 = 128 << 10;

/// How long a changed config file must stay the same before the watcher applies it.
const FILE_SETTLE: Duration = Duration::from_secs(1);

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

impl Daemon {
    /// Adopts or loads the dataplane, applies the policy, attaches. With an adopted dataplane
    /// an invalid config does not stop the daemon: the policy in force stays and the error is
    /// reported like a failed reload.
    pub fn start(cfg: DaemonConfig) -> Result<Daemon> {
        let (text, origin) = match &cfg.config {
            Some(path) => (
                read_policy_text(path).with_context(|| format!("reading {}", path.display()))?,
                path.display().to_string(),
            ),
            None => (DEFAULT_POLICY.to_string(), BUILT_IN.to_string()),
        };
        let (dp, adopted) = Dataplane::open_pinned(&cfg.layout)?;
        let layout = cfg.layout.clone();
        Daemon::start_with(cfg, dp, adopted, text, origin).inspect_err(|_| {
            // A dataplane this start created and could not finish goes away again.
            if !adopted {
                let _ = layout.remove_version(crate::pins::LAYOUT_VERSION);
            }
        })
    }

    fn start_with(
        cfg: DaemonConfig,
        dp: Dataplane,
        adopted: bool,
        text: String,
        origin: String,
    ) -> Result<Daemon> {
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
        // Interfaces attached before (pins) stay attached; requested ones are added.
        for iface in cfg.layout.attached() {
            state.attached.entry(iface).or_insert(AttachMode::Native);
        }
        state
            .attached
            .retain(|iface, _| cfg.layout.link(iface).exists());
        state.daemon_pid = std::process::id();
        state.daemon_started = now_secs();
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
        cfg.run.create().context("creating the run directory")?;
        let mut daemon = Daemon {
            dp,
            state,
            file_text: cfg.config.as_ref().map(|_| FileDigest::of(&text)),
            pending_file: None,
            file_stamp: None,
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
        }
        daemon.dp.set_kernel_log_level(daemon.cfg.kernel_log)?;
        if adopted {
            info!(generation = daemon.state.generation, attached = ?daemon.state.attached.keys().collect::<Vec<_>>(),
                "adopted the pinned dataplane; traffic was not interrupted");
        }
        match daemon.apply_text(&text, &origin) {
            Ok(generation) => info!(generation, %origin, "policy applied"),
            Err(ApplyError::Rejected(e)) if adopted => {
                error!(%origin, "config rejected, the policy in force stays: {e}");
                daemon.record_failure(e);
            }
            Err(ApplyError::Rejected(e) | ApplyError::Failed(e)) => bail!("{e}"),
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

    /// Warns about each interface forwarded packets may leave by that cannot take
    /// redirected XDP frames (when it becomes so), and says when one can again: until then
    /// everything forwarded there is lost.
    pub fn check_egresses(&mut self) {
        let (Some(features), Some(policy)) = (&self.xdp_features, &self.policy) else {
            return;
        };
        if !policy.interfaces.iter().any(|i| i.forward) {
            self.unready_egresses.clear();
            return;
        }
        let mut unready = std::collections::BTreeSet::new();
        for iface in &policy.interfaces {
            let Some(index) = crate::dataplane::ifindex(&iface.name) else {
                continue;
            };
            match features.takes_redirects(index) {
                Ok(true) => {
                    if self.unready_egresses.contains(&iface.name) {
                        info!(iface = %iface.name, "now takes redirected XDP frames");
                    }
                }
                Ok(false) => {
                    if !self.unready_egresses.contains(&iface.name) {
                        warn!(
                            iface = %iface.name,
                            "cannot take redirected XDP frames (its XDP features lack \
                             ndo-xmit): packets forwarded out of it are lost; a veth needs \
                             an XDP program or GRO on its peer"
                        );
                    }
                    unready.insert(iface.name.clone());
                }
                Err(e) => warn!(iface = %iface.name, "reading its XDP features: {e}"),
            }
        }
        self.unready_egresses = unready;
    }

    fn attach(&mut self, iface: &str) -> Result<()> {
        if let Some(mode) = self.state.attached.get(iface) {
            info!(%iface, mode = mode.label(), "already attached (adopted), left as is");
            return Ok(());
        }
        let layout = self.cfg.layout.clone();
        let mode = match self.cfg.mode {
            ModeChoice::Native => {
                self.dp
                    .attach_pinned(iface, XdpMode::Driver, &layout)
                    .with_context(|| format!("attaching to {iface} in native mode (use --xdp-mode auto or generic if the driver lacks XDP)"))?;
                AttachMode::Native
            }
            ModeChoice::Generic => {
                self.dp
                    .attach_pinned(iface, XdpMode::Skb, &layout)
                    .with_context(|| format!("attaching to {iface} in generic mode"))?;
                AttachMode::Generic
            }
            ModeChoice::Auto => match self.dp.attach_pinned(iface, XdpMode::Driver, &layout) {
                Ok(()) => AttachMode::Native,
                Err(e) => {
                    warn!(%iface, "NATIVE XDP FAILED ({e}); FALLING BACK TO GENERIC MODE: every packet pays for an skb first, expect a fraction of native throughput");
                    self.dp
                        .attach_pinned(iface, XdpMode::Skb, &layout)
                        .with_context(|| format!("attaching to {iface} in generic mode"))?;
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
        self.state.policy_text = text.to_string();
        self.state.policy_origin = origin.to_string();
        self.policy = Some(policy.clone());
        Ok(generation)
    }

    fn record_failure(&mut self, e: String) {
        self.state.reloads_error += 1;
        self.state.last_error = Some(bounded_error(e));
    }

    /// Writes the state file and publishes the new configuration to metrics scrapes.
    fn save_state(&self) -> Result<()> {
        self.publish_metrics_view();
        // Compiling a large policy allocates tens of MB for a moment; give them back so the
        // daemon's resident size stays that of the policy in force.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        self.cfg.run.write(&self.state)
    }

    fn publish_metrics_view(&self) {
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

    fn ok(&self, message: String) -> Response {
        Response {
            message,
            failure: None,
            generation: self.state.generation,
        }
    }

    /// Re-reads the config file (or the built-in policy) and applies it; a gateway of a
    /// fleet has neither (see [`Daemon::handle`]).
    pub fn reload(&mut self, why: &str) -> Response {
        if self.state.fleet.is_some() {
            return self.handle(Request::Reload);
        }
        let (text, origin) = match &self.cfg.config {
            Some(path) => match read_config(path) {
                Ok(t) => (t, path.display().to_string()),
                Err(e) => return self.reload_failed(e, why),
            },
            None => (DEFAULT_POLICY.to_string(), BUILT_IN.to_string()),
        };
        if self.cfg.config.is_some() {
            self.file_text = Some(FileDigest::of(&text));
        }
        match self.apply_text(&text, &origin) {
            Ok(generation) => {
                self.state.reloads_ok += 1;
                info!(generation, %origin, trigger = why, "reloaded");
                self.persist(format!("reloaded {origin}: generation {generation}"))
            }
            Err(e) => self.reload_failed(e, why),
        }
    }

    fn reload_failed(&mut self, e: ApplyError, why: &str) -> Response {
        let message = match &e {
            ApplyError::Rejected(m) | ApplyError::Failed(m) => m.clone(),
        };
        error!(
            trigger = why,
            "reload rejected, the policy in force stays: {message}"
        );
        self.record_failure(message);
        if let Err(err) = self.save_state() {
            error!("{err:#}");
        }
        e.response(self.state.generation)
    }

    /// Answers a change that is in force: it stays in force whether or not the state file
    /// can be written; when it cannot, the answer says so, the daemon retries every watch
    /// interval, and the read-only commands refuse to show the older policy meanwhile.
    fn persist(&mut self, message: String) -> Response {
        match self.save_state() {
            Ok(()) => {
                self.unsaved = None;
                self.ok(message)
            }
            Err(e) => {
                let why = format!("{e:#}");
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

    /// Follows the wanted interfaces: one whose device is gone is reported detached (its link
    /// pin removed; the kernel dropped the attachment with the device); one that exists
    /// under a new ifindex (deleted and created again) or has come back is attached to the
    /// new device and registered under its slot, so its traffic is policed and counted again.
    pub fn follow_interfaces(&mut self) {
        let mut changed = false;
        for iface in self.wanted.clone() {
            let index = crate::dataplane::ifindex(&iface);
            let recorded = self.state.ifindexes.get(&iface).copied();
            let attached = self.state.attached.contains_key(&iface);
            match index {
                None if attached => {
                    warn!(%iface, "interface gone: reported detached; attached again if it comes back");
                    self.forget_device(&iface, recorded);
                    changed = true;
                }
                None => {}
                // The device we attached to, still carrying our program.
                Some(now) if attached && recorded == Some(now) && self.our_program_on(now) => {}
                // Adopted from a state file that did not record it: note it.
                Some(now) if attached && recorded.is_none() && self.our_program_on(now) => {
                    self.state.ifindexes.insert(iface.clone(), now);
                    changed = true;
                }
                Some(now) => {
                    if attached && recorded.is_none_or(|r| r == now) {
                        warn!(%iface, "our XDP program is not on the device (detached from outside?): attaching again");
                        self.forget_device(&iface, recorded);
                    } else if attached {
                        warn!(%iface, old = ?recorded, new = now, "interface re-created: attaching to the new device");
                        self.forget_device(&iface, recorded);
                    }
                    if let Err(e) = self.attach(&iface) {
                        error!(%iface, "attaching again: {e:#}");
                        continue;
                    }
                    let slot = self.state.ids.ifaces.get(&iface).copied();
                    if let (Some(policy), Some(slot)) = (self.policy.clone(), slot) {
                        if let Err(e) = self.dp.register_slots(&policy, &[(iface.clone(), slot)]) {
                            error!(%iface, "registering again: {e}");
                        }
                    }
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = self.save_state() {
                self.unsaved = Some(format!("{e:#}"));
            }
        }
    }

    /// Drops what belonged to `iface`'s old device: its link pin and its registration.
    /// Whether the device `ifindex` carries this dataplane's program. When the kernel cannot
    /// be asked, the pins are trusted.
    fn our_program_on(&self, ifindex: u32) -> bool {
        match (
            crate::netdev::attached_xdp_program(ifindex),
            self.dp.program_id(),
        ) {
            (Ok(on), Ok(ours)) => on == Some(ours),
            (Err(e), _) => {
                debug!(ifindex, "reading the device's XDP program: {e}");
                true
            }
            (_, Err(e)) => {
                debug!("reading our program's id: {e}");
                true
            }
        }
    }

    fn forget_device(&mut self, iface: &str, ifindex: Option<u32>) {
        if let Err(e) = self.cfg.layout.unpin_link(iface) {
            warn!(%iface, "removing the old link pin: {e}");
        }
        if let Some(old) = ifindex {
            if let Err(e) = self.dp.unregister_ifindex(old) {
                warn!(%iface, "unregistering the old device: {e}");
            }
        }
        self.state.attached.remove(iface);
        self.state.ifindexes.remove(iface);
    }

    /// Warns when frames forwarded out of an interface were lost since the last look: the
    /// egress cannot take redirected frames (a veth whose peer has neither an XDP program nor
    /// GRO on) or drops them.
    pub fn warn_redirect_failures(&mut self) {
        for (name, slot) in &self.state.ids.ifaces {
            let Ok(counters) = self.dp.iface_counters(*slot) else {
                continue;
            };
            let now = counters.redirect_failures;
            // The first look only takes note (an adopted dataplane brings its past).
            let before = self.redirect_failures.insert(*slot, now).unwrap_or(now);
            if now > before {
                warn!(
                    iface = %name,
                    frames = now - before,
                    "frames forwarded out of this interface were lost: it cannot take \
                     redirected XDP frames (a veth needs an XDP program or GRO on its peer) \
                     or dropped them; see `dataplane stats`"
                );
            }
        }
    }

    /// Writes the state file again after a failed write (see [`Daemon::persist`]).
    pub fn retry_state_save(&mut self) {
        if self.unsaved.is_none() {
            return;
        }
        match self.save_state() {
            Ok(()) => {
                info!("state file written again: it describes the policy in force");
                self.unsaved = None;
            }
            Err(e) => self.unsaved = Some(format!("{e:#}")),
        }
    }

    /// Applies an edited policy text; with `save` writes it to the config file too.
    fn apply_edit(
        &mut self,
        edited: Result<(String, Policy), edit::EditError>,
        save: bool,
        what: String,
    ) -> Response {
        let (text, policy) = match edited {
            Ok(ok) => ok,
            Err(e) => return ApplyError::Rejected(e.to_string()).response(self.state.generation),
        };
        let save_path = match (save, &self.cfg.config) {
            (true, Some(path)) => Some(path.clone()),
            (true, None) => {
                return ApplyError::Rejected(
                    "--save needs a config file, and the daemon runs the built-in policy (start it with --config FILE)".into(),
                )
                .response(self.state.generation)
            }
            (false, _) => None,
        };
        let origin = format!(
            "{} (changed at runtime)",
            self.state
                .policy_origin
                .trim_end_matches(" (changed at runtime)")
        );
        let generation = match self.apply_policy(&text, &origin, &policy) {
            Ok(g) => g,
            Err(e) => return e.response(self.state.generation),
        };
        let mut message = format!("{what}: generation {generation}");
        if let Some(path) = save_path {
            let tmp = path.with_extension("dataplane-tmp");
            match std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &path)) {
                Ok(()) => {
                    // Our own write must not count as an outside change.
                    self.file_text = Some(FileDigest::of(&text));
                    message += &format!(", saved to {}", path.display());
                }
                Err(e) => {
                    return ApplyError::Failed(format!(
                        "{message} is in force, but saving {} failed: {e}",
                        path.display()
                    ))
                    .response(generation)
                }
            }
        }
        info!("{message}");
        self.persist(message)
    }

    /// Handles one control request.
    pub fn handle(&mut self, request: Request) -> Response {
        // A gateway of a fleet applies the fleet's policy only: a local change would leave it
        // apart from the others until the next revision.
        if let Some(fleet) = &self.state.fleet {
            if matches!(
                request,
                Request::Reload
                    | Request::SetClass { .. }
                    | Request::AddRule { .. }
                    | Request::DeleteRule { .. }
            ) {
                return ApplyError::Rejected(format!(
                    "this gateway ({}) takes its policy from etcd ({}/policy): change it there \
                     (`dataplane fleet push`)",
                    fleet.gateway, fleet.prefix
                ))
                .response(self.state.generation);
            }
        }
        match request {
            Request::Reload => self.reload("dataplane reload"),
            Request::SetClass { change, save } => {
                let edited = edit::set_class(&self.state.policy_text, &change);
                self.apply_edit(edited, save, format!("class {} changed", change.name))
            }
            Request::AddRule {
                rule,
                position,
                save,
            } => {
                let edited = edit::add_rule(&self.state.policy_text, &rule, position);
                self.apply_edit(edited, save, format!("rule for class {} added", rule.class))
            }
            Request::DeleteRule { index, save } => {
                let edited = edit::delete_rule(&self.state.policy_text, index);
                self.apply_edit(edited, save, format!("rule {index} deleted"))
            }
            Request::KernelLogLevel { level } => match level.parse::<KernelLogLevel>() {
                Ok(level) => match self.dp.set_kernel_log_level(level) {
                    Ok(()) => {
                        self.state.kernel_log_level = level.label().to_string();
                        self.persist(format!("kernel log level {}", level.label()))
                    }
                    Err(e) => ApplyError::Failed(e.to_string()).response(self.state.generation),
                },
                Err(e) => {
                    ApplyError::Rejected(format!("{level:?}: {e}")).response(self.state.generation)
                }
            },
            Request::Detach { ifaces } if ifaces.is_empty() => {
                match detach::remove_all(&self.cfg.layout, &self.cfg.run) {
                    Ok(_) => {
                        self.exit = true;
                        info!("detached from every interface and removed the pins; exiting");
                        self.ok("detached; dataplane removed".into())
                    }
                    Err(e) => ApplyError::Failed(e.to_string()).response(self.state.generation),
                }
            }
            Request::Detach { ifaces } => {
                for iface in &ifaces {
                    match detach::detach_link(&self.cfg.layout, Some(&mut self.state), iface) {
                        Ok(()) => {
                            self.wanted.remove(iface);
                            info!(%iface, "detached");
                        }
                        Err(e @ DetachError::NotAttached(_)) => {
                            return ApplyError::Rejected(e.to_string())
                                .response(self.state.generation)
                        }
                        Err(e @ DetachError::Pins(_)) => {
                            return ApplyError::Failed(e.to_string())
                                .response(self.state.generation)
                        }
                    }
                }
                self.persist(format!("detached from {}", ifaces.join(", ")))
            }
        }
    }

    /// Applies revision `revision` of the fleet's policy (`text`; `None`: the key was
    /// deleted, and what is in force stays). A revision already in force is not applied
    /// again; a refused one is recorded for the fleet's report and the policy in force stays.
    fn apply_fleet_policy(&mut self, revision: i64, text: Option<&str>, key: &str) {
        let Some(fleet) = &self.state.fleet else {
            return;
        };
        if revision == fleet.revision {
            return;
        }
        let Some(text) = text else {
            warn!(%key, revision, "the fleet's policy key was deleted; the policy in force stays");
            return;
        };
        let origin = format!("etcd {key}@{revision}");
        match self.apply_text(text, &origin) {
            Ok(generation) => {
                self.state.reloads_ok += 1;
                if let Some(fleet) = &mut self.state.fleet {
                    fleet.revision = revision;
                    fleet.rejected = None;
                }
                info!(generation, revision, "fleet policy applied");
                self.persist(format!("applied {origin}: generation {generation}"));
            }
            Err(e) => {
                let message = match e {
                    ApplyError::Rejected(m) | ApplyError::Failed(m) => m,
                };
                error!(
                    revision,
                    "fleet policy refused, the policy in force stays: {message}"
                );
                if let Some(fleet) = &mut self.state.fleet {
                    fleet.rejected = Some(Rejection {
                        revision,
                        error: bounded_error(message.clone()),
                    });
                }
                self.record_failure(message);
                if let Err(err) = self.save_state() {
                    error!("{err:#}");
                }
                self.publish_metrics_view();
            }
        }
    }

    /// Records whether etcd answers (saved for `status`, shown in the metrics).
    fn set_fleet_connected(&mut self, connected: bool) {
        let Some(fleet) = &mut self.state.fleet else {
            return;
        };
        if fleet.connected == connected {
            return;
        }
        fleet.connected = connected;
        fleet.since = now_secs();
        if let Err(err) = self.save_state() {
            error!("{err:#}");
        }
        self.publish_metrics_view();
    }

    /// The kernel config of fleet class `spec` at this gateway's share; `None` for a class
    /// that is not a fleet class, or outside a fleet.
    fn shared_class(&self, spec: &ClassSpec) -> Option<dataplane_common::maps::ClassConfig> {
        if !spec.fleet_budget || self.state.fleet.is_none() {
            return None;
        }
        let fraction = self.fleet_shares.get(&spec.name).copied().unwrap_or(1.0);
        let scale = |rate: u64| ((rate as f64 * fraction) as u64).max(1);
        let mut shared = spec.clone();
        if shared.rate_bytes_per_sec > 0 {
            shared.rate_bytes_per_sec = scale(shared.rate_bytes_per_sec);
        }
        shared.ceil_bytes_per_sec = shared.ceil_bytes_per_sec.map(scale);
        Some(class_config(&shared))
    }

    /// Each fleet class's budget (bytes/s): its ceiling, else its rate.
    fn fleet_budgets(&self) -> std::collections::BTreeMap<String, u64> {
        self.policy
            .iter()
            .flat_map(|p| &p.classes)
            .filter(|c| c.fleet_budget)
            .map(|c| {
                let budget = c.ceil_bytes_per_sec.unwrap_or(c.rate_bytes_per_sec);
                (c.name.clone(), budget)
            })
            .collect()
    }

    /// Measures each fleet class's demand here: bytes per second offered to it on every
    /// interface (dropped ones included) since the last measurement.
    fn measure_fleet_demand(&mut self) -> Demands {
        let now = Instant::now();
        let slots: Vec<u32> = self.state.ids.ifaces.values().copied().collect();
        let mut demand = Demands::new();
        for class in self.fleet_budgets().into_keys() {
            let Some(&id) = self.state.ids.classes.get(&class) else {
                continue;
            };
            let offered: u64 = slots
                .iter()
                .filter_map(|&slot| self.dp.class_counters(slot, id).ok())
                .map(|c| c.bytes)
                .sum();
            let rate = match self.fleet_offered.insert(class.clone(), (now, offered)) {
                Some((then, before)) => {
                    let secs = now.duration_since(then).as_secs_f64().max(1e-3);
                    (offered.saturating_sub(before) as f64 / secs) as u64
                }
                None => 0,
            };
            demand.insert(class, rate);
        }
        self.fleet_demand = demand.clone();
        demand
    }

    /// Enforces this gateway's new shares of the fleet classes (fractions of their budgets),
    /// in place in the generation in force.
    fn set_fleet_shares(&mut self, shares: std::collections::BTreeMap<String, f64>) {
        // Demand moves a little all the time: a share changes only when it moves by more
        // than FLEET_SHARE_STEP of the budget.
        let changed: Vec<String> = shares
            .iter()
            .filter(|(class, f)| {
                self.fleet_shares
                    .get(*class)
                    .is_none_or(|old| (*f - old).abs() > FLEET_SHARE_STEP)
            })
            .map(|(class, _)| class.clone())
            .collect();
        for class in &changed {
            self.fleet_shares.insert(class.clone(), shares[class]);
        }
        self.fleet_shares
            .retain(|class, _| shares.contains_key(class));
        for class in changed {
            let spec = self
                .policy
                .as_ref()
                .and_then(|p| p.classes.iter().find(|c| c.name == class))
                .cloned();
            let (Some(spec), Some(&id)) = (spec, self.state.ids.classes.get(&class)) else {
                continue;
            };
            if let Some(config) = self.shared_class(&spec) {
                if let Err(e) = self.dp.set_live_class(id, &config) {
                    warn!(%class, "cannot enforce the fleet share: {e}");
                }
            }
        }
        self.publish_metrics_view();
    }

    /// What this gateway tells the fleet.
    fn fleet_report(&self) -> GatewayReport {
        let fleet = self.state.fleet.clone().unwrap_or_default();
        GatewayReport {
            gateway: fleet.gateway,
            revision: fleet.revision,
            generation: self.state.generation,
            rejected: fleet.rejected,
            interfaces: self
                .wanted
                .iter()
                .map(|iface| {
                    let mode = self
                        .state
                        .attached
                        .get(iface)
                        .map(|m| m.label().to_string());
                    (iface.clone(), mode)
                })
                .collect(),
        }
    }

    /// Reloads when the config file's content changed since it was last read or written.
    fn check_config_file(&mut self) {
        let Some(path) = self.cfg.config.clone() else {
            return;
        };
        // Unchanged metadata, nothing waiting to settle: no need to read the file (it may be
        // many MiB, and this runs every watch interval).
        let stamp = std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
        if self.pending_file.is_none() && stamp.is_some() && stamp == self.file_stamp {
            return;
        }
        self.file_stamp = stamp;
        let current = match read_policy_text(&path) {
            Ok(t) => FileDigest::of(&t),
            // Editors replace files by rename: a moment without the file is not a change.
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            // Unreadable now: nothing to compare; `dataplane reload` reports why.
            Err(_) => return,
        };
        if Some(&current) == self.file_text.as_ref() {
            self.pending_file = None;
            return;
        }
        // Applied only once the new content has stayed the same for FILE_SETTLE: a file
        // written in place in several parts is never applied half-written.
        match &self.pending_file {
            Some((seen, since)) if *seen == current => {
                if since.elapsed() >= FILE_SETTLE {
                    self.pending_file = None;
                    self.reload("config file changed");
                }
            }
            _ => self.pending_file = Some((current, Instant::now())),
        }
    }
}

/// Runs the daemon until SIGTERM / Ctrl-C (dataplane left running) or a full detach.
pub async fn run(mut cfg: DaemonConfig) -> Result<()> {
    let socket_path = cfg.run.socket();
    if crate::control::is_running(&socket_path) {
        bail!(
            "a dataplane daemon is already running (it answers on {}); stop it first",
            socket_path.display()
        );
    }
    // Signals are ours before anyone can see the daemon ready: a SIGTERM right after the
    // control socket answers must stop it cleanly, not kill it.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    // Large buffers (a config file of many MiB, read and parsed) are mapped on their own and
    // unmapped when freed, so memory returns to the baseline after a rejected reload: glibc
    // otherwise raises this threshold after the first such free and keeps later ones in the
    // heap.
    // SAFETY: mallopt only tunes the allocator; called before other threads allocate much.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    // One daemon per pin root, whatever its run directory: held until this process exits.
    cfg.layout.prepare()?;
    let _pins = cfg.layout.lock()?;
    let watch_interval = cfg.watch_interval;
    let metrics_listener = cfg.metrics.take();
    let mut daemon = Daemon::start(cfg)?;
    daemon
        .dp
        .watch_redirects()
        .context("attaching the redirect-failure counters to the XDP tracepoints")?;
    let kernel_logs = kernel_log::forward(&daemon.dp);
    // Cached next hops follow the kernel's routing changes from here on; the first move
    // covers changes made while no daemon listened.
    let links = Arc::new(tokio::sync::Notify::new());
    let mut routes = crate::routes::follow(daemon.dp.route_generation()?, links.clone())?;
    let metrics_server = match metrics_listener {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let bound = listener.local_addr()?;
            info!(addr = %bound, "serving Prometheus metrics on /metrics");
            daemon.state.metrics_addr = Some(bound.to_string());
            daemon.save_state()?;
            let reader = CounterReader::new(&daemon.dp)?;
            let view = daemon.metrics_view.clone();
            let source: SnapshotSource = Arc::new(move || {
                let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Ok(snapshot(&reader, &view)?)
            });
            Some(tokio::spawn(metrics::http::serve(listener, source)))
        }
        None => None,
    };
    let fleet = daemon.cfg.fleet.clone();
    let daemon = Arc::new(Mutex::new(daemon));
    let fleet_task = fleet.map(|config| tokio::spawn(follow_fleet(daemon.clone(), config)));

    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("binding the control socket {}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket_path.display()))?;
    info!(socket = %socket_path.display(), "control socket ready");

    let mut watch = tokio::time::interval(watch_interval);
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let daemon = daemon.clone();
                    let exit_tx = exit_tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, daemon, exit_tx).await {
                            warn!("control connection: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning on the error.
                    warn!("accepting a control connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = hangup.recv() => { daemon.lock().await.reload("SIGHUP"); }
            _ = links.notified() => {
                let mut daemon = daemon.lock().await;
                daemon.follow_interfaces();
                daemon.check_egresses();
            }
            _ = watch.tick() => {
                let mut daemon = daemon.lock().await;
                if routes.is_finished() {
                    let again = daemon.dp.route_generation().map_err(FollowError::Generation);
                    match again.and_then(|g| crate::routes::follow(g, links.clone())) {
                        Ok(task) => routes = task,
                        Err(e) => warn!("following routing changes again: {e:#}"),
                    }
                }
                daemon.follow_interfaces();
                daemon.warn_redirect_failures();
                daemon.check_egresses();
                daemon.retry_state_save();
                daemon.check_config_file();
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = exit_rx.recv() => return Ok(()),
        }
    }
    routes.abort();
    if let Some(task) = fleet_task {
        task.abort();
    }
    if let Some(task) = kernel_logs {
        task.abort();
    }
    if let Some(task) = metrics_server {
        task.abort();
    }
    let _ = std::fs::remove_file(&socket_path);
    info!("daemon exiting; the dataplane stays attached and keeps forwarding (`dataplane detach` removes it)");
    Ok(())
}

/// The least change of a fleet share (a fraction of the budget) that is enforced.
const FLEET_SHARE_STEP: f64 = 0.005;
/// The first wait before reconnecting to etcd, and the longest.
const FLEET_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FLEET_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one etcd exchange of the follower may take before the connection counts as lost.
const FLEET_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Follows the fleet for as long as the daemon runs: takes every revision of its policy,
/// keeps this gateway's report current, and reconnects with backoff while etcd does not
/// answer (the policy in force stays meanwhile: fail static).
async fn follow_fleet(daemon: Arc<Mutex<Daemon>>, config: FleetConfig) {
    let mut backoff = FLEET_BACKOFF_MIN;
    loop {
        let lost = fleet_session(&daemon, &config, &mut backoff).await;
        {
            let mut daemon = daemon.lock().await;
            let was_connected = daemon.state.fleet.as_ref().is_some_and(|f| f.connected);
            if was_connected {
                warn!("etcd does not answer, the policy in force stays: {lost}");
            } else {
                debug!("etcd still does not answer: {lost}");
            }
            daemon.set_fleet_connected(false);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FLEET_BACKOFF_MAX);
    }
}

/// One connection's worth of following; returns why it ended.
async fn fleet_session(
    daemon: &Mutex<Daemon>,
    config: &FleetConfig,
    backoff: &mut Duration,
) -> FleetError {
    let timed = |what: &'static str| FleetError::Ended {
        endpoints: config.endpoints.join(","),
        what,
    };
    let session = async {
        let mut fleet = Fleet::connect(config.clone()).await?;
        let (policy, read_at) = fleet.policy().await?;
        let watch = fleet.watch_policy(read_at).await?;
        let lease = fleet.report_lease().await?;
        Ok::<_, FleetError>((fleet, policy, watch, lease))
    };
    let (mut fleet, policy, mut watch, mut lease) =
        match tokio::time::timeout(FLEET_REQUEST_TIMEOUT * 2, session).await {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => return e,
            Err(_) => return timed("connecting"),
        };
    *backoff = FLEET_BACKOFF_MIN;
    let key = config.policy_key();
    let mut published = {
        let mut daemon = daemon.lock().await;
        daemon.set_fleet_connected(true);
        info!(endpoints = %config.endpoints.join(","), %key, gateway = %config.gateway,
            "following the fleet's policy");
        if let Some(policy) = policy {
            daemon.apply_fleet_policy(policy.revision, policy.text.as_deref(), &key);
        }
        daemon.fleet_report()
    };
    if let Err(e) = fleet.publish(&lease, &published).await {
        return e;
    }
    let mut renew = tokio::time::interval(REPORT_RENEWAL);
    let mut share = tokio::time::interval(SHARE_PERIOD);
    loop {
        tokio::select! {
            _ = share.tick() => {
                let (demand, budgets) = {
                    let mut daemon = daemon.lock().await;
                    (daemon.measure_fleet_demand(), daemon.fleet_budgets())
                };
                if !budgets.is_empty() {
                    let exchange = async {
                        fleet.publish_demand(&lease, &demand).await?;
                        fleet.demands().await
                    };
                    match tokio::time::timeout(FLEET_REQUEST_TIMEOUT, exchange).await {
                        Ok(Ok(demands)) => {
                            let fractions = own_fractions(&config.gateway, &budgets, &demands);
                            daemon.lock().await.set_fleet_shares(fractions);
                        }
                        Ok(Err(e)) => return e,
                        Err(_) => return timed("exchanging demands"),
                    }
                }
            }
            changes = watch.next() => match changes {
                // The last change is what stands; those before it were superseded.
                Ok(changes) => if let Some(last) = changes.last() {
                    daemon
                        .lock()
                        .await
                        .apply_fleet_policy(last.revision, last.text.as_deref(), &key);
                },
                Err(e) => return e,
            },
            _ = renew.tick() => {
                match tokio::time::timeout(FLEET_REQUEST_TIMEOUT, lease.renew()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e,
                    Err(_) => return timed("renewing the report's lease"),
                }
            }
        }
        let report = daemon.lock().await.fleet_report();
        if report != published {
            match tokio::time::timeout(FLEET_REQUEST_TIMEOUT, fleet.publish(&lease, &report)).await
            {
                Ok(Ok(())) => published = report,
                Ok(Err(e)) => return e,
                Err(_) => return timed("publishing the report"),
            }
        }
    }
}

/// Answers one connection: one request line, one response line. Only root may ask.
async fn serve(
    stream: UnixStream,
    daemon: Arc<Mutex<Daemon>>,
    exit: tokio::sync::mpsc::Sender<()>,
) -> Result<()> {
    let cred = stream
        .peer_cred()
        .context("reading the peer's credentials")?;
    let (read, mut write) = stream.into_split();
    let refuse = |message: String| Response {
        message,
        failure: Some(Failure::Rejected),
        generation: 0,
    };
    // At most one line of MAX_REQUEST_BYTES, within REQUEST_TIMEOUT: a client can hold
    // neither the daemon's memory nor a connection for long.
    let mut bytes = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut bytes)).await;
    let line = match read {
        Ok(Ok(0)) => return Ok(()), // a liveness probe: connected and closed without asking
        Ok(Ok(_)) if bytes.len() > MAX_REQUEST_BYTES => Err(refuse(format!(
            "request too large: over {MAX_REQUEST_BYTES} bytes"
        ))),
        Ok(Ok(_)) => {
            String::from_utf8(bytes).map_err(|_| refuse("malformed request: not UTF-8".to_string()))
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => Err(refuse(format!(
            "no request line within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    };
    let response = if cred.uid() != 0 {
        Response {
            message: "only root may control the dataplane".into(),
            failure: Some(Failure::Rejected),
            generation: 0,
        }
    } else {
        match line.map(|l| serde_json::from_str::<Request>(&l)) {
            Err(refusal) => refusal,
            Ok(Ok(request)) => {
                let mut d = daemon.lock().await;
                let r = d.handle(request);
                if d.exit {
                    let _ = exit.try_send(());
                }
                r
            }
            Ok(Err(e)) => refuse(format!("malformed request: {e}")),
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

/// Moves the calling thread (and the threads it starts afterwards) into network namespace
/// `name` (as `ip netns` names it). Mounts are untouched, so the pins stay on the host's
/// bpffs, unlike under `ip netns exec`.
pub fn enter_netns(name: &str) -> Result<()> {
    Ok(dataplane_netns::enter(name)?)
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
