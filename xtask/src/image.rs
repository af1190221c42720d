//! `cargo xtask image`: the OCI image deploy/kubernetes/dataplane.yaml names
//! (`dataplane:<version>`), built from scratch without a container engine: one layer with the
//! release binary at /usr/local/sbin/dataplane, the shared libraries it links (Debian's
//! files, with their copyright notices) and the DaemonSet's mount points. The daemon execs
//! nothing and mounts bpffs and tracefs itself, so nothing else is needed at run time.
//!
//! Written as an OCI image layout (`target/image/oci/`) and as one archive of it
//! (`target/image/dataplane-<version>.tar`) that also carries Docker's `manifest.json`: what
//! `docker save` writes, so container tools (docker, podman, containerd's `ctr images
//! import`, skopeo) load it under the same name.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use serde_json::json;

use crate::{
    package::{copy, normalize_modes, output, stripped_binary, NAME, VERSION},
    run,
};

/// Where the DaemonSet's `command` finds the binary.
const BINARY: &str = "usr/local/sbin/dataplane";
/// Mount points of the DaemonSet's volumes, and what a runtime mounts.
const DIRS: &[&str] = &[
    "etc/dataplane",
    "run/dataplane",
    "sys/fs/bpf",
    "sys/kernel/tracing",
    "proc",
    "dev",
];

/// Builds the layout and the archive; returns the archive's path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let binary = stripped_binary(root)?;
    let out = root.join("target/image");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let rootfs = out.join("rootfs");
    for dir in DIRS {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    copy(&binary, &rootfs.join(BINARY))?;
    for lib in linked_libraries(&binary)? {
        copy_with_links(&lib, &rootfs)?;
        // Debian's database names the path the package ships (/lib/... before usrmerge).
        let owner = output(Command::new("dpkg").arg("-S").arg(&lib))
            .or_else(|_| output(Command::new("dpkg").arg("-S").arg(fs::canonicalize(&lib)?)))?;
        let package = owner.split([':', ',']).next().unwrap_or_default().trim();
        let notice = format!("usr/share/doc/{package}/copyright");
        copy(&Path::new("/").join(&notice), &rootfs.join(&notice))?;
    }
    normalize_modes(&rootfs)?;

    let blobs = out.join("oci/blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let layer_tar = out.join("layer.tar");
    run(Command::new("tar")
        .args(REPRODUCIBLE_TAR)
        .arg("--create")
        .arg("--file")
        .arg(&layer_tar)
        .arg("--directory")
        .arg(&rootfs)
        .arg("."))?;
    let diff_id = sha256(&layer_tar)?;
    run(Command::new("gzip").args(["-9n"]).arg(&layer_tar))?;
    let layer = blob(&blobs, &out.join("layer.tar.gz"))?;

    let config = json!({
        "architecture": output(Command::new("dpkg").arg("--print-architecture"))?.trim(),
        "os": "linux",
        "config": {
            "Entrypoint": [format!("/{BINARY}")],
            "Cmd": ["--help"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "org.opencontainers.image.title": NAME,
                "org.opencontainers.image.version": VERSION,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    });
    let config = blob_json(&blobs, &out, "config.json", &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    });
    let manifest = blob_json(&blobs, &out, "manifest.json", &manifest)?;
    // The annotations docker save writes: the tag for `oci:DIR:TAG`, the full name for
    // containerd (the name a kubelet looks up for `dataplane:<version>`).
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["annotations"] = json!({
        "org.opencontainers.image.ref.name": VERSION,
        "io.containerd.image.name": format!("docker.io/library/{NAME}:{VERSION}"),
    });
    let layout = out.join("oci");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    });
    fs::write(layout.join("index.json"), index.to_string())?;
    fs::write(
        layout.join("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"}).to_string(),
    )?;
    let docker = json!([{
        "Config": format!("blobs/sha256/{}", config.digest),
        "RepoTags": [reference()],
        "Layers": [format!("blobs/sha256/{}", layer.digest)],
    }]);
    fs::write(layout.join("manifest.json"), docker.to_string())?;
    normalize_modes(&layout)?;

    let archive = out.join(format!("{NAME}-{VERSION}.tar"));
    run(Command::new("tar")
        .args(REPRODUCIBLE_TAR)
        .arg("--create")
        .arg("--file")
        .arg(&archive)
        .arg("--directory")
        .arg(&layout)
        .args(["oci-layout", "index.json", "manifest.json", "blobs"]))?;
    eprintln!(
        "{} ({}, {} KiB; layer {} KiB)",
        archive.display(),
        reference(),
        fs::metadata(&archive)?.len().div_ceil(1024),
        layer.size.div_ceil(1024)
    );
    Ok(archive)
}

/// The image's name as the DaemonSet spells it.
fn reference() -> String {
    format!("{NAME}:{VERSION}")
}

/// Same bytes for the same files: sorted, fixed times and owners.
const REPRODUCIBLE_TAR: &[&str] = &[
    "--sort=name",
    "--mtime=@0",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
];

struct Blob {
    digest: String,
    size: u64,
}

fn descriptor(media_type: &str, blob: &Blob) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": format!("sha256:{}", blob.digest), "size": blob.size})
}

/// Moves `file` into the blob store under its digest.
fn blob(blobs: &Path, file: &Path) -> Result<Blob> {
    let digest = sha256(file)?;
    let size = fs::metadata(file)?.len();
    fs::rename(file, blobs.join(&digest))?;
    Ok(Blob { digest, size })
}

fn blob_json(blobs: &Path, out: &Path, name: &str, value: &serde_json::Value) -> Result<Blob> {
    let file = out.join(name);
    fs::write(&file, value.to_string())?;
    blob(blobs, &file)
}

fn sha256(file: &Path) -> Result<String> {
    let sum = output(Command::new("sha256sum").arg(file))?;
    Ok(sum
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The shared libraries and the loader `binary` needs, as `ldd` names them.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let text = output(Command::new("ldd").arg(binary))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-... (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `path` into `rootfs` at the same path, recreating the symbolic links on the way
/// (/lib64 -> usr/lib64, the loader's link to its file, ...) so the loader finds what the
/// binary names.
fn copy_with_links(path: &Path, rootfs: &Path) -> Result<()> {
    let mut host = PathBuf::from("/");
    let mut components = path.components();
    while let Some(component) = components.next() {
        match component {
            Component::Normal(name) => host.push(name),
            Component::ParentDir => {
                host.pop();
                continue;
            }
            _ => continue,
        }
        let inside = rootfs.join(host.strip_prefix("/")?);
        let meta = fs::symlink_metadata(&host)?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host)?;
            if fs::symlink_metadata(&inside).is_err() {
                symlink(&target, &inside)?;
            }
            // Go on from where the link points, recreating that path too.
            host.pop();
            return copy_with_links(&host.join(target).join(components.as_path()), rootfs);
        }
        if meta.is_dir() {
            fs::create_dir_all(&inside)?;
        } else {
            copy(&host, &inside)?;
        }
    }
    Ok(())
}
