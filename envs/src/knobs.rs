//! Knob schemas: the typed, documented settings an idea may change.
//!
//! A schema is plain data (serialisable), so the same description drives validation, the `env show` table and the
//! ideator prompt, and an external `command` environment can declare its knobs in its TOML config.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The type and admissible values of one knob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KnobKind {
    /// A real number in `[min, max]`; `log` says the natural scale is logarithmic (learning rates).
    Float {
        min: f64,
        max: f64,
        #[serde(default)]
        log: bool,
    },
    /// An integer in `[min, max]`.
    Int { min: i64, max: i64 },
    /// `true` or `false`.
    Bool,
    /// One of a fixed list of strings.
    Choice { options: Vec<String> },
}

/// A knob's value. Untagged so that TOML/JSON `3e-3`, `4`, `true`, `"rope"` map to it directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KnobValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Choice(String),
}

impl KnobValue {
    /// The value as a float (ints widen); `None` for bools and choices.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            KnobValue::Float(x) => Some(*x),
            KnobValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The value as an integer; `None` for anything but an integer.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            KnobValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            KnobValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            KnobValue::Choice(s) => Some(s),
            _ => None,
        }
    }

    /// The value written as a TOML right-hand side (`3e-3`, `4`, `true`, `"rope"`), as an idea would write it.
    pub(crate) fn to_toml(&self) -> String {
        match self {
            KnobValue::Bool(b) => b.to_string(),
            KnobValue::Int(i) => i.to_string(),
            KnobValue::Float(x) => format_float(*x),
            KnobValue::Choice(s) => format!("{s:?}"),
        }
    }
}

impl fmt::Display for KnobValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_toml())
    }
}

/// A float written briefly but exactly enough to read back as a float (`0.001` -> `1e-3`, `1` -> `1.0`).
pub(crate) fn format_float(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-2 || x.abs() >= 1e5) {
        // Rust writes `1e-3`; TOML reads that back as a float.
        format!("{x:e}")
    } else {
        let s = format!("{x}");
        if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
            s
        } else {
            format!("{s}.0")
        }
    }
}

/// A condition under which a knob has an effect: another knob must hold one of the listed values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliesWhen {
    pub knob: String,
    pub any_of: Vec<KnobValue>,
}

/// One knob: name, type, default, one-line doc, and optional hints for example ideas.
///
/// In TOML: `{ name = "lr", kind = { type = "float", min = 1e-4, max = 1.0, log = true }, default = 0.1, doc = "..." }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knob {
    pub name: String,
    pub kind: KnobKind,
    pub default: KnobValue,
    /// One line: what the knob does.
    pub doc: String,
    /// Why a researcher might change it (used in the rationale of generated example ideas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Sensible alternative values for generated example ideas; empty means "sample from the range".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggest: Vec<KnobValue>,
    /// The knob only has an effect when another knob has one of some values; setting it otherwise is a conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applies_when: Option<AppliesWhen>,
}

impl Knob {
    pub fn float(name: &str, min: f64, max: f64, log: bool, default: f64, doc: &str) -> Knob {
        Knob::new(name, KnobKind::Float { min, max, log }, KnobValue::Float(default), doc)
    }

    pub fn int(name: &str, min: i64, max: i64, default: i64, doc: &str) -> Knob {
        Knob::new(name, KnobKind::Int { min, max }, KnobValue::Int(default), doc)
    }

    pub fn bool(name: &str, default: bool, doc: &str) -> Knob {
        Knob::new(name, KnobKind::Bool, KnobValue::Bool(default), doc)
    }

    pub fn choice(name: &str, options: &[&str], default: &str, doc: &str) -> Knob {
        let options = options.iter().map(|s| s.to_string()).collect();
        Knob::new(name, KnobKind::Choice { options }, KnobValue::Choice(default.into()), doc)
    }

    fn new(name: &str, kind: KnobKind, default: KnobValue, doc: &str) -> Knob {
        Knob { name: name.into(), kind, default, doc: doc.into(), why: None, suggest: Vec::new(), applies_when: None }
    }

    /// Builder: why one would change this knob.
    pub fn why(mut self, why: &str) -> Knob {
        self.why = Some(why.into());
        self
    }

    /// Builder: sensible alternative values for examples.
    pub(crate) fn suggest(mut self, values: Vec<KnobValue>) -> Knob {
        self.suggest = values;
        self
    }

    /// Builder: only meaningful when `knob` is one of `any_of`.
    pub(crate) fn applies_when(mut self, knob: &str, any_of: Vec<KnobValue>) -> Knob {
        self.applies_when = Some(AppliesWhen { knob: knob.into(), any_of });
        self
    }

