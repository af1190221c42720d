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

use std::{collections::HashMap, fmt, net::IpAddr, path::Path};

use dataplane_common::{
    action::{ColourAction, Verdict, KEEP_DSCP},
    classify::{mask, Prefix, Range, RuleSpec},
    packet::{ipproto, Family},
    policer::MIN_RATE_BYTES_PER_SEC,
    MAX_CLASSES, MAX_IFACES, MAX_RULES, PRIORITY_LEVELS, ROCEV2_UDP_PORT, ROCE_OPCODE_CNP,
};
use serde::{Deserialize, Serialize};

use crate::units::{self, RATE_HELP};

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
/// A default burst holds this many milliseconds of traffic at its rate.
pub const DEFAULT_BURST_MILLIS: u64 = 10;
/// Largest DSCP value (six bits).
pub const MAX_DSCP: u8 = 63;
/// Highest class priority.
pub const MAX_PRIORITY: u8 = PRIORITY_LEVELS as u8 - 1;
/// Largest port number.
const MAX_PORT: u32 = u16::MAX as u32;
/// Largest IP protocol number and RoCE opcode.
const MAX_BYTE: u32 = u8::MAX as u32;
const MILLIS_PER_SEC: u64 = 1000;

/// Named RoCEv2 BTH opcode ranges (IBA transport type in the upper three bits).
const ROCE_OPCODE_NAMES: [(&str, Range); 5] = [
    ("cnp", Range::one(ROCE_OPCODE_CNP as u32)),
    ("rc", Range { lo: 0x00, hi: 0x1f }),
    ("uc", Range { lo: 0x20, hi: 0x3f }),
    ("rd", Range { lo: 0x40, hi: 0x5f }),
    ("ud", Range { lo: 0x60, hi: 0x7f }),
];

/// Named IP protocols.
const PROTOCOL_NAMES: [(&str, u8); 4] = [
    ("tcp", ipproto::TCP),
    ("udp", ipproto::UDP),
    ("icmp", ipproto::ICMP),
    ("icmpv6", ipproto::ICMPV6),
];

/// Largest policy file read: a 16 384-rule policy takes about 1 MiB.
pub const MAX_POLICY_BYTES: u64 = 16 << 20;

/// Reads a policy file of at most [`MAX_POLICY_BYTES`]; a larger one is refused before it is
/// read, so it never takes the daemon's memory.
pub fn read_policy_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
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
    /// On for policies whose table lookup costs more than a cache lookup: many rules or
    /// address prefixes (measured: a cache hit costs about as much as classifying with
    /// ~1000 port rules).
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

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the policy file: {source}")]
    Read {
        /// The file.
        origin: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the policy schema: unknown key, wrong type, missing key.
    #[error("{origin}{}: {field}: {message}", position(*.line, *.column))]
    Parse {
        /// The file.
        origin: String,
        /// Best guess at the field (`class[2].rate`), from the TOML table headers.
        field: String,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// What the TOML parser said.
        message: String,
    },
    /// Well-formed but not a valid policy.
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        /// The file.
        origin: String,
        /// The field (`rule[17].dst_port`).
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

impl ConfigError {
    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

/// ":line:column" for [`ConfigError::Parse`].
fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

impl Policy {
    /// Parses and validates policy text; `origin` names it in errors (usually the file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, ConfigError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| parse_error(origin, text, &e))?;
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

// ---------------------------------------------------------------------------------------
// The file schema.

/// The policy file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Name of the class unmatched traffic gets. Default: the class named "default", which
    /// must then exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_class: Option<String>,
    /// Interfaces with a link budget or options. Default: none (rules may still name
    /// interfaces; those are added without a budget).
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<InterfaceFile>,
    /// Traffic classes; at least one is required.
    #[serde(default, rename = "class")]
    classes: Vec<ClassFile>,
    /// Classification rules, first match wins. Default: none (all traffic is default).
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    rules: Vec<RuleFile>,
    /// Cache each flow's class: "auto" (default), "on" or "off".
    #[serde(default)]
    flow_cache: FlowCache,
}

/// An `[[interface]]` table.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct InterfaceFile {
    /// Kernel interface name, 1 to 15 characters, unique.
    name: String,
    /// Link budget shared by all classes by priority ("100Gbit"). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_rate: Option<Scalar>,
    /// Burst of the link budget ("8MiB"). Default: 10 ms of `link_rate`, at least 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_burst: Option<Scalar>,
    /// Forward packets arriving here in XDP (route lookup in the kernel's FIB, redirect to
    /// the egress interface; what the lookup cannot finish goes to the kernel). The egress
    /// interface must be registered too (listed or attached). Default: false.
    #[serde(default)]
    forward: bool,
}

/// A `[[class]]` table.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    /// Unique name, 1 to 32 of `A-Z a-z 0-9 _ -`.
    name: String,
    /// Strict priority on the link budget, 0 (lowest) to 7. Default: 0.
    #[serde(default)]
    priority: i64,
    /// Committed rate ("40Gbit"). Default: none, no packet is green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<Scalar>,
    /// Peak rate ("50Gbit"), at least `rate`. Default: unlimited, no packet is red.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceil: Option<Scalar>,
    /// Committed burst ("4MiB"), at least 1514 bytes. Default: 10 ms of `rate`, at least
    /// 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<Scalar>,
    /// Peak burst, at least 1514 bytes. Default: the larger of `burst` and 10 ms of `ceil`
    /// (at least 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceil_burst: Option<Scalar>,
    /// DSCP (0 to 63) written on green packets. Default: none, DSCP is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dscp: Option<i64>,
    /// Action for yellow packets. Default: "pass".
    #[serde(default = "default_exceed")]
    exceed: ActionName,
    /// Action for red packets. Default: "drop".
    #[serde(default = "default_violate")]
    violate: ActionName,
    /// DSCP (0 to 63) written by the "remark" action; required exactly when `exceed` or
    /// `violate` is "remark". Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remark_dscp: Option<i64>,
    /// Early congestion signals (CE, or a sparse drop for packets that are not ECN-capable)
    /// on the phantom queue of the bucket whose overflow is dropped or marked. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aqm: Option<bool>,
    /// Phantom sojourn above which packets are signalled ("1ms"). Default: 1 ms, or a quarter
    /// of the burst's time at the enforcing rate if that is less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aqm_target: Option<String>,
    /// Least time between two signals ("1ms"). Default: 1 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aqm_interval: Option<String>,
    /// Narrow the receive windows of the class's TCP flows on their returning ACKs so they
    /// slow down before the policer drops. Default: true on a class with a bucket whose
    /// overflow is dropped or marked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcp_window: Option<bool>,
}

/// A `[[rule]]` table. Every key but `class` is optional; an absent key matches anything.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// Name of the class matching packets get.
    class: String,
    /// Source prefix, IPv4 or IPv6 ("198.18.0.0/15"); a bare address is a host prefix.
    /// Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src: Option<String>,
    /// Destination prefix, same family as `src`. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dst: Option<String>,
    /// IP protocol: "tcp", "udp", "icmp", "icmpv6" or a number 0 to 255. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Scalar>,
    /// Source port (4791) or range ("8000-8002"); only tcp and udp have ports.
    /// Default: any (packets without ports match too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    src_port: Option<Scalar>,
    /// Destination port or range, like `src_port`. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dst_port: Option<Scalar>,
    /// DSCP, 0 to 63. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dscp: Option<i64>,
    /// Ingress interface name; added to the interfaces when not listed. Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iface: Option<String>,
    /// RoCEv2 BTH opcode: "cnp", "rc", "uc", "rd", "ud", a number (129, "0x81") or a range
    /// ("0x00-0x1f"); only UDP to port 4791 has one. Default: any (packets without one match
    /// too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roce_opcode: Option<Scalar>,
}

/// An action name in a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum ActionName {
    /// Pass unchanged.
    Pass,
    /// Drop.
    Drop,
    /// Set ECN CE on ECN-capable packets, drop the others.
    Ecn,
    /// Pass with the DSCP set to the class's `remark_dscp`.
    Remark,
}

/// Default of `exceed`.
const fn default_exceed() -> ActionName {
    ActionName::Pass
}

/// Default of `violate`.
const fn default_violate() -> ActionName {
    ActionName::Drop
}

