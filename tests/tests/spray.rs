//! Sprayed connections are one flow, in the real kernel with the real object
//! (BPF_PROG_TEST_RUN, one CPU): a sender spraying one RoCEv2 connection (one destination QP)
//! or one UET connection (one source PDC id) over 256 UDP source ports gets one class, one
//! fair share, one `top` row, and evicts no other flow's flow-cache entry; its entropy leaves
//! the program as it came. Connections still count one by one, and a UET packet whose header
//! is cut short falls back to its 5-tuple and is counted, not dropped.
//!
//! A rule on the entropy's port range comes first in the policy: a sprayed packet classified
//! on its source port would land there, in another class.

use std::sync::{Mutex, MutexGuard};

use dataplane::{
    dataplane::Dataplane,
    view::{top_flows, ClassFlows, ClassReading},
};
use dataplane_common::{
    maps::{FlowEntry, FlowKey},
    spray::UET_CONNECTIONLESS,
};
use dataplane_lab::{
    frames::{uet, uet_pds, Frame},
    kernel::{load_policy, pin_to_cpu, run_once},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const ECT0: u8 = 0b10;
/// Source ports a connection is sprayed over.
const SPRAY_PORTS: u16 = 256;
const FIRST_SPRAY_PORT: u16 = 49152;
/// Packets per source port.
const ROUNDS: usize = 40;
/// Frames of 1000 bytes: Ethernet, IPv4, UDP and a 12-byte BTH or PDS header, then payload.
const PAYLOAD: usize = 1000 - 14 - 20 - 8 - 12;
/// Flows of another class, cached before the spray starts.
const OTHER_FLOWS: u16 = 64;
const RDMA_QP: u32 = 0x00_1234;
const UET_PDC: u16 = 0x0101;
const SRC: [u8; 4] = [198, 18, 0, 1];
const DST: [u8; 4] = [198, 19, 0, 1];

/// Both sprayed classes far below what the test offers, so they run on their exact path and
/// count their flows for fair shares.
const POLICY: &str = r#"
flow_cache = "on"

[[class]]
name = "default"

[[class]]
name = "rdma"
rate = "100Mbit"
exceed = "drop"

[[class]]
name = "uet"
rate = "100Mbit"
exceed = "drop"

[[class]]
name = "other"
exceed = "pass"
violate = "pass"

[[rule]]
class = "other"
protocol = "udp"
src_port = "49152-65535"

[[rule]]
class = "rdma"
protocol = "udp"
dst_port = 4791

[[rule]]
class = "uet"
protocol = "udp"
dst_port = 4793

[[rule]]
class = "other"
protocol = "udp"
dst_port = 5001
"#;

/// Tests that read a class's flow count must not share the CPU with each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn roce(src_port: u16, qp: u32) -> Vec<u8> {
    Frame::eth()
        .ipv4(SRC, DST)
        .tos(ECT0)
        .udp(src_port, 4791)
        .roce_bth(0x0a) // RC RDMA WRITE Only
        .roce_qp(qp)
        .payload(PAYLOAD)
        .build()
}

fn uet_frame(src_port: u16, pdc: u16) -> Vec<u8> {
    Frame::eth()
        .ipv4(SRC, DST)
        .tos(ECT0)
        .udp(src_port, 4793)
        .transport(&uet_pds(uet::RUD_REQ, 0, pdc, 0x0202))
        .payload(PAYLOAD)
        .build()
}

fn other(i: u16) -> Vec<u8> {
    Frame::eth()
        .ipv4(SRC, DST)
        .udp(40_000 + i, 5001)
        .payload(64)
        .build()
}

/// The UDP source port of a built (untagged IPv4, no options) frame.
fn src_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[34], frame[35]])
}

/// What a spray did.
struct Sprayed {
    packets: u64,
    passed: u64,
}

/// Sends `ROUNDS` rounds of `frame(port)` over every spray port; checks every frame the
/// program passes leaves with the source port it came with.
fn spray(dp: &Dataplane, frame: impl Fn(u16) -> Vec<u8>) -> Sprayed {
    let prog = dp.program().expect("program");
    let frames: Vec<Vec<u8>> = (0..SPRAY_PORTS)
        .map(|i| frame(FIRST_SPRAY_PORT + i))
        .collect();
    let mut s = Sprayed {
        packets: 0,
        passed: 0,
    };
    for _ in 0..ROUNDS {
        for f in &frames {
            let run = run_once(prog, f);
            s.packets += 1;
            match run.action {
                XDP_PASS => {
                    s.passed += 1;
                    assert_eq!(
                        src_port(&run.output),
                        src_port(f),
                        "the entropy is never rewritten"
                    );
                }
                XDP_DROP => {}
                other => panic!("unexpected verdict {other}"),
            }
        }
    }
    s
}

