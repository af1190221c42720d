//! Gateway throughput through veth pairs in network namespaces: client -> gateway -> server,
//! frames sent from an AF_PACKET TX ring in the client and counted at the server.
//! Every configuration is measured with one flow on one CPU in both frame sizes; the bare
//! FIB forwarder and the dataplane also with IPv6, many flows and both CPUs.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    dataplane::{ifindex, Dataplane},
};
use dataplane_common::{flow::cache_bits, maps::FlowEntry};
use dataplane_lab::{frames::Frame, kernel::pin_to_cpu};
use indicatif::ProgressBar;

use crate::{
    generator::{live_frames_allowed, PacketRing, RING_FRAMES},
    memory::entry_visit_ns,
    netns::{veth, Netns},
    plot::Plot,
    programs::{BenchPrograms, COPIES},
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Settings,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x01];
/// The generator's seed veth pair in the client namespace (see `generator`).
const SEED_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x05];
const AMP_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x06];
const GW_IN_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x02];
const GW_OUT_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x03];
const SERVER_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x04];
const CLIENT_ADDR: [u8; 4] = [198, 18, 0, 2];
const SERVER_ADDR: [u8; 4] = [198, 19, 0, 2];
const CLIENT_ADDR6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER_ADDR6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// The policed classes' UDP ports: `bulk` and, for the two-class rows, `bulk2`.
const UDP_PORT: u16 = 5001;
const UDP_PORT2: u16 = 5002;
/// The generator's CPU for one-CPU rows; the gateway and the sink run there too (see the
/// method). Two-CPU rows add the other one.
const CPU: usize = 1;
const OTHER_CPU: usize = 0;
/// Policers in every configuration are set far above what the path carries, so each packet
/// is policed and none is dropped: the figures are the cost of the path, not a rate limit.
const POLICE_RATE: &str = "100Gbit";
/// (c): a forward-hook rule dropping what exceeds 12 500 MB/s (POLICE_RATE).
const NFT_LIMIT: &str = "table ip dataplane_bench {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip daddr 198.19.0.0/24 limit rate over 12500 mbytes/second drop
    }
}
";
/// A configuration counts as forwarding in XDP only if the kernel forwarded less than this
/// share of what arrived.
const MOSTLY: f64 = 0.5;
/// Frames each row sends at least before its rounds (the smoke run's counts are tiny).
const WARM_UP_FRAMES: u32 = 64;
/// Frame sizes (without FCS): 60 bytes (64 on the wire) and a 1500-byte IP packet. IPv6's
/// smallest UDP frame is 62 bytes; its rows use 64.
const FRAME_SIZES: [(usize, &str); 2] = [(60, "64 B"), (1514, "1500 B")];
const IPV6_FRAME: usize = 64;
/// Flow counts of the many-flows rows (each CPU's flow table holds 2^17 slots on 2 CPUs).
const MANY_FLOWS: [u32; 2] = [1_000, 100_000];

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// What the gateway runs between its two ports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    /// (0) the generator alone: `gw_in` counts and drops every frame (`bench_sink`).
    GeneratorFloor,
    /// (a) XDP redirect from gw_in to gw_out through a devmap, nothing else.
    BareRedirect,
    /// (a′) a bare FIB forwarder: route lookup, TTL, MACs, devmap redirect.
    FibForward,
    /// (b) the dataplane classifies, polices and forwards itself (XDP_REDIRECT).
    DataplaneForward,
    /// The dataplane classifies and polices, then passes to the kernel, which forwards.
    DataplanePass,
    /// (c) kernel IP forwarding, nftables `limit` on the forward hook.
    KernelNft,
    /// (d) kernel IP forwarding, HTB on the egress port.
    KernelHtb,
}

impl Config {
    const ALL: [Config; 7] = [
        Config::GeneratorFloor,
        Config::BareRedirect,
        Config::FibForward,
        Config::DataplanePass,
        Config::DataplaneForward,
        Config::KernelNft,
        Config::KernelHtb,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::GeneratorFloor => "(0) generator alone: XDP drops at gw_in",
            Config::BareRedirect => "(a) bare XDP redirect (floor)",
            Config::FibForward => "(a′) bare FIB forwarder (xdp-forward fib-full)",
            Config::DataplaneForward => "(b) dataplane: classify + police + forward",
            Config::DataplanePass => "(b') dataplane: classify + police, kernel forwards",
            Config::KernelNft => "(c) kernel forwarding + nftables limit",
            Config::KernelHtb => "(d) kernel forwarding + tc HTB",
        }
    }

    /// The label's tag: "(a)", "(a′)", ...
    fn tag(self) -> &'static str {
        self.label().split(' ').next().unwrap_or_default()
    }
}

