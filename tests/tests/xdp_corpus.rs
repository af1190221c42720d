//! The parser corpus through the real program (BPF_PROG_TEST_RUN): every frame's verdict,
//! class, counters and output bytes, against expectations written independently of the
//! kernel code (the corpus's hand-written metadata, a naive first-match over the rules, and
//! a per-class table of what each action must do).

use aya::programs::Xdp;
use dataplane::{config::Policy, dataplane::Dataplane};
use dataplane_common::{
    classify::first_match,
    maps::{ClassCounters, IfaceCounters},
    packet::Family,
    reason::Reason,
};
use dataplane_lab::{
    frames::{corpus, ipv4_header_checksum_ok, tos_of, Expect, ExpectedMeta},
    kernel::{load_policy, run_once, try_run_once},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// No class has a committed rate except `tcp_green`, so every other packet is yellow and
/// meets its class's `exceed` action; `tcp_green`'s single packets are green (conform DSCP).
const POLICY: &str = r#"
[[class]]
name = "default"

[[class]]
name = "cnp"
priority = 7
exceed = "pass"
violate = "pass"

[[class]]
name = "roce_ecn"
exceed = "ecn"

[[class]]
name = "https_remark"
exceed = "remark"
remark_dscp = 10

[[class]]
name = "icmp_drop"
exceed = "drop"

[[class]]
name = "uet_ecn"
exceed = "ecn"

[[class]]
name = "entropy"
exceed = "pass"

[[class]]
name = "tcp_green"
rate = "100Gbit"
burst = "64MiB"
dscp = 46

# Ahead of RoCE and UET: the source ports of their corpus frames, which a sprayed
# connection's packet never matches (its source port is entropy); a UET packet whose PDS
# header is cut short is keyed on its 5-tuple and does.
[[rule]]
class = "entropy"
protocol = "udp"
src_port = "49152-49299"

[[rule]]
class = "cnp"
protocol = "udp"
dst_port = 4791
roce_opcode = "cnp"

[[rule]]
class = "roce_ecn"
protocol = "udp"
dst_port = 4791

[[rule]]
class = "uet_ecn"
protocol = "udp"
dst_port = 4793

[[rule]]
class = "https_remark"
protocol = "tcp"
dst_port = 443

[[rule]]
class = "icmp_drop"
protocol = "icmp"

[[rule]]
class = "tcp_green"
protocol = "tcp"
"#;

/// What a class must do to a packet with DS field `tos`: the verdict and the new DS field.
fn expected_action(class: &str, tos: u8) -> (u32, u8) {
    let ecn = tos & 0b11;
    match class {
        "default" | "cnp" | "entropy" => (XDP_PASS, tos),
        "roce_ecn" | "uet_ecn" if ecn == 0 => (XDP_DROP, tos),
        "roce_ecn" | "uet_ecn" => (XDP_PASS, tos | 0b11),
        "https_remark" => (XDP_PASS, (10 << 2) | ecn),
        "icmp_drop" => (XDP_DROP, tos),
        "tcp_green" => (XDP_PASS, (46 << 2) | ecn),
        other => panic!("no expectation for class {other}"),
    }
}

struct Snapshot {
    classes: Vec<ClassCounters>,
    iface: IfaceCounters,
    spray_unkeyed: u64,
}

fn snapshot(dp: &Dataplane, classes: usize) -> Snapshot {
    Snapshot {
        classes: (0..classes as u32)
            .map(|c| dp.class_counters(0, c).expect("class counters"))
            .collect(),
        iface: dp.iface_counters(0).expect("iface counters"),
        spray_unkeyed: dp.spray_unkeyed(0).expect("spray counter"),
    }
}

fn check_parsed(
    prog: &Xdp,
    dp: &Dataplane,
    policy: &Policy,
    name: &str,
    frame: &[u8],
    meta: &ExpectedMeta,
) {
    let class = first_match(&policy.rules, &meta.to_meta(), 0).unwrap_or(policy.default_class);
    let class_name = &policy.classes[class as usize].name;
    let (verdict, tos) = expected_action(class_name, meta.tos);
    let before = snapshot(dp, policy.classes.len());
    let run = run_once(prog, frame);
    let after = snapshot(dp, policy.classes.len());
    let ctx = format!("{name} (class {class_name})");

    assert_eq!(run.action, verdict, "{ctx}: verdict");
    for (id, (b, a)) in before.classes.iter().zip(&after.classes).enumerate() {
        let want = u64::from(id as u32 == class);
        assert_eq!(a.packets - b.packets, want, "{ctx}: packets of class {id}");
        assert_eq!(
            a.bytes - b.bytes,
            want * frame.len() as u64,
            "{ctx}: bytes of class {id}"
        );
    }
    let (b, a) = (
        &before.classes[class as usize],
        &after.classes[class as usize],
    );
    assert_eq!(
        a.dropped_packets - b.dropped_packets,
        u64::from(verdict == XDP_DROP),
        "{ctx}: drops"
    );
    let marked = verdict == XDP_PASS && tos & 0b11 == 0b11 && meta.tos & 0b11 != 0b11;
    assert_eq!(
        a.ecn_marked_packets - b.ecn_marked_packets,
        u64::from(marked),
        "{ctx}: ECN marks"
    );
    let remarked = verdict == XDP_PASS && tos >> 2 != meta.tos >> 2;
    assert_eq!(
        a.remarked_packets - b.remarked_packets,
        u64::from(remarked),
        "{ctx}: remarks"
    );
    assert_eq!(
        after.spray_unkeyed - before.spray_unkeyed,
        u64::from(meta.spray_unkeyed),
        "{ctx}: a UET header cut short is counted"
    );
    let drop_reason = match (verdict, class_name.as_str()) {
        (XDP_DROP, "roce_ecn" | "uet_ecn") => Some(Reason::EcnNotCapable),
        (XDP_DROP, _) => Some(Reason::PolicyDrop),
        _ => None,
    };
    for r in Reason::ALL {
        let want = u64::from(Some(r) == drop_reason);
        let got = after.iface.reasons[r as usize] - before.iface.reasons[r as usize];
        assert_eq!(got, want, "{ctx}: reason {}", r.label());
    }

    if verdict == XDP_PASS {
        let out = &run.output;
        assert_eq!(out.len(), frame.len(), "{ctx}: frame length kept");
        let v6 = meta.family == Family::V6;
        assert_eq!(
            tos_of(out, meta.l3_offset, v6),
            tos,
            "{ctx}: DS field written"
        );
        // Every other byte is untouched, but for the IPv4 checksum, which must verify.
        let changed: Vec<usize> = (0..frame.len()).filter(|&i| out[i] != frame[i]).collect();
        let allowed: &[usize] = if v6 {
            &[meta.l3_offset, meta.l3_offset + 1]
        } else {
            &[meta.l3_offset + 1, meta.l3_offset + 10, meta.l3_offset + 11]
        };
        assert!(
            changed.iter().all(|i| allowed.contains(i)),
            "{ctx}: bytes {changed:?} changed"
        );
        if !v6 {
            assert!(
                ipv4_header_checksum_ok(out, meta.l3_offset),
                "{ctx}: IPv4 checksum after rewrite"
            );
        }
    }
}

/// Shorter than an Ethernet header: no NIC or veth hands such a frame to XDP, and
/// BPF_PROG_TEST_RUN refuses it too (the parser's answer is checked on the host).
const ETH_HLEN: usize = 14;

fn check_rejected(
    prog: &Xdp,
    dp: &Dataplane,
    policy: &Policy,
    name: &str,
    frame: &[u8],
    reason: Reason,
) {
    if frame.len() < ETH_HLEN {
        assert!(
            try_run_once(prog, frame).is_err(),
            "{name}: the kernel refuses a {}-byte frame",
            frame.len()
        );
        return;
    }
    let before = snapshot(dp, policy.classes.len());
    let run = run_once(prog, frame);
    let after = snapshot(dp, policy.classes.len());
    assert_eq!(
        run.action, XDP_PASS,
        "{name}: unparseable frames go to the kernel"
    );
    assert_eq!(run.output, frame, "{name}: and are not modified");
    for r in Reason::ALL {
        let want = u64::from(r == reason);
        let got = after.iface.reasons[r as usize] - before.iface.reasons[r as usize];
        assert_eq!(got, want, "{name}: reason {}", r.label());
    }
    let classified: u64 = after.classes.iter().map(|c| c.packets).sum::<u64>()
        - before.classes.iter().map(|c| c.packets).sum::<u64>();
    assert_eq!(classified, 0, "{name}: not counted in any class");
}

#[test]
fn corpus_through_the_kernel() {
    let (dp, policy) = load_policy(POLICY);
    let prog = dp.program().expect("program");
    let cases = corpus();
    assert!(cases.len() >= 40, "corpus has {} frames", cases.len());
    let mut seen_classes = std::collections::BTreeSet::new();
    for case in &cases {
        match &case.expect {
            Expect::Parsed(meta) => {
                let class =
                    first_match(&policy.rules, &meta.to_meta(), 0).unwrap_or(policy.default_class);
                seen_classes.insert(class);
                check_parsed(prog, &dp, &policy, case.name, &case.frame, meta);
            }
            Expect::Rejected(reason) => {
                check_rejected(prog, &dp, &policy, case.name, &case.frame, *reason)
            }
        }
    }
    assert_eq!(
        seen_classes.len(),
        policy.classes.len(),
        "the corpus exercises every class"
    );
}

#[test]
fn packets_pass_unclassified_before_a_policy_is_applied() {
    dataplane_lab::kernel::require_root();
    let dp = Dataplane::load().expect("load");
    let prog = dp.program().expect("program");
    let case = corpus()
        .into_iter()
        .find(|c| matches!(c.expect, Expect::Parsed(_)))
        .expect("a valid frame");
    let run = run_once(prog, &case.frame);
    assert_eq!(run.action, XDP_PASS);
    assert_eq!(run.output, case.frame);
    let iface = dp.iface_counters(0).expect("counters");
    assert_eq!(iface.reasons[Reason::NoPolicy as usize], 1);
}

#[test]
fn every_reason_has_a_distinct_metric_label() {
    let labels: std::collections::BTreeSet<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), Reason::ALL.len());
    assert!(labels.iter().all(|l| l
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
}
