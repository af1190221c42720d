//! Forwarding in XDP with real traffic: client → gateway → server in network namespaces
//! (`dataplane_lab::topology`), the dataplane attached natively on the gateway's veths.
//!
//! Forwarded flows must arrive intact with TTL / hop limit decremented while the gateway's
//! kernel forwards none of their packets; the policy runs before forwarding (rates at the
//! receiver, priorities under a saturated link budget, ECN marks); with forwarding off the
//! kernel forwards and the policy still applies; what the route lookup cannot finish goes to
//! the kernel, counted by reason, and the kernel answers (ICMP).

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    dataplane::{ifindex, Dataplane},
    forward::mac_address,
};
use dataplane_common::{maps::ForwardCounters, reason::Reason};
use dataplane_lab::{
    frames::{ipv4_header_checksum_ok, Frame},
    kernel::{ingress_ctx, pin_to_cpu, require_root},
    net::{
        icmp_error, kernel_forwarded, report_ip_fields, set_int_option, tcp_transfer,
        udp_send_paced, udp_socket, IperfServer,
    },
    netns::{in_netns, netns_run},
    rates::{scaled_interval, scaled_rate},
    topology::{AttachTopology, Topology},
};

/// Traffic tests share two CPUs: rates and costs are only meaningful one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Interface slots: the policy lists the client-facing interface first, then the server's.
const CLIENT_SLOT: u32 = 1;
const SERVER_SLOT: u32 = 2;
/// Ethernet + IPv4 + UDP headers: frame bytes (what the policer counts) minus UDP payload.
const UDP_V4_OVERHEAD: f64 = 42.0;
/// iperf3 UDP payload size.
const IPERF_LEN: f64 = 1400.0;
/// iperf3 reporting interval and test length.
const IPERF_INTERVAL: Duration = Duration::from_millis(500);
const IPERF_SECONDS: &str = "3";
/// ECN codepoints.
const ECT0: u8 = 0b10;
const CE: u8 = 0b11;

/// A topology with the dataplane attached on its gateway; the dataplane goes first.
struct Setup {
    dp: Dataplane,
    policy: Policy,
    topo: Topology,
}

impl Setup {
    /// One client, the policy `toml(topology)` applied and attached, neighbours resolved.
    fn new(toml: impl FnOnce(&Topology) -> String) -> Setup {
        require_root();
        let topo = Topology::new(1).expect("topology builds");
        let policy = Policy::from_toml_str(&toml(&topo), "forwarding test").expect("policy");
        let mut dp = Dataplane::load().expect("the XDP object loads");
        dp.apply(&CompiledPolicy::new(&policy)).expect("apply");
        let missing = topo
            .attach(&mut dp, &policy, XdpMode::Driver)
            .expect("attach on the gateway");
        assert!(missing.is_empty(), "interfaces missing: {missing:?}");
        let setup = Setup { dp, policy, topo };
        setup.resolve_neighbours();
        setup
    }

    fn class(&self, name: &str) -> u32 {
        self.policy.class_id(name).expect("class exists")
    }

    fn client(&self, v6: bool) -> (&str, IpAddr) {
        let c = &self.topo.clients[0];
        (&c.netns, if v6 { c.v6.into() } else { c.v4.into() })
    }

    fn server(&self, v6: bool) -> (&str, IpAddr) {
        let s = &self.topo.server;
        (&s.netns, if v6 { s.v6.into() } else { s.v4.into() })
    }

    /// One datagram each way per family until it arrives: the first packets towards an
    /// unresolved neighbour go through the kernel, which resolves it.
    fn resolve_neighbours(&self) {
        for v6 in [false, true] {
            let (cns, caddr) = self.client(v6);
            let (sns, saddr) = self.server(v6);
            let c = udp_socket(cns, SocketAddr::new(caddr, 0));
            let s = udp_socket(sns, SocketAddr::new(saddr, 0));
            for (from, to) in [(&c, &s), (&s, &c)] {
                let dst = to.local_addr().expect("address");
                let arrived = (0..10).any(|_| {
                    from.send_to(b"resolve", dst).expect("send");
                    to.recv(&mut [0u8; 16]).is_ok()
                });
                if !arrived {
                    let counted = |slot| {
                        self.reasons(slot)
                            .iter()
                            .zip(Reason::ALL)
                            .filter(|(n, _)| **n > 0)
                            .map(|(n, r)| format!("{}={n}", r.label()))
                            .collect::<Vec<_>>()
                    };
                    panic!(
                        "no datagram reached {dst}: the topology does not route \
                         (reasons: client side {:?}, server side {:?})",
                        counted(CLIENT_SLOT),
                        counted(SERVER_SLOT)
                    );
                }
            }
        }
    }

