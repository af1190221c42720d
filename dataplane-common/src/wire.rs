//! Header lengths and field offsets of the wire formats the pipeline reads and rewrites: the
//! one place they are written, for the parser, the forwarder and the benchmark programs.

/// Length of a MAC address.
pub const MAC_LEN: usize = 6;
/// Ethernet header length (untagged).
pub const ETH_HLEN: usize = 14;
/// One 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
/// IPv4 header without options.
pub const IPV4_MIN_HLEN: usize = 20;
/// Offset of the TTL in the IPv4 header (the protocol follows it in the same 16-bit word).
pub const IPV4_TTL_OFFSET: usize = 8;
/// Offset of the header checksum in the IPv4 header.
pub const IPV4_CHECKSUM_OFFSET: usize = 10;
/// Offset of the source address in the IPv4 header.
pub const IPV4_SRC_OFFSET: usize = 12;
/// Offset of the destination address in the IPv4 header.
pub const IPV4_DST_OFFSET: usize = 16;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
/// Offset of the hop limit in the IPv6 header.
pub const IPV6_HOP_LIMIT_OFFSET: usize = 7;
/// Offset of the source address in the IPv6 header.
pub const IPV6_SRC_OFFSET: usize = 8;
/// Offset of the destination address in the IPv6 header.
pub const IPV6_DST_OFFSET: usize = 24;
/// TCP header without options.
pub const TCP_MIN_HLEN: usize = 20;
/// UDP header.
pub const UDP_HLEN: usize = 8;
/// ICMP header (type, code, checksum, rest of header).
pub const ICMP_HLEN: usize = 8;
/// ICMPv6 header as far as the parser reads it (type, code, checksum).
pub const ICMPV6_HLEN: usize = 4;
/// RoCEv2 base transport header (IBTA RoCEv2 Annex A17; IBA 9.2): opcode, flags, P_Key,
/// a reserved byte, the 24-bit destination QP, the PSN.
pub const ROCE_BTH_LEN: usize = 12;
/// Offset of the destination QP (three bytes) in the BTH.
pub const ROCE_BTH_DEST_QP_OFFSET: usize = 5;
/// UET transport security header (UEC 1.0.1 TSS): type, SP, AN, SDI (4 bytes), then the
/// 4-byte SSI when SP is set, then the 8-byte TSC.
pub const UET_TSS_HLEN: usize = 12;
/// The optional SSI word of the TSS header (present when SP is set).
pub const UET_TSS_SSI_LEN: usize = 4;
/// The part of a UET PDS header that every connection-oriented type (RUD/ROD requests with
/// or without CC state, ACK, ACK_CC, ACK_CCX, NACK, NACK_CCX, control) lays out alike: the
/// 2-byte prologue, 2 + 4 bytes of type-specific fields, the source PDC id, the destination
/// PDC id (or, with SYN, the PDC mode and PSN offset).
pub const UET_PDS_PDC_HLEN: usize = 12;
/// Offset of the source PDC id (16 bits) in the PDS header.
pub const UET_PDS_SPDCID_OFFSET: usize = 8;
