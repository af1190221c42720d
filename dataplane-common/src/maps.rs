//! Values of the maps shared by the XDP program and user space. All `#[repr(C)]` with
//! explicit padding (hash keys are compared byte for byte) and a compile-time size check.

use crate::{
    action::ColourAction,
    classify::FIELD_COUNT,
    packet::{Family, PacketMeta},
    policer::{Aqm, AqmState, BucketParams, LeaseParams, TrTcm, COLOURS},
    reason::REASON_COUNT,
    window::{WindowControl, WindowState},
};

/// One generation of the policy, in one of the two slots. A zero `generation` means the slot
/// holds no policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicySlot {
    /// Generation number (1, 2, ...); flow-cache entries of other generations are stale.
    pub generation: u32,
    /// Words of the rule vectors in use: ceil(rules / 64).
    pub rule_words: u32,
    /// Class of packets no rule matches.
    pub default_class: u32,
    /// Bit per [`crate::classify::Field`] that some rule constrains.
    pub active_fields: u32,
    /// Pool vector to use for a field the packet does not have (ports of a non-first
    /// fragment or ICMP, the opcode of non-RoCE traffic): the rules that ignore the field.
    pub absent_vector: [u32; FIELD_COUNT],
    /// [`PolicySlot::FLOW_CACHE`] or 0.
    pub flags: u32,
    /// Padding.
    pub _pad: u32,
}

impl PolicySlot {
    /// Cache each flow's class (off: classify every packet through the tables, for policies
    /// whose flows are too short-lived to pay for the cache, and to measure the miss path).
    pub const FLOW_CACHE: u32 = 1;
    /// Some class controls its TCP flows' windows: ACKs are looked up in the return table.
    pub const WINDOW_CONTROL: u32 = 2;
}

/// One class of one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassConfig {
    /// Committed and peak buckets.
    pub policer: TrTcm,
    /// Early congestion signals on the enforcing bucket's phantom queue.
    pub aqm: Aqm,
    /// TCP window control on the enforcing bucket's phantom queue.
    pub window: WindowControl,
    /// Per-CPU token leases of green traffic.
    pub lease: LeaseParams,
    /// Per-flow fair shares of the enforcing bucket's rate.
    pub fair: crate::fair::FairControl,
    /// Action per colour (green, yellow, red).
    pub actions: [ColourAction; COLOURS],
    /// Strict priority 0 (lowest) ..= 7 on the link budget.
    pub priority: u8,
    /// Padding.
    pub _pad: u8,
}

/// Shared policer state of a class (both buckets' theoretical arrival times, in ticks).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicerState {
    /// Committed bucket TAT.
    pub committed_tat: u64,
    /// Peak bucket TAT.
    pub peak_tat: u64,
    /// The AQM's control law.
    pub aqm: AqmState,
    /// The window control's window.
    pub window: WindowState,
    /// The count of the class's active flows, whose fair shares it sets.
    pub fair: crate::fair::FairState,
    /// The flows counted in the count's epoch.
    pub fair_seen: crate::fair::SeenFlows,
}

/// A registered interface, keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Counter and rule slot, 1..MAX_IFACES (0 is "unregistered").
    pub slot: u32,
    /// [`IfaceConfig::FORWARD`] or 0.
    pub flags: u32,
    /// The interface's own MAC: only frames sent to it are forwarded.
    pub mac: [u8; 6],
    /// Padding.
    pub _pad: [u8; 2],
    /// Link budget; unlimited = none.
    pub link: BucketParams,
}

impl IfaceConfig {
    /// Forward packets arriving here that the policy lets through and that are not for this
    /// host, straight to the egress interface (route lookup in the kernel's FIB).
    pub const FORWARD: u32 = 1;
}

/// Shared link-budget state of an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Link bucket TAT in ticks.
    pub tat: u64,
}

