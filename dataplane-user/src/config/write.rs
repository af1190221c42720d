//! Policy → file: the writer behind [`Policy::to_toml_string`].

use dataplane_common::{
    action::{ColourAction, Verdict},
    classify::{Range, RuleSpec},
};

use super::{
    enforcing_bucket,
    schema::{ActionName, ClassText, InterfaceText, PolicyText, RuleText, Scalar},
    validate::{class_field, rule_field},
    values::{prefix_string, protocol_name, PROTOCOL_NAMES, ROCE_OPCODE_NAMES},
    ClassSpec, ConfigError, Policy,
};
use crate::units;

/// Origin named in errors from [`Policy::to_toml_string`].
pub(super) const WRITER_ORIGIN: &str = "policy being written";

/// Turns a policy back into the file schema.
pub(super) struct Writer<'a> {
    pub(super) policy: &'a Policy,
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

    pub(super) fn policy(&self) -> Result<PolicyText, ConfigError> {
        let p = self.policy;
        let default = usize::try_from(p.default_class)
            .ok()
            .and_then(|i| p.classes.get(i))
            .ok_or_else(|| self.err("default_class", "no class has this id"))?;
        let interfaces = p
            .interfaces
            .iter()
            .map(|s| InterfaceText {
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
        Ok(PolicyText {
            default_class: Some(default.name.clone()),
            interfaces,
            classes,
            rules,
            flow_cache: p.flow_cache,
        })
    }

    fn class(&self, i: usize, c: &ClassSpec) -> Result<ClassText, ConfigError> {
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
        let enforces = enforcing_bucket(
            c.rate_bytes_per_sec,
            c.burst_bytes,
            c.ceil_bytes_per_sec,
            c.ceil_burst_bytes,
            c.exceed,
            c.violate,
        )
        .is_some();
        Ok(ClassText {
            name: c.name.clone(),
            priority: Some(i64::from(c.priority)),
            rate: (c.rate_bytes_per_sec > 0).then(|| exact_rate(c.rate_bytes_per_sec)),
            ceil: c.ceil_bytes_per_sec.map(exact_rate),
            burst: Some(exact_size(c.burst_bytes)),
            ceil_burst: Some(exact_size(c.ceil_burst_bytes)),
            dscp,
            exceed: Some(exceed),
            violate: Some(violate),
            remark_dscp,
            aqm: c.aqm.map(|_| true),
            aqm_target: c.aqm.map(|a| units::format_duration_ns(a.target_ns)),
            aqm_interval: c.aqm.map(|a| units::format_duration_ns(a.interval_ns)),
            // Written only where they differ from the default.
            tcp_window: (!c.tcp_window && enforces).then_some(false),
            flow_fairness: (!c.flow_fairness && enforces).then_some(false),
            fleet_budget: c.fleet_budget.then_some(true),
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

    fn rule(&self, i: usize, r: &RuleSpec) -> Result<RuleText, ConfigError> {
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
        Ok(RuleText {
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
