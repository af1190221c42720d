//! Forwarding between multi-queue virtio-net NICs in native XDP mode, the NICs of a
//! virtual gateway rather than veths: run in the kernel matrix's guests, which have four
//! such NICs cabled vcli <-> vgin and vgout <-> vsrv (`cargo xtask vm --nics --kernel K
//! virtio`). A client namespace holds vcli, a server namespace vsrv, a gateway namespace
//! vgin and vgout with the real daemon on them.
//!
//! These tests need those NICs, so the host's `cargo xtask test` leaves them out (ignored,
//! said in its output); the VM suite runs them with `--ignored`, and they fail loudly where
//! a NIC is missing.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use dataplane_lab::{
    daemon::Daemon,
    net::kernel_forwarded,
    netns::{in_netns, ip, ip_quiet},
    traffic::{pace, Sink},
};

/// The guest's NICs (`cargo xtask vm --nics`): client, gateway in, gateway out, server.
const CLIENT_NIC: &str = "vcli";
const GATEWAY_IN: &str = "vgin";
const GATEWAY_OUT: &str = "vgout";
const SERVER_NIC: &str = "vsrv";
/// Queue pairs each NIC's device has (QEMU's `queues=`).
const DEVICE_QUEUES: u32 = 4;
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY_IN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GATEWAY_OUT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const PORT: u16 = 5001;
/// The policed class's rate (as the policy writes it, and in bit/s), and what the client
/// offers: twice it.
const RATE: &str = "20Mbit";
const RATE_BITS: f64 = 20e6;
const PAYLOAD: usize = 1000;
/// Ethernet + IPv4 + UDP: frame bytes (what the policer counts) less the payload.
const HEADERS: usize = 42;
/// The class's burst, about 200 ms of the rate: covers the sender's stalls under emulation
/// (a stalled sender loses what exceeds the burst, which is the policer working, not failing).
const BURST: &str = "512KiB";
/// Measurement windows (the median is taken) after a warm-up that drains the burst.
const WARM_UP: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(3);
const WINDOWS: usize = 3;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three namespaces holding the guest's NICs; on drop (also on failure) the namespaces go,
/// and the kernel returns the NICs to the root namespace.
struct Nics {
    client: String,
    gateway: String,
    server: String,
}

impl Nics {
    /// Client, gateway and server namespaces with the NICs, addresses and routes; the
    /// gateway's NICs get `gateway_queues` combined queue pairs each.
    fn new(gateway_queues: u32) -> Nics {
        dataplane_lab::kernel::require_root();
        if let Some(nic) = missing_nic(Duration::from_secs(10)) {
            panic!(
                "no NIC {nic}: these tests run in the kernel matrix's guests \
                 (cargo xtask vm --nics --kernel 6.1 virtio)"
            );
        }
        let id = std::process::id();
        let nics = Nics {
            client: format!("dpvirt{id}c"),
            gateway: format!("dpvirt{id}g"),
            server: format!("dpvirt{id}s"),
        };
        for (ns, members, addrs) in [
            (&nics.client, vec![CLIENT_NIC], vec![(CLIENT_NIC, CLIENT)]),
            (
                &nics.gateway,
                vec![GATEWAY_IN, GATEWAY_OUT],
                vec![
                    (GATEWAY_IN, GATEWAY_IN_ADDR),
                    (GATEWAY_OUT, GATEWAY_OUT_ADDR),
                ],
            ),
            (&nics.server, vec![SERVER_NIC], vec![(SERVER_NIC, SERVER)]),
        ] {
            ip_quiet(&["netns", "del", ns]);
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            for nic in members {
                ip(&["link", "set", nic, "netns", ns]);
            }
            for (nic, addr) in addrs {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", nic]);
                ip(&["-n", ns, "link", "set", nic, "up"]);
            }
        }
        for nic in [GATEWAY_IN, GATEWAY_OUT] {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &nics.gateway,
                    "ethtool",
                    "-L",
                    nic,
                    "combined",
                    &gateway_queues.to_string(),
                ],
            );
        }
        ip(&[
            "-n",
            &nics.client,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_IN_ADDR.to_string(),
        ]);
        ip(&[
            "-n",
            &nics.server,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_OUT_ADDR.to_string(),
        ]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &nics.gateway,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        nics
    }

    /// Datagrams from the client to the server until one arrives (the kernel resolves the
    /// neighbours of the first ones).
    fn resolve_neighbours(&self) {
        let sink = in_netns(&self.server, || {
            Sink::bind(SocketAddr::new(SERVER.into(), PORT + 1))
        })
        .expect("server namespace");
        let dst = SocketAddr::V4(SocketAddrV4::new(SERVER, PORT + 1));
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.count() == 0 {
            assert!(Instant::now() < deadline, "nothing crosses the gateway");
            in_netns(&self.client, || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
                let _ = s.send_to(b"resolve", dst);
            })
            .expect("client namespace");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The XDP mode of `nic` in the gateway: "xdp" (driver, native) or "xdpgeneric".
    fn xdp_mode(&self, nic: &str) -> String {
        let out = run("ip", &["-n", &self.gateway, "-d", "link", "show", nic]);
        ["xdpgeneric", "xdpdrv", "xdp"]
            .into_iter()
            .find(|m| out.split_whitespace().any(|w| w == *m))
            .unwrap_or("none")
            .to_string()
    }
}

