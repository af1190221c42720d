//! Compiles a validated [`Policy`] into the lookup tables the XDP program reads: one rule
//! bit-vector per distinct field value (deduplicated), field tables mapping values to vectors,
//! and address prefixes for the LPM trie. The kernel then classifies with a handful of lookups
//! and an AND scan, however many rules there are.

use std::collections::HashMap;

use dataplane_common::{
    action::ColourAction,
    classify::{
        lowest_common_rule, mask, AddrField, Field, Prefix, Range, RuleSpec, RuleVector,
        FIELD_COUNT,
    },
    fair::{FairControl, EPOCH_NS, UNIT_BYTES},
    maps::{ClassConfig, PolicySlot},
    packet::{Family, PacketMeta},
    policer::{Aqm, BucketParams, LeaseParams, TrTcm},
    window::{WindowControl, MIN_WINDOW_BYTES, START_RTT_US},
    MAX_RULES,
};

use crate::config::{
    burst_time_ns, enforcing_bucket, ClassSpec, FlowCache, Policy, DEFAULT_AQM_INTERVAL_NS,
    DEFAULT_AQM_TARGET_NS,
};

/// Local id of a vector within one compiled policy; 0 is always the all-rules vector.
pub type VectorId = u32;

/// The rules in the form the kernel tables take.
#[derive(Debug, Clone)]
pub struct RuleTables {
    /// Distinct rule vectors; `vectors[0]` is all ones.
    pub vectors: Vec<RuleVector>,
    /// Class id of each rule.
    pub rule_classes: Vec<u32>,
    /// Bit per field some rule constrains.
    pub active_fields: u32,
    /// Per field: the vector of rules that do not constrain it.
    pub absent_vector: [VectorId; FIELD_COUNT],
    /// Per active table field: the vector of every value (length = the field's domain).
    pub field_tables: Vec<(Field, Vec<VectorId>)>,
    /// Address prefixes and their vectors.
    pub prefixes: Vec<(AddrField, Prefix, VectorId)>,
}

/// A whole policy in kernel form.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The classifier.
    pub tables: RuleTables,
    /// Class configs by class id.
    pub classes: Vec<ClassConfig>,
    /// Class of packets no rule matches.
    pub default_class: u32,
    /// Cache each flow's class.
    pub flow_cache: bool,
}

/// Pool of distinct vectors.
struct Interner {
    vectors: Vec<RuleVector>,
    ids: HashMap<RuleVector, VectorId>,
}

impl Interner {
    fn new() -> Interner {
        let mut i = Interner {
            vectors: Vec::new(),
            ids: HashMap::new(),
        };
        i.intern(&RuleVector::ALL);
        i
    }

    fn intern(&mut self, v: &RuleVector) -> VectorId {
        if let Some(id) = self.ids.get(v) {
            return *id;
        }
        let id = self.vectors.len() as VectorId;
        self.vectors.push(*v);
        self.ids.insert(*v, id);
        id
    }
}

/// The rules that leave `field` unconstrained.
fn wildcard(rules: &[RuleSpec], field: Field) -> RuleVector {
    let mut v = RuleVector::EMPTY;
    for (i, r) in rules.iter().enumerate() {
        if !r.constrains(field) {
            v.set(i);
        }
    }
    v
}

/// Builds a table field by sweeping the range boundaries: the vector of an elementary
/// interval is the wildcard rules plus every rule whose range covers it.
fn compile_table(rules: &[RuleSpec], field: Field, pool: &mut Interner) -> Vec<VectorId> {
    let domain = field.domain();
    let mut starts: Vec<Vec<usize>> = vec![Vec::new(); domain + 1];
    let mut ends: Vec<Vec<usize>> = vec![Vec::new(); domain + 1];
    for (i, r) in rules.iter().enumerate() {
        if let Some(range) = r.range(field) {
            let lo = (range.lo as usize).min(domain);
            let hi = (range.hi as usize + 1).min(domain);
            if lo < hi {
                starts[lo].push(i);
                ends[hi].push(i);
            }
        }
    }
    let mut current = wildcard(rules, field);
    let mut table = Vec::with_capacity(domain);
    let mut id = pool.intern(&current);
    for value in 0..domain {
        if !starts[value].is_empty() || !ends[value].is_empty() {
            for &i in &ends[value] {
                current.words[i / 64] &= !(1 << (i % 64));
            }
            for &i in &starts[value] {
                current.set(i);
            }
            id = pool.intern(&current);
        }
        table.push(id);
    }
    table
}

