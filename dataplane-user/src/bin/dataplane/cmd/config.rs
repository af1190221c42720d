//! `dataplane config check`.

use std::path::Path;

use dataplane::{
    compile::CompiledPolicy,
    config::{Policy, MAX_POLICY_IFACES},
    dataplane::Dataplane,
    ids::Ids,
};

use super::{Failed, EXIT_REJECTED};

/// Validates `file` as the daemon would, with `ifaces` as its `--iface` interfaces.
pub fn check(file: &Path, ifaces: &[String]) -> Result<(), Failed> {
    let rejected = |error: anyhow::Error| Failed {
        code: EXIT_REJECTED,
        error,
    };
    let policy = Policy::load(file).map_err(|e| rejected(e.into()))?;
    // The same capacity check the daemon applies before it writes anything.
    Dataplane::check_fits(&CompiledPolicy::new(&policy))
        .map_err(|e| rejected(anyhow::anyhow!("{}: {e}", file.display())))?;
    // The daemon gives an interface slot to each --iface the policy does not name, too.
    let (ids, _) = Ids::default().assign(&policy, ifaces).map_err(|e| {
        rejected(anyhow::anyhow!(
            "{} with --iface {}: {e}",
            file.display(),
            ifaces.join(" --iface ")
        ))
    })?;
    let used = ids.ifaces.len();
    println!(
        "{}: ok ({} classes, {} rules, {used} interfaces; each --iface of the daemon not \
         named here takes one more of the {MAX_POLICY_IFACES}: {} left)",
        file.display(),
        policy.classes.len(),
        policy.rules.len(),
        MAX_POLICY_IFACES.saturating_sub(used)
    );
    Ok(())
}