/// A value that may be written as an integer or a string (ports, sizes, protocols, opcodes).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scalar {
    /// A TOML integer.
    Int(i64),
    /// A TOML string.
    Str(String),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for Scalar {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Int(i) => s.serialize_i64(*i),
            Scalar::Str(v) => s.serialize_str(v),
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

// ---------------------------------------------------------------------------------------
// TOML errors.

/// A TOML error with its position and, from the table headers above it, the field.
fn parse_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column, field) = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (Some(line), Some(column), field_at(text, line))
        }
        None => (None, None, "policy".to_string()),
    };
    ConfigError::Parse {
        origin: origin.to_string(),
        field,
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The field on 1-based line `line`: the last table header up to it (`class[2]`, counting
/// `[[class]]` headers) and the key assigned on it, if any.
fn field_at(text: &str, line: usize) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut table: Option<String> = None;
    let mut key = None;
    for (n, raw) in text.lines().take(line).enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            let count = counts.entry(name).or_insert(0);
            table = Some(format!("{name}[{count}]"));
            *count += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = Some(name.trim().to_string());
        }
        if n + 1 == line {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && k.chars().all(is_bare_key_char));
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k.to_string(),
        (None, None) => "policy".to_string(),
    }
}

/// Whether `c` may appear in a bare TOML key.
fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

// ---------------------------------------------------------------------------------------
// File → policy.

/// Checks a parsed file and builds the policy; knows the origin for errors.
struct Validator<'a> {
    origin: &'a str,
}

/// `class[i].field`.
fn class_field(i: usize, field: &str) -> String {
    format!("class[{i}].{field}")
}

/// `rule[i].field`.
fn rule_field(i: usize, field: &str) -> String {
    format!("rule[{i}].{field}")
}

