//! The control socket's side of the daemon: one request line in, one response line out;
//! reloads, runtime edits, the kernel log level and detaches.

use std::sync::Arc;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    sync::Mutex,
};
use tracing::{error, info};

use super::{
    read_config, watch::FileDigest, ApplyError, Daemon, DaemonError, BUILT_IN, DEFAULT_POLICY,
};
use crate::{
    config::Policy,
    control::{Failure, Request, Response, MAX_REQUEST_BYTES, REQUEST_TIMEOUT},
    detach::{self, DetachError},
    edit,
    kernel_log::KernelLogLevel,
};

impl Daemon {
    /// Re-reads the config file (or the built-in policy) and applies it; a gateway of a
    /// fleet has neither (see [`Daemon::handle`]).
    pub fn reload(&mut self, why: &str) -> Response {
        if self.state.fleet.is_some() {
            return self.handle(Request::Reload);
        }
        let (text, origin) = match &self.cfg.config {
            Some(path) => match read_config(path) {
                Ok(t) => (t, path.display().to_string()),
                Err(e) => return self.reload_failed(e, why),
            },
            None => (DEFAULT_POLICY.to_string(), BUILT_IN.to_string()),
        };
        if self.cfg.config.is_some() {
            self.file_text = Some(FileDigest::of(&text));
        }
        let applied = self.apply_text(&text, &origin);
        // Freed before the state is saved, whose malloc_trim then gives the memory back.
        drop(text);
        match applied {
            Ok(generation) => {
                self.state.reloads_ok += 1;
                info!(generation, %origin, trigger = why, "reloaded");
                self.persist(format!("reloaded {origin}: generation {generation}"))
            }
            Err(e) => self.reload_failed(e, why),
        }
    }

    fn reload_failed(&mut self, e: ApplyError, why: &str) -> Response {
        let message = match &e {
            ApplyError::Rejected(m) | ApplyError::Failed(m) => m.clone(),
        };
        error!(
            trigger = why,
            "reload rejected, the policy in force stays: {message}"
        );
        self.record_failure(message);
        if let Err(err) = self.save_state() {
            error!("{err}");
        }
        e.response(self.state.generation)
    }

