//! Log lines from the XDP program (aya-log) forwarded into `tracing`. Off by default; the
//! level lives in the LOG_LEVEL map, so it changes at runtime and a disabled log statement
//! costs the program one array read.

use std::str::FromStr;

use tokio::{
    io::{unix::AsyncFd, Interest},
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::dataplane::Dataplane;

/// Kernel log level; the numbers are what the program compares against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum KernelLogLevel {
    /// Nothing is logged.
    Off = 0,
    /// Errors.
    Error = 1,
    /// Warnings.
    Warn = 2,
    /// Information.
    Info = 3,
    /// Per-packet decisions other than "passed by policy".
    Debug = 4,
    /// Everything.
    Trace = 5,
}

const LEVELS: [(KernelLogLevel, &str); 6] = [
    (KernelLogLevel::Off, "off"),
    (KernelLogLevel::Error, "error"),
    (KernelLogLevel::Warn, "warn"),
    (KernelLogLevel::Info, "info"),
    (KernelLogLevel::Debug, "debug"),
    (KernelLogLevel::Trace, "trace"),
];

impl KernelLogLevel {
    /// Its name.
    pub fn label(self) -> &'static str {
        LEVELS
            .iter()
            .find(|(l, _)| *l == self)
            .map_or("off", |(_, n)| n)
    }
}

impl FromStr for KernelLogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LEVELS
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(l, _)| *l)
            .ok_or_else(|| {
                format!("unknown log level {s:?}: expected off, error, warn, info, debug or trace")
            })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_reject_others() {
        for (level, name) in LEVELS {
            assert_eq!(name.parse::<KernelLogLevel>(), Ok(level));
            assert_eq!(level.label(), name);
        }
        assert_eq!("DEBUG".parse::<KernelLogLevel>(), Ok(KernelLogLevel::Debug));
        let err = "verbose".parse::<KernelLogLevel>().expect_err("unknown");
        assert!(err.contains("\"verbose\""), "{err}");
    }
}