/// Sends one packet of each of the other class's flows.
fn warm_other_flows(dp: &Dataplane) {
    let prog = dp.program().expect("program");
    for i in 0..OTHER_FLOWS {
        assert_eq!(run_once(prog, &other(i)).action, XDP_PASS);
    }
}

fn other_keys(flows: &[FlowEntry], other: u32) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = flows
        .iter()
        .filter(|e| e.class == other)
        .map(|e| e.key)
        .collect();
    keys.sort_by_key(|k| k.src_port);
    keys
}

/// Class `name`'s state now. Read right after the traffic: the flows a class's rate is
/// shared by are those that sent in the current or the last epoch (8 ms), and reading the
/// whole flow cache takes longer.
fn reading(dp: &Dataplane, class: &str, id: u32) -> ClassReading {
    ClassReading::read(dp, class.to_string(), id).expect("class state")
}

/// `dataplane top` of the class `reading` read, over the flow cache as it is (every flow
/// new).
fn top(reading: ClassReading, flows: &[FlowEntry]) -> ClassFlows {
    let generation = flows.first().expect("cached flows").generation;
    top_flows(&[], flows, 1.0, generation, &[reading], &[], 10)
        .pop()
        .expect("the class's row")
}

/// One connection sprayed over 256 source ports through `class`, behind 64 cached flows of
/// another class: what the checks need.
fn one_connection(class: &str, frame: impl Fn(u16) -> Vec<u8>, connection: u32, shown: &str) {
    let _serial = serial();
    pin_to_cpu(0);
    let (dp, p) = load_policy(POLICY);
    let id = p.class_id(class).expect("class");
    let other_id = p.class_id("other").expect("class");
    warm_other_flows(&dp);
    let before = other_keys(&dp.flows().expect("flows"), other_id);
    assert_eq!(
        before.len(),
        usize::from(OTHER_FLOWS),
        "the other flows are cached"
    );

    let sprayed = spray(&dp, frame);
    let state = reading(&dp, class, id);
    let total = u64::from(SPRAY_PORTS) * ROUNDS as u64;
    assert_eq!(sprayed.packets, total);
    assert!(sprayed.passed > 0, "the class's burst passed some packets");

    // One class: every packet, whatever its source port; none in the entropy range's class.
    let counters = dp.class_counters(0, id).expect("class counters");
    assert_eq!(counters.packets, total, "every sprayed packet in {class}");
    assert_eq!(
        dp.class_counters(0, other_id).expect("counters").packets,
        u64::from(OTHER_FLOWS),
        "no sprayed packet classified on its source port"
    );
    assert!(
        counters.dropped_packets > 0,
        "offered far above its rate, {class} ran on its exact path: {counters:?}"
    );

    // One flow in the cache, and the others' entries untouched: the spray missed once.
    let flows = dp.flows().expect("flows");
    let mine: Vec<&FlowEntry> = flows.iter().filter(|e| e.class == id).collect();
    let ports: Vec<u16> = mine.iter().take(8).map(|e| e.key.src_port).collect();
    assert_eq!(
        mine.len(),
        1,
        "one flow-cache entry (the first ones' source ports: {ports:?})"
    );
    assert_eq!(mine[0].state.packets, total);
    assert_eq!(
        (mine[0].key.src_port, mine[0].key.connection),
        (0, connection)
    );
    assert_eq!(
        other_keys(&flows, other_id),
        before,
        "no other flow's entry was evicted"
    );
    let iface = dp.iface_counters(0).expect("iface counters");
    assert_eq!(
        iface.flow_cache_misses,
        u64::from(OTHER_FLOWS) + 1,
        "each other flow missed once, the sprayed connection once"
    );
    assert_eq!(iface.flow_cache_hits, total - 1);

    // One top row, naming the connection; one flow sharing the class's rate.
    let row = top(state, &flows);
    assert_eq!(row.flows, 1, "{row:?}");
    assert_eq!(row.top.len(), 1);
    assert_eq!(row.top[0].src, "198.18.0.1", "no source port in the row");
    assert_eq!(row.top[0].connection.as_deref(), Some(shown));
    assert_eq!(row.sharing_flows, 1, "one fair share");
    assert_eq!(dp.spray_unkeyed(0).expect("counter"), 0);
}

