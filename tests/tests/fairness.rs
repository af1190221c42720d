//! Fairness inside a class, in the real kernel (BPF_PROG_TEST_RUN): an elephant flow floods
//! a class far above its rate while a small flow of the same class sends well under its fair
//! share. With `flow_fairness` (the default) the ECN-capable elephant gets the class's early
//! marks and the small flow none; with it off (and no AQM), a class that drops marks nothing.
//! The class counts each flow once: both send more than the least a flow sends to count.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use dataplane::view::ClassReading;
use dataplane_common::fair::flows_sharing_at;
use dataplane_lab::{
    frames::Frame,
    kernel::{load_policy, pin_to_cpu, run_once},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const FRAME_BYTES: usize = 1000;
/// Elephant frames per small-flow frame. A test run takes at least a few hundred ns, so the
/// small flow's frames come at least 300 µs apart: at most 27 Mbit/s of 1000-byte frames,
/// against a fair share of 50 Mbit/s (100 Mbit/s, two flows). The elephant offers at least
/// 100 times the rate on any machine that runs a test run in under 80 µs.
const ELEPHANT_PER_SMALL: usize = 1000;
/// Small-flow frames per run: bounds the run (300 000 test runs, well under a second).
const SMALL_FRAMES: usize = 300;

/// Rate-measuring tests must not share the CPUs with each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn policy(rate: &str, flow_fairness: bool) -> String {
    format!(
        r#"
[[class]]
name = "default"

[[class]]
name = "bulk"
rate = "{rate}"
exceed = "drop"
flow_fairness = {flow_fairness}

[[rule]]
class = "bulk"
protocol = "udp"
dst_port = 5001
"#
    )
}

fn frame(src_port: u16, tos: u8) -> Vec<u8> {
    Frame::eth()
        .ipv4([198, 18, 0, 1], [198, 19, 0, 1])
        .tos(tos)
        .udp(src_port, 5001)
        .pad_to(FRAME_BYTES)
        .build()
}

/// What one flow's frames met.
#[derive(Debug, Default)]
struct Met {
    sent: u64,
    dropped: u64,
    marked: u64,
}

impl Met {
    fn note(&mut self, action: u32, output: &[u8]) {
        self.sent += 1;
        match action {
            XDP_DROP => self.dropped += 1,
            XDP_PASS => {
                // The IPv4 TOS byte's ECN bits: CE is 0b11.
                if output.get(15).is_some_and(|tos| tos & 0b11 == 0b11) {
                    self.marked += 1;
                }
            }
            other => panic!("unexpected verdict {other}"),
        }
    }
}

/// The elephant and the small flow through one class on one CPU, both with `tos`, and the
/// flows the class's rate was shared by as `dataplane top` reads it right after.
fn run(flow_fairness: bool, tos: u8) -> (Met, Met, u32) {
    let (dp, p) = load_policy(&policy("100Mbit", flow_fairness));
    let class = p.class_id("bulk").expect("class");
    let prog = dp.program().expect("program");
    let (elephant_frame, small_frame) = (frame(40000, tos), frame(40001, tos));
    let (mut elephant, mut small) = (Met::default(), Met::default());
    for _ in 0..SMALL_FRAMES {
        for _ in 0..ELEPHANT_PER_SMALL {
            let r = run_once(prog, &elephant_frame);
            elephant.note(r.action, &r.output);
        }
        let r = run_once(prog, &small_frame);
        small.note(r.action, &r.output);
    }
    let reading = ClassReading::read(&dp, "bulk".into(), class).expect("policer state");
    let sharing = flows_sharing_at(&reading.state.fair, reading.epoch);
    eprintln!(
        "flow_fairness = {flow_fairness}, tos {tos:#04b}: elephant {elephant:?}, small {small:?}, \
         shared by {sharing} flows"
    );
    (elephant, small, sharing)
}

#[test]
fn an_ecn_capable_flow_over_its_share_is_marked_and_one_under_it_is_not() {
    let _serial = serial();
    pin_to_cpu(0);
    const ECT0: u8 = 0b10;
    let (elephant, small, sharing) = run(true, ECT0);
    assert_eq!(
        sharing, 2,
        "the class counts each flow once: the small flow sends more than 2 KiB per epoch, an \
         eighth of the share it would get with seven more flows"
    );
    assert!(
        elephant.marked > 0,
        "the elephant, over its share in a congested class, gets CE marks"
    );
    assert!(
        elephant.dropped * 2 > elephant.sent,
        "and is still held to the class's rate (most of its frames dropped)"
    );
    assert_eq!(small.marked, 0, "the flow under its share is never marked");
    let (elephant, _, sharing) = run(false, ECT0);
    assert_eq!(
        sharing, 2,
        "without flow_fairness the class still counts its flows (its TCP window is shared)"
    );
    assert_eq!(
        elephant.marked, 0,
        "without flow_fairness (and without aqm) a class that drops never marks"
    );
}

/// Flows of a class well under its rate spend per-CPU leases, which skip the exact path; the
/// packets they cover count their flows all the same. Four flows of 80 Mbit/s each through a
/// 1 Gbit/s class (leases of 31 kB, so one frame in about 31 takes the exact path): counted
/// from the exact path alone, they fell short of the 16 kB a flow sends in an epoch to
/// count, and the class shared its TCP window by one flow.
#[test]
fn flows_under_the_rate_are_counted_from_their_leased_packets() {
    let _serial = serial();
    pin_to_cpu(0);
    let (dp, p) = load_policy(&policy("1Gbit", true));
    let class = p.class_id("bulk").expect("class");
    let prog = dp.program().expect("program");
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(40000 + i, 0)).collect();
    let mut dropped = 0;
    // 1000-byte frames 25 µs apart or more: 320 Mbit/s at most, over at least 50 ms (six
    // epochs of 8.4 ms); bounded in count.
    let mut counts = Vec::new();
    for i in 0..2000 {
        // Paced by spinning: a sleep's timer slack made the flows too slow to count at all.
        let next = Instant::now() + Duration::from_micros(25);
        let r = run_once(prog, &frames[i % frames.len()]);
        dropped += u32::from(r.action == XDP_DROP);
        if i % 100 == 99 {
            let reading = ClassReading::read(&dp, "bulk".into(), class).expect("policer state");
            counts.push(flows_sharing_at(&reading.state.fair, reading.epoch));
        }
        while Instant::now() < next {
            std::hint::spin_loop();
        }
    }
    eprintln!("flows counted, every 100 frames: {counts:?}");
    assert_eq!(dropped, 0, "under the rate nothing is dropped");
    assert!(
        counts[counts.len() / 2..].iter().all(|&n| n == 4),
        "the class counts its four flows once they run: {counts:?}"
    );
}
