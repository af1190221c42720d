//! The bpffs layout a running dataplane lives in, so it outlives the daemon that loaded it.
//!
//! ```text
//! /sys/fs/bpf/dataplane/          pin root (--pin-root), on a bpf filesystem
//!   v3/                           layout version: a binary only adopts its own version
//!     maps/<MAP_NAME>             every map of the object (ACTIVE_SLOT, CLASS_COUNTERS, ...)
//!     programs/dataplane          the XDP pipeline
//!     programs/xdp_pass           the pass-everything program (veth peers, measurements)
//!     programs/redirect_error     tracepoint programs counting redirect failures (attached
//!     programs/devmap_drops       by the daemon while it runs)
//!     links/<iface>               one XDP link per attached interface
//! ```
//!
//! A link pin keeps its program attached after every process has exited; removing the pin
//! detaches it. Maps and programs stay loaded while anything (pin, link, process) holds them.
//!
//! A daemon finding an older layout under its pin root upgrades it in place (see
//! [`crate::dataplane::Dataplane::open_pinned`]): for a while both versions are pinned, the
//! new one complete before any link moves to it, the old one removed once every link has.
//! A newer layout is refused: downgrades are not supported.

use std::{
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::mounts::BPFFS;

/// Where the layout lives unless told otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dataplane";
/// The layout this binary writes and adopts. Bump it whenever a map's type, key, value or size
/// changes, and list in [`CHANGED_MEANING`] any map whose meaning changed while its shape did
/// not. (The `layout-next-test` feature builds the next version, for the upgrade test.)
pub const LAYOUT_VERSION: u32 = if cfg!(feature = "layout-next-test") {
    8
} else {
    7
};

/// Maps whose values changed meaning, not shape, in a layout version: an upgrade from an
/// older layout starts them afresh rather than carrying them over. (version, map name)
pub const CHANGED_MEANING: &[(u32, &str)] = &[];

/// What is wrong with the pinned state.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A newer layout version is pinned under the same root.
    #[error(
        "{found} holds a dataplane pinned with layout v{version}, newer than this binary's \
         v{LAYOUT_VERSION}: downgrades are not supported. Run the release that pinned it, or \
         remove it (this detaches that dataplane) with `dataplane detach --pin-root {root} \
         --layout {version}`"
    )]
    NewerVersion {
        /// The directory found.
        found: PathBuf,
        /// Its layout version.
        version: u32,
        /// The pin root.
        root: PathBuf,
    },
    /// An older layout version runs, and this command does not upgrade it.
    #[error(
        "{found} holds a dataplane pinned with layout v{version} by an older release; \
         `dataplane run` of this release upgrades it in place (traffic keeps flowing), or use \
         the older release's commands"
    )]
    OlderVersion {
        /// The directory found.
        found: PathBuf,
        /// Its layout version.
        version: u32,
    },
    /// Several older layouts are pinned: which one runs is unclear.
    #[error(
        "{root} holds dataplanes pinned with layouts {versions:?}: remove all but the one \
         attached with `dataplane detach --pin-root {root} --layout N`"
    )]
    SeveralVersions {
        /// The pin root.
        root: PathBuf,
        /// The older versions found.
        versions: Vec<u32>,
    },
    /// Something that is not ours sits under the pin root.
    #[error(
        "{0} is not part of a dataplane pin layout (expected only v<N> directories); move it away"
    )]
    Foreign(PathBuf),
    /// A pinned map does not match the map this binary's program expects.
    #[error(
        "pinned map {path} does not match this binary's object ({what}); the pinned dataplane \
         came from another build. Run `dataplane detach` (this detaches it), then start again"
    )]
    Incompatible {
        /// The pin.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// A pin of the dataplane is gone (deleted by hand, say).
    #[error(
        "{0} is missing: a pin of this dataplane was deleted, so it cannot be adopted (its XDP \
         program keeps running on the interfaces it is attached to). To start over, `dataplane \
         detach` removes the rest (and detaches it), then `dataplane run` loads it afresh"
    )]
    Missing(PathBuf),
    /// This user may not open the pins.
    #[error(
        "{0}: permission denied; reading the pinned dataplane needs root (CAP_BPF): run with sudo"
    )]
    NeedsRoot(PathBuf),
    /// Another daemon holds the pin root.
    #[error(
        "another dataplane daemon (pid {holder}) manages the pins under {root}; stop it, or \
         give this one another --pin-root"
    )]
    Locked {
        /// The pin root.
        root: PathBuf,
        /// The holder's pid, as /proc/locks names it ("unknown" if it does not).
        holder: String,
    },
    /// Not an interface name: it would name another pin.
    #[error("\"{0}\" is not an interface name: 1 to 15 characters, no '/', not \".\" or \"..\"")]
    BadInterfaceName(String),
    /// The pin root is not on a bpf filesystem.
    #[error("{0} is not on a bpf filesystem; mount one (mount -t bpf bpf /sys/fs/bpf) or choose --pin-root under it")]
    NotBpffs(PathBuf),
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The pin paths of one dataplane.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
    version: u32,
}

