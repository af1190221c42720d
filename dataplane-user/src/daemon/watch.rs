//! What the daemon checks every watch interval (the interfaces it keeps attached, the
//! egresses forwarded frames leave by, the state file it owes), and how it follows its config
//! file: by inotify, applying a file only once it is complete.

use std::{
    collections::{BTreeMap, VecDeque},
    ffi::{CString, OsString},
    io::ErrorKind,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    time::Duration,
};

use tokio::io::unix::AsyncFd;
use tracing::{debug, error, info, warn};

use super::Daemon;
use crate::config::read_policy_text;

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

/// Most symlinks followed from the config path (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;
/// How often a config file whose directory is gone is looked for again.
const REWATCH: Duration = Duration::from_secs(1);

/// Follows the config file through inotify and says when a complete new version may be in
/// place: when a writer closes the file (IN_CLOSE_WRITE), or when an entry on the way to it is
/// renamed in (IN_MOVED_TO: an editor's save, `mv`, the kubelet's swap of a ConfigMap's
/// `..data`) or created as a symlink (IN_CREATE: `ln -sfn`; a symlink is whole once it
/// exists). A regular file being created or written is not looked at until it is closed, so a
/// writer that pauses half-way is never applied half-written, however long it pauses.
///
/// Raw inotify through libc (already a dependency): one descriptor, three calls, and the
/// event records read below; a crate would add dependencies for no less code.
pub(super) struct ConfigWatch {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
    /// The directory entries resolving the path goes through, the file's own last.
    chain: Vec<(PathBuf, OsString)>,
    /// Watched directories by watch descriptor.
    dirs: BTreeMap<i32, PathBuf>,
}

/// What a watched directory reports: entries renamed in or out, created, deleted, closed
/// after writing; the directory itself going away.
const DIR_EVENTS: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

impl ConfigWatch {
    /// Watches `path` (the config file as given, symlinks and all).
    pub(super) fn new(path: &Path) -> std::io::Result<ConfigWatch> {
        // SAFETY: inotify_init1 takes flags only and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own alone; the OwnedFd keeps it
        // open, unchanged, for as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(OwnedFd::from_raw_fd(raw)) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let path = std::path::absolute(path)?;
        let mut watch = ConfigWatch {
            fd,
            path,
            chain: Vec::new(),
            dirs: BTreeMap::new(),
        };
        watch.rewatch();
        Ok(watch)
    }

