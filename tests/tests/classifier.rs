//! The classifier in the kernel against the naive first-match reference: random rule sets
//! and frames through BPF_PROG_TEST_RUN, generation switches over cached flows, 10 000 rules,
//! the flow cache turned off, and rules on the ingress interface.
//!
//! Every class passes every colour, so a frame's only trace is the packet counter of the
//! class it landed in: each run must raise exactly that counter by one and nothing else.

use std::{collections::HashSet, time::Instant};

use dataplane::{
    compile::CompiledPolicy,
    config::{ClassSpec, FlowCache, Policy},
    dataplane::{ifindex, Dataplane},
};
use dataplane_common::{
    action::ColourAction,
    classify::{first_match, Field, Prefix, Range, RuleSpec},
    maps::{FlowKey, IfaceCounters},
    packet::{ipproto, parse, Family, PacketMeta},
    MAX_RULES, ROCEV2_UDP_PORT, ROCE_OPCODE_CNP,
};
use dataplane_lab::{
    frames::Frame,
    kernel::{load_policy, require_root, run_once, stay_on_this_cpu},
    rng::Rng,
};

/// XDP_PASS: every class passes, so every frame must come back with it.
const XDP_PASS: u32 = 2;
/// Class of packets no rule matches in the generated policies.
const DEFAULT_CLASS: u32 = 0;
/// Iface slot BPF_PROG_TEST_RUN frames land in when loopback is not registered.
const UNREGISTERED: u32 = 0;
/// Classes of the random policies: the default plus 1..=6.
const RANDOM_CLASSES: u32 = 7;
/// First port of the small port universe of the random rules and frames.
const PORT_BASE: u16 = 1000;
/// Hosts per family in the random universe.
const HOSTS: u8 = 8;
/// RoCEv2 opcodes of the random frames: RC ones near 0 (where the rule ranges lie), a UD one
/// and CNP.
const FRAME_OPCODES: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 0x64, ROCE_OPCODE_CNP];
/// Seed of every generated rule set and frame list (the runs are reproducible).
const SEED: u64 = 0x5eed_c1a5_51f1_e400;

// ---- universe ----

/// Host `x` (0..HOSTS) of the IPv4 universe, inside 198.18.0.0/15.
fn v4_host(x: u8) -> [u8; 4] {
    [198, 18 + (x % 2), x / 2, 1 + x % 3]
}

/// Host `x` (0..HOSTS) of the IPv6 universe, inside 2001:db8::/32.
fn v6_host(x: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[5] = x / 2;
    a[8] = x % 2;
    a[15] = 1 + x % 3;
    a
}

fn prefix(family: Family, addr: [u8; 16], len: u8) -> Prefix {
    Prefix::new(family, addr, len)
}

/// A prefix around a host of the universe, so that rules nest and overlap.
fn random_prefix(rng: &mut Rng) -> Prefix {
    let x = rng.below(u32::from(HOSTS)) as u8;
    if rng.chance(50) {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&v4_host(x));
        prefix(Family::V4, addr, rng.pick(&[0, 8, 15, 16, 23, 24, 30, 32]))
    } else {
        prefix(
            Family::V6,
            v6_host(x),
            rng.pick(&[0, 32, 40, 47, 48, 64, 72, 127, 128]),
        )
    }
}

/// A range of width 1 to `max_width` starting in `base..base + spread`.
fn small_range(rng: &mut Rng, base: u32, spread: u32, max_width: u32) -> Range {
    let lo = base + rng.below(spread);
    Range {
        lo,
        hi: lo + rng.below(max_width),
    }
}

