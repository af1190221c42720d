//! Forwarded flows follow the kernel's routing changes. A flow the dataplane forwards keeps
//! its next hop in the flow cache and skips the route lookup; the daemon hears every routing
//! change on rtnetlink and moves the route generation, and the flow's next packet looks its
//! route up again.
//!
//! Topology, four namespaces: client `c0` ⇄ `gc` gateway `ga` ⇄ `a0` (next hop A) and
//! `gb` ⇄ `b0` (next hop B). The destination 198.19.2.1 is on no link: the gateway routes it
//! via A. A UDP flow with a sequence number in each datagram runs at 10 000 packets/s; raw
//! captures on `a0` and `b0` (promiscuous) record where each datagram went and with which
//! destination MAC. Then one change is made (a route replaced, the next hop's MAC changed,
//! the egress interface taken down) and:
//! - no datagram sent after the daemon's move of the route generation is visible reaches the
//!   old next hop (counted, must be 0);
//! - the last datagram the old next hop got was sent within 100 ms of the change;
//! - the new next hop gets what was sent after the move.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use dataplane::pins::PinLayout;
use dataplane_common::maps::names;
use dataplane_lab::{
    daemon::Daemon,
    kernel::require_root,
    netns::{in_netns, ip, ip_quiet, netns_run, remove_leftovers, PREFIX},
};

/// Tests that send traffic share two CPUs: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const GATEWAY_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const HOP_A: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 2);
const HOP_B: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 6);
const DESTINATION: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 1);
const PORT: u16 = 9000;
const MAC_A: [u8; 6] = [0x02, 0xd0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0xd0, 0, 0, 0, 0x0b];
/// Next hop A's MAC after the neighbour change.
const MAC_A_NEW: [u8; 6] = [0x02, 0xd0, 0, 0, 0, 0xaa];
/// The flow: datagrams per millisecond (10 000 packets/s).
const PER_MS: u64 = 10;
/// How soon after a change the old next hop must stop getting the flow.
const FOLLOW_WITHIN: Duration = Duration::from_millis(100);
/// Bounds: the whole flow, the wait for the first datagrams and for the daemon's move.
const SEND_BOUND: Duration = Duration::from_secs(20);
const WAIT_BOUND: Duration = Duration::from_secs(5);
/// Route lookups one flow may need over a test: its first two packets, one after the change,
/// and one per expiry of the next hop's age (0.25 s at HZ=1000) over the flow's few seconds.
const MAX_LOOKUPS: u64 = 50;
/// How long the flow runs after the change.
const AFTER_CHANGE: Duration = Duration::from_millis(500);

