//! `dataplane manpages DIR` (hidden): man pages from the clap definitions, so the packaged
//! pages say what this binary accepts.

use std::path::Path;

use anyhow::Context;

use super::Failed;

pub fn execute(command: clap::Command, dir: &Path) -> Result<(), Failed> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(())
}
