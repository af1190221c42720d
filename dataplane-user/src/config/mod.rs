//! The policy file: TOML in, a validated [`Policy`] out.
//!
//! The file has four parts: `default_class`, `[[interface]]` (link budgets), `[[class]]`
//! (priority, rates, bursts and colour actions) and `[[rule]]` (first match wins, in file
//! order). Every table rejects unknown keys, every default is spelled out on its field, and
//! every error names the file, the field (`class[2].rate`, `rule[17].dst_port`; indices count
//! from 0 in file order) and the reason.
//!
//! [`Policy::to_toml_string`] writes a policy back with every default filled in; reading that
//! text gives the same policy.

mod error;
mod schema;
#[cfg(test)]
mod tests;
mod validate;
mod values;
mod write;

use std::path::Path;

use dataplane_common::{
    action::{ColourAction, Verdict},
    classify::RuleSpec,
    MAX_IFACES, PRIORITY_LEVELS,
};
use serde::{Deserialize, Serialize};

use error::parse_error;
pub use error::ConfigError;
use schema::PolicyText;
pub use schema::{ActionName, ClassText, RuleText, Scalar};
use validate::Validator;
pub use validate::ValueError;
use write::{Writer, WRITER_ORIGIN};

/// Class unmatched traffic falls into when `default_class` is not set.
pub const DEFAULT_CLASS_NAME: &str = "default";
/// Longest class name.
pub const MAX_CLASS_NAME_LEN: usize = 32;
/// Longest interface name (the kernel's IFNAMSIZ less the terminating NUL).
pub const MAX_IFACE_NAME_LEN: usize = 15;
/// Interfaces a policy may list: slot 0 is reserved for unregistered interfaces.
pub const MAX_POLICY_IFACES: usize = MAX_IFACES - 1;
/// Smallest burst: one full-size Ethernet frame (1500 bytes of IP plus a 14-byte header).
pub const MIN_BURST_BYTES: u64 = 1514;
/// Smallest default burst.
pub const MIN_DEFAULT_BURST_BYTES: u64 = 64 * 1024;
/// A default burst holds this many milliseconds of traffic at its rate: enough for the
/// initial windows of 16 TCP connections opened at once at 100 Mbit/s (10 segments each,
/// 242 kB of frames, sent before any ACK can narrow them).
pub const DEFAULT_BURST_MILLIS: u64 = 20;
/// Largest DSCP value (six bits).
pub const MAX_DSCP: u8 = 63;
/// Highest class priority.
pub const MAX_PRIORITY: u8 = PRIORITY_LEVELS as u8 - 1;
const MILLIS_PER_SEC: u64 = 1000;

/// Largest policy file read: a 16 384-rule policy takes about 1 MiB.
pub const MAX_POLICY_BYTES: u64 = 16 << 20;

/// Checks that `name` can be a kernel interface name and is safe to pass around: 1 to 15
/// characters, none of them '/', ':' or whitespace, not "." or ".." (the kernel refuses all of
/// these), and not starting with '-' (which `ip` and `tc` would take for an option).
pub fn check_interface_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFACE_NAME_LEN
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" is not a valid interface name: 1 to {MAX_IFACE_NAME_LEN} characters, \
             no '/', ':' or whitespace, not \".\" or \"..\", not starting with '-'"
        ))
    }
}

/// Reads a policy file of at most [`MAX_POLICY_BYTES`]; a larger one is refused before it is
/// read, so it never takes the daemon's memory. Only a regular file is read: a FIFO would
/// block the reader until a writer comes, a device might never end. The path is checked
/// before opening, and what was opened (without blocking) again, so a swap in between cannot
/// block either.
pub fn read_policy_text(path: &Path) -> std::io::Result<String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    require_regular_file(&std::fs::metadata(path)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    require_regular_file(&meta)?;
    // Sized up front: a large text is then mapped on its own and unmapped when freed, rather
    // than grown in the heap, where it would stay resident until the next trim.
    let mut text = String::with_capacity(meta.len().min(MAX_POLICY_BYTES) as usize + 1);
    file.take(MAX_POLICY_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "larger than the {} MiB a policy file may have",
                MAX_POLICY_BYTES >> 20
            ),
        ));
    }
    Ok(text)
}

fn require_regular_file(m: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a file"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not a regular file ({kind}); a policy is read from a regular file only"),
    ))
}

/// `text` without its comments and layout: what is kept of a policy where only its meaning
/// matters (the state file), so megabytes of comment in a valid file are not copied there.
/// `None` when `text` is not TOML.
pub fn without_comments(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    toml::to_string(&table).ok()
}

/// Rate and burst of the bucket a class's AQM manages: the committed one when what exceeds it
/// is dropped or marked, else the peak one when what exceeds that is; `None` when neither.
pub fn enforcing_bucket(
    rate: u64,
    burst: u64,
    ceil: Option<u64>,
    ceil_burst: u64,
    exceed: ColourAction,
    violate: ColourAction,
) -> Option<(u64, u64)> {
    let enforcing =
        |a: ColourAction| a.verdict == Verdict::Drop as u8 || a.verdict == Verdict::Ecn as u8;
    if rate > 0 && enforcing(exceed) {
        Some((rate, burst))
    } else {
        ceil.filter(|_| enforcing(violate)).map(|c| (c, ceil_burst))
    }
}

/// How long `burst` bytes take at `rate` bytes per second, in ns.
pub fn burst_time_ns(rate: u64, burst: u64) -> u64 {
    (u128::from(burst) * 1_000_000_000 / u128::from(rate.max(1))).min(u128::from(u64::MAX)) as u64
}

