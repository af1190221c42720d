//! `dataplane demo`: the main job on an embedded default. Builds clients → gateway → server in
//! network namespaces, runs the real daemon on the gateway with the built-in AI catalogue
//! (rates scaled from a 100 Gbit/s gateway down to veth-sized traffic) and forwarding on,
//! sends a bounded mix of AI-like traffic that exceeds some class limits, shows a live
//! per-class table, prints a summary, and removes everything however it ends: on exit, on
//! Ctrl-C, SIGTERM or a closed terminal (SIGHUP) it cleans up itself; killed outright, its
//! daemon goes with it (parent-death signal) and the next demo removes the rest.

use std::{
    io::{IsTerminal, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use dataplane::{
    control,
    daemon::DEFAULT_POLICY,
    dataplane::Dataplane,
    pins::{PinLayout, LAYOUT_VERSION},
    state::RunDir,
    units::{format_bytes, format_pps, format_rate, parse_rate},
    view::{rows, ClassRow, Running},
};
use dataplane_common::{ROCEV2_UDP_PORT, ROCE_OPCODE_CNP};
use dataplane_netns::{
    in_netns,
    topology::{Host, Topology},
    traffic::{pace, roce_bth, tcp_rpcs, tcp_serve, tcp_stream, udp_socket_with_tos, Rpc},
};

/// `println!` that carries on when the terminal is gone (SIGHUP, a dropped SSH session):
/// the demo must still clean up, and `println!` would panic on the failed write.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` likewise.
macro_rules! tell {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Signals that stop the demo in order (cleaning up): Ctrl-C, SIGTERM, a closed terminal,
/// Ctrl-\\.
const STOP_SIGNALS: [libc::c_int; 4] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
    signal_hook::consts::SIGQUIT,
];
/// Names of what a demo creates: `<tag>-<pid>` under /sys/fs/bpf, /run and the temporary
/// directory.
const DEMO_TAG: &str = "dataplane-demo";
/// How long a stale demo's daemon gets to stop on SIGTERM before SIGKILL.
const STALE_DAEMON_STOP: Duration = Duration::from_secs(5);

/// The catalogue is written for a 100 Gbit/s gateway; the demo's veths carry Mbit/s.
const RATE_SCALE: u64 = 1000;
/// The gateway's interfaces are shown added up, under this name.
const GATEWAY: &str = "gateway";
/// Clients in the demo topology.
const CLIENTS: usize = 2;
/// RoCEv2 offered load: twice the scaled rdma ceiling, so it is marked and dropped.
const ROCE_BITS_PER_SEC: u64 = 100_000_000;
/// RoCEv2 payload after the BTH (a 1 KiB RDMA write).
const ROCE_PAYLOAD: usize = 1024;
/// CNPs per second (congestion notifications back to the senders).
const CNP_PPS: u64 = 200;
/// torch.distributed's default MASTER_PORT (collectives over TCP).
const COLLECTIVE_PORT: u16 = 29500;
/// Triton's gRPC port (inference RPCs).
const INFERENCE_PORT: u16 = 8001;
/// NFS (storage bulk flow).
const STORAGE_PORT: u16 = 2049;
/// Inference request and response sizes.
const INFERENCE_RPC: Rpc = Rpc {
    request: 1024,
    response: 16 * 1024,
};
/// ECT(0) in the IP TOS byte: RoCE traffic is ECN-capable (DCQCN).
const TOS_ECT0: libc::c_int = 0x02;
/// How often the RoCE senders catch up with their rate.
const PACING_TICK: Duration = Duration::from_micros(500);

/// Options of `dataplane demo`.
pub struct DemoOptions {
    /// How long traffic runs.
    pub duration: Duration,
    /// Where the daemon serves metrics (`None`: not at all).
    pub metrics_addr: Option<SocketAddr>,
}

/// Everything the demo created, removed in reverse order on drop (also on error and Ctrl-C).
struct Demo {
    topology: Option<Topology>,
    pass: Option<Dataplane>,
    daemon: Option<Child>,
    layout: PinLayout,
    run: RunDir,
    dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        if let Err(e) = self.layout.remove_version(LAYOUT_VERSION) {
            tell!("demo cleanup: {e}");
        }
        self.run.clear();
        self.pass = None;
        self.topology = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the demo.
pub fn run(options: &DemoOptions) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in STOP_SIGNALS {
        signal_hook::flag::register(signal, stop.clone()).context("installing Ctrl-C handling")?;
    }
    remove_stale_demos();
    let id = format!("{DEMO_TAG}-{}", std::process::id());
    let mut demo = Demo {
        topology: None,
        pass: None,
        daemon: None,
        layout: PinLayout::new(PathBuf::from("/sys/fs/bpf").join(&id)),
        run: RunDir::new(PathBuf::from("/run").join(&id)),
        dir: std::env::temp_dir().join(&id),
    };
    std::fs::create_dir_all(&demo.dir).context("creating the demo's scratch directory")?;

    say!(
        "building the topology: {CLIENTS} clients -> gateway -> server (network namespaces, veth)"
    );
    let topology = demo.topology.insert(Topology::new(CLIENTS)?);
    let gateway = topology.gateway.clone();
    let gateway_ifaces = topology.gateway_ifaces();
    let clients = topology.clients.clone();
    let server = topology.server.clone();
    // The hosts' veths accept redirected frames only with an XDP program of their own.
    let mut pass = Dataplane::load().context("loading the XDP object for the hosts' veths")?;
    for host in topology.hosts() {
        in_netns(&host.netns, || {
            pass.attach_pass(&host.iface, XdpMode::Driver)
        })?
        .with_context(|| format!("dataplane in namespace {}", host.netns))?;
    }
    demo.pass = Some(pass);

    let policy_path = demo.dir.join("policy.toml");
    std::fs::write(&policy_path, demo_policy(&gateway_ifaces)?)?;
    let log_path = demo.dir.join("daemon.log");
    let mut daemon = Command::new(std::env::current_exe()?);
    daemon
        .args(["--pin-root"])
        .arg(demo.layout.root())
        .arg("--run-dir")
        .arg(demo.run.dir())
        .args(["run", "--netns", &gateway, "--config"])
        .arg(&policy_path);
    for iface in &gateway_ifaces {
        daemon.args(["--iface", iface]);
    }
    match options.metrics_addr {
        Some(addr) => daemon.args(["--metrics-addr", &addr.to_string()]),
        None => daemon.arg("--no-metrics"),
    };
    // The daemon is the demo's to stop, in order: a terminal's Ctrl-C or hangup reaches the
    // demo only (the daemon takes SIGHUP for a reload), and a demo killed outright takes its
    // daemon with it.
    let demo_pid = std::process::id();
    // SAFETY: between fork and exec the closure makes two system calls and builds an error
    // from a number, all async-signal-safe; it allocates nothing.
    unsafe {
        daemon.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo may have died before the prctl: then no signal would come.
            if libc::getppid() as u32 != demo_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    };
    let log = std::fs::File::create(&log_path)?;
    demo.daemon = Some(
        daemon
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the daemon")?,
    );
    wait_for_daemon(&mut demo, &log_path)?;
    let running = Running::open(&demo.layout, &demo.run)?;
    say!(
        "dataplane running on the gateway ({}), generation {}, default AI catalogue scaled 1:{RATE_SCALE}, forwarding on",
        gateway_ifaces.join(", "),
        running.dp.generation()?
    );
    if let Some(addr) = &running.state.metrics_addr {
        say!("metrics: http://{addr}/metrics");
    }

    let traffic = Traffic::start(&clients, server.v4, &server.netns, &stop, options.duration)?;
    let started = Instant::now();
    let first = running.sample()?;
    let mut before = first.clone();
    let tty = std::io::stdout().is_terminal();
    while started.elapsed() < options.duration && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_secs(1).min(options.duration.saturating_sub(started.elapsed())),
        );
        let after = running.sample()?;
        let (_, classes) = rows(&before.merged(GATEWAY), &after.merged(GATEWAY));
        if tty {
            let _ = write!(std::io::stdout(), "\x1b[2J\x1b[H");
        }
        say!(
            "\ndataplane demo: {:.0}/{:.0} s, per class on the gateway (Ctrl-C stops)",
            started.elapsed().as_secs_f64(),
            options.duration.as_secs_f64()
        );
        table(&classes);
        let _ = std::io::stdout().flush();
        before = after;
    }
    let interrupted = stop.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let offered = traffic.finish();
    let last = running.sample()?;
    let (_, totals) = rows(&first.merged(GATEWAY), &last.merged(GATEWAY));
    summary(&totals, &running, &offered, started.elapsed())?;
    drop(running);
    drop(demo);
    say!("cleaned up: daemon stopped, pins, namespaces and veths removed");
    if interrupted {
        say!("(interrupted)");
    }
    Ok(())
}

