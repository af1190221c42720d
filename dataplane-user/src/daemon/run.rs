//! The daemon's event loop: the control socket, signals, the watch interval, routing and
//! link changes, the metrics server and the fleet follower, until SIGTERM or a full detach.

use std::{os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use tokio::{
    net::UnixListener,
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{info, warn};

use super::{fleet::follow_fleet, requests::serve, Daemon, DaemonConfig, DaemonError};
use crate::{
    dataplane::DataplaneError,
    kernel, kernel_log,
    metrics::{self, http::SnapshotSource, snapshot, CounterReader},
    routes::FollowError,
};

/// Allocations from this size on are mapped on their own (glibc's default before it adapts).
const MMAP_THRESHOLD: i32 = 128 << 10;

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
            Some(tokio::spawn(metrics::http::serve(listener, source)))
        }
        None => None,
    };
    let fleet = daemon.cfg.fleet.clone();
    let daemon = Arc::new(Mutex::new(daemon));
    let fleet_task = fleet.map(|config| tokio::spawn(follow_fleet(daemon.clone(), config)));

    let _ = std::fs::remove_file(&socket_path);
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
                        Err(e) => warn!("following routing changes again: {e}"),
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

/// Moves the calling thread (and the threads it starts afterwards) into network namespace
/// `name` (as `ip netns` names it). Mounts are untouched, so the pins stay on the host's
/// bpffs, unlike under `ip netns exec`.
pub fn enter_netns(name: &str) -> Result<(), DaemonError> {
    Ok(dataplane_netns::enter(name)?)
}
