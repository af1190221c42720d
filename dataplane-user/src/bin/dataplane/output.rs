//! What the read-only commands share: `--json` output and the policy's classes as the file
//! spells them.

use anyhow::Result;
use dataplane::view::Running;

pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The policy's classes with every default filled in, as the file would say them.
pub fn class_tables(running: &Running) -> Result<Vec<toml::Table>> {
    let policy = running.policy_in_force()?;
    let text = policy.to_toml_string()?;
    let doc: toml::Table = toml::from_str(&text)?;
    Ok(doc
        .get("class")
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_table().cloned()).collect())
        .unwrap_or_default())
}

pub fn field(t: &toml::Table, key: &str) -> String {
    match t.get(key) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}