/// Removes what demos that no longer run left behind (killed outright, they could not clean
/// up): their daemon if it still runs (one started before daemons took a parent-death
/// signal), their pins, run and scratch directories. Their namespaces go when the topology is
/// built ([`Topology::new`]).
fn remove_stale_demos() {
    let prefix = format!("{DEMO_TAG}-");
    let bpffs = PathBuf::from("/sys/fs/bpf");
    let run = PathBuf::from("/run");
    let tmp = std::env::temp_dir();
    let mut stale = std::collections::BTreeSet::new();
    for dir in [&bpffs, &run, &tmp] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid.filter(|p| !PathBuf::from(format!("/proc/{p}")).exists()) {
                stale.insert(pid);
            }
        }
    }
    for pid in stale {
        let id = format!("{prefix}{pid}");
        let layout = PinLayout::new(bpffs.join(&id));
        let run_dir = RunDir::new(run.join(&id));
        if let Ok(Some(state)) = run_dir.read() {
            stop_stale_daemon(state.daemon_pid, layout.root());
        }
        match layout.remove_version(LAYOUT_VERSION) {
            Ok(_) => tell!("removed what demo {pid} left behind (it did not exit cleanly)"),
            Err(e) => tell!("demo {pid} left pins behind that could not be removed: {e}"),
        }
        run_dir.clear();
        let _ = std::fs::remove_dir_all(tmp.join(&id));
    }
}