/// `interface[i].field`.
fn iface_field(i: usize, field: &str) -> String {
    format!("interface[{i}].{field}")
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn policy(&self, file: &PolicyFile) -> Result<Policy, ConfigError> {
        if file.classes.is_empty() {
            return Err(self.err(
                "class",
                "no classes defined; a policy needs at least one [[class]]",
            ));
        }
        if file.classes.len() > MAX_CLASSES {
            return Err(self.err(
                "class",
                format!(
                    "{} classes, at most {MAX_CLASSES} are supported",
                    file.classes.len()
                ),
            ));
        }
        if file.rules.len() > MAX_RULES {
            return Err(self.err(
                "rule",
                format!(
                    "{} rules, at most {MAX_RULES} are supported",
                    file.rules.len()
                ),
            ));
        }
        if file.interfaces.len() > MAX_POLICY_IFACES {
            return Err(self.err(
                "interface",
                format!(
                    "{} interfaces, at most {MAX_POLICY_IFACES} are supported",
                    file.interfaces.len()
                ),
            ));
        }

        let mut interfaces = Vec::with_capacity(file.interfaces.len());
        for (i, f) in file.interfaces.iter().enumerate() {
            let spec = self.interface(i, f)?;
            if let Some(j) = interfaces
                .iter()
                .position(|s: &InterfaceSpec| s.name == spec.name)
            {
                return Err(self.err(
                    iface_field(i, "name"),
                    format!(
                        "duplicate interface \"{}\" (also interface[{j}])",
                        spec.name
                    ),
                ));
            }
            interfaces.push(spec);
        }

        let mut classes = Vec::with_capacity(file.classes.len());
        let mut class_ids: HashMap<&str, u32> = HashMap::new();
        for (i, f) in file.classes.iter().enumerate() {
            let spec = self.class(i, f)?;
            let id = u32::try_from(i).map_err(|_| self.err("class", "too many classes"))?;
            if let Some(j) = class_ids.insert(f.name.as_str(), id) {
                return Err(self.err(
                    class_field(i, "name"),
                    format!("duplicate class \"{}\" (also class[{j}])", f.name),
                ));
            }
            classes.push(spec);
        }

        let default_class = match &file.default_class {
            Some(name) => *class_ids.get(name.as_str()).ok_or_else(|| {
                self.err(
                    "default_class",
                    format!("no class is named \"{name}\"; {}", known(&class_ids)),
                )
            })?,
            None => *class_ids.get(DEFAULT_CLASS_NAME).ok_or_else(|| {
                self.err(
                    "default_class",
                    format!(
                        "not set, and no class is named \"{DEFAULT_CLASS_NAME}\"; set \
                         default_class or add a class \"{DEFAULT_CLASS_NAME}\""
                    ),
                )
            })?,
        };

        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, f) in file.rules.iter().enumerate() {
            rules.push(self.rule(i, f, &class_ids, &mut interfaces)?);
        }

        Ok(Policy {
            classes,
            default_class,
            rules,
            interfaces,
            flow_cache: file.flow_cache,
        })
    }

    fn interface(&self, i: usize, f: &InterfaceFile) -> Result<InterfaceSpec, ConfigError> {
        self.iface_name(&iface_field(i, "name"), &f.name)?;
        let rate = f
            .link_rate
            .as_ref()
            .map(|v| self.rate(&iface_field(i, "link_rate"), v))
            .transpose()?;
        let burst = match &f.link_burst {
            Some(v) => self.burst(&iface_field(i, "link_burst"), v)?,
            None => default_burst(rate.unwrap_or(0)),
        };
        Ok(InterfaceSpec {
            name: f.name.clone(),
            link_rate_bytes_per_sec: rate,
            link_burst_bytes: burst,
            forward: f.forward,
        })
    }

    fn class(&self, i: usize, f: &ClassFile) -> Result<ClassSpec, ConfigError> {
        let name_ok = !f.name.is_empty()
            && f.name.len() <= MAX_CLASS_NAME_LEN
            && f.name.chars().all(is_bare_key_char);
        if !name_ok {
            return Err(self.err(
                class_field(i, "name"),
                format!(
                    "\"{}\" is not a valid class name: 1 to {MAX_CLASS_NAME_LEN} of A-Z a-z 0-9 _ -",
                    f.name
                ),
            ));
        }
        let priority = u8::try_from(f.priority)
            .ok()
            .filter(|p| *p <= MAX_PRIORITY)
            .ok_or_else(|| {
                self.err(
                    class_field(i, "priority"),
                    format!("{} is out of range 0..={MAX_PRIORITY}", f.priority),
                )
            })?;
        let rate = f
            .rate
            .as_ref()
            .map(|v| self.rate(&class_field(i, "rate"), v))
            .transpose()?
            .unwrap_or(0);
        let ceil = f
            .ceil
            .as_ref()
            .map(|v| self.rate(&class_field(i, "ceil"), v))
            .transpose()?;
        if let Some(c) = ceil {
            if c < rate {
                return Err(self.err(
                    class_field(i, "ceil"),
                    format!(
                        "ceil {} is below rate {}; the peak rate must be at least the committed rate",
                        units::format_rate(c),
                        units::format_rate(rate)
                    ),
                ));
            }
        }
        let burst = match &f.burst {
            Some(v) => self.burst(&class_field(i, "burst"), v)?,
            None => default_burst(rate),
        };
        let ceil_burst = match &f.ceil_burst {
            Some(v) => self.burst(&class_field(i, "ceil_burst"), v)?,
            None => burst.max(ceil.map_or(0, default_burst)),
        };
        let conform = match f.dscp {
            Some(d) => ColourAction::remark(self.dscp(&class_field(i, "dscp"), d)?),
            None => ColourAction::PASS,
        };
        let remark_used = f.exceed == ActionName::Remark || f.violate == ActionName::Remark;
        let remark_dscp = match (f.remark_dscp, remark_used) {
            (Some(d), true) => Some(self.dscp(&class_field(i, "remark_dscp"), d)?),
            (None, false) => None,
            (None, true) => {
                let which = if f.exceed == ActionName::Remark {
                    "exceed"
                } else {
                    "violate"
                };
                return Err(self.err(
                    class_field(i, "remark_dscp"),
                    format!("missing: {which} = \"remark\" needs remark_dscp (0..={MAX_DSCP})"),
                ));
            }
            (Some(_), false) => {
                return Err(self.err(
                    class_field(i, "remark_dscp"),
                    "set, but neither exceed nor violate is \"remark\"; remove it or use \"remark\"",
                ));
            }
        };
        let action = |name: ActionName| match name {
            ActionName::Pass => ColourAction::PASS,
            ActionName::Drop => ColourAction::DROP,
            ActionName::Ecn => ColourAction::ECN,
            ActionName::Remark => ColourAction::remark(remark_dscp.unwrap_or(KEEP_DSCP)),
        };
        let (exceed, violate) = (action(f.exceed), action(f.violate));
        let enforcing = enforcing_bucket(rate, burst, ceil, ceil_burst, exceed, violate);
        let aqm = self.aqm(i, f, enforcing)?;
        if f.tcp_window == Some(true) && enforcing.is_none() {
            return Err(self.err(
                class_field(i, "tcp_window"),
                "no bucket of this class drops or marks what exceeds it: there is no rate to hold TCP to",
            ));
        }
        let tcp_window = enforcing.is_some() && f.tcp_window != Some(false);
        Ok(ClassSpec {
            name: f.name.clone(),
            priority,
            rate_bytes_per_sec: rate,
            ceil_bytes_per_sec: ceil,
            burst_bytes: burst,
            ceil_burst_bytes: ceil_burst,
            conform,
            exceed,
            violate,
            aqm,
            tcp_window,
        })
    }

    /// The class's AQM: only on a class with an `enforcing` bucket (rate, burst), one whose
    /// overflow is dropped or marked.
    fn aqm(
        &self,
        i: usize,
        f: &ClassFile,
        enforcing: Option<(u64, u64)>,
    ) -> Result<Option<AqmSpec>, ConfigError> {
        if f.aqm != Some(true) {
            for (key, set) in [
                ("aqm_target", f.aqm_target.is_some()),
                ("aqm_interval", f.aqm_interval.is_some()),
            ] {
                if set {
                    return Err(self.err(
                        class_field(i, key),
                        "set, but aqm is not true; add `aqm = true` or remove it",
                    ));
                }
            }
            return Ok(None);
        }
        let Some((bucket_rate, bucket_burst)) = enforcing else {
            return Err(self.err(
                class_field(i, "aqm"),
                "no bucket of this class drops or marks what exceeds it (a rate with exceed = \"drop\" or \"ecn\", or a ceil with violate = \"drop\" or \"ecn\"): there is no phantom queue to manage",
            ));
        };
        let duration = |key: &str, v: &Option<String>| -> Result<Option<u64>, ConfigError> {
            v.as_deref()
                .map(|s| {
                    units::parse_duration_ns(s)
                        .map_err(|e| self.err(class_field(i, key), e.to_string()))
                })
                .transpose()
        };
        let burst_ns = burst_time_ns(bucket_rate, bucket_burst);
        let target_ns = duration("aqm_target", &f.aqm_target)?
            .unwrap_or_else(|| DEFAULT_AQM_TARGET_NS.min(burst_ns / 4));
        if target_ns >= burst_ns {
            return Err(self.err(
                class_field(i, "aqm_target"),
                format!(
                    "{} is not below the burst's {} at the enforcing rate: the bucket would refuse before the AQM signals",
                    units::format_duration_ns(target_ns),
                    units::format_duration_ns(burst_ns)
                ),
            ));
        }
        let interval_ns =
            duration("aqm_interval", &f.aqm_interval)?.unwrap_or(DEFAULT_AQM_INTERVAL_NS);
        Ok(Some(AqmSpec {
            target_ns,
            interval_ns,
        }))
    }

    fn rule(
        &self,
        i: usize,
        f: &RuleFile,
        class_ids: &HashMap<&str, u32>,
        interfaces: &mut Vec<InterfaceSpec>,
    ) -> Result<RuleSpec, ConfigError> {
        let class = *class_ids.get(f.class.as_str()).ok_or_else(|| {
            self.err(
                rule_field(i, "class"),
                format!("no class is named \"{}\"; {}", f.class, known(class_ids)),
            )
        })?;
        let src = f
            .src
            .as_deref()
            .map(|s| parse_prefix(s).map_err(|r| self.err(rule_field(i, "src"), r)))
            .transpose()?;
        let dst = f
            .dst
            .as_deref()
            .map(|s| parse_prefix(s).map_err(|r| self.err(rule_field(i, "dst"), r)))
            .transpose()?;
        if let (Some(s), Some(d)) = (src, dst) {
            if s.family != d.family {
                return Err(self.err(
                    rule_field(i, "dst"),
                    format!(
                        "dst is {} but src is {}; a packet has one family, so this rule can never match",
                        family_name(d.family),
                        family_name(s.family)
                    ),
                ));
            }
        }
        let protocol = f
            .protocol
            .as_ref()
            .map(|v| parse_protocol(v).map_err(|r| self.err(rule_field(i, "protocol"), r)))
            .transpose()?;
        let ports = |name: &str, v: &Option<Scalar>| -> Result<Option<Range>, ConfigError> {
            let Some(v) = v else { return Ok(None) };
            let field = rule_field(i, name);
            let range = parse_range(v, MAX_PORT, "a port").map_err(|r| self.err(&field, r))?;
            if let Some(p) = protocol {
                if p != ipproto::TCP && p != ipproto::UDP {
                    return Err(self.err(
                        field,
                        format!(
                            "protocol {} has no ports (only tcp and udp do), so this rule can \
                             never match; drop {name} or the protocol",
                            protocol_name(p)
                        ),
                    ));
                }
            }
            Ok(Some(range))
        };
        let src_ports = ports("src_port", &f.src_port)?;
        let dst_ports = ports("dst_port", &f.dst_port)?;
        let dscp = f
            .dscp
            .map(|d| self.dscp(&rule_field(i, "dscp"), d))
            .transpose()?
            .map(|d| Range::one(u32::from(d)));
        let iface = match &f.iface {
            Some(name) => Some(self.iface_slot(i, name, interfaces)?),
            None => None,
        };
        let roce_opcode = match &f.roce_opcode {
            Some(v) => {
                let field = rule_field(i, "roce_opcode");
                let range = parse_roce_opcode(v).map_err(|r| self.err(&field, r))?;
                let roce = u32::from(ROCEV2_UDP_PORT);
                if protocol.is_some_and(|p| p != ipproto::UDP) {
                    return Err(self.err(
                        field,
                        "RoCEv2 runs over udp only, so with this protocol the rule can never match",
                    ));
                }
                if dst_ports.is_some_and(|r| !r.contains(roce)) {
                    return Err(self.err(
                        field,
                        format!(
                            "the opcode is read only for udp dst_port {roce}, which dst_port \
                             excludes, so this rule can never match"
                        ),
                    ));
                }
                Some(range)
            }
            None => None,
        };
        Ok(RuleSpec {
            class,
            src,
            dst,
            protocol: protocol.map(|p| Range::one(u32::from(p))),
            src_ports,
            dst_ports,
            dscp,
            iface,
            roce_opcode,
        })
    }

    /// The slot of interface `name`, appending it when no `[[interface]]` lists it.
    fn iface_slot(
        &self,
        i: usize,
        name: &str,
        interfaces: &mut Vec<InterfaceSpec>,
    ) -> Result<Range, ConfigError> {
        let field = rule_field(i, "iface");
        self.iface_name(&field, name)?;
        let index = match interfaces.iter().position(|s| s.name == name) {
            Some(index) => index,
            None => {
                if interfaces.len() >= MAX_POLICY_IFACES {
                    return Err(self.err(
                        field,
                        format!(
                            "adding interface \"{name}\" would make more than \
                             {MAX_POLICY_IFACES} interfaces"
                        ),
                    ));
                }
                interfaces.push(InterfaceSpec {
                    name: name.to_string(),
                    link_rate_bytes_per_sec: None,
                    link_burst_bytes: default_burst(0),
                    forward: false,
                });
                interfaces.len() - 1
            }
        };
        let slot = u32::try_from(index + 1).map_err(|_| self.err(&field, "too many interfaces"))?;
        Ok(Range::one(slot))
    }

    fn iface_name(&self, field: &str, name: &str) -> Result<(), ConfigError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_IFACE_NAME_LEN
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if ok {
            Ok(())
        } else {
            Err(self.err(
                field,
                format!(
                    "\"{name}\" is not a valid interface name: 1 to {MAX_IFACE_NAME_LEN} \
                     characters, no '/', ':' or whitespace"
                ),
            ))
        }
    }

    fn rate(&self, field: &str, v: &Scalar) -> Result<u64, ConfigError> {
        match v {
            Scalar::Str(s) => {
                let rate = units::parse_rate(s).map_err(|e| self.err(field, e.to_string()))?;
                if rate < MIN_RATE_BYTES_PER_SEC {
                    return Err(self.err(
                        field,
                        format!(
                            "{s} is below the lowest rate enforced exactly, {}",
                            units::format_rate(MIN_RATE_BYTES_PER_SEC)
                        ),
                    ));
                }
                Ok(rate)
            }
            Scalar::Int(i) => Err(self.err(
                field,
                format!("{i} has no unit (bits or bytes?); write it as a string: {RATE_HELP}"),
            )),
        }
    }

    fn burst(&self, field: &str, v: &Scalar) -> Result<u64, ConfigError> {
        let bytes = match v {
            Scalar::Str(s) => units::parse_size(s),
            Scalar::Int(i) => units::parse_size(&i.to_string()),
        }
        .map_err(|e| self.err(field, e.to_string()))?;
        if bytes < MIN_BURST_BYTES {
            return Err(self.err(
                field,
                format!(
                    "{bytes} bytes is below one full-size frame; a burst must be at least \
                     {MIN_BURST_BYTES} bytes"
                ),
            ));
        }
        Ok(bytes)
    }

    fn dscp(&self, field: &str, v: i64) -> Result<u8, ConfigError> {
        u8::try_from(v)
            .ok()
            .filter(|d| *d <= MAX_DSCP)
            .ok_or_else(|| self.err(field, format!("{v} is out of range 0..={MAX_DSCP}")))
    }
}

