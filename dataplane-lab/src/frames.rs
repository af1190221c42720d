//! Hand-rolled frame builder and the parser corpus.
//!
//! The builder writes plain bytes, so it can produce malformed frames on purpose (wrong IHL,
//! wrong lengths, cut-short headers, too many tags). Everything it computes (IPv4 header
//! checksum, IP lengths, UDP length, extension-header next-header chain) can be overridden
//! or cut.
//!
//! Addresses are only ever taken from the benchmarking ranges 198.18.0.0/15 and the
//! documentation prefix 2001:db8::/32; the builder refuses anything else.

use dataplane_common::{
    packet::{ethertype, ipproto, Family, PacketMeta, TcpMeta},
    reason::Reason,
    spray::UET_CONNECTIONLESS,
    MAX_IPV6_EXTENSION_HEADERS, ROCEV2_UDP_PORT, ROCE_OPCODE_CNP, UET_UDP_PORT,
};

/// Destination MAC of every built frame (locally administered).
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
/// Source MAC of every built frame (locally administered).
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x02];

/// 198.18.0.1
pub const V4_SRC: [u8; 4] = [198, 18, 0, 1];
/// 198.19.255.2
pub const V4_DST: [u8; 4] = [198, 19, 255, 2];
/// 2001:db8::1
pub const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// 2001:db8:ffff::2
pub const V6_DST: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of LLDP.
pub const ETHERTYPE_LLDP: u16 = 0x88cc;
/// IPv6 "no next header".
pub const IPPROTO_NONE: u8 = 59;

const ETH_HLEN: usize = 14;
/// Sequence number of every TCP header the builder writes.
pub const TCP_SEQUENCE: u32 = 0x0102_0304;
const VLAN_HLEN: usize = 4;
/// Destination QP of every BTH the builder writes unless told otherwise ([`Frame::roce_qp`]).
pub const ROCE_QP: u32 = 0x00_1234;

/// UET PDS types (UEC 1.0.1, as Wireshark's UET dissector numbers them).
pub mod uet {
    /// RUD request.
    pub const RUD_REQ: u8 = 2;
    /// ROD request.
    pub const ROD_REQ: u8 = 3;
    /// RUDI request (connectionless).
    pub const RUDI_REQ: u8 = 4;
    /// UUD request (connectionless).
    pub const UUD_REQ: u8 = 6;
    /// ACK.
    pub const ACK: u8 = 7;
    /// NACK.
    pub const NACK: u8 = 10;
    /// Control.
    pub const CTRL: u8 = 11;
    /// The SYN flag of requests and control packets (a new PDC).
    pub const SYN: u8 = 0x04;
}

/// A UET PDS header of PDS type `kind` with `flags`, source PDC id `spdcid` and destination
/// PDC id `dpdcid` (with SYN, those bytes are the PDC mode and PSN offset): the 12 bytes every
/// type with a PDC lays out alike (RUDI and UUD read only their first 8 or 4).
pub fn uet_pds(kind: u8, flags: u8, spdcid: u16, dpdcid: u16) -> [u8; 12] {
    let prologue = u16::from(kind) << 11 | u16::from(flags & 0x7f);
    let (p, s, d) = (
        prologue.to_be_bytes(),
        spdcid.to_be_bytes(),
        dpdcid.to_be_bytes(),
    );
    [p[0], p[1], 0, 0, 0, 0, 0, 7, s[0], s[1], d[0], d[1]]
}

/// A UET transport security (TSS) header, with the SSI word when `sp`.
pub fn uet_tss(sp: bool) -> Vec<u8> {
    let mut h = vec![1 << 3 | if sp { 0x04 } else { 0 }, 0, 0, 1];
    if sp {
        h.extend_from_slice(&[0, 0, 0, 9]);
    }
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    h
}

/// Whether `a` is in 198.18.0.0/15.
pub fn is_test_v4(a: [u8; 4]) -> bool {
    a[0] == 198 && a[1] & 0xfe == 18
}

/// Whether `a` is in 2001:db8::/32.
pub fn is_test_v6(a: [u8; 16]) -> bool {
    a[..4] == [0x20, 0x01, 0x0d, 0xb8]
}