/// A random rule constraining a random handful of fields: mostly two to four, so that the
/// first match of a frame often lies past the first 64-rule word; one or none (a match-all
/// rule that shadows everything after it) rarely.
fn random_rule(rng: &mut Rng) -> RuleSpec {
    let constrained = match rng.below(100) {
        0 => 0,
        1..=4 => 1,
        5..=34 => 2,
        35..=74 => 3,
        _ => 4,
    };
    let mut fields = Field::ALL.to_vec();
    let mut rule = RuleSpec {
        class: 1 + rng.below(RANDOM_CLASSES - 1),
        ..RuleSpec::default()
    };
    let ports = |rng: &mut Rng| small_range(rng, u32::from(PORT_BASE), 12, 4);
    for _ in 0..constrained {
        let field = fields.swap_remove(rng.below(fields.len() as u32) as usize);
        match field {
            Field::SrcAddr => rule.src = Some(random_prefix(rng)),
            Field::DstAddr => rule.dst = Some(random_prefix(rng)),
            Field::Protocol => {
                rule.protocol = Some(if rng.chance(10) {
                    Range {
                        lo: u32::from(ipproto::ICMP),
                        hi: u32::from(ipproto::UDP),
                    }
                } else {
                    Range::one(u32::from(rng.pick(&[
                        ipproto::TCP,
                        ipproto::UDP,
                        ipproto::ICMP,
                        ipproto::ICMPV6,
                    ])))
                })
            }
            Field::SrcPort => rule.src_ports = Some(ports(rng)),
            Field::DstPort => {
                rule.dst_ports = Some(if rng.chance(20) {
                    Range::one(u32::from(ROCEV2_UDP_PORT))
                } else {
                    ports(rng)
                })
            }
            Field::Dscp => rule.dscp = Some(small_range(rng, 0, 6, 3)),
            // Slot 0 is never a rule's interface: these rules must never match here.
            Field::Iface => rule.iface = Some(Range { lo: 1, hi: 2 }),
            Field::RoceOpcode => {
                rule.roce_opcode = Some(match rng.below(4) {
                    0 => Range::one(u32::from(ROCE_OPCODE_CNP)),
                    1 => Range { lo: 0x00, hi: 0x1f },
                    _ => small_range(rng, 0, 6, 3),
                })
            }
        }
    }
    rule
}

fn random_rules(rng: &mut Rng, n: usize) -> Vec<RuleSpec> {
    (0..n).map(|_| random_rule(rng)).collect()
}

/// A class that passes every colour and has no rates: nothing is ever dropped or rewritten.
fn passing_class(id: u32) -> ClassSpec {
    ClassSpec {
        name: format!("c{id}"),
        priority: 0,
        rate_bytes_per_sec: 0,
        ceil_bytes_per_sec: None,
        burst_bytes: 0,
        ceil_burst_bytes: 0,
        conform: ColourAction::PASS,
        exceed: ColourAction::PASS,
        violate: ColourAction::PASS,
        aqm: None,
        tcp_window: false,
        flow_fairness: false,
        fleet_budget: false,
    }
}

fn policy(rules: Vec<RuleSpec>, classes: u32) -> Policy {
    Policy {
        classes: (0..classes).map(passing_class).collect(),
        default_class: DEFAULT_CLASS,
        rules,
        interfaces: Vec::new(),
        flow_cache: FlowCache::On,
    }
}

/// A valid frame of the universe: IPv4 or IPv6, TCP/UDP/ICMP, RoCEv2, fragments (first and
/// later), extension headers, VLAN tags, any DSCP/ECN.
fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(50);
    let (s, d) = (
        rng.below(u32::from(HOSTS)) as u8,
        rng.below(u32::from(HOSTS)) as u8,
    );
    let mut f = Frame::eth();
    if rng.chance(10) {
        f = f.vlan(0x8100, 1 + rng.below(100) as u16);
    }
    f = if v6 {
        f.ipv6(v6_host(s), v6_host(d))
    } else {
        f.ipv4(v4_host(s), v4_host(d))
    };
    f = f.tos(((rng.below(6) as u8) << 2) | rng.below(4) as u8);
    let port = |rng: &mut Rng| PORT_BASE + rng.below(14) as u16;
    let (sp, dp) = (port(rng), port(rng));
    f = match rng.below(8) {
        0 | 1 => f.tcp(sp, dp),
        2 | 3 => f.udp(sp, dp),
        4 => f
            .udp(sp, ROCEV2_UDP_PORT)
            .roce_bth(rng.pick(&FRAME_OPCODES)),
        5 if v6 => f.icmpv6(),
        5 => f.icmp(),
        // A non-first fragment: only its L3 fields count.
        6 if v6 => f.ext_fragment(185, rng.chance(50)).udp(sp, dp),
        6 => f.fragment(185, rng.chance(50)).tcp(sp, dp),
        // A first fragment (ports present) or an extension chain.
        _ if v6 => f.ext_hop_by_hop().ext_dest_opts().tcp(sp, dp),
        _ => f.fragment(0, true).udp(sp, dp),
    };
    f.payload(rng.below(48) as usize).build()
}

