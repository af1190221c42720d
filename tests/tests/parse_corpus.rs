//! Runs the frame corpus (`dataplane_lab::frames::corpus`) through the parser, and
//! cross-checks the well-formed frames with an independent parser (etherparse).

use std::collections::HashSet;

use dataplane_common::{
    packet::{parse, Family},
    reason::Reason,
};
use dataplane_lab::frames::{corpus, ipv4_header_checksum_ok, tos_of, Case, Expect};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

fn parsed(cases: &[Case]) -> impl Iterator<Item = (&Case, &dataplane_lab::frames::ExpectedMeta)> {
    cases.iter().filter_map(|c| match &c.expect {
        Expect::Parsed(e) => Some((c, e)),
        Expect::Rejected(_) => None,
    })
}

#[test]
fn corpus_is_large_and_names_are_unique() {
    let cases = corpus();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut names = HashSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
    }
    let rejected = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Rejected(_)))
        .count();
    assert!(rejected >= 10 && cases.len() - rejected >= 10);
}

#[test]
fn every_case_parses_as_expected() {
    let cases = corpus();
    let mut failures = Vec::new();
    for case in &cases {
        let got = parse(case.frame.as_slice());
        let (pass, want) = match &case.expect {
            Expect::Parsed(e) => (
                got == Ok(e.to_meta()),
                format!("{:?}", Ok::<_, Reason>(e.to_meta())),
            ),
            Expect::Rejected(r) => (got == Err(*r), format!("Err({r:?})")),
        };
        if !pass {
            failures.push(format!(
                "  {} ({} bytes):\n    want {want}\n    got  {got:?}",
                case.name,
                case.frame.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn well_formed_ipv4_checksums_verify_independently() {
    let cases = corpus();
    let mut checked = 0;
    for (case, e) in parsed(&cases) {
        assert_eq!(
            tos_of(&case.frame, e.l3_offset, e.family == Family::V6),
            e.tos,
            "{}: tos_of",
            case.name
        );
        if e.family != Family::V4 {
            continue;
        }
        assert!(
            ipv4_header_checksum_ok(&case.frame, e.l3_offset),
            "{}: checksum",
            case.name
        );
        let header = etherparse::Ipv4HeaderSlice::from_slice(&case.frame[e.l3_offset..])
            .unwrap_or_else(|err| panic!("{}: etherparse: {err}", case.name));
        assert_eq!(
            header.to_header().calc_header_checksum(),
            header.header_checksum(),
            "{}: etherparse disagrees on the checksum",
            case.name
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} IPv4 frames checked");
}

/// The fields etherparse sees in a frame: (family, src, dst, tos, protocol, fragmented,
/// ports, vlan tags).
type Seen = (
    Family,
    [u8; 16],
    [u8; 16],
    u8,
    u8,
    bool,
    Option<(u16, u16)>,
    usize,
);

fn etherparse_view(frame: &[u8]) -> Result<Seen, String> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| e.to_string())?;
    let tags = p.link_exts.len();
    let (family, src, dst, tos, payload) = match p.net.as_ref().ok_or("no IP layer")? {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            let mut src = [0; 16];
            let mut dst = [0; 16];
            src[..4].copy_from_slice(&h.source());
            dst[..4].copy_from_slice(&h.destination());
            let tos = (h.dcp().value() << 2) | h.ecn().value();
            (Family::V4, src, dst, tos, ip.payload())
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            (
                Family::V6,
                h.source(),
                h.destination(),
                h.traffic_class(),
                ip.payload(),
            )
        }
        NetSlice::Arp(_) => return Err("ARP".into()),
    };
    let ports = match &p.transport {
        Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
        _ => None,
    };
    Ok((
        family,
        src,
        dst,
        tos,
        payload.ip_number.into(),
        payload.fragmented,
        ports,
        tags,
    ))
}

/// Well-formed frames etherparse refuses: RFC 4443 section 2.1 makes the ICMPv6 header 4 bytes
/// (type, code, checksum) and the parser checks exactly that, but etherparse wants 8.
const ETHERPARSE_STRICTER: &[&str] = &["icmpv6_4_byte_header_only"];

#[test]
fn etherparse_agrees_on_well_formed_frames() {
    let cases = corpus();
    let mut compared = 0;
    let mut failures = Vec::new();
    for (case, e) in parsed(&cases) {
        let seen = match etherparse_view(&case.frame) {
            Ok(_) if ETHERPARSE_STRICTER.contains(&case.name) => {
                failures.push(format!("  {}: etherparse now accepts it", case.name));
                continue;
            }
            Err(_) if ETHERPARSE_STRICTER.contains(&case.name) => continue,
            Ok(seen) => seen,
            Err(err) => {
                failures.push(format!("  {}: etherparse rejects it: {err}", case.name));
                continue;
            }
        };
        let (family, src, dst, tos, protocol, fragmented, ports, tags) = seen;
        let mut diffs = Vec::new();
        if (family, src, dst, tos, protocol) != (e.family, e.src, e.dst, e.tos, e.protocol) {
            diffs.push(format!("L3 {:?}", (family, src, dst, tos, protocol)));
        }
        if 14 + 4 * tags != e.l3_offset {
            diffs.push(format!("{tags} VLAN tags"));
        }
        if e.later_fragment && !fragmented {
            diffs.push("not a fragment".into());
        }
        // etherparse leaves the transport layer of any fragment (first ones too) unparsed.
        if !fragmented && ports != e.ports {
            diffs.push(format!("ports {ports:?}"));
        }
        if diffs.is_empty() {
            compared += 1;
        } else {
            failures.push(format!(
                "  {}: etherparse sees {}",
                case.name,
                diffs.join(", ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "etherparse disagrees with the corpus:\n{}",
        failures.join("\n")
    );
    assert!(compared >= 40, "only {compared} frames compared");
}

/// The corpus says a TCP/UDP header is cut short; etherparse must fail on it too (it bounds
/// the transport header by the IP length, not by the frame).
#[test]
fn etherparse_also_rejects_cut_short_tcp_udp() {
    let cases = corpus();
    let mut checked = 0;
    for case in &cases {
        if case.expect != Expect::Rejected(Reason::TruncatedL4) {
            continue;
        }
        let Ok(p) = SlicedPacket::from_ethernet(&case.frame) else {
            checked += 1;
            continue;
        };
        let protocol: u8 = p.ip_payload().map_or(0, |pl| pl.ip_number.into());
        if protocol == 6 || protocol == 17 {
            panic!("{}: etherparse accepts {:?}", case.name, p.transport);
        }
    }
    assert!(checked >= 5, "only {checked} frames checked");
}

/// The fuzzers' seeds (`fuzz/seeds/`, committed) hold every corpus frame and the policy
/// files of the repository, so fuzzing starts from what the parsers must handle.
/// `DATAPLANE_WRITE_SEEDS=1` writes them.
#[test]
fn fuzz_seeds_hold_the_corpus_and_the_policy_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let write = std::env::var_os("DATAPLANE_WRITE_SEEDS").is_some();
    let packets = root.join("fuzz/seeds/packet_parse");
    let mut seeds: Vec<(std::path::PathBuf, Vec<u8>)> = corpus()
        .into_iter()
        .map(|c| (packets.join(format!("seed-{}", c.name)), c.frame))
        .collect();
    let policies = root.join("fuzz/seeds/policy_parse");
    for file in [
        "config/default.toml",
        "config/examples/two-port-gateway.toml",
    ] {
        let text = std::fs::read(root.join(file)).expect("policy file readable");
        let name = file.replace('/', "-");
        seeds.push((policies.join(format!("seed-{name}")), text));
    }
    for (path, bytes) in &seeds {
        if write {
            std::fs::create_dir_all(path.parent().expect("dir")).expect("seed directory");
            std::fs::write(path, bytes).expect("seed written");
        }
        let found = std::fs::read(path).unwrap_or_default();
        assert!(
            &found == bytes,
            "{} is missing or stale: run the test with DATAPLANE_WRITE_SEEDS=1",
            path.display()
        );
    }
}
