//! `cargo xtask package`: the .deb, built with `dpkg-deb` from a staged tree (the release
//! binary, the systemd unit and its defaults, the default policy as a conffile, completions,
//! man pages, the Grafana dashboard and the Prometheus rules, and maintainer scripts that
//! take the dataplane off every interface when the package is removed).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{build_release_binary, run};

pub const NAME: &str = "dataplane";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the package installs the binary (Debian policy: daemons in /usr/sbin, never
/// /usr/local); the unit in deploy/systemd names this path.
pub const BINARY: &str = "usr/sbin/dataplane";
const MAINTAINER: &str = "dataplane maintainers <dataplane@example.org>";
const HOMEPAGE: &str = "https://github.com/dataplane/dataplane";

/// Files copied from the repository: (source, installed path, conffile).
const FILES: &[(&str, &str, bool)] = &[
    (
        "deploy/systemd/dataplane.service",
        "usr/lib/systemd/system/dataplane.service",
        false,
    ),
    (
        "deploy/systemd/dataplane.default",
        "etc/default/dataplane",
        true,
    ),
    ("config/default.toml", "etc/dataplane/policy.toml", true),
    (
        "deploy/grafana/dataplane.json",
        "usr/share/dataplane/grafana/dataplane.json",
        false,
    ),
    (
        "deploy/prometheus/alerts.yml",
        "usr/share/dataplane/prometheus/alerts.yml",
        false,
    ),
    (
        "deploy/prometheus/fleet.yml",
        "usr/share/dataplane/prometheus/fleet.yml",
        false,
    ),
];

/// Completions: (shell, installed path), where each shell's packaged completions live.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/dataplane"),
    ("zsh", "usr/share/zsh/vendor-completions/_dataplane"),
    ("fish", "usr/share/fish/vendor_completions.d/dataplane.fish"),
];

/// Stops a service, then removes what the dataplane leaves: `dataplane detach` takes it off
/// every interface and removes its pins (a daemon started by hand is asked to, and exits).
/// Not on upgrade: the pinned dataplane keeps forwarding and the new daemon re-adopts it.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop dataplane.service || true
    fi
    # Without pins to read, removing them is what detaches (the links go with their pins).
    /usr/sbin/dataplane detach || rm -rf /sys/fs/bpf/dataplane
    rm -rf /run/dataplane
fi
"#;

/// Not enabled at install: the interfaces in /etc/default/dataplane are the operator's to
/// set. An upgrade restarts a running service on the new binary.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -n "$2" ]; then
        systemctl try-restart dataplane.service || true
    fi
fi
"#;

/// Purge also drops the link `systemctl enable` made, which dpkg does not know of.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -f /etc/systemd/system/multi-user.target.wants/dataplane.service
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
"#;

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dataplane
Source: https://github.com/dataplane/dataplane

Files: *
License: MIT or Apache-2.0
";

/// The release binary, stripped, in `target/package/`.
pub fn stripped_binary(root: &Path) -> Result<PathBuf> {
    build_release_binary(root)?;
    let out = root.join("target/package");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let stripped = out.join(NAME);
    run(Command::new("strip")
        .arg("--strip-unneeded")
        .arg("-o")
        .arg(&stripped)
        .arg(root.join("target/release/dataplane")))?;
    Ok(stripped)
}

/// Builds `target/package/dataplane_<version>_<arch>.deb` and returns its path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let binary = stripped_binary(root)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let arch = arch.trim();
    let work = root.join("target/package/build");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    // debian/<package>/ is where dpkg-shlibdeps expects the package's files.
    let pkg = work.join("debian").join(NAME);
    let mut conffiles = String::new();
    for (source, dest, conffile) in FILES {
        copy(&root.join(source), &pkg.join(dest))?;
        if *conffile {
            conffiles.push_str(&format!("/{dest}\n"));
        }
    }
    copy(&binary, &pkg.join(BINARY))?;
    for (shell, dest) in COMPLETIONS {
        let text = output(Command::new(&binary).args(["completions", shell]))?;
        write(&pkg.join(dest), &text)?;
    }
    let man = pkg.join("usr/share/man/man1");
    run(Command::new(&binary).arg("manpages").arg(&man))?;
    let pages: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    output(Command::new("gzip").arg("-9n").args(&pages))?;
    write(&pkg.join("usr/share/doc/dataplane/copyright"), COPYRIGHT)?;

    let control = pkg.join("DEBIAN");
    write(&control.join("conffiles"), &conffiles)?;
    for (name, text) in [("prerm", PRERM), ("postinst", POSTINST), ("postrm", POSTRM)] {
        let script = control.join(name);
        write(&script, text)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    }
    let files = files_under(&pkg)?;
    let conffile_list: Vec<&str> = conffiles.lines().collect();
    let summed: Vec<String> = files
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|f| !f.starts_with("DEBIAN/") && !conffile_list.contains(&&*format!("/{f}")))
        .collect();
    let md5sums = output(Command::new("md5sum").current_dir(&pkg).args(&summed))?;
    write(&control.join("md5sums"), &md5sums)?;
    let installed_kib: u64 = files
        .iter()
        .filter(|f| !f.starts_with("DEBIAN"))
        .map(|f| fs::metadata(pkg.join(f)).map_or(0, |m| m.len().div_ceil(1024)))
        .sum();

    // Depends from the binary's shared libraries, as Debian's own packages get them.
    write(
        &work.join("debian/control"),
        &format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;
    let shlibs = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(&work)
            .arg("-O")
            .arg(Path::new("debian").join(NAME).join(BINARY)),
    )?;
    let depends = shlibs
        .trim()
        .strip_prefix("shlibs:Depends=")
        .with_context(|| format!("unexpected dpkg-shlibdeps output: {shlibs}"))?;
    write(
        &control.join("control"),
        &format!(
            "Package: {NAME}\nVersion: {VERSION}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
             Installed-Size: {installed_kib}\nDepends: {depends}\n\
             Recommends: iproute2\nSuggests: bpftool, prometheus\nSection: net\n\
             Priority: optional\nHomepage: {HOMEPAGE}\n\
             Description: XDP classifier, policer and forwarder for AI traffic\n \
             Classifies packets in XDP, gives each class a guaranteed and a peak rate and a\n \
             priority, and passes, drops, ECN-marks or re-marks what exceeds them; forwards\n \
             through the kernel's routing table. The daemon `dataplane run` and its CLI;\n \
             the systemd unit is installed, not enabled: set the interfaces in\n \
             /etc/default/dataplane, then `systemctl enable --now dataplane`.\n"
        ),
    )?;
    normalize_modes(&pkg)?;

    let deb = root.join(format!("target/package/{NAME}_{VERSION}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&pkg)
        .arg(&deb))?;
    eprintln!(
        "{} ({} KiB)",
        deb.display(),
        fs::metadata(&deb)?.len().div_ceil(1024)
    );
    Ok(deb)
}

/// A command's stdout, failing with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed no UTF-8"))
}

pub fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Directories and executables 0755, other files 0644, whatever the umask was.
pub fn normalize_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            normalize_modes(&path)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Regular files under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(base, &path, out)?;
            } else {
                out.push(path.strip_prefix(base)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}
