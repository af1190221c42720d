//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options) or IPv6 (with a bounded
//! extension-header chain), then TCP/UDP/ICMP/ICMPv6, the RoCEv2 BTH opcode and, for the
//! transports that spray connections over UDP source ports, the connection their header names
//! (see [`crate::spray`]).
//!
//! The parser is generic over [`PacketBytes`] so the same code runs on a byte slice in host
//! tests and on the XDP frame in the kernel.

use crate::{
    reason::Reason,
    spray::{roce_connection, uet_connection},
    MAX_IPV6_EXTENSION_HEADERS, MAX_VLAN_TAGS, ROCEV2_UDP_PORT, UET_UDP_PORT,
};

/// Bounds-checked reads from a frame.
pub trait PacketBytes {
    /// Frame length in bytes.
    fn frame_len(&self) -> usize;
    /// `N` bytes at `offset`, or `None` when they are not all inside the frame.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len()
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// EtherType values we act on.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol numbers we parse.
pub mod ipproto {
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
}

use crate::wire::{
    ETH_HLEN, ICMPV6_HLEN, ICMP_HLEN, IPV4_MIN_HLEN, IPV6_HLEN, ROCE_BTH_LEN, TCP_MIN_HLEN,
    UDP_HLEN, VLAN_HLEN,
};
const IPV6_FRAGMENT_HLEN: usize = 8;

/// IP version of a parsed packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    #[default]
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

/// What the classifier and the actions need to know about a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// IP version.
    pub family: Family,
    /// Upper-layer protocol (after the IPv6 extension chain).
    pub protocol: u8,
    /// The whole DS field: DSCP in the upper six bits, ECN in the lower two.
    pub tos: u8,
    /// Source address; IPv4 uses the first four bytes, the rest are zero.
    pub src: [u8; 16],
    /// Destination address, laid out like `src`.
    pub dst: [u8; 16],
    /// Source port; 0 when `has_ports` is false.
    pub src_port: u16,
    /// Destination port; 0 when `has_ports` is false.
    pub dst_port: u16,
    /// TCP or UDP header present (false for ICMP, other protocols and non-first fragments).
    pub has_ports: bool,
    /// A non-first fragment: classified on L3 fields only.
    pub later_fragment: bool,
    /// RoCEv2 BTH opcode, for UDP destination port 4791.
    pub roce_opcode: Option<u8>,
    /// For a transport that sprays its connections over UDP source ports (RoCEv2, UET; see
    /// [`crate::spray`]): the connection its header names, which takes the source port's
    /// place in the flow key. The source port is entropy then, and rules do not see it
    /// ([`PacketMeta::rule_src_port`]).
    pub connection: Option<u32>,
    /// A UET packet whose PDS header is cut short or of a reserved type: keyed on its
    /// 5-tuple like any UDP packet, and counted (never dropped).
    pub spray_unkeyed: bool,
    /// TCP's header fields, for TCP (first fragments and whole packets).
    pub tcp: Option<TcpMeta>,
}

/// What the policer's TCP handling needs of a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpMeta {
    /// Offset of the TCP header in the frame.
    pub offset: usize,
    /// Length of the TCP header (data offset × 4, options included).
    pub header_len: usize,
    /// The flags byte ([`TcpMeta::SYN`], [`TcpMeta::ACK`], ...).
    pub flags: u8,
    /// For a segment that carries data: the sequence number just past its last byte (what
    /// tells a retransmission from new data).
    pub data_end: Option<u32>,
}

impl TcpMeta {
    /// SYN flag.
    pub const SYN: u8 = 0x02;
    /// ACK flag.
    pub const ACK: u8 = 0x10;
    /// Offset of the acknowledgement number in the TCP header.
    pub const ACK_OFFSET: usize = 8;
    /// Offset of the window field in the TCP header.
    pub const WINDOW_OFFSET: usize = 14;
    /// Offset of the checksum in the TCP header.
    pub const CHECKSUM_OFFSET: usize = 16;

    /// A SYN without ACK: a connection's first segment.
    #[inline(always)]
    pub const fn is_syn(&self) -> bool {
        self.flags & (Self::SYN | Self::ACK) == Self::SYN
    }

