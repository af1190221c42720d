//! The daemon's event loop: the control socket, signals, the watch interval, routing and
//! link changes, the metrics server and the fleet follower, until SIGTERM or a full detach.

use std::{os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use tokio::{
    net::UnixListener,
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{info, warn};

use super::{
    fleet::follow_fleet, requests::serve, watch::ConfigWatch, Daemon, DaemonConfig, DaemonError,
};
use crate::{
    dataplane::DataplaneError,
    kernel, kernel_log,
    metrics::{
        self,
        http::{HealthCheck, SnapshotSource},
        snapshot, CounterReader,
    },
    routes::FollowError,
};

/// Allocations from this size on are mapped on their own (glibc's default before it adapts).
const MMAP_THRESHOLD: i32 = 128 << 10;
/// Least time without a heartbeat before `/healthz` reports the control loop stuck (a
/// 10 000-rule reload takes well under a second; the CPU may be contended).
const MIN_STUCK: Duration = Duration::from_secs(10);

/// The control loop's heartbeat, stamped every watch interval once it holds the daemon.
/// `/healthz` reports the daemon unhealthy when the last stamp is too old: a control loop
/// stuck in a blocking call answers neither the CLI nor SIGTERM, while the metrics server,
/// on other threads, still would.
struct Heartbeat {
    start: std::time::Instant,
    /// Milliseconds after `start` of the last beat.
    last: std::sync::atomic::AtomicU64,
    /// Longer than this without a beat is stuck.
    limit: Duration,
}

impl Heartbeat {
    fn new(watch_interval: Duration) -> Heartbeat {
        Heartbeat {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            limit: (watch_interval * 3).max(MIN_STUCK),
        }
    }

    fn beat(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn check(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        let silent = self.start.elapsed().saturating_sub(last);
        if silent > self.limit {
            Err(format!(
                "the control loop has not run for {} s (stuck?): the CLI, reloads and \
                 SIGTERM go unanswered",
                silent.as_secs()
            ))
        } else {
            Ok(())
        }
    }
}

/// Runs the daemon until SIGTERM / Ctrl-C (dataplane left running) or a full detach.
pub async fn run(mut cfg: DaemonConfig) -> Result<(), DaemonError> {
    // A kernel the dataplane cannot run on is named before anything is created.
    let kernel = kernel::require_supported().map_err(DataplaneError::from)?;
    let socket_path = cfg.run.socket();
    if crate::control::is_running(&socket_path) {
        return Err(DaemonError::AlreadyRunning(socket_path));
    }
    // Signals are ours before anyone can see the daemon ready: a SIGTERM right after the
    // control socket answers must stop it cleanly, not kill it.
    let signals = DaemonError::io("installing the signal handlers");
    let (mut hangup, mut terminate, mut interrupt) = (|| {
        Ok::<_, std::io::Error>((
            signal(SignalKind::hangup())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })()
    .map_err(signals)?;
    // Large buffers (a config file of many MiB, read and parsed) are mapped on their own and
    // unmapped when freed, so memory returns to the baseline after a rejected reload: glibc
    // otherwise raises this threshold after the first such free and keeps later ones in the
    // heap.
    // SAFETY: mallopt only tunes the allocator; called before other threads allocate much.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    // One daemon per pin root, whatever its run directory: held until this process exits.
    cfg.layout.prepare_root()?;
    let _pins = cfg.layout.lock()?;
    // What a start that failed before pinning left would pass for a layout (a newer one,
    // to a release being rolled back to).
    cfg.layout.remove_empty_versions()?;
    let watch_interval = cfg.watch_interval;
    let metrics_listener = cfg.metrics.take();
    let mut daemon = Daemon::start(cfg)?;
    let heartbeat = Arc::new(Heartbeat::new(watch_interval));
    heartbeat.beat();
    match kernel.missing(kernel::name::XDP_TRACEPOINTS) {
        None => daemon
            .dp
            .watch_redirects()
            .map_err(DaemonError::Redirects)?,
        Some(why) => warn!("frames lost in redirects are not counted on this kernel: {why}"),
    }
    let kernel_logs = kernel_log::forward(&daemon.dp);
    // Cached next hops follow the kernel's routing changes from here on; the first move
    // covers changes made while no daemon listened.
    let links = Arc::new(tokio::sync::Notify::new());
    let mut routes = crate::routes::follow(daemon.dp.route_generation()?, links.clone())?;
    let metrics_server = match metrics_listener {
        Some(listener) => {
            let (listener, bound) = (|| {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let bound = listener.local_addr()?;
                Ok::<_, std::io::Error>((listener, bound))
            })()
            .map_err(DaemonError::io("serving metrics"))?;
            info!(addr = %bound, "serving Prometheus metrics on /metrics");
            daemon.state.metrics_addr = Some(bound.to_string());
            daemon.save_state()?;
            let reader = CounterReader::new(&daemon.dp)?;
            let view = daemon.metrics_view.clone();
            let source: SnapshotSource = Arc::new(move || {
                let view = view.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Ok(snapshot(&reader, &view)?)
            });
            let beats = heartbeat.clone();
            let health: HealthCheck = Arc::new(move || beats.check());
            Some(tokio::spawn(metrics::http::serve(listener, source, health)))
        }
        None => None,
    };
    let fleet = daemon.cfg.fleet.clone();
    let mut config_watch = match daemon.cfg.config.as_deref().map(ConfigWatch::new) {
        Some(Ok(watch)) => Some(watch),
        Some(Err(e)) => {
            warn!("cannot watch the config file ({e}): changes apply on SIGHUP or `dataplane reload` only");
            None
        }
        None => None,
    };
    let daemon = Arc::new(Mutex::new(daemon));
    let fleet_task = fleet.map(|config| tokio::spawn(follow_fleet(daemon.clone(), config)));

    remove_stale_socket(&socket_path)?;
    let listener = UnixListener::bind(&socket_path).map_err(DaemonError::io(format!(
        "binding the control socket {}",
        socket_path.display()
    )))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600)).map_err(
        DaemonError::io(format!("restricting {}", socket_path.display())),
    )?;
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
                            warn!("control connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning on the error.
                    warn!("accepting a control connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reloads run on a task of their own, as control requests do: a large file takes
            // a while to parse, and the loop keeps taking signals meanwhile (glibc also keeps
            // less of the parser's memory when it ran on a worker thread than on this one).
            _ = hangup.recv() => {
                let daemon = daemon.clone();
                tokio::spawn(async move { daemon.lock().await.reload("SIGHUP") });
            }
            _ = config_changed(&mut config_watch) => {
                let daemon = daemon.clone();
                tokio::spawn(async move { daemon.lock().await.check_config_file() });
            }
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
                        Err(e) => warn!("following routing changes again: {e}"),
                    }
                }
                daemon.follow_interfaces();
                daemon.warn_redirect_failures();
                daemon.check_egresses();
                daemon.retry_state_save();
                heartbeat.beat();
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

/// Waits for the config file to change (for ever when it is not watched).
async fn config_changed(watch: &mut Option<ConfigWatch>) {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// Removes a control socket left by a daemon that did not exit cleanly (SIGKILL, a crash),
/// checking first that it is a socket and that nobody answers on it; anything else at that
/// path is left alone and refused.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DaemonError::io(format!("inspecting {}", path.display()))(e)),
        Ok(m) if !m.file_type().is_socket() => {
            Err(DaemonError::io(format!(
                "{} is in the way of the control socket (not a socket); move it away",
                path.display()
            ))(std::io::ErrorKind::AlreadyExists.into()))
        }
        // A daemon started meanwhile with the same run directory (other pins) answers.
        Ok(_) if crate::control::is_running(path) => {
            Err(DaemonError::AlreadyRunning(path.to_path_buf()))
        }
        Ok(_) => {
            std::fs::remove_file(path)
                .map_err(DaemonError::io(format!("removing {}", path.display())))?;
            info!(socket = %path.display(), "removed a stale control socket (its daemon did not exit cleanly)");
            Ok(())
        }
    }
}

/// Moves the calling thread (and the threads it starts afterwards) into network namespace
/// `name` (as `ip netns` names it). Mounts are untouched, so the pins stay on the host's
/// bpffs, unlike under `ip netns exec`.
pub fn enter_netns(name: &str) -> Result<(), DaemonError> {
    Ok(dataplane_netns::enter(name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_older_than_its_limit_is_reported_stuck() {
        let heartbeat = Heartbeat::new(Duration::from_millis(10));
        assert_eq!(heartbeat.limit, MIN_STUCK, "never below the floor");
        let heartbeat = Heartbeat {
            limit: Duration::from_millis(50),
            ..heartbeat
        };
        heartbeat.beat();
        assert_eq!(heartbeat.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(120));
        let stuck = heartbeat.check().expect_err("no beat for 120 ms");
        assert!(stuck.contains("control loop"), "{stuck}");
        heartbeat.beat();
        assert_eq!(heartbeat.check(), Ok(()));
    }
}
