//! Gateway throughput through veth pairs in network namespaces: client -> gateway -> server,
//! frames made in the kernel by a live-frames BPF_PROG_TEST_RUN and counted at the server.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use dataplane::{
    compile::CompiledPolicy,
    config::Policy,
    dataplane::{ifindex, Dataplane},
};
use dataplane_tests::{frames::Frame, kernel::pin_to_cpu};
use indicatif::ProgressBar;

use crate::{
    netns::{veth, Netns},
    plot::Plot,
    programs::{BenchPrograms, LIVE_BATCH},
    report::{Section, Table, Target, Verdict},
    stats::Figure,
    Settings,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x01];
const GW_IN_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x02];
const GW_OUT_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x03];
const SERVER_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 0x04];
const CLIENT_ADDR: [u8; 4] = [198, 18, 0, 2];
const SERVER_ADDR: [u8; 4] = [198, 19, 0, 2];
const UDP_PORT: u16 = 5001;
/// The generator's CPU; the gateway and the sink run there too (see the method).
const CPU: usize = 1;
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
/// Frame sizes (without FCS): 60 bytes (64 on the wire) and a 1500-byte IP packet.
const FRAME_SIZES: [(usize, &str); 2] = [(60, "64 B"), (1514, "1500 B")];

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// What the gateway runs between its two ports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    /// (a) XDP redirect from gw_in to gw_out through a devmap, nothing else.
    BareRedirect,
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
    const ALL: [Config; 5] = [
        Config::BareRedirect,
        Config::DataplanePass,
        Config::DataplaneForward,
        Config::KernelNft,
        Config::KernelHtb,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::BareRedirect => "(a) bare XDP redirect (floor)",
            Config::DataplaneForward => "(b) dataplane: classify + police + forward",
            Config::DataplanePass => "(b') dataplane: classify + police, kernel forwards",
            Config::KernelNft => "(c) kernel forwarding + nftables limit",
            Config::KernelHtb => "(d) kernel forwarding + tc HTB",
        }
    }
}

/// What keeps a configuration in force (dropped with the gateway).
enum Installed {
    Redirect { _programs: BenchPrograms },
    Dataplane { _dataplane: Dataplane },
    Kernel,
}

/// client (cli) <-> (gw_in) gateway (gw_out) <-> (srv) server, three namespaces.
struct Gateway {
    config: Config,
    sink: BenchPrograms,
    generator: BenchPrograms,
    _installed: Installed,
    // Dropped after the programs above: the namespaces go last.
    client: Netns,
    gateway: Netns,
    _server: Netns,
}

