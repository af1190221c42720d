//! RoCEv2 with DCQCN through a class with `exceed = "ecn"`, in namespaces: a sender that
//! reacts to CNPs as DCQCN's reaction point does (a multiplicative cut per CNP, then timed
//! fast recovery and additive increase; Zhu et al., SIGCOMM 2015), and a receiver that turns
//! CE-marked packets into real CNP frames (BTH opcode 0x81) sent back through the gateway.
//! The sender must settle at the class rate on marks alone: marks come before drops, drops
//! stay under 0.1% of the packets, and no CNP is marked or dropped.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};
use dataplane_common::{ROCEV2_UDP_PORT, ROCE_OPCODE_CNP};
use dataplane_lab::{
    kernel::require_root,
    net::{forwarding_interfaces, recv_datagram, report_ip_fields, set_int_option, udp_socket},
    topology::{AttachTopology, Topology},
};

/// The class rate and ceiling, bytes per second (40 and 50 Mbit/s).
const RATE: f64 = 5_000_000.0;
const CEIL: f64 = 6_250_000.0;
/// UDP payload of a data packet: BTH and a 988-byte payload (1042-byte frames).
const PAYLOAD: usize = 1000;
/// Ethernet + IPv4 + UDP headers: what the policer counts beyond the UDP payload.
const OVERHEAD: usize = 42;
/// RC SEND-only, the data packets' BTH opcode.
const OPCODE_SEND: u8 = 0x04;
const ECT0: i32 = 0b10;
const CE: u8 = 0b11;
/// How long the sender runs, and the part measured (after it settled).
const RUN: Duration = Duration::from_secs(4);
const SETTLED: Duration = Duration::from_secs(1);

fn policy(topo: &Topology) -> String {
    let ifaces = forwarding_interfaces(topo);
    format!(
        "{ifaces}[[class]]\nname = \"default\"\n\
         [[class]]\nname = \"cnp\"\npriority = 7\n\
         [[class]]\nname = \"rdma\"\npriority = 6\nrate = \"40Mbit\"\nceil = \"50Mbit\"\n\
         exceed = \"ecn\"\nviolate = \"drop\"\n\
         [[rule]]\nclass = \"cnp\"\nprotocol = \"udp\"\ndst_port = {ROCEV2_UDP_PORT}\nroce_opcode = \"cnp\"\n\
         [[rule]]\nclass = \"rdma\"\nprotocol = \"udp\"\ndst_port = {ROCEV2_UDP_PORT}\n"
    )
}

/// A RoCEv2 UDP payload: the 12-byte base transport header with `opcode`, padded to `len`.
fn roce(opcode: u8, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = opcode;
    p[1] = 0x40; // migration state
    p[2..4].copy_from_slice(&0xffffu16.to_be_bytes()); // default P_Key
    p[7] = 0x11; // destination QP
    p
}

/// DCQCN's reaction point (the paper's algorithm, with a 1 ms rate-increase timer and no
/// byte counter).
struct ReactionPoint {
    /// Current and target rate, bytes per second.
    current: f64,
    target: f64,
    alpha: f64,
    /// Timer periods since the last cut.
    since_cut: u32,
}

impl ReactionPoint {
    const G: f64 = 1.0 / 16.0;
    const FAST_RECOVERY_STEPS: u32 = 5;
    /// Additive increase per timer period after fast recovery: 1 Mbit/s.
    const ADDITIVE: f64 = 125_000.0;

    fn cnp(&mut self) {
        self.target = self.current;
        self.current *= 1.0 - self.alpha / 2.0;
        self.alpha = (1.0 - Self::G) * self.alpha + Self::G;
        self.since_cut = 0;
    }

    fn timer(&mut self) {
        self.alpha *= 1.0 - Self::G;
        self.since_cut += 1;
        if self.since_cut > Self::FAST_RECOVERY_STEPS {
            self.target += Self::ADDITIVE;
        }
        self.current = (self.current + self.target) / 2.0;
    }
}

/// The notification point at the receiver: a CNP back for CE-marked packets, at most one per
/// 100 µs. Returns (packets, CE-marked, CNPs sent) once `stop` is set.
fn notification_point(rx: &UdpSocket, sender: SocketAddr, stop: &AtomicBool) -> (u64, u64, u64) {
    report_ip_fields(rx, false);
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let cnp = roce(ROCE_OPCODE_CNP, 32);
    let (mut packets, mut marked, mut cnps) = (0, 0, 0);
    let mut last_cnp = Instant::now() - Duration::from_secs(1);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Some(d) = recv_datagram(rx, &mut buf) else {
            continue;
        };
        packets += 1;
        if d.tos.is_some_and(|t| t & 0b11 == CE) {
            marked += 1;
            if last_cnp.elapsed() >= Duration::from_micros(100) {
                rx.send_to(&cnp, sender).expect("CNP sent");
                last_cnp = Instant::now();
                cnps += 1;
            }
        }
    }
    (packets, marked, cnps)
}