/// What keeps a configuration in force (dropped with the gateway).
enum Installed {
    Programs { _programs: BenchPrograms },
    Dataplane { _dataplane: Dataplane },
    Kernel,
}

/// client (cli) <-> (gw_in) gateway (gw_out) <-> (srv) server, three namespaces.
struct Gateway {
    config: Config,
    /// Counts what arrives: at `srv`, or at `gw_in` for (0).
    sink: BenchPrograms,
    /// Seed senders, one per CPU that generates (two-CPU rows run both at once).
    generators: [PacketRing; 2],
    /// Copies each seed `COPIES` times out of `cli`.
    amplifier: BenchPrograms,
    _installed: Installed,
    // Dropped after the programs above: the namespaces go last.
    _client: Netns,
    gateway: Netns,
    _server: Netns,
}

/// The gateway's policy: two policed UDP classes; with `forward`, the dataplane forwards
/// what arrives on gw_in itself (gw_out registered as its egress).
fn gateway_policy(forward: bool) -> String {
    let interfaces = if forward {
        "[[interface]]\nname = \"gw_in\"\nforward = true\n[[interface]]\nname = \"gw_out\"\n"
    } else {
        "[[interface]]\nname = \"gw_in\"\n"
    };
    let class = |name: &str, port: u16| {
        format!(
            "[[class]]\nname = \"{name}\"\nrate = \"{POLICE_RATE}\"\nexceed = \"drop\"\n\
             [[rule]]\nclass = \"{name}\"\nprotocol = \"udp\"\ndst_port = {port}\n"
        )
    };
    format!(
        "{interfaces}[[class]]\nname = \"default\"\n{}{}",
        class("bulk", UDP_PORT),
        class("bulk2", UDP_PORT2)
    )
}

fn require_ifindex(name: &str) -> Result<u32> {
    ifindex(name).with_context(|| format!("no interface {name} here"))
}

