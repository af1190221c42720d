//! The policy file's schema: what serde reads and writes, before validation. A class and a
//! rule are spelled the same way in the file, in runtime changes and on the command line.

use std::{convert::Infallible, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use super::FlowCache;

/// The policy file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyText {
    /// Name of the class unmatched traffic gets. Default: the class named "default", which
    /// must then exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) default_class: Option<String>,
    /// Interfaces with a link budget or options. Default: none (rules may still name
    /// interfaces; those are added without a budget).
    #[serde(default, rename = "interface", skip_serializing_if = "Vec::is_empty")]
    pub(super) interfaces: Vec<InterfaceText>,
    /// Traffic classes; at least one is required.
    #[serde(default, rename = "class")]
    pub(super) classes: Vec<ClassText>,
    /// Classification rules, first match wins. Default: none (all traffic is default).
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub(super) rules: Vec<RuleText>,
    /// Cache each flow's class: "auto" (default; on for more than 256 rules, address
    /// prefixes, a policing class or a forwarding interface), "on" or "off".
    #[serde(default)]
    pub(super) flow_cache: FlowCache,
}

/// An `[[interface]]` table.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InterfaceText {
    /// Kernel interface name, 1 to 15 characters, unique.
    pub(super) name: String,
    /// Link budget shared by all classes by priority ("100Gbit"). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) link_rate: Option<Scalar>,
    /// Burst of the link budget ("8MiB"). Default: 20 ms of `link_rate`, at least 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) link_burst: Option<Scalar>,
    /// Forward packets arriving here in XDP (route lookup in the kernel's FIB, redirect to
    /// the egress interface; what the lookup cannot finish goes to the kernel). The egress
    /// interface must be registered too (listed or attached). Default: false.
    #[serde(default)]
    pub(super) forward: bool,
}

/// A class as the policy file spells it: a `[[class]]` table, the change `dataplane class
/// set` sends (keys left out keep their value) and that command's options. The defaults
/// below are what a file's class without the key gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct ClassText {
    /// Unique name, 1 to 32 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// Strict priority on the link budget, 0 (lowest) to 7. Default: 0.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Committed rate ("40Gbit"). Default: none, no packet is green.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Scalar>,
    /// Peak rate ("50Gbit"), at least `rate`. Default: unlimited, no packet is red.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceil: Option<Scalar>,
    /// Committed burst ("4MiB"), at least 1514 bytes. Default: 20 ms of `rate`, at least
    /// 64 KiB.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Scalar>,
    /// Peak burst, at least 1514 bytes. Default: the larger of `burst` and 20 ms of `ceil`
    /// (at least 64 KiB).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceil_burst: Option<Scalar>,
    /// DSCP (0 to 63) written on green packets. Default: none, DSCP is kept.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<i64>,
    /// Action for yellow packets (above the rate). Default: pass.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exceed: Option<ActionName>,
    /// Action for red packets (above the ceil). Default: drop.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violate: Option<ActionName>,
    /// DSCP (0 to 63) written by the "remark" action; required exactly when `exceed` or
    /// `violate` is "remark". Default: none.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remark_dscp: Option<i64>,
    /// Early congestion signals (CE, or a sparse drop for packets that are not ECN-capable)
    /// on the phantom queue of the bucket whose overflow is dropped or marked. Default: false.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aqm: Option<bool>,
    /// Phantom sojourn above which packets are signalled ("1ms"). Default: 1 ms, or a quarter
    /// of the burst's time at the enforcing rate if that is less.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aqm_target: Option<String>,
    /// Least time between two signals ("1ms"). Default: 1 ms.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aqm_interval: Option<String>,
    /// Narrow the receive windows of the class's TCP flows on their returning ACKs so they
    /// slow down before the policer drops. Default: true on a class with a bucket whose
    /// overflow is dropped or marked.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_window: Option<bool>,
    /// Share the rate fairly among the class's flows: each cached flow has a phantom queue
    /// at its fair share; flows within it are never signalled early, and the ECN-capable
    /// packets of flows over it are marked CE while the class is congested. Default: true on
    /// a class with a bucket whose overflow is dropped or marked.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_fairness: Option<bool>,
    /// The class's rate and ceiling are for the whole fleet (`run --etcd`): each gateway
    /// enforces a share, recomputed continuously from the demand every gateway reports.
    /// Default: false (every gateway enforces the whole rate on its own).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_budget: Option<bool>,
}

/// Priority of a class that sets none.
pub(super) const DEFAULT_PRIORITY: i64 = 0;
/// Action for yellow packets of a class that sets none.
pub(super) const DEFAULT_EXCEED: ActionName = ActionName::Pass;
/// Action for red packets of a class that sets none.
pub(super) const DEFAULT_VIOLATE: ActionName = ActionName::Drop;

/// A rule as the policy file spells it: a `[[rule]]` table, the rule `dataplane rule add`
/// sends and that command's options. Every key but `class` is optional; an absent key
/// matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct RuleText {
    /// Name of the class matching packets get.
    #[cfg_attr(feature = "cli", arg(long))]
    pub class: String,
    /// Source prefix, IPv4 or IPv6 ("198.18.0.0/15"); a bare address is a host prefix.
    /// Default: any.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination prefix, same family as `src`. Default: any.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// IP protocol: "tcp", "udp", "icmp", "icmpv6" or a number 0 to 255. Default: any.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Scalar>,
    /// Source port (4791) or range ("8000-8002"); only tcp and udp have ports.
    /// Default: any (packets without ports match too).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<Scalar>,
    /// Destination port or range, like `src_port`. Default: any.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<Scalar>,
    /// DSCP, 0 to 63. Default: any.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<i64>,
    /// Ingress interface name; added to the interfaces when not listed. Default: any.
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    /// RoCEv2 BTH opcode: "cnp", "rc", "uc", "rd", "ud", a number (129, "0x81") or a range
    /// ("0x00-0x1f"); only UDP to port 4791 has one. Default: any (packets without one match
    /// too).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roce_opcode: Option<Scalar>,
}

/// What a class does with the packets of one colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    /// Pass unchanged.
    Pass,
    /// Drop.
    Drop,
    /// Set ECN CE on ECN-capable packets, drop the others.
    Ecn,
    /// Pass with the DSCP set to the class's `remark_dscp`.
    Remark,
}

/// A value that may be written as an integer or a string (ports, sizes, protocols, opcodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scalar {
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

impl Scalar {
    /// The value as written, without quotes.
    pub fn text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// Reads a value given on the command line as the file would hold it: integers stay integers
/// ("4791" is a port number), anything else is a string.
impl FromStr for Scalar {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Scalar, Infallible> {
        Ok(s.parse()
            .map_or_else(|_| Scalar::Str(s.to_string()), Scalar::Int))
    }
}
