//! Property tests of `packet::parse`: it never panics, it returns exactly the fields of any
//! well-formed frame, and it never accepts a frame cut short before the end of its L4 header.
//!
//! The frame builder here is deliberately tiny and separate from `dataplane-lab`'s one
//! (which depends on this crate).

use dataplane_common::{
    packet::{ethertype, ipproto, parse, Family, PacketMeta, TcpMeta},
    reason::Reason,
    MAX_IPV6_EXTENSION_HEADERS, ROCEV2_UDP_PORT, UET_UDP_PORT,
};
use proptest::prelude::*;

/// A well-formed frame to build.
#[derive(Clone, Debug)]
struct Spec {
    /// TPIDs of the VLAN tags, outermost first.
    tags: Vec<u16>,
    v6: bool,
    src: [u8; 16],
    dst: [u8; 16],
    tos: u8,
    /// IPv4 option bytes (a multiple of four).
    options: Vec<u8>,
    /// IPv6 extension headers: (kind, hdr_ext_len); the fragment header ignores the length.
    exts: Vec<(u8, u8)>,
    tcp: bool,
    sport: u16,
    dport: u16,
    /// RoCEv2 BTH opcode; only meaningful for UDP to port 4791.
    opcode: u8,
    payload: usize,
}

/// Offsets in a built frame.
#[derive(Clone, Copy, Debug)]
struct Layout {
    l3: usize,
    /// End of the IPv4 header (with options) or of the fixed IPv6 header.
    l3_header_end: usize,
    l4: usize,
    /// End of the TCP/UDP header, plus the BTH for RoCEv2.
    l4_end: usize,
}

impl Spec {
    fn is_roce(&self) -> bool {
        !self.tcp && self.dport == ROCEV2_UDP_PORT
    }

    fn expected(&self, layout: &Layout) -> PacketMeta {
        PacketMeta {
            l3_offset: 14 + 4 * self.tags.len(),
            family: if self.v6 { Family::V6 } else { Family::V4 },
            protocol: if self.tcp { ipproto::TCP } else { ipproto::UDP },
            tos: self.tos,
            src: self.src,
            dst: self.dst,
            src_port: self.sport,
            dst_port: self.dport,
            has_ports: true,
            later_fragment: false,
            roce_opcode: self.is_roce().then_some(self.opcode),
            // The BTH as built: destination QP 1.
            connection: self.is_roce().then_some(1),
            spray_unkeyed: false,
            tcp: self.tcp.then(|| TcpMeta {
                offset: layout.l4,
                header_len: 20,
                flags: TcpMeta::ACK,
                // Sequence number 1, as built.
                data_end: (self.payload > 0).then(|| 1 + self.payload as u32),
            }),
        }
    }

    fn build(&self) -> (Vec<u8>, Layout) {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for &tpid in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x64]); // TCI: VID 100
        }
        let l3_ethertype = if self.v6 {
            ethertype::IPV6
        } else {
            ethertype::IPV4
        };
        f.extend_from_slice(&l3_ethertype.to_be_bytes());
        let l3 = f.len();

        let protocol = if self.tcp { ipproto::TCP } else { ipproto::UDP };
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.tcp {
            l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            l4.extend_from_slice(&[0, 0, 0, 0]);
        }
        if self.is_roce() {
            l4.extend_from_slice(&[self.opcode, 0x40, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1]);
        }
        let l4_header_len = l4.len();
        l4.extend((0..self.payload).map(|i| i as u8));
        if !self.tcp {
            let len = l4.len() as u16;
            l4[4..6].copy_from_slice(&len.to_be_bytes());
        }

        let l3_header_end;
        if self.v6 {
            let mut exts = Vec::new();
            for (i, &(kind, len)) in self.exts.iter().enumerate() {
                let next = self.exts.get(i + 1).map_or(protocol, |e| e.0);
                if kind == ipproto::FRAGMENT {
                    exts.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 7]); // offset 0, M clear
                } else {
                    exts.push(next);
                    exts.push(len);
                    // PadN covering the rest of the header.
                    let rest = (usize::from(len) + 1) * 8 - 2;
                    exts.push(1);
                    exts.push((rest - 2) as u8);
                    exts.extend(std::iter::repeat_n(0, rest - 2));
                }
            }
            let first_next = self.exts.first().map_or(protocol, |e| e.0);
            let payload_len = (exts.len() + l4.len()) as u16;
            f.push(0x60 | (self.tos >> 4));
            f.push(self.tos << 4 | 0x0a); // flow label 0xabcde
            f.extend_from_slice(&[0xbc, 0xde]);
            f.extend_from_slice(&payload_len.to_be_bytes());
            f.push(first_next);
            f.push(64);
            f.extend_from_slice(&self.src);
            f.extend_from_slice(&self.dst);
            l3_header_end = f.len();
            f.extend_from_slice(&exts);
        } else {
            let header_len = 20 + self.options.len();
            let total_len = (header_len + l4.len()) as u16;
            f.push(0x40 | (header_len / 4) as u8);
            f.push(self.tos);
            f.extend_from_slice(&total_len.to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]); // DF set
            f.extend_from_slice(&self.src[..4]);
            f.extend_from_slice(&self.dst[..4]);
            f.extend_from_slice(&self.options);
            l3_header_end = f.len();
        }
        let l4_off = f.len();
        f.extend_from_slice(&l4);
        let layout = Layout {
            l3,
            l3_header_end,
            l4: l4_off,
            l4_end: l4_off + l4_header_len,
        };
        (f, layout)
    }
}

