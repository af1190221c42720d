//! Log lines from the XDP program (aya-log) forwarded into `tracing`. Off by default; the
//! level lives in the LOG_LEVEL map, so it changes at runtime and a disabled log statement
//! costs the program one array read.

use tokio::{
    io::{unix::AsyncFd, Interest},
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::dataplane::Dataplane;

pub use dataplane_common::programs::KernelLogLevel;

/// Re-emits the program's log records as `tracing` events (target `dataplane::kernel`). They
/// are emitted at INFO whatever their kernel level: the level was already chosen in the
/// kernel (LOG_LEVEL), and the daemon's own filter must not hide what the operator asked for.
struct KernelLines;

impl log::Log for KernelLines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "dataplane::kernel", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

/// Starts forwarding the program's log records into `tracing` (target `dataplane::kernel`).
/// Returns the forwarding task; `None` (with a warning) when the program has no log buffer.
pub fn forward(dp: &Dataplane) -> Option<JoinHandle<()>> {
    let id = match dp.program_id() {
        Ok(id) => id,
        Err(e) => {
            warn!("kernel logs unavailable: {e}");
            return None;
        }
    };
    let logger = match aya_log::EbpfLogger::init_from_id_with_logger(id, KernelLines) {
        Ok(l) => l,
        Err(e) => {
            warn!("kernel logs unavailable: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer fd, which stays open and unchanged until the
    // AsyncFd (and the logger inside it) is dropped.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel logs unavailable: {e}");
            return None;
        }
    };
    debug!(program = id, "forwarding kernel logs");
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
