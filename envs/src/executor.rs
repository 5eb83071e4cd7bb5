//! The executor: implements an idea (parse, validate, resolve conflicts) and runs it, turning every way a run can
//! go wrong into a recorded failure with reward 0 (never a panic in the caller).

use crate::environment::{Environment, RunContext};
use crate::idea::{parse_changes, split_sections, MAX_IDEA_BYTES};
use crate::knobs::{clip, closest, Schema};
use crate::recipe::Recipe;
use crate::result::{ExecResult, FailureCause};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// Most validation problems listed in one implementation failure.
const MAX_REASONS: usize = 5;

/// Why an idea could not be implemented, readable by a person (and by the ideator in a later prompt).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct ImplementationError {
    pub reason: String,
}

fn fail(reason: impl Into<String>) -> ImplementationError {
    ImplementationError { reason: reason.into() }
}

/// Implements an idea against an environment's schema at a scale: a complete recipe, or the reason why not.
pub fn implement(env: &dyn Environment, idea: &str, scale: &str) -> Result<Recipe, ImplementationError> {
    let schema = env.schema(scale).map_err(|e| fail(e.to_string()))?;
    let recipe = implement_with_schema(&schema, idea)?;
    check_applies_when(&schema, &recipe)?;
    env.check_conflicts(&recipe, scale).map_err(|r| fail(format!("conflicting knobs: {r}")))?;
    Ok(recipe)
}

/// Parses and type-checks an idea against a schema (no cross-knob conflicts). A schema without knobs means the
/// environment takes free-form changes (e.g. a diff for an external program): the sections must exist and
/// `[Code Changes]` must not be empty, but its text is not parsed.
pub(crate) fn implement_with_schema(schema: &Schema, idea: &str) -> Result<Recipe, ImplementationError> {
    let sections = split_sections(idea).map_err(fail)?;
    if schema.knobs.is_empty() {
        if sections.code_changes.trim().is_empty() {
            return Err(fail("[Code Changes] is empty: describe the change to make"));
        }
        let mut recipe = Recipe::baseline(schema);
        recipe.idea = idea.to_string();
        return Ok(recipe);
    }
    let changes = parse_changes(&sections.code_changes).map_err(fail)?;
    let mut reasons = Vec::new();
    let mut checked = std::collections::BTreeMap::new();
    for (key, value) in changes {
        match schema.get(&key) {
            None => {
                let mut msg = format!("unknown knob `{}`", clip(&key, 40));
                if let Some(close) = closest(&key, schema.knobs.iter().map(|k| k.name.as_str())) {
                    msg.push_str(&format!(" (did you mean `{close}`?)"));
                }
                reasons.push(msg);
            }
            Some(knob) => match knob.check(&value) {
                Ok(v) => {
                    checked.insert(key, v);
                }
                Err(e) => reasons.push(e),
            },
        }
    }
    if !reasons.is_empty() {
        let extra = reasons.len().saturating_sub(MAX_REASONS);
        let mut msg = reasons.into_iter().take(MAX_REASONS).collect::<Vec<_>>().join("; ");
        if extra > 0 {
            msg.push_str(&format!("; and {extra} more"));
        }
        return Err(fail(msg));
    }
    let mut recipe = Recipe::with_changes(schema, checked);
    recipe.idea = idea.to_string();
    Ok(recipe)
}

/// A knob set explicitly while the knob it depends on makes it meaningless is a conflict (e.g. `muon_lr` without
/// `optimizer = "muon"`): the idea would not do what it says.
fn check_applies_when(schema: &Schema, recipe: &Recipe) -> Result<(), ImplementationError> {
    for name in recipe.set.keys() {
        let Some(cond) = schema.get(name).and_then(|k| k.applies_when.as_ref()) else { continue };
        let actual = recipe.get(&cond.knob);
        if !cond.any_of.iter().any(|v| Some(v) == actual) {
            let want: Vec<String> = cond.any_of.iter().map(|v| v.to_toml()).collect();
            return Err(fail(format!(
                "conflicting knobs: `{name}` only has an effect with {} = {}, but {} = {}",
                cond.knob,
                want.join(" or "),
                cond.knob,
                actual.map(|v| v.to_toml()).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Implements and runs an idea. Never panics; every failure is an [`ExecResult`] with reward 0 and a cause.
pub fn execute(env: &dyn Environment, idea: &str, ctx: &RunContext) -> ExecResult {
    let start = Instant::now();
    let mut result = match implement(env, idea, &ctx.scale) {
        Ok(recipe) => {
            let mut r = run_recipe(env, &recipe, ctx);
            // Environments without knobs (codebase) report the code units they changed themselves.
            if !recipe.changed.is_empty() {
                r.changed = recipe.changed.iter().cloned().collect();
            }
            r
        }
        Err(e) => env.not_implemented(ExecResult::failed(FailureCause::Implementation, e.reason)),
    };
    result.seconds = start.elapsed().as_secs_f64();
    result
}

/// Like [`execute`], for an idea read as raw bytes (from a file): invalid UTF-8 or an oversized file is an
/// implementation failure with a readable reason.
pub fn execute_bytes(env: &dyn Environment, idea: &[u8], ctx: &RunContext) -> ExecResult {
    match idea_text(idea) {
        Ok(text) => execute(env, text, ctx),
        Err(reason) => env.not_implemented(ExecResult::failed(FailureCause::Implementation, reason)),
    }
}

/// Checks an idea file's bytes: size cap and UTF-8.
pub(crate) fn idea_text(bytes: &[u8]) -> Result<&str, String> {
    if bytes.len() > MAX_IDEA_BYTES {
        return Err(format!("the idea is {} bytes long; at most {MAX_IDEA_BYTES} are accepted", bytes.len()));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        format!("the idea is not valid UTF-8 text (invalid byte at offset {}); write it as UTF-8", e.valid_up_to())
    })
}

/// Runs a validated recipe: catches panics (runtime error), applies the plausibility guard, and times the run.
pub fn run_recipe(env: &dyn Environment, recipe: &Recipe, ctx: &RunContext) -> ExecResult {
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| env.run(recipe, ctx)));
    let mut result = match outcome {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            ExecResult::failed(FailureCause::RuntimeError, format!("the run panicked: {msg}"))
        }
    };
    if result.is_ok() {
        let (lo, hi) = env.plausible_reward(&ctx.scale);
        if !result.reward.is_finite() || result.reward < lo || result.reward > hi {
            let msg = format!(
                "reward {} is outside the plausible range [{lo}, {hi}] for {} at scale {}; not rewarded",
                result.reward,
                env.name(),
                ctx.scale
            );
            let reward = result.reward;
            result = result.into_failure(FailureCause::Implausible, msg);
            if reward.is_finite() {
                result.metrics.insert("implausible_reward".into(), reward);
            }
        }
    } else {
        result.reward = 0.0;
    }
    result.seconds = start.elapsed().as_secs_f64();
    result
}