/// Rewrites the IP length field of a frame built from `spec` and then cut, so that it
/// matches the frame again. Only possible once the IPv4 header / fixed IPv6 header is whole.
fn fix_ip_length(frame: &mut [u8], spec: &Spec, layout: Layout) {
    assert!(frame.len() >= layout.l3_header_end);
    let (at, len) = if spec.v6 {
        (layout.l3 + 4, frame.len() - layout.l3_header_end)
    } else {
        (layout.l3 + 2, frame.len() - layout.l3)
    };
    frame[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
}

fn v4_addr() -> impl Strategy<Value = [u8; 16]> {
    (0u8..2, any::<[u8; 2]>()).prop_map(|(b, rest)| {
        let mut a = [0; 16];
        a[..4].copy_from_slice(&[198, 18 | b, rest[0], rest[1]]);
        a
    })
}

fn v6_addr() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 12]>().prop_map(|rest| {
        let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a[4..].copy_from_slice(&rest);
        a
    })
}

fn ext() -> impl Strategy<Value = (u8, u8)> {
    (
        prop_oneof![
            Just(ipproto::HOPOPTS),
            Just(ipproto::ROUTING),
            Just(ipproto::DSTOPTS),
            Just(ipproto::FRAGMENT),
        ],
        0u8..4,
    )
}

/// Well-formed frames with at most `max_exts` IPv6 extension headers.
fn spec(max_exts: usize) -> impl Strategy<Value = Spec> {
    let tags = prop::collection::vec(
        prop_oneof![Just(ethertype::VLAN), Just(ethertype::QINQ)],
        0..=2,
    );
    let v4 = (
        v4_addr(),
        v4_addr(),
        (0usize..=10).prop_map(|words| vec![1u8; words * 4]),
    )
        .prop_map(|(src, dst, options)| (false, src, dst, options, Vec::new()));
    let v6 = (
        v6_addr(),
        v6_addr(),
        prop::collection::vec(ext(), 0..=max_exts),
    )
        .prop_map(|(src, dst, exts)| (true, src, dst, Vec::new(), exts));
    // UET's port is left to the corpus and the unit tests: the payload here is no PDS header.
    let dport = prop_oneof![
        3 => any::<u16>().prop_filter("not UET", |p| *p != UET_UDP_PORT),
        1 => Just(ROCEV2_UDP_PORT),
    ];
    (
        tags,
        prop_oneof![v4, v6],
        any::<u8>(),
        any::<bool>(),
        any::<u16>(),
        dport,
        any::<u8>(),
        0usize..48,
    )
        .prop_map(
            |(tags, (v6, src, dst, options, exts), tos, tcp, sport, dport, opcode, payload)| Spec {
                tags,
                v6,
                src,
                dst,
                tos,
                options,
                exts,
                tcp,
                sport,
                dport,
                opcode,
                payload,
            },
        )
}