    /// Forwarded counters of `class` out of both gateway interfaces.
    fn forwarded(&self, class: u32) -> ForwardCounters {
        let mut sum = ForwardCounters::default();
        for slot in [CLIENT_SLOT, SERVER_SLOT] {
            sum.add(&self.dp.forward_counters(slot, class).expect("counters"));
        }
        sum
    }

    fn reasons(&self, slot: u32) -> Vec<u64> {
        self.dp
            .iface_counters(slot)
            .expect("counters")
            .reasons
            .to_vec()
    }
}

/// Default class, both gateway interfaces listed (`forward` as given, `link_rate` on the
/// client side when given), then `rest` (classes and rules).
fn policy(topo: &Topology, forward: bool, link_rate: Option<&str>, rest: &str) -> String {
    let link = link_rate.map_or(String::new(), |r| format!("link_rate = \"{r}\"\n"));
    format!(
        r#"
[[interface]]
name = "{client}"
forward = {forward}
{link}
[[interface]]
name = "{server}"
forward = {forward}

[[class]]
name = "default"
priority = 7
{rest}"#,
        client = topo.clients[0].gateway_iface,
        server = topo.server.gateway_iface,
    )
}

fn mbit(bytes_per_sec: f64) -> f64 {
    bytes_per_sec * 8.0 / 1e6
}

#[test]
fn forwarded_flows_arrive_intact_and_bypass_the_kernel() {
    let _serial = serial();
    let s = Setup::new(|t| policy(t, true, None, ""));
    let default = s.class("default");
    let kernel_before = kernel_forwarded(&s.topo.gateway);
    let ours_before = s.forwarded(default);

    const TCP_BYTES: u64 = 8 << 20;
    const DATAGRAMS: u32 = 300;
    for v6 in [false, true] {
        let (cns, _) = s.client(v6);
        let (sns, saddr) = s.server(v6);
        let took = tcp_transfer(cns, sns, SocketAddr::new(saddr, 5001), TCP_BYTES);
        eprintln!(
            "TCP {}: {TCP_BYTES} bytes intact in {took:.2?} ({:.0} Mbit/s)",
            if v6 { "v6" } else { "v4" },
            mbit(TCP_BYTES as f64 / took.as_secs_f64())
        );
    }
    for v6 in [false, true] {
        let (cns, caddr) = s.client(v6);
        let (sns, saddr) = s.server(v6);
        let from = udp_socket(cns, SocketAddr::new(caddr, 0));
        let to = udp_socket(sns, SocketAddr::new(saddr, 6001));
        let (level, option) = if v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
        } else {
            (libc::IPPROTO_IP, libc::IP_TTL)
        };
        set_int_option(from.as_raw_fd(), level, option, 64);
        report_ip_fields(&to, v6);
        let got = udp_send_paced(&from, &to, DATAGRAMS, 1200, 20, Duration::from_millis(2));
        assert_eq!(got.len(), DATAGRAMS as usize, "v6 {v6}: datagrams lost");
        assert!(got.iter().all(|(_, intact)| *intact), "v6 {v6}: corrupted");
        assert!(
            got.iter().all(|(d, _)| d.hop_limit == Some(63)),
            "v6 {v6}: sent with 64, one hop must leave 63: {:?}",
            got.iter().map(|(d, _)| d.hop_limit).collect::<Vec<_>>()
        );
    }
    let (sns, saddr) = s.server(false);
    let iperf = IperfServer::start(sns, SocketAddr::new(saddr, 5201), IPERF_INTERVAL)
        .run_client(s.client(false).0, &["-t", "2"]);
    let tcp_rate = iperf.steady_rate();
    eprintln!(
        "iperf3 TCP v4 through XDP forwarding: {:.0} Mbit/s",
        mbit(tcp_rate)
    );
    assert!(tcp_rate > 1e6, "iperf3 TCP reached only {tcp_rate:.0} B/s");

    let kernel_after = kernel_forwarded(&s.topo.gateway);
    let ours = s.forwarded(default);
    let forwarded = ours.packets - ours_before.packets;
    eprintln!("forwarded by XDP: {forwarded} packets; by the gateway's kernel: {kernel_before:?} -> {kernel_after:?}");
    assert_eq!(
        kernel_after, kernel_before,
        "the gateway's kernel forwarded packets of flows XDP should have forwarded"
    );
    let least = 2 * (TCP_BYTES / 1500) + 2 * u64::from(DATAGRAMS);
    assert!(
        forwarded >= least,
        "XDP forwarded {forwarded} packets, the flows had at least {least}"
    );
}

