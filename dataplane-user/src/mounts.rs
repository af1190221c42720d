//! The kernel filesystems the daemon needs, mounted where a minimal system has not: bpffs for
//! the pins, tracefs for the tracepoints the redirect-failure counters attach to.

use std::{ffi::CString, io, path::Path};

/// A kernel filesystem the daemon may mount.
#[derive(Clone, Copy, Debug)]
pub struct KernelFs {
    /// The filesystem type, as `mount -t` takes it.
    kind: &'static std::ffi::CStr,
    /// `statfs`'s `f_type` for it.
    magic: i64,
    /// Where the system mounts it.
    pub mount_point: &'static str,
}

/// bpffs, where pins live.
pub const BPFFS: KernelFs = KernelFs {
    kind: c"bpf",
    magic: 0xcafe_4a11,
    mount_point: "/sys/fs/bpf",
};

/// tracefs, where the kernel names its tracepoints (a system with debugfs has it under
/// /sys/kernel/debug/tracing too; aya looks in both).
pub const TRACEFS: KernelFs = KernelFs {
    kind: c"tracefs",
    magic: 0x7472_6163,
    mount_point: "/sys/kernel/tracing",
};

impl KernelFs {
    /// The filesystem type's name, for messages.
    pub fn name(&self) -> &'static str {
        self.kind.to_str().unwrap_or("kernel filesystem")
    }

    /// Whether `path` lies on this filesystem.
    pub fn holds(&self, path: &Path) -> bool {
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: `c` is NUL-terminated; `st` is a valid out-pointer for the call.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == self.magic
        }
    }

    /// Mounts it at its mount point unless it is there already.
    pub fn ensure_mounted(&self) -> io::Result<()> {
        let at = Path::new(self.mount_point);
        if self.holds(at) {
            return Ok(());
        }
        std::fs::create_dir_all(at)?;
        let target = CString::new(self.mount_point).map_err(io::Error::other)?;
        // SAFETY: all pointers are valid NUL-terminated strings; data is null.
        let rc = unsafe {
            libc::mount(
                self.kind.as_ptr(),
                target.as_ptr(),
                self.kind.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_neither_filesystem() {
        let dir = std::env::temp_dir();
        assert!(!BPFFS.holds(&dir));
        assert!(!TRACEFS.holds(&dir));
        assert!(!BPFFS.holds(Path::new("/no/such/path")));
        assert_eq!((BPFFS.name(), TRACEFS.name()), ("bpf", "tracefs"));
    }
}