    /// A SYN-ACK: the segment that carries its sender's window scale.
    #[inline(always)]
    pub const fn is_syn_ack(&self) -> bool {
        self.flags & (Self::SYN | Self::ACK) == Self::SYN | Self::ACK
    }

    /// A pure ACK past the handshake (no data, no SYN): the segments whose window the window
    /// control narrows. A bulk transfer's reverse direction is made of them; data segments
    /// (the policed direction) skip the return table.
    pub const fn is_pure_ack(&self) -> bool {
        self.flags & (Self::SYN | Self::ACK) == Self::ACK && self.data_end.is_none()
    }
}

impl PacketMeta {
    /// DSCP (upper six bits of the DS field).
    pub const fn dscp(&self) -> u8 {
        self.tos >> 2
    }

    /// The source port rules match on: none without ports, and none for a packet of a
    /// sprayed connection, whose source port is entropy (its flow key leaves the port out, so
    /// its class must not depend on it either).
    #[inline(always)]
    pub const fn rule_src_port(&self) -> Option<u32> {
        if self.has_ports && self.connection.is_none() {
            Some(self.src_port as u32)
        } else {
            None
        }
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses a frame. `Err` carries the reason the packet cannot be classified; such packets are
/// passed to the kernel, never dropped.
#[inline(always)]
pub fn parse<P: PacketBytes + ?Sized>(pkt: &P) -> Result<PacketMeta, Reason> {
    let mut meta = PacketMeta::default();
    parse_into(pkt, &mut meta)?;
    Ok(meta)
}

/// [`parse`] into memory the caller provides (every field is overwritten). The XDP program
/// parses into a per-CPU map value: kept on the BPF stack, the addresses were split into
/// single bytes and spilled one 8-byte slot each.
#[inline(always)]
pub fn parse_into<P: PacketBytes + ?Sized>(pkt: &P, meta: &mut PacketMeta) -> Result<(), Reason> {
    *meta = PacketMeta::default();
    let ethertype_at = ETH_HLEN - 2;
    let mut ethertype = be16(pkt.bytes(ethertype_at).ok_or(Reason::TruncatedEthernet)?);
    let mut l3_offset = ETH_HLEN;
    let mut tags = 0;
    while ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        if tags == MAX_VLAN_TAGS {
            return Err(Reason::TooManyVlanTags);
        }
        ethertype = be16(pkt.bytes(l3_offset + 2).ok_or(Reason::TruncatedVlan)?);
        l3_offset += VLAN_HLEN;
        tags += 1;
    }
    meta.l3_offset = l3_offset;
    let span = match ethertype {
        ethertype::IPV4 => parse_ipv4(pkt, meta)?,
        ethertype::IPV6 => parse_ipv6(pkt, meta)?,
        _ => return Err(Reason::NotIp),
    };
    if !meta.later_fragment {
        parse_l4(pkt, span, meta)?;
    }
    Ok(())
}

/// Where the upper-layer header starts and where the IP packet ends (Ethernet padding may
/// follow it; nothing past `end` belongs to the packet).
#[derive(Clone, Copy)]
struct L4Span {
    start: usize,
    end: usize,
}

/// Fills the IPv4 fields and returns the L4 span.
#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(pkt: &P, meta: &mut PacketMeta) -> Result<L4Span, Reason> {
    let off = meta.l3_offset;
    let h: [u8; IPV4_MIN_HLEN] = pkt.bytes(off).ok_or(Reason::TruncatedIpv4)?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return Err(Reason::BadIpv4Header);
    }
    if off + header_len > pkt.frame_len() {
        return Err(Reason::TruncatedIpv4);
    }
    let total_len = usize::from(be16([h[2], h[3]]));
    if total_len < header_len || off + total_len > pkt.frame_len() {
        return Err(Reason::BadIpLength);
    }
    meta.family = Family::V4;
    meta.tos = h[1];
    meta.protocol = h[9];
    meta.src[..4].copy_from_slice(&h[12..16]);
    meta.dst[..4].copy_from_slice(&h[16..20]);
    meta.later_fragment = be16([h[6], h[7]]) & 0x1fff != 0;
    Ok(L4Span {
        start: off + header_len,
        end: off + total_len,
    })
}

