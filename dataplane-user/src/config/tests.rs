//! Policy file tests: defaults, the example files, round trips, and an error for each
//! refusal naming its field.

use dataplane_common::{
    action::ColourAction,
    classify::{Prefix, Range},
    packet::Family,
    MAX_CLASSES, MAX_RULES,
};

use super::*;

const ORIGIN: &str = "test.toml";

/// A minimal valid policy to extend.
const BASE: &str = r#"
[[class]]
name = "default"

[[class]]
name = "rdma"
priority = 6
rate = "40Gbit"
ceil = "50Gbit"
"#;

fn load(text: &str) -> Result<Policy, ConfigError> {
    Policy::from_toml_str(text, ORIGIN)
}

fn with_base(extra: &str) -> Result<Policy, ConfigError> {
    load(&format!("{BASE}\n{extra}"))
}

/// Asserts `result` fails naming the file, `field` and `reason_part`.
#[track_caller]
fn assert_err(result: Result<Policy, ConfigError>, field: &str, reason_part: &str) {
    let e = match result {
        Ok(p) => panic!("expected an error on {field}, got {p:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.starts_with(ORIGIN), "names the file: {msg}");
    assert_eq!(e.field(), Some(field), "field of: {msg}");
    assert!(msg.contains(field), "names the field {field}: {msg}");
    assert!(msg.contains(reason_part), "says `{reason_part}`: {msg}");
}

fn default_toml() -> &'static str {
    include_str!("../../../config/default.toml")
}

#[test]
fn minimal_policy_fills_defaults() {
    let p = with_base("").expect("valid");
    assert_eq!(p.default_class, 0);
    assert_eq!(p.class_id("rdma"), Some(1));
    assert_eq!(p.class_id("nope"), None);
    let d = &p.classes[0];
    assert_eq!(d.priority, 0);
    assert_eq!(d.rate_bytes_per_sec, 0);
    assert_eq!(d.ceil_bytes_per_sec, None);
    assert_eq!(d.burst_bytes, MIN_DEFAULT_BURST_BYTES);
    assert_eq!(d.ceil_burst_bytes, MIN_DEFAULT_BURST_BYTES);
    assert_eq!(d.conform, ColourAction::PASS);
    assert_eq!(d.exceed, ColourAction::PASS);
    assert_eq!(d.violate, ColourAction::DROP);
    let r = &p.classes[1];
    assert_eq!(r.rate_bytes_per_sec, 5_000_000_000);
    assert_eq!(r.ceil_bytes_per_sec, Some(6_250_000_000));
    assert_eq!(r.burst_bytes, 100_000_000, "20 ms of 40 Gbit/s");
    assert_eq!(r.ceil_burst_bytes, 125_000_000, "20 ms of 50 Gbit/s");
    assert!(p.rules.is_empty());
    assert!(p.interfaces.is_empty());
}

#[test]
fn default_policy_parses_with_the_ai_catalogue() {
    let p = load(default_toml()).expect("config/default.toml is valid");
    let names: Vec<&str> = p.classes.iter().map(|c| c.name.as_str()).collect();
    for want in [
        "roce_cnp",
        "rdma",
        "uet",
        "collective",
        "inference",
        "storage",
        "bulk",
        "default",
    ] {
        assert!(names.contains(&want), "class {want} in {names:?}");
    }
    let class = |name: &str| &p.classes[p.class_id(name).expect(name) as usize];
    assert_eq!(p.default_class, p.class_id("default").expect("default"));
    assert_eq!(class("roce_cnp").priority, 7);
    assert_eq!(class("roce_cnp").exceed, ColourAction::PASS);
    assert_eq!(
        class("roce_cnp").violate,
        ColourAction::PASS,
        "CNPs are never dropped"
    );
    assert_eq!(class("rdma").priority, 6);
    assert_eq!(class("rdma").exceed, ColourAction::ECN);
    assert_eq!(class("rdma").rate_bytes_per_sec, 5_000_000_000);
    assert_eq!(class("rdma").ceil_bytes_per_sec, Some(6_250_000_000));
    assert_eq!(class("uet").priority, 6);
    assert_eq!(class("uet").exceed, ColourAction::ECN);
    assert_eq!(class("collective").priority, 5);
    assert_eq!(class("inference").priority, 4);
    assert_eq!(class("storage").priority, 3);
    assert_eq!(class("bulk").priority, 1);
    assert_eq!(class("bulk").exceed, ColourAction::remark(8));
    assert_eq!(class("default").priority, 0);

    let cnp = p.class_id("roce_cnp").expect("cnp");
    let rdma = p.class_id("rdma").expect("rdma");
    assert_eq!(p.rules[0].class, cnp, "the CNP rule comes first");
    assert_eq!(p.rules[0].roce_opcode, Some(Range::one(0x81)));
    assert_eq!(p.rules[0].dst_ports, Some(Range::one(4791)));
    let first_rdma = p
        .rules
        .iter()
        .position(|r| r.class == rdma)
        .expect("rdma rule");
    assert!(first_rdma > 0, "the CNP rule precedes the RoCE data rule");
    assert_eq!(p.rules[first_rdma].dst_ports, Some(Range::one(4791)));
    let uet = p.class_id("uet").expect("uet");
    assert!(
        p.rules
            .iter()
            .any(|r| r.class == uet && r.dst_ports == Some(Range::one(4793))),
        "UET is matched by its UDP port"
    );
    let collective = p.class_id("collective").expect("collective");
    assert!(p
        .rules
        .iter()
        .any(|r| r.class == collective && r.dst.is_some()));
}

#[test]
fn default_policy_round_trips() {
    let p = load(default_toml()).expect("valid");
    let text = p.to_toml_string().expect("writable");
    assert_eq!(load(&text).expect("rewritten text is valid"), p, "{text}");
}

const FULL: &str = r#"
default_class = "other"

[[interface]]
name = "eth0"
link_rate = "100Gbit"
link_burst = "8MiB"
forward = true

[[interface]]
name = "eth1"
link_rate = "25Gbit"

[[class]]
name = "other"

[[class]]
name = "gold"
priority = 7
rate = "1.5Gbit"
ceil = "2Gbit"
burst = 100000
ceil_burst = "2MB"
dscp = 46
exceed = "remark"
violate = "ecn"
remark_dscp = 10

[[class]]
name = "scavenger"
priority = 1
ceil = "10Mbps"
exceed = "pass"
violate = "drop"

[[rule]]
class = "gold"
src = "198.18.0.0/15"
dst = "198.19.1.1"
protocol = "udp"
src_port = 4791
dst_port = "4791"
dscp = 26
iface = "eth1"
roce_opcode = "0x00-0x1f"

[[rule]]
class = "scavenger"
dst = "2001:db8::/32"
protocol = 6
dst_port = "8000-8002"
iface = "ib0"

[[rule]]
class = "gold"
protocol = "icmpv6"

[[rule]]
class = "gold"
protocol = 132
"#;

fn v4(addr: [u8; 4], len: u8) -> Prefix {
    Prefix::v4(addr, len)
}

#[test]
fn full_example_builds_the_expected_policy() {
    let p = load(FULL).expect("valid");
    let expected = Policy {
        classes: vec![
            ClassSpec {
                name: "other".into(),
                priority: 0,
                rate_bytes_per_sec: 0,
                ceil_bytes_per_sec: None,
                burst_bytes: 65536,
                ceil_burst_bytes: 65536,
                conform: ColourAction::PASS,
                exceed: ColourAction::PASS,
                violate: ColourAction::DROP,
                aqm: None,
                tcp_window: false,
                flow_fairness: false,
                fleet_budget: false,
            },
            ClassSpec {
                name: "gold".into(),
                priority: 7,
                rate_bytes_per_sec: 187_500_000,
                ceil_bytes_per_sec: Some(250_000_000),
                burst_bytes: 100_000,
                ceil_burst_bytes: 2_000_000,
                conform: ColourAction::remark(46),
                exceed: ColourAction::remark(10),
                violate: ColourAction::ECN,
                aqm: None,
                tcp_window: true,
                flow_fairness: true,
                fleet_budget: false,
            },
            ClassSpec {
                name: "scavenger".into(),
                priority: 1,
                rate_bytes_per_sec: 0,
                ceil_bytes_per_sec: Some(1_250_000),
                burst_bytes: 65536,
                ceil_burst_bytes: 65536,
                conform: ColourAction::PASS,
                exceed: ColourAction::PASS,
                violate: ColourAction::DROP,
                aqm: None,
                tcp_window: true,
                flow_fairness: true,
                fleet_budget: false,
            },
        ],
        default_class: 0,
        rules: vec![
            RuleSpec {
                class: 1,
                src: Some(v4([198, 18, 0, 0], 15)),
                dst: Some(v4([198, 19, 1, 1], 32)),
                protocol: Some(Range::one(17)),
                src_ports: Some(Range::one(4791)),
                dst_ports: Some(Range::one(4791)),
                dscp: Some(Range::one(26)),
                iface: Some(Range::one(2)),
                roce_opcode: Some(Range { lo: 0, hi: 0x1f }),
            },
            RuleSpec {
                class: 2,
                dst: Some(Prefix {
                    family: Family::V6,
                    addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    len: 32,
                }),
                protocol: Some(Range::one(6)),
                dst_ports: Some(Range { lo: 8000, hi: 8002 }),
                iface: Some(Range::one(3)),
                ..RuleSpec::default()
            },
            RuleSpec {
                class: 1,
                protocol: Some(Range::one(58)),
                ..RuleSpec::default()
            },
            RuleSpec {
                class: 1,
                protocol: Some(Range::one(132)),
                ..RuleSpec::default()
            },
        ],
        interfaces: vec![
            InterfaceSpec {
                name: "eth0".into(),
                link_rate_bytes_per_sec: Some(12_500_000_000),
                link_burst_bytes: 8 << 20,
                forward: true,
            },
            InterfaceSpec {
                name: "eth1".into(),
                link_rate_bytes_per_sec: Some(3_125_000_000),
                link_burst_bytes: 62_500_000,
                forward: false,
            },
            InterfaceSpec {
                name: "ib0".into(),
                link_rate_bytes_per_sec: None,
                link_burst_bytes: MIN_DEFAULT_BURST_BYTES,
                forward: false,
            },
        ],
        flow_cache: FlowCache::Auto,
    };
    assert_eq!(p, expected);
}

#[test]
fn full_example_round_trips_through_toml() {
    let p = load(FULL).expect("valid");
    let text = p.to_toml_string().expect("writable");
    let again = load(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, p, "{text}");
    assert_eq!(again.to_toml_string().expect("writable"), text, "stable");
}

#[test]
fn example_files_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let entries = std::fs::read_dir(&dir).expect("config/examples exists");
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n > 0, "at least one example");
    Policy::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml"))
        .expect("default.toml loads from disk");
}