/// Per-CPU counters of one class on one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounters {
    /// Packets classified into the class.
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
    /// Packets per colour: green, yellow, red.
    pub colour_packets: [u64; COLOURS],
    /// Packets dropped by policy (including non-ECT packets under an ECN action).
    pub dropped_packets: u64,
    /// Their bytes.
    pub dropped_bytes: u64,
    /// Packets newly marked CE.
    pub ecn_marked_packets: u64,
    /// Their bytes.
    pub ecn_marked_bytes: u64,
    /// Packets whose DSCP was rewritten.
    pub remarked_packets: u64,
    /// Their bytes.
    pub remarked_bytes: u64,
    /// Of the ECN-marked packets, those marked early by the phantom queue's AQM (the bucket
    /// still had room).
    pub early_marked_packets: u64,
    /// Of the dropped packets, those dropped early by the AQM (not ECN-capable; the bucket
    /// still had room).
    pub early_dropped_packets: u64,
    /// TCP retransmissions admitted on the repair allowance (the bucket alone would have
    /// refused them).
    pub repaired_packets: u64,
}

impl ClassCounters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &ClassCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        for (a, b) in self.colour_packets.iter_mut().zip(o.colour_packets) {
            *a += b;
        }
        self.dropped_packets += o.dropped_packets;
        self.dropped_bytes += o.dropped_bytes;
        self.ecn_marked_packets += o.ecn_marked_packets;
        self.ecn_marked_bytes += o.ecn_marked_bytes;
        self.remarked_packets += o.remarked_packets;
        self.remarked_bytes += o.remarked_bytes;
        self.early_marked_packets += o.early_marked_packets;
        self.early_dropped_packets += o.early_dropped_packets;
        self.repaired_packets += o.repaired_packets;
    }
}

/// Per-CPU counters of one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Packets per [`crate::reason::Reason`].
    pub reasons: [u64; REASON_COUNT],
    /// Flow-cache hits.
    pub flow_cache_hits: u64,
    /// Flow-cache misses (the packet was classified through the rule tables).
    pub flow_cache_misses: u64,
    /// Route lookups (`bpf_fib_lookup`) for packets arriving here; a forwarded packet of a
    /// flow with a valid cached next hop needs none.
    pub route_lookups: u64,
    /// Frames forwarded out of this interface that it could not take (the redirect failed,
    /// e.g. a veth whose peer has no NAPI, or the egress dropped them), counted by the
    /// kernel's XDP tracepoints while a daemon runs.
    pub redirect_failures: u64,
}

impl Default for IfaceCounters {
    fn default() -> Self {
        IfaceCounters {
            reasons: [0; REASON_COUNT],
            flow_cache_hits: 0,
            flow_cache_misses: 0,
            route_lookups: 0,
            redirect_failures: 0,
        }
    }
}

impl IfaceCounters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &IfaceCounters) {
        for (a, b) in self.reasons.iter_mut().zip(o.reasons) {
            *a += b;
        }
        self.flow_cache_hits += o.flow_cache_hits;
        self.flow_cache_misses += o.flow_cache_misses;
        self.route_lookups += o.route_lookups;
        self.redirect_failures += o.redirect_failures;
    }
}

/// Per-CPU counters of one class forwarded out of one interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardCounters {
    /// Packets redirected to the egress interface.
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
}

impl ForwardCounters {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &ForwardCounters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// Every field a rule can match on, so a cached class is exact. The flow cache is indexed by
/// its [`FlowKey::hash`] and stores the whole key in the entry, compared on every hit, so a
/// hash collision is a miss, never a wrong class.
///
/// A sprayed transport's packet (RoCEv2, UET: see [`crate::spray`]) is keyed on the
/// connection its header names instead of its source port, which is entropy: one connection
/// sprayed over hundreds of source ports is one flow.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (0 without ports).
    pub src_port: u16,
    /// Destination port (0 without ports).
    pub dst_port: u16,
    /// Ingress interface slot.
    pub iface_slot: u8,
    /// IP protocol.
    pub protocol: u8,
    /// DSCP.
    pub dscp: u8,
    /// RoCEv2 opcode (0 without one; see `flags`).
    pub roce_opcode: u8,
    /// [`FlowKey::FLAG_V6`] | [`FlowKey::FLAG_PORTS`] | [`FlowKey::FLAG_OPCODE`] |
    /// [`FlowKey::FLAG_CONNECTION`].
    pub flags: u8,
    /// Padding, always zero.
    pub _pad: [u8; 3],
    /// With [`FlowKey::FLAG_CONNECTION`], the connection a sprayed transport's header names
    /// ([`PacketMeta::connection`]; `src_port` is 0 then); 0 otherwise.
    pub connection: u32,
}