impl PinLayout {
    /// This binary's layout under `root` (usually [`DEFAULT_PIN_ROOT`]).
    pub fn new(root: impl Into<PathBuf>) -> PinLayout {
        PinLayout {
            root: root.into(),
            version: LAYOUT_VERSION,
        }
    }

    /// Layout `version` under the same root (an older one, being upgraded from).
    pub fn of_version(&self, version: u32) -> PinLayout {
        PinLayout {
            root: self.root.clone(),
            version,
        }
    }

    /// The layout version these paths are of.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The pin root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of this layout version.
    pub fn dir(&self) -> PathBuf {
        self.version_dir(self.version)
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.root.join(format!("v{version}"))
    }

    /// Pin of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir().join("maps").join(name)
    }

    /// Pin of program `name`.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir().join("programs").join(name)
    }

    /// Pin of the XDP link on `iface`.
    pub fn link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(iface)
    }

    fn links_dir(&self) -> PathBuf {
        self.dir().join("links")
    }

    /// Whether a dataplane of this layout is pinned (its program pin is the marker: it is
    /// written last on a fresh load and on an upgrade).
    pub fn is_pinned(&self) -> bool {
        self.program(dataplane_common::programs::DATAPLANE).exists()
    }

    /// The older layout version pinned beside this one, if any (an upgrade's source);
    /// refuses a newer version (no downgrades), several older ones and foreign entries.
    pub fn check_version(&self) -> Result<Option<u32>, PinError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &self.root)(e)),
        };
        let mut older = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("reading", &self.root))?;
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|v| v.parse::<u32>().ok());
            match version {
                Some(v) if v == self.version => {}
                Some(v) if v < self.version => older.push(v),
                Some(version) => {
                    return Err(PinError::NewerVersion {
                        found: entry.path(),
                        version,
                        root: self.root.clone(),
                    })
                }
                None => return Err(PinError::Foreign(entry.path())),
            }
        }
        match older[..] {
            [] => Ok(None),
            [v] => Ok(Some(v)),
            _ => {
                older.sort_unstable();
                Err(PinError::SeveralVersions {
                    root: self.root.clone(),
                    versions: older,
                })
            }
        }
    }

    /// Makes sure the pin root exists on a bpf filesystem, mounting bpffs at /sys/fs/bpf
    /// when the system has not. The version's directories come with [`PinLayout::prepare`]:
    /// an empty one left by a failed start would look like a layout to the next release.
    pub fn prepare_root(&self) -> Result<(), PinError> {
        if self.root.starts_with(BPFFS.mount_point) {
            BPFFS
                .ensure_mounted()
                .map_err(io_err("mounting bpffs on", Path::new(BPFFS.mount_point)))?;
        }
        std::fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        if !BPFFS.holds(&self.root) {
            return Err(PinError::NotBpffs(self.root.clone()));
        }
        Ok(())
    }

    /// [`PinLayout::prepare_root`], and this version's directories.
    pub fn prepare(&self) -> Result<(), PinError> {
        self.prepare_root()?;
        for dir in [
            self.dir().join("maps"),
            self.dir().join("programs"),
            self.links_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        Ok(())
    }

    /// Removes every layout directory under the root that pins nothing (what a start that
    /// failed before pinning leaves): it would otherwise look like a layout, newer perhaps,
    /// to the next start, of this release or an older one being rolled back to. Call with
    /// the pin root locked.
    pub fn remove_empty_versions(&self) -> Result<(), PinError> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Ok(());
        };
        for entry in entries.filter_map(Result::ok) {
            let Some(version) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            let layout = self.of_version(version);
            let pins_something = ["maps", "programs", "links"].iter().any(|sub| {
                std::fs::read_dir(layout.dir().join(sub))
                    .is_ok_and(|mut entries| entries.next().is_some())
            });
            if !pins_something {
                layout.remove_version(version)?;
            }
        }
        Ok(())
    }

    /// Takes the pin root for this process alone (an exclusive `flock` on the directory,
    /// released when the process exits, however it exits), so two daemons never manage one
    /// dataplane. Call after [`PinLayout::prepare`].
    pub fn lock(&self) -> Result<PinLock, PinError> {
        let dir = std::fs::File::open(&self.root).map_err(io_err("opening", &self.root))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(PinLock { _dir: dir });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(io_err("locking", &self.root)(err));
        }
        Err(PinError::Locked {
            root: self.root.clone(),
            holder: lock_holder(&dir).unwrap_or_else(|| "unknown".to_string()),
        })
    }

    /// Whether any map or link of this layout is pinned (a dataplane, whole or not).
    pub fn has_remnants(&self) -> bool {
        let non_empty =
            |dir: PathBuf| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        non_empty(self.dir().join("maps")) || non_empty(self.links_dir())
    }

    /// Interfaces with a pinned XDP link, sorted.
    pub fn attached(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.links_dir())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Removes the link pin of `iface`, detaching the program from it once nothing else
    /// holds the link. Returns whether there was one.
    pub fn unpin_link(&self, iface: &str) -> Result<bool, PinError> {
        check_interface_name(iface)?;
        let path = self.link(iface);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Removes layout `version` entirely: links first (detaching), then programs and maps.
    pub fn remove_version(&self, version: u32) -> Result<bool, PinError> {
        let dir = self.version_dir(version);
        if !dir.exists() {
            return Ok(false);
        }
        for sub in ["links", "programs", "maps"] {
            let path = dir.join(sub);
            match std::fs::read_dir(&path) {
                Ok(entries) => {
                    for e in entries.filter_map(Result::ok) {
                        std::fs::remove_file(e.path()).map_err(io_err("removing", &e.path()))?;
                    }
                    std::fs::remove_dir(&path).map_err(io_err("removing", &path))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("reading", &path)(e)),
            }
        }
        std::fs::remove_dir(&dir).map_err(io_err("removing", &dir))?;
        // The root goes too when nothing else is left in it.
        let _ = std::fs::remove_dir(&self.root);
        Ok(true)
    }
}

