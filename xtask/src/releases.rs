//! The other releases the upgrade test (tests/tests/upgrade.rs) runs, each binary copied to
//! `target/upgrade/<release>/dataplane`: today's main as it landed (pinned layout v7, built
//! from git) and this tree's next layout (the `layout-next-test` feature).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The last commit of main before layouts could be upgraded in place: layout v7 as operators
/// run it today. The test upgrades from it, so it is built as it landed.
const MAIN_V7: &str = "b6498eafdd6efb13be3ad0f09afdef67065cc4ab";
/// Where main's source and build live: outside this checkout, whose workspace would claim
/// its crates (cargo looks for a workspace in every parent directory).
const MAIN_V7_DIR: &str = "/var/cache/dataplane-upgrade/main-v7";

/// Builds both releases (incremental after the first time: each keeps its target dir).
pub fn build(root: &Path) -> Result<()> {
    let out = root.join("target/upgrade");
    let main = Path::new(MAIN_V7_DIR);
    let src = main.join(&MAIN_V7[..12]);
    if !src.join("Cargo.toml").exists() {
        extract(root, &src)?;
    }
    crate::run(
        Command::new("cargo")
            .current_dir(&src)
            .args(["build", "-p", "dataplane-user", "--bins", "--target-dir"])
            .arg(main.join("target")),
    )?;
    install(&main.join("target/debug/dataplane"), &out.join("main-v7"))?;
    let next = out.join("next");
    crate::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "-p", "dataplane-user", "--bins"])
            .args(["--features", "layout-next-test", "--target-dir"])
            .arg(next.join("target")),
    )?;
    install(&next.join("target/debug/dataplane"), &next)
}

/// Main's tree at its commit, from this repository's history (`git archive`).
fn extract(root: &Path, to: &Path) -> Result<()> {
    let staging = to.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    eprintln!("+ git archive {MAIN_V7} | tar -x -C {}", staging.display());
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", "--format=tar", MAIN_V7])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&staging)
        .stdin(archive.stdout.take().context("git archive's output")?)
        .status()
        .context("cannot run tar")?;
    let git = archive.wait().context("waiting for git archive")?;
    if !git.success() || !tar.success() {
        bail!(
            "checking out main at {MAIN_V7} (layout v7, the upgrade test's starting point) \
             failed: it needs the repository's history (a full clone)"
        );
    }
    std::fs::rename(&staging, to).with_context(|| format!("moving {} into place", to.display()))
}

/// Copies a built binary to `dir/dataplane`, where the upgrade test finds it.
fn install(binary: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::copy(binary, dir.join("dataplane"))
        .with_context(|| format!("copying {}", binary.display()))?;
    Ok(())
}
