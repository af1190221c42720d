//! Per-packet cost of the XDP pipeline under BPF_PROG_TEST_RUN, as ratios to an empty XDP
//! program measured in the same run. Run as root: `cargo bench -p dataplane-tests`.
//!
//! Method: the thread is pinned to CPU 0; each figure is the kernel's mean time per run over
//! `REPEAT` runs of one frame, taken `ROUNDS` times after a warm-up round; the table shows the
//! median and the min–max of the rounds.

use aya::programs::Xdp;
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use dataplane_tests::{
    frames::Frame,
    kernel::{pin_to_cpu, require_root, run_repeated},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

struct Figure {
    median: f64,
    min: f64,
    max: f64,
}

fn measure(prog: &Xdp, frame: &[u8]) -> Figure {
    run_repeated(prog, frame, REPEAT / 10);
    let mut ns: Vec<f64> = (0..ROUNDS)
        .map(|_| run_repeated(prog, frame, REPEAT))
        .collect();
    ns.sort_by(f64::total_cmp);
    Figure {
        median: ns[ROUNDS / 2],
        min: ns[0],
        max: ns[ROUNDS - 1],
    }
}

fn load(policy: &Policy, flow_cache: bool) -> Dataplane {
    let mut dp = Dataplane::load().expect("load the XDP object");
    let mut compiled = CompiledPolicy::new(policy);
    compiled.flow_cache = flow_cache;
    dp.apply(&compiled).expect("apply");
    dp
}

/// `n` rules on distinct UDP destination ports, the matching one last.
fn many_rules(n: u16) -> Policy {
    let mut toml = String::from("[[class]]\nname = \"default\"\n[[class]]\nname = \"bulk\"\n");
    for i in 0..n {
        toml.push_str(&format!(
            "[[rule]]\nclass = \"bulk\"\nprotocol = \"udp\"\ndst_port = {}\n",
            10_000 + i
        ));
    }
    Policy::from_toml_str(&toml, "bench").expect("bench policy")
}

fn main() {
    require_root();
    pin_to_cpu(0);
    let default = Policy::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/default.toml"
    )))
    .expect("config/default.toml");
    let rdma_v4 = Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .tos(0b10)
        .udp(49152, 4791)
        .roce_bth(0x0a)
        .pad_to(1024)
        .build();
    let tcp_v6 = Frame::eth()
        .ipv6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        )
        .tcp(40000, 8001)
        .pad_to(512)
        .build();
    let cnp_v4 = Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(49152, 4791)
        .roce_bth(0x81)
        .pad_to(128)
        .build();

    let cached = load(&default, true);
    let uncached = load(&default, false);
    let floor = measure(cached.pass_program().expect("pass program"), &rdma_v4);

    let arp = Frame::arp().build();
    let no_policy = Dataplane::load().expect("load");
    let mut rows: Vec<(String, Figure)> = vec![
        (
            "ARP (not IP: parse Ethernet, count, pass)".into(),
            measure(cached.program().expect("prog"), &arp),
        ),
        (
            "RoCEv2 v4 before any policy (parse, count, pass)".into(),
            measure(no_policy.program().expect("prog"), &rdma_v4),
        ),
        (
            "RoCEv2 v4, flow-cache hit".into(),
            measure(cached.program().expect("prog"), &rdma_v4),
        ),
        (
            "RoCEv2 v4, flow-cache miss".into(),
            measure(uncached.program().expect("prog"), &rdma_v4),
        ),
        (
            "TCP v6 inference, flow-cache hit".into(),
            measure(cached.program().expect("prog"), &tcp_v6),
        ),
        (
            "TCP v6 inference, flow-cache miss".into(),
            measure(uncached.program().expect("prog"), &tcp_v6),
        ),
        (
            "RoCE CNP v4, flow-cache hit".into(),
            measure(cached.program().expect("prog"), &cnp_v4),
        ),
    ];
    for n in [10u16, 1_000, 10_000] {
        let policy = many_rules(n);
        let frame = Frame::eth()
            .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
            .udp(40000, 10_000 + n - 1)
            .pad_to(256)
            .build();
        let hit = load(&policy, true);
        let miss = load(&policy, false);
        rows.push((
            format!("{n} rules, last rule matches, hit"),
            measure(hit.program().expect("prog"), &frame),
        ));
        rows.push((
            format!("{n} rules, last rule matches, miss"),
            measure(miss.program().expect("prog"), &frame),
        ));
    }

    println!("| case | ns/packet (median) | min–max | × empty program |");
    println!("|---|---:|---:|---:|");
    println!(
        "| empty XDP program (floor) | {:.0} | {:.0}–{:.0} | 1.00 |",
        floor.median, floor.min, floor.max
    );
    for (name, f) in rows {
        println!(
            "| {name} | {:.0} | {:.0}–{:.0} | {:.2} |",
            f.median,
            f.min,
            f.max,
            f.median / floor.median
        );
    }
}