/// "known classes: a, b, c" for unknown-class errors.
fn known(class_ids: &HashMap<&str, u32>) -> String {
    let mut names: Vec<(&u32, &&str)> = class_ids.iter().map(|(n, id)| (id, n)).collect();
    names.sort();
    let names: Vec<&str> = names.into_iter().map(|(_, n)| *n).collect();
    format!("known classes: {}", names.join(", "))
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// Parses "a.b.c.d/len", "x::/len" or a bare address (a host prefix).
fn parse_prefix(s: &str) -> Result<Prefix, String> {
    let (addr_text, len_text) = match s.split_once('/') {
        Some((a, l)) => (a.trim(), Some(l.trim())),
        None => (s.trim(), None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!("\"{addr_text}\" is not an IPv4 or IPv6 address (expected e.g. \"198.18.0.0/15\" or \"2001:db8::/32\")")
    })?;
    let (family, bytes, max_len) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (Family::V4, b, 32u8)
        }
        IpAddr::V6(a) => (Family::V6, a.octets(), 128u8),
    };
    let len = match len_text {
        None => max_len,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max_len)
            .ok_or_else(|| format!("prefix length \"{l}\" in \"{s}\" is not in 0..={max_len}"))?,
    };
    let masked = mask(&bytes, len);
    if masked != bytes {
        let network = Prefix {
            family,
            addr: masked,
            len,
        };
        return Err(format!(
            "\"{s}\" has host bits set; did you mean \"{}\"?",
            prefix_string(&network)
        ));
    }
    Ok(Prefix {
        family,
        addr: bytes,
        len,
    })
}

/// "198.18.0.0/15".
fn prefix_string(p: &Prefix) -> String {
    let addr = match p.family {
        Family::V4 => IpAddr::from([p.addr[0], p.addr[1], p.addr[2], p.addr[3]]),
        Family::V6 => IpAddr::from(p.addr),
    };
    format!("{addr}/{}", p.len)
}

/// A number, decimal or "0x" hex.
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// An integer, or a string "n" or "lo-hi", within `0..=max`.
fn parse_range(v: &Scalar, max: u32, what: &str) -> Result<Range, String> {
    let out_of_range = || format!("{v} is out of range: {what} is 0..={max}");
    let (lo, hi) = match v {
        Scalar::Int(i) => {
            let n = u32::try_from(*i).map_err(|_| out_of_range())?;
            (n, n)
        }
        Scalar::Str(s) => {
            let malformed = || format!("{v} is not {what} or a range like \"8000-8002\"");
            match s.split_once('-') {
                Some((l, h)) => (
                    parse_number(l).ok_or_else(malformed)?,
                    parse_number(h).ok_or_else(malformed)?,
                ),
                None => {
                    let n = parse_number(s).ok_or_else(malformed)?;
                    (n, n)
                }
            }
        }
    };
    if lo > max || hi > max {
        return Err(out_of_range());
    }
    if lo > hi {
        return Err(format!("{v} is an empty range: {lo} is above {hi}"));
    }
    Ok(Range { lo, hi })
}

/// "tcp", "udp", "icmp", "icmpv6" or a number.
fn parse_protocol(v: &Scalar) -> Result<u8, String> {
    let accepted = "expected \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or a number 0..=255";
    let n = match v {
        Scalar::Int(i) => u32::try_from(*i).ok(),
        Scalar::Str(s) => PROTOCOL_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
            .map(|(_, p)| u32::from(*p))
            .or_else(|| parse_number(s)),
    };
    n.filter(|n| *n <= MAX_BYTE)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| format!("{v} is not a protocol; {accepted}"))
}

/// "tcp" for 6, "132" for SCTP.
fn protocol_name(p: u8) -> String {
    PROTOCOL_NAMES
        .iter()
        .find(|(_, n)| *n == p)
        .map_or_else(|| p.to_string(), |(name, _)| (*name).to_string())
}

/// A RoCEv2 opcode name, number or range.
fn parse_roce_opcode(v: &Scalar) -> Result<Range, String> {
    if let Scalar::Str(s) = v {
        if let Some((_, r)) = ROCE_OPCODE_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        {
            return Ok(*r);
        }
    }
    parse_range(v, MAX_BYTE, "an opcode").map_err(|r| {
        format!("{r}; expected \"cnp\", \"rc\", \"uc\", \"rd\", \"ud\", a number (\"0x81\") or a range (\"0x00-0x1f\")")
    })
}

// ---------------------------------------------------------------------------------------
// Policy → file.

/// Origin named in errors from [`Policy::to_toml_string`].
const WRITER_ORIGIN: &str = "policy being written";

/// Turns a policy back into the file schema.
struct Writer<'a> {
    policy: &'a Policy,
}

/// A rate as text that parses back to exactly `bytes`.
fn exact_rate(bytes: u64) -> Scalar {
    let text = units::format_rate(bytes);
    if units::parse_rate(&text) == Ok(bytes) {
        Scalar::Str(text)
    } else {
        Scalar::Str(format!("{bytes}B/s"))
    }
}

/// A size as text that parses back to exactly `bytes`.
fn exact_size(bytes: u64) -> Scalar {
    let text = units::format_bytes(bytes);
    if units::parse_size(&text) == Ok(bytes) {
        Scalar::Str(text)
    } else {
        Scalar::Str(format!("{bytes}B"))
    }
}