/// iperf3 UDP offering `offered` bits per second (at this run's rate scale) from the client
/// to `port`; the receiver's steady frame rate.
fn iperf_udp(s: &Setup, port: u16, offered: f64) -> f64 {
    iperf_udp_run(s, port, offered).0
}

/// [`iperf_udp`] and whether iperf3 had to repeat the run.
fn iperf_udp_run(s: &Setup, port: u16, offered: f64) -> (f64, bool) {
    let (sns, saddr) = s.server(false);
    let server = IperfServer::start(sns, SocketAddr::new(saddr, port), IPERF_INTERVAL);
    let offered = format!("{:.0}", scaled_rate(offered).0);
    let result = server.run_client(
        s.client(false).0,
        &["-u", "-b", &offered, "-l", "1400", "-t", IPERF_SECONDS],
    );
    let rate = result.steady_rate() * (IPERF_LEN + UDP_V4_OVERHEAD) / IPERF_LEN;
    (rate, result.reruns > 0)
}

fn assert_within(what: &str, got: f64, want: f64, tolerance: f64) {
    let err = (got - want) / want;
    eprintln!(
        "{what}: {:.2} Mbit/s, expected {:.2} ({:+.1}%)",
        mbit(got),
        mbit(want),
        err * 100.0
    );
    assert!(
        err.abs() <= tolerance,
        "{what}: {:.2} Mbit/s vs {:.2} expected ({:+.1}%)",
        mbit(got),
        mbit(want),
        err * 100.0
    );
}

#[test]
fn a_policed_class_arrives_at_its_rate() {
    let _serial = serial();
    let (bps, rate) = scaled_rate(40e6);
    let s = Setup::new(|t| {
        policy(
            t,
            true,
            None,
            &format!(
                r#"
[[class]]
name = "limited"
rate = "{rate}"
exceed = "drop"

[[rule]]
class = "limited"
protocol = "udp"
dst_port = 5202
"#
            ),
        )
    });
    let got = iperf_udp(&s, 5202, 80e6);
    assert_within("policed class at the receiver", got, bps / 8.0, 0.05);
    let c =
        s.dp.class_counters(CLIENT_SLOT, s.class("limited"))
            .expect("counters");
    assert!(
        c.dropped_packets > 0,
        "the excess must be dropped by policy"
    );
    assert!(s.forwarded(s.class("limited")).packets > 0, "not forwarded");
}

#[test]
fn high_priority_keeps_its_rate_on_a_saturated_link() {
    let _serial = serial();
    let ((link_bps, link_rate), (high_bps, high_rate)) = (scaled_rate(60e6), scaled_rate(30e6));
    let (link, high_committed) = (link_bps / 8.0, high_bps / 8.0);
    let s = Setup::new(|t| {
        policy(
            t,
            true,
            Some(&link_rate),
            &format!(
                r#"
[[class]]
name = "high"
priority = 6
rate = "{high_rate}"

[[class]]
name = "low"
priority = 0

[[rule]]
class = "high"
protocol = "udp"
dst_port = 5203

[[rule]]
class = "low"
protocol = "udp"
dst_port = 5204
"#
            ),
        )
    });
    // The two flows must overlap: a pair in which iperf3 repeated one run (it aborts now
    // and then on a busy machine) measured them at different times, and is taken again.
    let mut attempts = 0;
    let (high, low) = loop {
        attempts += 1;
        let ((high, high_rerun), (low, low_rerun)) = std::thread::scope(|scope| {
            let high = scope.spawn(|| iperf_udp_run(&s, 5203, 45e6));
            let low = scope.spawn(|| iperf_udp_run(&s, 5204, 90e6));
            (
                high.join().expect("high flow"),
                low.join().expect("low flow"),
            )
        });
        if !(high_rerun || low_rerun) || attempts == 3 {
            break (high, low);
        }
        eprintln!("a run was repeated, so the flows did not overlap: measuring the pair again");
    };
    eprintln!(
        "offered 3/4 + 3/2 of a {:.1} Mbit/s link: high {:.1}, low {:.1} Mbit/s",
        mbit(link),
        mbit(high),
        mbit(low)
    );
    assert!(
        high >= 0.95 * high_committed,
        "high priority got {:.1} Mbit/s, below its committed {:.1}",
        mbit(high),
        mbit(high_committed)
    );
    assert_within("high + low (the link budget)", high + low, link, 0.07);
    assert!(
        low > 0.1 * link,
        "low priority must get the rest, got {:.1} Mbit/s",
        mbit(low)
    );
}