impl Gateway {
    fn new(config: Config) -> Result<Gateway> {
        let client = Netns::new("cli")?;
        let gateway = Netns::new("gw")?;
        let server = Netns::new("srv")?;
        veth(
            (&client, "cli", &mac(CLIENT_MAC)),
            (&gateway, "gw_in", &mac(GW_IN_MAC)),
        )?;
        veth(
            (&client, "seed", &mac(SEED_MAC)),
            (&client, "amp", &mac(AMP_MAC)),
        )?;
        veth(
            (&gateway, "gw_out", &mac(GW_OUT_MAC)),
            (&server, "srv", &mac(SERVER_MAC)),
        )?;
        for (ns, dev, v4, v6) in [
            (&client, "cli", "198.18.0.2/24", "2001:db8:1::2/64"),
            (&gateway, "gw_in", "198.18.0.1/24", "2001:db8:1::1/64"),
            (&gateway, "gw_out", "198.19.0.1/24", "2001:db8:2::1/64"),
            (&server, "srv", "198.19.0.2/24", "2001:db8:2::2/64"),
        ] {
            ns.ip(&["addr", "add", v4, "dev", dev])?;
            ns.ip(&["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
        }
        gateway.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.gw_in.rp_filter=0",
            ],
            None,
        )?;
        // Permanent neighbour entries: no ARP or ND on the measured path, for the kernel and
        // for the route lookups alike.
        for addr in ["198.19.0.2", "2001:db8:2::2"] {
            gateway.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac(SERVER_MAC),
                "dev",
                "gw_out",
                "nud",
                "permanent",
            ])?;
        }
        let sink = if config == Config::GeneratorFloor {
            gateway.within(|| {
                let mut s = BenchPrograms::load()?;
                s.attach("bench_sink", "gw_in")?;
                Ok(s)
            })?
        } else {
            server.within(|| {
                let mut s = BenchPrograms::load()?;
                s.attach("bench_sink", "srv")?;
                Ok(s)
            })?
        };
        let generator = || client.within(|| PacketRing::open(require_ifindex("seed")?));
        let generators = [generator()?, generator()?];
        let amplifier = client.within(|| {
            let mut a = BenchPrograms::load()?;
            a.amplify("amp", require_ifindex("cli")?)?;
            Ok(a)
        })?;
        let installed = match config {
            Config::GeneratorFloor => Installed::Kernel,
            Config::BareRedirect | Config::FibForward => Installed::Programs {
                _programs: gateway.within(|| {
                    let mut f = BenchPrograms::load()?;
                    let out = require_ifindex("gw_out")?;
                    if config == Config::BareRedirect {
                        f.redirect_to(out)?;
                        f.attach("bench_redirect", "gw_in")?;
                    } else {
                        f.fib_egress(out)?;
                        f.attach("bench_fib_forward", "gw_in")?;
                    }
                    Ok(f)
                })?,
            },
            Config::DataplanePass | Config::DataplaneForward => {
                let forward = config == Config::DataplaneForward;
                let policy = Policy::from_toml_str(&gateway_policy(forward), "gateway policy")?;
                Installed::Dataplane {
                    _dataplane: gateway.within(|| {
                        let mut dp = Dataplane::load()?;
                        dp.register_interfaces(&policy, &[])?;
                        dp.apply(&CompiledPolicy::new(&policy))?;
                        dp.attach("gw_in", XdpMode::Driver)?;
                        Ok(dp)
                    })?,
                }
            }
            Config::KernelNft | Config::KernelHtb => {
                // Redirected frames reach a veth only through its NAPI, which XDP or GRO
                // turns on; GRO it is, so no XDP program sits on the kernel's path.
                gateway.exec("ethtool", &["-K", "gw_in", "gro", "on"], None)?;
                if config == Config::KernelNft {
                    gateway.exec("nft", &["-f", "-"], Some(NFT_LIMIT))?;
                } else {
                    gateway.exec(
                        "tc",
                        &[
                            "qdisc", "add", "dev", "gw_out", "root", "handle", "1:", "htb",
                            "default", "10",
                        ],
                        None,
                    )?;
                    gateway.exec(
                        "tc",
                        &[
                            "class",
                            "add",
                            "dev",
                            "gw_out",
                            "parent",
                            "1:",
                            "classid",
                            "1:10",
                            "htb",
                            "rate",
                            POLICE_RATE,
                            "ceil",
                            POLICE_RATE,
                            "burst",
                            "1mb",
                            "cburst",
                            "1mb",
                            "quantum",
                            "200000",
                        ],
                        None,
                    )?;
                }
                Installed::Kernel
            }
        };
        Ok(Gateway {
            config,
            sink,
            generators,
            amplifier,
            _installed: installed,
            _client: client,
            gateway,
            _server: server,
        })
    }

    /// Packets the gateway's kernel forwarded so far (IpForwDatagrams).
    fn kernel_forwarded(&self) -> Result<u64> {
        let snmp = self.gateway.output("cat", &["/proc/net/snmp"])?;
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
        let (names, values) = (ip.next(), ip.next());
        names
            .zip(values)
            .and_then(|(n, v)| {
                n.split_whitespace()
                    .zip(v.split_whitespace())
                    .find(|(n, _)| *n == "ForwDatagrams")
                    .and_then(|(_, v)| v.parse().ok())
            })
            .context("no Ip ForwDatagrams in the gateway's /proc/net/snmp")
    }

    /// Sends `seeds` seeds (`COPIES` frames each) of `load` from each of its CPUs at once;
    /// returns (frames received at the sink, seconds of the longest generator call).
    fn send(&mut self, load: &Load, seeds: u32) -> Result<(u64, f64)> {
        let before = self.sink.sink_counters()?.0;
        self.amplifier.generate_flows(load.flows)?;
        let frames = load.frames();
        let elapsed = std::thread::scope(|s| -> Result<f64> {
            let handles: Vec<_> = self
                .generators
                .iter_mut()
                .zip(&frames)
                .zip([CPU, OTHER_CPU])
                .map(|((generator, frame), cpu)| {
                    s.spawn(move || {
                        pin_to_cpu(cpu);
                        generator.send(frame, seeds)
                    })
                })
                .collect();
            let mut longest = 0f64;
            for h in handles {
                let took = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
                longest = longest.max(took.as_secs_f64());
            }
            Ok(longest)
        })?;
        // At most a batch or two is still in flight when the calls return.
        std::thread::sleep(Duration::from_millis(20));
        let received = self.sink.sink_counters()?.0 - before;
        Ok((received, elapsed))
    }
}

/// What a row offers the gateway: frames of one family and size, over `flows` flows, from
/// one CPU or from both (on two classes, or on one).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Load {
    v6: bool,
    len: usize,
    flows: u32,
    cpus: Cpus,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cpus {
    One,
    TwoClasses,
    OneClass,
}

impl Load {
    fn v4(len: usize) -> Load {
        Load {
            v6: false,
            len,
            flows: 1,
            cpus: Cpus::One,
        }
    }