/// Fills the IPv6 fields, walks the extension chain and returns the L4 span.
#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(pkt: &P, meta: &mut PacketMeta) -> Result<L4Span, Reason> {
    let off = meta.l3_offset;
    // Read in pieces: a 40-byte copy costs scarce BPF stack.
    let h: [u8; 8] = pkt.bytes(off).ok_or(Reason::TruncatedIpv6)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::TruncatedIpv6);
    }
    meta.src = pkt.bytes(off + 8).ok_or(Reason::TruncatedIpv6)?;
    meta.dst = pkt.bytes(off + 24).ok_or(Reason::TruncatedIpv6)?;
    let payload_len = usize::from(be16([h[4], h[5]]));
    if off + IPV6_HLEN + payload_len > pkt.frame_len() {
        return Err(Reason::BadIpLength);
    }
    meta.family = Family::V6;
    meta.tos = (h[0] << 4) | (h[1] >> 4);
    let end = off + IPV6_HLEN + payload_len;
    let mut next = h[6];
    let mut cursor = off + IPV6_HLEN;
    // One pass per extension header we accept, plus one to reach the upper layer.
    for _ in 0..=MAX_IPV6_EXTENSION_HEADERS {
        match next {
            ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS => {
                let ext: [u8; 2] = pkt.bytes(cursor).ok_or(Reason::BadIpv6ExtensionChain)?;
                next = ext[0];
                cursor += (usize::from(ext[1]) + 1) * 8;
            }
            ipproto::FRAGMENT => {
                let frag: [u8; IPV6_FRAGMENT_HLEN] =
                    pkt.bytes(cursor).ok_or(Reason::BadIpv6ExtensionChain)?;
                next = frag[0];
                cursor += IPV6_FRAGMENT_HLEN;
                meta.later_fragment = be16([frag[2], frag[3]]) >> 3 != 0;
            }
            _ => {
                meta.protocol = next;
                return Ok(L4Span { start: cursor, end });
            }
        }
        // The whole extension header must lie inside the payload.
        if cursor > end {
            return Err(Reason::BadIpv6ExtensionChain);
        }
        if meta.later_fragment {
            meta.protocol = next;
            return Ok(L4Span { start: cursor, end });
        }
    }
    Err(Reason::BadIpv6ExtensionChain)
}

/// TCP's flags, header length and data end. A data offset that points outside the packet
/// leaves the segment without data and options: it is still classified, never taken for a
/// retransmission, and its window never touched.
#[inline(always)]
fn parse_tcp<P: PacketBytes + ?Sized>(pkt: &P, span: L4Span) -> Result<TcpMeta, Reason> {
    let h: [u8; 14] = pkt.bytes(span.start).ok_or(Reason::TruncatedL4)?;
    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let header_len = usize::from(h[12] >> 4) * 4;
    let data_start = span.start + header_len;
    let sane = header_len >= TCP_MIN_HLEN && data_start <= span.end;
    Ok(TcpMeta {
        offset: span.start,
        header_len: if sane { header_len } else { TCP_MIN_HLEN },
        flags: h[13],
        // span.end - data_start < 64 KiB: the IP length field bounds it.
        data_end: (sane && data_start < span.end)
            .then(|| seq.wrapping_add((span.end - data_start) as u32)),
    })
}

/// TCP option kinds the handshake's option walk knows.
const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_MSS: u8 = 2;
const TCP_OPTION_WINDOW_SCALE: u8 = 3;
/// Most option bytes a TCP header holds.
pub const MAX_TCP_OPTION_BYTES: usize = 40;
/// Options the walk passes at most: a SYN-ACK carries five or six (MSS, SACK-permitted,
/// timestamps, window scale and NOP padding); the bound keeps the verifier's work small.
const MAX_TCP_OPTIONS_WALKED: usize = 10;
/// Room for a copy of a TCP header's options: a power of two above
/// [`MAX_TCP_OPTION_BYTES`], so an index masked to it is in bounds for the verifier too.
pub const TCP_OPTIONS_ROOM: usize = 64;

