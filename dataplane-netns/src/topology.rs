//! A routed end-to-end topology in network namespaces: clients → gateway → server over veth
//! pairs, IPv4 (198.18.0.0/15) and IPv6 (2001:db8::/32), for tests and demonstrations.
//!
//! ```text
//!   client i  [c<i>] 198.18.<i+1>.2/24  2001:db8:<i+1>::2/64
//!      |  veth
//!   gateway   [g<i>] 198.18.<i+1>.1/24  2001:db8:<i+1>::1/64    (IP forwarding on)
//!             [gs]   198.19.0.1/24      2001:db8:ff::1/64
//!      |  veth
//!   server    [s]    198.19.0.2/24      2001:db8:ff::2/64
//! ```
//!
//! Clients and the server route everything via the gateway and checksum what they send in
//! software (`ethtool -K tx off`: see [`Topology::new`]'s links). Names are unique per instance:
//! namespaces `dpt-<pid>-<n>-<role>`, interfaces `dp<pid base 36>x<n base 36><role>` (at
//! most 15 characters). [`Drop`] deletes the namespaces (and with them the veths), also when
//! a test panics; [`remove_stale`] deletes those of processes that no longer run.
//!
//! The dataplane is attached on the gateway's interfaces from inside the gateway namespace
//! (the lab's `AttachTopology`): XDP attach and interface names resolve in the calling thread's
//! namespace, so [`in_netns`] runs a closure on a thread that entered it.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{in_netns, netns_run, run, NetnsError, NETNS_DIR};

/// First part of every namespace name this module creates.
pub const NETNS_TAG: &str = "dpt";
/// Longest interface name (IFNAMSIZ less the NUL).
const MAX_IFACE_NAME: usize = 15;
/// Most clients: client subnets are 198.18.1.0/24 ..= 198.18.<MAX_CLIENTS>.0/24 and interface
/// roles keep one digit.
pub const MAX_CLIENTS: usize = 9;

/// Instances created by this process, for unique names.
static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// What can go wrong while building a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A command, or a step inside a namespace, failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Too many or too few clients asked for.
    #[error("{0} clients asked for, 1..={MAX_CLIENTS} supported")]
    Clients(usize),
}

/// One end host: its namespace, its interface and addresses, and the gateway's side of the
/// link.
#[derive(Clone, Debug)]
pub struct Host {
    /// Network namespace name.
    pub netns: String,
    /// The host's interface.
    pub iface: String,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
    /// The gateway's interface on this link (in the gateway namespace).
    pub gateway_iface: String,
    /// The gateway's IPv4 address on this link.
    pub gateway_v4: Ipv4Addr,
    /// The gateway's IPv6 address on this link.
    pub gateway_v6: Ipv6Addr,
}

/// A built topology; dropping it deletes its namespaces.
#[derive(Debug)]
pub struct Topology {
    /// The gateway's namespace.
    pub gateway: String,
    /// Clients, each on its own link to the gateway.
    pub clients: Vec<Host>,
    /// The server.
    pub server: Host,
    /// Every namespace created, deleted on drop.
    namespaces: Vec<String>,
}