/// Builds an address field: every distinct rule prefix (plus /0) gets the wildcard rules and
/// the rules whose prefix covers it, found through its at most 129 ancestors.
fn compile_prefixes(
    rules: &[RuleSpec],
    field: Field,
    pool: &mut Interner,
    out: &mut Vec<(AddrField, Prefix, VectorId)>,
) {
    let wild = wildcard(rules, field);
    let prefix_of = |r: &RuleSpec| {
        if field == Field::SrcAddr {
            r.src
        } else {
            r.dst
        }
    };
    for family in [Family::V4, Family::V6] {
        let mut by_prefix: HashMap<(u8, [u8; 16]), Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            if let Some(p) = prefix_of(r).filter(|p| p.family == family) {
                by_prefix.entry((p.len, p.addr)).or_default().push(i);
            }
        }
        let root = Prefix {
            family,
            addr: [0; 16],
            len: 0,
        };
        let mut stored: Vec<Prefix> = by_prefix
            .keys()
            .map(|&(len, addr)| Prefix { family, addr, len })
            .collect();
        if !by_prefix.contains_key(&(0, [0; 16])) {
            stored.push(root);
        }
        stored.sort_by_key(|p| (p.len, p.addr));
        for p in stored {
            let mut v = wild;
            for len in 0..=p.len {
                if let Some(list) = by_prefix.get(&(len, mask(&p.addr, len))) {
                    for &i in list {
                        v.set(i);
                    }
                }
            }
            out.push((AddrField::of(family, field), p, pool.intern(&v)));
        }
    }
}

/// The class's enforcing bucket (the one `config::enforcing_bucket` names) as the kernel
/// names it, with its rate and burst.
fn enforcing(c: &ClassSpec) -> Option<(u32, u64, u64)> {
    let committed = enforcing_bucket(
        c.rate_bytes_per_sec,
        c.burst_bytes,
        None,
        0,
        c.exceed,
        c.violate,
    );
    match committed {
        Some((rate, burst)) => Some((Aqm::COMMITTED, rate, burst)),
        None => enforcing_bucket(
            0,
            0,
            c.ceil_bytes_per_sec,
            c.ceil_burst_bytes,
            c.exceed,
            c.violate,
        )
        .map(|(rate, burst)| (Aqm::PEAK, rate, burst)),
    }
}

/// The AQM on the class's enforcing bucket.
fn class_aqm(c: &ClassSpec) -> Aqm {
    match (c.aqm, enforcing(c)) {
        (Some(spec), Some((bucket, _, _))) => Aqm {
            target_ns: spec.target_ns,
            interval_ns: spec.interval_ns,
            bucket,
            _pad: 0,
        },
        _ => Aqm::OFF,
    }
}

/// The longest round trip the window control serves without limiting a lone flow: its
/// largest window is the class's rate times this.
const WINDOW_CONTROL_MAX_RTT_NS: u64 = 250_000_000;

/// The TCP window control on the class's enforcing bucket, with the AQM's target (or its
/// default) and one adjustment per AQM interval.
fn class_window(c: &ClassSpec) -> WindowControl {
    let Some((bucket, rate, burst)) = enforcing(c).filter(|_| c.tcp_window) else {
        return WindowControl::OFF;
    };
    let burst_ns = burst_time_ns(rate, burst);
    let (target_ns, interval_ns) = match c.aqm {
        Some(a) => (a.target_ns, a.interval_ns),
        None => (
            DEFAULT_AQM_TARGET_NS.min(burst_ns / 4),
            DEFAULT_AQM_INTERVAL_NS,
        ),
    };
    let window = |rtt_ns: u64| {
        let bytes = u128::from(rate) * u128::from(rtt_ns) / 1_000_000_000;
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .max(MIN_WINDOW_BYTES)
    };
    WindowControl {
        target_ns,
        interval_ns,
        max_bytes: window(WINDOW_CONTROL_MAX_RTT_NS),
        // A data-centre round trip; the kernel scales it to the class's measured one.
        start_bytes: window(u64::from(START_RTT_US) * 1_000),
        _pad: 0,
        bucket,
    }
}