/// What any `Ok` must satisfy, whatever the input.
fn check_invariants(frame: &[u8], meta: &PacketMeta) {
    assert!([14, 18, 22].contains(&meta.l3_offset), "{meta:?}");
    assert!(meta.l3_offset < frame.len());
    if meta.family == Family::V4 {
        assert_eq!(meta.src[4..], [0; 12]);
        assert_eq!(meta.dst[4..], [0; 12]);
    }
    if meta.has_ports {
        assert!(meta.protocol == ipproto::TCP || meta.protocol == ipproto::UDP);
        assert!(!meta.later_fragment);
    } else {
        assert_eq!((meta.src_port, meta.dst_port), (0, 0));
    }
    if meta.roce_opcode.is_some() {
        assert!(meta.has_ports && meta.protocol == ipproto::UDP);
        assert_eq!(meta.dst_port, ROCEV2_UDP_PORT);
    }
    // Only the sprayed transports name a connection, and only they fall back from one.
    if meta.connection.is_some() || meta.spray_unkeyed {
        assert!(meta.has_ports && meta.protocol == ipproto::UDP, "{meta:?}");
        assert!(
            [ROCEV2_UDP_PORT, UET_UDP_PORT].contains(&meta.dst_port),
            "{meta:?}"
        );
        assert!(
            !(meta.connection.is_some() && meta.spray_unkeyed),
            "{meta:?}"
        );
        // Rules see the source port exactly when the flow key holds it.
        let keyed_on_port = meta
            .connection
            .is_none()
            .then_some(u32::from(meta.src_port));
        assert_eq!(meta.rule_src_port(), keyed_on_port, "{meta:?}");
    }
    let uet = meta.has_ports && meta.protocol == ipproto::UDP && meta.dst_port == UET_UDP_PORT;
    assert_eq!(
        meta.connection.is_some(),
        meta.roce_opcode.is_some() || (uet && !meta.spray_unkeyed),
        "a RoCEv2 packet always names its QP, a UET one unless it falls back: {meta:?}"
    );
}

fn parse_checked(frame: &[u8]) -> Result<PacketMeta, Reason> {
    let r = parse(frame);
    match &r {
        Ok(meta) => check_invariants(frame, meta),
        // The parser's refusals are exactly what `dataplane_parse_errors_total` counts,
        // plus non-IP traffic.
        Err(reason) => assert!(
            reason.is_parse_error() || *reason == Reason::NotIp,
            "parse returned {reason:?}, which is not a parse error"
        ),
    }
    r
}