impl Topology {
    /// Builds `clients` clients, a gateway and a server. Leftovers of crashed runs are
    /// removed first.
    pub fn new(clients: usize) -> Result<Topology, TopologyError> {
        if clients == 0 || clients > MAX_CLIENTS {
            return Err(TopologyError::Clients(clients));
        }
        remove_stale()?;
        let pid = std::process::id();
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let netns = |role: &str| format!("{NETNS_TAG}-{pid}-{n}-{role}");
        let short = format!("dp{}x{}", base36(pid), base36(n));
        let iface = |role: &str| {
            let name = format!("{short}{role}");
            debug_assert!(name.len() <= MAX_IFACE_NAME, "{name} too long");
            name
        };
        let mut topo = Topology {
            gateway: netns("gw"),
            clients: Vec::new(),
            server: Host {
                netns: netns("srv"),
                iface: iface("s"),
                v4: Ipv4Addr::new(198, 19, 0, 2),
                v6: Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2),
                gateway_iface: iface("gs"),
                gateway_v4: Ipv4Addr::new(198, 19, 0, 1),
                gateway_v6: Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1),
            },
            namespaces: Vec::new(),
        };
        for i in 0..clients {
            let subnet = i as u8 + 1;
            topo.clients.push(Host {
                netns: netns(&format!("c{i}")),
                iface: iface(&format!("c{i}")),
                v4: Ipv4Addr::new(198, 18, subnet, 2),
                v6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(subnet), 0, 0, 0, 0, 2),
                gateway_iface: iface(&format!("g{i}")),
                gateway_v4: Ipv4Addr::new(198, 18, subnet, 1),
                gateway_v6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(subnet), 0, 0, 0, 0, 1),
            });
        }
        // From here on, Drop cleans up whatever was made.
        topo.build()?;
        Ok(topo)
    }

    fn build(&mut self) -> Result<(), TopologyError> {
        let gateway = self.gateway.clone();
        self.add_netns(&gateway)?;
        // Gateway: a router. Set before the interfaces exist so they inherit it.
        sysctls(
            &gateway,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/default/forwarding", "1"),
            ],
        )?;
        for host in self.hosts().cloned().collect::<Vec<_>>() {
            self.add_netns(&host.netns)?;
            self.link(&host)?;
        }
        Ok(())
    }

    /// Creates a namespace with loopback up and duplicate address detection off (addresses
    /// are usable at once).
    fn add_netns(&mut self, name: &str) -> Result<(), TopologyError> {
        // A namespace of this exact name can only be a leftover of an earlier process that
        // had our pid: ours are numbered afresh per process.
        if std::path::Path::new(NETNS_DIR).join(name).exists() {
            run(Command::new("ip").args(["netns", "del", name]))?;
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        self.namespaces.push(name.to_string());
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        sysctls(
            name,
            &[
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
            ],
        )?;
        Ok(())
    }

    /// The veth pair between `host` and the gateway, addresses and routes.
    fn link(&self, host: &Host) -> Result<(), TopologyError> {
        let gw = self.gateway.as_str();
        let ns = host.netns.as_str();
        run(Command::new("ip").args([
            "-n",
            gw,
            "link",
            "add",
            &host.gateway_iface,
            "type",
            "veth",
            "peer",
            "name",
            &host.iface,
            "netns",
            ns,
        ]))?;
        let v4 = |a: Ipv4Addr| format!("{a}/24");
        let v6 = |a: Ipv6Addr| format!("{a}/64");
        for (netns, iface, a4, a6) in [
            (
                gw,
                &host.gateway_iface,
                v4(host.gateway_v4),
                v6(host.gateway_v6),
            ),
            (ns, &host.iface, v4(host.v4), v6(host.v6)),
        ] {
            run(Command::new("ip").args(["-n", netns, "addr", "add", &a4, "dev", iface]))?;
            run(Command::new("ip")
                .args(["-n", netns, "-6", "addr", "add", &a6, "dev", iface, "nodad"]))?;
            run(Command::new("ip").args(["-n", netns, "link", "set", iface, "up"]))?;
        }
        // A veth leaves checksums to "hardware" (CHECKSUM_PARTIAL) by default; a frame that
        // XDP redirects loses that note and would arrive with a bad checksum. The hosts
        // compute their own, as a real NIC would before the wire.
        netns_run(ns, "ethtool", &["-K", &host.iface, "tx", "off"])?;
        run(Command::new("ip").args([
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            &host.gateway_v4.to_string(),
        ]))?;
        run(Command::new("ip").args([
            "-n",
            ns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &host.gateway_v6.to_string(),
        ]))?;
        Ok(())
    }

    /// Clients, then the server.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.clients.iter().chain(std::iter::once(&self.server))
    }

    /// The gateway's interfaces: one per client, then the one towards the server.
    pub fn gateway_ifaces(&self) -> Vec<String> {
        self.hosts().map(|h| h.gateway_iface.clone()).collect()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("topology teardown: {e}");
            }
        }
    }
}

/// Writes `net/...` sysctls of `netns` (paths under /proc/sys, which resolve per thread).
fn sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
    in_netns(netns, || {
        for (key, value) in settings {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value).map_err(|source| NetnsError::Netns {
                netns: netns.to_string(),
                what: format!("writing {value} to {path}"),
                source,
            })?;
        }
        Ok(())
    })?
}

/// Deletes namespaces (and so their veths) of topologies whose process no longer runs;
/// returns their names.
pub fn remove_stale() -> Result<Vec<String>, NetnsError> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Ok(Vec::new()); // no namespaces at all
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_TAG)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match run(Command::new("ip").args(["netns", "del", &name])) {
            Ok(_) => removed.push(name),
            // Another process cleaning up at the same time got there first.
            Err(_) if !entry.path().exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `n` in base 36 (digits and lower-case letters), to keep interface names short.
fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        // The largest pid (pid_max is at most 2^22) and a large instance counter.
        let short = format!("dp{}x{}", base36(1 << 22), base36(1295));
        assert!(format!("{short}g{}", MAX_CLIENTS - 1).len() <= MAX_IFACE_NAME);
        assert!(format!("{short}gs").len() <= MAX_IFACE_NAME);
    }
}