/// An IPv4 address as [`PacketMeta`] lays it out (first four bytes, rest zero).
pub fn v4_in_meta(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

#[derive(Clone, Debug)]
struct V4 {
    src: [u8; 4],
    dst: [u8; 4],
    version: u8,
    ihl: Option<u8>,
    options: Vec<u8>,
    tos: u8,
    ttl: u8,
    dont_fragment: bool,
    frag_offset: u16,
    more_fragments: bool,
    total_len: Option<u16>,
    checksum: Option<u16>,
}

#[derive(Clone, Debug)]
struct V6 {
    src: [u8; 16],
    dst: [u8; 16],
    version: u8,
    traffic_class: u8,
    flow_label: u32,
    hop_limit: u8,
    payload_len: Option<u16>,
}

#[derive(Clone, Debug)]
enum L3 {
    None,
    V4(V4),
    V6(V6),
}

#[derive(Clone, Copy, Debug)]
enum Ext {
    /// Hop-by-hop, routing or destination options: `(hdr_ext_len + 1) * 8` bytes.
    Generic { kind: u8, hdr_ext_len: u8 },
    /// Fragment header (8 bytes); `offset` in 8-byte units.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn kind(self) -> u8 {
        match self {
            Ext::Generic { kind, .. } => kind,
            Ext::Fragment { .. } => ipproto::FRAGMENT,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    None,
    Tcp(u16, u16),
    Udp(u16, u16),
    Icmp,
    Icmpv6,
}

/// Frame builder. Start with [`Frame::eth`], add layers outermost first, finish with
/// [`Frame::build`].
#[derive(Clone, Debug)]
pub struct Frame {
    tags: Vec<(u16, u16)>,
    ethertype: Option<u16>,
    l3: L3,
    exts: Vec<Ext>,
    l4: L4,
    protocol: Option<u8>,
    roce_opcode: Option<u8>,
    roce_qp: u32,
    transport: Vec<u8>,
    body: Vec<u8>,
    payload: usize,
    l4_truncate: Option<usize>,
    pad_to: Option<usize>,
    truncate: Option<usize>,
}

impl Frame {
    /// An Ethernet II header with [`DST_MAC`] and [`SRC_MAC`]; nothing above it yet.
    pub fn eth() -> Frame {
        Frame {
            tags: Vec::new(),
            ethertype: None,
            l3: L3::None,
            exts: Vec::new(),
            l4: L4::None,
            protocol: None,
            roce_opcode: None,
            roce_qp: ROCE_QP,
            transport: Vec::new(),
            body: Vec::new(),
            payload: 0,
            l4_truncate: None,
            pad_to: None,
            truncate: None,
        }
    }

    /// Adds a VLAN tag with this TPID (0x8100 or 0x88a8, or anything else for tests) and VID.
    /// Tags are written outermost first, in call order.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        self.tags.push((tpid, vid & 0x0fff));
        self
    }

    /// Adds an 802.1ad service tag (TPID 0x88a8).
    pub fn qinq(self, vid: u16) -> Frame {
        self.vlan(ethertype::QINQ, vid)
    }

    /// Overrides the EtherType after the last tag (default: from the L3 layer).
    pub fn ethertype(mut self, ethertype: u16) -> Frame {
        self.ethertype = Some(ethertype);
        self
    }

    /// An ARP request (198.18.0.1 asks for 198.19.255.2) instead of an IP packet.
    pub fn arp() -> Frame {
        let mut body = vec![0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01];
        body.extend_from_slice(&SRC_MAC);
        body.extend_from_slice(&V4_SRC);
        body.extend_from_slice(&[0; 6]);
        body.extend_from_slice(&V4_DST);
        let mut f = Frame::eth().ethertype(ETHERTYPE_ARP);
        f.body = body;
        f
    }

    /// Offset of the L3 header in the built frame.
    pub fn l3_offset(&self) -> usize {
        ETH_HLEN + VLAN_HLEN * self.tags.len()
    }

    // ---- IPv4 ----

    /// An IPv4 header (IHL 5, TTL 64, DF clear, no fragmentation).
    pub fn ipv4(mut self, src: [u8; 4], dst: [u8; 4]) -> Frame {
        assert!(
            is_test_v4(src) && is_test_v4(dst),
            "addresses must be in 198.18.0.0/15"
        );
        self.l3 = L3::V4(V4 {
            src,
            dst,
            version: 4,
            ihl: None,
            options: Vec::new(),
            tos: 0,
            ttl: 64,
            dont_fragment: false,
            frag_offset: 0,
            more_fragments: false,
            total_len: None,
            checksum: None,
        });
        self
    }

    fn v4(&mut self) -> &mut V4 {
        match &mut self.l3 {
            L3::V4(v4) => v4,
            _ => panic!("call .ipv4() first"),
        }
    }

    fn v6(&mut self) -> &mut V6 {
        match &mut self.l3 {
            L3::V6(v6) => v6,
            _ => panic!("call .ipv6() first"),
        }
    }

    /// IPv4 option bytes; padded with zeros (End of Option List) to a multiple of four. The
    /// IHL follows unless overridden with [`Frame::ihl`].
    pub fn ipv4_options(mut self, options: &[u8]) -> Frame {
        let v4 = self.v4();
        v4.options = options.to_vec();
        while !v4.options.len().is_multiple_of(4) {
            v4.options.push(0);
        }
        self
    }

    /// Writes this IHL value whatever the header really holds.
    pub fn ihl(mut self, ihl: u8) -> Frame {
        self.v4().ihl = Some(ihl & 0x0f);
        self
    }

    /// Writes this IP version nibble (IPv4 or IPv6 header).
    pub fn ip_version(mut self, version: u8) -> Frame {
        match &mut self.l3 {
            L3::V4(v4) => v4.version = version,
            L3::V6(v6) => v6.version = version,
            L3::None => panic!("call .ipv4() or .ipv6() first"),
        }
        self
    }

    /// The DS field (IPv4 TOS byte or IPv6 traffic class): DSCP << 2 | ECN.
    pub fn tos(mut self, tos: u8) -> Frame {
        match &mut self.l3 {
            L3::V4(v4) => v4.tos = tos,
            L3::V6(v6) => v6.traffic_class = tos,
            L3::None => panic!("call .ipv4() or .ipv6() first"),
        }
        self
    }

    /// TTL (IPv4) or hop limit (IPv6).
    pub fn ttl(mut self, ttl: u8) -> Frame {
        match &mut self.l3 {
            L3::V4(v4) => v4.ttl = ttl,
            L3::V6(v6) => v6.hop_limit = ttl,
            L3::None => panic!("call .ipv4() or .ipv6() first"),
        }
        self
    }

    /// Sets the IPv4 DF flag.
    pub fn dont_fragment(mut self) -> Frame {
        self.v4().dont_fragment = true;
        self
    }

    /// IPv4 fragment offset (8-byte units) and MF flag.
    pub fn fragment(mut self, offset: u16, more: bool) -> Frame {
        let v4 = self.v4();
        v4.frag_offset = offset & 0x1fff;
        v4.more_fragments = more;
        self
    }

    /// Writes this IPv4 total length instead of the real one.
    pub fn total_len_override(mut self, total_len: u16) -> Frame {
        self.v4().total_len = Some(total_len);
        self
    }

    /// Writes this IPv4 header checksum instead of the RFC 1071 one.
    pub fn checksum_override(mut self, checksum: u16) -> Frame {
        self.v4().checksum = Some(checksum);
        self
    }

    // ---- IPv6 ----

    /// An IPv6 header (traffic class 0, flow label 0, hop limit 64).
    pub fn ipv6(mut self, src: [u8; 16], dst: [u8; 16]) -> Frame {
        assert!(
            is_test_v6(src) && is_test_v6(dst),
            "addresses must be in 2001:db8::/32"
        );
        self.l3 = L3::V6(V6 {
            src,
            dst,
            version: 6,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            payload_len: None,
        });
        self
    }

    /// IPv6 traffic class (same as [`Frame::tos`]).
    pub fn traffic_class(self, traffic_class: u8) -> Frame {
        self.tos(traffic_class)
    }

    /// IPv6 flow label (20 bits).
    pub fn flow_label(mut self, flow_label: u32) -> Frame {
        self.v6().flow_label = flow_label & 0xf_ffff;
        self
    }

    /// Writes this IPv6 payload length instead of the real one.
    pub fn payload_len_override(mut self, payload_len: u16) -> Frame {
        self.v6().payload_len = Some(payload_len);
        self
    }

    /// Appends an options-style extension header of this type and Hdr Ext Len (the header is
    /// `(hdr_ext_len + 1) * 8` bytes, filled with PadN).
    pub fn ext(mut self, kind: u8, hdr_ext_len: u8) -> Frame {
        self.v6();
        self.exts.push(Ext::Generic { kind, hdr_ext_len });
        self
    }

    /// Appends an 8-byte hop-by-hop options header.
    pub fn ext_hop_by_hop(self) -> Frame {
        self.ext(ipproto::HOPOPTS, 0)
    }

    /// Appends an 8-byte routing header (type 253, experimental, segments left 0).
    pub fn ext_routing(self) -> Frame {
        self.ext(ipproto::ROUTING, 0)
    }

    /// Appends an 8-byte destination options header.
    pub fn ext_dest_opts(self) -> Frame {
        self.ext(ipproto::DSTOPTS, 0)
    }

    /// Appends a fragment header with this offset (8-byte units) and M flag.
    pub fn ext_fragment(mut self, offset: u16, more: bool) -> Frame {
        self.v6();
        self.exts.push(Ext::Fragment {
            offset: offset & 0x1fff,
            more,
        });
        self
    }

    // ---- L4 ----

    /// A 20-byte TCP header (ACK, checksum 0).
    pub fn tcp(mut self, sport: u16, dport: u16) -> Frame {
        self.l4 = L4::Tcp(sport, dport);
        self
    }

    /// An 8-byte UDP header (length computed, checksum 0).
    pub fn udp(mut self, sport: u16, dport: u16) -> Frame {
        self.l4 = L4::Udp(sport, dport);
        self
    }

    /// An 8-byte ICMP echo request header.
    pub fn icmp(mut self) -> Frame {
        self.l4 = L4::Icmp;
        self
    }

    /// An 8-byte ICMPv6 echo request header.
    pub fn icmpv6(mut self) -> Frame {
        self.l4 = L4::Icmpv6;
        self
    }

    /// Writes this IP protocol / last next-header value instead of the L4 layer's (default
    /// with no L4 layer: 59, "no next header").
    pub fn protocol(mut self, protocol: u8) -> Frame {
        self.protocol = Some(protocol);
        self
    }

    /// A 12-byte RoCEv2 base transport header with this opcode after the UDP header.
    pub fn roce_bth(mut self, opcode: u8) -> Frame {
        self.roce_opcode = Some(opcode);
        self
    }

    /// The BTH's destination QP ([`ROCE_QP`] unless set).
    pub fn roce_qp(mut self, qp: u32) -> Frame {
        self.roce_qp = qp;
        self
    }

    /// These transport header bytes after the L4 header (and the BTH), before the payload:
    /// a UET TSS or PDS header, say ([`uet_pds`], [`uet_tss`]).
    pub fn transport(mut self, bytes: &[u8]) -> Frame {
        self.transport.extend_from_slice(bytes);
        self
    }

    /// What the parser should report of this frame's TCP header: where the builder put it,
    /// its 20 bytes with the ACK flag, and data ending at the sequence number plus the payload.
    fn tcp_meta(&self, expect: &ExpectedMeta) -> Option<TcpMeta> {
        let whole = self.l4_truncate.is_none() && !expect.later_fragment;
        (matches!(self.l4, L4::Tcp(..)) && whole).then(|| TcpMeta {
            offset: self.build_with_l4_offset().1,
            header_len: 20,
            flags: TcpMeta::ACK,
            data_end: (self.payload > 0).then(|| TCP_SEQUENCE.wrapping_add(self.payload as u32)),
        })
    }

    /// `n` bytes of payload after the L4 header (or after the Ethernet header when there is
    /// no L3 layer).
    pub fn payload(mut self, n: usize) -> Frame {
        self.payload = n;
        self
    }

    /// Keeps only the first `n` bytes of the L4 header + payload, then computes the IP
    /// lengths from what is left: a consistent packet whose L4 header is cut short.
    pub fn l4_truncate(mut self, n: usize) -> Frame {
        self.l4_truncate = Some(n);
        self
    }

    /// Ethernet padding: appends zeros after the packet until the frame is `n` bytes long
    /// (IP lengths do not count them).
    pub fn pad_to(mut self, n: usize) -> Frame {
        self.pad_to = Some(n);
        self
    }

    /// Cuts the finished frame to `len` bytes (after all lengths were computed).
    pub fn truncate(mut self, len: usize) -> Frame {
        self.truncate = Some(len);
        self
    }

    /// The frame bytes.
    pub fn build(&self) -> Vec<u8> {
        self.build_with_l4_offset().0
    }

    /// The frame bytes and where its L4 header starts.
    fn build_with_l4_offset(&self) -> (Vec<u8>, usize) {
        let (l4_bytes, l4_protocol) = self.build_l4();
        let protocol = self.protocol.unwrap_or(l4_protocol);

        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        let l3_ethertype = match &self.l3 {
            L3::None => ETHERTYPE_LLDP,
            L3::V4(_) => ethertype::IPV4,
            L3::V6(_) => ethertype::IPV6,
        };
        for &(tpid, vid) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&self.ethertype.unwrap_or(l3_ethertype).to_be_bytes());
        match &self.l3 {
            L3::None => {}
            L3::V4(v4) => {
                f.extend_from_slice(&build_ipv4(v4, protocol, l4_bytes.len()));
            }
            L3::V6(v6) => {
                let exts = build_ipv6_exts(&self.exts, protocol);
                let first_next = self.exts.first().map_or(protocol, |e| e.kind());
                f.extend_from_slice(&build_ipv6(v6, first_next, exts.len() + l4_bytes.len()));
                f.extend_from_slice(&exts);
            }
        }
        let l4_offset = f.len();
        if matches!(self.l3, L3::None) {
            f.extend_from_slice(&self.body);
        }
        f.extend_from_slice(&l4_bytes);
        if let Some(n) = self.pad_to {
            if f.len() < n {
                f.resize(n, 0);
            }
        }
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        (f, l4_offset)
    }

    /// L4 header + BTH + payload (after `l4_truncate`), and the protocol number of the L4 layer.
    fn build_l4(&self) -> (Vec<u8>, u8) {
        let mut b = Vec::new();
        let protocol = match self.l4 {
            L4::None => IPPROTO_NONE,
            L4::Tcp(sport, dport) => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&TCP_SEQUENCE.to_be_bytes());
                b.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes()); // acknowledgment
                b.push(5 << 4); // data offset 5, reserved
                b.push(0x10); // ACK
                b.extend_from_slice(&0xfaf0u16.to_be_bytes()); // window
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                ipproto::TCP
            }
            L4::Udp(sport, dport) => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // length (below), checksum
                ipproto::UDP
            }
            L4::Icmp => {
                b.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0x00, 0x01]);
                ipproto::ICMP
            }
            L4::Icmpv6 => {
                b.extend_from_slice(&[128, 0, 0, 0, 0x12, 0x34, 0x00, 0x01]);
                ipproto::ICMPV6
            }
        };
        if let Some(opcode) = self.roce_opcode {
            b.push(opcode);
            b.push(0x40); // migration state set, pad count 0, transport version 0
            b.extend_from_slice(&0xffffu16.to_be_bytes()); // default P_Key
            let qp = self.roce_qp.to_be_bytes();
            b.extend_from_slice(&[0, qp[1], qp[2], qp[3]]); // reserved, destination QP
            b.extend_from_slice(&[0x80, 0x00, 0x00, 0x2a]); // ack request, PSN
        }
        b.extend_from_slice(&self.transport);
        b.extend((0..self.payload).map(|i| (i % 251) as u8));
        if let L4::Udp(..) = self.l4 {
            let len = u16::try_from(b.len()).expect("UDP datagram too long");
            b[4..6].copy_from_slice(&len.to_be_bytes());
        }
        if let Some(n) = self.l4_truncate {
            b.truncate(n);
        }
        (b, protocol)
    }
}

