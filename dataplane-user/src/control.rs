//! The daemon's control protocol: one JSON request line, one JSON response line, over a unix
//! socket only root can open. Requests are handled one at a time, so concurrent changes are
//! serialized: each lands whole or fails whole.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{ClassText, RuleText};

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Re-read the config file and apply it.
    Reload,
    /// Change a class.
    SetClass {
        /// The change.
        change: ClassText,
        /// Write the changed policy back to the config file.
        save: bool,
    },
    /// Add a rule.
    AddRule {
        /// The rule.
        rule: RuleText,
        /// Insert before this rule (0-based); append when absent.
        position: Option<usize>,
        /// Write the changed policy back to the config file.
        save: bool,
    },
    /// Delete a rule by index.
    DeleteRule {
        /// The rule's index.
        index: usize,
        /// Write the changed policy back to the config file.
        save: bool,
    },
    /// Set the kernel log level.
    KernelLogLevel {
        /// "off", "error", "warn", "info", "debug" or "trace".
        level: String,
    },
    /// Detach from these interfaces, or remove the whole dataplane and exit when empty.
    Detach {
        /// Interfaces; empty = everything.
        ifaces: Vec<String>,
    },
}

/// Why a request failed; scripts get a distinct exit code for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The change or config is invalid; nothing changed.
    Rejected,
    /// The change was valid but the kernel or filesystem refused it; nothing changed.
    Failed,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// What happened, or the error.
    pub message: String,
    /// `None` on success.
    pub failure: Option<Failure>,
    /// Generation in force after the request.
    pub generation: u32,
}

/// Longest request line the daemon reads; every request is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// How long the daemon waits for a client's request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client waits for the daemon (a 16k-rule compile and apply takes well under it).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens.
    #[error("no dataplane daemon is running (cannot connect to {path}: {source}); start one with `dataplane run`")]
    NotRunning {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The socket is there but this user may not open it (it is root's).
    #[error("permission denied on {path}: only root may control the dataplane (run with sudo)")]
    PermissionDenied {
        /// Socket path.
        path: String,
    },
    /// The conversation failed.
    #[error("talking to the daemon at {path}: {reason}")]
    Protocol {
        /// Socket path.
        path: String,
        /// Cause.
        reason: String,
    },
}

/// Sends `request` to the daemon listening on `socket` and waits for its response.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let protocol = |reason: String| ClientError::Protocol {
        path: path.clone(),
        reason,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::PermissionDenied { path: path.clone() }
        } else {
            ClientError::NotRunning {
                path: path.clone(),
                source,
            }
        }
    })?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(|e| protocol(e.to_string()))?;
    let mut line = serde_json::to_string(request).map_err(|e| protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| protocol(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => protocol(format!(
                "no answer within {} s (the daemon may be busy with a large policy; the \
                 request may still take effect: see `dataplane status`)",
                CLIENT_TIMEOUT.as_secs()
            )),
            _ => protocol(e.to_string()),
        })?;
    serde_json::from_str(&answer).map_err(|e| protocol(format!("bad response {answer:?}: {e}")))
}

/// Whether a daemon answers on `socket`.
pub fn is_running(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        let r = Request::DeleteRule {
            index: 3,
            save: true,
        };
        let text = serde_json::to_string(&r).expect("serialize");
        assert_eq!(text, r#"{"op":"delete_rule","index":3,"save":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }
}
