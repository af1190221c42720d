//! `dataplane rule list | add | del`.

use anyhow::{Context, Result};
use dataplane::{control::Request, view::Running};
use serde_json::json;

use super::{call, Failed};
use crate::{
    args::{Paths, RuleCommand},
    output::{field, print_json},
};

pub fn execute(paths: &Paths, command: RuleCommand) -> Result<(), Failed> {
    match command {
        RuleCommand::List { json } => {
            list(&Running::open(&paths.layout(), &paths.run())?, json)?;
            Ok(())
        }
        RuleCommand::Add(add) => call(
            paths,
            &Request::AddRule {
                rule: add.rule,
                position: add.position,
                save: add.save,
            },
        ),
        RuleCommand::Del { index, save } => call(paths, &Request::DeleteRule { index, save }),
    }
}

/// `dataplane rule list`: the rules as the policy spells them, with their index.
fn list(running: &Running, json: bool) -> Result<()> {
    running.policy_in_force()?;
    let doc: toml::Table = toml::from_str(&running.state.policy_text)
        .context("the state file holds no readable policy")?;
    let rules: Vec<toml::Table> = doc
        .get("rule")
        .and_then(|r| r.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_table().cloned()).collect())
        .unwrap_or_default();
    if json {
        let v: Vec<serde_json::Value> = rules
            .iter()
            .enumerate()
            .map(|(i, t)| json!({ "index": i, "rule": t }))
            .collect();
        return print_json(&v);
    }
    println!("{:>5}  {:<16} MATCH", "INDEX", "CLASS");
    for (i, t) in rules.iter().enumerate() {
        let matches: Vec<String> = t
            .iter()
            .filter(|(k, _)| *k != "class")
            .map(|(k, v)| match v {
                toml::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        println!(
            "{i:>5}  {:<16} {}",
            field(t, "class"),
            if matches.is_empty() {
                "(everything)".into()
            } else {
                matches.join(" ")
            }
        );
    }
    Ok(())
}
