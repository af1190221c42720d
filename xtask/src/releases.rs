//! The other releases the upgrade test (tests/tests/upgrade.rs) runs, built under
//! `target/upgrade/<release>/target`: today's main as it landed (pinned layout v7, from git)
//! and this tree's next layout (the `layout-next-test` feature).

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

/// The last commit of main before layouts could be upgraded in place: layout v7 as operators
/// run it today. The test upgrades from it, so it is built as it landed.
const MAIN_V7: &str = "b6498eafdd6efb13be3ad0f09afdef67065cc4ab";

/// Builds both releases (incremental after the first time: each keeps its target dir).
pub fn build(root: &Path) -> Result<()> {
    let dir = root.join("target/upgrade");
    let main = dir.join("main-v7");
    let src = main.join("src");
    if !src.join("Cargo.toml").exists() {
        // A worktree of the commit; a stale registration (target/ cleaned) goes first.
        crate::run(
            Command::new("git")
                .current_dir(root)
                .args(["worktree", "prune"]),
        )?;
        crate::run(
            Command::new("git")
                .current_dir(root)
                .args(["worktree", "add", "--force", "--detach"])
                .arg(&src)
                .arg(MAIN_V7),
        )
        .with_context(|| {
            format!("checking out main at {MAIN_V7} (layout v7) needs the repository's history")
        })?;
    }
    crate::run(
        Command::new("cargo")
            .current_dir(&src)
            .args(["build", "-p", "dataplane-user", "--bins", "--target-dir"])
            .arg(main.join("target")),
    )?;
    crate::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "-p", "dataplane-user", "--bins"])
            .args(["--features", "layout-next-test", "--target-dir"])
            .arg(dir.join("next/target")),
    )
}