/// What the state file keeps of a policy has no comments and means the same policy.
#[test]
fn a_policy_without_comments_is_the_same_policy() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
    let mut texts = vec![default_toml().to_string()];
    for entry in std::fs::read_dir(examples).expect("config/examples exists") {
        texts.push(std::fs::read_to_string(entry.expect("dir entry").path()).expect("read"));
    }
    for text in texts {
        let bare = without_comments(&text).expect("TOML");
        assert!(text.contains('#') && !bare.contains('#'), "{bare}");
        assert_eq!(load(&bare).expect("valid"), load(&text).expect("valid"));
    }
    assert_eq!(without_comments("[[class]"), None);
}

/// Only a regular file is read as a policy (a FIFO: `daemon.rs`).
#[test]
fn a_policy_is_read_from_a_regular_file_only() {
    let e = read_policy_text(Path::new("/dev/null")).expect_err("a device");
    assert!(
        e.to_string().contains("not a regular file (a device)"),
        "{e}"
    );
    let e = read_policy_text(Path::new("/")).expect_err("a directory");
    assert!(
        e.to_string().contains("not a regular file (a directory)"),
        "{e}"
    );
}

#[test]
fn missing_file_names_it() {
    let e = Policy::load(Path::new("/nonexistent/policy.toml")).expect_err("missing");
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/policy.toml"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_with_line_and_field() {
    let text = format!("{BASE}rat = \"1Gbit\"\n");
    let e = load(&text).expect_err("unknown key");
    let msg = e.to_string();
    assert!(
        matches!(e, ConfigError::Parse { line: Some(10), .. }),
        "{msg}"
    );
    assert_eq!(e.field(), Some("class[1].rat"), "{msg}");
    assert!(msg.starts_with("test.toml:10:"), "{msg}");
    assert!(msg.contains("unknown field `rat`"), "{msg}");

    let e = with_base("[[rule]]\nclass = \"rdma\"\nport = 1\n").expect_err("unknown key");
    assert_eq!(e.field(), Some("rule[0].port"), "{e}");
    let e = load(&format!("defualt_class = \"x\"\n{BASE}")).expect_err("top level");
    assert_eq!(e.field(), Some("defualt_class"), "{e}");
    let e = with_base("[[interface]]\nname = \"eth0\"\nspeed = 1\n").expect_err("iface");
    assert_eq!(e.field(), Some("interface[0].speed"), "{e}");
    let e = with_base("[[nope]]\n").expect_err("table");
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn type_and_syntax_errors_name_the_line() {
    let e = with_base("[[class]]\nname = \"x\"\npriority = \"high\"\n").expect_err("type");
    assert_eq!(e.field(), Some("class[2].priority"), "{e}");
    let e = with_base("[[class]]\nname = \"x\"\nexceed = \"explode\"\n").expect_err("action");
    assert_eq!(e.field(), Some("class[2].exceed"), "{e}");
    assert!(e.to_string().contains("explode"), "{e}");
    let e = with_base("[[rule]]\ndst_port = 1\n").expect_err("missing class");
    assert!(e.to_string().contains("missing field `class`"), "{e}");
    assert!(e.to_string().contains("rule[0]"), "{e}");
    let e = load("[[class]\nname = 1").expect_err("syntax");
    assert!(matches!(e, ConfigError::Parse { line: Some(1), .. }), "{e}");
}

#[test]
fn no_classes() {
    assert_err(load(""), "class", "no classes");
    assert_err(load("default_class = \"x\""), "class", "no classes");
}

#[test]
fn default_class_must_exist() {
    assert_err(
        load("[[class]]\nname = \"a\"\n"),
        "default_class",
        "no class is named \"default\"",
    );
    assert_err(
        load(&format!("default_class = \"gold\"\n{BASE}")),
        "default_class",
        "no class is named \"gold\"",
    );
    let p = load("default_class = \"a\"\n[[class]]\nname = \"a\"\n").expect("valid");
    assert_eq!(p.default_class, 0);
}

#[test]
fn duplicate_class_names() {
    assert_err(
        with_base("[[class]]\nname = \"rdma\"\n"),
        "class[2].name",
        "duplicate",
    );
}

#[test]
fn bad_class_names() {
    assert_err(
        with_base("[[class]]\nname = \"a b\"\n"),
        "class[2].name",
        "not a valid",
    );
    assert_err(
        with_base("[[class]]\nname = \"\"\n"),
        "class[2].name",
        "not a valid",
    );
    let long = "x".repeat(MAX_CLASS_NAME_LEN + 1);
    assert_err(
        with_base(&format!("[[class]]\nname = \"{long}\"\n")),
        "class[2].name",
        "1 to 32",
    );
    let ok = "x".repeat(MAX_CLASS_NAME_LEN);
    with_base(&format!("[[class]]\nname = \"{ok}\"\n")).expect("32 characters are fine");
}

#[test]
fn too_many_classes() {
    let mut text = String::from("[[class]]\nname = \"default\"\n");
    for i in 1..MAX_CLASSES {
        text.push_str(&format!("[[class]]\nname = \"c{i}\"\n"));
    }
    load(&text).expect("MAX_CLASSES classes are fine");
    text.push_str("[[class]]\nname = \"one_too_many\"\n");
    assert_err(load(&text), "class", "at most 256");
}

#[test]
fn priority_range() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\npriority = 8\n"),
        "class[2].priority",
        "0..=7",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\npriority = -1\n"),
        "class[2].priority",
        "0..=7",
    );
}

