//! Host and kernel agree: the same frames go through the host parser and the naive
//! first-match classifier, and through the real program (BPF_PROG_TEST_RUN); verdict, class
//! and reason must be identical (a rule on the source ports of the corpus's RoCEv2 and UET
//! frames checks both leave a sprayed connection's entropy out of classification). The frames: every corpus frame truncated at every byte,
//! random byte mutations of the corpus, and random bytes behind an IPv4 or IPv6 Ethernet
//! header. Shared by the differential test (CI) and `cargo xtask bench`.

use crate::{frames::corpus, kernel::try_run_once, rng::Rng};
use dataplane::{config::Policy, dataplane::Dataplane};
use dataplane_common::{classify::first_match, packet::parse, reason::Reason};

const XDP_PASS: u32 = 2;
/// BPF_PROG_TEST_RUN frames arrive on loopback, an unregistered interface (slot 0).
const SLOT: u32 = 0;

/// Rules on every field the classifier knows, in classes that pass every colour (so the
/// verdict of a classified frame is always "pass" and the class is its only trace).
pub const POLICY: &str = r#"
[[class]]
name = "default"
[[class]]
name = "cnp"
[[class]]
name = "roce"
[[class]]
name = "web"
[[class]]
name = "expedited"
[[class]]
name = "lab"
[[class]]
name = "icmp"
[[class]]
name = "uet"
[[class]]
name = "entropy"

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
class = "roce"
protocol = "udp"
dst_port = 4791
[[rule]]
class = "uet"
protocol = "udp"
dst_port = 4793
[[rule]]
class = "web"
protocol = "tcp"
dst_port = "80-443"
[[rule]]
class = "expedited"
dscp = 46
[[rule]]
class = "lab"
src = "198.18.0.0/16"
dst = "198.19.0.0/16"
protocol = "udp"
[[rule]]
class = "lab"
dst = "2001:db8::/48"
src_port = "40000-40010"
[[rule]]
class = "icmp"
protocol = "icmp"
[[rule]]
class = "icmp"
protocol = "icmpv6"
"#;

/// At least `count` frames: every truncation of every corpus frame, then mutations and
/// random bytes in equal shares (none shorter than an Ethernet header: the kernel refuses
/// those before the program runs).
pub fn frames(count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0xd1ff_e4e7_1a15_0001);
    let cases = corpus();
    let mut out = Vec::new();
    let truncations: usize = cases.iter().map(|c| c.frame.len().saturating_sub(13)).sum();
    let rest = count.saturating_sub(truncations);
    let mutations_per_frame = (rest / 2).div_ceil(cases.len().max(1));

    for case in &cases {
        for len in 14..=case.frame.len() {
            out.push(case.frame[..len].to_vec());
        }
        for _ in 0..mutations_per_frame {
            let mut f = case.frame.clone();
            if f.len() <= 14 {
                continue;
            }
            for _ in 0..1 + rng.below(4) as usize {
                // Past the MAC addresses: they only matter to forwarding.
                let at = 12 + rng.below((f.len() - 12) as u32) as usize;
                f[at] = rng.next_u64() as u8;
            }
            out.push(f);
        }
    }
    // Random frames make up the rest, behind an IPv4 or IPv6 EtherType and, six times in
    // seven, the version nibble (and IPv4 header length) that gets them past the first check.
    let mut i = 0usize;
    while out.len() < count {
        i += 1;
        let v4 = i.is_multiple_of(2);
        let len = 14 + rng.below(120) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let ethertype: u16 = if v4 { 0x0800 } else { 0x86dd };
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        if len > 14 && !i.is_multiple_of(7) {
            f[14] = if v4 { 0x45 } else { 0x60 };
        }
        out.push(f);
    }
    out
}

/// (class packet counters, reason counters, sprayed packets keyed on their 5-tuple) on
/// slot 0.
fn counters(dp: &Dataplane, classes: u32) -> (Vec<u64>, Vec<u64>, u64) {
    let per_class = (0..classes)
        .map(|c| dp.class_counters(SLOT, c).expect("class counters").packets)
        .collect();
    let reasons = dp
        .iface_counters(SLOT)
        .expect("iface counters")
        .reasons
        .to_vec();
    let unkeyed = dp.spray_unkeyed(SLOT).expect("spray counter");
    (per_class, reasons, unkeyed)
}

/// How many frames the host and the kernel treated alike.
#[derive(Clone, Copy, Debug)]
pub struct Agreement {
    /// Frames both classified into the same class and passed.
    pub classified: usize,
    /// Frames both refused for the same reason and passed.
    pub refused: usize,
}

/// Runs `frames` through `dp` (with `policy` applied, every class passing) and the host
/// reference; the first disagreement as an error.
pub fn check(dp: &Dataplane, policy: &Policy, frames: &[Vec<u8>]) -> Result<Agreement, String> {
    let classes = policy.classes.len() as u32;
    let prog = dp.program().map_err(|e| e.to_string())?;
    let mut agreement = Agreement {
        classified: 0,
        refused: 0,
    };
    let mut before = counters(dp, classes);
    for (i, frame) in frames.iter().enumerate() {
        let parsed = parse(frame.as_slice());
        let host_unkeyed = parsed.as_ref().is_ok_and(|meta| meta.spray_unkeyed);
        let host = parsed
            .map(|meta| first_match(&policy.rules, &meta, SLOT).unwrap_or(policy.default_class));
        let run = try_run_once(prog, frame).map_err(|e| e.to_string())?;
        let after = counters(dp, classes);
        let class_deltas: Vec<u64> = after.0.iter().zip(&before.0).map(|(a, b)| a - b).collect();
        let reason_deltas: Vec<(Reason, u64)> = after
            .1
            .iter()
            .zip(&before.1)
            .zip(Reason::ALL)
            .filter(|((a, b), _)| a != b)
            .map(|((a, b), r)| (r, a - b))
            .collect();
        let kernel_class = class_deltas.iter().position(|d| *d == 1);
        let kernel_unkeyed = after.2 - before.2;
        let agree = run.action == XDP_PASS
            && kernel_unkeyed == u64::from(host_unkeyed)
            && match host {
                Ok(class) => {
                    class_deltas.iter().sum::<u64>() == 1
                        && kernel_class == Some(class as usize)
                        && reason_deltas.is_empty()
                }
                Err(reason) => {
                    class_deltas.iter().all(|d| *d == 0) && reason_deltas == [(reason, 1)]
                }
            };
        if !agree {
            return Err(format!(
                "frame {i} ({} bytes) {frame:02x?}: host says {host:?} (keyed on the 5-tuple \
                 for want of a connection: {host_unkeyed}); the kernel returned {} with class \
                 deltas {class_deltas:?}, reasons {reason_deltas:?} and {kernel_unkeyed} \
                 packets keyed on the 5-tuple for want of a connection",
                frame.len(),
                run.action
            ));
        }
        match host {
            Ok(_) => agreement.classified += 1,
            Err(_) => agreement.refused += 1,
        }
        before = after;
    }
    Ok(agreement)
}