/// Words of a [`FlowKey`].
const FLOW_KEY_WORDS: usize = core::mem::size_of::<FlowKey>() / 8;

/// Random 32-bit keys of [`FlowKey::hash`], two per key word.
const FLOW_HASH_KEYS: [u32; 2 * FLOW_KEY_WORDS] = [
    0x9e37_79b9,
    0x7f4a_7c15,
    0xf39c_c060,
    0x5ced_c834,
    0x1082_276b,
    0xf3a2_7251,
    0xa9b7_9ad4,
    0x85eb_ca6b,
    0xc2b2_ae35,
    0x27d4_eb2f,
    0x1656_67b1,
    0xd3a2_646c,
];

impl FlowKey {
    /// IPv6 packet.
    pub const FLAG_V6: u8 = 1;
    /// Ports present.
    pub const FLAG_PORTS: u8 = 2;
    /// RoCEv2 opcode present.
    pub const FLAG_OPCODE: u8 = 4;
    /// A sprayed transport's connection in place of the source port.
    pub const FLAG_CONNECTION: u8 = 8;

    /// The key of a parsed packet: which fields make its flow. Every field a rule can match
    /// on, with one exception: a sprayed transport's packet has its connection where the
    /// source port would be (rules do not see that port either: [`PacketMeta::rule_src_port`]).
    #[inline(always)]
    pub fn of(meta: &PacketMeta, iface_slot: u8) -> FlowKey {
        let mut flags = 0;
        if meta.family == Family::V6 {
            flags |= Self::FLAG_V6;
        }
        if meta.has_ports {
            flags |= Self::FLAG_PORTS;
        }
        if meta.roce_opcode.is_some() {
            flags |= Self::FLAG_OPCODE;
        }
        let (src_port, connection) = match meta.connection {
            Some(connection) => {
                flags |= Self::FLAG_CONNECTION;
                (0, connection)
            }
            None => (meta.src_port, 0),
        };
        FlowKey {
            src: meta.src,
            dst: meta.dst,
            src_port,
            dst_port: meta.dst_port,
            iface_slot,
            protocol: meta.protocol,
            dscp: meta.dscp(),
            roce_opcode: meta.roce_opcode.unwrap_or_default(),
            flags,
            _pad: [0; 3],
            connection,
        }
    }

    /// The key of a TCP connection's direction, for the return table: addresses, ports and
    /// family only (the reply may arrive on another interface, with another DSCP).
    #[inline(always)]
    pub fn connection(meta: &PacketMeta) -> FlowKey {
        FlowKey {
            src: meta.src,
            dst: meta.dst,
            src_port: meta.src_port,
            dst_port: meta.dst_port,
            iface_slot: 0,
            protocol: meta.protocol,
            dscp: 0,
            roce_opcode: 0,
            flags: if meta.family == Family::V6 {
                Self::FLAG_V6 | Self::FLAG_PORTS
            } else {
                Self::FLAG_PORTS
            },
            _pad: [0; 3],
            connection: 0,
        }
    }

    /// [`FlowKey::connection`] of the packets that answer `meta`.
    #[inline(always)]
    pub fn reply(meta: &PacketMeta) -> FlowKey {
        let mut key = FlowKey::connection(meta);
        core::mem::swap(&mut key.src, &mut key.dst);
        core::mem::swap(&mut key.src_port, &mut key.dst_port);
        key
    }