#[test]
fn bad_units() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"fast\"\n"),
        "class[2].rate",
        "a rate is",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = 40\n"),
        "class[2].rate",
        "no unit",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"-1Gbit\"\n"),
        "class[2].rate",
        "negative",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"0bit\"\n"),
        "class[2].rate",
        "zero",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nceil = \"1Gb\"\n"),
        "class[2].ceil",
        "unknown unit",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nburst = \"4M\"\n"),
        "class[2].burst",
        "a size is",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nburst = -5\n"),
        "class[2].burst",
        "negative",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nceil_burst = \"lots\"\n"),
        "class[2].ceil_burst",
        "a size is",
    );
    assert_err(
        with_base("[[interface]]\nname = \"eth0\"\nlink_rate = \"100G\"\n"),
        "interface[0].link_rate",
        "a rate is",
    );
    assert_err(
        with_base("[[interface]]\nname = \"eth0\"\nlink_burst = \"8Q\"\n"),
        "interface[0].link_burst",
        "a size is",
    );
}

#[test]
fn bursts_hold_a_frame() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\nburst = 1000\n"),
        "class[2].burst",
        "at least 1514",
    );
    assert_err(
        with_base("[[interface]]\nname = \"eth0\"\nlink_burst = \"1kB\"\n"),
        "interface[0].link_burst",
        "at least 1514",
    );
    with_base("[[class]]\nname = \"x\"\nburst = \"1514B\"\n").expect("one frame is enough");
}