fn build_ipv4(v4: &V4, protocol: u8, l4_len: usize) -> Vec<u8> {
    let header_len = 20 + v4.options.len();
    let ihl = v4.ihl.unwrap_or((header_len / 4) as u8);
    let total_len = v4
        .total_len
        .unwrap_or_else(|| u16::try_from(header_len + l4_len).expect("IPv4 packet too long"));
    let mut flags_frag = v4.frag_offset;
    if v4.dont_fragment {
        flags_frag |= 0x4000;
    }
    if v4.more_fragments {
        flags_frag |= 0x2000;
    }
    let mut h = Vec::with_capacity(header_len);
    h.push((v4.version << 4) | ihl);
    h.push(v4.tos);
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&0x1c46u16.to_be_bytes()); // identification
    h.extend_from_slice(&flags_frag.to_be_bytes());
    h.push(v4.ttl);
    h.push(protocol);
    h.extend_from_slice(&[0, 0]); // checksum (below)
    h.extend_from_slice(&v4.src);
    h.extend_from_slice(&v4.dst);
    h.extend_from_slice(&v4.options);
    let checksum = v4.checksum.unwrap_or_else(|| rfc1071_checksum(&h));
    h[10..12].copy_from_slice(&checksum.to_be_bytes());
    h
}

fn build_ipv6(v6: &V6, next_header: u8, payload_len: usize) -> Vec<u8> {
    let payload_len = v6
        .payload_len
        .unwrap_or_else(|| u16::try_from(payload_len).expect("IPv6 payload too long"));
    let word = (u32::from(v6.version) << 28)
        | (u32::from(v6.traffic_class) << 20)
        | (v6.flow_label & 0xf_ffff);
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&word.to_be_bytes());
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.push(next_header);
    h.push(v6.hop_limit);
    h.extend_from_slice(&v6.src);
    h.extend_from_slice(&v6.dst);
    h
}