    /// Waits until the config file may have been replaced or finished.
    pub(super) async fn changed(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = if self.dirs.is_empty() {
                // Nothing to watch (the directory is gone): look again now and then.
                tokio::time::timeout(REWATCH, self.fd.readable()).await.ok()
            } else {
                Some(self.fd.readable().await)
            };
            let Some(ready) = read else {
                self.rewatch();
                continue;
            };
            let mut guard = match ready {
                Ok(guard) => guard,
                Err(e) => {
                    error!("watching the config file failed ({e}); `dataplane reload` still applies it");
                    return std::future::pending().await;
                }
            };
            let n = match guard.try_io(|fd| {
                // SAFETY: reads at most buf.len() bytes into buf from our inotify descriptor.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
            }) {
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    error!("reading the config file's events failed ({e}); `dataplane reload` still applies it");
                    return std::future::pending().await;
                }
                Err(_would_block) => continue,
            };
            let relevant = self.relevant(&buf[..n]);
            // What was renamed, created or deleted may have changed the way to the file.
            self.rewatch();
            if relevant {
                return;
            }
        }
    }

    /// Whether the events in `records` say the file may be complete and new.
    fn relevant(&self, mut records: &[u8]) -> bool {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        let mut relevant = false;
        while records.len() >= HEADER {
            // SAFETY: the kernel writes whole records, each a header followed by `len` bytes
            // of name; read_unaligned copies the header out of the byte buffer.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(records.as_ptr().cast()) };
            let end = (HEADER + event.len as usize).min(records.len());
            let name = &records[HEADER..end];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            records = &records[end..];
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were lost: one of them may have been the end of a write.
                warn!("config file events overflowed; reading the file again");
                relevant = true;
                continue;
            }
            let Some(dir) = self.dirs.get(&event.wd) else {
                continue;
            };
            let Some(position) = self
                .chain
                .iter()
                .position(|(d, n)| d == dir && n.as_bytes() == name)
            else {
                continue;
            };
            let is_file = position + 1 == self.chain.len();
            let entry = dir.join(std::ffi::OsStr::from_bytes(name));
            let is_symlink =
                || std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink());
            if event.mask & libc::IN_MOVED_TO != 0
                || event.mask & libc::IN_CLOSE_WRITE != 0 && is_file
                || event.mask & libc::IN_CREATE != 0 && is_symlink()
            {
                debug!(entry = %entry.display(), mask = event.mask, "config file event");
                relevant = true;
            }
        }
        relevant
    }

    /// Resolves the path again and watches the directories of the entries on the way: the
    /// new ones first, then the old ones no longer needed are dropped, so no event is missed.
    fn rewatch(&mut self) {
        self.chain = resolve(&self.path);
        let mut dirs = BTreeMap::new();
        for dir in self.chain.iter().map(|(d, _)| d) {
            if dirs.values().any(|d| d == dir) {
                continue;
            }
            let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: a valid descriptor and a NUL-terminated path.
            let wd = unsafe {
                libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), c.as_ptr(), DIR_EVENTS)
            };
            if wd >= 0 {
                dirs.insert(wd, dir.clone());
            } else {
                debug!(dir = %dir.display(), "cannot watch: {}", std::io::Error::last_os_error());
            }
        }
        for old in self.dirs.keys().filter(|wd| !dirs.contains_key(wd)) {
            // SAFETY: removes a watch of our own descriptor (one already gone fails harmlessly).
            unsafe { libc::inotify_rm_watch(self.fd.get_ref().as_raw_fd(), *old) };
        }
        if dirs.is_empty() && !self.dirs.is_empty() {
            warn!(path = %self.path.display(), "the config file's directory is gone: it is looked for again every second; `dataplane reload` applies a new file");
        }
        self.dirs = dirs;
    }
}

/// The directory entries resolving `path` goes through that a replacement can swap: the
/// file's own name and every name a symlink on the way leads through (the directories above
/// the path's own are taken as they are). The file's entry comes last; resolving stops at an
/// entry that does not exist.
fn resolve(path: &Path) -> Vec<(PathBuf, OsString)> {
    let mut chain = Vec::new();
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return chain;
    };
    let Ok(mut dir) = std::fs::canonicalize(parent) else {
        return chain;
    };
    let mut pending: VecDeque<PathBuf> = VecDeque::from([PathBuf::from(name)]);
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step.components().next() {
            Some(Component::RootDir) => {
                dir = PathBuf::from("/");
                continue;
            }
            Some(Component::ParentDir) => {
                dir.pop();
                continue;
            }
            Some(Component::Normal(name)) => name.to_os_string(),
            _ => continue,
        };
        let entry = dir.join(&name);
        chain.push((dir.clone(), name));
        match std::fs::symlink_metadata(&entry) {
            Ok(m) if m.file_type().is_symlink() && hops < MAX_SYMLINKS => {
                hops += 1;
                let Ok(target) = std::fs::read_link(&entry) else {
                    break;
                };
                for component in target.components().rev() {
                    pending.push_front(component.as_os_str().into());
                }
            }
            Ok(_) if !pending.is_empty() => dir = entry,
            _ => break,
        }
    }
    chain
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

    /// Reloads when the config file's content changed since it was last read or written
    /// (called when [`ConfigWatch`] says a complete new version may be in place).
    pub(super) fn check_config_file(&mut self) {
        let Some(path) = self.cfg.config.clone() else {
            return;
        };
        let current = match read_policy_text(&path) {
            Ok(t) => FileDigest::of(&t),
            // Editors replace files by rename: a moment without the file is not a change.
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            // Not a regular file, unreadable: refused and reported as a failed reload.
            Err(_) => {
                self.reload("config file changed");
                return;
            }
        };
        if Some(&current) != self.file_text.as_ref() {
            self.reload("config file changed");
        }
    }
}