#[test]
fn policy_files_over_the_cap_are_refused_unread() {
    let path = std::env::temp_dir().join(format!("dp-big-policy-{}.toml", std::process::id()));
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(MAX_POLICY_BYTES + 1).expect("sparse file");
    let err = Policy::load(&path).expect_err("too large");
    let _ = std::fs::remove_file(&path);
    assert!(err.to_string().contains("larger than the 16 MiB"), "{err}");
}

#[test]
fn rates_below_the_enforceable_minimum_are_refused() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"8bit\"\n"),
        "class[2].rate",
        "below the lowest rate enforced exactly, 480bit",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nceil = \"400bit\"\n"),
        "class[2].ceil",
        "480bit",
    );
    assert!(with_base("[[class]]\nname = \"x\"\nrate = \"480bit\"\n").is_ok());
}

#[test]
fn ceil_below_rate() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"2Gbit\"\nceil = \"1Gbit\"\n"),
        "class[2].ceil",
        "below rate 2Gbit",
    );
}

#[test]
fn ceil_burst_defaults_to_the_larger_of_burst_and_ceil() {
    let p = with_base(
        "[[class]]\nname = \"x\"\nrate = \"1Gbit\"\nceil = \"1Gbit\"\nburst = \"16MiB\"\n",
    )
    .expect("valid");
    assert_eq!(p.classes[2].ceil_burst_bytes, 16 << 20, "burst is larger");
    let p = with_base("[[class]]\nname = \"x\"\nceil = \"100Gbit\"\n").expect("valid");
    assert_eq!(p.classes[2].burst_bytes, MIN_DEFAULT_BURST_BYTES);
    assert_eq!(
        p.classes[2].ceil_burst_bytes, 250_000_000,
        "20 ms of ceil is larger"
    );
}