    /// The key as machine words (aligned: single loads in the kernel).
    #[inline(always)]
    pub fn words(&self) -> [u64; FLOW_KEY_WORDS] {
        // SAFETY: #[repr(C, align(8))] plain data of exactly this size (asserted below), every
        // byte initialised (the padding is an explicit field).
        unsafe { core::mem::transmute_copy(self) }
    }

    /// Whether `other` is the same flow (word by word: no byte-wise compare).
    #[inline(always)]
    pub fn same_flow(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        let mut diff = 0;
        for i in 0..FLOW_KEY_WORDS {
            diff |= a[i] ^ b[i];
        }
        diff == 0
    }

    /// The flow-cache map key: NH (Black et al., UMAC), a sum of 32 x 32-bit products of
    /// the key's halves plus random keys; two distinct flows collide with probability about
    /// 2^-32. Independent multiplies, so it costs a few cycles. A collision only costs a
    /// miss: the entry's whole key is compared.
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        let w = self.words();
        let mut h = 0u64;
        for i in 0..FLOW_KEY_WORDS {
            let lo = (w[i] as u32).wrapping_add(FLOW_HASH_KEYS[2 * i]);
            let hi = ((w[i] >> 32) as u32).wrapping_add(FLOW_HASH_KEYS[2 * i + 1]);
            h = h.wrapping_add(u64::from(lo) * u64::from(hi));
        }
        h
    }
}

/// One direction of a TCP connection whose SYN-ACK the program saw, in the return table
/// under its key's [`FlowKey::hash`] (a key of [`FlowKey::connection`]): the unit of the
/// windows its ACKs advertise, and the class whose window they may advertise at most once
/// the other direction's data was classified.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReturnEntry {
    /// The direction's connection key.
    pub key: FlowKey,
    /// Generation the class id belongs to; 0 until data of the other direction registers.
    pub generation: u32,
    /// The class of the other direction's data.
    pub class: u32,
    /// The window scale of this direction's sender (from its SYN-ACK).
    pub window_scale: u8,
    /// Padding, always zero.
    pub _pad: u8,
    /// The largest segment this direction's sender takes (its SYN-ACK's MSS option), which
    /// bounds the other direction's data segments; 0 when not announced.
    pub mss: u16,
    /// When the connection's SYN passed (µs of the kernel clock, wrapping; 0 when not seen
    /// or once its round trip was sampled): see [`crate::window::rtt_sample_us`].
    pub syn_us: u32,
}

/// A cached classification, in the flow cache in its key's [`crate::flow::cache_set`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The flow (an entry of another flow with the same hash is a miss).
    pub key: FlowKey,
    /// Generation the class was computed under.
    pub generation: u32,
    /// Class id.
    pub class: u32,
    /// What the flow did, kept across reclassifications.
    pub state: crate::flow::FlowState,
}