// ---- kernel probes ----

/// Packet counters of classes `0..classes` on `iface_slot`.
fn class_packets(dp: &Dataplane, iface_slot: u32, classes: u32) -> Vec<u64> {
    (0..classes)
        .map(|c| {
            dp.class_counters(iface_slot, c)
                .expect("class counters")
                .packets
        })
        .collect()
}

fn iface(dp: &Dataplane, iface_slot: u32) -> IfaceCounters {
    dp.iface_counters(iface_slot).expect("iface counters")
}

/// Runs `frame` once and returns the class whose counter on `iface_slot` went up, after
/// checking that exactly one class (of `0..classes`) went up by exactly one, that the frame
/// passed, and that no reason (classifier miss, parse error, drop) was counted.
fn run_class(dp: &Dataplane, iface_slot: u32, classes: u32, frame: &[u8]) -> u32 {
    let before = class_packets(dp, iface_slot, classes);
    let reasons_before = iface(dp, iface_slot).reasons;
    let run = run_once(dp.program().expect("program"), frame);
    let after = class_packets(dp, iface_slot, classes);
    let reasons_after = iface(dp, iface_slot).reasons;
    assert_eq!(
        run.action, XDP_PASS,
        "every class passes, yet the verdict is {}",
        run.action
    );
    assert_eq!(
        reasons_after, reasons_before,
        "a reason was counted (index = Reason) for frame {frame:02x?}"
    );
    let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let sum: u64 = deltas.iter().sum();
    assert_eq!(
        sum, 1,
        "exactly one packet must be counted over all classes on iface slot {iface_slot}; \
         per-class deltas {deltas:?}"
    );
    deltas
        .iter()
        .position(|&d| d == 1)
        .expect("the counted class") as u32
}

/// What the naive reference says about a frame.
struct Expected {
    meta: PacketMeta,
    class: u32,
}

fn expected(rules: &[RuleSpec], frame: &[u8], iface_slot: u32) -> Expected {
    let meta = parse(frame).expect("generated frames parse");
    Expected {
        meta,
        class: first_match(rules, &meta, iface_slot).unwrap_or(DEFAULT_CLASS),
    }
}

/// Runs every frame once, checks its class against first match, and returns how many flow
/// cache (hits, misses) the pass counted on slot 0.
fn classify_pass(
    dp: &Dataplane,
    what: &str,
    compiled: &CompiledPolicy,
    rules: &[RuleSpec],
    classes: u32,
    frames: &[Vec<u8>],
) -> (u64, u64) {
    let start = iface(dp, UNREGISTERED);
    for (i, frame) in frames.iter().enumerate() {
        let want = expected(rules, frame, UNREGISTERED);
        let got = run_class(dp, UNREGISTERED, classes, frame);
        assert_eq!(
            got,
            want.class,
            "{what}, frame {i}: the kernel chose class {got}, first match says {} (host \
             tables say {:?}); packet {:?}; matching rules: {:?}",
            want.class,
            compiled.tables.classify(&want.meta, UNREGISTERED),
            want.meta,
            rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches(&want.meta, UNREGISTERED))
                .take(4)
                .collect::<Vec<_>>(),
        );
    }
    let end = iface(dp, UNREGISTERED);
    (
        end.flow_cache_hits - start.flow_cache_hits,
        end.flow_cache_misses - start.flow_cache_misses,
    )
}

fn distinct_flows(frames: &[Vec<u8>], iface_slot: u8) -> usize {
    frames
        .iter()
        .map(|f| FlowKey::of(&parse(f.as_slice()).expect("parses"), iface_slot))
        .collect::<HashSet<_>>()
        .len()
}

