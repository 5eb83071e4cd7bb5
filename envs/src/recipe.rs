//! A validated recipe: every knob of an environment with a value, and the set of knobs the idea changed.

use crate::knobs::{KnobValue, Schema};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// All knobs with values (the scale's baseline, overridden by the idea), plus what the idea set explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub values: BTreeMap<String, KnobValue>,
    /// The knobs the idea wrote in `[Code Changes]`, with their values.
    pub set: BTreeMap<String, KnobValue>,
    /// The knobs whose value differs from the baseline: the idea's *category* (diagnostics count these).
    pub changed: BTreeSet<String>,
    /// The idea text this recipe was implemented from (empty for a baseline); environments that hand the idea
    /// to an external program need it.
    #[serde(default)]
    pub idea: String,
}

impl Recipe {
    /// The baseline of a schema: every knob at its default, nothing changed.
    pub fn baseline(schema: &Schema) -> Recipe {
        Recipe { values: schema.defaults(), set: BTreeMap::new(), changed: BTreeSet::new(), idea: String::new() }
    }

    /// The baseline with `set` applied (values must already be checked against the schema).
    pub fn with_changes(schema: &Schema, set: BTreeMap<String, KnobValue>) -> Recipe {
        let mut recipe = Recipe::baseline(schema);
        for (k, v) in &set {
            if recipe.values.get(k) != Some(v) {
                recipe.changed.insert(k.clone());
            }
            recipe.values.insert(k.clone(), v.clone());
        }
        recipe.set = set;
        recipe
    }

    pub fn get(&self, name: &str) -> Option<&KnobValue> {
        self.values.get(name)
    }

    fn expect(&self, name: &str) -> &KnobValue {
        self.values.get(name).unwrap_or_else(|| panic!("recipe has no knob `{name}` (environment bug)"))
    }

    /// A float knob (ints widen). Panics when the knob is missing or not numeric: that is a bug in the environment,
    /// not in the idea, and the executor turns the panic into a runtime error.
    pub fn f(&self, name: &str) -> f64 {
        self.expect(name).as_f64().unwrap_or_else(|| panic!("knob `{name}` is not numeric"))
    }

    /// An int knob (panics like [`Recipe::f`]).
    pub fn i(&self, name: &str) -> i64 {
        self.expect(name).as_i64().unwrap_or_else(|| panic!("knob `{name}` is not an integer"))
    }

    /// A bool knob (panics like [`Recipe::f`]).
    pub fn b(&self, name: &str) -> bool {
        self.expect(name).as_bool().unwrap_or_else(|| panic!("knob `{name}` is not a boolean"))
    }

    /// A choice knob (panics like [`Recipe::f`]).
    pub fn s(&self, name: &str) -> &str {
        self.expect(name).as_str().unwrap_or_else(|| panic!("knob `{name}` is not a choice"))
    }

    /// Whether the idea wrote this knob explicitly.
    pub fn is_set(&self, name: &str) -> bool {
        self.set.contains_key(name)
    }

    /// The changed knobs as `key = value` TOML lines (a canonical form of the idea's settings).
    pub fn changes_toml(&self) -> String {
        self.changed.iter().map(|k| format!("{k} = {}\n", self.values[k])).collect()
    }
}