/// Sends `count` paced 1000-byte datagrams with DS field `tos` from the client to `port`;
/// returns the DS fields of those that arrived.
fn send_with_tos(s: &Setup, port: u16, tos: u8, count: u32) -> Vec<u8> {
    let (cns, caddr) = s.client(false);
    let (sns, saddr) = s.server(false);
    let from = udp_socket(cns, SocketAddr::new(caddr, 0));
    set_int_option(
        from.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_TOS,
        i32::from(tos),
    );
    let to = udp_socket(sns, SocketAddr::new(saddr, port));
    report_ip_fields(&to, false);
    // 20 datagrams every 5 ms: about 33 Mbit/s of frames, four times the classes' rate (both
    // at this run's rate scale).
    let every = scaled_interval(Duration::from_millis(5));
    udp_send_paced(&from, &to, count, 1000, 20, every)
        .iter()
        .map(|(d, intact)| {
            assert!(intact, "datagram corrupted");
            d.tos.expect("the kernel reports the TOS")
        })
        .collect()
}

/// Two classes at 8 Mbit/s (at this run's rate scale) with a burst of 16 KiB, which
/// [`send_with_tos`] overruns four times.
fn ecn_classes() -> String {
    let (_, rate) = scaled_rate(8e6);
    format!(
        r#"
[[class]]
name = "ect"
rate = "{rate}"
burst = "16KiB"
exceed = "ecn"

[[class]]
name = "not_ect"
rate = "{rate}"
burst = "16KiB"
exceed = "ecn"

[[rule]]
class = "ect"
protocol = "udp"
dst_port = 6100

[[rule]]
class = "not_ect"
protocol = "udp"
dst_port = 6101
"#
    )
}

#[test]
fn ecn_marks_capable_traffic_over_its_rate_and_drops_the_rest() {
    let _serial = serial();
    const SENT: u32 = 600;
    let s = Setup::new(|t| policy(t, true, None, &ecn_classes()));

    let ect = send_with_tos(&s, 6100, ECT0, SENT);
    let marked = ect.iter().filter(|t| *t & 0b11 == CE).count();
    eprintln!("ECT(0): {} of {SENT} arrived, {marked} with CE", ect.len());
    assert_eq!(
        ect.len(),
        SENT as usize,
        "ECN-capable traffic is marked, not dropped"
    );
    assert!(
        marked >= SENT as usize / 2 && marked < SENT as usize,
        "{marked} of {SENT} marked: the part over the rate (about 3/4) must carry CE, \
         the burst not"
    );
    let c =
        s.dp.class_counters(CLIENT_SLOT, s.class("ect"))
            .expect("counters");
    assert_eq!(c.ecn_marked_packets, marked as u64, "marks counted");

    let before = s.reasons(CLIENT_SLOT)[Reason::EcnNotCapable as usize];
    let plain = send_with_tos(&s, 6101, 0, SENT);
    let dropped = s.reasons(CLIENT_SLOT)[Reason::EcnNotCapable as usize] - before;
    eprintln!(
        "not ECT: {} of {SENT} arrived, {dropped} dropped",
        plain.len()
    );
    assert!(plain.iter().all(|t| t & 0b11 == 0), "CE on non-ECT traffic");
    assert!(
        !plain.is_empty() && plain.len() <= SENT as usize / 2,
        "{} of {SENT} non-ECT datagrams arrived: only about the rate's share may",
        plain.len()
    );
    assert_eq!(
        dropped + plain.len() as u64,
        u64::from(SENT),
        "every non-ECT datagram is either delivered or dropped as ecn_not_capable"
    );
}

