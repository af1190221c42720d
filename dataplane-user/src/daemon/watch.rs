//! What the daemon checks every watch interval: the config file, the interfaces it keeps
//! attached, the egresses forwarded frames leave by, and the state file it owes.

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use super::Daemon;
use crate::config::read_policy_text;

/// How long a changed config file must stay the same before the watcher applies it.
const FILE_SETTLE: Duration = Duration::from_secs(1);

/// What the file watcher remembers of a config file's text: enough to notice a change, not
/// the text (a rejected file of many MiB must not stay in memory).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct FileDigest {
    len: usize,
    hash: u64,
}

impl FileDigest {
    pub(super) fn of(text: &str) -> FileDigest {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        FileDigest {
            len: text.len(),
            hash: h.finish(),
        }
    }
}

/// What the file watcher checks before reading a config file: size, modification and change
/// times (nanoseconds) and inode. Any write or replacement moves at least one of them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct FileStamp {
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: u64,
}

impl FileStamp {
    pub(super) fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
        }
    }
}

impl Daemon {
    /// Warns about each interface forwarded packets may leave by that cannot take
    /// redirected XDP frames (when it becomes so), and says when one can again: until then
    /// everything forwarded there is lost.
    pub fn check_egresses(&mut self) {
        let (Some(features), Some(policy)) = (&self.xdp_features, &self.policy) else {
            return;
        };
        if !policy.interfaces.iter().any(|i| i.forward) {
            self.unready_egresses.clear();
            return;
        }
        let mut unready = std::collections::BTreeSet::new();
        for iface in &policy.interfaces {
            let Some(index) = crate::dataplane::ifindex(&iface.name) else {
                continue;
            };
            match features.takes_redirects(index) {
                Ok(true) => {
                    if self.unready_egresses.contains(&iface.name) {
                        info!(iface = %iface.name, "now takes redirected XDP frames");
                    }
                }
                Ok(false) => {
                    if !self.unready_egresses.contains(&iface.name) {
                        warn!(
                            iface = %iface.name,
                            "cannot take redirected XDP frames (its XDP features lack \
                             ndo-xmit): packets forwarded out of it are lost; a veth needs \
                             an XDP program or GRO on its peer"
                        );
                    }
                    unready.insert(iface.name.clone());
                }
                Err(e) => warn!(iface = %iface.name, "reading its XDP features: {e}"),
            }
        }
        self.unready_egresses = unready;
    }