#[test]
fn a_roce_connection_sprayed_over_256_source_ports_is_one_flow() {
    one_connection("rdma", |port| roce(port, RDMA_QP), RDMA_QP, "qp 0x001234");
}

#[test]
fn a_uet_connection_sprayed_over_256_source_ports_is_one_flow() {
    one_connection(
        "uet",
        |port| uet_frame(port, UET_PDC),
        u32::from(UET_PDC),
        "pdc 257",
    );
}

/// The key still tells connections apart: four QPs sprayed over the same ports are four
/// flows, four rows, four shares; and a UET packet without a PDC is its address pair's.
#[test]
fn connections_sprayed_over_the_same_ports_stay_apart() {
    let _serial = serial();
    pin_to_cpu(0);
    let (dp, p) = load_policy(POLICY);
    let rdma = p.class_id("rdma").expect("class");
    let qps = [0x11, 0x22, 0x33, 0x44];
    let sprayed = spray(&dp, |port| roce(port, qps[usize::from(port % 4)]));
    let state = reading(&dp, "rdma", rdma);
    assert_eq!(sprayed.packets, u64::from(SPRAY_PORTS) * ROUNDS as u64);
    let flows = dp.flows().expect("flows");
    let mut seen: Vec<u32> = flows
        .iter()
        .filter(|e| e.class == rdma)
        .map(|e| e.key.connection)
        .collect();
    seen.sort_unstable();
    assert_eq!(seen.len(), qps.len(), "one entry per QP");
    assert_eq!(seen, qps);
    let row = top(state, &flows);
    assert_eq!((row.flows, row.top.len()), (4, 4));
    assert_eq!(row.sharing_flows, 4, "four fair shares");

    let uet_class = p.class_id("uet").expect("class");
    let prog = dp.program().expect("program");
    for port in 0..16 {
        let rudi = Frame::eth()
            .ipv4(SRC, DST)
            .udp(FIRST_SPRAY_PORT + port, 4793)
            .transport(&uet_pds(uet::RUDI_REQ, 0, 0, 0)[..8])
            .build();
        run_once(prog, &rudi);
    }
    let flows = dp.flows().expect("flows");
    let uet: Vec<&FlowEntry> = flows.iter().filter(|e| e.class == uet_class).collect();
    assert_eq!(uet.len(), 1, "{uet:?}");
    assert_eq!(uet[0].key.connection, UET_CONNECTIONLESS);
}

/// A UET header cut short names no connection: the packet is keyed and classified on its
/// 5-tuple (here: into the class of the entropy's port range), counted, and passed.
#[test]
fn a_uet_header_cut_short_falls_back_to_the_five_tuple_and_is_counted() {
    let _serial = serial();
    pin_to_cpu(0);
    let (dp, p) = load_policy(POLICY);
    let other_id = p.class_id("other").expect("class");
    let prog = dp.program().expect("program");
    const CUT: u16 = 8;
    for port in 0..CUT {
        let frame = Frame::eth()
            .ipv4(SRC, DST)
            .udp(FIRST_SPRAY_PORT + port, 4793)
            .transport(&uet_pds(uet::RUD_REQ, 0, UET_PDC, 1)[..6])
            .build();
        let run = run_once(prog, &frame);
        assert_eq!(run.action, XDP_PASS, "never dropped");
        assert_eq!(run.output, frame, "nor rewritten");
    }
    assert_eq!(dp.spray_unkeyed(0).expect("counter"), u64::from(CUT));
    let flows = dp.flows().expect("flows");
    let mut ports: Vec<u16> = flows
        .iter()
        .filter(|e| e.class == other_id && e.key.dst_port == 4793)
        .map(|e| {
            assert_eq!(e.key.flags & FlowKey::FLAG_CONNECTION, 0, "{e:?}");
            e.key.src_port
        })
        .collect();
    ports.sort_unstable();
    let want: Vec<u16> = (0..CUT).map(|i| FIRST_SPRAY_PORT + i).collect();
    assert_eq!(ports, want, "one flow per 5-tuple");
    for reason in dp.iface_counters(0).expect("counters").reasons {
        assert_eq!(reason, 0, "no parse error, no drop");
    }
}