#[test]
fn without_forwarding_the_kernel_forwards_and_the_policy_still_applies() {
    let _serial = serial();
    const SENT: u32 = 600;
    let s = Setup::new(|t| policy(t, false, None, &ecn_classes()));
    let before = kernel_forwarded(&s.topo.gateway);

    for v6 in [false, true] {
        let (cns, _) = s.client(v6);
        let (sns, saddr) = s.server(v6);
        tcp_transfer(cns, sns, SocketAddr::new(saddr, 5002), 1 << 20);
    }
    let plain = send_with_tos(&s, 6101, 0, SENT);
    eprintln!(
        "policy without forwarding: {} of {SENT} arrived",
        plain.len()
    );
    assert!(
        !plain.is_empty() && plain.len() <= SENT as usize / 2,
        "{} of {SENT} arrived: the class's rate must still hold",
        plain.len()
    );
    let after = kernel_forwarded(&s.topo.gateway);
    assert!(
        after.0 - before.0 >= plain.len() as u64 && after.1 > before.1,
        "the gateway's kernel must have forwarded the traffic: {before:?} -> {after:?}"
    );
    for class in ["default", "not_ect"] {
        assert_eq!(
            s.forwarded(s.class(class)),
            ForwardCounters::default(),
            "{class}: XDP forwarded with forwarding off"
        );
    }
}

#[test]
fn what_the_route_lookup_cannot_finish_goes_to_the_kernel() {
    let _serial = serial();
    let s = Setup::new(|t| policy(t, true, None, ""));
    let gw = &s.topo.gateway;
    for (kind, prefix) in [
        ("blackhole", "198.19.100.0/24"),
        ("unreachable", "198.19.101.0/24"),
        ("prohibit", "198.19.102.0/24"),
    ] {
        netns_run(gw, "ip", &["route", "add", kind, prefix]).expect("route");
    }
    netns_run(
        gw,
        "ip",
        &["-6", "route", "add", "unreachable", "2001:db8:101::/48"],
    )
    .expect("route");

    let before = s.reasons(CLIENT_SLOT);
    // Expired TTL / hop limit: passed, and the kernel answers with time exceeded. First,
    // while the kernel's per-destination ICMP rate limit has tokens.
    let ttl_error = |v6: bool| {
        let (cns, caddr) = s.client(v6);
        let (_, saddr) = s.server(v6);
        let sock = udp_socket(cns, SocketAddr::new(caddr, 0));
        let fd = sock.as_raw_fd();
        if v6 {
            set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 1);
            set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1);
        } else {
            set_int_option(fd, libc::IPPROTO_IP, libc::IP_TTL, 1);
            set_int_option(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
        }
        sock.send_to(b"expires here", SocketAddr::new(saddr, 7001))
            .expect("send");
        icmp_error(&sock, Duration::from_secs(2))
    };
    let (ttl4, ttl6) = (ttl_error(false), ttl_error(true));

    let (cns, caddr) = s.client(false);
    let to = |addr: &str| SocketAddr::new(addr.parse().expect("address"), 7000);
    // This socket hears the ICMP error; the others only send (an error queued on a socket
    // fails its next send).
    let probe = udp_socket(cns, SocketAddr::new(caddr, 0));
    set_int_option(probe.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVERR, 1);
    probe
        .send_to(b"no way through", to("198.19.101.1"))
        .expect("send");
    let unreachable = icmp_error(&probe, Duration::from_secs(2));
    let client = udp_socket(cns, SocketAddr::new(caddr, 0));
    for addr in [
        "198.19.100.1", // blackhole
        "198.19.102.1", // prohibit
        "198.19.200.1", // no route at all
        "198.18.1.1",   // the gateway itself
        "198.19.0.3",   // a neighbour nobody answers for
    ] {
        client.send_to(b"no way through", to(addr)).expect("send");
    }
    let (cns6, caddr6) = s.client(true);
    let client6 = udp_socket(cns6, SocketAddr::new(caddr6, 0));
    client6
        .send_to(b"no way through", to("2001:db8:101::1"))
        .expect("send");

    let after = s.reasons(CLIENT_SLOT);
    let delta = |r: Reason| after[r as usize] - before[r as usize];
    for (reason, least) in [
        (Reason::FibBlackhole, 1),
        (Reason::FibUnreachable, 2),
        (Reason::FibProhibit, 1),
        (Reason::FibNotForwarded, 2),
        (Reason::FibNoNeighbour, 1),
        (Reason::TtlExpired, 2),
    ] {
        assert!(
            delta(reason) >= least,
            "{}: counted {}, expected at least {least}",
            reason.label(),
            delta(reason)
        );
    }
    const ICMP_DEST_UNREACH: u8 = 3;
    const ICMP_TIME_EXCEEDED: u8 = 11;
    const ICMPV6_TIME_EXCEEDED: u8 = 3;
    let kind = |e: Option<dataplane_lab::net::IcmpError>| e.map(|e| e.kind);
    assert_eq!(
        kind(unreachable),
        Some(ICMP_DEST_UNREACH),
        "unreachable route: {unreachable:?}"
    );
    assert_eq!(kind(ttl4), Some(ICMP_TIME_EXCEEDED), "TTL 1: {ttl4:?}");
    assert_eq!(
        kind(ttl6),
        Some(ICMPV6_TIME_EXCEEDED),
        "hop limit 1: {ttl6:?}"
    );
}

