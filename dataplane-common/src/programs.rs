//! The kernel/user contract on programs and logging: the names user space finds the object's
//! programs by, and the kernel log levels user space writes into the LOG_LEVEL map.

/// The XDP pipeline (`dataplane-ebpf`'s `dataplane` function).
pub const DATAPLANE: &str = "dataplane";
/// The pass-everything XDP program: the floor of the benchmarks, and what a veth peer needs
/// to take redirected frames.
pub const PASS: &str = "xdp_pass";
/// The tracepoint programs that count redirect failures, and the `xdp:` event each watches.
pub const REDIRECT_WATCHERS: [(&str, &str); 2] = [
    ("redirect_error", "xdp_redirect_err"),
    ("devmap_drops", "xdp_devmap_xmit"),
];

/// Kernel log level, as the LOG_LEVEL map holds it; the program logs a record when the level
/// is at least the record's.
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

/// Every level with its name, in order.
pub const LOG_LEVELS: [(KernelLogLevel, &str); 6] = [
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
        LOG_LEVELS
            .iter()
            .find(|(l, _)| *l == self)
            .map_or("off", |(_, n)| n)
    }

    /// The level named `name` (any case).
    pub fn from_name(name: &str) -> Option<KernelLogLevel> {
        LOG_LEVELS
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(l, _)| *l)
    }
}

/// A name that is no [`KernelLogLevel`]'s; it displays the choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownLogLevel;

impl core::fmt::Display for UnknownLogLevel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("unknown log level (expected off, error, warn, info, debug or trace)")
    }
}

impl core::error::Error for UnknownLogLevel {}

impl core::str::FromStr for KernelLogLevel {
    type Err = UnknownLogLevel;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        KernelLogLevel::from_name(name).ok_or(UnknownLogLevel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_have_names_and_order() {
        for (level, name) in LOG_LEVELS {
            assert_eq!(KernelLogLevel::from_name(name), Some(level));
            assert_eq!(level.label(), name);
        }
        assert_eq!(
            KernelLogLevel::from_name("DEBUG"),
            Some(KernelLogLevel::Debug)
        );
        assert_eq!(KernelLogLevel::from_name("verbose"), None);
        assert_eq!("Trace".parse(), Ok(KernelLogLevel::Trace));
        assert_eq!("verbose".parse::<KernelLogLevel>(), Err(UnknownLogLevel));
        assert!(KernelLogLevel::Error < KernelLogLevel::Debug);
    }
}
