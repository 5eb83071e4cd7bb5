//! Reading an idea's text: the `[Experiment]`, `[Code Changes]` and `[End]` sections, and the `key = value` lines
//! of Code Changes parsed as TOML. Nothing here interprets values; the executor validates them against a schema.
//!
//! Ideas are untrusted text (sampled from a language model): sizes are capped, and the text is only ever parsed,
//! never executed or used as a path or a command line.

use crate::knobs::{clip, KnobValue};
use std::collections::BTreeMap;

/// Largest idea accepted, in bytes.
pub(crate) const MAX_IDEA_BYTES: usize = 64 * 1024;
/// Largest `[Code Changes]` section accepted, in bytes.
pub(crate) const MAX_CODE_CHANGES_BYTES: usize = 4 * 1024;
/// Most `key = value` lines accepted in `[Code Changes]`.
pub(crate) const MAX_CHANGES: usize = 64;

/// The sections of an idea.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParsedIdea {
    /// The free text of `[Experiment]` (the rationale).
    pub experiment: String,
    /// The raw text of `[Code Changes]`, code fences removed.
    pub code_changes: String,
}

/// Finds the three markers (case-insensitive, in order) and returns the two sections.
pub(crate) fn split_sections(idea: &str) -> Result<ParsedIdea, String> {
    if idea.len() > MAX_IDEA_BYTES {
        return Err(format!("the idea is {} bytes long; at most {MAX_IDEA_BYTES} are accepted", idea.len()));
    }
    // ASCII lower-casing keeps byte offsets identical to the original text.
    let lower = idea.to_ascii_lowercase();
    let find = |marker: &str, from: usize| lower[from..].find(marker).map(|i| i + from);
    let exp = find("[experiment]", 0).ok_or("missing the [Experiment] section marker")?;
    let exp_body = exp + "[experiment]".len();
    let code = find("[code changes]", exp_body)
        .ok_or("missing the [Code Changes] section marker (it must come after [Experiment])")?;
    let code_body = code + "[code changes]".len();
    let end = find("[end]", code_body).ok_or("missing the [End] marker after [Code Changes]")?;
    let experiment = idea[exp_body..code].trim().to_string();
    let code_changes = strip_fences(&idea[code_body..end]);
    if code_changes.len() > MAX_CODE_CHANGES_BYTES {
        return Err(format!(
            "[Code Changes] is {} bytes long; at most {MAX_CODE_CHANGES_BYTES} are accepted",
            code_changes.len()
        ));
    }
    Ok(ParsedIdea { experiment, code_changes })
}

/// Removes Markdown code fence lines (```` ``` ````, ```` ```toml ````), which models often wrap settings in.
fn strip_fences(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("```")).collect::<Vec<_>>().join("\n").trim().to_string()
}

/// Parses `[Code Changes]` as TOML `key = value` lines into (key, value) pairs in a stable order.
pub(crate) fn parse_changes(code_changes: &str) -> Result<BTreeMap<String, KnobValue>, String> {
    let meaningful = code_changes.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    if meaningful == 0 {
        return Err("[Code Changes] is empty: write one `knob = value` line per change".into());
    }
    if meaningful > MAX_CHANGES {
        return Err(format!("[Code Changes] has {meaningful} lines; at most {MAX_CHANGES} are accepted"));
    }
    let table: toml::Table = code_changes.parse().map_err(|e: toml::de::Error| {
        format!(
            "[Code Changes] is not valid `key = value` TOML ({}); write lines like `lr = 3e-3` or `norm = \"rmsnorm\"`",
            clip(e.message(), 200)
        )
    })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let value = match value {
            toml::Value::Boolean(b) => KnobValue::Bool(b),
            toml::Value::Integer(i) => KnobValue::Int(i),
            toml::Value::Float(x) => KnobValue::Float(x),
            toml::Value::String(s) => KnobValue::Choice(s),
            other => {
                return Err(format!(
                    "`{}` has a {} value; only numbers, true/false and quoted strings are allowed",
                    clip(&key, 40),
                    other.type_str()
                ))
            }
        };
        out.insert(key, value);
    }
    Ok(out)
}