    /// The frame of each generating CPU.
    fn frames(&self) -> Vec<Vec<u8>> {
        let make = |port| {
            if self.v6 {
                frame_v6(self.len, port)
            } else {
                frame(self.len, port)
            }
        };
        match self.cpus {
            Cpus::One => vec![make(UDP_PORT)],
            Cpus::TwoClasses => vec![make(UDP_PORT), make(UDP_PORT2)],
            Cpus::OneClass => vec![make(UDP_PORT), make(UDP_PORT)],
        }
    }

    fn cpu_count(&self) -> u64 {
        if self.cpus == Cpus::One {
            1
        } else {
            2
        }
    }

    fn describe(&self) -> String {
        let family = if self.v6 { "IPv6" } else { "IPv4" };
        let flows = if self.flows == 1 {
            "1 flow".to_string()
        } else {
            format!("{} flows", self.flows)
        };
        let cpus = match self.cpus {
            Cpus::One => "1 CPU",
            Cpus::TwoClasses => "2 CPUs, a class each",
            Cpus::OneClass => "2 CPUs, one class",
        };
        format!("{family} {} B, {flows}, {cpus}", self.len)
    }
}

/// A frame from the client to the server: Ethernet to gw_in, IPv4, UDP to `port`, `len`
/// bytes.
fn frame(len: usize, port: u16) -> Vec<u8> {
    const HEADERS: usize = 14 + 20 + 8;
    let mut f = Frame::eth()
        .ipv4(CLIENT_ADDR, SERVER_ADDR)
        .udp(40000, port)
        .payload(len.saturating_sub(HEADERS))
        .build();
    f[..6].copy_from_slice(&GW_IN_MAC);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f
}

/// As [`frame`], IPv6.
fn frame_v6(len: usize, port: u16) -> Vec<u8> {
    const HEADERS: usize = 14 + 40 + 8;
    let mut f = Frame::eth()
        .ipv6(CLIENT_ADDR6, SERVER_ADDR6)
        .udp(40000, port)
        .payload(len.saturating_sub(HEADERS))
        .build();
    f[..6].copy_from_slice(&GW_IN_MAC);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f
}

/// Which table a row belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Every configuration, IPv4, one flow, one CPU, both frame sizes.
    Main,
    /// IPv6 and many flows.
    Flows,
    /// Both CPUs.
    Cpus,
}

/// One measured row: a gateway and what it is offered.
struct Case {
    gateway: usize,
    load: Load,
    table: Group,
    mpps: Vec<f64>,
    lost: u64,
    sent: u64,
}

/// The rows, in measuring order (rounds interleave all of them).
fn cases(gateways: &[Gateway]) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |config: Config, load: Load, table: Group| {
        if let Some(gateway) = gateways.iter().position(|g| g.config == config) {
            out.push(Case {
                gateway,
                load,
                table,
                mpps: Vec::new(),
                lost: 0,
                sent: 0,
            });
        }
    };
    for config in Config::ALL {
        for (len, _) in FRAME_SIZES {
            add(config, Load::v4(len), Group::Main);
        }
    }
    let small = FRAME_SIZES[0].0;
    for config in [
        Config::GeneratorFloor,
        Config::FibForward,
        Config::DataplaneForward,
    ] {
        let v6 = Load {
            v6: true,
            len: IPV6_FRAME,
            ..Load::v4(small)
        };
        add(config, v6, Group::Flows);
    }
    for flows in MANY_FLOWS {
        let many = Load {
            flows,
            ..Load::v4(small)
        };
        add(Config::GeneratorFloor, many, Group::Flows);
        add(Config::DataplaneForward, many, Group::Flows);
    }
    for (config, cpus) in [
        (Config::BareRedirect, Cpus::TwoClasses),
        (Config::DataplaneForward, Cpus::TwoClasses),
        (Config::DataplaneForward, Cpus::OneClass),
    ] {
        let both = Load {
            cpus,
            ..Load::v4(small)
        };
        add(config, both, Group::Cpus);
    }
    out
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    bar.set_message("building namespaces");
    let mut gateways = Vec::new();
    for config in Config::ALL {
        gateways.push(Gateway::new(config).with_context(|| config.label())?);
    }
    let mut cases = cases(&gateways);
    bar.set_length((cases.len() * (settings.rounds + 1)) as u64);
    bar.set_message("warm-up");
    for case in &cases {
        let g = &mut gateways[case.gateway];
        let warm = (settings.frames / 10).max(WARM_UP_FRAMES) / COPIES;
        let (received, _) = g.send(&case.load, warm.max(1))?;
        if received == 0 {
            bail!(
                "{} ({}): no frame reached the server; the path is broken",
                g.config.label(),
                case.load.describe()
            );
        }
        bar.inc(1);
    }
    let forwarded_before = gateways
        .iter()
        .map(Gateway::kernel_forwarded)
        .collect::<Result<Vec<_>>>()?;
    let table_bytes = flow_table_bytes()?;
    let mut visit_ns = Vec::new();
    for round in 0..settings.rounds {
        bar.set_message(format!("round {}/{}", round + 1, settings.rounds));
        visit_ns.push(std::thread::scope(|s| {
            s.spawn(|| {
                pin_to_cpu(CPU);
                entry_visit_ns(table_bytes, ENTRY_VISITS)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("memory reader panicked"))
        })?);
        for case in cases.iter_mut() {
            let g = &mut gateways[case.gateway];
            let seeds = (settings.frames / COPIES).max(1);
            let (received, secs) = g.send(&case.load, seeds)?;
            let sent = u64::from(seeds * COPIES) * case.load.cpu_count();
            case.mpps.push(received as f64 / secs / 1e6);
            case.sent += sent;
            case.lost += sent.saturating_sub(received);
            bar.inc(1);
        }
    }
    // Which path carried the packets: the kernel's forwarding counter against what arrived.
    let mut kernel_share = Vec::new();
    for (gi, g) in gateways.iter().enumerate() {
        let arrived: u64 = cases
            .iter()
            .filter(|c| c.gateway == gi)
            .map(|c| c.sent - c.lost)
            .sum();
        let forwarded = g.kernel_forwarded()? - forwarded_before[gi];
        kernel_share.push(forwarded as f64 / arrived.max(1) as f64);
    }
    let live_frames = match gateways[0]
        .sink
        .loaded("bench_sink")
        .map(live_frames_allowed)
    {
        Ok(Ok(())) => "this kernel allows them".to_string(),
        Ok(Err(refusal)) => format!("this kernel refuses them: {refusal}"),
        Err(e) => format!("not probed: {e}"),
    };
    let memory = MemoryRead {
        live_frames,
        table_bytes,
        ns: Figure::of(&visit_ns),
    };
    Ok(report(settings, &gateways, &cases, &kernel_share, &memory))
}