/// The class's count of its flows and fair shares on its enforcing bucket: it counts its
/// flows where it shares their rate (`flow_fairness`) or a TCP window (`tcp_window`); flows
/// are within their share while their own phantom queue holds at most half the bucket's
/// burst time.
fn class_fair(c: &ClassSpec) -> FairControl {
    let Some((bucket, rate, burst)) = enforcing(c).filter(|_| c.flow_fairness || c.tcp_window)
    else {
        return FairControl::OFF;
    };
    let epoch_units =
        u128::from(rate) * u128::from(EPOCH_NS) / 1_000_000_000 / u128::from(UNIT_BYTES);
    let epoch_units = u32::try_from(epoch_units).unwrap_or(u32::MAX);
    if !c.flow_fairness {
        return FairControl {
            epoch_units,
            ..FairControl::OFF
        };
    }
    FairControl {
        bucket,
        tolerance_ns: u32::try_from(burst_time_ns(rate, burst) / 2)
            .unwrap_or(u32::MAX)
            .min(FairControl::MAX_TOLERANCE_NS),
        epoch_units,
        _pad: 0,
    }
}

/// The kernel form of a class.
pub fn class_config(c: &ClassSpec) -> ClassConfig {
    let committed = if c.rate_bytes_per_sec > 0 {
        BucketParams::new(c.rate_bytes_per_sec, c.burst_bytes)
    } else {
        BucketParams::UNLIMITED
    };
    let peak = match c.ceil_bytes_per_sec {
        Some(ceil) => BucketParams::new(ceil, c.ceil_burst_bytes),
        None => BucketParams::UNLIMITED,
    };
    let actions: [ColourAction; 3] = [c.conform, c.exceed, c.violate];
    let aqm = class_aqm(c);
    let window = class_window(c);
    // The lowest target watching each bucket's phantom queue (committed, peak).
    let mut targets_ns = [u64::MAX; 2];
    for (bucket, target_ns) in [
        (aqm.bucket, aqm.target_ns),
        (window.bucket, window.target_ns),
    ] {
        let at = match bucket {
            Aqm::COMMITTED => 0,
            Aqm::PEAK => 1,
            _ => continue,
        };
        targets_ns[at] = targets_ns[at].min(target_ns);
    }
    ClassConfig {
        policer: TrTcm { committed, peak },
        aqm,
        window,
        lease: LeaseParams::for_class(&committed, c.burst_bytes, &peak, targets_ns),
        fair: class_fair(c),
        actions,
        priority: c.priority,
        _pad: 0,
    }
}

/// Whether `class` limits anything (a rate or a ceiling).
fn polices(class: &ClassSpec) -> bool {
    class.rate_bytes_per_sec > 0 || class.ceil_bytes_per_sec.is_some()
}

/// With `flow_cache = "auto"`, cache when the rules span more words than this: a hit is
/// cheaper than classifying, but a new flow pays the classification and the entry's write on
/// top, which short flows through a small policy would pay for nothing (figures:
/// docs/design.md, "Flow cache").
pub const AUTO_CACHE_MIN_WORDS: u32 = 4;

impl CompiledPolicy {
    /// The policy slot's flags: the flow cache, and window control where a class has it
    /// (it keeps its state in the flow cache's entries).
    pub fn slot_flags(&self) -> u32 {
        if !self.flow_cache {
            return 0;
        }
        let window = self.classes.iter().any(|c| c.window.is_on());
        PolicySlot::FLOW_CACHE
            | if window {
                PolicySlot::WINDOW_CONTROL
            } else {
                0
            }
    }

    /// Compiles `policy` with class ids and interface slots in file order. Validation already
    /// bounded the rule and class counts.
    pub fn new(policy: &Policy) -> CompiledPolicy {
        let class_ids: Vec<u32> = (0..policy.classes.len() as u32).collect();
        let iface_slots: Vec<u32> = (1..=policy.interfaces.len() as u32).collect();
        CompiledPolicy::with_ids(policy, &class_ids, &iface_slots)
    }

