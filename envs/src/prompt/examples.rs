//! Example ideas for the ideator's supervised warm-up, as chat examples: varied, each valid for the environment's
//! schema, built from the knobs' suggestions and `why` lines.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{ideator_prompt, SYSTEM_PROMPT};
use crate::environment::{EnvError, Environment};
use crate::executor::implement;
use crate::knobs::{Knob, KnobKind, KnobValue};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One supervised example: system, user (the prompt) and assistant (the idea) turns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatExample {
    pub messages: Vec<Message>,
}

impl ChatExample {
    /// The assistant turn (the idea).
    pub fn idea(&self) -> &str {
        &self.messages.last().expect("three turns").content
    }
}

/// `n` varied example ideas, each valid for the environment at `scale`, as chat examples. Deterministic in `seed`.
///
/// Each idea changes one to three knobs to a sensible value (the knob's suggestions, or a value drawn around the
/// default within its range), sets the knobs a change depends on (e.g. `optimizer = "muon"` with `muon_lr`), and
/// explains itself with the knobs' `why` lines. Candidates that the executor rejects are discarded, so every
/// example is schema-valid and conflict-free. Duplicates are avoided while possible.
pub fn examples(env: &dyn Environment, scale: &str, n: usize, seed: u64) -> Result<Vec<ChatExample>, EnvError> {
    let prompt = ideator_prompt(env, scale)?;
    let schema = env.schema(scale)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::BTreeSet::new();
    let mut attempts = 0usize;
    while out.len() < n {
        attempts += 1;
        if attempts > 200 * n.max(1) + 1000 {
            return Err(EnvError::Config(format!(
                "could only generate {} valid example ideas out of {n} for {}; the schema leaves too few choices",
                out.len(),
                env.name()
            )));
        }
        let idea = random_idea(&schema.knobs, &mut rng);
        let Ok(recipe) = implement(env, &idea, scale) else { continue };
        if recipe.changed.is_empty() {
            continue;
        }
        // Repeats are allowed only after many tries (a small schema may not have n distinct ideas).
        if !seen.insert(recipe.changes_toml()) && attempts < 50 * n.max(1) {
            continue;
        }
        out.push(ChatExample {
            messages: vec![
                Message { role: "system".into(), content: SYSTEM_PROMPT.into() },
                Message { role: "user".into(), content: prompt.clone() },
                Message { role: "assistant".into(), content: idea },
            ],
        });
    }
    Ok(out)
}

/// The examples as JSON lines (`{"messages": [...]}` per line).
pub fn to_jsonl(examples: &[ChatExample]) -> String {
    examples.iter().map(|e| serde_json::to_string(e).expect("plain data") + "\n").collect()
}

fn random_idea(knobs: &[Knob], rng: &mut ChaCha8Rng) -> String {
    let count = *[1usize, 1, 2, 2, 3].choose(rng).expect("non-empty");
    let mut chosen: Vec<&Knob> = knobs.choose_multiple(rng, count.min(knobs.len())).collect();
    chosen.shuffle(rng);
    let mut lines: Vec<(String, KnobValue)> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for knob in chosen {
        if lines.iter().any(|(k, _)| *k == knob.name) {
            continue;
        }
        let Some(value) = random_value(knob, rng) else { continue };
        // A knob that only acts under another knob's value brings that setting along.
        let mut reason = rationale(knob, &value);
        if let Some(cond) = &knob.applies_when {
            if !lines.iter().any(|(k, _)| *k == cond.knob) {
                if let Some(v) = cond.any_of.choose(rng) {
                    reason = format!("With {} = {v}, {}", cond.knob, lower_first(&reason));
                    lines.push((cond.knob.clone(), v.clone()));
                }
            }
        }
        reasons.push(reason);
        lines.push((knob.name.clone(), value));
    }
    let mut idea = String::from("[Experiment]\n");
    idea.push_str(&reasons.join(" "));
    idea.push_str("\n[Code Changes]\n");
    for (k, v) in &lines {
        idea.push_str(&format!("{k} = {}\n", v.to_toml()));
    }
    idea.push_str("[End]");
    idea
}

fn rationale(knob: &Knob, value: &KnobValue) -> String {
    let direction = match (value.as_f64(), knob.default.as_f64()) {
        (Some(v), Some(d)) if v > d => "Raise",
        (Some(v), Some(d)) if v < d => "Lower",
        _ => "Set",
    };
    let why = knob.why.clone().unwrap_or_else(|| knob.doc.clone());
    let why = lower_first(why.trim().trim_end_matches('.'));
    format!("{direction} {} from {} to {}: {why}.", knob.name, knob.default, value)
}

/// Lower-cases the first letter unless the word is an acronym (`RMSNorm` stays).
fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match (c.next(), s.chars().nth(1)) {
        (Some(f), Some(second)) if !second.is_uppercase() => f.to_lowercase().collect::<String>() + c.as_str(),
        _ => s.to_string(),
    }
}

/// A value different from the default: a suggestion when the knob has some, else drawn around the default.
fn random_value(knob: &Knob, rng: &mut ChaCha8Rng) -> Option<KnobValue> {
    let candidates: Vec<&KnobValue> = knob.suggest.iter().filter(|v| **v != knob.default).collect();
    if !candidates.is_empty() {
        return candidates.choose(rng).map(|v| (*v).clone());
    }
    match &knob.kind {
        KnobKind::Bool => Some(KnobValue::Bool(!knob.default.as_bool()?)),
        KnobKind::Choice { options } => {
            let others: Vec<&String> = options.iter().filter(|o| Some(o.as_str()) != knob.default.as_str()).collect();
            others.choose(rng).map(|o| KnobValue::Choice((*o).clone()))
        }
        KnobKind::Float { min, max, log } => {
            let d = knob.default.as_f64()?;
            let x = if *log || d > 0.0 {
                // Within a factor of ten of the default, log-uniformly: the range researchers actually try.
                let f: f64 = rng.random_range(-1.0..1.0);
                let base = if d > 0.0 { d } else { (min * max).sqrt().max(1e-8) };
                base * 10f64.powf(f)
            } else {
                rng.random_range(*min..=*max)
            };
            let x = round_sig(x.clamp(*min, *max), 2);
            (x != d).then_some(KnobValue::Float(x))
        }
        KnobKind::Int { min, max } => {
            let d = knob.default.as_i64()?;
            let factor = *[0.5, 0.75, 1.5, 2.0].choose(rng)?;
            let v = ((d as f64 * factor).round() as i64).clamp(*min, *max);
            (v != d).then_some(KnobValue::Int(v))
        }
    }
}

/// `x` rounded to `digits` significant digits (so example values look like what people write).
fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let s = format!("{:.*e}", (digits - 1).max(0) as usize, x);
    s.parse().unwrap_or(x)
}