/// Visits of the memory measurement each round: enough that the first lap's page faults and
/// the timer's resolution vanish in the mean.
const ENTRY_VISITS: usize = 2_000_000;

/// Bytes of one CPU's flow table on this machine, as the loader sizes it.
fn flow_table_bytes() -> Result<usize> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    Ok((1usize << cache_bits(cpus as u32)) * std::mem::size_of::<FlowEntry>())
}

/// One visit to an entry of a table of one CPU's flow-table size, per round.
struct MemoryRead {
    /// Whether live frames work here, for the method's text.
    live_frames: String,
    table_bytes: usize,
    ns: Figure,
}

/// The cost of exact cross-CPU policing, from (b) on one CPU, on two CPUs with a class each
/// and on two CPUs sharing one class, and what it would mean on more cores. The model: each
/// packet of a class updates one shared policer state (a compare-and-swap on one cache
/// line), a section the CPUs pass one at a time, of `c` ns per packet (the two-CPU
/// one-class time per packet less the two-class one); everything else runs in parallel at
/// the two-class time per packet `t`. N CPUs on one class then forward N / (t + (N − 1) c)
/// packets per ns; on N classes, N / t.
fn cpu_model(one: Option<&Case>, classes: Option<&Case>, shared: Option<&Case>) -> Option<Table> {
    let (one, classes, shared) = (one?, classes?, shared?);
    let mpps = |c: &Case| Figure::of(&c.mpps).median;
    let t = 2e3 / mpps(classes);
    let c = (2e3 / mpps(shared) - t).max(0.0);
    let mut table = Table::new(
        "Both CPUs (64 B, IPv4): the cost of exact cross-CPU policing. Measured rows, then a \
         model (not a measurement): each packet of a class passes one shared policer state \
         (a compare-and-swap on one cache line) alone, c ns per packet = the two-CPU time \
         per packet on one class less that on two classes; the rest runs in parallel at t ns \
         per packet (two classes). N CPUs on one class: N / (t + (N − 1)·c); on N classes: \
         N / t.",
        &["", "Mpps", "× one CPU"],
    );
    let base = mpps(one);
    for (label, value) in [
        ("measured: 1 CPU".to_string(), base),
        ("measured: 2 CPUs, a class each".to_string(), mpps(classes)),
        ("measured: 2 CPUs, one class".to_string(), mpps(shared)),
    ] {
        table.row(vec![
            label,
            format!("{value:.3}"),
            format!("{:.2}", value / base),
        ]);
    }
    table.row(vec![
        format!("model: t = {t:.0} ns, c = {c:.1} ns"),
        String::new(),
        String::new(),
    ]);
    for n in [16.0f64, 64.0] {
        let one_class = n / (t + (n - 1.0) * c) * 1e3;
        let classes = n / t * 1e3;
        table.row(vec![
            format!("model: {n} CPUs, one class (N classes: {classes:.1} Mpps)"),
            format!("{one_class:.1}"),
            format!("{:.2}", one_class / base),
        ]);
    }
    Some(table)
}