/// What a SYN's or SYN-ACK's options say about the connection's direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeOptions {
    /// The window scale (RFC 7323); `None` without the option (the sender does not scale).
    pub window_scale: Option<u8>,
    /// The largest segment the sender takes (RFC 9293 §3.7.1); `None` without the option.
    pub mss: Option<u16>,
}

/// The window scale and MSS options among the first `len` bytes of a SYN's or SYN-ACK's
/// options. A malformed option ends the walk with what was found before it.
///
/// The options are walked in a copy, not in the frame: a walk over packet memory multiplies
/// the verifier's states past its limit.
#[inline(always)]
pub fn tcp_handshake_options(options: &[u8; TCP_OPTIONS_ROOM], len: usize) -> HandshakeOptions {
    let len = if len > MAX_TCP_OPTION_BYTES {
        MAX_TCP_OPTION_BYTES
    } else {
        len
    };
    let byte = |i: usize| options[i & (TCP_OPTIONS_ROOM - 1)];
    // Plain words while walking (bits 8 and 16 say "found"), the options built at the end:
    // with `Option` fields set inside the loop, LLVM's BPF code did 32-bit arithmetic on a
    // pointer, which the verifier refuses.
    let (mut scale, mut mss) = (0u32, 0u32);
    let mut at = 0;
    for _ in 0..MAX_TCP_OPTIONS_WALKED {
        if at + 1 >= len {
            // Nothing, or a last byte of padding, is left.
            break;
        }
        let opt_len = usize::from(byte(at + 1));
        match byte(at) {
            TCP_OPTION_END => break,
            TCP_OPTION_NOP => {
                at += 1;
                continue;
            }
            _ if opt_len < 2 || at + opt_len > len => break,
            TCP_OPTION_WINDOW_SCALE if opt_len == 3 => scale = 0x100 | u32::from(byte(at + 2)),
            TCP_OPTION_MSS if opt_len == 4 => {
                mss = 0x1_0000 | u32::from(byte(at + 2)) << 8 | u32::from(byte(at + 3));
            }
            _ => {}
        }
        at += opt_len;
    }
    HandshakeOptions {
        window_scale: (scale != 0).then_some(scale as u8),
        mss: (mss != 0).then_some(mss as u16),
    }
}