    /// Compiles `policy` with the kernel class id of `policy.classes[i]` in `class_ids[i]`
    /// and the kernel slot of `policy.interfaces[i]` in `iface_slots[i]` (see [`crate::ids`]).
    pub fn with_ids(policy: &Policy, class_ids: &[u32], iface_slots: &[u32]) -> CompiledPolicy {
        let class_of = |c: u32| class_ids.get(c as usize).copied().unwrap_or(c);
        let slot_of = |s: u32| {
            s.checked_sub(1)
                .and_then(|i| iface_slots.get(i as usize))
                .copied()
                .unwrap_or(s)
        };
        let rules: Vec<RuleSpec> = policy.rules[..policy.rules.len().min(MAX_RULES)]
            .iter()
            .map(|r| RuleSpec {
                class: class_of(r.class),
                iface: r.iface.map(|i| Range {
                    lo: slot_of(i.lo),
                    hi: slot_of(i.hi),
                }),
                ..*r
            })
            .collect();
        let tables = RuleTables::new(&rules);
        let prefixes = Field::SrcAddr.bit() | Field::DstAddr.bit();
        let flow_cache = match policy.flow_cache {
            FlowCache::On => true,
            FlowCache::Off => false,
            // A policing class needs its flows' state (TCP repair and `dataplane top` live in
            // the cache entries), and a forwarded flow keeps its next hop there.
            FlowCache::Auto => {
                tables.rule_words() > AUTO_CACHE_MIN_WORDS
                    || tables.active_fields & prefixes != 0
                    || policy.classes.iter().any(polices)
                    || policy.interfaces.iter().any(|i| i.forward)
            }
        };
        // Ids no class holds are never selected by a rule; they get the default class's
        // config so the table has no hole.
        let mut classes = Vec::new();
        if let Some(filler) = policy.classes.get(policy.default_class as usize) {
            classes =
                vec![class_config(filler); class_ids.iter().max().map_or(0, |m| *m as usize + 1)];
            for (spec, id) in policy.classes.iter().zip(class_ids) {
                classes[*id as usize] = class_config(spec);
            }
        }
        CompiledPolicy {
            tables,
            classes,
            default_class: class_of(policy.default_class),
            flow_cache,
        }
    }
}

impl RuleTables {
    /// Compiles `rules` (at most [`MAX_RULES`]).
    pub fn new(rules: &[RuleSpec]) -> RuleTables {
        let mut pool = Interner::new();
        let mut active_fields = 0;
        let mut absent_vector = [0; FIELD_COUNT];
        let mut field_tables = Vec::new();
        let mut prefixes = Vec::new();
        for field in Field::ALL {
            if !rules.iter().any(|r| r.constrains(field)) {
                continue;
            }
            active_fields |= field.bit();
            absent_vector[field as usize] = pool.intern(&wildcard(rules, field));
            match field {
                Field::SrcAddr | Field::DstAddr => {
                    compile_prefixes(rules, field, &mut pool, &mut prefixes)
                }
                _ => field_tables.push((field, compile_table(rules, field, &mut pool))),
            }
        }
        RuleTables {
            vectors: pool.vectors,
            rule_classes: rules.iter().map(|r| r.class).collect(),
            active_fields,
            absent_vector,
            field_tables,
            prefixes,
        }
    }

    /// 64-bit words of the rule vectors that hold rules.
    pub fn rule_words(&self) -> u32 {
        self.rule_classes.len().div_ceil(64) as u32
    }

    /// The first matching rule's class the way the kernel finds it, from the tables (for
    /// tests); `None` when no rule matches.
    pub fn classify(&self, meta: &PacketMeta, iface_slot: u32) -> Option<u32> {
        let table = |field: Field, value: Option<u32>| -> VectorId {
            if self.active_fields & field.bit() == 0 {
                return 0;
            }
            match value {
                None => self.absent_vector[field as usize],
                Some(v) => self
                    .field_tables
                    .iter()
                    .find(|(f, _)| *f == field)
                    .and_then(|(_, t)| t.get(v as usize).copied())
                    .unwrap_or(0),
            }
        };
        let prefix = |field: Field, addr: &[u8; 16]| -> VectorId {
            if self.active_fields & field.bit() == 0 {
                return 0;
            }
            let part = AddrField::of(meta.family, field);
            self.prefixes
                .iter()
                .filter(|(f, p, _)| *f == part && p.contains(meta.family, addr))
                .max_by_key(|(_, p, _)| p.len)
                .map_or(0, |(_, _, id)| *id)
        };
        let ports = meta.has_ports;
        let ids = [
            prefix(Field::SrcAddr, &meta.src),
            prefix(Field::DstAddr, &meta.dst),
            table(Field::Protocol, Some(u32::from(meta.protocol))),
            table(Field::SrcPort, meta.rule_src_port()),
            table(Field::DstPort, ports.then_some(u32::from(meta.dst_port))),
            table(Field::Dscp, Some(u32::from(meta.dscp()))),
            table(Field::Iface, Some(iface_slot)),
            table(Field::RoceOpcode, meta.roce_opcode.map(u32::from)),
        ];
        let vs = ids.map(|id| &self.vectors[id as usize]);
        lowest_common_rule(&vs, self.rule_words()).map(|rule| self.rule_classes[rule as usize])
    }
}