proptest! {
    // No regression files: a failure prints its minimal input, and the known-bug property
    // below would otherwise leave a file in the source tree on every run.
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (1) Arbitrary bytes.
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..=256)) {
        let _ = parse_checked(&bytes);
    }

    /// (1) Arbitrary bytes behind a plausible Ethernet header and up to three tags, so the
    /// random part reaches the IP and extension-header code.
    #[test]
    fn never_panics_on_arbitrary_ip_packets(
        tags in prop::collection::vec(prop_oneof![Just(ethertype::VLAN), Just(ethertype::QINQ)], 0..=3),
        l3 in prop_oneof![Just(ethertype::IPV4), Just(ethertype::IPV6), any::<u16>()],
        version_ihl in prop_oneof![Just(0x45u8), Just(0x4f), Just(0x60), any::<u8>()],
        rest in prop::collection::vec(any::<u8>(), 0..=256),
    ) {
        let mut f = vec![0u8; 12];
        for tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0, 1]);
        }
        f.extend_from_slice(&l3.to_be_bytes());
        f.push(version_ihl);
        f.extend_from_slice(&rest);
        let _ = parse_checked(&f);
    }

    /// (1) Valid frames, cut anywhere and with bits flipped.
    #[test]
    fn never_panics_on_damaged_valid_frames(
        spec in spec(MAX_IPV6_EXTENSION_HEADERS),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..8),
    ) {
        let (mut f, _) = spec.build();
        for (at, bit) in flips {
            let i = at.index(f.len());
            f[i] ^= 1 << bit;
        }
        let len = cut.index(f.len() + 1);
        let _ = parse_checked(&f[..len]);
        let _ = parse_checked(&f);
    }

    /// (2) Well-formed frames parse to exactly their fields.
    #[test]
    fn well_formed_frames_parse_to_their_fields(spec in spec(MAX_IPV6_EXTENSION_HEADERS - 1)) {
        let (f, layout) = spec.build();
        prop_assert_eq!(parse_checked(&f), Ok(spec.expected(&layout)));
    }

    /// (2) Ethernet padding after the packet changes nothing.
    #[test]
    fn ethernet_padding_is_ignored(spec in spec(2), pad in 1usize..64) {
        let (mut f, layout) = spec.build();
        f.resize(f.len() + pad, 0);
        prop_assert_eq!(parse_checked(&f), Ok(spec.expected(&layout)));
    }

    /// (2) A chain of exactly MAX_IPV6_EXTENSION_HEADERS extension headers is within the
    /// documented walk depth ("deepest chain we walk"), so it must parse.
    #[test]
    fn ipv6_chain_of_max_extension_headers_parses(
        spec in spec(0),
        exts in prop::collection::vec(ext(), MAX_IPV6_EXTENSION_HEADERS),
        src in v6_addr(),
        dst in v6_addr(),
    ) {
        let spec = Spec { v6: true, src, dst, options: Vec::new(), exts, ..spec };
        let (f, layout) = spec.build();
        prop_assert_eq!(parse_checked(&f), Ok(spec.expected(&layout)));
    }

    /// One more extension header than the walk depth is refused.
    #[test]
    fn ipv6_chain_beyond_max_is_refused(
        spec in spec(0),
        exts in prop::collection::vec(ext(), MAX_IPV6_EXTENSION_HEADERS + 1..=MAX_IPV6_EXTENSION_HEADERS + 3),
        src in v6_addr(),
        dst in v6_addr(),
    ) {
        let spec = Spec { v6: true, src, dst, options: Vec::new(), exts, ..spec };
        let (f, _) = spec.build();
        prop_assert_eq!(parse_checked(&f), Err(Reason::BadIpv6ExtensionChain));
    }

    /// (3) Cutting a well-formed frame anywhere before the end of its L4 header (or BTH)
    /// gives an error, never an `Ok`.
    #[test]
    fn truncation_before_l4_end_is_an_error(
        spec in spec(MAX_IPV6_EXTENSION_HEADERS - 1),
        cut in any::<prop::sample::Index>(),
    ) {
        let (f, layout) = spec.build();
        let len = cut.index(layout.l4_end);
        let r = parse_checked(&f[..len]);
        prop_assert!(r.is_err(), "cut at {} of {}: {:?}", len, layout.l4_end, r);
    }

    /// (3) The same with the IP length rewritten to match the cut frame (a consistent but
    /// short packet): still an error, and inside the L4 header exactly the L4 reason.
    #[test]
    fn consistent_truncation_before_l4_end_is_an_error(
        spec in spec(MAX_IPV6_EXTENSION_HEADERS - 1),
        cut in any::<prop::sample::Index>(),
    ) {
        let (f, layout) = spec.build();
        let len = layout.l3_header_end + cut.index(layout.l4_end - layout.l3_header_end);
        let mut f = f[..len].to_vec();
        fix_ip_length(&mut f, &spec, layout);
        let r = parse_checked(&f);
        let l4_header_len = if spec.tcp { 20 } else { 8 };
        if len >= layout.l4 + l4_header_len {
            prop_assert_eq!(r, Err(Reason::TruncatedRoce));
        } else if len >= layout.l4 {
            prop_assert_eq!(r, Err(Reason::TruncatedL4));
        } else {
            prop_assert!(r.is_err(), "cut at {} of {}: {:?}", len, layout.l4_end, r);
        }
    }
}

#[test]
fn inline_builder_round_trips_a_known_frame() {
    let mut src = [0; 16];
    src[..4].copy_from_slice(&[198, 18, 0, 1]);
    let mut dst = [0; 16];
    dst[..4].copy_from_slice(&[198, 19, 0, 2]);
    let spec = Spec {
        tags: vec![ethertype::QINQ, ethertype::VLAN],
        v6: false,
        src,
        dst,
        tos: 0xb8,
        options: vec![1; 4],
        exts: Vec::new(),
        tcp: false,
        sport: 49152,
        dport: ROCEV2_UDP_PORT,
        opcode: 0x81,
        payload: 4,
    };
    let (f, layout) = spec.build();
    assert_eq!(f.len(), 22 + 24 + 8 + 12 + 4);
    assert_eq!(
        (layout.l3, layout.l3_header_end, layout.l4, layout.l4_end),
        (22, 46, 46, 66)
    );
    assert_eq!(parse(f.as_slice()), Ok(spec.expected(&layout)));
}
