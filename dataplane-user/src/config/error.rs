//! Why a policy could not be loaded, and where in the text: TOML errors get their line,
//! column and (from the table headers above them) the field they are about.

use std::collections::HashMap;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the policy file: {source}")]
    Read {
        /// The file.
        origin: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the policy schema: unknown key, wrong type, missing key.
    #[error("{origin}{}: {field}: {message}", position(*.line, *.column))]
    Parse {
        /// The file.
        origin: String,
        /// Best guess at the field (`class[2].rate`), from the TOML table headers.
        field: String,
        /// 1-based line, when the parser knows it.
        line: Option<usize>,
        /// 1-based column, when the parser knows it.
        column: Option<usize>,
        /// What the TOML parser said.
        message: String,
    },
    /// Well-formed but not a valid policy.
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        /// The file.
        origin: String,
        /// The field (`rule[17].dst_port`).
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

impl ConfigError {
    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

/// ":line:column" for [`ConfigError::Parse`].
fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// A TOML error with its position and, from the table headers above it, the field.
pub(super) fn parse_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column, field) = match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (Some(line), Some(column), field_at(text, line))
        }
        None => (None, None, "policy".to_string()),
    };
    ConfigError::Parse {
        origin: origin.to_string(),
        field,
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The field on 1-based line `line`: the last table header up to it (`class[2]`, counting
/// `[[class]]` headers) and the key assigned on it, if any.
fn field_at(text: &str, line: usize) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut table: Option<String> = None;
    let mut key = None;
    for (n, raw) in text.lines().take(line).enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            let count = counts.entry(name).or_insert(0);
            table = Some(format!("{name}[{count}]"));
            *count += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            table = Some(name.trim().to_string());
        }
        if n + 1 == line {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && k.chars().all(is_bare_key_char));
        }
    }
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k.to_string(),
        (None, None) => "policy".to_string(),
    }
}

/// Whether `c` may appear in a bare TOML key.
pub(super) fn is_bare_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}
