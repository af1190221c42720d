//! File → policy: checks a parsed file and builds the validated [`Policy`].

use std::collections::HashMap;

use dataplane_common::{
    action::{ColourAction, KEEP_DSCP},
    classify::{Range, RuleSpec},
    packet::{ipproto, Family},
    policer::MIN_RATE_BYTES_PER_SEC,
    MAX_CLASSES, MAX_RULES, ROCEV2_UDP_PORT,
};

use super::{
    burst_time_ns, default_burst, enforcing_bucket,
    error::is_bare_key_char,
    schema::{
        ActionName, ClassText, InterfaceText, PolicyText, RuleText, Scalar, DEFAULT_EXCEED,
        DEFAULT_PRIORITY, DEFAULT_VIOLATE,
    },
    values::{
        parse_prefix, parse_protocol, parse_range, parse_roce_opcode, protocol_name, MAX_PORT,
    },
    AqmSpec, ClassSpec, ConfigError, InterfaceSpec, Policy, DEFAULT_AQM_INTERVAL_NS,
    DEFAULT_AQM_TARGET_NS, DEFAULT_CLASS_NAME, MAX_CLASS_NAME_LEN, MAX_DSCP, MAX_POLICY_IFACES,
    MAX_PRIORITY, MIN_BURST_BYTES,
};
use crate::units::{self, UnitError, RATE_HELP};

/// Checks a parsed file and builds the policy; knows the origin for errors.
pub(super) struct Validator<'a> {
    pub(super) origin: &'a str,
}

/// `class[i].field`.
pub(super) fn class_field(i: usize, field: &str) -> String {
    format!("class[{i}].{field}")
}

/// `rule[i].field`.
pub(super) fn rule_field(i: usize, field: &str) -> String {
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

    pub(super) fn policy(&self, file: &PolicyText) -> Result<Policy, ConfigError> {
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

    fn interface(&self, i: usize, f: &InterfaceText) -> Result<InterfaceSpec, ConfigError> {
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

    fn class(&self, i: usize, f: &ClassText) -> Result<ClassSpec, ConfigError> {
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
        let priority = f.priority.unwrap_or(DEFAULT_PRIORITY);
        let priority = u8::try_from(priority)
            .ok()
            .filter(|p| *p <= MAX_PRIORITY)
            .ok_or_else(|| {
                self.err(
                    class_field(i, "priority"),
                    format!("{priority} is out of range 0..={MAX_PRIORITY}"),
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
        let exceed_name = f.exceed.unwrap_or(DEFAULT_EXCEED);
        let violate_name = f.violate.unwrap_or(DEFAULT_VIOLATE);
        let remark_used = exceed_name == ActionName::Remark || violate_name == ActionName::Remark;
        let remark_dscp = match (f.remark_dscp, remark_used) {
            (Some(d), true) => Some(self.dscp(&class_field(i, "remark_dscp"), d)?),
            (None, false) => None,
            (None, true) => {
                let which = if exceed_name == ActionName::Remark {
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
        let (exceed, violate) = (action(exceed_name), action(violate_name));
        let enforcing = enforcing_bucket(rate, burst, ceil, ceil_burst, exceed, violate);
        let aqm = self.aqm(i, f, enforcing)?;
        if f.tcp_window == Some(true) && enforcing.is_none() {
            return Err(self.err(
                class_field(i, "tcp_window"),
                "no bucket of this class drops or marks what exceeds it: there is no rate to hold TCP to",
            ));
        }
        let tcp_window = enforcing.is_some() && f.tcp_window != Some(false);
        if f.flow_fairness == Some(true) && enforcing.is_none() {
            return Err(self.err(
                class_field(i, "flow_fairness"),
                "no bucket of this class drops or marks what exceeds it: there is no rate to share",
            ));
        }
        let flow_fairness = enforcing.is_some() && f.flow_fairness != Some(false);
        if f.fleet_budget == Some(true) && rate == 0 && ceil.is_none() {
            return Err(self.err(
                class_field(i, "fleet_budget"),
                "a fleet budget needs a rate or a ceil to share out",
            ));
        }
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
            flow_fairness,
            fleet_budget: f.fleet_budget == Some(true),
        })
    }

    /// The class's AQM: only on a class with an `enforcing` bucket (rate, burst), one whose
    /// overflow is dropped or marked.
    fn aqm(
        &self,
        i: usize,
        f: &ClassText,
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
        f: &RuleText,
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
        super::check_interface_name(name).map_err(|reason| self.err(field, reason))
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

/// A value that is wrong whatever the rest of the policy says.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {value:?}: {reason}")]
pub struct ValueError {
    /// The key (`ceil_burst`).
    pub key: &'static str,
    /// The value as given.
    pub value: String,
    /// What is wrong and what would be accepted.
    pub reason: UnitError,
}

impl ClassText {
    /// Checks the rates, sizes and durations on their own, so that a change with a typo is
    /// refused before it is sent; the validator checks them again with the rest of the policy.
    pub fn check_units(&self) -> Result<(), ValueError> {
        type Parser = fn(&str) -> Result<u64, UnitError>;
        let text = |v: &Option<Scalar>| v.as_ref().map(Scalar::text);
        let values: [(&'static str, Option<String>, Parser); 6] = [
            ("rate", text(&self.rate), units::parse_rate),
            ("ceil", text(&self.ceil), units::parse_rate),
            ("burst", text(&self.burst), units::parse_size),
            ("ceil_burst", text(&self.ceil_burst), units::parse_size),
            (
                "aqm_target",
                self.aqm_target.clone(),
                units::parse_duration_ns,
            ),
            (
                "aqm_interval",
                self.aqm_interval.clone(),
                units::parse_duration_ns,
            ),
        ];
        for (key, value, parse) in values {
            if let Some(value) = value {
                if let Err(reason) = parse(&value) {
                    return Err(ValueError { key, value, reason });
                }
            }
        }
        Ok(())
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