    /// Follows the wanted interfaces: one whose device is gone is reported detached (its link
    /// pin removed; the kernel dropped the attachment with the device); one that exists
    /// under a new ifindex (deleted and created again) or has come back is attached to the
    /// new device and registered under its slot, so its traffic is policed and counted again.
    pub fn follow_interfaces(&mut self) {
        let mut changed = false;
        for iface in self.wanted.clone() {
            let index = crate::dataplane::ifindex(&iface);
            let recorded = self.state.ifindexes.get(&iface).copied();
            let attached = self.state.attached.contains_key(&iface);
            match index {
                None if attached => {
                    warn!(%iface, "interface gone: reported detached; attached again if it comes back");
                    self.forget_device(&iface, recorded);
                    changed = true;
                }
                None => {}
                // The device we attached to, still carrying our program.
                Some(now) if attached && recorded == Some(now) && self.our_program_on(now) => {}
                // Adopted from a state file that did not record it: note it.
                Some(now) if attached && recorded.is_none() && self.our_program_on(now) => {
                    self.state.ifindexes.insert(iface.clone(), now);
                    changed = true;
                }
                Some(now) => {
                    if attached && recorded.is_none_or(|r| r == now) {
                        warn!(%iface, "our XDP program is not on the device (detached from outside?): attaching again");
                        self.forget_device(&iface, recorded);
                    } else if attached {
                        warn!(%iface, old = ?recorded, new = now, "interface re-created: attaching to the new device");
                        self.forget_device(&iface, recorded);
                    }
                    if let Err(e) = self.attach(&iface) {
                        error!(%iface, "attaching again: {e:#}");
                        continue;
                    }
                    let slot = self.state.ids.ifaces.get(&iface).copied();
                    if let (Some(policy), Some(slot)) = (self.policy.clone(), slot) {
                        if let Err(e) = self.dp.register_slots(&policy, &[(iface.clone(), slot)]) {
                            error!(%iface, "registering again: {e}");
                        }
                    }
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = self.save_state() {
                self.unsaved = Some(format!("{e:#}"));
            }
        }
    }

    /// Whether the device `ifindex` carries this dataplane's program. When the kernel cannot
    /// be asked, the pins are trusted.
    fn our_program_on(&self, ifindex: u32) -> bool {
        match (
            crate::netdev::attached_xdp_program(ifindex),
            self.dp.program_id(),
        ) {
            (Ok(on), Ok(ours)) => on == Some(ours),
            (Err(e), _) => {
                debug!(ifindex, "reading the device's XDP program: {e}");
                true
            }
            (_, Err(e)) => {
                debug!("reading our program's id: {e}");
                true
            }
        }
    }

    /// Drops what belonged to `iface`'s old device: its link pin and its registration.
    fn forget_device(&mut self, iface: &str, ifindex: Option<u32>) {
        if let Err(e) = self.cfg.layout.unpin_link(iface) {
            warn!(%iface, "removing the old link pin: {e}");
        }
        if let Some(old) = ifindex {
            if let Err(e) = self.dp.unregister_ifindex(old) {
                warn!(%iface, "unregistering the old device: {e}");
            }
        }
        self.state.attached.remove(iface);
        self.state.ifindexes.remove(iface);
    }

    /// Warns when frames forwarded out of an interface were lost since the last look: the
    /// egress cannot take redirected frames (a veth whose peer has neither an XDP program nor
    /// GRO on) or drops them.
    pub fn warn_redirect_failures(&mut self) {
        for (name, slot) in &self.state.ids.ifaces {
            let Ok(counters) = self.dp.iface_counters(*slot) else {
                continue;
            };
            let now = counters.redirect_failures;
            // The first look only takes note (an adopted dataplane brings its past).
            let before = self.redirect_failures.insert(*slot, now).unwrap_or(now);
            if now > before {
                warn!(
                    iface = %name,
                    frames = now - before,
                    "frames forwarded out of this interface were lost: it cannot take \
                     redirected XDP frames (a veth needs an XDP program or GRO on its peer) \
                     or dropped them; see `dataplane stats`"
                );
            }
        }
    }

    /// Writes the state file again after a failed write (see [`Daemon::persist`]).
    pub fn retry_state_save(&mut self) {
        if self.unsaved.is_none() {
            return;
        }
        match self.save_state() {
            Ok(()) => {
                info!("state file written again: it describes the policy in force");
                self.unsaved = None;
            }
            Err(e) => self.unsaved = Some(format!("{e:#}")),
        }
    }

    /// Reloads when the config file's content changed since it was last read or written.
    pub(super) fn check_config_file(&mut self) {
        let Some(path) = self.cfg.config.clone() else {
            return;
        };
        // Unchanged metadata, nothing waiting to settle: no need to read the file (it may be
        // many MiB, and this runs every watch interval).
        let stamp = std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
        if self.pending_file.is_none() && stamp.is_some() && stamp == self.file_stamp {
            return;
        }
        self.file_stamp = stamp;
        let current = match read_policy_text(&path) {
            Ok(t) => FileDigest::of(&t),
            // Editors replace files by rename: a moment without the file is not a change.
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            // Unreadable now: nothing to compare; `dataplane reload` reports why.
            Err(_) => return,
        };
        if Some(&current) == self.file_text.as_ref() {
            self.pending_file = None;
            return;
        }
        // Applied only once the new content has stayed the same for FILE_SETTLE: a file
        // written in place in several parts is never applied half-written.
        match &self.pending_file {
            Some((seen, since)) if *seen == current => {
                if since.elapsed() >= FILE_SETTLE {
                    self.pending_file = None;
                    self.reload("config file changed");
                }
            }
            _ => self.pending_file = Some((current, Instant::now())),
        }
    }
}
