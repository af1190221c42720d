//! The flow cache's per-CPU tables and the interface lookup by index, in the real kernel:
//! a flow seen on two CPUs has an entry on each and reads back as one flow, and an
//! interface whose index lies beyond the index array is still found (in the hash).

use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use dataplane::dataplane::{ifindex, Dataplane};
use dataplane_common::{maps::FlowKey, IFINDEX_ARRAY_LIMIT};
use dataplane_lab::{
    frames::Frame,
    kernel::{ingress_ctx, load_policy, pin_to_cpu, run_once},
    netns::{in_netns, VethNs},
};

const XDP_PASS: u32 = 2;

const POLICY: &str = r#"
flow_cache = "on"

[[class]]
name = "default"
exceed = "pass"
violate = "pass"

[[class]]
name = "udp"
exceed = "pass"
violate = "pass"

[[rule]]
class = "udp"
protocol = "udp"
"#;

fn udp_frame(src_port: u16) -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .udp(src_port, 5001)
        .build()
}

/// Runs `frame` `times` times, one run per call, on a thread pinned to `cpu`.
fn run_on_cpu(dp: &Dataplane, cpu: usize, frame: &[u8], times: u32) {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(cpu);
            for _ in 0..times {
                let run = run_once(dp.program().expect("program"), frame);
                assert_eq!(run.action, XDP_PASS, "the class passes");
            }
        });
    });
}

#[test]
fn a_flow_on_two_cpus_reads_back_as_one_flow_with_every_packet() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs to put one flow on two of them; this machine offers {cpus}"
    );
    let (dp, p) = load_policy(POLICY);
    let udp = p.class_id("udp").expect("udp class");
    let (a, b) = (udp_frame(40_000), udp_frame(40_001));
    run_on_cpu(&dp, 0, &a, 3);
    run_on_cpu(&dp, 1, &a, 5);
    run_on_cpu(&dp, 1, &b, 2);

    let counters = dp.iface_counters(0).expect("iface counters");
    assert_eq!(
        (counters.flow_cache_misses, counters.flow_cache_hits),
        (3, 7),
        "flow a misses once on each CPU, flow b once on CPU 1; every other run hits"
    );
    let flows = dp.flows().expect("flows");
    assert_eq!(
        flows.len(),
        2,
        "two flows, whatever CPUs saw them: {flows:?}"
    );
    let by_port = |port: u16| {
        flows
            .iter()
            .find(|f| f.key.src_port == port)
            .unwrap_or_else(|| panic!("flow from port {port} in {flows:?}"))
    };
    let (fa, fb) = (by_port(40_000), by_port(40_001));
    assert_eq!(
        fa.state.packets, 8,
        "flow a: 3 packets on CPU 0 and 5 on CPU 1"
    );
    assert_eq!(fb.state.packets, 2);
    assert_eq!(
        fa.state.bytes,
        8 * a.len() as u64,
        "every frame's bytes, both CPUs"
    );
    assert!(
        fa.class == udp && fb.class == udp,
        "cached class: {fa:?} {fb:?}"
    );
    assert_ne!(fa.key, FlowKey::default());
}

/// Runs `frame` once as if it arrived on interface `ingress` (which must exist in the
/// calling thread's namespace).
fn run_from(prog: &Xdp, frame: &[u8], ingress: u32) -> Result<u32, ProgramError> {
    let ctx = ingress_ctx(ingress, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat: 1,
        ..TestRunOptions::default()
    })
    .map(|r| r.return_value)
}

#[test]
fn interfaces_above_the_index_array_are_found_in_the_hash() {
    let ns = VethNs::create();
    // Inside a namespace of its own, any index is free; one device on each side of the limit.
    let high = IFINDEX_ARRAY_LIMIT as u32 + 3_616;
    let low = 77;
    let policy = r#"
flow_cache = "on"

[[interface]]
name = "dphigh"

[[interface]]
name = "dplow"

[[class]]
name = "default"
exceed = "pass"
violate = "pass"

[[class]]
name = "on_high"
exceed = "pass"
violate = "pass"

[[class]]
name = "on_low"
exceed = "pass"
violate = "pass"

[[rule]]
class = "on_high"
iface = "dphigh"

[[rule]]
class = "on_low"
iface = "dplow"
"#;
    in_netns(&ns.ns, || {
        for (name, index) in [("dphigh", high), ("dplow", low)] {
            let peer = format!("{name}p");
            dataplane_lab::netns::ip(&[
                "link",
                "add",
                name,
                "index",
                &index.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ]);
            assert_eq!(ifindex(name), Some(index), "{name} has the index asked for");
        }
        let (mut dp, p) = load_policy(policy);
        let missing = dp.register_interfaces(&p, &[]).expect("register");
        assert!(missing.is_empty(), "both devices exist: {missing:?}");
        let frame = udp_frame(40_000);
        for (index, slot, class) in [(high, 1, "on_high"), (low, 2, "on_low")] {
            let class = p.class_id(class).expect("class");
            for run in 0..2 {
                let verdict =
                    run_from(dp.program().expect("program"), &frame, index).expect("test run");
                assert_eq!(verdict, XDP_PASS);
                assert_eq!(
                    dp.class_counters(slot, class).expect("counters").packets,
                    run + 1,
                    "ifindex {index}: counted under slot {slot} as {class} (run {run})"
                );
            }
        }
        // Forgotten, the high interface's packets count under slot 0 and its rule no
        // longer matches.
        dp.unregister_ifindex(high).expect("unregister");
        let default = p.class_id("default").expect("default");
        run_from(dp.program().expect("program"), &frame, high).expect("test run");
        assert_eq!(
            dp.class_counters(0, default).expect("counters").packets,
            1,
            "an unregistered interface counts under slot 0, default class"
        );
    })
    .expect("in the test's namespace");
    drop(ns);
}