fn build_ipv6_exts(exts: &[Ext], protocol: u8) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(protocol, |e| e.kind());
        match *ext {
            Ext::Generic { kind, hdr_ext_len } => {
                let len = (usize::from(hdr_ext_len) + 1) * 8;
                let start = b.len();
                b.push(next);
                b.push(hdr_ext_len);
                if kind == ipproto::ROUTING {
                    b.extend_from_slice(&[253, 0]); // routing type (experimental), segments left
                }
                // Fill the rest with PadN options (at most 255 bytes of data each).
                while b.len() - start < len {
                    let left = len - (b.len() - start);
                    if left == 1 {
                        b.push(0); // Pad1
                    } else {
                        let data = (left - 2).min(255);
                        b.push(1);
                        b.push(data as u8);
                        b.extend(std::iter::repeat_n(0, data));
                    }
                }
            }
            Ext::Fragment { offset, more } => {
                b.push(next);
                b.push(0);
                b.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                b.extend_from_slice(&0xdead_beefu32.to_be_bytes()); // identification
            }
        }
    }
    b
}

/// RFC 1071 checksum of `bytes` (the checksum field must be zero).
fn rfc1071_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u32::from);
        sum += hi | lo;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether the IPv4 header at `l3_offset` carries a correct header checksum: the one's