    /// The type and range as a person reads it: `float in [1e-5, 1] (log)`, `one of "rope", "learned"`.
    pub(crate) fn type_text(&self) -> String {
        match &self.kind {
            KnobKind::Float { min, max, log } => {
                let log = if *log { ", log scale" } else { "" };
                format!("float in [{}, {}]{log}", format_float(*min), format_float(*max))
            }
            KnobKind::Int { min, max } => format!("int in [{min}, {max}]"),
            KnobKind::Bool => "true or false".into(),
            KnobKind::Choice { options } => {
                let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
                format!("one of {}", quoted.join(", "))
            }
        }
    }

    /// Checks (and normalises: an int given for a float knob becomes a float) a value against the knob's type.
    pub fn check(&self, value: &KnobValue) -> Result<KnobValue, String> {
        let wrong_type = || format!("`{}` must be {}, got {}", self.name, self.type_text(), describe(value));
        match (&self.kind, value) {
            (KnobKind::Float { min, max, .. }, KnobValue::Float(_) | KnobValue::Int(_)) => {
                let x = value.as_f64().expect("numeric");
                if !x.is_finite() || x < *min || x > *max {
                    return Err(format!(
                        "`{}` = {} is out of range: must be in [{}, {}]",
                        self.name,
                        value,
                        format_float(*min),
                        format_float(*max)
                    ));
                }
                Ok(KnobValue::Float(x))
            }
            (KnobKind::Int { min, max }, KnobValue::Int(i)) => {
                if i < min || i > max {
                    return Err(format!("`{}` = {i} is out of range: must be in [{min}, {max}]", self.name));
                }
                Ok(value.clone())
            }
            (KnobKind::Int { .. }, KnobValue::Float(x)) if x.fract() == 0.0 && x.abs() < 1e15 => {
                self.check(&KnobValue::Int(*x as i64))
            }
            (KnobKind::Bool, KnobValue::Bool(_)) => Ok(value.clone()),
            (KnobKind::Choice { options }, KnobValue::Choice(s)) => {
                if options.iter().any(|o| o == s) {
                    Ok(value.clone())
                } else {
                    let mut msg =
                        format!("`{}` = {:?} is not allowed: must be {}", self.name, clip(s, 40), self.type_text());
                    if let Some(close) = closest(s, options.iter().map(String::as_str)) {
                        msg.push_str(&format!(" (did you mean {close:?}?)"));
                    }
                    Err(msg)
                }
            }
            _ => Err(wrong_type()),
        }
    }
}

fn describe(value: &KnobValue) -> String {
    match value {
        KnobValue::Bool(b) => format!("the boolean {b}"),
        KnobValue::Int(i) => format!("the integer {i}"),
        KnobValue::Float(x) => format!("the float {}", format_float(*x)),
        KnobValue::Choice(s) => format!("the string {:?}", clip(s, 40)),
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut (error messages quote untrusted text).
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n).collect();
        out.push('…');
        out
    }
}

/// Levenshtein distance over characters.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`: by edit distance (case-insensitive) when it is close enough to be a typo (at most
/// half the word's length away), else a candidate related by abbreviation (`learning_rate` -> `lr`) or containment
/// (`warmup` -> `warmup_frac`).
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let limit = (lower.chars().count() / 2).max(2);
    let scored: Vec<(usize, &str)> = candidates.map(|c| (edit_distance(&lower, &c.to_lowercase()), c)).collect();
    let typo = scored.iter().filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d);
    let related = || scored.iter().filter(|(_, c)| related(&lower, &c.to_lowercase())).min_by_key(|(d, _)| *d);
    typo.or_else(related).map(|(_, c)| *c)
}

fn related(word: &str, candidate: &str) -> bool {
    let initials = |s: &str| s.split(['_', '-', ' ']).filter_map(|p| p.chars().next()).collect::<String>();
    (word.contains('_') && initials(word) == candidate)
        || (candidate.contains('_') && initials(candidate) == word)
        || (candidate.len() >= 3 && word.contains(candidate))
        || (word.len() >= 3 && candidate.contains(word))
}

/// An environment's knobs, in display order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub knobs: Vec<Knob>,
}

impl Schema {
    pub fn new(knobs: Vec<Knob>) -> Schema {
        Schema { knobs }
    }

    pub fn get(&self, name: &str) -> Option<&Knob> {
        self.knobs.iter().find(|k| k.name == name)
    }

    /// Every knob at its default.
    pub fn defaults(&self) -> BTreeMap<String, KnobValue> {
        self.knobs.iter().map(|k| (k.name.clone(), k.default.clone())).collect()
    }

