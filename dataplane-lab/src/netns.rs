//! Network namespaces: the plumbing of `dataplane_netns` (re-exported), and a namespace
//! joined to the root namespace by a veth pair, for tests that run the daemon (which attaches
//! in the root namespace, where the pins live) against real traffic sent from inside the
//! namespace. Names are unique per process and test; everything is
//! removed on drop, and leftovers of crashed runs (dead pids) are removed first.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

pub use dataplane_netns::{in_netns, netns_command, netns_run};

/// Prefix of every name this module creates: `dn<pid>x<n>`.
pub const PREFIX: &str = "dn";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 `ip` runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip` where failure is expected and harmless (removing what may not exist).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and root-side veths left by test processes that no longer exist.
pub fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !pid_alive(pid) {
                ip_quiet(&["netns", "del", name]);
                ip_quiet(&["link", "del", &format!("{name}a")]);
            }
        }
    }
}

/// A namespace `ns` with a veth pair: `root_if` (root namespace, `root_addr`/24) and its peer
/// inside `ns` (`ns_addr`/24).
pub struct VethNs {
    /// Namespace name.
    pub ns: String,
    /// The root-namespace end (where the dataplane attaches).
    pub root_if: String,
    /// Address of the root end.
    pub root_addr: Ipv4Addr,
    /// Address of the namespace end.
    pub ns_addr: Ipv4Addr,
}

impl VethNs {
    /// Creates a fresh namespace and pair with a unique /24 from 198.18.0.0/15.
    pub fn create() -> VethNs {
        crate::kernel::require_root();
        remove_leftovers();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = format!("{PREFIX}{pid}x{n}");
        let root_if = format!("{ns}a");
        let peer = format!("{ns}b");
        assert!(root_if.len() <= 15, "interface name {root_if} too long");
        // A /24 per (pid, n): tests in one process never share one.
        let subnet = ((pid.wrapping_mul(7) + n) % 250) as u8 + 2;
        let root_addr = Ipv4Addr::new(198, 19, subnet, 1);
        let ns_addr = Ipv4Addr::new(198, 19, subnet, 2);
        ip_quiet(&["netns", "del", &ns]);
        ip_quiet(&["link", "del", &root_if]);
        ip(&["netns", "add", &ns]);
        let guard = VethNs {
            ns: ns.clone(),
            root_if: root_if.clone(),
            root_addr,
            ns_addr,
        };
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &peer, "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{root_addr}/24"), "dev", &root_if]);
        ip(&["link", "set", &root_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_addr}/24"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        guard
    }

    /// Deletes the pair (the namespace end goes with the root end), as an operator
    /// removing the interface would.
    pub fn delete_pair(&self) {
        ip(&["link", "del", &self.root_if]);
    }

    /// Creates the pair again under the same names and addresses: a new device (a new
    /// ifindex) with the old name.
    pub fn create_pair(&self) {
        let peer = format!("{}b", self.ns);
        ip(&[
            "link",
            "add",
            &self.root_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.root_addr),
            "dev",
            &self.root_if,
        ]);
        ip(&["link", "set", &self.root_if, "up"]);
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{}/24", self.ns_addr),
            "dev",
            &peer,
        ]);
        ip(&["-n", &self.ns, "link", "set", &peer, "up"]);
    }

    /// Runs `f` on a thread that has joined the namespace (sockets it opens live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread")
    }

    /// Spawns `f` on a thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let ns = self.ns.clone();
        std::thread::spawn(move || in_netns(&ns, f).expect("entering the test namespace"))
    }

    /// Whether an XDP program is attached to the root end.
    pub fn xdp_attached(&self) -> bool {
        let out = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.root_if])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("prog/xdp") || text.contains(" xdp")
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.root_if]);
        ip_quiet(&["netns", "del", &self.ns]);
    }
}