/// Reads ports (TCP/UDP), the RoCEv2 opcode and a sprayed transport's connection; checks
/// ICMP headers are whole.
#[inline(always)]
fn parse_l4<P: PacketBytes + ?Sized>(
    pkt: &P,
    span: L4Span,
    meta: &mut PacketMeta,
) -> Result<(), Reason> {
    let off = span.start;
    let header_len = match meta.protocol {
        ipproto::TCP => TCP_MIN_HLEN,
        ipproto::UDP => UDP_HLEN,
        ipproto::ICMP if meta.family == Family::V4 => ICMP_HLEN,
        ipproto::ICMPV6 if meta.family == Family::V6 => ICMPV6_HLEN,
        _ => return Ok(()),
    };
    // The whole minimum header, inside the IP packet (not in Ethernet padding).
    if off + header_len > span.end {
        return Err(Reason::TruncatedL4);
    }
    if meta.protocol != ipproto::TCP && meta.protocol != ipproto::UDP {
        return Ok(());
    }
    let ports: [u8; 4] = pkt.bytes(off).ok_or(Reason::TruncatedL4)?;
    meta.src_port = be16([ports[0], ports[1]]);
    meta.dst_port = be16([ports[2], ports[3]]);
    meta.has_ports = true;
    if meta.protocol == ipproto::TCP {
        meta.tcp = Some(parse_tcp(pkt, span)?);
        return Ok(());
    }
    let payload = off + UDP_HLEN;
    match meta.dst_port {
        ROCEV2_UDP_PORT => {
            if payload + ROCE_BTH_LEN > span.end {
                return Err(Reason::TruncatedRoce);
            }
            // The whole BTH is inside the packet (checked above); the opcode and the
            // destination QP are in its first eight bytes.
            let bth: [u8; 8] = pkt.bytes(payload).ok_or(Reason::TruncatedRoce)?;
            meta.roce_opcode = Some(bth[0]);
            meta.connection = Some(roce_connection(bth));
        }
        UET_UDP_PORT => {
            meta.connection = uet_connection(pkt, payload, span.end);
            meta.spray_unkeyed = meta.connection.is_none();
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(bytes: &[u8]) -> ([u8; TCP_OPTIONS_ROOM], usize) {
        let mut room = [0u8; TCP_OPTIONS_ROOM];
        room[..bytes.len()].copy_from_slice(bytes);
        (room, bytes.len())
    }

    #[test]
    fn window_scale_of_a_linux_syn_ack() {
        // MSS, SACK-permitted, timestamps, NOP, window scale 7.
        let (o, len) = options(&[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 3, 7,
        ]);
        assert_eq!(
            tcp_handshake_options(&o, len),
            HandshakeOptions {
                window_scale: Some(7),
                mss: Some(1460)
            }
        );
    }

    #[test]
    fn window_scale_before_other_options_and_after_nops() {
        // MSS, NOP, window scale 8, NOP, NOP, SACK-permitted (as Windows sends them).
        let (o, len) = options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2]);
        assert_eq!(tcp_handshake_options(&o, len).window_scale, Some(8));
        assert_eq!(tcp_handshake_options(&o, len).mss, Some(1460));
    }

    #[test]
    fn no_window_scale_without_the_option_or_in_broken_options() {
        let (o, len) = options(&[2, 4, 0x05, 0xb4, 1, 1, 4, 2]);
        assert_eq!(
            tcp_handshake_options(&o, len).window_scale,
            None,
            "no option"
        );
        let (o, len) = options(&[0, 0, 0, 0, 1, 3, 3, 7]);
        assert_eq!(
            tcp_handshake_options(&o, len).window_scale,
            None,
            "after the end-of-options"
        );
        let (o, len) = options(&[2, 0, 0, 0, 1, 3, 3, 7]);
        assert_eq!(
            tcp_handshake_options(&o, len).window_scale,
            None,
            "an option of length 0"
        );
        let (o, _) = options(&[2, 4, 0x05, 0xb4, 1, 1, 3, 3, 7]);
        assert_eq!(
            tcp_handshake_options(&o, 8).window_scale,
            None,
            "cut by the header length"
        );
        // Window-scale bytes inside another option's data are not an option.
        let (o, len) = options(&[8, 10, 3, 3, 9, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(
            tcp_handshake_options(&o, len).window_scale,
            None,
            "inside the timestamps"
        );
    }

    #[test]
    fn mss_only_from_a_whole_option() {
        // A jumbo-frame MSS after a NOP.
        let (o, len) = options(&[1, 2, 4, 0x22, 0xf4]);
        assert_eq!(tcp_handshake_options(&o, len).mss, Some(8948));
        let (o, len) = options(&[2, 3, 0x05, 0xb4]);
        assert_eq!(tcp_handshake_options(&o, len).mss, None, "a length of 3");
        let (o, _) = options(&[2, 4, 0x05, 0xb4]);
        assert_eq!(
            tcp_handshake_options(&o, 3).mss,
            None,
            "cut by the header length"
        );
    }

    #[test]
    fn tcp_fields_and_data_end() {
        let mut f = [0u8; 14 + 20 + 32 + 5];
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 32 + 5) as u16).to_be_bytes());
        f[14 + 9] = ipproto::TCP;
        let tcp = 14 + 20;
        f[tcp + 4..tcp + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        f[tcp + 12] = 8 << 4; // 32-byte header
        f[tcp + 13] = TcpMeta::SYN | TcpMeta::ACK;
        let meta = parse(&f[..]).expect("valid");
        assert_eq!(
            meta.tcp,
            Some(TcpMeta {
                offset: tcp,
                header_len: 32,
                flags: TcpMeta::SYN | TcpMeta::ACK,
                data_end: Some(4),
            }),
            "5 bytes of data from sequence 2^32 - 1 end at 4"
        );
        assert!(meta.tcp.is_some_and(|t| t.is_syn_ack() && !t.is_pure_ack()));
        f[tcp + 12] = 15 << 4; // a header longer than the packet
        let meta = parse(&f[..]).expect("still classified");
        assert_eq!(
            meta.tcp.map(|t| (t.header_len, t.data_end)),
            Some((20, None))
        );
    }
}