/// The default burst for `rate` bytes per second: [`DEFAULT_BURST_MILLIS`] of it, at least
/// [`MIN_DEFAULT_BURST_BYTES`].
pub const fn default_burst(rate_bytes_per_sec: u64) -> u64 {
    let burst = rate_bytes_per_sec / (MILLIS_PER_SEC / DEFAULT_BURST_MILLIS);
    if burst > MIN_DEFAULT_BURST_BYTES {
        burst
    } else {
        MIN_DEFAULT_BURST_BYTES
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Classes; the index is the class id.
    pub classes: Vec<ClassSpec>,
    /// Class id of the class unmatched traffic gets.
    pub default_class: u32,
    /// Rules in file order (first match wins); `RuleSpec::class` is a class id and
    /// `RuleSpec::iface` an interface slot.
    pub rules: Vec<RuleSpec>,
    /// Interfaces; index `i` is interface slot `i + 1`. Interfaces named only by rules are
    /// appended after the listed ones.
    pub interfaces: Vec<InterfaceSpec>,
    /// Whether flows' classes are cached.
    pub flow_cache: FlowCache,
}

/// Whether the kernel caches each flow's class (`flow_cache = "auto" | "on" | "off"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowCache {
    /// On where caching pays for a new flow's extra cost: the rules span more than
    /// [`AUTO_CACHE_MIN_WORDS`] 64-bit words (more than 256 rules) or match on address
    /// prefixes. On as well when a class polices (its flows' TCP state lives in the cache
    /// entries) or an interface forwards (a flow keeps its next hop there). Costs:
    /// docs/design.md, "Flow cache".
    ///
    /// [`AUTO_CACHE_MIN_WORDS`]: crate::compile::AUTO_CACHE_MIN_WORDS
    #[default]
    Auto,
    /// Always cache.
    On,
    /// Never cache: every packet goes through the rule tables.
    Off,
}

/// A traffic class: a two-rate three-colour policer and what to do with each colour.
///
/// Without a committed rate no packet is green (all are at least yellow); without a peak rate
/// no packet is red.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    /// Unique name.
    pub name: String,
    /// Strict priority on the interface link budget, 0 (lowest) ..= 7.
    pub priority: u8,
    /// Committed (guaranteed) rate; 0 = no guarantee.
    pub rate_bytes_per_sec: u64,
    /// Peak rate; `None` = unlimited.
    pub ceil_bytes_per_sec: Option<u64>,
    /// Committed burst.
    pub burst_bytes: u64,
    /// Peak burst.
    pub ceil_burst_bytes: u64,
    /// Action for green (conforming) packets.
    pub conform: ColourAction,
    /// Action for yellow (above rate, within ceil) packets.
    pub exceed: ColourAction,
    /// Action for red (above ceil) packets.
    pub violate: ColourAction,
    /// Early congestion signals on the phantom queue of the enforcing bucket; `None` = off.
    pub aqm: Option<AqmSpec>,
    /// TCP window control on the enforcing bucket's phantom queue (see
    /// `dataplane_common::window`).
    pub tcp_window: bool,
    /// Per-flow fair shares of the enforcing bucket's rate (see `dataplane_common::fair`).
    pub flow_fairness: bool,
    /// The rates are the fleet's: each gateway enforces a share (see `crate::fleet::shares`).
    pub fleet_budget: bool,
}

/// The phantom-queue AQM of a class (see `dataplane_common::policer::Aqm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AqmSpec {
    /// Phantom sojourn time above which packets are signalled.
    pub target_ns: u64,
    /// Least time between two signals.
    pub interval_ns: u64,
}

/// Default AQM target: this much phantom sojourn, or a quarter of the burst if that is less.
pub const DEFAULT_AQM_TARGET_NS: u64 = 1_000_000;
/// Default AQM interval: about the longest round trip inside a data centre, so each sender
/// gets one signal per reaction.
pub const DEFAULT_AQM_INTERVAL_NS: u64 = 1_000_000;

/// An interface the policy is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// Kernel interface name.
    pub name: String,
    /// Link budget shared by all classes by priority; `None` = no budget.
    pub link_rate_bytes_per_sec: Option<u64>,
    /// Burst of the link budget.
    pub link_burst_bytes: u64,
    /// Forward packets arriving here (that the policy lets through and that are not for
    /// this host) in XDP, straight to the egress interface the kernel's routing table names.
    pub forward: bool,
}

impl Policy {
    /// Parses and validates policy text; `origin` names it in errors (usually the file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, ConfigError> {
        let file: PolicyText = toml::from_str(text).map_err(|e| parse_error(origin, text, &e))?;
        Validator { origin }.policy(&file)
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let origin = path.display().to_string();
        let text = read_policy_text(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        Policy::from_toml_str(&text, &origin)
    }

    /// Id of the class named `name`.
    pub fn class_id(&self, name: &str) -> Option<u32> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// Writes the policy as TOML with every default filled in. Fails only for policies that
    /// did not come from a file and use something the file cannot say (a protocol range, two
    /// different remark DSCPs in one class, an out-of-range class id or interface slot).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        let file = Writer { policy: self }.policy()?;
        toml::to_string(&file).map_err(|e| ConfigError::Invalid {
            origin: WRITER_ORIGIN.to_string(),
            field: "policy".to_string(),
            reason: e.to_string(),
        })
    }
}