/// A fresh dataplane, on a thread that stays on its CPU: every test here counts flow-cache
/// hits and misses, which are per CPU.
fn load() -> Dataplane {
    require_root();
    stay_on_this_cpu();
    Dataplane::load().expect("the XDP object loads and passes the verifier")
}

// ---- tests ----

/// Eight random rule sets (0 to 200 rules, across 64-rule word boundaries) applied one after
/// the other on one dataplane; the same frames run twice under each: the first pass meets
/// flows cached under the previous generation (they must be reclassified), the second is
/// served from the cache. Every frame must land in first match's class each time.
#[test]
fn kernel_agrees_with_first_match_on_random_rule_sets() {
    let mut dp = load();
    let mut rng = Rng(SEED);
    let frames: Vec<Vec<u8>> = (0..240).map(|_| random_frame(&mut rng)).collect();
    let flows = distinct_flows(&frames, UNREGISTERED as u8) as u64;
    let mut seen_classes = HashSet::new();
    let mut deep_matches = 0;
    let mut generation = dp.generation().expect("generation");
    assert_eq!(generation, 0, "a fresh dataplane has no policy");
    for (set, size) in [200, 17, 129, 0, 65, 1, 192, 64].into_iter().enumerate() {
        let rules = random_rules(&mut rng, size);
        let compiled = CompiledPolicy::new(&policy(rules.clone(), RANDOM_CLASSES));
        let applied = dp.apply(&compiled).expect("apply");
        assert_eq!(applied, generation + 1, "set {set}: generations count up");
        generation = dp.generation().expect("generation");
        assert_eq!(generation, applied, "set {set}: the new generation is live");
        let mut histogram = [0usize; RANDOM_CLASSES as usize];
        for frame in &frames {
            let class = expected(&rules, frame, UNREGISTERED).class;
            seen_classes.insert(class);
            histogram[class as usize] += 1;
        }
        let deep = frames
            .iter()
            .filter(|f| {
                let meta = parse(f.as_slice()).expect("parses");
                rules
                    .iter()
                    .position(|r| r.matches(&meta, UNREGISTERED))
                    .is_some_and(|i| i >= 64)
            })
            .count();
        deep_matches += deep;
        eprintln!("set {set} ({size} rules): frames per class {histogram:?}, {deep} past rule 63");

        let what = format!("set {set} ({size} rules), first pass");
        let (hits, misses) = classify_pass(&dp, &what, &compiled, &rules, RANDOM_CLASSES, &frames);
        assert_eq!(
            (hits, misses),
            (frames.len() as u64 - flows, flows),
            "{what}: every distinct flow misses once (entries of older generations are \
             stale), repeats hit"
        );
        let what = format!("set {set} ({size} rules), second pass");
        let (hits, misses) = classify_pass(&dp, &what, &compiled, &rules, RANDOM_CLASSES, &frames);
        assert_eq!(
            (hits, misses),
            (frames.len() as u64, 0),
            "{what}: every flow is cached now"
        );
    }
    // The generator must exercise the classifier, not just the default class, and the scan
    // past the first word of the rule vectors.
    assert_eq!(
        seen_classes.len(),
        RANDOM_CLASSES as usize,
        "the random sets should reach every class and the default, saw {seen_classes:?}"
    );
    assert!(
        deep_matches >= 40,
        "only {deep_matches} frames first-matched a rule past index 63"
    );
    eprintln!(
        "{} frames ({flows} flows) x 8 rule sets x 2 passes agree with first match",
        frames.len()
    );
}

/// Classes of the 10 000-rule policy: the default plus 1..=8.
const BIG_CLASSES: u32 = 9;
const BIG_RULES: u32 = 10_000;
const BIG_PORT_BASE: u32 = 10_000;