#[test]
fn aqm_defaults_bounds_and_round_trip() {
    let class = |extra: &str| {
        with_base(&format!(
            "[[class]]\nname = \"x\"\nrate = \"100Mbit\"\nexceed = \"drop\"\n{extra}"
        ))
    };
    let p = class("aqm = true\n").expect("valid");
    let aqm = p.classes[2].aqm.expect("on");
    assert_eq!(
        aqm.target_ns, DEFAULT_AQM_TARGET_NS,
        "1 ms is below a quarter of the burst"
    );
    assert_eq!(aqm.interval_ns, DEFAULT_AQM_INTERVAL_NS);
    let p = class("aqm = true\nburst = \"40000B\"\n").expect("valid");
    assert_eq!(
        p.classes[2].aqm.expect("on").target_ns,
        800_000,
        "a quarter of 3.2 ms of burst"
    );
    let p = class("aqm = true\naqm_target = \"250us\"\naqm_interval = \"2ms\"\n").expect("valid");
    assert_eq!(
        p.classes[2].aqm,
        Some(AqmSpec {
            target_ns: 250_000,
            interval_ns: 2_000_000
        })
    );
    let text = p.to_toml_string().expect("writable");
    assert_eq!(load(&text).expect("valid"), p, "{text}");
    assert_eq!(
        class("").expect("valid").classes[2].aqm,
        None,
        "off by default"
    );
    assert_err(
        class("aqm_target = \"1ms\"\n"),
        "class[2].aqm_target",
        "aqm is not true",
    );
    assert_err(
        class("aqm = true\naqm_interval = \"5\"\n"),
        "class[2].aqm_interval",
        "has no unit",
    );
    assert_err(
        class("aqm = true\naqm_target = \"1s\"\n"),
        "class[2].aqm_target",
        "not below the burst",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"1Gbit\"\naqm = true\n"),
        "class[2].aqm",
        "no phantom queue",
    );
    let peak = with_base(
            "[[class]]\nname = \"x\"\nrate = \"1Gbit\"\nceil = \"2Gbit\"\nviolate = \"ecn\"\naqm = true\n",
        )
        .expect("a ceil whose overflow is marked");
    assert!(peak.classes[2].aqm.is_some());
}