/// Pins an object at `path` through `pin` (which pins at the path it is given), replacing
/// whatever `path` pins now in one rename: the path never stands empty, so a crash leaves
/// either the old object or the new one there.
pub fn pin_replacing(
    path: &Path,
    pin: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), PinError> {
    // bpffs refuses names with a dot.
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-staged");
    let staged = path.with_file_name(name);
    // A staged pin a crash left behind goes first.
    let _ = std::fs::remove_file(&staged);
    pin(&staged).map_err(|reason| PinError::Io {
        what: "pinning",
        path: staged.clone(),
        source: io::Error::other(reason),
    })?;
    std::fs::rename(&staged, path).map_err(io_err("renaming into place", path))
}

/// Why pin `path` could not be opened (`error` is what the loader said): not root, gone, or
/// not what this binary expects, in that order, so the advice fits the cause.
pub fn open_failure(path: &Path, error: impl std::fmt::Display) -> PinError {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        PinError::NeedsRoot(path.to_path_buf())
    } else if !path.exists() {
        PinError::Missing(path.to_path_buf())
    } else {
        PinError::Incompatible {
            path: path.to_path_buf(),
            what: format!("cannot open it: {error}"),
        }
    }
}

/// Held for as long as the pin root is this process's (see [`PinLayout::lock`]).
#[derive(Debug)]
pub struct PinLock {
    _dir: std::fs::File,
}

/// The pid holding a `flock` on `file`, from /proc/locks (lines `N: FLOCK ADVISORY WRITE pid
/// maj:min:inode ...`, device numbers in hex).
fn lock_holder(file: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&wanted.as_str()))
        .and_then(|f| f.get(4).map(|pid| pid.to_string()))
}

/// An interface name the kernel could have (IFNAMSIZ less the NUL, no '/', not "." or ".."):
/// anything else would name some other pin under `links/`.
pub fn check_interface_name(name: &str) -> Result<(), PinError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(PinError::BadInterfaceName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let l = PinLayout::new("/sys/fs/bpf/dataplane").of_version(7);
        assert_eq!(l.dir(), Path::new("/sys/fs/bpf/dataplane/v7"));
        assert_eq!(
            l.map("CLASS_COUNTERS"),
            Path::new("/sys/fs/bpf/dataplane/v7/maps/CLASS_COUNTERS")
        );
        assert_eq!(
            l.program("dataplane"),
            Path::new("/sys/fs/bpf/dataplane/v7/programs/dataplane")
        );
        assert_eq!(
            l.link("eth0"),
            Path::new("/sys/fs/bpf/dataplane/v7/links/eth0")
        );
    }

    #[test]
    fn an_older_layout_is_an_upgrade_a_newer_one_a_refused_downgrade() {
        let root = std::env::temp_dir().join(format!("dp-pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let l = PinLayout::new(&root).of_version(7);
        std::fs::create_dir_all(root.join("v7")).expect("mkdir");
        assert_eq!(l.check_version().expect("ours"), None);
        std::fs::create_dir_all(root.join("v4")).expect("mkdir");
        assert_eq!(l.check_version().expect("an upgrade"), Some(4));
        std::fs::create_dir_all(root.join("v5")).expect("mkdir");
        let err = l.check_version().expect_err("two older").to_string();
        assert!(err.contains("[4, 5]"), "{err}");
        std::fs::remove_dir(root.join("v4")).expect("rmdir");
        std::fs::remove_dir(root.join("v5")).expect("rmdir");
        std::fs::create_dir_all(root.join("v8")).expect("mkdir");
        let err = l.check_version().expect_err("v8 is refused").to_string();
        assert!(
            err.contains("layout v8") && err.contains("downgrades are not supported"),
            "{err}"
        );
        assert!(err.contains("--layout 8"), "{err}");
        std::fs::remove_dir(root.join("v8")).expect("rmdir");
        std::fs::write(root.join("stray"), b"").expect("write");
        let err = l.check_version().expect_err("stray file").to_string();
        assert!(err.contains("stray"), "{err}");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
