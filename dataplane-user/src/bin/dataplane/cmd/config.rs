//! `dataplane config check`.

use std::path::Path;

use dataplane::{compile::CompiledPolicy, config::Policy, dataplane::Dataplane};

use super::{Failed, EXIT_REJECTED};

pub fn check(file: &Path) -> Result<(), Failed> {
    let policy = Policy::load(file).map_err(|e| Failed {
        code: EXIT_REJECTED,
        error: e.into(),
    })?;
    // The same capacity check the daemon applies before it writes anything.
    Dataplane::check_fits(&CompiledPolicy::new(&policy)).map_err(|e| Failed {
        code: EXIT_REJECTED,
        error: anyhow::anyhow!("{}: {e}", file.display()),
    })?;
    println!(
        "{}: ok ({} classes, {} rules)",
        file.display(),
        policy.classes.len(),
        policy.rules.len()
    );
    Ok(())
}