/// Stops process `pid` if it is the daemon of the pins under `pin_root` (its command line
/// names them), SIGTERM first, SIGKILL when it does not stop in time.
fn stop_stale_daemon(pid: u32, pin_root: &std::path::Path) {
    let ours = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == pin_root.as_os_str().as_encoded_bytes())
        })
    };
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid == 0 || !ours(pid) {
        return;
    }
    // SAFETY: kill(2) on a daemon a demo started, checked by its command line just now.
    unsafe { libc::kill(raw, libc::SIGTERM) };
    let deadline = Instant::now() + STALE_DAEMON_STOP;
    while ours(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if ours(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(raw, libc::SIGKILL) };
    }
}

/// The built-in catalogue with its rates divided by [`RATE_SCALE`] (bursts back to their
/// defaults) and forwarding on for the gateway's interfaces.
fn demo_policy(gateway_ifaces: &[String]) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = DEFAULT_POLICY.parse()?;
    if let Some(classes) = doc
        .get_mut("class")
        .and_then(|c| c.as_array_of_tables_mut())
    {
        for class in classes.iter_mut() {
            for key in ["rate", "ceil"] {
                if let Some(v) = class.get(key).and_then(|v| v.as_str()) {
                    let scaled = format_rate(parse_rate(v)? / RATE_SCALE);
                    class[key] = toml_edit::value(scaled);
                }
            }
            class.remove("burst");
            class.remove("ceil_burst");
        }
    }
    let mut ifaces = toml_edit::ArrayOfTables::new();
    for name in gateway_ifaces {
        let mut t = toml_edit::Table::new();
        t["name"] = toml_edit::value(name.as_str());
        t["forward"] = toml_edit::value(true);
        ifaces.push(t);
    }
    doc["interface"] = toml_edit::Item::ArrayOfTables(ifaces);
    let text = doc.to_string();
    dataplane::config::Policy::from_toml_str(&text, "demo policy")?;
    Ok(text)
}

