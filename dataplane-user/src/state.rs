//! What the daemon knows beyond the pins, kept in the run directory (default /run/dataplane,
//! tmpfs, gone at reboot together with the pins): the policy text in force, the stable ids,
//! how each interface is attached, reload counts. A restarted daemon and the read-only
//! commands read it; it is replaced atomically on every change.
//!
//! ```text
//! /run/dataplane/
//!   state.json       this file (root-only)
//!   control.sock     the daemon's control socket (root-only)
//! ```

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::ids::Ids;

/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/dataplane";
/// State file name in the run directory.
const STATE_FILE: &str = "state.json";
/// Control socket name in the run directory.
const SOCKET_FILE: &str = "control.sock";

/// How an interface is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver XDP.
    Native,
    /// Generic (skb) XDP: slower, used only when asked or when native failed under `auto`.
    Generic,
}

impl AttachMode {
    /// The label used in output and metrics.
    pub fn label(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// The daemon's persistent state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Policy text in force, without comments (see [`crate::config::without_comments`]).
    pub policy_text: String,
    /// Where it came from: a file path or "built-in".
    pub policy_origin: String,
    /// Generation in force.
    pub generation: u32,
    /// Stable class ids and interface slots.
    pub ids: Ids,
    /// Attached interfaces and their modes.
    pub attached: BTreeMap<String, AttachMode>,
    /// Ifindex of each attached interface, as the daemon saw it when it attached (in its
    /// network namespace, which may not be the reader's).
    #[serde(default)]
    pub ifindexes: BTreeMap<String, u32>,
    /// Pid of the daemon that wrote this.
    pub daemon_pid: u32,
    /// When that daemon started (seconds since the Unix epoch).
    pub daemon_started: u64,
    /// Successful reloads since the dataplane was first loaded.
    pub reloads_ok: u64,
    /// Rejected reloads since the dataplane was first loaded.
    pub reloads_error: u64,
    /// The last rejected reload's error.
    pub last_error: Option<String>,
    /// Kernel log level ("off", "error", ... "trace").
    pub kernel_log_level: String,
    /// Where the running daemon serves metrics.
    pub metrics_addr: Option<String>,
    /// The fleet the daemon takes its policy from (`run --etcd`), and how it stands with it.
    #[serde(default)]
    pub fleet: Option<FleetState>,
    /// What verifying the XDP programs cost when this dataplane was loaded.
    #[serde(default)]
    pub verified: Vec<crate::kernel::Verified>,
    /// The release that loaded (or upgraded to) the running dataplane; empty when a release
    /// before this field pinned it.
    #[serde(default)]
    pub release: String,
    /// The digest of the eBPF object it loaded (`dataplane::object_digest`).
    #[serde(default)]
    pub object: String,
}

/// A daemon's standing with its fleet (see [`crate::fleet`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// This gateway's name in the fleet.
    pub gateway: String,
    /// The etcd endpoints.
    pub endpoints: Vec<String>,
    /// The fleet's key prefix.
    pub prefix: String,
    /// Whether etcd answers.
    pub connected: bool,
    /// Since when (seconds since the Unix epoch) it has (or has not).
    pub since: u64,
    /// The etcd revision of the policy in force (0 while none from etcd is).
    pub revision: i64,
    /// The newest revision refused, and why.
    pub rejected: Option<crate::fleet::Rejection>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("reading {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// The file is not a state file (or one of another release).
    #[error("{} is not a dataplane state file: {cause}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: serde_json::Error,
    },
    /// The state could not be encoded.
    #[error("encoding the state: {0}")]
    Encode(serde_json::Error),
    /// The file could not be written.
    #[error("writing {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
}

/// Paths in the run directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The run directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_FILE)
    }

    /// Creates the directory, readable by root only.
    pub fn create(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }

    /// Reads the state; `None` when there is none.
    pub fn read(&self) -> Result<Option<State>, StateError> {
        let path = self.state_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|cause| StateError::Corrupt { path, cause }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(StateError::Read { path, cause }),
        }
    }

    /// Replaces the state atomically (write a temporary file, then rename).
    pub fn write(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_file();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(state).map_err(StateError::Encode)?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|cause| StateError::Write { path, cause })
    }

    /// Removes the state file and socket (after a detach).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(self.state_file());
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("dp-state-{}", std::process::id()));
        let run = RunDir::new(&dir);
        run.create().expect("create");
        assert!(run.read().expect("read").is_none());
        let mut state = State {
            policy_text: "[[class]]\nname = \"default\"\n".into(),
            generation: 4,
            ..State::default()
        };
        state.attached.insert("eth0".into(), AttachMode::Generic);
        state.ids.classes.insert("default".into(), 0);
        run.write(&state).expect("write");
        assert_eq!(run.read().expect("read"), Some(state));
        std::fs::write(run.state_file(), "{").expect("corrupt");
        let err = run.read().expect_err("corrupt state").to_string();
        assert!(err.contains("not a dataplane state file"), "{err}");
        run.clear();
        assert!(!dir.exists());
    }
}