/// The gateway's policy: one policed UDP class; with `forward`, the dataplane forwards what
/// arrives on gw_in itself (gw_out registered as its egress).
fn gateway_policy(forward: bool) -> String {
    let interfaces = if forward {
        "[[interface]]\nname = \"gw_in\"\nforward = true\n[[interface]]\nname = \"gw_out\"\n"
    } else {
        "[[interface]]\nname = \"gw_in\"\n"
    };
    format!(
        "{interfaces}[[class]]\nname = \"default\"\n[[class]]\nname = \"bulk\"\n\
         rate = \"{POLICE_RATE}\"\nexceed = \"drop\"\n[[rule]]\nclass = \"bulk\"\n\
         protocol = \"udp\"\ndst_port = {UDP_PORT}\n"
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
            (&gateway, "gw_out", &mac(GW_OUT_MAC)),
            (&server, "srv", &mac(SERVER_MAC)),
        )?;
        client.ip(&["addr", "add", "198.18.0.2/24", "dev", "cli"])?;
        gateway.ip(&["addr", "add", "198.18.0.1/24", "dev", "gw_in"])?;
        gateway.ip(&["addr", "add", "198.19.0.1/24", "dev", "gw_out"])?;
        server.ip(&["addr", "add", "198.19.0.2/24", "dev", "srv"])?;
        gateway.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.gw_in.rp_filter=0",
            ],
            None,
        )?;
        // A permanent neighbour entry: no ARP on the measured path, for the kernel and for
        // the dataplane's FIB lookup alike.
        gateway.ip(&[
            "neigh",
            "replace",
            "198.19.0.2",
            "lladdr",
            &mac(SERVER_MAC),
            "dev",
            "gw_out",
            "nud",
            "permanent",
        ])?;
        let sink = server.within(|| {
            let mut s = BenchPrograms::load()?;
            s.attach("bench_sink", "srv")?;
            Ok(s)
        })?;
        let generator = client.within(|| {
            let mut g = BenchPrograms::load()?;
            g.redirect_to(require_ifindex("cli")?)?;
            Ok(g)
        })?;
        let installed = match config {
            Config::BareRedirect => Installed::Redirect {
                _programs: gateway.within(|| {
                    let mut f = BenchPrograms::load()?;
                    f.redirect_to(require_ifindex("gw_out")?)?;
                    f.attach("bench_redirect", "gw_in")?;
                    Ok(f)
                })?,
            },
            Config::DataplanePass | Config::DataplaneForward => {
                let forward = config == Config::DataplaneForward;
                let policy = Policy::from_toml_str(&gateway_policy(forward), "gateway policy")
                    .map_err(|e| {
                        // Until forwarding is merged the policy file has no `forward` key.
                        anyhow::anyhow!(
                            "not available yet: the dataplane cannot forward here ({e})"
                        )
                    })?;
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
            generator,
            _installed: installed,
            client,
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

    /// Sends `count` copies of `frame`; returns (frames received at the sink, seconds).
    fn send(&mut self, frame: &[u8], count: u32) -> Result<(u64, f64)> {
        let before = self.sink.sink_counters()?.0;
        let generator = &mut self.generator;
        let elapsed = self.client.within(|| {
            pin_to_cpu(CPU);
            generator.generate(frame, count)
        })?;
        // At most a batch or two is still in flight when the call returns.
        std::thread::sleep(Duration::from_millis(20));
        let received = self.sink.sink_counters()?.0 - before;
        Ok((received, elapsed.as_secs_f64()))
    }
}

/// A frame from the client to the server: Ethernet to gw_in, IPv4, UDP, `len` bytes.
fn frame(len: usize) -> Vec<u8> {
    const HEADERS: usize = 14 + 20 + 8;
    let mut f = Frame::eth()
        .ipv4(CLIENT_ADDR, SERVER_ADDR)
        .udp(40000, UDP_PORT)
        .payload(len.saturating_sub(HEADERS))
        .build();
    f[..6].copy_from_slice(&GW_IN_MAC);
    f[6..12].copy_from_slice(&CLIENT_MAC);
    f
}

/// Per configuration and frame size: Mpps per round and frames lost.
struct Runs {
    mpps: Vec<f64>,
    lost: u64,
    sent: u64,
}

pub fn run(settings: &Settings, bar: &ProgressBar) -> Result<Section> {
    bar.set_message("building namespaces");
    let mut gateways = Vec::new();
    let mut unavailable = Vec::new();
    for config in Config::ALL {
        match Gateway::new(config) {
            Ok(g) => gateways.push(g),
            Err(e) if config == Config::DataplaneForward => {
                unavailable.push((config, format!("{e:#}")))
            }
            Err(e) => return Err(e.context(config.label())),
        }
    }
    let frames: Vec<Vec<u8>> = FRAME_SIZES.iter().map(|(n, _)| frame(*n)).collect();
    let mut runs: Vec<Vec<Runs>> = gateways
        .iter()
        .map(|_| {
            frames
                .iter()
                .map(|_| Runs {
                    mpps: Vec::new(),
                    lost: 0,
                    sent: 0,
                })
                .collect()
        })
        .collect();
    bar.set_length((gateways.len() * frames.len() * (settings.rounds + 1)) as u64);
    bar.set_message("warm-up");
    for g in gateways.iter_mut() {
        for f in &frames {
            let (received, _) = g.send(f, (settings.frames / 10).max(LIVE_BATCH))?;
            if received == 0 {
                bail!(
                    "{}: no frame reached the server; the path is broken",
                    g.config.label()
                );
            }
            bar.inc(1);
        }
    }
    let forwarded_before = gateways
        .iter()
        .map(Gateway::kernel_forwarded)
        .collect::<Result<Vec<_>>>()?;
    for round in 0..settings.rounds {
        bar.set_message(format!("round {}/{}", round + 1, settings.rounds));
        for (gi, g) in gateways.iter_mut().enumerate() {
            for (fi, f) in frames.iter().enumerate() {
                let (received, secs) = g.send(f, settings.frames)?;
                let r = &mut runs[gi][fi];
                r.mpps.push(received as f64 / secs / 1e6);
                r.sent += u64::from(settings.frames);
                r.lost += u64::from(settings.frames).saturating_sub(received);
                bar.inc(1);
            }
        }
    }
    // Which path carried the packets: the kernel's forwarding counter against what arrived.
    let mut kernel_share = Vec::new();
    for (gi, g) in gateways.iter().enumerate() {
        let arrived: u64 = runs[gi].iter().map(|r| r.sent - r.lost).sum();
        let forwarded = g.kernel_forwarded()? - forwarded_before[gi];
        kernel_share.push(forwarded as f64 / arrived.max(1) as f64);
    }
    Ok(report(
        settings,
        &gateways,
        &runs,
        &kernel_share,
        &unavailable,
    ))
}

fn report(
    settings: &Settings,
    gateways: &[Gateway],
    runs: &[Vec<Runs>],
    kernel_share: &[f64],
    unavailable: &[(Config, String)],
) -> Section {
    let mut s = Section::new("Gateway throughput");
    s.method = vec![
        "Three network namespaces: client `cli` ⇄ `gw_in` gateway `gw_out` ⇄ `srv` server, \
         two veth pairs, 198.18.0.0/24 and 198.19.0.0/24, a permanent neighbour entry for \
         the server (no ARP on the path), IPv4 forwarding on in the gateway."
            .into(),
        format!(
            "Generator: this kernel has no pktgen, so a helper XDP program (`bench_generate`) \
             is run with BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES inside the client \
             namespace, redirecting {} copies of one UDP frame per round into `cli` in \
             batches of {LIVE_BATCH}; the frames arrive at `gw_in` as if received. It \
             rewrites the 42 header bytes of every frame first: live-frames mode recycles \
             pages without restoring them, and a forwarding gateway rewrites MACs and TTL \
             in place.",
            settings.frames
        ),
        "Sink: `bench_sink` (XDP, counts per CPU and drops) on `srv`. Throughput = frames \
         counted at the sink / duration of the generator's call."
            .into(),
        format!(
            "Configurations: (a) `bench_redirect` on `gw_in` sending every frame to `gw_out` \
             through a devmap; (b) the dataplane on `gw_in` classifying, policing and \
             forwarding itself; (b') the dataplane classifying and policing, then XDP_PASS \
             and kernel forwarding; (c) kernel forwarding with an nftables forward-hook \
             `limit rate over` rule; (d) kernel forwarding with an HTB root qdisc on \
             `gw_out`. Every policer/shaper is set to {POLICE_RATE}, far above what the path \
             carries, so each packet pays for it and none is dropped by it. For (c) and (d) \
             GRO is enabled on `gw_in` (a veth takes redirected frames only with NAPI on, \
             which XDP or GRO turns on)."
        ),
        format!(
            "Everything runs on CPU {CPU}: the generator thread is pinned there, and the \
             veths' NAPI work runs in softirq on the CPU that sent the frames. The figure \
             is therefore the cost of generator + gateway + sink per packet on one CPU; \
             configurations differ only in the gateway. {} rounds, interleaved across \
             configurations, after a warm-up run; ratios are per round.",
            settings.rounds
        ),
    ];
    let mut table = Table::new(
        "Throughput in Mpps (median, min–max over rounds); ratios against (a), (c) and (d) \
         of the same round.",
        &[
            "configuration",
            "frame",
            "Mpps",
            "Gbit/s",
            "× (a)",
            "lost",
            "forwarded by the kernel",
        ],
    );
    let base = |c: Config| gateways.iter().position(|g| g.config == c);
    let mut bars = Vec::new();
    for (gi, g) in gateways.iter().enumerate() {
        for (fi, (len, name)) in FRAME_SIZES.iter().enumerate() {
            let r = &runs[gi][fi];
            let f = Figure::of(&r.mpps);
            // Line rate counts the frame plus FCS, preamble and inter-frame gap (24 bytes).
            let gbit = f.median * 1e6 * (*len as f64 + 24.0) * 8.0 / 1e9;
            let vs_a = base(Config::BareRedirect)
                .map(|a| Figure::ratio(&r.mpps, &runs[a][fi].mpps).show(2))
                .unwrap_or_default();
            table.row(vec![
                g.config.label().into(),
                (*name).into(),
                f.show(3),
                format!("{gbit:.2}"),
                vs_a,
                format!("{} of {}", r.lost, r.sent),
                format!("{:.0}%", kernel_share[gi] * 100.0),
            ]);
            bars.push((format!("{} — {name}", g.config.label()), f));
        }
    }
    for (c, e) in unavailable {
        table.row(vec![
            c.label().into(),
            "–".into(),
            e.clone(),
            "–".into(),
            "–".into(),
            "–".into(),
            "–".into(),
        ]);
    }
    s.tables.push(table);
    s.plots.push(Plot::Bars {
        file: "throughput.svg".into(),
        title: "Gateway throughput through veth (Mpps, median and min–max)".into(),
        unit: "million packets per second".into(),
        bars,
    });

    // (b) counts only if the dataplane forwarded itself: before forwarding in XDP exists,
    // `forward = true` is accepted but every packet still goes through the kernel.
    let b = base(Config::DataplaneForward).filter(|&i| kernel_share[i] < MOSTLY);
    for (other, goal, min) in [
        (Config::BareRedirect, "≥ 0.8× (a)", 0.8),
        (Config::KernelNft, "≥ 3× (c)", 3.0),
        (Config::KernelHtb, "≥ 3× (d)", 3.0),
    ] {
        for (fi, (_, name)) in FRAME_SIZES.iter().enumerate() {
            let name = format!("(b) vs {}, {name} frames", &other.label()[..3]);
            let target = match (b, base(other)) {
                (Some(b), Some(o)) => {
                    let r = Figure::ratio(&runs[b][fi].mpps, &runs[o][fi].mpps);
                    let ns = |i: usize| 1e3 / Figure::of(&runs[i][fi].mpps).median;
                    let a = base(Config::BareRedirect).map_or(f64::NAN, ns);
                    let (tb, to) = (ns(b), ns(o));
                    let note = if other == Config::BareRedirect {
                        format!(
                            "whole path per packet: (a) {a:.0} ns (generator, veths, redirect, \
                             sink), (b) {tb:.0} ns: the dataplane program with its FIB lookup \
                             adds {:.0} ns; {min}× would need it under {:.0} ns",
                            tb - a,
                            a / min - a
                        )
                    } else {
                        let need = to / min;
                        let versus_a = if need < a {
                            format!("less than the bare redirect path (a) takes ({a:.0} ns)")
                        } else {
                            format!(
                                "leaving the dataplane {:.0} ns over the bare redirect path (a, \
                                 {a:.0} ns)",
                                need - a
                            )
                        };
                        format!(
                            "whole path per packet: {} {to:.0} ns, (b) {tb:.0} ns; {min}× \
                             would need (b) at {need:.0} ns, {versus_a}",
                            &other.label()[..3],
                        )
                    };
                    Target {
                        name,
                        goal: goal.into(),
                        measured: format!("{}×", r.show(2)),
                        verdict: Verdict::of(r.median >= min),
                        note,
                    }
                }
                _ => {
                    let pass = base(Config::DataplanePass)
                        .zip(base(other))
                        .map(|(p, o)| Figure::ratio(&runs[p][fi].mpps, &runs[o][fi].mpps).show(2));
                    Target {
                        name,
                        goal: goal.into(),
                        measured: match pass {
                            Some(r) => format!("not available yet; (b') instead: {r}×"),
                            None => "not available yet".into(),
                        },
                        verdict: Verdict::NotMeasured,
                        note: "forwarding in XDP is not in this build: with `forward = true` \
                               the kernel still forwarded the packets (see the last column)"
                            .into(),
                    }
                }
            };
            s.targets.push(target);
        }
    }
    s.caveats = vec![
        "veth is not a NIC: no DMA, no interrupts, no driver rings; frames move by pointer \
         between namespaces. A frame's size costs little here except where something \
         copies it (the kernel path builds an skb)."
            .into(),
        "One CPU does everything (generator, gateway, sink), so these are per-packet costs \
         of whole paths, not what a gateway with a core per queue would forward."
            .into(),
        "The generator and the sink cost the same in every configuration and are part of \
         every figure, so ratios between configurations understate the gateways' own \
         difference (they are pulled towards 1)."
            .into(),
        "One UDP flow: the flow cache always hits and the policer's shared state never \
         contends across CPUs."
            .into(),
        "Gbit/s counts each frame plus 24 bytes (FCS, preamble, inter-frame gap) as an \
         Ethernet link would."
            .into(),
    ];
    s
}