#[test]
fn dcqcn_settles_at_the_class_rate_on_marks_alone() {
    require_root();
    let topo = Topology::new(1).expect("topology builds");
    let policy = Policy::from_toml_str(&policy(&topo), "roce test").expect("policy");
    let mut dp = Dataplane::load().expect("the XDP object loads");
    dp.apply(&CompiledPolicy::new(&policy)).expect("apply");
    assert!(topo
        .attach(&mut dp, &policy, XdpMode::Driver)
        .expect("attach")
        .is_empty());
    let (client, server) = (&topo.clients[0], &topo.server);
    let sender_addr = SocketAddr::new(client.v4.into(), ROCEV2_UDP_PORT);
    let receiver_addr = SocketAddr::new(server.v4.into(), ROCEV2_UDP_PORT);
    let tx = udp_socket(&client.netns, sender_addr);
    let rx = udp_socket(&server.netns, receiver_addr);
    set_int_option(tx.as_raw_fd(), libc::IPPROTO_IP, libc::IP_TOS, ECT0);
    // Resolve the neighbours both ways (the first packets go through the kernel).
    let resolved = (0..50).any(|_| {
        tx.send_to(&roce(OPCODE_SEND, 64), receiver_addr).is_ok()
            && rx.recv(&mut [0u8; 128]).is_ok()
            && rx.send_to(&roce(OPCODE_SEND, 64), sender_addr).is_ok()
            && tx.recv(&mut [0u8; 128]).is_ok()
    });
    assert!(resolved, "the topology does not route");
    tx.set_nonblocking(true).expect("non-blocking");
    let rdma = policy.class_id("rdma").expect("class");
    let cnp_class = policy.class_id("cnp").expect("class");
    let counters = |class| {
        let mut sum = dataplane_common::maps::ClassCounters::default();
        for slot in 1..=2 {
            sum.add(&dp.class_counters(slot, class).expect("counters"));
        }
        sum
    };
    let before = (counters(rdma), counters(cnp_class));

    let stop = AtomicBool::new(false);
    let cnps_received = AtomicU64::new(0);
    let (sent, settled_bytes, np) = std::thread::scope(|s| {
        let np = s.spawn(|| notification_point(&rx, sender_addr, &stop));
        // Start at twice the ceiling, as a NIC starts at line rate.
        let mut rp = ReactionPoint {
            current: 2.0 * CEIL,
            target: 2.0 * CEIL,
            alpha: 1.0,
            since_cut: 0,
        };
        let data = roce(OPCODE_SEND, PAYLOAD);
        let start = Instant::now();
        let (mut sent, mut settled_bytes, mut credit) = (0u64, 0u64, 0.0f64);
        let mut tick = start;
        let mut buf = [0u8; 128];
        while start.elapsed() < RUN && sent < 1_000_000 {
            std::thread::sleep(Duration::from_micros(200));
            let now = Instant::now();
            // At most one cut per 1 ms timer period, as DCQCN rate-limits its decreases.
            let mut cut = false;
            while let Ok(n) = tx.recv(&mut buf) {
                if n > 0 && buf[0] == ROCE_OPCODE_CNP {
                    cnps_received.fetch_add(1, Ordering::Relaxed);
                    if !cut {
                        rp.cnp();
                        cut = true;
                    }
                }
            }
            if now.duration_since(tick) >= Duration::from_millis(1) {
                tick = now;
                if !cut {
                    rp.timer();
                }
            }
            credit += rp.current * 200e-6 / (PAYLOAD + OVERHEAD) as f64;
            while credit >= 1.0 {
                credit -= 1.0;
                if tx.send_to(&data, receiver_addr).is_ok() {
                    sent += 1;
                    if start.elapsed() >= SETTLED {
                        settled_bytes += (PAYLOAD + OVERHEAD) as u64;
                    }
                }
            }
        }
        // Let the last packets and CNPs arrive, then count the CNPs still unread.
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let np = np.join().expect("notification point");
        std::thread::sleep(Duration::from_millis(50));
        while let Ok(n) = tx.recv(&mut buf) {
            if n > 0 && buf[0] == ROCE_OPCODE_CNP {
                cnps_received.fetch_add(1, Ordering::Relaxed);
            }
        }
        (sent, settled_bytes, np)
    });
    let (received, marked, cnps_sent) = np;
    let (rdma_c, cnp_c) = (counters(rdma), counters(cnp_class));
    let dropped = rdma_c.dropped_packets - before.0.dropped_packets;
    let offered_rate = settled_bytes as f64 / (RUN - SETTLED).as_secs_f64();
    eprintln!(
        "sent {sent}, received {received}, {marked} CE, {dropped} dropped; CNPs {cnps_sent} \
         sent, {} received; settled offered rate {:.1} Mbit/s",
        cnps_received.load(Ordering::Relaxed),
        offered_rate * 8e-6
    );
    assert!(marked > 0 && cnps_sent > 0, "the class marked nothing");
    assert!(
        (dropped as f64) < 0.001 * sent as f64,
        "{dropped} of {sent} packets dropped: marks must come before drops"
    );
    assert_eq!(
        received + dropped,
        sent,
        "every packet delivered or dropped by policy"
    );
    assert!(
        (0.85 * RATE..=CEIL).contains(&offered_rate),
        "the sender settled at {:.1} Mbit/s, the class rate is 40 (ceiling 50)",
        offered_rate * 8e-6
    );
    assert_eq!(
        cnp_c.packets - before.1.packets,
        cnps_sent,
        "every CNP is classified as a CNP"
    );
    assert_eq!(
        cnp_c.dropped_packets - before.1.dropped_packets,
        0,
        "CNPs dropped"
    );
    assert_eq!(
        cnp_c.ecn_marked_packets - before.1.ecn_marked_packets,
        0,
        "CNPs marked"
    );
    assert_eq!(
        cnps_received.load(Ordering::Relaxed),
        cnps_sent,
        "every CNP reached the sender"
    );
}