    /// Replaces some defaults (a scale's baseline differs from the schema's, e.g. a wider model at `paper`).
    /// Panics on an unknown knob or an invalid value: overrides are written by the environment's author.
    pub(crate) fn with_defaults(mut self, overrides: &[(&str, KnobValue)]) -> Schema {
        for (name, value) in overrides {
            let knob = self.knobs.iter_mut().find(|k| k.name == *name);
            let knob = knob.unwrap_or_else(|| panic!("override of unknown knob {name}"));
            knob.default = knob.check(value).unwrap_or_else(|e| panic!("bad override: {e}"));
        }
        self
    }

    /// Checks that the schema itself is coherent: unique names, defaults and suggestions valid.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for knob in &self.knobs {
            if !seen.insert(knob.name.as_str()) {
                return Err(format!("knob `{}` is declared twice", knob.name));
            }
            if knob.name.is_empty() || !knob.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("knob name {:?} must be letters, digits and underscores", knob.name));
            }
            knob.check(&knob.default).map_err(|e| format!("default of {e}"))?;
            for s in &knob.suggest {
                knob.check(s).map_err(|e| format!("suggested value of {e}"))?;
            }
            if let KnobKind::Float { min, max, log } = knob.kind {
                if min > max || (log && min <= 0.0) {
                    return Err(format!("knob `{}` has an invalid range", knob.name));
                }
            }
            if let Some(cond) = &knob.applies_when {
                let other = self
                    .get(&cond.knob)
                    .ok_or_else(|| format!("knob `{}` depends on unknown knob `{}`", knob.name, cond.knob))?;
                for v in &cond.any_of {
                    other.check(v).map_err(|e| format!("condition of `{}`: {e}", knob.name))?;
                }
            }
        }
        Ok(())
    }

    /// The knobs as a Markdown table (name, type and range, default, what it does).
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("| knob | type | default | what it does |\n| --- | --- | --- | --- |\n");
        for k in &self.knobs {
            let mut doc = k.doc.clone();
            if let Some(cond) = &k.applies_when {
                let vals: Vec<String> = cond.any_of.iter().map(KnobValue::to_toml).collect();
                doc.push_str(&format!(" (only with {} = {})", cond.knob, vals.join(" or ")));
            }
            out.push_str(&format!("| `{}` | {} | `{}` | {} |\n", k.name, k.type_text(), k.default, doc));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_closest() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("learning_rat", ["lr", "learning_rate"].into_iter()), Some("learning_rate"));
        assert_eq!(closest("zzzzzzzz", ["lr", "beta1"].into_iter()), None);
        assert_eq!(closest("LR", ["lr", "beta1"].into_iter()), Some("lr"));
        assert_eq!(closest("learning_rate", ["lr", "beta1"].into_iter()), Some("lr"));
        assert_eq!(closest("warmup", ["warmup_frac", "lr"].into_iter()), Some("warmup_frac"));
        assert_eq!(closest("ema", ["ema_decay", "lr"].into_iter()), Some("ema_decay"));
    }

    #[test]
    fn floats_print_as_toml_floats() {
        for (x, s) in [(1e-3, "1e-3"), (1.0, "1.0"), (0.05, "0.05"), (10000.0, "10000.0"), (3e-4, "3e-4")] {
            assert_eq!(format_float(x), s);
            let parsed: toml::Table = format!("x = {s}").parse().unwrap();
            assert_eq!(parsed["x"].as_float(), Some(x));
        }
    }

    #[test]
    fn checks_normalise_and_explain() {
        let k = Knob::float("lr", 1e-5, 1.0, true, 1e-3, "rate");
        assert_eq!(k.check(&KnobValue::Int(1)), Ok(KnobValue::Float(1.0)));
        assert!(k.check(&KnobValue::Float(2.0)).unwrap_err().contains("out of range"));
        assert!(k.check(&KnobValue::Bool(true)).unwrap_err().contains("got the boolean true"));
        let n = Knob::int("n", 1, 4, 2, "n");
        assert_eq!(n.check(&KnobValue::Float(3.0)), Ok(KnobValue::Int(3)));
        assert!(n.check(&KnobValue::Float(3.5)).is_err());
    }

    #[test]
    fn schema_round_trips_through_toml_and_json() {
        let schema = Schema::new(vec![
            Knob::choice("norm", &["a", "b"], "a", "which"),
            Knob::float("x", 0.0, 1.0, false, 0.5, "x").applies_when("norm", vec![KnobValue::Choice("b".into())]),
        ]);
        schema.validate().unwrap();
        let json = serde_json::to_string(&schema).unwrap();
        assert_eq!(serde_json::from_str::<Schema>(&json).unwrap(), schema);
        let toml_text = toml::to_string(&schema).unwrap();
        assert_eq!(toml::from_str::<Schema>(&toml_text).unwrap(), schema);
        assert!(schema.to_markdown().contains("(only with norm = \"b\")"));
    }
}