const _: () = {
    assert!(core::mem::size_of::<PolicySlot>() == 56);
    assert!(core::mem::size_of::<BucketParams>() == 16);
    assert!(core::mem::size_of::<ClassConfig>() == 136);
    assert!(core::mem::size_of::<PolicerState>() == 112);
    assert!(core::mem::size_of::<IfaceConfig>() == 32);
    assert!(core::mem::size_of::<LinkState>() == 8);
    assert!(core::mem::size_of::<ClassCounters>() == 112);
    assert!(core::mem::size_of::<IfaceCounters>() == 8 * (REASON_COUNT + 4));
    assert!(core::mem::size_of::<ForwardCounters>() == 16);
    assert!(core::mem::size_of::<FlowKey>() == 48);
    assert!(core::mem::size_of::<FlowKey>() == 8 * FLOW_KEY_WORDS);
    assert!(core::mem::size_of::<FlowEntry>() == 128);
    assert!(core::mem::size_of::<crate::flow::NextHop>() == 32);
    assert!(core::mem::size_of::<ReturnEntry>() == 64);
    assert!(core::mem::size_of::<crate::classify::PrefixKey>() == 20);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    use crate::classify::{PrefixKey, RuleVector};

    // SAFETY: all are #[repr(C)] plain data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for PolicySlot {}
    unsafe impl aya::Pod for ClassConfig {}
    unsafe impl aya::Pod for PolicerState {}
    unsafe impl aya::Pod for IfaceConfig {}
    unsafe impl aya::Pod for LinkState {}
    unsafe impl aya::Pod for ClassCounters {}
    unsafe impl aya::Pod for IfaceCounters {}
    unsafe impl aya::Pod for ForwardCounters {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for ReturnEntry {}
    unsafe impl aya::Pod for PrefixKey {}
    unsafe impl aya::Pod for RuleVector {}
}

/// Names of the maps in the eBPF object (the BTF map names), defined once for user space.
pub mod names {
    /// `Array<u32, 1>`: the active generation slot.
    pub const ACTIVE_SLOT: &str = "ACTIVE_SLOT";
    /// `Array<PolicySlot, GENERATION_SLOTS>`.
    pub const POLICY_SLOTS: &str = "POLICY_SLOTS";
    /// `Array<ClassConfig, GENERATION_SLOTS * MAX_CLASSES>`.
    pub const CLASSES: &str = "CLASSES";
    /// `Array<u32, GENERATION_SLOTS * MAX_RULES>`: class id of each rule.
    pub const RULE_CLASSES: &str = "RULE_CLASSES";
    /// `Array<u32, FIELD_TABLE_ENTRIES>`: small-domain field value -> pool vector.
    pub const FIELD_TABLE: &str = "FIELD_TABLE";
    /// `LpmTrie<PrefixKey, u32>`: address prefix -> pool vector.
    pub const PREFIXES: &str = "PREFIXES";
    /// `Array<RuleVector, VECTOR_POOL_ENTRIES>`.
    pub const VECTOR_POOL: &str = "VECTOR_POOL";
    /// `Array<PolicerState, MAX_CLASSES>`.
    pub const POLICERS: &str = "POLICERS";
    /// `Array<IfaceConfig, IFINDEX_ARRAY_LIMIT>` by ifindex (slot 0: not registered).
    pub const IFACES_BY_INDEX: &str = "IFACES_BY_INDEX";
    /// `HashMap<u32 ifindex, IfaceConfig>`: interfaces of index `IFINDEX_ARRAY_LIMIT` and up.
    pub const IFACES: &str = "IFACES";
    /// `Array<LinkState, MAX_IFACES>`.
    pub const LINKS: &str = "LINKS";
    /// `Array<FlowEntry>` of `flow::cache_entries(cpus)` entries: each CPU's table of two-entry
    /// sets (`flow::cache_set`), sized at load.
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    /// `LruHashMap<u64 FlowKey::hash, ReturnEntry>`: reply directions under window control.
    pub const TCP_RETURNS: &str = "TCP_RETURNS";
    /// `PerCpuArray<u32, MAX_CLASSES>`: bytes left of each CPU's green lease per class
    /// (see `policer::LeaseParams`).
    pub const CLASS_LEASES: &str = "CLASS_LEASES";
    /// `PerCpuArray<ClassCounters, MAX_IFACES * MAX_CLASSES>`.
    pub const CLASS_COUNTERS: &str = "CLASS_COUNTERS";
    /// `PerCpuArray<IfaceCounters, MAX_IFACES>`.
    pub const IFACE_COUNTERS: &str = "IFACE_COUNTERS";
    /// `PerCpuArray<u64, MAX_IFACES>`: per interface slot, packets of a sprayed transport
    /// keyed on their 5-tuple because their header was cut short (see `spray`).
    pub const SPRAY_UNKEYED: &str = "SPRAY_UNKEYED";
    /// `Array<u32, 1>`: kernel log level (0 off, 1 error ... 5 trace).
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
    /// `Array<u32, 1>`: the route generation, bumped on every routing change (see
    /// `flow::NextHop`).
    pub const ROUTE_GENERATION: &str = "ROUTE_GENERATION";
    /// `DevMapHash` keyed by ifindex: the interfaces forwarded packets may leave by.
    pub const EGRESS_DEVICES: &str = "EGRESS_DEVICES";
    /// `PerCpuArray<ForwardCounters, MAX_IFACES * MAX_CLASSES>`, by egress slot and class.
    pub const FORWARD_COUNTERS: &str = "FORWARD_COUNTERS";
    /// `PerCpuArray<bpf_fib_lookup, 1>`: the route lookup's scratch space (kernel only).
    pub const FIB_SCRATCH: &str = "FIB_SCRATCH";
    /// `PerCpuArray` of one parsed packet's room: the parser's scratch space (kernel only).
    pub const PACKET_SCRATCH: &str = "PACKET_SCRATCH";

    /// Scratch space of one program run: never shared with another program (an upgrade's
    /// new program takes its own, whatever its shape), and carrying nothing across packets.
    pub const SCRATCH: [&str; 2] = [FIB_SCRATCH, PACKET_SCRATCH];

    /// The program's global (`.rodata`) holding log2 of each CPU's flow-table slots, set at
    /// load (`flow::cache_bits`). Not a map.
    pub const FLOW_CACHE_BITS: &str = "FLOW_CACHE_BITS";

    /// Every map, for checks that the object and the pins hold them all.
    pub const ALL: [&str; 23] = [
        ACTIVE_SLOT,
        POLICY_SLOTS,
        CLASSES,
        RULE_CLASSES,
        FIELD_TABLE,
        PREFIXES,
        VECTOR_POOL,
        POLICERS,
        CLASS_LEASES,
        IFACES_BY_INDEX,
        IFACES,
        LINKS,
        FLOW_CACHE,
        TCP_RETURNS,
        CLASS_COUNTERS,
        IFACE_COUNTERS,
        SPRAY_UNKEYED,
        LOG_LEVEL,
        ROUTE_GENERATION,
        EGRESS_DEVICES,
        FORWARD_COUNTERS,
        FIB_SCRATCH,
        PACKET_SCRATCH,
    ];
}

/// Index of class `class`'s config in generation slot `slot` (`CLASSES`).
#[inline(always)]
pub const fn class_config_index(slot: u32, class: u32) -> u32 {
    slot * crate::MAX_CLASSES as u32 + class
}

/// Index of rule `rule`'s class in generation slot `slot` (`RULE_CLASSES`).
#[inline(always)]
pub const fn rule_class_index(slot: u32, rule: u32) -> u32 {
    slot * crate::MAX_RULES as u32 + rule
}

/// Index of the counters of class `class` on interface slot `iface_slot` (`CLASS_COUNTERS`,
/// and `FORWARD_COUNTERS` by egress slot).
#[inline(always)]
pub const fn class_counter_index(iface_slot: u32, class: u32) -> u32 {
    iface_slot * crate::MAX_CLASSES as u32 + class
}

#[cfg(test)]
mod tests {
    extern crate alloc;

    /// Distinct sets `keys` take in one CPU's table of 2^17 slots, against what uniform
    /// random sets would give (`m (1 - e^(-n/m))`).
    fn occupancy(keys: impl Iterator<Item = super::FlowKey>) -> (f64, f64) {
        extern crate std;
        let bits = crate::flow::MAX_CACHE_BITS;
        let m = f64::from(1u32 << (bits - 1));
        let mut used = std::vec![false; 1 << (bits - 1)];
        let mut n = 0.0;
        for k in keys {
            used[(crate::flow::cache_set(0, bits, k.hash()) / 2) as usize] = true;
            n += 1.0;
        }
        let distinct = used.iter().filter(|&&u| u).count() as f64;
        (distinct, m * (1.0 - (-n / m).exp()))
    }

    fn v4_key(src: u32, src_port: u16) -> super::FlowKey {
        let mut meta = crate::packet::PacketMeta::default();
        meta.src[..4].copy_from_slice(&src.to_be_bytes());
        meta.dst[..4].copy_from_slice(&[198, 19, 0, 1]);
        meta.protocol = 17;
        meta.has_ports = true;
        meta.src_port = src_port;
        meta.dst_port = 4791;
        super::FlowKey::of(&meta, 1)
    }

    #[test]
    fn consecutive_addresses_and_ports_spread_over_the_flow_table() {
        let base = u32::from_be_bytes([198, 18, 0, 0]);
        for (what, (distinct, uniform)) in [
            (
                "addresses",
                occupancy((0..65_536).map(|i| v4_key(base + i, 40_000))),
            ),
            (
                "ports",
                occupancy((0..65_536).map(|p| v4_key(base, p as u16))),
            ),
            (
                "both",
                occupancy(
                    (0..100_000).map(|i| v4_key(base + (i & 0x1ffff), 40_000 + (i >> 17) as u16)),
                ),
            ),
        ] {
            assert!(
                distinct >= 0.97 * uniform,
                "{what}: {distinct} slots, uniform hashing gives {uniform:.0}"
            );
        }
    }

    #[test]
    fn a_reply_s_connection_key_is_the_reply_key_of_its_request() {
        let request = PacketMeta {
            family: Family::V4,
            protocol: crate::packet::ipproto::TCP,
            tos: 0x28,
            src: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 19, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: 40_000,
            dst_port: 5201,
            has_ports: true,
            ..PacketMeta::default()
        };
        let reply = PacketMeta {
            src: request.dst,
            dst: request.src,
            src_port: request.dst_port,
            dst_port: request.src_port,
            // Another DSCP on the way back changes nothing.
            tos: 0,
            ..request
        };
        assert_eq!(FlowKey::reply(&request), FlowKey::connection(&reply));
        assert_ne!(FlowKey::connection(&request), FlowKey::connection(&reply));
    }

    use super::*;

    fn key(i: u32) -> FlowKey {
        let mut k = FlowKey {
            src_port: 40000,
            dst_port: 4791,
            protocol: 17,
            flags: FlowKey::FLAG_PORTS,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        k.dst[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn words_cover_every_field() {
        let base = key(1);
        let variants = [
            FlowKey {
                src_port: 1,
                ..base
            },
            FlowKey {
                dst_port: 1,
                ..base
            },
            FlowKey {
                iface_slot: 1,
                ..base
            },
            FlowKey {
                protocol: 6,
                ..base
            },
            FlowKey { dscp: 1, ..base },
            FlowKey {
                roce_opcode: 1,
                ..base
            },
            FlowKey {
                flags: FlowKey::FLAG_V6,
                ..base
            },
            FlowKey {
                src: [0xff; 16],
                ..base
            },
            FlowKey {
                dst: [0xff; 16],
                ..base
            },
            FlowKey {
                connection: 1,
                ..base
            },
        ];
        assert!(base.same_flow(&key(1)));
        for v in variants {
            assert!(!base.same_flow(&v), "{v:?}");
            assert_ne!(base.hash(), v.hash(), "{v:?}");
        }
    }

    /// An untagged IPv4 UDP frame from 198.18.0.1 to 198.19.0.1 with this UDP payload.
    fn udp_frame(src_port: u16, dst_port: u16, payload: &[u8]) -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&crate::packet::ethertype::IPV4.to_be_bytes());
        f[14] = 0x45;
        let total = (20 + 8 + payload.len()) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[14 + 9] = crate::packet::ipproto::UDP;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 19, 0, 1]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f[36..38].copy_from_slice(&dst_port.to_be_bytes());
        f[38..40].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn key_of(frame: &[u8]) -> FlowKey {
        FlowKey::of(&crate::packet::parse(frame).expect("parses"), 1)
    }

    /// A RoCEv2 BTH with this opcode and destination QP.
    fn bth(opcode: u8, qp: u32) -> [u8; 12] {
        let q = qp.to_be_bytes();
        [opcode, 0x40, 0xff, 0xff, 0, q[1], q[2], q[3], 0x80, 0, 0, 1]
    }

    /// A UET RUD request's PDS header with this source PDC id.
    fn pds(spdcid: u16) -> [u8; 12] {
        let s = spdcid.to_be_bytes();
        [2 << 3, 0, 0, 0, 0, 0, 0, 1, s[0], s[1], 0, 9]
    }

    #[test]
    fn a_sprayed_connection_is_one_key_whatever_its_source_port() {
        use crate::{ROCEV2_UDP_PORT, UET_UDP_PORT};
        for (port, same, other) in [
            (
                ROCEV2_UDP_PORT,
                &bth(0x0a, 0x12_3456)[..],
                &bth(0x0a, 0x12_3457)[..],
            ),
            (UET_UDP_PORT, &pds(42)[..], &pds(43)[..]),
        ] {
            let first = key_of(&udp_frame(49152, port, same));
            assert_eq!(
                first.src_port, 0,
                "port {port}: the entropy is not in the key"
            );
            assert_ne!(first.flags & FlowKey::FLAG_CONNECTION, 0);
            for src_port in (49153..=u16::MAX).step_by(61) {
                assert_eq!(
                    key_of(&udp_frame(src_port, port, same)),
                    first,
                    "port {port}, source port {src_port}"
                );
            }
            assert_ne!(
                key_of(&udp_frame(49152, port, other)),
                first,
                "port {port}: another connection"
            );
        }
        // Neither the QP nor the PDC id of one transport is the other's.
        assert_ne!(
            key_of(&udp_frame(1, ROCEV2_UDP_PORT, &bth(0x0a, 42))),
            key_of(&udp_frame(1, UET_UDP_PORT, &pds(42)))
        );
        // A CNP to the QP is its own flow (rules tell CNPs from data by the opcode).
        assert_ne!(
            key_of(&udp_frame(1, ROCEV2_UDP_PORT, &bth(0x81, 42))),
            key_of(&udp_frame(1, ROCEV2_UDP_PORT, &bth(0x0a, 42)))
        );
    }

    #[test]
    fn other_udp_and_a_cut_short_uet_header_keep_the_five_tuple() {
        for (port, payload) in [
            (5001, &pds(42)[..]),
            (crate::UET_UDP_PORT, &pds(42)[..7]),
            (crate::UET_UDP_PORT, &[31 << 3, 0, 0, 0][..]),
        ] {
            let meta = crate::packet::parse(&udp_frame(40000, port, payload)[..]).expect("parses");
            assert_eq!(meta.spray_unkeyed, port == crate::UET_UDP_PORT, "{port}");
            let a = FlowKey::of(&meta, 1);
            let b = key_of(&udp_frame(40001, port, payload));
            assert_eq!((a.src_port, a.flags & FlowKey::FLAG_CONNECTION), (40000, 0));
            assert_ne!(a, b, "port {port}: two source ports, two flows");
        }
    }

    #[test]
    fn structured_flows_do_not_collide() {
        extern crate std;
        use std::collections::HashSet;
        // A /16 of v4 destinations, v6 destinations differing in one byte each, every source
        // port.
        let mut keys = HashSet::new();
        for i in 0..65536u32 {
            keys.insert(key(i));
        }
        for byte in 0..16 {
            for v in 0..=255u8 {
                let mut k = key(0);
                k.flags |= FlowKey::FLAG_V6;
                k.dst[byte] = v;
                keys.insert(k);
            }
        }
        for port in 0..=u16::MAX {
            keys.insert(FlowKey {
                src_port: port,
                ..key(7)
            });
            // As many RoCE QPs between one pair of addresses.
            keys.insert(FlowKey {
                src_port: 0,
                flags: FlowKey::FLAG_PORTS | FlowKey::FLAG_CONNECTION,
                connection: u32::from(port) << 8,
                ..key(7)
            });
        }
        let hashes: HashSet<u64> = keys.iter().map(FlowKey::hash).collect();
        assert_eq!(hashes.len(), keys.len(), "hash collisions");
    }
}
