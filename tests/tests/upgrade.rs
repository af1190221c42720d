//! Upgrades in place, under traffic: a daemon of another release started over the dataplane
//! an older one pinned takes it over while a forwarding gateway carries two flows, and
//! nothing a user sees is disturbed:
//! - a numbered UDP flow (10 000 packets/s, an unlimited class) loses no datagram;
//! - a policed class offered twice its rate is admitted within ±1% of it, over windows
//!   before, across and after the swap;
//! - no class counter ever goes backwards (sampled every 50 ms by each release's CLI).
//!
//! Releases (`cargo xtask test` builds the other two under `target/upgrade/`): today's main
//! (`main-v7`, pinned layout v7, as it landed), this tree (layout v7, another program), and
//! this tree's next layout (`next`, v8: the `layout-next-test` feature doubles the
//! connection table, a map whose entries must be copied rather than shared). The tests
//! upgrade main-v7 to next (skipping a release), this tree to next, main-v7 to this tree
//! (same layout, new program), and refuse a downgrade.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use dataplane_lab::{
    daemon::{binary, release_binary, Daemon},
    netns::{in_netns, netns_run},
    topology::Topology,
    traffic::{pace, Sink},
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The numbered flow: an unlimited class, datagrams per second.
const SEQ_PORT: u16 = 5301;
const SEQ_PPS: u64 = 10_000;
/// The policed class: its rate, what it is offered (twice), datagram payload.
const POLICED_PORT: u16 = 5201;
const RATE_BITS: f64 = 20e6;
const PAYLOAD: usize = 1000;
const HEADERS: usize = 42;
/// Phases: traffic before the swap, after it; the admitted rate's window length.
const BEFORE: Duration = Duration::from_millis(2500);
const AFTER: Duration = Duration::from_millis(2500);
const WINDOW: Duration = Duration::from_millis(1500);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The class's burst: about 200 ms of its rate, so a sender stalled by the busy machine
/// does not lose tokens (a loss of its own, not the policer's).
const BURST: &str = "512KiB";

fn policy(topo: &Topology) -> String {
    format!(
        r#"
[[interface]]
name = "{client}"
forward = true

[[interface]]
name = "{server}"
forward = true

[[class]]
name = "default"

[[class]]
name = "limited"
rate = "20Mbit"
burst = "{BURST}"
exceed = "drop"

[[rule]]
class = "limited"
protocol = "udp"
dst_port = {POLICED_PORT}
"#,
        client = topo.clients[0].gateway_iface,
        server = topo.server.gateway_iface,
    )
}

/// A gateway topology and a daemon of release `bin` on it.
struct Gateway {
    daemon: Daemon,
    topo: Topology,
}

impl Gateway {
    fn new(bin: &Path) -> Gateway {
        let topo = Topology::new(1).expect("topology");
        // The hosts' veths take redirected frames only with NAPI on (GRO here).
        for host in topo.hosts() {
            netns_run(&host.netns, "ethtool", &["-K", &host.iface, "gro", "on"]).expect("gro");
        }
        let mut daemon = Daemon::create();
        daemon.bin = bin.to_path_buf();
        daemon.write_config(&policy(&topo));
        let mut g = Gateway { daemon, topo };
        g.start();
        g
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--netns".into(),
            self.topo.gateway.clone(),
            "--iface".into(),
            self.topo.clients[0].gateway_iface.clone(),
            "--iface".into(),
            self.topo.server.gateway_iface.clone(),
        ]
    }

    fn start(&mut self) {
        let args = self.args();
        self.daemon
            .start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Stops the running daemon (the dataplane stays) and starts release `bin`'s.
    fn upgrade_to(&mut self, bin: &Path) {
        self.daemon.stop();
        self.daemon.bin = bin.to_path_buf();
        self.start();
    }

    /// What the sampler needs to ask the daemon's CLI for counters.
    fn probe(&self) -> CounterProbe {
        CounterProbe {
            pin_root: self.daemon.pin_root.clone(),
            run_dir: self.daemon.run_dir.clone(),
        }
    }
}

/// Asks a release's CLI for the class counters of one daemon's pins.
#[derive(Clone)]
struct CounterProbe {
    pin_root: PathBuf,
    run_dir: PathBuf,
}

/// Class counters by (iface, class, counter).
type Counters = Vec<((String, String, String), u64)>;