#[test]
fn flow_fairness_defaults_validation_and_round_trip() {
    let class = |extra: &str| {
        with_base(&format!(
            "[[class]]\nname = \"x\"\nrate = \"100Mbit\"\nexceed = \"drop\"\n{extra}"
        ))
    };
    assert!(
        class("").expect("valid").classes[2].flow_fairness,
        "on by default where a bucket drops"
    );
    let off = class("flow_fairness = false\n").expect("valid");
    assert!(!off.classes[2].flow_fairness);
    let text = off.to_toml_string().expect("writable");
    assert!(text.contains("flow_fairness = false"), "{text}");
    assert_eq!(load(&text).expect("valid"), off, "{text}");
    let on = class("").expect("valid");
    let text = on.to_toml_string().expect("writable");
    assert!(
        !text.contains("flow_fairness"),
        "the default is not written: {text}"
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nrate = \"1Gbit\"\nflow_fairness = true\n"),
        "class[2].flow_fairness",
        "no rate to share",
    );
    assert!(
        !with_base("[[class]]\nname = \"x\"\nrate = \"1Gbit\"\n")
            .expect("valid")
            .classes[2]
            .flow_fairness,
        "off where nothing drops or marks"
    );
}

#[test]
fn dscp_range() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\ndscp = 64\n"),
        "class[2].dscp",
        "0..=63",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nexceed = \"remark\"\nremark_dscp = 99\n"),
        "class[2].remark_dscp",
        "0..=63",
    );
    assert_err(
        with_base("[[rule]]\nclass = \"rdma\"\ndscp = 64\n"),
        "rule[0].dscp",
        "0..=63",
    );
    assert_err(
        with_base("[[rule]]\nclass = \"rdma\"\ndscp = -1\n"),
        "rule[0].dscp",
        "0..=63",
    );
}

#[test]
fn remark_needs_remark_dscp_and_only_then() {
    assert_err(
        with_base("[[class]]\nname = \"x\"\nexceed = \"remark\"\n"),
        "class[2].remark_dscp",
        "exceed = \"remark\" needs remark_dscp",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nviolate = \"remark\"\n"),
        "class[2].remark_dscp",
        "violate = \"remark\" needs remark_dscp",
    );
    assert_err(
        with_base("[[class]]\nname = \"x\"\nremark_dscp = 8\n"),
        "class[2].remark_dscp",
        "neither exceed nor violate",
    );
    let p = with_base("[[class]]\nname = \"x\"\nviolate = \"remark\"\nremark_dscp = 8\n")
        .expect("valid");
    assert_eq!(p.classes[2].violate, ColourAction::remark(8));
    assert_eq!(p.classes[2].exceed, ColourAction::PASS);
}

#[test]
fn unknown_class_in_rule() {
    assert_err(
        with_base("[[rule]]\nclass = \"gold\"\n"),
        "rule[0].class",
        "no class is named \"gold\"; known classes: default, rdma",
    );
}

#[test]
fn too_many_rules() {
    let mut text = String::from(BASE);
    for _ in 0..MAX_RULES {
        text.push_str("[[rule]]\nclass = \"rdma\"\n");
    }
    assert_eq!(
        load(&text).expect("MAX_RULES rules are fine").rules.len(),
        MAX_RULES
    );
    text.push_str("[[rule]]\nclass = \"rdma\"\n");
    assert_err(load(&text), "rule", "at most 16384");
}

#[test]
fn interfaces_unique_valid_and_bounded() {
    assert_err(
        with_base("[[interface]]\nname = \"eth0\"\n[[interface]]\nname = \"eth0\"\n"),
        "interface[1].name",
        "duplicate interface \"eth0\"",
    );
    assert_err(
        with_base("[[interface]]\nname = \"averyveryverylongname\"\n"),
        "interface[0].name",
        "1 to 15",
    );
    assert_err(
        with_base("[[interface]]\nname = \"\"\n"),
        "interface[0].name",
        "not a valid",
    );
    assert_err(
        with_base("[[rule]]\nclass = \"rdma\"\niface = \"a/b\"\n"),
        "rule[0].iface",
        "not a valid",
    );
    assert_err(
        with_base("[[rule]]\nclass = \"rdma\"\niface = \"0123456789abcdef\"\n"),
        "rule[0].iface",
        "1 to 15",
    );
    // What the kernel refuses as a name, and a leading '-' (read as an option by `ip`).
    for name in [".", "..", "-x", "a:b", "tab\\tx"] {
        assert_err(
            with_base(&format!("[[interface]]\nname = \"{name}\"\n")),
            "interface[0].name",
            "not a valid",
        );
        assert_err(
            with_base(&format!("[[rule]]\nclass = \"rdma\"\niface = \"{name}\"\n")),
            "rule[0].iface",
            "not a valid",
        );
    }
    // Loopback is a real interface (the kernel tests classify BPF_PROG_TEST_RUN frames on it).
    with_base("[[rule]]\nclass = \"rdma\"\niface = \"lo\"\n").expect("lo");

    let mut text = String::from(BASE);
    for i in 0..MAX_POLICY_IFACES {
        text.push_str(&format!("[[interface]]\nname = \"eth{i}\"\n"));
    }
    load(&text).expect("63 interfaces are fine");
    let mut over = text.clone();
    over.push_str("[[interface]]\nname = \"one_more\"\n");
    assert_err(load(&over), "interface", "at most 63");
    text.push_str("[[rule]]\nclass = \"rdma\"\niface = \"eth5\"\n");
    text.push_str("[[rule]]\nclass = \"rdma\"\niface = \"extra\"\n");
    assert_err(load(&text), "rule[1].iface", "more than 63");
}