#[cfg(test)]
mod tests {
    use dataplane_common::classify::{first_match, Range};
    use proptest::prelude::*;

    use super::*;

    fn v4_prefix(a: [u8; 4], len: u8) -> Prefix {
        Prefix::v4(a, len)
    }

    fn v6_prefix(tail: u8, len: u8) -> Prefix {
        let mut addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        addr[15] = tail;
        addr[8] = tail;
        Prefix::new(Family::V6, addr, len)
    }

    /// Prefixes from a small universe so that rules overlap and nest.
    fn prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![
            (
                0u8..4,
                prop::sample::select(vec![0u8, 8, 15, 16, 24, 30, 32])
            )
                .prop_map(|(x, len)| v4_prefix([198, 18 + (x & 1), x, 1 + x], len)),
            (
                0u8..4,
                prop::sample::select(vec![0u8, 32, 64, 72, 127, 128])
            )
                .prop_map(|(x, len)| v6_prefix(x, len)),
        ]
    }

    fn range(max: u32) -> impl Strategy<Value = Range> {
        (0..max, 0..4u32).prop_map(move |(lo, w)| Range {
            lo,
            hi: (lo + w).min(max),
        })
    }

    fn rule(classes: u32) -> impl Strategy<Value = RuleSpec> {
        (
            0..classes,
            prop::option::weighted(0.3, prefix()),
            prop::option::weighted(0.3, prefix()),
            prop::option::weighted(
                0.3,
                prop::sample::select(vec![1u32, 6, 17]).prop_map(Range::one),
            ),
            prop::option::weighted(0.3, range(12)),
            prop::option::weighted(0.3, range(12)),
            prop::option::weighted(0.2, range(4)),
            prop::option::weighted(0.2, range(3)),
            prop::option::weighted(0.2, range(4)),
        )
            .prop_map(
                |(class, src, dst, protocol, sp, dp, dscp, iface, op)| RuleSpec {
                    class,
                    src,
                    dst,
                    protocol,
                    src_ports: sp,
                    dst_ports: dp,
                    dscp,
                    iface,
                    roce_opcode: op,
                },
            )
    }

    fn packet() -> impl Strategy<Value = (PacketMeta, u32)> {
        (
            any::<bool>(),
            (0u8..4, 0u8..4),
            prop::sample::select(vec![1u8, 6, 17, 47]),
            (0u16..14, 0u16..14),
            0u8..5,
            0u32..4,
            prop::option::of(0u8..6),
            any::<bool>(),
        )
            .prop_map(|(v6, (s, d), protocol, (sp, dpt), dscp, iface, op, frag)| {
                let addr = |x: u8| {
                    if v6 {
                        v6_prefix(x, 128).addr
                    } else {
                        v4_prefix([198, 18 + (x & 1), x, 1 + x], 32).addr
                    }
                };
                let has_ports = (protocol == 6 || protocol == 17) && !frag;
                let meta = PacketMeta {
                    l3_offset: 14,
                    family: if v6 { Family::V6 } else { Family::V4 },
                    protocol,
                    tos: dscp << 2,
                    src: addr(s),
                    dst: addr(d),
                    src_port: if has_ports { sp } else { 0 },
                    dst_port: if has_ports { dpt } else { 0 },
                    has_ports,
                    later_fragment: frag,
                    roce_opcode: if has_ports && protocol == 17 {
                        op
                    } else {
                        None
                    },
                    // A sprayed transport's packet (its source port hidden from rules) with
                    // each opcode, and without.
                    connection: (has_ports && protocol == 17 && op.is_some()).then_some(7),
                    spray_unkeyed: false,
                    tcp: None,
                };
                (meta, iface)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The compiled tables pick exactly the rule a naive first-match scan picks.
        #[test]
        fn compiled_tables_agree_with_first_match(
            rules in prop::collection::vec(rule(5), 0..150),
            packets in prop::collection::vec(packet(), 1..40),
        ) {
            let tables = RuleTables::new(&rules);
            for (meta, iface) in &packets {
                prop_assert_eq!(
                    tables.classify(meta, *iface),
                    first_match(&rules, meta, *iface),
                    "packet {:?} on iface {}", meta, iface
                );
            }
        }
    }

    #[test]
    fn identical_vectors_are_stored_once() {
        let rules: Vec<RuleSpec> = (0..1000)
            .map(|i| RuleSpec {
                class: 1,
                dst_ports: Some(Range::one(10_000 + i)),
                ..RuleSpec::default()
            })
            .collect();
        let t = RuleTables::new(&rules);
        // all-ones, the "no rule" vector of unmatched ports, one per port.
        assert_eq!(t.vectors.len(), 1002);
        assert_eq!(t.rule_words(), 16);
        assert_eq!(t.active_fields, Field::DstPort.bit());
    }

    #[test]
    fn fairness_shares_the_enforcing_bucket_with_half_its_burst_as_tolerance() {
        let class = |keys: &str| {
            let text = format!("[[class]]\nname = \"default\"\n{keys}");
            class_config(&Policy::from_toml_str(&text, "test").expect("valid").classes[0])
        };
        // 100 Mbit/s, a 125 kB burst: 10 ms.
        let committed = class("rate = \"100Mbit\"\nburst = \"125kB\"\nexceed = \"drop\"\n");
        assert_eq!(
            committed.fair,
            FairControl {
                bucket: Aqm::COMMITTED,
                tolerance_ns: 5_000_000,
                // 12.5 MB/s over 8.4 ms, in 512-byte units.
                epoch_units: 204,
                _pad: 0,
            }
        );
        let peak = class("ceil = \"100Mbit\"\nceil_burst = \"125kB\"\nviolate = \"drop\"\n");
        assert_eq!(peak.fair.bucket, Aqm::PEAK);
        let off = class("rate = \"100Mbit\"\nexceed = \"drop\"\nflow_fairness = false\n");
        assert!(!off.fair.is_on());
        assert_eq!(
            off.fair.epoch_units, 204,
            "the TCP window's flows are still counted"
        );
        let neither = class(
            "rate = \"100Mbit\"\nexceed = \"drop\"\nflow_fairness = false\ntcp_window = false\n",
        );
        assert_eq!(neither.fair, FairControl::OFF);
        assert!(!class("rate = \"100Mbit\"\n").fair.is_on(), "nothing drops");
        // A burst of minutes: the tolerance stays within the flow queue's time range.
        let long = class("rate = \"1Mbit\"\nburst = \"1GB\"\nexceed = \"drop\"\n");
        assert_eq!(long.fair.tolerance_ns, FairControl::MAX_TOLERANCE_NS);
    }

    #[test]
    fn auto_flow_cache_follows_the_cost_of_a_miss() {
        let policy = |text: &str| Policy::from_toml_str(text, "test").expect("valid");
        let few_ports = "[[class]]\nname = \"default\"\n[[rule]]\nclass = \"default\"\nprotocol = \"udp\"\ndst_port = 1\n";
        assert!(!CompiledPolicy::new(&policy(few_ports)).flow_cache);
        let forced = format!("flow_cache = \"on\"\n{few_ports}");
        assert!(CompiledPolicy::new(&policy(&forced)).flow_cache);
        let prefix = "[[class]]\nname = \"default\"\n[[rule]]\nclass = \"default\"\ndst = \"198.18.0.0/15\"\n";
        assert!(CompiledPolicy::new(&policy(prefix)).flow_cache);
        let off = format!("flow_cache = \"off\"\n{prefix}");
        assert!(!CompiledPolicy::new(&policy(&off)).flow_cache);
        let policing =
            few_ports.replace("name = \"default\"", "name = \"default\"\nrate = \"1Mbit\"");
        assert!(
            CompiledPolicy::new(&policy(&policing)).flow_cache,
            "a policing class keeps per-flow state"
        );
        let rules = |n: u32| {
            let mut text = String::from("[[class]]\nname = \"default\"\n");
            for port in 0..n {
                text.push_str(&format!(
                    "[[rule]]\nclass = \"default\"\nprotocol = \"tcp\"\ndst_port = {port}\n"
                ));
            }
            CompiledPolicy::new(&policy(&text)).flow_cache
        };
        assert!(
            !rules(256),
            "up to 256 rules a scan is as cheap as a cache hit"
        );
        assert!(rules(257));
        assert!(rules(2000));
    }
}
