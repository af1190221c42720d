//! Network namespaces as `ip netns` names them: entering one (the only `setns` of the
//! workspace), running a closure on a thread inside one, running a command inside one; a routed
//! client → gateway → server topology of them ([`topology`]); and traffic between them
//! ([`traffic`]).
//!
//! This crate needs nothing of the product library, so the `dataplane` binary can depend on
//! it (the daemon's `run --netns` and the demo) without a package cycle; the lab
//! (`dataplane-lab`), which does depend on the product, builds on it and re-exports it.

pub mod topology;
pub mod traffic;

use std::{os::fd::AsRawFd, path::Path, process::Command};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// What can go wrong in or around a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started.
    #[error("`{command}` could not start: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// Entering a namespace or writing one of its sysctls failed.
    #[error("network namespace {netns}: {what}: {source}")]
    Netns {
        /// The namespace.
        netns: String,
        /// The step that failed.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A thread running inside a namespace panicked.
    #[error("the thread inside network namespace {0} panicked")]
    ThreadPanicked(String),
}

/// Moves the calling thread (and the threads it starts afterwards) into network namespace
/// `netns`. Mounts are untouched (unlike under `ip netns exec`), so bpffs pins stay the host's.
pub fn enter(netns: &str) -> Result<(), NetnsError> {
    let err = |what: String, source| NetnsError::Netns {
        netns: netns.to_string(),
        what,
        source,
    };
    let path = Path::new(NETNS_DIR).join(netns);
    let handle =
        std::fs::File::open(&path).map_err(|e| err(format!("opening {}", path.display()), e))?;
    // SAFETY: setns on an open namespace fd; it changes only this thread's network namespace.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err("setns".into(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a new thread that entered network namespace `netns`, and returns its result.
/// Sockets created there stay in that namespace after the thread ends; XDP attach, interface
/// names and `/proc/thread-self/net` resolve there while it runs.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(netns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::ThreadPanicked(netns.to_string()))?
    })
}

/// `program args...` inside network namespace `netns` (`ip netns exec`), ready to run or
/// spawn. Note that `ip netns exec` mounts a /sys of the namespace for the command.
pub fn netns_command(netns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]);
    cmd
}

/// Runs `program args...` in `netns` and returns its stdout; an error names the command and
/// carries its stderr.
pub fn netns_run(netns: &str, program: &str, args: &[&str]) -> Result<String, NetnsError> {
    run(netns_command(netns, program).args(args))
}

/// Runs a command to completion; its stdout, or an error with the command line and stderr.
pub fn run(cmd: &mut Command) -> Result<String, NetnsError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| NetnsError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
