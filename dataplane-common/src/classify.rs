//! Rule matching. Rules are compiled in user space into one bit-vector per field value
//! (Lakshman–Stiliadis): a packet's class is the lowest rule index set in the AND of the
//! vectors its field values select. This module holds the rule model, the naive first-match
//! reference, the table layout both sides index, and the AND scan the kernel runs.

use crate::{
    packet::{Family, PacketMeta},
    GENERATION_SLOTS, MAX_IFACES, RULE_WORDS,
};

/// A set of rules, one bit each (bit `i` of word `i / 64` is rule `i`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleVector {
    /// The bits.
    pub words: [u64; RULE_WORDS],
}

impl RuleVector {
    /// No rule.
    pub const EMPTY: RuleVector = RuleVector {
        words: [0; RULE_WORDS],
    };
    /// Every rule.
    pub const ALL: RuleVector = RuleVector {
        words: [u64::MAX; RULE_WORDS],
    };

    /// Adds rule `rule`.
    pub fn set(&mut self, rule: usize) {
        self.words[rule / 64] |= 1 << (rule % 64);
    }
}

/// Pool index of the all-ones vector, used for fields no rule constrains.
pub const ALL_RULES_VECTOR: u32 = 0;

/// Vectors one generation slot may hold besides the shared all-ones vector: the pool is
/// split in halves so writing one slot never touches what the live slot reads.
pub const VECTORS_PER_SLOT: u32 = (crate::VECTOR_POOL_ENTRIES as u32 - 1) / 2;

/// Pool index of a policy's vector `id` (0 = all ones) written for generation slot `slot`.
pub const fn pool_index(slot: u32, id: u32) -> u32 {
    if id == ALL_RULES_VECTOR {
        ALL_RULES_VECTOR
    } else {
        slot * VECTORS_PER_SLOT + id
    }
}

/// The packet fields rules can constrain.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Source prefix (LPM).
    SrcAddr = 0,
    /// Destination prefix (LPM).
    DstAddr = 1,
    /// IP protocol.
    Protocol = 2,
    /// Source port range.
    SrcPort = 3,
    /// Destination port range.
    DstPort = 4,
    /// DSCP.
    Dscp = 5,
    /// Ingress interface slot.
    Iface = 6,
    /// RoCEv2 BTH opcode range.
    RoceOpcode = 7,
}

/// Number of [`Field`]s.
pub const FIELD_COUNT: usize = 8;

impl Field {
    /// All fields in index order.
    pub const ALL: [Field; FIELD_COUNT] = [
        Field::SrcAddr,
        Field::DstAddr,
        Field::Protocol,
        Field::SrcPort,
        Field::DstPort,
        Field::Dscp,
        Field::Iface,
        Field::RoceOpcode,
    ];

    /// Bit of this field in [`crate::maps::PolicySlot::active_fields`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Number of values of a table-indexed field (0 for the LPM fields).
    pub const fn domain(self) -> usize {
        match self {
            Field::SrcAddr | Field::DstAddr => 0,
            Field::Protocol | Field::RoceOpcode => 256,
            Field::SrcPort | Field::DstPort => 65536,
            Field::Dscp => 64,
            Field::Iface => MAX_IFACES,
        }
    }

    /// First entry of this field within one slot's part of the field table.
    const fn table_base(self) -> usize {
        match self {
            Field::SrcAddr | Field::DstAddr | Field::Protocol => 0,
            Field::SrcPort => Field::Protocol.domain(),
            Field::DstPort => Field::SrcPort.table_base() + Field::SrcPort.domain(),
            Field::Dscp => Field::DstPort.table_base() + Field::DstPort.domain(),
            Field::Iface => Field::Dscp.table_base() + Field::Dscp.domain(),
            Field::RoceOpcode => Field::Iface.table_base() + Field::Iface.domain(),
        }
    }
}

/// Entries of one slot's field table.
pub const FIELD_TABLE_SLOT_LEN: usize = Field::RoceOpcode.table_base() + Field::RoceOpcode.domain();
/// Entries of the whole field table (all slots).
pub const FIELD_TABLE_ENTRIES: usize = FIELD_TABLE_SLOT_LEN * GENERATION_SLOTS;

/// Index in the field table of `value` of `field` in generation slot `slot`.
/// `value` must be below `field.domain()`; callers mask it.
#[inline(always)]
pub const fn field_table_index(slot: u32, field: Field, value: u32) -> u32 {
    (slot as usize * FIELD_TABLE_SLOT_LEN + field.table_base()) as u32 + value
}

/// Which address trie part a prefix belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrField {
    /// IPv4 source.
    Src4 = 0,
    /// IPv4 destination.
    Dst4 = 1,
    /// IPv6 source.
    Src6 = 2,
    /// IPv6 destination.
    Dst6 = 3,
}

