//! The guest's first stage: a busybox initramfs that mounts the host's `/` (9p, read-only)
//! under a tmpfs overlay, binds the kernel's modules into it and switch_roots to the run's
//! `guest.sh` (on the second, writable 9p share).

use std::{
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{kernels::Kernel, output, GUEST_SCRIPT, IO_TAG, MARK, ROOT_TAG};

const BUSYBOX: &str = "/bin/busybox";
/// What mounting the host's root needs, with their dependencies (modprobe resolves them).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// 9p's message size: the default (8 KiB on old kernels) makes every read slow.
const MSIZE: u32 = 262_144;

/// The initramfs for `kernel`, rebuilt only when its inputs changed.
pub fn ensure(kernel: &Kernel) -> Result<PathBuf> {
    let image = kernel.dir.join("initramfs.cpio");
    let stamp_path = kernel.dir.join("initramfs.stamp");
    let modules = boot_modules(kernel)?;
    let init = init_script(kernel)?;
    let busybox = fs::metadata(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} is missing: install busybox-static"))?;
    let stamp = format!(
        "{init}\nbusybox {} {}\n{}\n",
        busybox.len(),
        busybox.mtime(),
        modules
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    if image.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        return Ok(image);
    }
    eprintln!("kernel {}: building {}", kernel.name, image.display());
    // Per process: a concurrent run may be building the same image.
    let staging = kernel
        .dir
        .join(format!("initramfs.{}.d", std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let mut files = vec![".".to_string(), "bin".to_string(), "modules".to_string()];
    for d in ["bin", "modules"] {
        fs::create_dir_all(staging.join(d))
            .with_context(|| format!("creating {}", staging.join(d).display()))?;
    }
    fs::copy(BUSYBOX, staging.join("bin/busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    write_executable(&staging.join("init"), &init)?;
    files.extend(["bin/busybox".to_string(), "init".to_string()]);
    // busybox's insmod takes plain .ko files; the host decompresses.
    for (i, module) in modules.iter().enumerate() {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
            .with_context(|| format!("odd module path {}", module.display()))?;
        let rel = format!("modules/{i:02}-{name}.ko");
        let bytes = decompress(module)?;
        fs::write(staging.join(&rel), bytes).with_context(|| format!("writing {rel}"))?;
        files.push(rel);
    }
    let partial = staging.with_extension("cpio");
    let out =
        fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut cpio = Command::new("cpio")
        .current_dir(&staging)
        .args(["-o", "-H", "newc", "--owner=0:0", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("cannot start cpio (install the cpio package)")?;
    cpio.stdin
        .take()
        .context("cpio's stdin")?
        .write_all(files.join("\n").as_bytes())
        .context("writing cpio's file list")?;
    let status = cpio.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio failed with {status} in {}", staging.display());
    }
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    fs::rename(&partial, &image).with_context(|| format!("renaming to {}", image.display()))?;
    fs::write(&stamp_path, stamp).with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(image)
}

/// The module files [`BOOT_MODULES`] need, dependencies first (built-in ones need none).
fn boot_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let root = kernel.dir.join("root");
    let text = output(
        Command::new("modprobe")
            .arg("-d")
            .arg(&root)
            .args(["-S", &kernel.release, "--show-depends", "-a"])
            .args(BOOT_MODULES),
    )?;
    let mut modules: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        if let Some(path) = line
            .strip_prefix("insmod ")
            .and_then(|rest| rest.split_whitespace().next())
        {
            let path = PathBuf::from(path);
            if !modules.contains(&path) {
                modules.push(path);
            }
        }
    }
    Ok(modules)
}

fn decompress(module: &Path) -> Result<Vec<u8>> {
    match module.extension().and_then(|e| e.to_str()) {
        Some("ko") => {
            return fs::read(module).with_context(|| format!("reading {}", module.display()))
        }
        // Debian compresses modules with xz (from 6.12 on).
        Some("xz") => {}
        _ => bail!("unknown module compression: {}", module.display()),
    }
    let out = Command::new("xz")
        .arg("-dc")
        .arg(module)
        .output()
        .context("cannot start xz (install xz-utils)")?;
    if !out.status.success() {
        bail!(
            "xz -dc {} failed: {}",
            module.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// /init: any failure is reported on the console and powers off without an exit code,
/// which the host reports with the console's last lines.
fn init_script(kernel: &Kernel) -> Result<String> {
    let modules = kernel
        .modules
        .to_str()
        .context("modules path is not UTF-8")?;
    let release = &kernel.release;
    Ok(format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /dev /proc /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() {{ echo "{MARK} setup failed: $*"; poweroff -f; sleep 10; }}
mount -t proc proc /proc || fail "mounting /proc"
mount -t sysfs sysfs /sys || fail "mounting /sys"
for m in /modules/*.ko; do insmod "$m" || fail "insmod $m"; done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize={MSIZE} {ROOT_TAG} /lower || fail "mounting the host's root (9p {ROOT_TAG})"
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "mounting the overlay's tmpfs"
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot || fail "mounting the overlay"
mkdir -p /newroot/vm /newroot/usr/lib/modules/{release}
mount -t 9p -o trans=virtio,version=9p2000.L,msize={MSIZE} {IO_TAG} /newroot/vm || fail "mounting the run's share (9p {IO_TAG})"
mount --bind /newroot{modules} /newroot/usr/lib/modules/{release} || fail "binding the modules"
umount /proc /sys
umount -l /dev
exec switch_root /newroot /bin/sh /vm/{GUEST_SCRIPT}
"#
    ))
}