/// Mean time per packet of the whole path, in ns, from a row's median.
fn ns_per_packet(c: &Case) -> f64 {
    1e3 / Figure::of(&c.mpps).median
}

/// Per round: the time per packet of `c` less that of the generator alone (`floor`, the
/// same load), in ns: what the gateway costs.
fn net_ns(c: &Case, floor: &Case) -> Vec<f64> {
    c.mpps
        .iter()
        .zip(&floor.mpps)
        .map(|(x, f)| 1e3 / x - 1e3 / f)
        .collect()
}

fn report(
    settings: &Settings,
    gateways: &[Gateway],
    cases: &[Case],
    kernel_share: &[f64],
    memory: &MemoryRead,
) -> Section {
    let mut s = Section::new("Gateway throughput");
    s.method = vec![
        "Three network namespaces: client `cli` ⇄ `gw_in` gateway `gw_out` ⇄ `srv` server, \
         two veth pairs, 198.18.0.0/24 and 198.19.0.0/24 (2001:db8:1::/64 and \
         2001:db8:2::/64), permanent neighbour entries for the server (no ARP or ND on the \
         path), IPv4 and IPv6 forwarding on in the gateway."
            .into(),
        format!(
            "Generator (`bench/src/generator.rs`): seeds from an AF_PACKET socket with a \
             TX ring (TPACKET_V2, {RING_FRAMES} frames, qdisc bypassed, as netsniff-ng's \
             trafgen) on a veth `seed` in the client namespace; `bench_amplify` on its peer \
             `amp` sends {COPIES} copies of each seed out of `cli` in one broadcast redirect \
             (a devmap holding `cli` {COPIES} times), so `gw_in` receives them in one batch \
             as from a NIC's ring; `bench_stamp`, each copy's devmap program, gives the \
             many-flows rows' copy i flow i mod N (IPv4 source 198.18.x.y with the header \
             checksum updated, source port from i's high bits) in a scattered order. {} \
             frames per round and CPU. The generator's own cost is part of every figure: \
             row (0) measures it alone (XDP on `gw_in` counts and drops every frame), and \
             the targets judge gateways by their time per packet net of (0) of the same \
             round. Live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, the \
             generator of earlier runs) are not used: some kernel builds refuse them ({}).",
            settings.frames, memory.live_frames
        ),
        "Sink: `bench_sink` (XDP, counts per CPU and drops) on `srv`. Throughput = frames \
         counted at the sink / duration of the generator's call (the longest of the two \
         calls on two-CPU rows)."
            .into(),
        format!(
            "Configurations: (a) `bench_redirect` on `gw_in` sending every frame to `gw_out` \
             through a devmap; (a′) `bench_fib_forward` on `gw_in`: what xdp-forward's \
             `fib-full` mode does and nothing else (bpf_fib_lookup with the routing rules, \
             TTL / hop limit, MAC rewrite, devmap redirect), the ceiling of a forwarder \
             that consults the routing table per packet; (b) the dataplane on `gw_in` \
             classifying, policing and forwarding itself, its flows on their cached next \
             hop; (b') the dataplane classifying and policing, then XDP_PASS and kernel \
             forwarding; (c) kernel forwarding with an nftables forward-hook \
             `limit rate over` rule; (d) kernel forwarding with an HTB root qdisc on \
             `gw_out`. Every policer/shaper is set to {POLICE_RATE}, far above what the \
             path carries, so each packet pays for it and none is dropped by it. For (c) \
             and (d) GRO is enabled on `gw_in` (a veth takes redirected frames only with \
             NAPI on, which XDP or GRO turns on)."
        ),
        format!(
            "One-CPU rows run on CPU {CPU}: the generator thread is pinned there, and the \
             veths' NAPI work runs in softirq on the CPU that sent the frames. The figure \
             is therefore the cost of generator + gateway + sink per packet on one CPU; \
             configurations differ only in the gateway. Two-CPU rows add a generator \
             pinned to CPU {OTHER_CPU} at the same time, on the other class (UDP port \
             {UDP_PORT2}) or on the same one. {} rounds, interleaved across all rows, after \
             a warm-up run of each; ratios are per round.",
            settings.rounds
        ),
        format!(
            "Memory: each round also times {ENTRY_VISITS} visits (from user space on CPU \
             {CPU}) to the {}-byte entries of a table the size of one CPU's flow table ({} \
             MiB), in one random cycle, each reading the entry's first word (the next \
             entry's index, so visits do not overlap) and counting in its last, as a packet \
             reads its flow's key and counts in its state: what a packet pays at least for \
             per-flow state the CPU caches do not hold. {} ns per visit (median, min–max).",
            std::mem::size_of::<FlowEntry>(),
            memory.table_bytes >> 20,
            memory.ns.show(0)
        ),
    ];
    let find = |config: Config, load: Load| {
        cases
            .iter()
            .find(|c| gateways[c.gateway].config == config && c.load == load)
    };
    let small = Load::v4(FRAME_SIZES[0].0);
    // What a row's gateway costs per packet: its time net of (0) on the same load.
    let net = |c: &Case| {
        find(Config::GeneratorFloor, c.load)
            .filter(|_| gateways[c.gateway].config != Config::GeneratorFloor)
            .map(|floor| net_ns(c, floor))
    };

    let mut main = Table::new(
        "Throughput in Mpps (median, min–max over rounds), IPv4, one flow, one CPU; the \
         gateway's own time per packet (the row's less (0)'s of the same round), and the \
         throughput ratio against (a) on those net times.",
        &[
            "configuration",
            "frame",
            "Mpps",
            "Gbit/s",
            "gateway ns/packet",
            "× (a), net",
            "lost",
            "forwarded by the kernel",
        ],
    );
    let mut bars = Vec::new();
    for c in cases.iter().filter(|c| c.table == Group::Main) {
        let config = gateways[c.gateway].config;
        let f = Figure::of(&c.mpps);
        // Line rate counts the frame plus FCS, preamble and inter-frame gap (24 bytes).
        let gbit = f.median * 1e6 * (c.load.len as f64 + 24.0) * 8.0 / 1e9;
        let name = FRAME_SIZES
            .iter()
            .find(|(n, _)| *n == c.load.len)
            .map_or("?", |(_, name)| name);
        let own = net(c);
        let vs_a = find(Config::BareRedirect, c.load)
            .and_then(net)
            .zip(own.as_ref())
            .map(|(a, own)| Figure::ratio(&a, own).show(2))
            .unwrap_or_default();
        main.row(vec![
            config.label().into(),
            name.into(),
            f.show(3),
            format!("{gbit:.2}"),
            own.map(|n| Figure::of(&n).show(0)).unwrap_or_default(),
            vs_a,
            format!("{} of {}", c.lost, c.sent),
            format!("{:.0}%", kernel_share[c.gateway] * 100.0),
        ]);
        bars.push((format!("{} — {name}", config.label()), f));
    }
    s.tables.push(main);

    let mut more = Table::new(
        "IPv6, many flows and both CPUs, 64-byte frames: Mpps (median, min–max) and the \
         ratio to the same configuration's IPv4 one-flow one-CPU row of the same round.",
        &[
            "configuration",
            "load",
            "Mpps",
            "× one flow, one CPU",
            "lost",
        ],
    );
    for c in cases.iter().filter(|c| c.table != Group::Main) {
        let config = gateways[c.gateway].config;
        let base = find(config, small)
            .map(|b| Figure::ratio(&c.mpps, &b.mpps).show(2))
            .unwrap_or_default();
        more.row(vec![
            config.label().into(),
            c.load.describe(),
            Figure::of(&c.mpps).show(3),
            base,
            format!("{} of {}", c.lost, c.sent),
        ]);
        bars.push((
            format!("{} — {}", config.tag(), c.load.describe()),
            Figure::of(&c.mpps),
        ));
    }
    s.tables.push(more);
    s.plots.push(Plot::Bars {
        file: "throughput.svg".into(),
        title: "Gateway throughput through veth (Mpps, median and min–max)".into(),
        unit: "million packets per second".into(),
        bars,
    });

    // (b) counts only if the dataplane forwarded itself.
    let forwarded_itself = |c: &&Case| kernel_share[c.gateway] < MOSTLY;
    let target = |name: String, goal: &str, min: f64, b: Option<&Case>, o: Option<&Case>| match (
        b.filter(forwarded_itself),
        o,
    ) {
        (Some(b), Some(o)) => match (net(b), net(o)) {
            (Some(net_b), Some(net_o)) => {
                // Throughput ratio on the gateways' own times: o's time over b's.
                let r = Figure::ratio(&net_o, &net_b);
                let (tb, to) = (Figure::of(&net_b).median, Figure::of(&net_o).median);
                let whole = Figure::ratio(&b.mpps, &o.mpps);
                Target {
                    name,
                    goal: goal.into(),
                    measured: format!("{}×", r.show(2)),
                    verdict: Verdict::of(r.median >= min),
                    note: format!(
                        "gateway per packet, net of the generator: {to:.0} ns against (b) \
                         {tb:.0} ns; {min}× needs (b) at {:.0} ns. Whole paths, generator \
                         included ({:.0} and {:.0} ns): {}×",
                        to / min,
                        ns_per_packet(o),
                        ns_per_packet(b),
                        whole.show(2)
                    ),
                }
            }
            _ => Target {
                name,
                goal: goal.into(),
                measured: "not measured".into(),
                verdict: Verdict::NotMeasured,
                note: "the generator's row (0) of this load is missing".into(),
            },
        },
        _ => Target {
            name,
            goal: goal.into(),
            measured: "not measured".into(),
            verdict: Verdict::NotMeasured,
            note: "the row is missing or the kernel forwarded (b)'s packets".into(),
        },
    };
    for (len, name) in FRAME_SIZES {
        let load = Load::v4(len);
        let b = find(Config::DataplaneForward, load);
        for (other, goal, min) in [
            (Config::FibForward, "≥ 1.0× (a′)", 1.0),
            (Config::BareRedirect, "≥ 0.7× (a)", 0.7),
            (Config::KernelNft, "≥ 3× (c)", 3.0),
            (Config::KernelHtb, "≥ 3.7× (d)", 3.7),
        ] {
            s.targets.push(target(
                format!("(b) vs {}, {name} frames", other.tag()),
                goal,
                min,
                b,
                find(other, load),
            ));
        }
    }
    let v6 = Load {
        v6: true,
        len: IPV6_FRAME,
        ..small
    };
    s.targets.push(target(
        format!("(b) vs (a′), IPv6 {IPV6_FRAME} B frames"),
        "≥ 1.0× (a′)",
        1.0,
        find(Config::DataplaneForward, v6),
        find(Config::FibForward, v6),
    ));
    let most = Load {
        flows: MANY_FLOWS[MANY_FLOWS.len() - 1],
        ..small
    };
    let one_flow = find(Config::DataplaneForward, small);
    let mut many_flows = target(
        format!("(b) at {} flows vs (b) at 1 flow", most.flows),
        "≥ 0.8×",
        0.8,
        find(Config::DataplaneForward, most),
        one_flow,
    );
    if let (Some(one), Verdict::Missed) = (one_flow.and_then(net), &many_flows.verdict) {
        // What memory alone allows: a flow seen once per 100k packets is in no cache, and
        // its entry must be read before the packet can be classified.
        let (t1, read) = (Figure::of(&one).median, memory.ns.median);
        many_flows.note.push_str(&format!(
            "; each packet visits its flow's entry, and one visit to an entry of a table \
             of one CPU's flow-table size ({} MiB) outside the caches takes {} ns here \
             (Method): (b) at 1 flow plus that one visit would be {:.2}×",
            memory.table_bytes >> 20,
            memory.ns.show(0),
            t1 / (t1 + read)
        ));
    }
    s.targets.push(many_flows);
    if let Some(model) = cpu_model(
        one_flow,
        find(
            Config::DataplaneForward,
            Load {
                cpus: Cpus::TwoClasses,
                ..small
            },
        ),
        find(
            Config::DataplaneForward,
            Load {
                cpus: Cpus::OneClass,
                ..small
            },
        ),
    ) {
        s.tables.push(model);
    }
    s.caveats = vec![
        "veth is not a NIC: no DMA, no interrupts, no driver rings; frames move by pointer \
         between namespaces. A frame's size costs little here except where something \
         copies it (the kernel path builds an skb)."
            .into(),
        "On one-CPU rows one CPU does everything (generator, gateway, sink), so these are \
         per-packet costs of whole paths, not what a gateway with a core per queue would \
         forward. Two-CPU rows have two such paths sharing one veth pair and one machine's \
         memory; this VM has only two CPUs, so the 16- and 64-CPU figures are a model."
            .into(),
        "The generator and the sink cost the same in every configuration and are part of \
         every Mpps figure, so whole-path ratios understate the gateways' own difference \
         (they are pulled towards 1); the targets use the times net of the generator (0), \
         which carry the noise of two measurements."
            .into(),
        "Many-flows rows cycle through the flows in order, the worst case for a cache: every \
         packet is of another flow than the one before. Real traffic repeats flows far more."
            .into(),
        "Gbit/s counts each frame plus 24 bytes (FCS, preamble, inter-frame gap) as an \
         Ethernet link would."
            .into(),
    ];
    s
}