impl CounterProbe {
    /// `stats --json` of release `bin`; `None` while it cannot answer (no daemon of it, or
    /// the pins of another layout).
    fn counters(&self, bin: &Path) -> Option<Counters> {
        let out = std::process::Command::new(bin)
            .env("DATAPLANE_PIN_ROOT", &self.pin_root)
            .env("DATAPLANE_RUN_DIR", &self.run_dir)
            .args(["stats", "--json", "--interval", "10ms"])
            .output()
            .ok()?;
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let mut all = Vec::new();
        for row in stats["classes"].as_array()? {
            for counter in ["packets", "bytes", "dropped_packets", "dropped_bytes"] {
                all.push((
                    (
                        row["iface"].as_str()?.to_string(),
                        row["class"].as_str()?.to_string(),
                        counter.to_string(),
                    ),
                    row[counter].as_u64()?,
                ));
            }
        }
        Some(all)
    }
}

/// What one upgrade under traffic measured.
struct Figures {
    /// Numbered datagrams sent and received.
    sent: u64,
    received: u64,
    /// The largest gap between two numbered datagrams arriving.
    largest_gap: Duration,
    /// Admitted rate of the policed class before, across and after the swap (bit/s).
    rates: [f64; 3],
    /// Counter samples taken, and the first counter seen going backwards.
    samples: usize,
    backwards: Option<String>,
    /// How long the daemons took to hand over, and the traffic before.
    swap: Duration,
    warm_up: Duration,
}