#[test]
fn rule_interfaces_are_appended_once() {
    let p = with_base(
        "[[interface]]\nname = \"eth0\"\n\
             [[rule]]\nclass = \"rdma\"\niface = \"eth9\"\n\
             [[rule]]\nclass = \"rdma\"\niface = \"eth0\"\n\
             [[rule]]\nclass = \"rdma\"\niface = \"eth9\"\n",
    )
    .expect("valid");
    let names: Vec<&str> = p.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth0", "eth9"]);
    assert_eq!(p.rules[0].iface, Some(Range::one(2)));
    assert_eq!(p.rules[1].iface, Some(Range::one(1)));
    assert_eq!(p.rules[2].iface, Some(Range::one(2)));
    assert!(!p.interfaces[1].forward);
    assert_eq!(p.interfaces[1].link_rate_bytes_per_sec, None);
}

#[test]
fn bad_prefixes() {
    let rule =
        |k: &str, v: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{k} = \"{v}\"\n"));
    assert_err(
        rule("src", "198.18.0.1/15"),
        "rule[0].src",
        "host bits set; did you mean \"198.18.0.0/15\"",
    );
    assert_err(
        rule("dst", "2001:db8::1/32"),
        "rule[0].dst",
        "did you mean \"2001:db8::/32\"",
    );
    assert_err(rule("src", "10.0.0.0/33"), "rule[0].src", "0..=32");
    assert_err(rule("dst", "::/129"), "rule[0].dst", "0..=128");
    assert_err(rule("dst", "10.0.0.0/x"), "rule[0].dst", "prefix length");
    assert_err(
        rule("src", "not-an-ip"),
        "rule[0].src",
        "not an IPv4 or IPv6 address",
    );
    assert_err(
        rule("src", "10.0.0/8"),
        "rule[0].src",
        "not an IPv4 or IPv6 address",
    );
    let p = with_base(
        "[[rule]]\nclass = \"rdma\"\nsrc = \"10.1.2.3\"\ndst = \"0.0.0.0/0\"\n\
             [[rule]]\nclass = \"rdma\"\nsrc = \"fe80::1\"\n",
    )
    .expect("valid");
    assert_eq!(p.rules[0].src, Some(v4([10, 1, 2, 3], 32)));
    assert_eq!(p.rules[0].dst, Some(v4([0, 0, 0, 0], 0)));
    assert_eq!(
        p.rules[1].src.map(|s| (s.family, s.len)),
        Some((Family::V6, 128))
    );
}

#[test]
fn mixed_families_in_one_rule() {
    assert_err(
        with_base("[[rule]]\nclass = \"rdma\"\nsrc = \"10.0.0.0/8\"\ndst = \"2001:db8::/32\"\n"),
        "rule[0].dst",
        "dst is IPv6 but src is IPv4",
    );
}

#[test]
fn bad_ports() {
    let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
    assert_err(
        rule("dst_port = \"8002-8000\""),
        "rule[0].dst_port",
        "8002 is above 8000",
    );
    assert_err(rule("src_port = 65536"), "rule[0].src_port", "0..=65535");
    assert_err(
        rule("dst_port = \"1-70000\""),
        "rule[0].dst_port",
        "0..=65535",
    );
    assert_err(rule("dst_port = -1"), "rule[0].dst_port", "out of range");
    assert_err(
        rule("dst_port = \"http\""),
        "rule[0].dst_port",
        "not a port",
    );
    assert_err(
        rule("dst_port = \"1-2-3\""),
        "rule[0].dst_port",
        "not a port",
    );
    let p = rule("src_port = \"8000\"\ndst_port = \" 0 - 65535 \"").expect("valid");
    assert_eq!(p.rules[0].src_ports, Some(Range::one(8000)));
    assert_eq!(p.rules[0].dst_ports, Some(Range { lo: 0, hi: 65535 }));
}

