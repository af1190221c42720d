//! Network namespaces and veth pairs the benchmark creates (unique names, removed on drop),
//! and running code inside one.

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context, Result};
use dataplane_lab::netns::in_netns;

/// Runs `ip`/`tc`/... and fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    run_with_input(program, args, None)
}

/// As [`run`], with `input` on stdin.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {program} (run `cargo xtask setup`)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// A new namespace named after `role`, this process and a counter, with loopback up.
    pub fn new(role: &str) -> Result<Netns> {
        let name = format!(
            "dpbench-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // A crashed run with a recycled pid may have left this name behind.
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec <ns> program args` (with `input` on stdin).
    pub fn exec(&self, program: &str, args: &[&str], input: Option<&str>) -> Result<()> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run_with_input("ip", &all, input)
    }

    /// stdout of `ip netns exec <ns> program args`.
    pub fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("cannot start ip netns exec {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {} in {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        in_netns(&self.name, f)?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), both up with the given MACs and one
/// queue per CPU of this machine: a veth hands a redirected frame to the peer's queue of the
/// sending CPU, so CPUs sending at once each get their own queue and NAPI, as a multi-queue
/// NIC gives each core its own.
pub fn veth(
    (ns_a, a, mac_a): (&Netns, &str, &str),
    (ns_b, b, mac_b): (&Netns, &str, &str),
) -> Result<()> {
    let queues = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .to_string();
    let q = queues.as_str();
    run(
        "ip",
        &[
            "link",
            "add",
            a,
            "netns",
            &ns_a.name,
            "address",
            mac_a,
            "numtxqueues",
            q,
            "numrxqueues",
            q,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            &ns_b.name,
            "address",
            mac_b,
            "numtxqueues",
            q,
            "numrxqueues",
            q,
        ],
    )?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}