/// complement sum of all its 16-bit words (checksum field included) must be 0xffff. False
/// when the header is cut short or its IHL is below 5.
pub fn ipv4_header_checksum_ok(frame: &[u8], l3_offset: usize) -> bool {
    let Some(&first) = frame.get(l3_offset) else {
        return false;
    };
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return false;
    }
    let Some(header) = frame.get(l3_offset..l3_offset + header_len) else {
        return false;
    };
    let mut sum: u64 = header
        .chunks_exact(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// The DS field (DSCP << 2 | ECN) of the IP header at `l3_offset`.
/// Panics when the first two bytes of that header are not in `frame`.
pub fn tos_of(frame: &[u8], l3_offset: usize, is_v6: bool) -> u8 {
    if is_v6 {
        ((frame[l3_offset] & 0x0f) << 4) | (frame[l3_offset + 1] >> 4)
    } else {
        frame[l3_offset + 1]
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------------------------

/// The fields of a successful parse worth checking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedMeta {
    /// IP version.
    pub family: Family,
    /// Upper-layer protocol.
    pub protocol: u8,
    /// DS field.
    pub tos: u8,
    /// Source address laid out like [`PacketMeta::src`].
    pub src: [u8; 16],
    /// Destination address laid out like [`PacketMeta::dst`].
    pub dst: [u8; 16],
    /// `(src_port, dst_port)` when the parser should report ports.
    pub ports: Option<(u16, u16)>,
    /// A non-first fragment.
    pub later_fragment: bool,
    /// RoCEv2 BTH opcode.
    pub roce_opcode: Option<u8>,
    /// A sprayed transport's connection (RoCEv2 QP, UET source PDC id).
    pub connection: Option<u32>,
    /// A UET packet whose header is cut short: keyed on its 5-tuple.
    pub spray_unkeyed: bool,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// TCP's fields, for a whole TCP header.
    pub tcp: Option<TcpMeta>,
}

impl ExpectedMeta {
    /// An untagged IPv4 packet, DS field 0, no ports.
    pub fn v4(src: [u8; 4], dst: [u8; 4], protocol: u8) -> ExpectedMeta {
        ExpectedMeta {
            family: Family::V4,
            protocol,
            tos: 0,
            src: v4_in_meta(src),
            dst: v4_in_meta(dst),
            ports: None,
            later_fragment: false,
            roce_opcode: None,
            connection: None,
            spray_unkeyed: false,
            l3_offset: ETH_HLEN,
            tcp: None,
        }
    }

    /// An untagged IPv6 packet, traffic class 0, no ports.
    pub fn v6(src: [u8; 16], dst: [u8; 16], protocol: u8) -> ExpectedMeta {
        ExpectedMeta {
            family: Family::V6,
            src,
            dst,
            ..ExpectedMeta::v4(V4_SRC, V4_DST, protocol)
        }
    }

    /// With these ports.
    pub fn ports(mut self, src_port: u16, dst_port: u16) -> ExpectedMeta {
        self.ports = Some((src_port, dst_port));
        self
    }

    /// With this DS field.
    pub fn tos(mut self, tos: u8) -> ExpectedMeta {
        self.tos = tos;
        self
    }

    /// With the IP header at this offset.
    pub fn l3_offset(mut self, l3_offset: usize) -> ExpectedMeta {
        self.l3_offset = l3_offset;
        self
    }

    /// A non-first fragment.
    pub fn later_fragment(mut self) -> ExpectedMeta {
        self.later_fragment = true;
        self
    }

    /// With this RoCEv2 opcode, to the builder's QP ([`ROCE_QP`]).
    pub fn roce(mut self, opcode: u8) -> ExpectedMeta {
        self.roce_opcode = Some(opcode);
        self.connection = Some(ROCE_QP);
        self
    }

    /// Keyed on this connection (a RoCEv2 QP, a UET source PDC id).
    pub fn connection(mut self, connection: u32) -> ExpectedMeta {
        self.connection = Some(connection);
        self
    }

    /// A UET packet keyed on its 5-tuple (its header cut short or of a reserved type).
    pub fn spray_unkeyed(mut self) -> ExpectedMeta {
        self.spray_unkeyed = true;
        self
    }

    /// The exact [`PacketMeta`] the parser should return (ports 0 when absent).
    pub fn to_meta(&self) -> PacketMeta {
        let (src_port, dst_port) = self.ports.unwrap_or((0, 0));
        PacketMeta {
            l3_offset: self.l3_offset,
            family: self.family,
            protocol: self.protocol,
            tos: self.tos,
            src: self.src,
            dst: self.dst,
            src_port,
            dst_port,
            has_ports: self.ports.is_some(),
            later_fragment: self.later_fragment,
            roce_opcode: self.roce_opcode,
            connection: self.connection,
            spray_unkeyed: self.spray_unkeyed,
            tcp: self.tcp,
        }
    }
}

/// What parsing a corpus frame should give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `Ok` with exactly these fields.
    Parsed(ExpectedMeta),
    /// `Err` with this reason.
    Rejected(Reason),
}

/// One corpus frame.
#[derive(Clone, Debug)]
pub struct Case {
    /// Unique name.
    pub name: &'static str,
    /// The frame bytes.
    pub frame: Vec<u8>,
    /// The parse outcome.
    pub expect: Expect,
}

fn ok(name: &'static str, frame: Frame, expect: ExpectedMeta) -> Case {
    let tcp = frame.tcp_meta(&expect);
    Case {
        name,
        frame: frame.build(),
        expect: Expect::Parsed(ExpectedMeta { tcp, ..expect }),
    }
}

fn bad(name: &'static str, frame: Frame, reason: Reason) -> Case {
    Case {
        name,
        frame: frame.build(),
        expect: Expect::Rejected(reason),
    }
}

fn v4() -> Frame {
    Frame::eth().ipv4(V4_SRC, V4_DST)
}

fn v6() -> Frame {
    Frame::eth().ipv6(V6_SRC, V6_DST)
}

fn e4(protocol: u8) -> ExpectedMeta {
    ExpectedMeta::v4(V4_SRC, V4_DST, protocol)
}

fn e6(protocol: u8) -> ExpectedMeta {
    ExpectedMeta::v6(V6_SRC, V6_DST, protocol)
}

/// RC SEND Only.
pub const ROCE_RC_SEND_ONLY: u8 = 0x04;
/// RC RDMA WRITE Only.
pub const ROCE_RC_RDMA_WRITE_ONLY: u8 = 0x0a;

const TCP: u8 = ipproto::TCP;
const UDP: u8 = ipproto::UDP;
const ICMP: u8 = ipproto::ICMP;
const ICMPV6: u8 = ipproto::ICMPV6;
const ROCE: u16 = ROCEV2_UDP_PORT;
const UET: u16 = UET_UDP_PORT;
const CNP: u8 = ROCE_OPCODE_CNP;
const DSCP_EF: u8 = 46;
const DSCP_AF41: u8 = 34;
const ECT0: u8 = 0b10;
const ECT1: u8 = 0b01;
const CE: u8 = 0b11;

/// The parser corpus: well-formed, odd-but-valid and malformed frames with their expected
/// outcome.
pub fn corpus() -> Vec<Case> {
    use Reason::*;
    let max_ext = MAX_IPV6_EXTENSION_HEADERS;
    let mut chain_at_bound = v6();
    let mut chain_beyond_bound = v6();
    for i in 0..max_ext {
        let kind = if i % 2 == 0 {
            ipproto::DSTOPTS
        } else {
            ipproto::ROUTING
        };
        chain_at_bound = chain_at_bound.ext(kind, 0);
        chain_beyond_bound = chain_beyond_bound.ext(kind, 0);
    }
    chain_beyond_bound = chain_beyond_bound.ext_dest_opts();

    vec![
        // ---- plain IPv4 ----
        ok(
            "ipv4_tcp",
            v4().tcp(40000, 443).payload(32),
            e4(TCP).ports(40000, 443),
        ),
        ok(
            "ipv4_udp",
            v4().udp(5353, 53).payload(20),
            e4(UDP).ports(5353, 53),
        ),
        ok("ipv4_icmp", v4().icmp().payload(56), e4(ICMP)),
        ok("ipv4_gre_no_ports", v4().protocol(47).payload(24), e4(47)),
        ok(
            "ipv4_tcp_df_set",
            v4().dont_fragment().tcp(1, 2),
            e4(TCP).ports(1, 2),
        ),
        ok(
            "ipv4_ttl_1",
            v4().ttl(1).udp(1000, 2000),
            e4(UDP).ports(1000, 2000),
        ),
        // ---- IPv4 options ----
        ok(
            "ipv4_ihl6_router_alert_udp",
            v4().ipv4_options(&[0x94, 0x04, 0, 0]).udp(1234, 5678),
            e4(UDP).ports(1234, 5678),
        ),
        ok(
            "ipv4_ihl10_nops_tcp",
            v4().ipv4_options(&[1; 20]).tcp(2222, 22),
            e4(TCP).ports(2222, 22),
        ),
        ok(
            "ipv4_ihl15_max_options_tcp",
            v4().ipv4_options(&[1; 40]).tcp(3333, 80).payload(10),
            e4(TCP).ports(3333, 80),
        ),
        ok(
            "ipv4_ihl8_icmp",
            v4().ipv4_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0])
                .icmp(),
            e4(ICMP),
        ),
        bad("ipv4_ihl4", v4().ihl(4).tcp(1, 2), BadIpv4Header),
        bad("ipv4_ihl0", v4().ihl(0).udp(1, 2), BadIpv4Header),
        bad(
            "ipv4_version6_header",
            v4().ip_version(6).tcp(1, 2),
            BadIpv4Header,
        ),
        bad(
            "ipv4_version0_header",
            v4().ip_version(0).udp(1, 2),
            BadIpv4Header,
        ),
        bad(
            "ipv6_header_under_ipv4_ethertype",
            v6().ethertype(ethertype::IPV4).udp(1, 2),
            BadIpv4Header,
        ),
        bad(
            "ipv4_ihl15_header_beyond_frame",
            v4().ihl(15).udp(1, 2),
            TruncatedIpv4,
        ),
        bad(
            "ipv4_total_len_beyond_frame",
            v4().tcp(1, 2).total_len_override(41),
            BadIpLength,
        ),
        bad(
            "ipv4_total_len_below_ihl",
            v4().tcp(1, 2).total_len_override(19),
            BadIpLength,
        ),
        bad(
            "ipv4_total_len_below_options",
            v4().ipv4_options(&[1; 8]).udp(1, 2).total_len_override(24),
            BadIpLength,
        ),
        bad(
            "ipv4_total_len_zero",
            v4().udp(1, 2).total_len_override(0),
            BadIpLength,
        ),
        // ---- IPv4 fragments ----
        ok(
            "ipv4_first_fragment_mf",
            v4().fragment(0, true).tcp(50000, 8080).payload(64),
            e4(TCP).ports(50000, 8080),
        ),
        ok(
            "ipv4_middle_fragment_mf",
            v4().fragment(9, true).udp(7, 7).payload(64),
            e4(UDP).later_fragment(),
        ),
        ok(
            "ipv4_last_fragment",
            v4().fragment(185, false).tcp(9, 9).payload(16),
            e4(TCP).later_fragment(),
        ),
        ok(
            "ipv4_later_fragment_shorter_than_tcp_header",
            v4().fragment(3, false).protocol(TCP).payload(8),
            e4(TCP).later_fragment(),
        ),
        ok(
            "ipv4_later_fragment_max_offset",
            v4().fragment(0x1fff, false).protocol(UDP).payload(4),
            e4(UDP).later_fragment(),
        ),
        // ---- VLAN ----
        ok(
            "vlan_8021q_ipv4_tcp",
            v4().vlan(ethertype::VLAN, 100).tcp(40001, 443),
            e4(TCP).ports(40001, 443).l3_offset(18),
        ),
        ok(
            "qinq_8021ad_8021q_ipv4_udp",
            v4().qinq(200).vlan(ethertype::VLAN, 100).udp(4000, 4001),
            e4(UDP).ports(4000, 4001).l3_offset(22),
        ),
        ok(
            "vlan_8021q_8021q_ipv4_icmp",
            v4().vlan(ethertype::VLAN, 1)
                .vlan(ethertype::VLAN, 2)
                .icmp(),
            e4(ICMP).l3_offset(22),
        ),
        ok(
            "vlan_8021q_ipv6_udp",
            v6().vlan(ethertype::VLAN, 4094).udp(10, 20),
            e6(UDP).ports(10, 20).l3_offset(18),
        ),
        ok(
            "qinq_ipv6_tcp",
            v6().qinq(300).vlan(ethertype::VLAN, 301).tcp(11, 21),
            e6(TCP).ports(11, 21).l3_offset(22),
        ),
        bad(
            "vlan_three_tags",
            v4().qinq(1)
                .vlan(ethertype::VLAN, 2)
                .vlan(ethertype::VLAN, 3)
                .tcp(1, 2),
            TooManyVlanTags,
        ),
        bad(
            "vlan_three_tags_truncated_after_second",
            v4().qinq(1)
                .vlan(ethertype::VLAN, 2)
                .vlan(ethertype::VLAN, 3)
                .truncate(22),
            TooManyVlanTags,
        ),
        bad("vlan_arp", Frame::arp().vlan(ethertype::VLAN, 5), NotIp),
        // ---- IPv6 ----
        ok(
            "ipv6_tcp",
            v6().tcp(40000, 443).payload(100),
            e6(TCP).ports(40000, 443),
        ),
        ok(
            "ipv6_udp",
            v6().udp(546, 547).payload(30),
            e6(UDP).ports(546, 547),
        ),
        ok("ipv6_icmpv6", v6().icmpv6().payload(56), e6(ICMPV6)),
        ok("ipv6_no_next_header", v6(), e6(IPPROTO_NONE)),
        ok(
            "ipv6_hop_by_hop_udp",
            v6().ext_hop_by_hop().udp(100, 200),
            e6(UDP).ports(100, 200),
        ),
        ok(
            "ipv6_routing_tcp",
            v6().ext_routing().tcp(101, 201),
            e6(TCP).ports(101, 201),
        ),
        ok(
            "ipv6_dest_opts_icmpv6",
            v6().ext_dest_opts().icmpv6(),
            e6(ICMPV6),
        ),
        ok(
            "ipv6_long_hop_by_hop_tcp",
            v6().ext(ipproto::HOPOPTS, 2).tcp(102, 202),
            e6(TCP).ports(102, 202),
        ),
        ok(
            "ipv6_long_dest_opts_then_routing_udp",
            v6().ext(ipproto::DSTOPTS, 5)
                .ext(ipproto::ROUTING, 1)
                .udp(103, 203),
            e6(UDP).ports(103, 203),
        ),
        ok(
            "ipv6_first_fragment_tcp",
            v6().ext_fragment(0, true).tcp(104, 204).payload(64),
            e6(TCP).ports(104, 204),
        ),
        ok(
            "ipv6_atomic_fragment_udp",
            v6().ext_fragment(0, false).udp(105, 205),
            e6(UDP).ports(105, 205),
        ),
        ok(
            "ipv6_later_fragment_udp",
            v6().ext_fragment(100, false).udp(106, 206).payload(8),
            e6(UDP).later_fragment(),
        ),
        ok(
            "ipv6_later_fragment_shorter_than_tcp_header",
            v6().ext_fragment(7, true).protocol(TCP).payload(8),
            e6(TCP).later_fragment(),
        ),
        ok(
            "ipv6_chain_hbh_dst_rt_frag_dst_tcp",
            v6().ext_hop_by_hop()
                .ext_dest_opts()
                .ext_routing()
                .ext_fragment(0, true)
                .ext_dest_opts()
                .tcp(107, 207),
            e6(TCP).ports(107, 207),
        ),
        ok(
            "ipv6_chain_hbh_rt_later_fragment",
            v6().ext_hop_by_hop()
                .ext_routing()
                .ext_fragment(50, false)
                .protocol(UDP)
                .payload(16),
            e6(UDP).later_fragment(),
        ),
        ok(
            "ipv6_chain_at_bound_udp",
            chain_at_bound.udp(108, 208),
            e6(UDP).ports(108, 208),
        ),
        bad(
            "ipv6_chain_beyond_bound_udp",
            chain_beyond_bound.udp(109, 209),
            BadIpv6ExtensionChain,
        ),
        bad(
            "ipv6_hop_by_hop_cut_short_before_tcp",
            v6().ext_hop_by_hop()
                .tcp(1, 2)
                .l4_truncate(0)
                .truncate(14 + 40 + 4)
                .payload_len_override(4),
            BadIpv6ExtensionChain,
        ),
        bad(
            "ipv6_dest_opts_cut_short_no_next_header",
            v6().ext(ipproto::DSTOPTS, 1)
                .truncate(14 + 40 + 8)
                .payload_len_override(8),
            BadIpv6ExtensionChain,
        ),
        bad(
            "ipv6_routing_cut_to_one_byte",
            v6().ext_routing()
                .truncate(14 + 40 + 1)
                .payload_len_override(1),
            BadIpv6ExtensionChain,
        ),
        bad(
            "ipv6_fragment_header_cut_short",
            v6().ext_fragment(0, true)
                .truncate(14 + 40 + 4)
                .payload_len_override(4),
            BadIpv6ExtensionChain,
        ),
        bad(
            "ipv6_payload_len_beyond_frame",
            v6().udp(1, 2).payload_len_override(9),
            BadIpLength,
        ),
        bad(
            "ipv6_payload_len_max",
            v6().tcp(1, 2).payload_len_override(0xffff),
            BadIpLength,
        ),
        bad(
            "ipv6_version4_header",
            v6().ip_version(4).udp(1, 2),
            TruncatedIpv6,
        ),
        bad(
            "ipv4_header_under_ipv6_ethertype",
            v4().ethertype(ethertype::IPV6).tcp(1, 2).payload(40),
            TruncatedIpv6,
        ),
        // ---- RoCEv2 ----
        ok(
            "roce_v4_rc_send_only",
            v4().udp(49152, ROCE)
                .roce_bth(ROCE_RC_SEND_ONLY)
                .payload(64),
            e4(UDP).ports(49152, ROCE).roce(ROCE_RC_SEND_ONLY),
        ),
        ok(
            "roce_v4_rdma_write_only",
            v4().tos((26 << 2) | ECT0)
                .udp(49153, ROCE)
                .roce_bth(ROCE_RC_RDMA_WRITE_ONLY)
                .payload(256),
            e4(UDP)
                .ports(49153, ROCE)
                .roce(ROCE_RC_RDMA_WRITE_ONLY)
                .tos((26 << 2) | ECT0),
        ),
        ok(
            "roce_v4_cnp",
            v4().tos(48 << 2).udp(49154, ROCE).roce_bth(CNP).payload(20),
            e4(UDP).ports(49154, ROCE).roce(CNP).tos(48 << 2),
        ),
        ok(
            "roce_v6_rc_send_only",
            v6().traffic_class((26 << 2) | CE)
                .udp(49155, ROCE)
                .roce_bth(ROCE_RC_SEND_ONLY)
                .payload(32),
            e6(UDP)
                .ports(49155, ROCE)
                .roce(ROCE_RC_SEND_ONLY)
                .tos((26 << 2) | CE),
        ),
        ok(
            "roce_v6_cnp_after_dest_opts",
            v6().ext_dest_opts()
                .udp(49156, ROCE)
                .roce_bth(CNP)
                .payload(20),
            e6(UDP).ports(49156, ROCE).roce(CNP),
        ),
        ok(
            "roce_vlan_v4_cnp",
            v4().vlan(ethertype::VLAN, 42)
                .udp(49157, ROCE)
                .roce_bth(CNP)
                .payload(20),
            e4(UDP).ports(49157, ROCE).roce(CNP).l3_offset(18),
        ),
        ok(
            "roce_qinq_v6_rdma_write_only",
            v6().qinq(7)
                .vlan(ethertype::VLAN, 8)
                .udp(49158, ROCE)
                .roce_bth(ROCE_RC_RDMA_WRITE_ONLY),
            e6(UDP)
                .ports(49158, ROCE)
                .roce(ROCE_RC_RDMA_WRITE_ONLY)
                .l3_offset(22),
        ),
        ok(
            "roce_bth_exactly_12_bytes",
            v4().udp(49159, ROCE).roce_bth(0x11),
            e4(UDP).ports(49159, ROCE).roce(0x11),
        ),
        ok(
            "udp_src_port_4791_is_not_roce",
            v4().udp(ROCE, 49160).payload(4),
            e4(UDP).ports(ROCE, 49160),
        ),
        ok(
            "tcp_port_4791_is_not_roce",
            v4().tcp(49161, ROCE),
            e4(TCP).ports(49161, ROCE),
        ),
        bad(
            "roce_bth_truncated_to_6_bytes",
            v4().udp(49162, ROCE)
                .roce_bth(ROCE_RC_SEND_ONLY)
                .l4_truncate(8 + 6),
            TruncatedRoce,
        ),
        bad(
            "roce_udp_4791_without_bth",
            v4().udp(49163, ROCE),
            TruncatedRoce,
        ),
        bad(
            "roce_v6_bth_truncated_to_11_bytes",
            v6().udp(49164, ROCE).roce_bth(CNP).l4_truncate(8 + 11),
            TruncatedRoce,
        ),
        ok(
            "roce_v4_qp_is_the_connection",
            v4().udp(61234, ROCE)
                .roce_bth(ROCE_RC_RDMA_WRITE_ONLY)
                .roce_qp(0xab_cdef)
                .payload(64),
            e4(UDP)
                .ports(61234, ROCE)
                .roce(ROCE_RC_RDMA_WRITE_ONLY)
                .connection(0xab_cdef),
        ),
        ok(
            "roce_v4_same_qp_other_source_port",
            v4().udp(50001, ROCE)
                .roce_bth(ROCE_RC_RDMA_WRITE_ONLY)
                .roce_qp(0xab_cdef)
                .payload(64),
            e4(UDP)
                .ports(50001, ROCE)
                .roce(ROCE_RC_RDMA_WRITE_ONLY)
                .connection(0xab_cdef),
        ),
        // ---- UET (UDP 4793): keyed on the source PDC id ----
        ok(
            "uet_v4_rud_request",
            v4().udp(49200, UET)
                .transport(&uet_pds(uet::RUD_REQ, 0, 0x0101, 0x0202))
                .payload(64),
            e4(UDP).ports(49200, UET).connection(0x0101),
        ),
        ok(
            "uet_v4_rud_request_other_entropy",
            v4().udp(63001, UET)
                .transport(&uet_pds(uet::RUD_REQ, 0, 0x0101, 0x0202))
                .payload(64),
            e4(UDP).ports(63001, UET).connection(0x0101),
        ),
        ok(
            "uet_v4_syn_opens_the_pdc",
            v4().udp(49201, UET)
                .transport(&uet_pds(uet::ROD_REQ, uet::SYN, 0x0101, 0x8010))
                .payload(32),
            e4(UDP).ports(49201, UET).connection(0x0101),
        ),
        ok(
            "uet_v6_ack",
            v6().traffic_class(ECT0).udp(49202, UET).transport(&uet_pds(
                uet::ACK,
                0,
                0x0202,
                0x0101,
            )),
            e6(UDP).ports(49202, UET).connection(0x0202).tos(ECT0),
        ),
        ok(
            "uet_v4_nack",
            v4().udp(49203, UET)
                .transport(&uet_pds(uet::NACK, 0, 0x0202, 0x0101))
                .payload(4),
            e4(UDP).ports(49203, UET).connection(0x0202),
        ),
        ok(
            "uet_vlan_v4_control",
            v4().vlan(ethertype::VLAN, 42)
                .udp(49204, UET)
                .transport(&uet_pds(uet::CTRL, 0, 0x0303, 0x0404))
                .payload(4),
            e4(UDP).ports(49204, UET).connection(0x0303).l3_offset(18),
        ),
        ok(
            "uet_v4_tss_then_pds",
            v4().udp(49205, UET)
                .transport(&uet_tss(false))
                .transport(&uet_pds(uet::RUD_REQ, 0, 0x0505, 1))
                .payload(48),
            e4(UDP).ports(49205, UET).connection(0x0505),
        ),
        ok(
            "uet_v6_tss_with_ssi_then_pds",
            v6().udp(49206, UET)
                .transport(&uet_tss(true))
                .transport(&uet_pds(uet::ACK, 0, 0x0606, 1)),
            e6(UDP).ports(49206, UET).connection(0x0606),
        ),
        ok(
            "uet_v4_rudi_is_connectionless",
            v4().udp(49207, UET)
                .transport(&uet_pds(uet::RUDI_REQ, 0, 0, 0)[..8])
                .payload(16),
            e4(UDP).ports(49207, UET).connection(UET_CONNECTIONLESS),
        ),
        ok(
            "uet_v4_uud_is_connectionless",
            v4().udp(49208, UET)
                .transport(&uet_pds(uet::UUD_REQ, 0, 0, 0)[..4]),
            e4(UDP).ports(49208, UET).connection(UET_CONNECTIONLESS),
        ),
        ok(
            "uet_v4_pds_cut_short_keeps_the_five_tuple",
            v4().udp(49209, UET)
                .transport(&uet_pds(uet::RUD_REQ, 0, 0x0101, 0x0202)[..11]),
            e4(UDP).ports(49209, UET).spray_unkeyed(),
        ),
        ok(
            "uet_v4_pds_in_ethernet_padding_keeps_the_five_tuple",
            v4().udp(49210, UET)
                .transport(&uet_pds(uet::RUD_REQ, 0, 0x0101, 0x0202)[..2])
                .pad_to(80),
            e4(UDP).ports(49210, UET).spray_unkeyed(),
        ),
        ok(
            "uet_v4_reserved_pds_type_keeps_the_five_tuple",
            v4().udp(49211, UET).transport(&uet_pds(31, 0, 1, 2)),
            e4(UDP).ports(49211, UET).spray_unkeyed(),
        ),
        ok(
            "uet_v4_udp_without_payload_keeps_the_five_tuple",
            v4().udp(49212, UET),
            e4(UDP).ports(49212, UET).spray_unkeyed(),
        ),
        ok(
            "udp_src_port_4793_is_not_uet",
            v4().udp(UET, 49213)
                .transport(&uet_pds(uet::RUD_REQ, 0, 1, 2)),
            e4(UDP).ports(UET, 49213),
        ),
        // ---- truncation at every boundary ----
        Case {
            name: "empty_frame",
            frame: Vec::new(),
            expect: Expect::Rejected(TruncatedEthernet),
        },
        bad(
            "truncated_13_bytes",
            v4().tcp(1, 2).truncate(13),
            TruncatedEthernet,
        ),
        bad(
            "truncated_mid_vlan_tag",
            v4().vlan(ethertype::VLAN, 1).tcp(1, 2).truncate(16),
            TruncatedVlan,
        ),
        bad(
            "truncated_mid_inner_vlan_tag",
            v4().qinq(1).vlan(ethertype::VLAN, 2).tcp(1, 2).truncate(21),
            TruncatedVlan,
        ),
        bad(
            "truncated_after_ethernet_ipv4",
            v4().tcp(1, 2).truncate(14),
            TruncatedIpv4,
        ),
        bad(
            "truncated_mid_ipv4",
            v4().tcp(1, 2).truncate(14 + 10),
            TruncatedIpv4,
        ),
        bad(
            "truncated_mid_ipv4_options",
            v4().ipv4_options(&[1; 12]).tcp(1, 2).truncate(14 + 24),
            TruncatedIpv4,
        ),
        bad(
            "truncated_after_ethernet_ipv6",
            v6().udp(1, 2).truncate(14),
            TruncatedIpv6,
        ),
        bad(
            "truncated_mid_ipv6",
            v6().udp(1, 2).truncate(14 + 20),
            TruncatedIpv6,
        ),
        bad(
            "truncated_frame_mid_tcp",
            v4().tcp(1, 2).truncate(14 + 20 + 10),
            BadIpLength,
        ),
        bad(
            "truncated_mid_tcp",
            v4().tcp(1, 2).l4_truncate(12),
            TruncatedL4,
        ),
        bad(
            "truncated_tcp_19_bytes",
            v4().tcp(1, 2).l4_truncate(19),
            TruncatedL4,
        ),
        bad(
            "truncated_ipv4_no_tcp_header",
            v4().tcp(1, 2).l4_truncate(0),
            TruncatedL4,
        ),
        bad(
            "truncated_mid_udp",
            v4().udp(1, 2).l4_truncate(4),
            TruncatedL4,
        ),
        bad(
            "truncated_mid_icmp",
            v4().icmp().l4_truncate(5),
            TruncatedL4,
        ),
        bad(
            "truncated_v6_mid_tcp",
            v6().tcp(1, 2).l4_truncate(16),
            TruncatedL4,
        ),
        bad(
            "truncated_v6_mid_udp",
            v6().udp(1, 2).l4_truncate(7),
            TruncatedL4,
        ),
        bad(
            "truncated_mid_icmpv6",
            v6().icmpv6().l4_truncate(3),
            TruncatedL4,
        ),
        bad(
            "truncated_v6_mid_tcp_after_hop_by_hop",
            v6().ext_hop_by_hop().tcp(1, 2).l4_truncate(10),
            TruncatedL4,
        ),
        ok(
            "icmpv6_4_byte_header_only",
            v6().icmpv6().l4_truncate(4),
            e6(ICMPV6),
        ),
        // ---- not IP ----
        bad("arp_request", Frame::arp(), NotIp),
        bad(
            "lldp",
            Frame::eth().ethertype(ETHERTYPE_LLDP).payload(40),
            NotIp,
        ),
        bad(
            "ethertype_only",
            Frame::eth().ethertype(ETHERTYPE_ARP),
            NotIp,
        ),
        // ---- Ethernet padding ----
        ok(
            "ipv4_tcp_ack_padded_to_60",
            v4().tcp(443, 40000).pad_to(60),
            e4(TCP).ports(443, 40000),
        ),
        ok(
            "ipv4_udp_padded_to_60",
            v4().udp(53, 5353).payload(2).pad_to(60),
            e4(UDP).ports(53, 5353),
        ),
        ok(
            "vlan_ipv4_icmp_padded_to_64",
            v4().vlan(ethertype::VLAN, 9).icmp().pad_to(64),
            e4(ICMP).l3_offset(18),
        ),
        bad(
            "ipv4_udp_cut_short_hidden_by_padding",
            v4().udp(1, 2).l4_truncate(4).pad_to(60),
            TruncatedL4,
        ),
        bad(
            "ipv6_tcp_cut_short_hidden_by_padding",
            v6().tcp(1, 2).l4_truncate(8).pad_to(128),
            TruncatedL4,
        ),
        // ---- DS field: DSCP and ECN ----
        ok("ipv4_not_ect", v4().tos(0).udp(1, 2), e4(UDP).ports(1, 2)),
        ok(
            "ipv4_ect0",
            v4().tos(ECT0).udp(1, 2),
            e4(UDP).ports(1, 2).tos(ECT0),
        ),
        ok(
            "ipv4_ect1",
            v4().tos(ECT1).udp(1, 2),
            e4(UDP).ports(1, 2).tos(ECT1),
        ),
        ok(
            "ipv4_ce",
            v4().tos(CE).tcp(1, 2),
            e4(TCP).ports(1, 2).tos(CE),
        ),
        ok(
            "ipv4_dscp_ef",
            v4().tos(DSCP_EF << 2).udp(16384, 16385),
            e4(UDP).ports(16384, 16385).tos(0xb8),
        ),
        ok(
            "ipv4_dscp_af41_ect1",
            v4().tos((DSCP_AF41 << 2) | ECT1).tcp(5000, 5001),
            e4(TCP).ports(5000, 5001).tos(0x89),
        ),
        ok(
            "ipv4_dscp_ef_ce_vlan",
            v4().vlan(ethertype::VLAN, 3)
                .tos((DSCP_EF << 2) | CE)
                .udp(1, 2),
            e4(UDP).ports(1, 2).tos(0xbb).l3_offset(18),
        ),
        ok(
            "ipv6_not_ect_flow_label_all_ones",
            v6().flow_label(0xf_ffff).udp(1, 2),
            e6(UDP).ports(1, 2),
        ),
        ok(
            "ipv6_ect0",
            v6().traffic_class(ECT0).flow_label(0x1_2345).udp(1, 2),
            e6(UDP).ports(1, 2).tos(ECT0),
        ),
        ok(
            "ipv6_ect1",
            v6().traffic_class(ECT1).udp(1, 2),
            e6(UDP).ports(1, 2).tos(ECT1),
        ),
        ok(
            "ipv6_ce_flow_label_abcde",
            v6().traffic_class(CE).flow_label(0xa_bcde).tcp(1, 2),
            e6(TCP).ports(1, 2).tos(CE),
        ),
        ok(
            "ipv6_dscp_ef_flow_label_all_ones",
            v6().traffic_class(DSCP_EF << 2)
                .flow_label(0xf_ffff)
                .udp(1, 2),
            e6(UDP).ports(1, 2).tos(0xb8),
        ),
        ok(
            "ipv6_dscp_af41_ce",
            v6().traffic_class((DSCP_AF41 << 2) | CE).tcp(1, 2),
            e6(TCP).ports(1, 2).tos(0x8b),
        ),
        ok(
            "ipv6_traffic_class_all_ones",
            v6().traffic_class(0xff).flow_label(0).icmpv6(),
            e6(ICMPV6).tos(0xff),
        ),
        // ---- addresses are copied whole ----
        ok(
            "ipv4_addresses_edge_of_range",
            Frame::eth()
                .ipv4([198, 19, 255, 255], [198, 18, 0, 0])
                .udp(0, 0),
            ExpectedMeta::v4([198, 19, 255, 255], [198, 18, 0, 0], UDP).ports(0, 0),
        ),
        ok(
            "ipv6_addresses_all_bits",
            Frame::eth()
                .ipv6(
                    [
                        0x20, 0x01, 0x0d, 0xb8, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88,
                        0x77, 0x66, 0x55, 0x44,
                    ],
                    [
                        0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                    ],
                )
                .tcp(65535, 65535),
            ExpectedMeta::v6(
                [
                    0x20, 0x01, 0x0d, 0xb8, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77,
                    0x66, 0x55, 0x44,
                ],
                [
                    0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                ],
                TCP,
            )
            .ports(65535, 65535),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_lays_out_a_plain_ipv4_tcp_frame() {
        let f = v4().tcp(0x1234, 0x5678).payload(3).build();
        assert_eq!(f.len(), 14 + 20 + 20 + 3);
        assert_eq!(&f[..6], &DST_MAC);
        assert_eq!(&f[6..12], &SRC_MAC);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(&f[16..18], &43u16.to_be_bytes());
        assert_eq!(f[23], 6);
        assert_eq!(&f[26..30], &V4_SRC);
        assert_eq!(&f[30..34], &V4_DST);
        assert_eq!(&f[34..38], &[0x12, 0x34, 0x56, 0x78]);
        assert!(ipv4_header_checksum_ok(&f, 14));
    }

    #[test]
    fn checksum_checker_rejects_a_wrong_checksum() {
        let good = v4().ipv4_options(&[1; 8]).udp(1, 2).build();
        assert!(ipv4_header_checksum_ok(&good, 14));
        let bad = v4()
            .ipv4_options(&[1; 8])
            .udp(1, 2)
            .checksum_override(0x1234)
            .build();
        assert!(!ipv4_header_checksum_ok(&bad, 14));
        let mut flipped = good.clone();
        flipped[15] ^= 0x04;
        assert!(!ipv4_header_checksum_ok(&flipped, 14));
        assert!(!ipv4_header_checksum_ok(&good[..30], 14));
    }

    #[test]
    fn builder_lays_out_ipv6_extension_chain() {
        let f = v6()
            .ext_hop_by_hop()
            .ext_fragment(100, true)
            .udp(1, 2)
            .build();
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(&f[18..20], &(8u16 + 8 + 8).to_be_bytes());
        assert_eq!(f[20], ipproto::HOPOPTS);
        assert_eq!(f[54], ipproto::FRAGMENT);
        assert_eq!(f[55], 0);
        assert_eq!(f[62], ipproto::UDP);
        assert_eq!(&f[64..66], &((100u16 << 3) | 1).to_be_bytes());
    }

    #[test]
    fn tos_of_reads_both_families() {
        let f = v6().traffic_class(0xb9).flow_label(0xf_ffff).build();
        assert_eq!(tos_of(&f, 14, true), 0xb9);
        let f = v4().vlan(ethertype::VLAN, 1).tos(0x88).build();
        assert_eq!(tos_of(&f, 18, false), 0x88);
    }
}