/// Runs the two flows through `g`, upgrades its daemon from release `from` to `to` between
/// [`BEFORE`] and [`AFTER`], and measures.
fn upgrade_under_traffic(g: &mut Gateway, from: &Path, to: &Path) -> Figures {
    let server = g.topo.server.v4;
    let client_ns = g.topo.clients[0].netns.clone();
    let policed = in_netns(&g.topo.server.netns, || {
        Sink::bind(SocketAddr::new(server.into(), POLICED_PORT))
    })
    .expect("server namespace");
    let numbered = Numbered::start(&g.topo.server.netns, server);
    let stop = Arc::new(AtomicBool::new(false));
    let policed_pps = (2.0 * RATE_BITS / 8.0 / (PAYLOAD + HEADERS) as f64) as u64;
    let senders: Vec<_> = [
        (SEQ_PORT, SEQ_PPS, 16),
        (POLICED_PORT, policed_pps, PAYLOAD),
    ]
    .into_iter()
    .map(|(port, pps, payload)| {
        let (ns, stop) = (client_ns.clone(), stop.clone());
        std::thread::spawn(move || {
            in_netns(&ns, || {
                let socket = UdpSocket::bind("0.0.0.0:0").expect("sender");
                pace(
                    &socket,
                    SocketAddr::V4(SocketAddrV4::new(server, port)),
                    pps,
                    Duration::from_millis(1),
                    pps * 60,
                    |elapsed| !stop.load(Ordering::Relaxed) && elapsed < Duration::from_secs(60),
                    |n, datagram| {
                        datagram.clear();
                        datagram.extend_from_slice(&n.to_be_bytes());
                        datagram.resize(payload, 0x5a);
                    },
                )
            })
            .expect("client namespace")
        })
    })
    .collect();
    // Counters (with whichever release's CLI answers) and the policed class's arrivals,
    // sampled side by side.
    let cli = Arc::new(Mutex::new(from.to_path_buf()));
    let sampler = {
        let (cli, stop, probe) = (cli.clone(), stop.clone(), g.probe());
        let (packets, bytes) = (policed.packets.clone(), policed.bytes.clone());
        std::thread::spawn(move || {
            let mut last: Counters = Vec::new();
            let (mut samples, mut backwards, mut arrivals) = (0, None, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let frame_bytes = bytes.load(Ordering::Relaxed)
                    + packets.load(Ordering::Relaxed) * HEADERS as u64;
                arrivals.push((Instant::now(), frame_bytes));
                let bin = cli.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(now) = probe.counters(&bin) {
                    for (key, value) in &now {
                        let before = last.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
                        if before.is_some_and(|b| *value < b) && backwards.is_none() {
                            backwards = Some(format!("{key:?}: {before:?} then {value}"));
                        }
                    }
                    last = now;
                    samples += 1;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            (samples, backwards, arrivals)
        })
    };
    let started = Instant::now();
    std::thread::sleep(BEFORE);
    let swap_start = Instant::now();
    g.upgrade_to(to);
    *cli.lock().unwrap_or_else(|e| e.into_inner()) = to.to_path_buf();
    let swap_end = Instant::now();
    std::thread::sleep(AFTER);
    stop.store(true, Ordering::Relaxed);
    let mut sent = senders.into_iter().map(|s| s.join().expect("sender"));
    let sent = sent.next().unwrap_or(0);
    let (samples, backwards, arrivals) = sampler.join().expect("sampler");
    let received = numbered.settle();
    // The policed class's rate between the samples nearest two instants.
    let rate = |from: Instant, to: Instant| {
        let at = |t: Instant| {
            arrivals
                .iter()
                .min_by_key(|(when, _)| if *when > t { *when - t } else { t - *when })
                .copied()
                .expect("samples")
        };
        let ((t0, b0), (t1, b1)) = (at(from), at(to));
        (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64()
    };
    let margin = WINDOW / 2;
    Figures {
        sent,
        received,
        largest_gap: numbered.largest_gap(),
        rates: [
            rate(swap_start - WINDOW, swap_start),
            rate(swap_start - margin, swap_end + margin),
            rate(swap_end + AFTER - WINDOW, swap_end + AFTER),
        ],
        samples,
        backwards,
        swap: swap_end - swap_start,
        warm_up: swap_start - started,
    }
}

/// Counts numbered datagrams and the largest gap between arrivals.
struct Numbered {
    received: Arc<AtomicU64>,
    largest_gap_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Numbered {
    fn start(netns: &str, server: Ipv4Addr) -> Numbered {
        let socket = in_netns(netns, || {
            UdpSocket::bind(SocketAddr::new(server.into(), SEQ_PORT)).expect("bind numbered")
        })
        .expect("server namespace");
        dataplane_lab::net::set_int_option(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            32 << 20,
        );
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let received = Arc::new(AtomicU64::new(0));
        let largest_gap_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, gap, s) = (received.clone(), largest_gap_us.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut last: Option<Instant> = None;
            while !s.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    let now = Instant::now();
                    if let Some(l) = last {
                        gap.fetch_max((now - l).as_micros() as u64, Ordering::Relaxed);
                    }
                    last = Some(now);
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Numbered {
            received,
            largest_gap_us,
            stop,
            thread: Some(thread),
        }
    }
}

impl Numbered {
    /// Waits until no more datagrams arrive (bounded), then returns how many did.
    fn settle(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = self.received.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.received.load(Ordering::Relaxed);
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    fn largest_gap(&self) -> Duration {
        Duration::from_micros(self.largest_gap_us.load(Ordering::Relaxed))
    }
}

impl Drop for Numbered {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asserts what every upgrade must keep, and says what it measured.
fn assert_seamless(what: &str, f: &Figures) {
    eprintln!(
        "{what}: {} of {} numbered datagrams arrived, largest gap {:?}; admitted {:.3} / \
         {:.3} / {:.3} Mbit/s before / across / after a {:?} hand-over ({} counter samples)",
        f.received,
        f.sent,
        f.largest_gap,
        f.rates[0] / 1e6,
        f.rates[1] / 1e6,
        f.rates[2] / 1e6,
        f.swap,
        f.samples
    );
    assert!(f.warm_up >= BEFORE);
    assert_eq!(f.received, f.sent, "{what}: numbered datagrams lost");
    assert!(
        f.samples > 20,
        "{what}: too few counter samples ({})",
        f.samples
    );
    assert_eq!(f.backwards, None, "{what}: a counter went backwards");
    for (rate, when) in f.rates.iter().zip(["before", "across", "after"]) {
        assert!(
            (rate / RATE_BITS - 1.0).abs() <= 0.01,
            "{what}: the policed class admitted {:.3} Mbit/s {when} the upgrade, not 20 ± 1%",
            rate / 1e6
        );
    }
}

/// The pins left after an upgrade: only layout `version`'s, with both links, and its program
/// the one attached.
fn assert_layout(g: &Gateway, version: u32) {
    let dirs: Vec<String> = std::fs::read_dir(&g.daemon.pin_root)
        .expect("pin root")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(
        dirs,
        [format!("v{version}")],
        "only the new layout stays pinned"
    );
    let status = g.daemon.status();
    assert_eq!(status["layout"], version, "{status}");
    let links = g.daemon.pin_root.join(format!("v{version}/links"));
    let mut linked: Vec<String> = std::fs::read_dir(links)
        .expect("links")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    linked.sort();
    let mut expected = g.topo.gateway_ifaces();
    expected.sort();
    assert_eq!(linked, expected, "every link moved to the new layout");
    let program = status["program_id"].as_u64().expect("program id");
    for iface in &expected {
        let shown =
            netns_run(&g.topo.gateway, "ip", &["-d", "link", "show", iface]).expect("ip link");
        assert!(
            shown.contains(&format!("prog/xdp id {program} ")),
            "{iface} runs the new program {program}: {shown}"
        );
    }
}

#[test]
fn today_s_main_upgrades_to_the_next_layout_under_traffic() {
    let _serial = serial();
    let (main, next) = (release_binary("main-v7"), release_binary("next"));
    let mut g = Gateway::new(&main);
    let f = upgrade_under_traffic(&mut g, &main, &next);
    assert_seamless("main (v7) to next (v8)", &f);
    assert_layout(&g, 8);
}

#[test]
fn this_release_upgrades_to_the_next_layout_under_traffic() {
    let _serial = serial();
    let (this, next) = (binary(), release_binary("next"));
    let mut g = Gateway::new(&this);
    let f = upgrade_under_traffic(&mut g, &this, &next);
    assert_seamless("this release (v7) to next (v8)", &f);
    assert_layout(&g, 8);
}

#[test]
fn a_new_program_of_the_same_layout_takes_over_under_traffic() {
    let _serial = serial();
    let (main, this) = (release_binary("main-v7"), binary());
    let mut g = Gateway::new(&main);
    let old_program = g.daemon.status()["program_id"].clone();
    let f = upgrade_under_traffic(&mut g, &main, &this);
    assert_seamless("main (v7) to this release (v7)", &f);
    assert_layout(&g, 7);
    assert_ne!(
        g.daemon.status()["program_id"],
        old_program,
        "a new program runs"
    );
    // A restart of the same release adopts it as it runs: nothing reloads or moves.
    let running = g.daemon.status()["program_id"].clone();
    g.upgrade_to(&this);
    assert_eq!(g.daemon.status()["program_id"], running);
    assert!(g.daemon.log().contains("adopted the pinned dataplane"));
}

#[test]
fn a_downgrade_is_refused_and_the_running_dataplane_kept() {
    let _serial = serial();
    let (this, next) = (binary(), release_binary("next"));
    let mut g = Gateway::new(&next);
    let running = g.daemon.status()["program_id"].clone();
    g.daemon.stop();
    g.daemon.bin = this;
    let args = g.args();
    let (code, log) = g
        .daemon
        .start_fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("layout v8") && log.contains("downgrades are not supported"),
        "{log}"
    );
    g.daemon.bin = next;
    assert_eq!(
        g.daemon.status()["program_id"],
        running,
        "the v8 dataplane still runs"
    );
}

#[test]
fn an_upgrade_finishes_what_a_crash_left_and_drops_vanished_devices() {
    let _serial = serial();
    let (this, next) = (binary(), release_binary("next"));
    let mut g = Gateway::new(&this);
    g.daemon.stop();
    let v7 = dataplane::pins::PinLayout::new(&g.daemon.pin_root).of_version(7);
    let v8 = v7.of_version(8);
    let (kept, gone) = (
        g.topo.clients[0].gateway_iface.clone(),
        g.topo.server.gateway_iface.clone(),
    );
    // A crash of an earlier upgrade left the first link pinned in both layouts, and the
    // other interface's device went away while no daemon ran.
    std::fs::create_dir_all(v8.dir().join("links")).expect("v8 links dir");
    let link = aya::programs::links::PinnedLink::from_pin(v7.link(&kept)).expect("v7 link");
    aya::programs::links::FdLink::from(link)
        .pin(v8.link(&kept))
        .expect("pin the link in v8 too");
    netns_run(&g.topo.gateway, "ip", &["link", "del", &gone]).expect("delete a device");
    g.daemon.bin = next;
    g.start();
    assert_eq!(g.daemon.status()["layout"], 8);
    assert!(v8.link(&kept).exists(), "the surviving link moved");
    assert!(
        !v8.link(&gone).exists(),
        "the vanished device's link is not carried"
    );
    assert!(!v7.dir().exists(), "the old layout is gone");
    let log = g.daemon.log();
    assert!(log.contains("its device is gone"), "{log}");
}

#[test]
fn a_start_that_failed_before_pinning_does_not_block_the_next() {
    let _serial = serial();
    let this = binary();
    let mut g = Gateway::new(&this);
    g.daemon.stop();
    // What a newer release's failed start leaves: its layout's directories, empty.
    let empty = dataplane::pins::PinLayout::new(&g.daemon.pin_root).of_version(99);
    for sub in ["maps", "programs", "links"] {
        std::fs::create_dir_all(empty.dir().join(sub)).expect("mkdir");
    }
    g.start();
    assert!(!empty.dir().exists(), "the empty layout is removed");
    assert_eq!(g.daemon.status()["layout"], 7);
}