/// Rule i: udp dst_port 10000 + i -> class 1 + i % 8, except every 100th (from 7) which
/// takes UDP from 198.18.(i / 100).0/24 on any port, and every 100th from 57 which takes
/// anything to 2001:db8:0:(i / 100)::/64.
fn big_rules() -> Vec<RuleSpec> {
    (0..BIG_RULES)
        .map(|i| {
            let class = 1 + i % 8;
            match i % 100 {
                7 => {
                    let mut addr = [0; 16];
                    addr[..4].copy_from_slice(&[198, 18, (i / 100) as u8, 0]);
                    RuleSpec {
                        class,
                        src: Some(prefix(Family::V4, addr, 24)),
                        protocol: Some(Range::one(u32::from(ipproto::UDP))),
                        ..RuleSpec::default()
                    }
                }
                57 => {
                    let mut addr = v6_host(0);
                    addr[7] = (i / 100) as u8;
                    RuleSpec {
                        class,
                        dst: Some(prefix(Family::V6, addr, 64)),
                        ..RuleSpec::default()
                    }
                }
                _ => RuleSpec {
                    class,
                    protocol: Some(Range::one(u32::from(ipproto::UDP))),
                    dst_ports: Some(Range::one(BIG_PORT_BASE + i)),
                    ..RuleSpec::default()
                },
            }
        })
        .collect()
}

/// A frame aimed at the 10 000-rule policy: mostly UDP to a port of the rule range (some
/// beyond it), from a source some prefix rule may cover, or IPv6 to a covered /64.
fn big_frame(rng: &mut Rng) -> Vec<u8> {
    let port = (BIG_PORT_BASE + rng.below(BIG_RULES + BIG_RULES / 20)) as u16;
    let sport = 40_000 + rng.below(1000) as u16;
    if rng.chance(25) {
        let mut dst = v6_host(0);
        dst[7] = rng.below(110) as u8;
        dst[15] = rng.below(250) as u8;
        let f = Frame::eth().ipv6(v6_host(1), dst);
        return if rng.chance(50) {
            f.udp(sport, port)
        } else {
            f.tcp(sport, port)
        }
        .build();
    }
    // Most sources lie in 198.19/16, outside every prefix rule.
    let src = [
        198,
        18 + u8::from(rng.chance(70)),
        rng.below(110) as u8,
        1 + rng.below(250) as u8,
    ];
    let f = Frame::eth().ipv4(src, [198, 19, 255, 2]);
    if rng.chance(85) {
        f.udp(sport, port)
    } else {
        f.tcp(sport, port)
    }
    .build()
}

/// 10 000 rules compile, apply (in both generation slots) and classify in the kernel: sampled
/// frames land in first match's class; each new flow misses the cache once, then hits.
#[test]
fn ten_thousand_rules_classify_in_the_kernel() {
    let mut dp = load();
    let rules = big_rules();
    assert!(rules.len() <= MAX_RULES);
    let policy = policy(rules.clone(), BIG_CLASSES);
    let t = Instant::now();
    let compiled = CompiledPolicy::new(&policy);
    let compile_time = t.elapsed();
    assert_eq!(compiled.tables.rule_classes.len(), BIG_RULES as usize);

    let mut rng = Rng(SEED ^ 0x10_000);
    let mut keys = HashSet::new();
    let mut frames = Vec::new();
    while frames.len() < 200 {
        let frame = big_frame(&mut rng);
        let key = FlowKey::of(&parse(frame.as_slice()).expect("parses"), 0);
        if keys.insert(key) {
            frames.push(frame);
        }
    }
    let reached: HashSet<u32> = frames
        .iter()
        .map(|f| expected(&rules, f, UNREGISTERED).class)
        .collect();
    assert_eq!(
        reached.len(),
        BIG_CLASSES as usize,
        "the samples should reach every class and the default, saw {reached:?}"
    );
    let prefix_hits = frames
        .iter()
        .filter(|f| {
            let meta = parse(f.as_slice()).expect("parses");
            rules
                .iter()
                .position(|r| r.matches(&meta, UNREGISTERED))
                .is_some_and(|i| i % 100 == 7 || i % 100 == 57)
        })
        .count();
    assert!(
        prefix_hits >= 10,
        "the samples should exercise the prefix rules, {prefix_hits} did"
    );

    for round in 1..=2u32 {
        let before = dp.generation().expect("generation");
        let t = Instant::now();
        let generation = dp.apply(&compiled).expect("10 000 rules apply");
        let apply_time = t.elapsed();
        eprintln!(
            "10 000 rules, {} distinct vectors: compile {compile_time:?}, apply #{round} \
             {apply_time:?}",
            compiled.tables.vectors.len()
        );
        assert!(
            generation > before,
            "apply #{round}: generation {generation} after {before}"
        );
        assert_eq!(dp.generation().expect("generation"), generation);
        assert_eq!(generation, round);

        for (i, frame) in frames.iter().enumerate() {
            let want = expected(&rules, frame, UNREGISTERED);
            for run in ["miss", "hit"] {
                let start = iface(&dp, UNREGISTERED);
                let got = run_class(&dp, UNREGISTERED, BIG_CLASSES, frame);
                let end = iface(&dp, UNREGISTERED);
                assert_eq!(
                    got, want.class,
                    "apply #{round}, frame {i} ({run}): kernel class {got}, first match {} \
                     for {:?}",
                    want.class, want.meta
                );
                let counted = (
                    end.flow_cache_hits - start.flow_cache_hits,
                    end.flow_cache_misses - start.flow_cache_misses,
                );
                let want_counted = if run == "miss" { (0, 1) } else { (1, 0) };
                assert_eq!(
                    counted, want_counted,
                    "apply #{round}, frame {i}: (hits, misses) counted by the {run} run"
                );
            }
        }
    }
}