fn wait_for_daemon(demo: &mut Demo, log: &std::path::Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !control::is_running(&demo.run.socket()) {
        if let Some(status) = demo
            .daemon
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!(
                "the daemon exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("the daemon was not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn table(rows: &[ClassRow]) {
    say!(
        "{:<12} {:>10} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10}",
        "CLASS",
        "PPS",
        "OFFERED",
        "ADMITTED",
        "DROP RATE",
        "PACKETS",
        "ECN-MARKED",
        "DROPS"
    );
    for r in rows {
        say!(
            "{:<12} {:>10} {:>12} {:>12} {:>12} {:>10} {:>12} {:>10}",
            r.class,
            format_pps(r.packets_per_sec),
            format_rate(r.bytes_per_sec as u64),
            format_rate(r.admitted_bytes_per_sec as u64),
            format_pps(r.dropped_per_sec),
            r.packets,
            r.ecn_marked_packets,
            r.dropped_packets,
        );
    }
}

fn summary(
    totals: &[ClassRow],
    running: &Running,
    offered: &[(&'static str, u64)],
    elapsed: Duration,
) -> Result<()> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let policy = running.policy.as_ref().context("the daemon's policy")?;
    say!("\nsummary after {secs:.1} s (classified, policed and forwarded in XDP on the gateway):");
    // Offered counts every classified byte; admitted leaves out what the policy dropped.
    say!(
        "{:<12} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "CLASS",
        "PACKETS",
        "BYTES",
        "OFFERED",
        "ADMITTED",
        "RATE",
        "CEIL",
        "ECN-MARKED",
        "DROPS"
    );
    for r in totals.iter().filter(|r| r.packets > 0) {
        let spec = policy.classes.iter().find(|c| c.name == r.class);
        let rate = spec.map_or("-".into(), |c| {
            if c.rate_bytes_per_sec == 0 {
                "-".into()
            } else {
                format_rate(c.rate_bytes_per_sec)
            }
        });
        let ceil = spec
            .and_then(|c| c.ceil_bytes_per_sec)
            .map_or("-".into(), format_rate);
        say!(
            "{:<12} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10} {:>10}",
            r.class,
            r.packets,
            format_bytes(r.bytes),
            format_rate((r.bytes as f64 / secs) as u64),
            format_rate((r.bytes.saturating_sub(r.dropped_bytes) as f64 / secs) as u64),
            rate,
            ceil,
            r.ecn_marked_packets,
            r.dropped_packets
        );
    }
    let forwarded: u64 = running
        .ifaces()
        .iter()
        .map(|(_, slot)| {
            running
                .classes()
                .iter()
                .map(|(_, id)| {
                    running
                        .dp
                        .forward_counters(*slot, *id)
                        .map_or(0, |c| c.packets)
                })
                .sum::<u64>()
        })
        .sum();
    let classified: u64 = totals.iter().map(|r| r.packets).sum();
    say!("forwarded in XDP: {forwarded} of {classified} classified packets");
    let flows: Vec<String> = offered.iter().map(|(f, n)| format!("{f} {n}")).collect();
    say!("sent by the traffic generators: {}", flows.join(", "));
    Ok(())
}

/// The traffic generators: threads in the client and server namespaces.
struct Traffic {
    threads: Vec<(&'static str, JoinHandle<u64>)>,
}

impl Traffic {
    fn start(
        clients: &[Host],
        server: Ipv4Addr,
        server_ns: &str,
        stop: &Arc<AtomicBool>,
        duration: Duration,
    ) -> Result<Traffic> {
        let mut threads = Vec::new();
        // Servers first, so the clients find them listening.
        for port in [COLLECTIVE_PORT, STORAGE_PORT, INFERENCE_PORT] {
            let listener = in_netns(server_ns, || TcpListener::bind((server, port)))??;
            let stop = stop.clone();
            threads.push((
                "server",
                std::thread::spawn(move || {
                    let answer = (port == INFERENCE_PORT).then_some(INFERENCE_RPC);
                    tcp_serve(listener, answer, &stop)
                }),
            ));
        }
        let to = move |port| SocketAddr::V4(SocketAddrV4::new(server, port));
        let deadline = Instant::now() + duration + Duration::from_secs(2);
        let spawn = |netns: &str, f: Box<dyn FnOnce() -> u64 + Send>| -> JoinHandle<u64> {
            let netns = netns.to_string();
            std::thread::spawn(move || in_netns(&netns, f).unwrap_or(0))
        };
        let c0 = &clients[0].netns;
        let c1 = &clients[clients.len() - 1].netns;
        let (s1, s2, s3, s4, s5) = (
            stop.clone(),
            stop.clone(),
            stop.clone(),
            stop.clone(),
            stop.clone(),
        );
        threads.push((
            "RoCEv2 packets",
            spawn(
                c0,
                Box::new(move || roce(to(ROCEV2_UDP_PORT), &s1, deadline)),
            ),
        ));
        threads.push((
            "CNPs",
            spawn(
                c1,
                Box::new(move || cnp(to(ROCEV2_UDP_PORT), &s2, deadline)),
            ),
        ));
        threads.push((
            "collective bytes",
            spawn(
                c0,
                Box::new(move || tcp_stream(to(COLLECTIVE_PORT), &s3, deadline)),
            ),
        ));
        threads.push((
            "storage bytes",
            spawn(
                c1,
                Box::new(move || tcp_stream(to(STORAGE_PORT), &s4, deadline)),
            ),
        ));
        threads.push((
            "inference RPCs",
            spawn(
                c1,
                Box::new(move || tcp_rpcs(to(INFERENCE_PORT), INFERENCE_RPC, &s5, deadline)),
            ),
        ));
        Ok(Traffic { threads })
    }

    /// Waits for every generator; returns what each client flow sent.
    fn finish(self) -> Vec<(&'static str, u64)> {
        self.threads
            .into_iter()
            .filter_map(|(name, t)| {
                let n = t.join().unwrap_or(0);
                (name != "server").then_some((name, n))
            })
            .collect()
    }
}

/// Paced RoCEv2 datagrams from an ECN-capable socket until stopped or the deadline.
fn paced_roce(
    to: SocketAddr,
    pps: u64,
    stop: &AtomicBool,
    deadline: Instant,
    datagram: impl FnMut(u64, &mut Vec<u8>),
) -> u64 {
    let Some(socket) = udp_socket_with_tos(TOS_ECT0) else {
        return 0;
    };
    let running = |_| !stop.load(Ordering::Relaxed) && Instant::now() < deadline;
    pace(&socket, to, pps, PACING_TICK, u64::MAX, running, datagram)
}

/// RC RDMA WRITE ONLY.
const OPCODE_RDMA_WRITE_ONLY: u8 = 0x0a;

fn roce(to: SocketAddr, stop: &AtomicBool, deadline: Instant) -> u64 {
    let frame_bits = ((12 + ROCE_PAYLOAD + 4 + 42) * 8) as u64;
    let pps = ROCE_BITS_PER_SEC / frame_bits;
    paced_roce(to, pps, stop, deadline, |n, d| {
        d.clear();
        d.extend_from_slice(&roce_bth(OPCODE_RDMA_WRITE_ONLY, n as u32));
        d.resize(12 + ROCE_PAYLOAD + 4, 0x5a); // payload and ICRC
    })
}

fn cnp(to: SocketAddr, stop: &AtomicBool, deadline: Instant) -> u64 {
    paced_roce(to, CNP_PPS, stop, deadline, |n, d| {
        d.clear();
        d.extend_from_slice(&roce_bth(ROCE_OPCODE_CNP, n as u32));
        d.resize(12 + 16 + 4, 0); // reserved bytes and ICRC
    })
}