impl AddrField {
    /// The trie part for a packet of `family` and the source or destination field.
    pub const fn of(family: Family, field: Field) -> AddrField {
        match (family, field) {
            (Family::V4, Field::SrcAddr) => AddrField::Src4,
            (Family::V4, _) => AddrField::Dst4,
            (Family::V6, Field::SrcAddr) => AddrField::Src6,
            (Family::V6, _) => AddrField::Dst6,
        }
    }
}

/// Data part of an LPM trie key. The slot and field bytes are always matched in full, so
/// one trie serves both slots and all four address fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixKey {
    /// Generation slot.
    pub slot: u8,
    /// [`AddrField`] as a byte.
    pub field: u8,
    /// Address; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// Padding (the trie wants the key a multiple of the value's alignment); never matched.
    pub _pad: [u8; 2],
}

/// Bits of [`PrefixKey`] before the address: the LPM prefix length is this plus the
/// address prefix length.
pub const PREFIX_KEY_HEADER_BITS: u32 = 16;

/// An address prefix in a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// IP version.
    pub family: Family,
    /// Address with host bits cleared; IPv4 uses the first four bytes.
    pub addr: [u8; 16],
    /// Prefix length in bits.
    pub len: u8,
}

/// `addr` with every bit after the first `len` cleared.
pub fn mask(addr: &[u8; 16], len: u8) -> [u8; 16] {
    let mut out = *addr;
    for (i, b) in out.iter_mut().enumerate() {
        let keep = usize::from(len).saturating_sub(i * 8).min(8);
        *b &= !(0xffu16 >> keep) as u8;
    }
    out
}

impl Prefix {
    /// The prefix of length `len` containing `addr` (host bits cleared).
    pub fn new(family: Family, addr: [u8; 16], len: u8) -> Prefix {
        Prefix {
            family,
            addr: mask(&addr, len),
            len,
        }
    }

    /// An IPv4 prefix.
    pub fn v4(addr: [u8; 4], len: u8) -> Prefix {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&addr);
        Prefix::new(Family::V4, a, len)
    }

    /// Whether `addr` of a packet of `family` lies inside this prefix.
    pub fn contains(&self, family: Family, addr: &[u8; 16]) -> bool {
        if family != self.family {
            return false;
        }
        let full = usize::from(self.len / 8);
        let rest = self.len % 8;
        if addr[..full] != self.addr[..full] {
            return false;
        }
        rest == 0 || (addr[full] ^ self.addr[full]) & (0xffu8 << (8 - rest)) == 0
    }
}

/// An inclusive range of a small-domain field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First value.
    pub lo: u32,
    /// Last value (inclusive).
    pub hi: u32,
}

impl Range {
    /// A single value.
    pub const fn one(v: u32) -> Range {
        Range { lo: v, hi: v }
    }

    /// Whether `v` lies inside.
    pub const fn contains(&self, v: u32) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// One classification rule: every constrained field must match; `None` matches anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSpec {
    /// Class id this rule selects.
    pub class: u32,
    /// Source prefix.
    pub src: Option<Prefix>,
    /// Destination prefix.
    pub dst: Option<Prefix>,
    /// IP protocol.
    pub protocol: Option<Range>,
    /// Source ports; a packet without ports never matches, nor does a sprayed transport's
    /// packet, whose source port is entropy ([`PacketMeta::rule_src_port`]).
    pub src_ports: Option<Range>,
    /// Destination ports; a packet without ports never matches.
    pub dst_ports: Option<Range>,
    /// DSCP values.
    pub dscp: Option<Range>,
    /// Ingress interface slot (1..MAX_IFACES).
    pub iface: Option<Range>,
    /// RoCEv2 opcodes; a packet without a BTH never matches.
    pub roce_opcode: Option<Range>,
}

impl RuleSpec {
    /// The range a small-domain field is constrained to.
    pub const fn range(&self, field: Field) -> Option<Range> {
        match field {
            Field::SrcAddr | Field::DstAddr => None,
            Field::Protocol => self.protocol,
            Field::SrcPort => self.src_ports,
            Field::DstPort => self.dst_ports,
            Field::Dscp => self.dscp,
            Field::Iface => self.iface,
            Field::RoceOpcode => self.roce_opcode,
        }
    }

    /// Whether `field` is constrained at all.
    pub const fn constrains(&self, field: Field) -> bool {
        match field {
            Field::SrcAddr => self.src.is_some(),
            Field::DstAddr => self.dst.is_some(),
            _ => self.range(field).is_some(),
        }
    }