/// With the flow cache off, every packet goes through the rule tables (a miss each), none is
/// a hit, and classification still follows first match.
#[test]
fn flow_cache_off_classifies_every_packet() {
    let mut dp = load();
    let mut rng = Rng(SEED ^ 0xcac4e);
    let rules = random_rules(&mut rng, 150);
    let mut compiled = CompiledPolicy::new(&policy(rules.clone(), RANDOM_CLASSES));
    compiled.flow_cache = false;
    dp.apply(&compiled).expect("apply");
    let frames: Vec<Vec<u8>> = (0..200).map(|_| random_frame(&mut rng)).collect();
    let reached: HashSet<u32> = frames
        .iter()
        .map(|f| expected(&rules, f, UNREGISTERED).class)
        .collect();
    assert!(
        reached.len() >= 4,
        "the frames should reach several classes, saw {reached:?}"
    );
    for pass in ["first", "second"] {
        let (hits, misses) = classify_pass(
            &dp,
            &format!("cache off, {pass} pass"),
            &compiled,
            &rules,
            RANDOM_CLASSES,
            &frames,
        );
        assert_eq!(
            (hits, misses),
            (0, frames.len() as u64),
            "cache off, {pass} pass: (hits, misses)"
        );
    }
    assert_eq!(iface(&dp, UNREGISTERED).flow_cache_hits, 0);

    // The same policy with the cache on: the second pass hits (the counters can move).
    let mut cached = compiled.clone();
    cached.flow_cache = true;
    dp.apply(&cached).expect("apply");
    let flows = distinct_flows(&frames, UNREGISTERED as u8) as u64;
    let first = classify_pass(&dp, "cache on", &cached, &rules, RANDOM_CLASSES, &frames);
    let second = classify_pass(&dp, "cache on", &cached, &rules, RANDOM_CLASSES, &frames);
    assert_eq!(first, (frames.len() as u64 - flows, flows));
    assert_eq!(second, (frames.len() as u64, 0));
}

const IFACE_POLICY: &str = r#"
flow_cache = "on"

[[interface]]
name = "lo"

[[class]]
name = "default"
exceed = "pass"
violate = "pass"

[[class]]
name = "on_lo"
exceed = "pass"
violate = "pass"

[[class]]
name = "udp_any"
exceed = "pass"
violate = "pass"

[[rule]]
class = "on_lo"
iface = "lo"
protocol = "udp"

[[rule]]
class = "udp_any"
protocol = "udp"
"#;

fn udp_frame() -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(40_000, 5001)
        .build()
}

fn tcp_frame() -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .tcp(40_000, 5001)
        .build()
}

