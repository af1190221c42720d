//! Scratch trees for tests that mount things under them (a Debian root, a container's
//! bundle): unique per process and test, removed on drop only while nothing is mounted
//! beneath (a recursive delete follows mounts into whatever they show), and leftovers of
//! test processes that no longer exist removed first. The mounts themselves belong in a
//! private mount namespace (`unshare --mount --propagation private`), so they vanish with
//! its processes and this process never sees them.

use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A directory `/tmp/<prefix>-<pid>-<n>`, removed on drop.
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
    /// `<prefix>-<pid>-<n>`: also a name for what the test creates elsewhere.
    pub id: String,
}

impl Scratch {
    /// A fresh directory; those of `prefix` left by dead processes are removed first
    /// (`also` names other places their ids were used, e.g. a pin directory on bpffs).
    pub fn create(prefix: &str, also: &[&Path]) -> Scratch {
        crate::kernel::require_root();
        let tmp = std::env::temp_dir();
        for parent in std::iter::once(tmp.as_path()).chain(also.iter().copied()) {
            for stale in leftovers(parent, prefix) {
                remove_tree(&stale);
            }
        }
        let id = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tmp.join(&id);
        remove_tree(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir, id }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// Entries `<prefix>-<pid>-<n>` of `parent` whose process is gone.
fn leftovers(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .and_then(|r| r.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|e| e.path())
        .collect()
}

/// Mount points of this process's mount namespace at or below `path`.
fn mounts_under(path: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as \ooo; our paths have none.
        .filter(|m| *m == path || m.starts_with(&format!("{path}/")))
        .map(str::to_owned)
        .collect()
}

/// Removes `path` recursively, unless something is mounted there or beneath: then it is
/// left alone and said so (never followed into a mount).
pub fn remove_tree(path: &Path) {
    let mounted = mounts_under(path);
    if !mounted.is_empty() {
        eprintln!(
            "NOT removing {}: mounted beneath it: {}",
            path.display(),
            mounted.join(", ")
        );
        return;
    }
    let _ = std::fs::remove_dir_all(path);
}

/// A file's identity (device, inode): what `/proc/PID/exe` of a process running it leads
/// to, whatever its mount namespace or root, and after the file is deleted.
pub fn file_id(path: &Path) -> (u64, u64) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.dev(), meta.ino())
}

/// The processes running the program `id` ([`file_id`]) names.
pub fn processes_running(id: (u64, u64)) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::metadata(e.path().join("exe")).ok()?;
            ((exe.dev(), exe.ino()) == id).then_some(pid)
        })
        .collect()
}

/// Makes `cmd`'s process die with the thread that spawns it (the test), also when the test
/// is killed; kept across exec, so `unshare`, `nsenter` and `chroot` pass it on to what they
/// execute.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}