    /// Applies an edited policy text; with `save` writes it to the config file too.
    fn apply_edit(
        &mut self,
        edited: Result<(String, Policy), edit::EditError>,
        save: bool,
        what: String,
    ) -> Response {
        let (text, policy) = match edited {
            Ok(ok) => ok,
            Err(e) => return ApplyError::Rejected(e.to_string()).response(self.state.generation),
        };
        let save_path = match (save, &self.cfg.config) {
            (true, Some(path)) => Some(path.clone()),
            (true, None) => {
                return ApplyError::Rejected(
                    "--save needs a config file, and the daemon runs the built-in policy (start it with --config FILE)".into(),
                )
                .response(self.state.generation)
            }
            (false, _) => None,
        };
        let origin = format!(
            "{} (changed at runtime)",
            self.state
                .policy_origin
                .trim_end_matches(" (changed at runtime)")
        );
        let generation = match self.apply_policy(&text, &origin, &policy) {
            Ok(g) => g,
            Err(e) => return e.response(self.state.generation),
        };
        let mut message = format!("{what}: generation {generation}");
        if let Some(path) = save_path {
            let tmp = path.with_extension("dataplane-tmp");
            // A new file of our own: whatever sits at the temporary path (a FIFO would block
            // the write, a symlink would redirect it) is removed first, and O_EXCL refuses
            // anything that appears meanwhile.
            let write = || {
                use std::io::Write;
                match std::fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)?
                    .write_all(text.as_bytes())?;
                std::fs::rename(&tmp, &path)
            };
            match write() {
                Ok(()) => {
                    // Our own write must not count as an outside change.
                    self.file_text = Some(FileDigest::of(&text));
                    message += &format!(", saved to {}", path.display());
                }
                Err(e) => {
                    return ApplyError::Failed(format!(
                        "{message} is in force, but saving {} failed: {e}",
                        path.display()
                    ))
                    .response(generation)
                }
            }
        }
        info!("{message}");
        self.persist(message)
    }

    /// Handles one control request.
    pub fn handle(&mut self, request: Request) -> Response {
        // A gateway of a fleet applies the fleet's policy only: a local change would leave it
        // apart from the others until the next revision.
        if let Some(fleet) = &self.state.fleet {
            if matches!(
                request,
                Request::Reload
                    | Request::SetClass { .. }
                    | Request::AddRule { .. }
                    | Request::DeleteRule { .. }
            ) {
                return ApplyError::Rejected(format!(
                    "this gateway ({}) takes its policy from etcd ({}/policy): change it there \
                     (`dataplane fleet push`)",
                    fleet.gateway, fleet.prefix
                ))
                .response(self.state.generation);
            }
        }
        match request {
            Request::Reload => self.reload("dataplane reload"),
            Request::SetClass { change, save } => {
                let edited = edit::set_class(&self.source_text, &change);
                self.apply_edit(edited, save, format!("class {} changed", change.name))
            }
            Request::AddRule {
                rule,
                position,
                save,
            } => {
                let edited = edit::add_rule(&self.source_text, &rule, position);
                self.apply_edit(edited, save, format!("rule for class {} added", rule.class))
            }
            Request::DeleteRule { index, save } => {
                let edited = edit::delete_rule(&self.source_text, index);
                self.apply_edit(edited, save, format!("rule {index} deleted"))
            }
            Request::KernelLogLevel { level } => match level.parse::<KernelLogLevel>() {
                Ok(level) => match self.dp.set_kernel_log_level(level) {
                    Ok(()) => {
                        self.state.kernel_log_level = level.label().to_string();
                        self.persist(format!("kernel log level {}", level.label()))
                    }
                    Err(e) => ApplyError::Failed(e.to_string()).response(self.state.generation),
                },
                Err(e) => {
                    ApplyError::Rejected(format!("{level:?}: {e}")).response(self.state.generation)
                }
            },
            Request::Detach { ifaces } if ifaces.is_empty() => {
                match detach::remove_all(&self.cfg.layout, &self.cfg.run) {
                    Ok(_) => {
                        self.exit = true;
                        info!("detached from every interface and removed the pins; exiting");
                        self.ok("detached; dataplane removed".into())
                    }
                    Err(e) => ApplyError::Failed(e.to_string()).response(self.state.generation),
                }
            }
            Request::Detach { ifaces } => {
                for iface in &ifaces {
                    match detach::detach_link(&self.cfg.layout, Some(&mut self.state), iface) {
                        Ok(()) => {
                            self.wanted.remove(iface);
                            info!(%iface, "detached");
                        }
                        Err(e @ DetachError::NotAttached(_)) => {
                            return ApplyError::Rejected(e.to_string())
                                .response(self.state.generation)
                        }
                        Err(e @ DetachError::Pins(_)) => {
                            return ApplyError::Failed(e.to_string())
                                .response(self.state.generation)
                        }
                    }
                }
                self.persist(format!("detached from {}", ifaces.join(", ")))
            }
        }
    }
}

/// Answers one connection: one request line, one response line. Only root may ask.
pub(super) async fn serve(
    stream: UnixStream,
    daemon: Arc<Mutex<Daemon>>,
    exit: tokio::sync::mpsc::Sender<()>,
) -> Result<(), DaemonError> {
    let cred = stream
        .peer_cred()
        .map_err(DaemonError::io("reading the peer's credentials"))?;
    let (read, mut write) = stream.into_split();
    let refuse = |message: String| Response {
        message,
        failure: Some(Failure::Rejected),
        generation: 0,
    };
    // At most one line of MAX_REQUEST_BYTES, within REQUEST_TIMEOUT: a client can hold
    // neither the daemon's memory nor a connection for long.
    let mut bytes = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut bytes)).await;
    let line = match read {
        Ok(Ok(0)) => return Ok(()), // a liveness probe: connected and closed without asking
        Ok(Ok(_)) if bytes.len() > MAX_REQUEST_BYTES => Err(refuse(format!(
            "request too large: over {MAX_REQUEST_BYTES} bytes"
        ))),
        Ok(Ok(_)) => {
            String::from_utf8(bytes).map_err(|_| refuse("malformed request: not UTF-8".to_string()))
        }
        Ok(Err(e)) => return Err(DaemonError::io("reading the request")(e)),
        Err(_) => Err(refuse(format!(
            "no request line within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    };
    let response = if cred.uid() != 0 {
        Response {
            message: "only root may control the dataplane".into(),
            failure: Some(Failure::Rejected),
            generation: 0,
        }
    } else {
        match line.map(|l| serde_json::from_str::<Request>(&l)) {
            Err(refusal) => refusal,
            Ok(Ok(request)) => {
                let mut d = daemon.lock().await;
                let r = d.handle(request);
                if d.exit {
                    let _ = exit.try_send(());
                }
                r
            }
            Ok(Err(e)) => refuse(format!("malformed request: {e}")),
        }
    };
    let mut text = serde_json::to_string(&response)
        .map_err(std::io::Error::other)
        .map_err(DaemonError::io("encoding the response"))?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(DaemonError::io("answering"))?;
    Ok(())
}