/// The gateway forwards from the client side; both next hops' interfaces are egresses.
const POLICY: &str = "[[interface]]\nname = \"gc\"\nforward = true\n\
                      [[interface]]\nname = \"ga\"\n[[interface]]\nname = \"gb\"\n\
                      [[class]]\nname = \"default\"\n";

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// The four namespaces, deleted (with their veths) on drop, also when the test fails.
struct Lab {
    client: String,
    gateway: String,
    hop_a: String,
    hop_b: String,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        remove_leftovers();
        let base = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            client: format!("{base}c"),
            gateway: format!("{base}g"),
            hop_a: format!("{base}ha"),
            hop_b: format!("{base}hb"),
        };
        for ns in lab.all() {
            ip_quiet(&["netns", "del", ns]);
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let g = lab.gateway.as_str();
        for (gw_end, far, far_ns, gw_addr, far_addr, far_mac) in [
            (
                "gc",
                "c0",
                &lab.client,
                "198.18.1.1/24",
                "198.18.1.2/24",
                None,
            ),
            (
                "ga",
                "a0",
                &lab.hop_a,
                "198.19.1.1/30",
                "198.19.1.2/30",
                Some(MAC_A),
            ),
            (
                "gb",
                "b0",
                &lab.hop_b,
                "198.19.1.5/30",
                "198.19.1.6/30",
                Some(MAC_B),
            ),
        ] {
            ip(&[
                "-n", g, "link", "add", gw_end, "type", "veth", "peer", "name", far, "netns",
                far_ns,
            ]);
            ip(&["-n", g, "addr", "add", gw_addr, "dev", gw_end]);
            ip(&["-n", g, "link", "set", gw_end, "up"]);
            ip(&["-n", far_ns, "addr", "add", far_addr, "dev", far]);
            if let Some(m) = far_mac {
                ip(&["-n", far_ns, "link", "set", far, "address", &mac(m)]);
                // Captures see every frame, whatever its destination MAC.
                ip(&["-n", far_ns, "link", "set", far, "promisc", "on"]);
            }
            ip(&["-n", far_ns, "link", "set", far, "up"]);
            // A veth takes redirected frames only with NAPI on its peer (XDP, or GRO turned
            // on while the device is up).
            lab.exec(far_ns, "ethtool", &["-K", far, "gro", "on"]);
        }
        ip(&[
            "-n",
            &lab.client,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_CLIENT_SIDE.to_string(),
        ]);
        lab.exec(g, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        // Permanent neighbours: no ARP on the measured path.
        for (hop, m, dev) in [(HOP_A, MAC_A, "ga"), (HOP_B, MAC_B, "gb")] {
            lab.neighbour(hop, m, dev);
        }
        lab.route_via(HOP_A, "add", 10);
        lab
    }

    /// `ip route <verb>` of the destination via `hop` with `metric`.
    fn route_via(&self, hop: Ipv4Addr, verb: &str, metric: u32) {
        let dst = format!("{DESTINATION}/32");
        ip(&[
            "-n",
            &self.gateway,
            "route",
            verb,
            &dst,
            "via",
            &hop.to_string(),
            "metric",
            &metric.to_string(),
        ]);
    }

    fn all(&self) -> [&str; 4] {
        [&self.client, &self.gateway, &self.hop_a, &self.hop_b]
    }

    fn neighbour(&self, hop: Ipv4Addr, m: [u8; 6], dev: &str) {
        ip(&[
            "-n",
            &self.gateway,
            "neigh",
            "replace",
            &hop.to_string(),
            "lladdr",
            &mac(m),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }

    fn exec(&self, ns: &str, program: &str, args: &[&str]) {
        if let Err(e) = netns_run(ns, program, args) {
            panic!("{program} {} in {ns}: {e}", args.join(" "));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.all() {
            ip_quiet(&["netns", "del", ns]);
        }
    }
}

/// A raw capture of the flow's datagrams on one interface: (destination MAC, sequence).
struct Capture {
    seen: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<([u8; 6], u64)>>,
}

impl Capture {
    fn start(ns: &str, iface: &str) -> Capture {
        let (seen, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (ns, iface) = (ns.to_string(), iface.to_string());
        let (seen_in, stop_in) = (seen.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let socket = packet_socket(&iface);
                ready_tx.send(()).expect("capture ready");
                let mut frames = Vec::new();
                let mut buf = [0u8; 2048];
                while !stop_in.load(Ordering::Relaxed) {
                    // SAFETY: a valid socket and a buffer of the length passed.
                    let n = unsafe {
                        libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if let Some(seen) = usize::try_from(n)
                        .ok()
                        .and_then(|n| flow_datagram(&buf[..n]))
                    {
                        frames.push(seen);
                        seen_in.fetch_add(1, Ordering::Relaxed);
                    }
                }
                frames
            })
            .expect("entering the capture's namespace")
        });
        ready_rx
            .recv_timeout(WAIT_BOUND)
            .expect("the capture socket opens");
        Capture { seen, stop, thread }
    }

    fn finish(self) -> Vec<([u8; 6], u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("capture thread")
    }
}

/// An AF_PACKET socket receiving every frame of `iface`, with a short receive timeout so
/// its reader sees the stop flag.
fn packet_socket(iface: &str) -> OwnedFd {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let index = dataplane::dataplane::ifindex(iface).expect("capture interface exists");
    // SAFETY: zeroed sockaddr_ll is valid; bind reads the size passed.
    let rc = unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind to {iface}: {}",
        std::io::Error::last_os_error()
    );
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: a valid socket and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    let size: i32 = 8 << 20;
    // SAFETY: as above, with a c_int.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    fd
}

/// (destination MAC, sequence) of an untagged IPv4 UDP frame of the flow.
fn flow_datagram(f: &[u8]) -> Option<([u8; 6], u64)> {
    let ipv4_udp = f.len() >= 50 && f[12..14] == [0x08, 0x00] && f[14] == 0x45 && f[23] == 17;
    if !ipv4_udp || f[30..34] != DESTINATION.octets() || f[36..38] != PORT.to_be_bytes() {
        return None;
    }
    let dst: [u8; 6] = f[..6].try_into().ok()?;
    Some((dst, u64::from_be_bytes(f[42..50].try_into().ok()?)))
}

/// The flow: datagrams numbered 0, 1, ... at PER_MS per millisecond from the client, until
/// stopped (or SEND_BOUND). `sent` counts those handed to the kernel.
struct Flow {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Flow {
    fn start(ns: &str) -> Flow {
        let (sent, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (sent_in, stop_in) = (sent.clone(), stop.clone());
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let s = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).expect("client socket");
                s.connect(SocketAddrV4::new(DESTINATION, PORT))
                    .expect("connect");
                let start = Instant::now();
                let mut seq = 0u64;
                while !stop_in.load(Ordering::Relaxed) && start.elapsed() < SEND_BOUND {
                    let due = start.elapsed().as_millis() as u64 * PER_MS;
                    while seq < due {
                        // A full socket buffer or a transient error loses this one datagram;
                        // only datagrams handed over are counted as sent.
                        let _ = s.send(&seq.to_be_bytes());
                        seq += 1;
                        sent_in.store(seq, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
            .expect("entering the client namespace")
        });
        Flow { sent, stop, thread }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flow thread");
    }
}

/// The daemon's route generation, read from its pinned map.
fn route_generation(d: &Daemon) -> Array<MapData, u32> {
    let path = PinLayout::new(&d.pin_root).map(names::ROUTE_GENERATION);
    let data = MapData::from_pin(&path).expect("the pinned route generation opens");
    Array::try_from(Map::Array(data)).expect("an array")
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT_BOUND,
            "{what}: not within {WAIT_BOUND:?}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// What a change moves the flow to: captures on `a0` and `b0`, and which of their
/// datagrams count as the old and the new next hop.
enum Change {
    /// The route is replaced by one via B.
    Route,
    /// A's MAC changes (a new NIC on the same address).
    NeighbourMac,
    /// The egress to A goes down; a route via B with a higher metric takes over.
    EgressDown,
}

fn follows(change: Change) {
    let _serial = serial();
    let lab = Lab::new();
    if matches!(change, Change::EgressDown) {
        lab.route_via(HOP_B, "add", 20);
    }
    let mut d = Daemon::create();
    d.write_config(POLICY);
    d.start(&["--netns", &lab.gateway, "--iface", "gc"]);
    let generation = route_generation(&d);
    let (on_a, on_b) = (
        Capture::start(&lab.hop_a, "a0"),
        Capture::start(&lab.hop_b, "b0"),
    );
    let flow = Flow::start(&lab.client);
    // The flow reaches A and runs on its cached next hop (the first packets resolve the
    // gateway's MAC and fill the cache).
    wait_for("the flow reaches next hop A", || {
        on_a.seen.load(Ordering::Relaxed) >= 300
    });
    let before = generation.get(&0, 0).expect("route generation");
    let at_change = flow.sent();
    let changed_at = Instant::now();
    match change {
        Change::Route => {
            lab.route_via(HOP_B, "replace", 10);
        }
        Change::NeighbourMac => lab.neighbour(HOP_A, MAC_A_NEW, "ga"),
        Change::EgressDown => ip(&["-n", &lab.gateway, "link", "set", "ga", "down"]),
    }
    wait_for("the daemon moves the route generation", || {
        generation.get(&0, 0).expect("route generation") != before
    });
    let at_visible = flow.sent();
    let visible_after = changed_at.elapsed();
    std::thread::sleep(AFTER_CHANGE);
    let last_sent = flow.sent();
    flow.finish();
    // Datagrams in flight arrive.
    std::thread::sleep(Duration::from_millis(100));
    let (a, b) = (on_a.finish(), on_b.finish());

    let (old, new): (Vec<u64>, Vec<u64>) = match change {
        Change::Route | Change::EgressDown => (
            a.iter().map(|(_, s)| *s).collect(),
            b.iter().map(|(_, s)| *s).collect(),
        ),
        Change::NeighbourMac => {
            assert!(b.is_empty(), "nothing goes to B: {} datagrams", b.len());
            let with = |m: [u8; 6]| a.iter().filter(|(d, _)| *d == m).map(|(_, s)| *s).collect();
            (with(MAC_A), with(MAC_A_NEW))
        }
    };
    let late = old.iter().filter(|s| **s >= at_visible).count();
    let last_old = old.iter().copied().max().unwrap_or(0);
    let followed_after = Duration::from_micros(last_old.saturating_sub(at_change) * 1000 / PER_MS);
    let new_after_visible = new.iter().filter(|s| **s >= at_visible).count() as u64;
    eprintln!(
        "change seen by the daemon after {visible_after:?} ({} datagrams); last datagram to \
         the old next hop sent {followed_after:?} after the change; after the move: {late} \
         to the old next hop, {new_after_visible} of {} to the new one",
        at_visible - at_change,
        last_sent - at_visible
    );
    assert_eq!(
        late, 0,
        "datagrams sent after the route generation moved reached the old next hop"
    );
    assert!(
        followed_after <= FOLLOW_WITHIN,
        "the old next hop got the flow until {followed_after:?} after the change"
    );
    assert!(
        new_after_visible * 100 >= (last_sent - at_visible) * 95,
        "the new next hop got {new_after_visible} of the {} datagrams sent after the move",
        last_sent - at_visible
    );
    // The flow ran on its cached next hop: a lookup for its first packets, one after the
    // change, and one each time the next hop aged out, out of thousands of datagrams.
    let lookups = d.iface_counter("gc", "route_lookups");
    eprintln!("route lookups: {lookups} for {last_sent} datagrams");
    assert!(
        lookups <= MAX_LOOKUPS,
        "{lookups} route lookups for {last_sent} datagrams of one flow"
    );
    let log = d.log();
    assert!(!log.contains("rtnetlink subscription closed"), "{log}");
}

/// An egress that cannot take redirected frames (a veth whose peer has neither XDP nor GRO):
/// the lost frames are counted on it, shown by `stats`, and the daemon warns.
#[test]
fn redirect_failures_are_counted_and_the_daemon_warns() {
    let _serial = serial();
    let lab = Lab::new();
    lab.exec(&lab.hop_b, "ethtool", &["-K", "b0", "gro", "off"]);
    lab.route_via(HOP_B, "replace", 10);
    let mut d = Daemon::create();
    d.write_config(POLICY);
    d.start(&["--netns", &lab.gateway, "--iface", "gc"]);
    let on_b = Capture::start(&lab.hop_b, "b0");
    let flow = Flow::start(&lab.client);
    wait_for("redirect failures are counted on gb", || {
        d.iface_counter("gb", "redirect_failures") >= 100
    });
    // Said at start, from the kernel's XDP features, and again once frames are lost.
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("gb") && l.contains("cannot take redirected XDP frames")),
        "no warning about gb at start:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("ga") && l.contains("cannot take")),
        "ga takes redirected frames:\n{log}"
    );
    wait_for("the daemon warns of lost frames", || {
        d.log()
            .contains("frames forwarded out of this interface were lost")
    });
    flow.finish();
    let arrived = on_b.finish().len();
    assert_eq!(
        arrived, 0,
        "B got {arrived} datagrams through an egress without NAPI"
    );
    assert_eq!(d.iface_counter("ga", "redirect_failures"), 0);
}

#[test]
fn a_replaced_route_moves_forwarded_flows_to_the_new_next_hop() {
    follows(Change::Route);
}

#[test]
fn a_changed_neighbour_mac_is_used_by_forwarded_flows() {
    follows(Change::NeighbourMac);
}

#[test]
fn an_egress_going_down_moves_forwarded_flows_to_the_remaining_route() {
    follows(Change::EgressDown);
}