    /// Naive reference match, used to check the compiled tables.
    pub fn matches(&self, pkt: &PacketMeta, iface_slot: u32) -> bool {
        let addr_ok = |p: &Option<Prefix>, a: &[u8; 16]| match p {
            Some(p) => p.contains(pkt.family, a),
            None => true,
        };
        let value_ok = |field: Field, v: Option<u32>| match (self.range(field), v) {
            (None, _) => true,
            (Some(r), Some(v)) => r.contains(v),
            (Some(_), None) => false,
        };
        let ports = pkt.has_ports;
        addr_ok(&self.src, &pkt.src)
            && addr_ok(&self.dst, &pkt.dst)
            && value_ok(Field::Protocol, Some(u32::from(pkt.protocol)))
            && value_ok(Field::SrcPort, pkt.rule_src_port())
            && value_ok(Field::DstPort, ports.then_some(u32::from(pkt.dst_port)))
            && value_ok(Field::Dscp, Some(u32::from(pkt.dscp())))
            && value_ok(Field::Iface, Some(iface_slot))
            && value_ok(Field::RoceOpcode, pkt.roce_opcode.map(u32::from))
    }
}

/// Naive first match over `rules`: the class of the first matching rule.
pub fn first_match(rules: &[RuleSpec], pkt: &PacketMeta, iface_slot: u32) -> Option<u32> {
    rules
        .iter()
        .find(|r| r.matches(pkt, iface_slot))
        .map(|r| r.class)
}

/// Lowest rule index set in the AND of `vectors`, scanning the first `words` words.
#[inline(always)]
pub fn lowest_common_rule(vectors: &[&RuleVector; FIELD_COUNT], words: u32) -> Option<u32> {
    let mut w = 0;
    // A constant bound the verifier can see; `words` ends it early.
    while w < RULE_WORDS {
        if w as u32 >= words {
            return None;
        }
        let mut acc = u64::MAX;
        for v in vectors {
            acc &= v.words[w];
        }
        if acc != 0 {
            return Some(w as u32 * 64 + acc.trailing_zeros());
        }
        w += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_clears_host_bits() {
        let a = [0xff; 16];
        assert_eq!(mask(&a, 0), [0; 16]);
        assert_eq!(mask(&a, 15)[..3], [0xff, 0xfe, 0]);
        assert_eq!(mask(&a, 128), a);
    }

    #[test]
    fn prefix_contains_respects_partial_bytes() {
        let v4 = Prefix::v4;
        let p = v4([198, 18, 128, 0], 17);
        let mut a = [0; 16];
        a[..4].copy_from_slice(&[198, 18, 200, 1]);
        assert!(p.contains(Family::V4, &a));
        a[2] = 127;
        assert!(!p.contains(Family::V4, &a));
        assert!(!p.contains(Family::V6, &a));
        let mut b = [0; 16];
        b[..4].copy_from_slice(&[198, 19, 255, 255]);
        assert!(v4([198, 18, 0, 0], 15).contains(Family::V4, &b));
        assert!(!p.contains(Family::V4, &b));
    }

    #[test]
    fn field_table_regions_do_not_overlap() {
        let mut end = 0;
        for f in Field::ALL.iter().skip(2) {
            let first = field_table_index(0, *f, 0) as usize;
            assert_eq!(first, end, "{f:?} starts where the previous field ends");
            end = first + f.domain();
        }
        assert_eq!(end, FIELD_TABLE_SLOT_LEN);
        assert_eq!(
            field_table_index(1, Field::Protocol, 0) as usize,
            FIELD_TABLE_SLOT_LEN
        );
    }

    #[test]
    fn a_sprayed_packet_s_source_port_matches_no_rule() {
        let rule = RuleSpec {
            class: 1,
            src_ports: Some(Range { lo: 0, hi: 65535 }),
            ..RuleSpec::default()
        };
        let udp = PacketMeta {
            has_ports: true,
            src_port: 49152,
            dst_port: crate::ROCEV2_UDP_PORT,
            ..PacketMeta::default()
        };
        assert!(
            rule.matches(&udp, 0),
            "a RoCE packet whose header was not read"
        );
        let sprayed = PacketMeta {
            connection: Some(7),
            ..udp
        };
        assert!(!rule.matches(&sprayed, 0), "its source port is entropy");
        let any_port = RuleSpec {
            src_ports: None,
            ..rule
        };
        assert!(any_port.matches(&sprayed, 0));
    }

    #[test]
    fn lowest_common_rule_finds_first_shared_bit() {
        let mut a = RuleVector::EMPTY;
        let mut b = RuleVector::EMPTY;
        a.set(5);
        a.set(130);
        b.set(130);
        b.set(200);
        let all = RuleVector::ALL;
        let vs = [&a, &b, &all, &all, &all, &all, &all, &all];
        assert_eq!(lowest_common_rule(&vs, 4), Some(130));
        assert_eq!(lowest_common_rule(&vs, 2), None, "scan stops at `words`");
        b.set(5);
        assert_eq!(
            lowest_common_rule(&[&a, &b, &all, &all, &all, &all, &all, &all], 4),
            Some(5)
        );
    }
}