impl Writer<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: WRITER_ORIGIN.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn policy(&self) -> Result<PolicyFile, ConfigError> {
        let p = self.policy;
        let default = usize::try_from(p.default_class)
            .ok()
            .and_then(|i| p.classes.get(i))
            .ok_or_else(|| self.err("default_class", "no class has this id"))?;
        let interfaces = p
            .interfaces
            .iter()
            .map(|s| InterfaceFile {
                name: s.name.clone(),
                link_rate: s.link_rate_bytes_per_sec.map(exact_rate),
                link_burst: Some(exact_size(s.link_burst_bytes)),
                forward: s.forward,
            })
            .collect();
        let classes = p
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| self.class(i, c))
            .collect::<Result<_, _>>()?;
        let rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| self.rule(i, r))
            .collect::<Result<_, _>>()?;
        Ok(PolicyFile {
            default_class: Some(default.name.clone()),
            interfaces,
            classes,
            rules,
            flow_cache: p.flow_cache,
        })
    }

    fn class(&self, i: usize, c: &ClassSpec) -> Result<ClassFile, ConfigError> {
        let dscp = match c.conform {
            ColourAction::PASS => None,
            a if a.verdict == Verdict::Pass as u8 => Some(i64::from(a.dscp)),
            _ => {
                return Err(self.err(
                    class_field(i, "conform"),
                    "a class file can only pass green packets",
                ))
            }
        };
        let (exceed, exceed_dscp) = self.action(&class_field(i, "exceed"), c.exceed)?;
        let (violate, violate_dscp) = self.action(&class_field(i, "violate"), c.violate)?;
        let remark_dscp = match (exceed_dscp, violate_dscp) {
            (Some(a), Some(b)) if a != b => {
                return Err(self.err(
                    class_field(i, "remark_dscp"),
                    "exceed and violate remark to different DSCPs",
                ))
            }
            (a, b) => a.or(b).map(i64::from),
        };
        Ok(ClassFile {
            name: c.name.clone(),
            priority: i64::from(c.priority),
            rate: (c.rate_bytes_per_sec > 0).then(|| exact_rate(c.rate_bytes_per_sec)),
            ceil: c.ceil_bytes_per_sec.map(exact_rate),
            burst: Some(exact_size(c.burst_bytes)),
            ceil_burst: Some(exact_size(c.ceil_burst_bytes)),
            dscp,
            exceed,
            violate,
            remark_dscp,
            aqm: c.aqm.map(|_| true),
            aqm_target: c.aqm.map(|a| units::format_duration_ns(a.target_ns)),
            aqm_interval: c.aqm.map(|a| units::format_duration_ns(a.interval_ns)),
            // Written only where it differs from the default.
            tcp_window: (!c.tcp_window
                && enforcing_bucket(
                    c.rate_bytes_per_sec,
                    c.burst_bytes,
                    c.ceil_bytes_per_sec,
                    c.ceil_burst_bytes,
                    c.exceed,
                    c.violate,
                )
                .is_some())
            .then_some(false),
        })
    }

    /// An action's name and, for "remark", its DSCP.
    fn action(
        &self,
        field: &str,
        a: ColourAction,
    ) -> Result<(ActionName, Option<u8>), ConfigError> {
        match a {
            ColourAction::PASS => Ok((ActionName::Pass, None)),
            ColourAction::DROP => Ok((ActionName::Drop, None)),
            ColourAction::ECN => Ok((ActionName::Ecn, None)),
            a if a.verdict == Verdict::Pass as u8 => Ok((ActionName::Remark, Some(a.dscp))),
            _ => Err(self.err(field, "this action cannot be written in a policy file")),
        }
    }

    fn rule(&self, i: usize, r: &RuleSpec) -> Result<RuleFile, ConfigError> {
        let p = self.policy;
        let class = usize::try_from(r.class)
            .ok()
            .and_then(|id| p.classes.get(id))
            .ok_or_else(|| self.err(rule_field(i, "class"), "no class has this id"))?;
        let single = |field: &str, range: Range| -> Result<u32, ConfigError> {
            if range.lo == range.hi {
                Ok(range.lo)
            } else {
                Err(self.err(
                    rule_field(i, field),
                    "a policy file takes a single value here",
                ))
            }
        };
        let ports = |range: Range| {
            if range.lo == range.hi {
                Scalar::Int(i64::from(range.lo))
            } else {
                Scalar::Str(format!("{}-{}", range.lo, range.hi))
            }
        };
        let protocol = r
            .protocol
            .map(|range| single("protocol", range))
            .transpose()?
            .map(|n| match u8::try_from(n) {
                Ok(p) if PROTOCOL_NAMES.iter().any(|(_, q)| *q == p) => {
                    Scalar::Str(protocol_name(p))
                }
                _ => Scalar::Int(i64::from(n)),
            });
        let iface = match r.iface {
            Some(range) => {
                let slot = single("iface", range)?;
                let name = usize::try_from(slot)
                    .ok()
                    .and_then(|s| s.checked_sub(1))
                    .and_then(|s| p.interfaces.get(s))
                    .ok_or_else(|| {
                        self.err(rule_field(i, "iface"), "no interface has this slot")
                    })?;
                Some(name.name.clone())
            }
            None => None,
        };
        let roce_opcode =
            r.roce_opcode.map(
                |range| match ROCE_OPCODE_NAMES.iter().find(|(_, r)| *r == range) {
                    Some((name, _)) => Scalar::Str((*name).to_string()),
                    None if range.lo == range.hi => Scalar::Str(format!("{:#04x}", range.lo)),
                    None => Scalar::Str(format!("{:#04x}-{:#04x}", range.lo, range.hi)),
                },
            );
        Ok(RuleFile {
            class: class.name.clone(),
            src: r.src.as_ref().map(prefix_string),
            dst: r.dst.as_ref().map(prefix_string),
            protocol,
            src_port: r.src_ports.map(ports),
            dst_port: r.dst_ports.map(ports),
            dscp: r
                .dscp
                .map(|range| single("dscp", range))
                .transpose()?
                .map(i64::from),
            iface,
            roce_opcode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "test.toml";

    /// A minimal valid policy to extend.
    const BASE: &str = r#"
[[class]]
name = "default"

[[class]]
name = "rdma"
priority = 6
rate = "40Gbit"
ceil = "50Gbit"
"#;

    fn load(text: &str) -> Result<Policy, ConfigError> {
        Policy::from_toml_str(text, ORIGIN)
    }

    fn with_base(extra: &str) -> Result<Policy, ConfigError> {
        load(&format!("{BASE}\n{extra}"))
    }

    /// Asserts `result` fails naming the file, `field` and `reason_part`.
    #[track_caller]
    fn assert_err(result: Result<Policy, ConfigError>, field: &str, reason_part: &str) {
        let e = match result {
            Ok(p) => panic!("expected an error on {field}, got {p:?}"),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert!(msg.starts_with(ORIGIN), "names the file: {msg}");
        assert_eq!(e.field(), Some(field), "field of: {msg}");
        assert!(msg.contains(field), "names the field {field}: {msg}");
        assert!(msg.contains(reason_part), "says `{reason_part}`: {msg}");
    }

    fn default_toml() -> &'static str {
        include_str!("../../config/default.toml")
    }

    #[test]
    fn minimal_policy_fills_defaults() {
        let p = with_base("").expect("valid");
        assert_eq!(p.default_class, 0);
        assert_eq!(p.class_id("rdma"), Some(1));
        assert_eq!(p.class_id("nope"), None);
        let d = &p.classes[0];
        assert_eq!(d.priority, 0);
        assert_eq!(d.rate_bytes_per_sec, 0);
        assert_eq!(d.ceil_bytes_per_sec, None);
        assert_eq!(d.burst_bytes, MIN_DEFAULT_BURST_BYTES);
        assert_eq!(d.ceil_burst_bytes, MIN_DEFAULT_BURST_BYTES);
        assert_eq!(d.conform, ColourAction::PASS);
        assert_eq!(d.exceed, ColourAction::PASS);
        assert_eq!(d.violate, ColourAction::DROP);
        let r = &p.classes[1];
        assert_eq!(r.rate_bytes_per_sec, 5_000_000_000);
        assert_eq!(r.ceil_bytes_per_sec, Some(6_250_000_000));
        assert_eq!(r.burst_bytes, 50_000_000, "10 ms of 40 Gbit/s");
        assert_eq!(r.ceil_burst_bytes, 62_500_000, "10 ms of 50 Gbit/s");
        assert!(p.rules.is_empty());
        assert!(p.interfaces.is_empty());
    }

    #[test]
    fn default_policy_parses_with_the_ai_catalogue() {
        let p = load(default_toml()).expect("config/default.toml is valid");
        let names: Vec<&str> = p.classes.iter().map(|c| c.name.as_str()).collect();
        for want in [
            "roce_cnp",
            "rdma",
            "collective",
            "inference",
            "storage",
            "bulk",
            "default",
        ] {
            assert!(names.contains(&want), "class {want} in {names:?}");
        }
        let class = |name: &str| &p.classes[p.class_id(name).expect(name) as usize];
        assert_eq!(p.default_class, p.class_id("default").expect("default"));
        assert_eq!(class("roce_cnp").priority, 7);
        assert_eq!(class("roce_cnp").exceed, ColourAction::PASS);
        assert_eq!(
            class("roce_cnp").violate,
            ColourAction::PASS,
            "CNPs are never dropped"
        );
        assert_eq!(class("rdma").priority, 6);
        assert_eq!(class("rdma").exceed, ColourAction::ECN);
        assert_eq!(class("rdma").rate_bytes_per_sec, 5_000_000_000);
        assert_eq!(class("rdma").ceil_bytes_per_sec, Some(6_250_000_000));
        assert_eq!(class("collective").priority, 5);
        assert_eq!(class("inference").priority, 4);
        assert_eq!(class("storage").priority, 3);
        assert_eq!(class("bulk").priority, 1);
        assert_eq!(class("bulk").exceed, ColourAction::remark(8));
        assert_eq!(class("default").priority, 0);

        let cnp = p.class_id("roce_cnp").expect("cnp");
        let rdma = p.class_id("rdma").expect("rdma");
        assert_eq!(p.rules[0].class, cnp, "the CNP rule comes first");
        assert_eq!(p.rules[0].roce_opcode, Some(Range::one(0x81)));
        assert_eq!(p.rules[0].dst_ports, Some(Range::one(4791)));
        let first_rdma = p
            .rules
            .iter()
            .position(|r| r.class == rdma)
            .expect("rdma rule");
        assert!(first_rdma > 0, "the CNP rule precedes the RoCE data rule");
        assert_eq!(p.rules[first_rdma].dst_ports, Some(Range::one(4791)));
        let collective = p.class_id("collective").expect("collective");
        assert!(p
            .rules
            .iter()
            .any(|r| r.class == collective && r.dst.is_some()));
    }

    #[test]
    fn default_policy_round_trips() {
        let p = load(default_toml()).expect("valid");
        let text = p.to_toml_string().expect("writable");
        assert_eq!(load(&text).expect("rewritten text is valid"), p, "{text}");
    }

    const FULL: &str = r#"
default_class = "other"

[[interface]]
name = "eth0"
link_rate = "100Gbit"
link_burst = "8MiB"
forward = true

[[interface]]
name = "eth1"
link_rate = "25Gbit"

[[class]]
name = "other"

[[class]]
name = "gold"
priority = 7
rate = "1.5Gbit"
ceil = "2Gbit"
burst = 100000
ceil_burst = "2MB"
dscp = 46
exceed = "remark"
violate = "ecn"
remark_dscp = 10

[[class]]
name = "scavenger"
priority = 1
ceil = "10Mbps"
exceed = "pass"
violate = "drop"

[[rule]]
class = "gold"
src = "198.18.0.0/15"
dst = "198.19.1.1"
protocol = "udp"
src_port = 4791
dst_port = "4791"
dscp = 26
iface = "eth1"
roce_opcode = "0x00-0x1f"

[[rule]]
class = "scavenger"
dst = "2001:db8::/32"
protocol = 6
dst_port = "8000-8002"
iface = "ib0"

[[rule]]
class = "gold"
protocol = "icmpv6"

[[rule]]
class = "gold"
protocol = 132
"#;

    fn v4(addr: [u8; 4], len: u8) -> Prefix {
        Prefix::v4(addr, len)
    }

    #[test]
    fn full_example_builds_the_expected_policy() {
        let p = load(FULL).expect("valid");
        let expected = Policy {
            classes: vec![
                ClassSpec {
                    name: "other".into(),
                    priority: 0,
                    rate_bytes_per_sec: 0,
                    ceil_bytes_per_sec: None,
                    burst_bytes: 65536,
                    ceil_burst_bytes: 65536,
                    conform: ColourAction::PASS,
                    exceed: ColourAction::PASS,
                    violate: ColourAction::DROP,
                    aqm: None,
                    tcp_window: false,
                },
                ClassSpec {
                    name: "gold".into(),
                    priority: 7,
                    rate_bytes_per_sec: 187_500_000,
                    ceil_bytes_per_sec: Some(250_000_000),
                    burst_bytes: 100_000,
                    ceil_burst_bytes: 2_000_000,
                    conform: ColourAction::remark(46),
                    exceed: ColourAction::remark(10),
                    violate: ColourAction::ECN,
                    aqm: None,
                    tcp_window: true,
                },
                ClassSpec {
                    name: "scavenger".into(),
                    priority: 1,
                    rate_bytes_per_sec: 0,
                    ceil_bytes_per_sec: Some(1_250_000),
                    burst_bytes: 65536,
                    ceil_burst_bytes: 65536,
                    conform: ColourAction::PASS,
                    exceed: ColourAction::PASS,
                    violate: ColourAction::DROP,
                    aqm: None,
                    tcp_window: true,
                },
            ],
            default_class: 0,
            rules: vec![
                RuleSpec {
                    class: 1,
                    src: Some(v4([198, 18, 0, 0], 15)),
                    dst: Some(v4([198, 19, 1, 1], 32)),
                    protocol: Some(Range::one(17)),
                    src_ports: Some(Range::one(4791)),
                    dst_ports: Some(Range::one(4791)),
                    dscp: Some(Range::one(26)),
                    iface: Some(Range::one(2)),
                    roce_opcode: Some(Range { lo: 0, hi: 0x1f }),
                },
                RuleSpec {
                    class: 2,
                    dst: Some(Prefix {
                        family: Family::V6,
                        addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        len: 32,
                    }),
                    protocol: Some(Range::one(6)),
                    dst_ports: Some(Range { lo: 8000, hi: 8002 }),
                    iface: Some(Range::one(3)),
                    ..RuleSpec::default()
                },
                RuleSpec {
                    class: 1,
                    protocol: Some(Range::one(58)),
                    ..RuleSpec::default()
                },
                RuleSpec {
                    class: 1,
                    protocol: Some(Range::one(132)),
                    ..RuleSpec::default()
                },
            ],
            interfaces: vec![
                InterfaceSpec {
                    name: "eth0".into(),
                    link_rate_bytes_per_sec: Some(12_500_000_000),
                    link_burst_bytes: 8 << 20,
                    forward: true,
                },
                InterfaceSpec {
                    name: "eth1".into(),
                    link_rate_bytes_per_sec: Some(3_125_000_000),
                    link_burst_bytes: 31_250_000,
                    forward: false,
                },
                InterfaceSpec {
                    name: "ib0".into(),
                    link_rate_bytes_per_sec: None,
                    link_burst_bytes: MIN_DEFAULT_BURST_BYTES,
                    forward: false,
                },
            ],
            flow_cache: FlowCache::Auto,
        };
        assert_eq!(p, expected);
    }

    #[test]
    fn full_example_round_trips_through_toml() {
        let p = load(FULL).expect("valid");
        let text = p.to_toml_string().expect("writable");
        let again = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again, p, "{text}");
        assert_eq!(again.to_toml_string().expect("writable"), text, "stable");
    }

    #[test]
    fn example_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let entries = std::fs::read_dir(&dir).expect("config/examples exists");
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 0, "at least one example");
        Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml"))
            .expect("default.toml loads from disk");
    }

    #[test]
    fn missing_file_names_it() {
        let e = Policy::load(Path::new("/nonexistent/policy.toml")).expect_err("missing");
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/policy.toml"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_line_and_field() {
        let text = format!("{BASE}rat = \"1Gbit\"\n");
        let e = load(&text).expect_err("unknown key");
        let msg = e.to_string();
        assert!(
            matches!(e, ConfigError::Parse { line: Some(10), .. }),
            "{msg}"
        );
        assert_eq!(e.field(), Some("class[1].rat"), "{msg}");
        assert!(msg.starts_with("test.toml:10:"), "{msg}");
        assert!(msg.contains("unknown field `rat`"), "{msg}");

        let e = with_base("[[rule]]\nclass = \"rdma\"\nport = 1\n").expect_err("unknown key");
        assert_eq!(e.field(), Some("rule[0].port"), "{e}");
        let e = load(&format!("defualt_class = \"x\"\n{BASE}")).expect_err("top level");
        assert_eq!(e.field(), Some("defualt_class"), "{e}");
        let e = with_base("[[interface]]\nname = \"eth0\"\nspeed = 1\n").expect_err("iface");
        assert_eq!(e.field(), Some("interface[0].speed"), "{e}");
        let e = with_base("[[nope]]\n").expect_err("table");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn type_and_syntax_errors_name_the_line() {
        let e = with_base("[[class]]\nname = \"x\"\npriority = \"high\"\n").expect_err("type");
        assert_eq!(e.field(), Some("class[2].priority"), "{e}");
        let e = with_base("[[class]]\nname = \"x\"\nexceed = \"explode\"\n").expect_err("action");
        assert_eq!(e.field(), Some("class[2].exceed"), "{e}");
        assert!(e.to_string().contains("explode"), "{e}");
        let e = with_base("[[rule]]\ndst_port = 1\n").expect_err("missing class");
        assert!(e.to_string().contains("missing field `class`"), "{e}");
        assert!(e.to_string().contains("rule[0]"), "{e}");
        let e = load("[[class]\nname = 1").expect_err("syntax");
        assert!(matches!(e, ConfigError::Parse { line: Some(1), .. }), "{e}");
    }

    #[test]
    fn no_classes() {
        assert_err(load(""), "class", "no classes");
        assert_err(load("default_class = \"x\""), "class", "no classes");
    }

    #[test]
    fn default_class_must_exist() {
        assert_err(
            load("[[class]]\nname = \"a\"\n"),
            "default_class",
            "no class is named \"default\"",
        );
        assert_err(
            load(&format!("default_class = \"gold\"\n{BASE}")),
            "default_class",
            "no class is named \"gold\"",
        );
        let p = load("default_class = \"a\"\n[[class]]\nname = \"a\"\n").expect("valid");
        assert_eq!(p.default_class, 0);
    }

    #[test]
    fn duplicate_class_names() {
        assert_err(
            with_base("[[class]]\nname = \"rdma\"\n"),
            "class[2].name",
            "duplicate",
        );
    }

    #[test]
    fn bad_class_names() {
        assert_err(
            with_base("[[class]]\nname = \"a b\"\n"),
            "class[2].name",
            "not a valid",
        );
        assert_err(
            with_base("[[class]]\nname = \"\"\n"),
            "class[2].name",
            "not a valid",
        );
        let long = "x".repeat(MAX_CLASS_NAME_LEN + 1);
        assert_err(
            with_base(&format!("[[class]]\nname = \"{long}\"\n")),
            "class[2].name",
            "1 to 32",
        );
        let ok = "x".repeat(MAX_CLASS_NAME_LEN);
        with_base(&format!("[[class]]\nname = \"{ok}\"\n")).expect("32 characters are fine");
    }

    #[test]
    fn too_many_classes() {
        let mut text = String::from("[[class]]\nname = \"default\"\n");
        for i in 1..MAX_CLASSES {
            text.push_str(&format!("[[class]]\nname = \"c{i}\"\n"));
        }
        load(&text).expect("MAX_CLASSES classes are fine");
        text.push_str("[[class]]\nname = \"one_too_many\"\n");
        assert_err(load(&text), "class", "at most 256");
    }

    #[test]
    fn priority_range() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\npriority = 8\n"),
            "class[2].priority",
            "0..=7",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\npriority = -1\n"),
            "class[2].priority",
            "0..=7",
        );
    }

    #[test]
    fn bad_units() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = \"fast\"\n"),
            "class[2].rate",
            "a rate is",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = 40\n"),
            "class[2].rate",
            "no unit",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = \"-1Gbit\"\n"),
            "class[2].rate",
            "negative",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = \"0bit\"\n"),
            "class[2].rate",
            "zero",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nceil = \"1Gb\"\n"),
            "class[2].ceil",
            "unknown unit",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nburst = \"4M\"\n"),
            "class[2].burst",
            "a size is",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nburst = -5\n"),
            "class[2].burst",
            "negative",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nceil_burst = \"lots\"\n"),
            "class[2].ceil_burst",
            "a size is",
        );
        assert_err(
            with_base("[[interface]]\nname = \"eth0\"\nlink_rate = \"100G\"\n"),
            "interface[0].link_rate",
            "a rate is",
        );
        assert_err(
            with_base("[[interface]]\nname = \"eth0\"\nlink_burst = \"8Q\"\n"),
            "interface[0].link_burst",
            "a size is",
        );
    }

    #[test]
    fn bursts_hold_a_frame() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\nburst = 1000\n"),
            "class[2].burst",
            "at least 1514",
        );
        assert_err(
            with_base("[[interface]]\nname = \"eth0\"\nlink_burst = \"1kB\"\n"),
            "interface[0].link_burst",
            "at least 1514",
        );
        with_base("[[class]]\nname = \"x\"\nburst = \"1514B\"\n").expect("one frame is enough");
    }

    #[test]
    fn policy_files_over_the_cap_are_refused_unread() {
        let path = std::env::temp_dir().join(format!("dp-big-policy-{}.toml", std::process::id()));
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(MAX_POLICY_BYTES + 1).expect("sparse file");
        let err = Policy::load(&path).expect_err("too large");
        let _ = std::fs::remove_file(&path);
        assert!(err.to_string().contains("larger than the 16 MiB"), "{err}");
    }

    #[test]
    fn rates_below_the_enforceable_minimum_are_refused() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = \"8bit\"\n"),
            "class[2].rate",
            "below the lowest rate enforced exactly, 480bit",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nceil = \"400bit\"\n"),
            "class[2].ceil",
            "480bit",
        );
        assert!(with_base("[[class]]\nname = \"x\"\nrate = \"480bit\"\n").is_ok());
    }

    #[test]
    fn ceil_below_rate() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = \"2Gbit\"\nceil = \"1Gbit\"\n"),
            "class[2].ceil",
            "below rate 2Gbit",
        );
    }

    #[test]
    fn ceil_burst_defaults_to_the_larger_of_burst_and_ceil() {
        let p = with_base(
            "[[class]]\nname = \"x\"\nrate = \"1Gbit\"\nceil = \"1Gbit\"\nburst = \"16MiB\"\n",
        )
        .expect("valid");
        assert_eq!(p.classes[2].ceil_burst_bytes, 16 << 20, "burst is larger");
        let p = with_base("[[class]]\nname = \"x\"\nceil = \"100Gbit\"\n").expect("valid");
        assert_eq!(p.classes[2].burst_bytes, MIN_DEFAULT_BURST_BYTES);
        assert_eq!(
            p.classes[2].ceil_burst_bytes, 125_000_000,
            "10 ms of ceil is larger"
        );
    }

    #[test]
    fn aqm_defaults_bounds_and_round_trip() {
        let class = |extra: &str| {
            with_base(&format!(
                "[[class]]\nname = \"x\"\nrate = \"100Mbit\"\nexceed = \"drop\"\n{extra}"
            ))
        };
        let p = class("aqm = true\n").expect("valid");
        let aqm = p.classes[2].aqm.expect("on");
        assert_eq!(
            aqm.target_ns, DEFAULT_AQM_TARGET_NS,
            "1 ms is below a quarter of the burst"
        );
        assert_eq!(aqm.interval_ns, DEFAULT_AQM_INTERVAL_NS);
        let p = class("aqm = true\nburst = \"40000B\"\n").expect("valid");
        assert_eq!(
            p.classes[2].aqm.expect("on").target_ns,
            800_000,
            "a quarter of 3.2 ms of burst"
        );
        let p =
            class("aqm = true\naqm_target = \"250us\"\naqm_interval = \"2ms\"\n").expect("valid");
        assert_eq!(
            p.classes[2].aqm,
            Some(AqmSpec {
                target_ns: 250_000,
                interval_ns: 2_000_000
            })
        );
        let text = p.to_toml_string().expect("writable");
        assert_eq!(load(&text).expect("valid"), p, "{text}");
        assert_eq!(
            class("").expect("valid").classes[2].aqm,
            None,
            "off by default"
        );
        assert_err(
            class("aqm_target = \"1ms\"\n"),
            "class[2].aqm_target",
            "aqm is not true",
        );
        assert_err(
            class("aqm = true\naqm_interval = \"5\"\n"),
            "class[2].aqm_interval",
            "has no unit",
        );
        assert_err(
            class("aqm = true\naqm_target = \"1s\"\n"),
            "class[2].aqm_target",
            "not below the burst",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nrate = \"1Gbit\"\naqm = true\n"),
            "class[2].aqm",
            "no phantom queue",
        );
        let peak = with_base(
            "[[class]]\nname = \"x\"\nrate = \"1Gbit\"\nceil = \"2Gbit\"\nviolate = \"ecn\"\naqm = true\n",
        )
        .expect("a ceil whose overflow is marked");
        assert!(peak.classes[2].aqm.is_some());
    }

    #[test]
    fn dscp_range() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\ndscp = 64\n"),
            "class[2].dscp",
            "0..=63",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nexceed = \"remark\"\nremark_dscp = 99\n"),
            "class[2].remark_dscp",
            "0..=63",
        );
        assert_err(
            with_base("[[rule]]\nclass = \"rdma\"\ndscp = 64\n"),
            "rule[0].dscp",
            "0..=63",
        );
        assert_err(
            with_base("[[rule]]\nclass = \"rdma\"\ndscp = -1\n"),
            "rule[0].dscp",
            "0..=63",
        );
    }

    #[test]
    fn remark_needs_remark_dscp_and_only_then() {
        assert_err(
            with_base("[[class]]\nname = \"x\"\nexceed = \"remark\"\n"),
            "class[2].remark_dscp",
            "exceed = \"remark\" needs remark_dscp",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nviolate = \"remark\"\n"),
            "class[2].remark_dscp",
            "violate = \"remark\" needs remark_dscp",
        );
        assert_err(
            with_base("[[class]]\nname = \"x\"\nremark_dscp = 8\n"),
            "class[2].remark_dscp",
            "neither exceed nor violate",
        );
        let p = with_base("[[class]]\nname = \"x\"\nviolate = \"remark\"\nremark_dscp = 8\n")
            .expect("valid");
        assert_eq!(p.classes[2].violate, ColourAction::remark(8));
        assert_eq!(p.classes[2].exceed, ColourAction::PASS);
    }

    #[test]
    fn unknown_class_in_rule() {
        assert_err(
            with_base("[[rule]]\nclass = \"gold\"\n"),
            "rule[0].class",
            "no class is named \"gold\"; known classes: default, rdma",
        );
    }

    #[test]
    fn too_many_rules() {
        let mut text = String::from(BASE);
        for _ in 0..MAX_RULES {
            text.push_str("[[rule]]\nclass = \"rdma\"\n");
        }
        assert_eq!(
            load(&text).expect("MAX_RULES rules are fine").rules.len(),
            MAX_RULES
        );
        text.push_str("[[rule]]\nclass = \"rdma\"\n");
        assert_err(load(&text), "rule", "at most 16384");
    }

    #[test]
    fn interfaces_unique_valid_and_bounded() {
        assert_err(
            with_base("[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth0\"\n"),
            "interface[1].name",
            "duplicate interface \"eth0\"",
        );
        assert_err(
            with_base("[[interface]]\nname = \"averyveryverylongname\"\n"),
            "interface[0].name",
            "1 to 15",
        );
        assert_err(
            with_base("[[interface]]\nname = \"\"\n"),
            "interface[0].name",
            "not a valid",
        );
        assert_err(
            with_base("[[rule]]\nclass = \"rdma\"\niface = \"a/b\"\n"),
            "rule[0].iface",
            "not a valid",
        );
        assert_err(
            with_base("[[rule]]\nclass = \"rdma\"\niface = \"0123456789abcdef\"\n"),
            "rule[0].iface",
            "1 to 15",
        );

        let mut text = String::from(BASE);
        for i in 0..MAX_POLICY_IFACES {
            text.push_str(&format!("[[interface]]\nname = \"eth{i}\"\n"));
        }
        load(&text).expect("63 interfaces are fine");
        let mut over = text.clone();
        over.push_str("[[interface]]\nname = \"one_more\"\n");
        assert_err(load(&over), "interface", "at most 63");
        text.push_str("[[rule]]\nclass = \"rdma\"\niface = \"eth5\"\n");
        text.push_str("[[rule]]\nclass = \"rdma\"\niface = \"extra\"\n");
        assert_err(load(&text), "rule[1].iface", "more than 63");
    }

    #[test]
    fn rule_interfaces_are_appended_once() {
        let p = with_base(
            "[[interface]]\nname = \"eth0\"\n\
             [[rule]]\nclass = \"rdma\"\niface = \"eth9\"\n\
             [[rule]]\nclass = \"rdma\"\niface = \"eth0\"\n\
             [[rule]]\nclass = \"rdma\"\niface = \"eth9\"\n",
        )
        .expect("valid");
        let names: Vec<&str> = p.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth9"]);
        assert_eq!(p.rules[0].iface, Some(Range::one(2)));
        assert_eq!(p.rules[1].iface, Some(Range::one(1)));
        assert_eq!(p.rules[2].iface, Some(Range::one(2)));
        assert!(!p.interfaces[1].forward);
        assert_eq!(p.interfaces[1].link_rate_bytes_per_sec, None);
    }

    #[test]
    fn bad_prefixes() {
        let rule =
            |k: &str, v: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{k} = \"{v}\"\n"));
        assert_err(
            rule("src", "198.18.0.1/15"),
            "rule[0].src",
            "host bits set; did you mean \"198.18.0.0/15\"",
        );
        assert_err(
            rule("dst", "2001:db8::1/32"),
            "rule[0].dst",
            "did you mean \"2001:db8::/32\"",
        );
        assert_err(rule("src", "10.0.0.0/33"), "rule[0].src", "0..=32");
        assert_err(rule("dst", "::/129"), "rule[0].dst", "0..=128");
        assert_err(rule("dst", "10.0.0.0/x"), "rule[0].dst", "prefix length");
        assert_err(
            rule("src", "not-an-ip"),
            "rule[0].src",
            "not an IPv4 or IPv6 address",
        );
        assert_err(
            rule("src", "10.0.0/8"),
            "rule[0].src",
            "not an IPv4 or IPv6 address",
        );
        let p = with_base(
            "[[rule]]\nclass = \"rdma\"\nsrc = \"10.1.2.3\"\ndst = \"0.0.0.0/0\"\n\
             [[rule]]\nclass = \"rdma\"\nsrc = \"fe80::1\"\n",
        )
        .expect("valid");
        assert_eq!(p.rules[0].src, Some(v4([10, 1, 2, 3], 32)));
        assert_eq!(p.rules[0].dst, Some(v4([0, 0, 0, 0], 0)));
        assert_eq!(
            p.rules[1].src.map(|s| (s.family, s.len)),
            Some((Family::V6, 128))
        );
    }

    #[test]
    fn mixed_families_in_one_rule() {
        assert_err(
            with_base(
                "[[rule]]\nclass = \"rdma\"\nsrc = \"10.0.0.0/8\"\ndst = \"2001:db8::/32\"\n",
            ),
            "rule[0].dst",
            "dst is IPv6 but src is IPv4",
        );
    }

    #[test]
    fn bad_ports() {
        let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
        assert_err(
            rule("dst_port = \"8002-8000\""),
            "rule[0].dst_port",
            "8002 is above 8000",
        );
        assert_err(rule("src_port = 65536"), "rule[0].src_port", "0..=65535");
        assert_err(
            rule("dst_port = \"1-70000\""),
            "rule[0].dst_port",
            "0..=65535",
        );
        assert_err(rule("dst_port = -1"), "rule[0].dst_port", "out of range");
        assert_err(
            rule("dst_port = \"http\""),
            "rule[0].dst_port",
            "not a port",
        );
        assert_err(
            rule("dst_port = \"1-2-3\""),
            "rule[0].dst_port",
            "not a port",
        );
        let p = rule("src_port = \"8000\"\ndst_port = \" 0 - 65535 \"").expect("valid");
        assert_eq!(p.rules[0].src_ports, Some(Range::one(8000)));
        assert_eq!(p.rules[0].dst_ports, Some(Range { lo: 0, hi: 65535 }));
    }

    #[test]
    fn ports_with_a_portless_protocol_never_match() {
        let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
        assert_err(
            rule("protocol = \"icmp\"\ndst_port = 80"),
            "rule[0].dst_port",
            "protocol icmp has no ports",
        );
        assert_err(
            rule("protocol = 132\nsrc_port = 80"),
            "rule[0].src_port",
            "protocol 132 has no ports",
        );
        rule("protocol = \"TCP\"\ndst_port = 80").expect("tcp has ports");
        rule("dst_port = 80").expect("no protocol: tcp or udp");
    }

    #[test]
    fn protocols() {
        let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
        assert_err(
            rule("protocol = \"sctp\""),
            "rule[0].protocol",
            "not a protocol",
        );
        assert_err(rule("protocol = 256"), "rule[0].protocol", "0..=255");
        assert_err(rule("protocol = -3"), "rule[0].protocol", "not a protocol");
        let p = rule("protocol = \"47\"").expect("numeric string");
        assert_eq!(p.rules[0].protocol, Some(Range::one(47)));
    }

    #[test]
    fn roce_opcodes() {
        let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
        let opcode = |v: &str| rule(&format!("roce_opcode = {v}")).map(|p| p.rules[0].roce_opcode);
        assert_eq!(opcode("\"cnp\"").expect("cnp"), Some(Range::one(0x81)));
        assert_eq!(
            opcode("\"rc\"").expect("rc"),
            Some(Range { lo: 0, hi: 0x1f })
        );
        assert_eq!(
            opcode("\"uc\"").expect("uc"),
            Some(Range { lo: 0x20, hi: 0x3f })
        );
        assert_eq!(
            opcode("\"rd\"").expect("rd"),
            Some(Range { lo: 0x40, hi: 0x5f })
        );
        assert_eq!(
            opcode("\"UD\"").expect("ud"),
            Some(Range { lo: 0x60, hi: 0x7f })
        );
        assert_eq!(opcode("\"0x81\"").expect("hex"), Some(Range::one(0x81)));
        assert_eq!(opcode("129").expect("int"), Some(Range::one(0x81)));
        assert_eq!(
            opcode("\"0x00-0x1f\"").expect("range"),
            Some(Range { lo: 0, hi: 0x1f })
        );
        assert_err(
            rule("roce_opcode = \"xrc\""),
            "rule[0].roce_opcode",
            "expected \"cnp\"",
        );
        assert_err(rule("roce_opcode = 256"), "rule[0].roce_opcode", "0..=255");
        assert_err(
            rule("roce_opcode = \"0x20-0x10\""),
            "rule[0].roce_opcode",
            "empty range",
        );
        assert_err(
            rule("protocol = \"tcp\"\nroce_opcode = \"cnp\""),
            "rule[0].roce_opcode",
            "udp only",
        );
        assert_err(
            rule("protocol = \"udp\"\ndst_port = 4790\nroce_opcode = \"cnp\""),
            "rule[0].roce_opcode",
            "dst_port 4791",
        );
    }

    #[test]
    fn parse_errors_point_at_the_right_table() {
        let text = "[[class]]\nname = \"default\"\n\n[[class]]  # two\nname = \"b\"\n\n[[rule]]\nclass = \"b\"\n\n[[rule]]\nclass = \"b\"\nbogus = true\n";
        let e = load(text).expect_err("unknown key");
        assert_eq!(e.field(), Some("rule[1].bogus"), "{e}");
        assert!(
            e.to_string().starts_with("test.toml:12:1: rule[1].bogus:"),
            "{e}"
        );
    }
}