/// A rule on `iface = "lo"` matches BPF_PROG_TEST_RUN frames (ingress = loopback) once lo is
/// registered, counted under lo's slot; without registration they count under slot 0 and the
/// rule does not match; a policy whose first interface is absent gives lo slot 2.
#[test]
fn iface_rules_match_the_registered_ingress() {
    stay_on_this_cpu();
    let classes = 3;
    let (mut dp, p) = load_policy(IFACE_POLICY);
    let (on_lo, udp_any, default) = (
        p.class_id("on_lo").expect("on_lo"),
        p.class_id("udp_any").expect("udp_any"),
        p.class_id("default").expect("default"),
    );
    assert_eq!(p.rules[0].iface, Some(Range::one(1)), "lo is slot 1");
    let udp = udp_frame();

    // Before registration: slot 0, the iface rule cannot match. The flow is now cached
    // under slot 0.
    assert_eq!(run_class(&dp, 0, classes, &udp), udp_any);
    assert_eq!(class_packets(&dp, 1, classes), vec![0; classes as usize]);

    let missing = dp.register_interfaces(&p, &[]).expect("register");
    assert!(missing.is_empty(), "lo exists: {missing:?}");
    let slot0 = class_packets(&dp, 0, classes);
    for run in 0..2 {
        assert_eq!(
            run_class(&dp, 1, classes, &udp),
            on_lo,
            "run {run}: lo is registered as slot 1, the iface rule matches"
        );
        assert_eq!(
            run_class(&dp, 1, classes, &tcp_frame()),
            default,
            "run {run}: the iface rule still needs udp"
        );
    }
    assert_eq!(
        class_packets(&dp, 0, classes),
        slot0,
        "nothing counts under slot 0 once lo is registered"
    );
    let lo = iface(&dp, 1);
    assert_eq!(
        (lo.flow_cache_hits, lo.flow_cache_misses),
        (2, 2),
        "two flows on slot 1, each missed once then hit"
    );
    let meta = parse(udp.as_slice()).expect("parses");
    assert_eq!(first_match(&p.rules, &meta, 1), Some(on_lo));
    assert_eq!(first_match(&p.rules, &meta, 0), Some(udp_any));

    // A second dataplane with the same policy where lo is never registered.
    let (dp2, _) = load_policy(IFACE_POLICY);
    for run in 0..2 {
        assert_eq!(
            run_class(&dp2, 0, classes, &udp),
            udp_any,
            "run {run}: lo unregistered, the iface rule must not match"
        );
    }
    assert_eq!(class_packets(&dp2, 1, classes), vec![0; classes as usize]);
    assert_eq!(dp2.class_counters(0, on_lo).expect("counters").packets, 0);

    // lo second after an interface this host lacks: lo is slot 2, the absent one's rule
    // (slot 1) never matches.
    const ABSENT: &str = "dpt-absent0";
    assert_eq!(
        ifindex(ABSENT),
        None,
        "{ABSENT} must not exist on this host"
    );
    let toml = format!(
        r#"
flow_cache = "on"

[[interface]]
name = "{ABSENT}"

[[interface]]
name = "lo"

[[class]]
name = "default"
exceed = "pass"
violate = "pass"

[[class]]
name = "absent"
exceed = "pass"
violate = "pass"

[[class]]
name = "on_lo"
exceed = "pass"
violate = "pass"

[[rule]]
class = "absent"
iface = "{ABSENT}"

[[rule]]
class = "on_lo"
iface = "lo"
"#
    );
    let (mut dp3, p3) = load_policy(&toml);
    let missing = dp3.register_interfaces(&p3, &[]).expect("register");
    assert_eq!(missing, vec![ABSENT.to_string()]);
    let on_lo3 = p3.class_id("on_lo").expect("on_lo");
    assert_eq!(p3.rules[1].iface, Some(Range::one(2)));
    for frame in [udp_frame(), tcp_frame()] {
        assert_eq!(run_class(&dp3, 2, classes, &frame), on_lo3);
    }
    assert_eq!(class_packets(&dp3, 1, classes), vec![0; classes as usize]);
    assert_eq!(class_packets(&dp3, 0, classes), vec![0; classes as usize]);
}