/// Mean time of single BPF_PROG_TEST_RUN runs of `frame` arriving on `ingress`, in ns, and
/// the last run's verdict and output. Single runs: each must start from the original frame
/// (a repeated run would see its own rewritten MACs).
fn single_runs(prog: &Xdp, frame: &[u8], ingress: u32, runs: u32) -> (f64, u32, Vec<u8>) {
    let ctx = ingress_ctx(ingress, frame.len());
    let mut total = 0u128;
    let mut last = (0, Vec::new());
    for _ in 0..runs {
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        total += res.duration.as_nanos();
        out.truncate(res.data_size_out as usize);
        last = (res.return_value, out);
    }
    (total as f64 / f64::from(runs), last.0, last.1)
}

#[test]
fn forwarding_rewrites_the_frame_and_its_cost_is_measured() {
    let _serial = serial();
    const RUNS: u32 = 100_000;
    const XDP_REDIRECT: u32 = 4;
    const XDP_PASS: u32 = 2;
    let s = Setup::new(|t| policy(t, true, None, ""));
    let c = &s.topo.clients[0];
    let srv = &s.topo.server;
    let gw = &s.topo.gateway;
    let mac = |netns: &str, iface: &str| {
        in_netns(netns, || mac_address(iface))
            .expect("netns")
            .expect("MAC")
    };
    let gw_in_mac = mac(gw, &c.gateway_iface);
    let gw_out_mac = mac(gw, &srv.gateway_iface);
    let server_mac = mac(&srv.netns, &srv.iface);
    let frame = {
        let mut f = Frame::eth()
            .ipv4(c.v4.octets(), srv.v4.octets())
            .ttl(64)
            .udp(40000, 7000)
            .pad_to(512)
            .build();
        f[..6].copy_from_slice(&gw_in_mac);
        f
    };

    let (forwarding, pass_cost) = in_netns(gw, || {
        pin_to_cpu(0);
        let ingress = ifindex(&c.gateway_iface).expect("ifindex");
        let forwarding = single_runs(s.dp.program().expect("prog"), &frame, ingress, RUNS);
        let floor = single_runs(s.dp.pass_program().expect("prog"), &frame, ingress, RUNS).0;
        (forwarding, floor)
    })
    .expect("netns");
    let (forward_ns, action, out) = forwarding;
    assert_eq!(
        action, XDP_REDIRECT,
        "a routable frame to the server is redirected"
    );
    assert_eq!(&out[..6], &server_mac, "destination MAC: the server's");
    assert_eq!(
        &out[6..12],
        &gw_out_mac,
        "source MAC: the gateway's egress interface"
    );
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert!(ipv4_header_checksum_ok(&out, 14), "IPv4 checksum updated");
    assert_eq!(out.len(), frame.len(), "length unchanged");
    assert_eq!(
        out[14..14 + 8],
        frame[14..14 + 8],
        "header before the TTL unchanged"
    );
    assert_eq!(out[14 + 9], frame[14 + 9], "protocol unchanged");
    assert_eq!(
        out[14 + 12..],
        frame[14 + 12..],
        "addresses and payload unchanged"
    );

    // The same frame with forwarding off on the interface: the policy-only path.
    let mut no_forward = s.policy.clone();
    no_forward
        .interfaces
        .iter_mut()
        .for_each(|i| i.forward = false);
    let mut dp = s.dp;
    in_netns(gw, || dp.register_interfaces(&no_forward, &[]))
        .expect("netns")
        .expect("re-register");
    let (pass_ns, action, _) = in_netns(gw, || {
        pin_to_cpu(0);
        let ingress = ifindex(&c.gateway_iface).expect("ifindex");
        single_runs(dp.program().expect("prog"), &frame, ingress, RUNS)
    })
    .expect("netns");
    assert_eq!(action, XDP_PASS, "forwarding off: passed to the kernel");
    eprintln!(
        "per packet (single BPF_PROG_TEST_RUN runs, {RUNS} each): empty program {pass_cost:.0} ns, \
         policy + pass {pass_ns:.0} ns, policy + forward {forward_ns:.0} ns \
         (forwarding adds {:.0} ns)",
        forward_ns - pass_ns
    );
}
