//! Runtime policy changes (`dataplane class set`, `rule add`, `rule del`) as edits of the
//! policy's TOML text. Editing the document instead of the parsed policy keeps the operator's
//! comments and layout when a change is saved back, and sends every change through the same
//! validator as a file, so a change is accepted exactly when the file it produces would be.

use serde::Serialize;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

use crate::config::{ClassText, ConfigError, Policy, RuleText};

/// What went wrong with an edit.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The current text is not a TOML document (cannot happen for validated text).
    #[error("the policy text is not valid TOML: {0}")]
    Document(String),
    /// The change names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The changed policy is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Origin named in errors of edited policies.
const EDIT_ORIGIN: &str = "the changed policy";

fn document(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Document(e.to_string()))
}

fn validated(doc: DocumentMut) -> Result<(String, Policy), EditError> {
    let text = doc.to_string();
    let policy = Policy::from_toml_str(&text, EDIT_ORIGIN)?;
    Ok((text, policy))
}

/// The keys `text` sets, as the policy file spells them, in field order.
fn keys<T: Serialize>(text: &T) -> Result<Table, EditError> {
    let doc = toml_edit::ser::to_document(text).map_err(|e| EditError::Document(e.to_string()))?;
    let mut table = Table::new();
    for (key, item) in doc.iter() {
        table.insert(key, item.clone());
    }
    Ok(table)
}

fn array_of_tables<'a>(doc: &'a mut DocumentMut, key: &str) -> Option<&'a mut ArrayOfTables> {
    doc.get_mut(key).and_then(Item::as_array_of_tables_mut)
}

/// Applies `change` to the policy `text` (keys it leaves out keep their value); returns the
/// new text and its validated policy.
pub fn set_class(text: &str, change: &ClassText) -> Result<(String, Policy), EditError> {
    let mut doc = document(text)?;
    let classes = array_of_tables(&mut doc, "class")
        .ok_or_else(|| EditError::NotFound("the policy has no classes".into()))?;
    let table = classes
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(change.name.as_str()))
        .ok_or_else(|| EditError::NotFound(format!("no class named {:?}", change.name)))?;
    let mut changes = keys(change)?;
    // The name finds the class; written again it would lose the comment beside it.
    changes.remove("name");
    for (key, item) in changes.iter() {
        table[key] = item.clone();
    }
    validated(doc)
}

/// Inserts `rule` before rule `position` (0-based; `None` appends).
pub fn add_rule(
    text: &str,
    rule: &RuleText,
    position: Option<usize>,
) -> Result<(String, Policy), EditError> {
    let mut doc = document(text)?;
    let table = keys(rule)?;
    if doc.get("rule").is_none() {
        doc["rule"] = Item::ArrayOfTables(ArrayOfTables::new());
    }
    let rules = array_of_tables(&mut doc, "rule")
        .ok_or_else(|| EditError::NotFound("`rule` is not an array of tables".into()))?;
    let count = rules.len();
    match position {
        None => rules.push(table),
        Some(p) if p <= count => {
            // ArrayOfTables has no insert: rebuild it in order.
            let mut rebuilt = ArrayOfTables::new();
            for (i, t) in rules.iter().enumerate() {
                if i == p {
                    rebuilt.push(table.clone());
                }
                rebuilt.push(t.clone());
            }
            if p == count {
                rebuilt.push(table);
            }
            *rules = rebuilt;
        }
        Some(p) => {
            return Err(EditError::NotFound(format!(
                "position {p} is past the end: the policy has {count} rules"
            )))
        }
    }
    validated(doc)
}

/// Removes rule `index` (0-based, as `dataplane rule list` numbers them).
pub fn delete_rule(text: &str, index: usize) -> Result<(String, Policy), EditError> {
    let mut doc = document(text)?;
    let rules = array_of_tables(&mut doc, "rule")
        .ok_or_else(|| EditError::NotFound("the policy has no rules".into()))?;
    if index >= rules.len() {
        return Err(EditError::NotFound(format!(
            "no rule {index}: the policy has {} rules (0 to {})",
            rules.len(),
            rules.len().saturating_sub(1)
        )));
    }
    rules.remove(index);
    validated(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scalar;

    const TEXT: &str = r#"# operator comment
default_class = "default"

[[class]]
name = "default"

[[class]]
name = "rdma" # inline comment
rate = "1Gbit"

[[rule]]
class = "rdma"
protocol = "udp"
dst_port = 4791
"#;

    #[test]
    fn class_change_keeps_comments_and_validates() {
        let change = ClassText {
            name: "rdma".into(),
            rate: Some(Scalar::Str("2Gbit".into())),
            priority: Some(6),
            ..ClassText::default()
        };
        let (text, policy) = set_class(TEXT, &change).expect("valid change");
        assert!(text.contains("# operator comment") && text.contains("# inline comment"));
        let rdma = &policy.classes[1];
        assert_eq!(rdma.rate_bytes_per_sec, 250_000_000);
        assert_eq!(rdma.priority, 6);
    }

    #[test]
    fn invalid_changes_name_the_field_and_change_nothing() {
        let bad = ClassText {
            name: "rdma".into(),
            rate: Some(Scalar::Str("fast".into())),
            ..ClassText::default()
        };
        let err = set_class(TEXT, &bad).expect_err("bad rate").to_string();
        assert!(err.contains("class[1].rate"), "{err}");
        let missing = ClassText {
            name: "nope".into(),
            ..ClassText::default()
        };
        let err = set_class(TEXT, &missing).expect_err("no class").to_string();
        assert!(err.contains("no class named \"nope\""), "{err}");
        let err = set_class(
            TEXT,
            &ClassText {
                name: "rdma".into(),
                priority: Some(9),
                ..ClassText::default()
            },
        )
        .expect_err("priority 9")
        .to_string();
        assert!(err.contains("priority"), "{err}");
    }

    #[test]
    fn rules_are_added_in_place_and_deleted_by_index() {
        let rule = RuleText {
            class: "default".into(),
            protocol: Some(Scalar::Str("tcp".into())),
            dst_port: Some(Scalar::Int(29500)),
            ..RuleText::default()
        };
        let (text, policy) = add_rule(TEXT, &rule, Some(0)).expect("add");
        assert_eq!(policy.rules.len(), 2);
        assert_eq!(policy.rules[0].class, 0);
        let (_, policy) = delete_rule(&text, 0).expect("delete");
        assert_eq!(policy.rules.len(), 1);
        assert_eq!(policy.rules[0].class, 1);
        let err = delete_rule(TEXT, 5).expect_err("no rule 5").to_string();
        assert!(err.contains("no rule 5"), "{err}");
        let bad = RuleText {
            class: "nope".into(),
            ..RuleText::default()
        };
        let err = add_rule(TEXT, &bad, None)
            .expect_err("unknown class")
            .to_string();
        assert!(err.contains("rule[1].class"), "{err}");
        let (_, appended) =
            add_rule("[[class]]\nname = \"default\"\n", &rule, None).expect("first rule");
        assert_eq!(appended.rules.len(), 1);
    }
}