#[test]
fn ports_with_a_portless_protocol_never_match() {
    let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
    assert_err(
        rule("protocol = \"icmp\"\ndst_port = 80"),
        "rule[0].dst_port",
        "protocol icmp has no ports",
    );
    assert_err(
        rule("protocol = 132\nsrc_port = 80"),
        "rule[0].src_port",
        "protocol 132 has no ports",
    );
    rule("protocol = \"tcp\"\ndst_port = 80").expect("tcp has ports");
    rule("dst_port = 80").expect("no protocol: tcp or udp");
}

#[test]
fn protocols() {
    let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
    assert_err(
        rule("protocol = \"sctp\""),
        "rule[0].protocol",
        "not a protocol",
    );
    assert_err(rule("protocol = 256"), "rule[0].protocol", "0..=255");
    assert_err(rule("protocol = -3"), "rule[0].protocol", "not a protocol");
    let p = rule("protocol = \"47\"").expect("numeric string");
    assert_eq!(p.rules[0].protocol, Some(Range::one(47)));
    // Names are spelt one way: another case or stray spaces are refused, naming the
    // accepted spellings, rather than silently read as something.
    for spelling in ["TCP", "tcp ", " udp", "Icmp", " 47"] {
        assert_err(
            rule(&format!("protocol = \"{spelling}\"")),
            "rule[0].protocol",
            "\"tcp\", \"udp\", \"icmp\", \"icmpv6\"",
        );
    }
}

#[test]
fn roce_opcodes() {
    let rule = |extra: &str| with_base(&format!("[[rule]]\nclass = \"rdma\"\n{extra}\n"));
    let opcode = |v: &str| rule(&format!("roce_opcode = {v}")).map(|p| p.rules[0].roce_opcode);
    assert_eq!(opcode("\"cnp\"").expect("cnp"), Some(Range::one(0x81)));
    assert_eq!(
        opcode("\"rc\"").expect("rc"),
        Some(Range { lo: 0, hi: 0x1f })
    );
    assert_eq!(
        opcode("\"uc\"").expect("uc"),
        Some(Range { lo: 0x20, hi: 0x3f })
    );
    assert_eq!(
        opcode("\"rd\"").expect("rd"),
        Some(Range { lo: 0x40, hi: 0x5f })
    );
    assert_eq!(
        opcode("\"UD\"").expect("ud"),
        Some(Range { lo: 0x60, hi: 0x7f })
    );
    assert_eq!(opcode("\"0x81\"").expect("hex"), Some(Range::one(0x81)));
    assert_eq!(opcode("129").expect("int"), Some(Range::one(0x81)));
    assert_eq!(
        opcode("\"0x00-0x1f\"").expect("range"),
        Some(Range { lo: 0, hi: 0x1f })
    );
    assert_err(
        rule("roce_opcode = \"xrc\""),
        "rule[0].roce_opcode",
        "expected \"cnp\"",
    );
    assert_err(rule("roce_opcode = 256"), "rule[0].roce_opcode", "0..=255");
    assert_err(
        rule("roce_opcode = \"0x20-0x10\""),
        "rule[0].roce_opcode",
        "empty range",
    );
    assert_err(
        rule("protocol = \"tcp\"\nroce_opcode = \"cnp\""),
        "rule[0].roce_opcode",
        "udp only",
    );
    assert_err(
        rule("protocol = \"udp\"\ndst_port = 4790\nroce_opcode = \"cnp\""),
        "rule[0].roce_opcode",
        "dst_port 4791",
    );
}

#[test]
fn parse_errors_point_at_the_right_table() {
    let text = "[[class]]\nname = \"default\"\n\n[[class]]  # two\nname = \"b\"\n\n[[rule]]\nclass = \"b\"\n\n[[rule]]\nclass = \"b\"\nbogus = true\n";
    let e = load(text).expect_err("unknown key");
    assert_eq!(e.field(), Some("rule[1].bogus"), "{e}");
    assert!(
        e.to_string().starts_with("test.toml:12:1: rule[1].bogus:"),
        "{e}"
    );
}