impl Drop for Nics {
    fn drop(&mut self) {
        for ns in [&self.client, &self.gateway, &self.server] {
            ip_quiet(&["netns", "del", ns]);
        }
        // The kernel hands the NICs back to the root namespace after the namespaces are
        // gone, asynchronously: the next test waits for them.
        let _ = missing_nic(Duration::from_secs(10));
    }
}

/// A NIC still missing from this namespace after waiting up to `wait` for all four.
fn missing_nic(wait: Duration) -> Option<&'static str> {
    let deadline = Instant::now() + wait;
    loop {
        let missing = [CLIENT_NIC, GATEWAY_IN, GATEWAY_OUT, SERVER_NIC]
            .into_iter()
            .find(|nic| !std::path::Path::new("/sys/class/net").join(nic).exists());
        if missing.is_none() || Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn policy() -> String {
    format!(
        r#"
[[interface]]
name = "{GATEWAY_IN}"
forward = true

[[interface]]
name = "{GATEWAY_OUT}"
forward = true

[[class]]
name = "default"

[[class]]
name = "bulk"
rate = "{RATE}"
burst = "{BURST}"
exceed = "drop"

[[rule]]
class = "bulk"
protocol = "udp"
dst_port = {PORT}
"#
    )
}

/// A daemon on the gateway's NICs with [`policy`], started under `--netns`.
fn daemon(nics: &Nics) -> Daemon {
    let mut d = Daemon::create();
    d.write_config(&policy());
    d.start(&[
        "--netns",
        &nics.gateway,
        "--iface",
        GATEWAY_IN,
        "--iface",
        GATEWAY_OUT,
        "--xdp-mode",
        "native",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    d
}

/// A sample's value in the daemon's metrics.
fn metric(d: &Daemon, series: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = d.status_state_metrics_addr();
    let mut text = String::new();
    let mut stream = std::net::TcpStream::connect(addr).expect("the daemon serves metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("ask");
    stream.read_to_string(&mut text).expect("read metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[test]
#[ignore = "needs the kernel matrix's virtio-net NICs: cargo xtask vm --nics --kernel K virtio"]
fn forwarding_between_virtio_nics_polices_exactly_and_counts_right() {
    let _serial = serial();
    // Two queue pairs in use of four, two CPUs: XDP gets a transmit queue per CPU.
    let nics = Nics::new(DEVICE_QUEUES / 2);
    let d = daemon(&nics);
    for nic in [GATEWAY_IN, GATEWAY_OUT] {
        assert_eq!(nics.xdp_mode(nic), "xdp", "{nic} runs XDP in driver mode");
    }
    assert!(
        !d.log().contains("locked shared queues"),
        "no locked-mode warning with a queue pair per CPU free: {}",
        d.log()
    );
    nics.resolve_neighbours();
    let (kernel_before, _) = kernel_forwarded(&nics.gateway);

    let sink = in_netns(&nics.server, || {
        Sink::bind(SocketAddr::new(SERVER.into(), PORT))
    })
    .expect("server namespace");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (client, stop) = (nics.client.clone(), stop.clone());
        std::thread::spawn(move || {
            in_netns(&client, || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind sender");
                let pps = (2.0 * RATE_BITS / 8.0 / (PAYLOAD + HEADERS) as f64) as u64;
                let limit = pps * 120;
                pace(
                    &socket,
                    SocketAddr::V4(SocketAddrV4::new(SERVER, PORT)),
                    pps,
                    Duration::from_millis(1),
                    limit,
                    |elapsed| !stop.load(Ordering::Relaxed) && elapsed < Duration::from_secs(120),
                    |_, datagram| datagram.resize(PAYLOAD, 0x5a),
                )
            })
            .expect("client namespace")
        })
    };
    std::thread::sleep(WARM_UP);
    let mut rates = Vec::new();
    for _ in 0..WINDOWS {
        let (p0, b0, t0) = (
            sink.count(),
            sink.bytes.load(Ordering::Relaxed),
            Instant::now(),
        );
        std::thread::sleep(WINDOW);
        let (p1, b1, t1) = (
            sink.count(),
            sink.bytes.load(Ordering::Relaxed),
            Instant::now(),
        );
        let frame_bytes = (b1 - b0) + (p1 - p0) * HEADERS as u64;
        rates.push(frame_bytes as f64 * 8.0 / (t1 - t0).as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender thread");
    let received = sink.settle();
    rates.sort_by(f64::total_cmp);
    let rate = rates[WINDOWS / 2];
    eprintln!(
        "admitted {:.3} Mbit/s (windows {:?}) of {:.0} configured; {sent} sent, {received} received",
        rate / 1e6,
        rates.iter().map(|r| (r / 1e4).round() / 100.0).collect::<Vec<_>>(),
        RATE_BITS / 1e6
    );
    assert!(
        (rate / RATE_BITS - 1.0).abs() <= 0.01,
        "the class admits {:.3} Mbit/s at the server, not {:.0} ± 1%",
        rate / 1e6,
        RATE_BITS / 1e6
    );

    // Every datagram was classified on vgin: forwarded ones left by vgout, the rest dropped.
    let class = |iface: &str, counter: &str| d.class_counter(iface, "bulk", counter);
    let (packets, dropped) = (
        class(GATEWAY_IN, "packets"),
        class(GATEWAY_IN, "dropped_packets"),
    );
    let forwarded = metric(
        &d,
        &format!(
            r#"dataplane_class_forwarded_packets_total{{iface="{GATEWAY_OUT}",class="bulk"}}"#
        ),
    );
    eprintln!("counters: {packets} classified, {dropped} dropped, {forwarded} forwarded");
    assert_eq!(packets, sent, "every datagram sent is classified once");
    assert_eq!(forwarded, received, "the forwarded counter is what arrived");
    assert_eq!(packets - dropped, received, "what was not dropped arrived");
    let (kernel_after, _) = kernel_forwarded(&nics.gateway);
    assert!(
        kernel_after - kernel_before < 10,
        "the gateway's kernel forwarded {} datagrams: the dataplane should have",
        kernel_after - kernel_before
    );
}

#[test]
#[ignore = "needs the kernel matrix's virtio-net NICs: cargo xtask vm --nics --kernel K virtio"]
fn a_nic_whose_xdp_transmits_would_share_locked_queues_is_warned_about() {
    let _serial = serial();
    // Every queue pair in use, two CPUs: no room for XDP's own queues.
    let nics = Nics::new(DEVICE_QUEUES);
    let d = daemon(&nics);
    let log = d.log();
    for nic in [GATEWAY_IN, GATEWAY_OUT] {
        assert!(
            log.lines()
                .any(|l| l.contains("locked shared queues") && l.contains(nic)),
            "the daemon warns about {nic}: {log}"
        );
    }
    // The kernel agrees: virtio_net said so when the program was attached.
    let kernel = run("dmesg", &[]);
    assert!(
        kernel.contains("slower locked tx mode"),
        "virtio_net logs its locked mode too: {kernel}"
    );
}
