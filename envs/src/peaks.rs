//! `peaks`: a synthetic environment with rare peaks, scored instantly and deterministically from the recipe. A
//! common, easily found recipe (tune the learning rate, decay it) gives a moderate reward; two rare combinations
//! of architecture and optimiser choices give much higher ones, while each of their parts alone *lowers* the
//! reward. It is the landscape where raising the mean reward collapses onto the common recipe and raising the
//! best of N should not: the test bed of issue 17's objectives.
//!
//! Formula (ENVIRONMENTS.md): with fit(t) = exp(-((log10 lr - log10 t) / 0.5)^2),
//! - common = (0.25 + 0.15 fit(3e-3) + 0.10 gain(schedule)) * 0.8^exotic, gain = cosine 1, linear or wsd 0.6,
//!   constant 0, and exotic = how many of optimizer, activation, norm differ from adamw, gelu, layernorm;
//! - peak A: optimizer = muon, activation = relu2, norm = rmsnorm: 1.0 * (0.5 + 0.5 fit(2e-2));
//! - peak B: optimizer = lion, activation = swiglu, norm = rmsnorm: 0.8 * (0.5 + 0.5 fit(3e-4));
//! - reward = the peak's value when the recipe is one, else common.
//!
//! The baseline scores 0.253, the best common recipe 0.5, peak B up to 0.8 and peak A up to 1.0. A uniformly
//! random choice of the three categorical knobs hits peak A 1 time in 24.

use std::collections::BTreeMap;

use crate::environment::{EnvError, Environment, RunContext, ScaleInfo};
use crate::knobs::{Knob, Schema};
use crate::recipe::Recipe;
use crate::result::ExecResult;

pub struct Peaks;

pub const SCHEDULES: [&str; 4] = ["constant", "linear", "cosine", "wsd"];
pub const OPTIMIZERS: [&str; 4] = ["adamw", "lion", "muon", "sgd"];
pub const ACTIVATIONS: [&str; 3] = ["gelu", "relu2", "swiglu"];
pub const NORMS: [&str; 2] = ["layernorm", "rmsnorm"];

/// A rare combination: its three categorical choices, its height and the learning rate it wants.
struct Peak {
    optimizer: &'static str,
    activation: &'static str,
    norm: &'static str,
    height: f64,
    lr: f64,
}

const PEAKS: [Peak; 2] = [
    Peak { optimizer: "muon", activation: "relu2", norm: "rmsnorm", height: 1.0, lr: 2e-2 },
    Peak { optimizer: "lion", activation: "swiglu", norm: "rmsnorm", height: 0.8, lr: 3e-4 },
];

/// exp(-((log10 lr - log10 target) / 0.5)^2): 1 at the target, 0.37 half a decade away.
fn fit(lr: f64, target: f64) -> f64 {
    (-((lr.log10() - target.log10()) / 0.5).powi(2)).exp()
}

impl Peaks {
    pub fn schema() -> Schema {
        Schema::new(vec![
            Knob::float("lr", 1e-5, 1.0, true, 3e-4, "peak learning rate")
                .why("the learning rate is the knob a short run is most sensitive to"),
            Knob::choice("schedule", &SCHEDULES, "constant", "learning-rate schedule")
                .why("decaying the rate at the end usually lowers the final loss"),
            Knob::choice("optimizer", &OPTIMIZERS, "adamw", "optimiser")
                .why("some optimisers train faster, but only with the right architecture"),
            Knob::choice("activation", &ACTIVATIONS, "gelu", "MLP activation")
                .why("the activation changes how well the MLP uses its width"),
            Knob::choice("norm", &NORMS, "layernorm", "normalisation layer").why("normalisation affects stability"),
            Knob::int("warmup_steps", 0, 2000, 0, "linear warm-up steps (no effect here)")
                .why("warm-up keeps early updates stable"),
        ])
    }

    /// Reward of a recipe (see the module doc) and which peak it is on (0 = none, 1 = A, 2 = B).
    pub fn score(recipe: &Recipe) -> (f64, usize) {
        let (opt, act, norm, lr) = (recipe.s("optimizer"), recipe.s("activation"), recipe.s("norm"), recipe.f("lr"));
        for (i, p) in PEAKS.iter().enumerate() {
            if opt == p.optimizer && act == p.activation && norm == p.norm {
                return (p.height * (0.5 + 0.5 * fit(lr, p.lr)), i + 1);
            }
        }
        let gain = match recipe.s("schedule") {
            "cosine" => 1.0,
            "linear" | "wsd" => 0.6,
            _ => 0.0,
        };
        let exotic = [opt != "adamw", act != "gelu", norm != "layernorm"].iter().filter(|&&e| e).count();
        ((0.25 + 0.15 * fit(lr, 3e-3) + 0.10 * gain) * 0.8f64.powi(exotic as i32), 0)
    }
}

impl Environment for Peaks {
    fn name(&self) -> &str {
        "peaks"
    }

    fn description(&self) -> String {
        "A synthetic training recipe scored instantly: the reward (between 0 and 1) measures how well a small \
         language model would train with the recipe. Most changes help a little; a few rare combinations of \
         optimiser, activation and normalisation work much better than anything else."
            .into()
    }

    fn scales(&self) -> Vec<ScaleInfo> {
        vec![ScaleInfo { name: "tiny".into(), doc: "instant: an analytic function of the knobs".into() }]
    }

    fn schema(&self, scale: &str) -> Result<Schema, EnvError> {
        self.check_scale(scale)?;
        Ok(Self::schema())
    }

    fn plausible_reward(&self, _scale: &str) -> (f64, f64) {
        (0.0, 1.0)
    }

    fn example_idea(&self) -> String {
        "[Experiment]\nDecay the learning rate with a cosine schedule so the last steps take small, precise \
         updates.\n[Code Changes]\nschedule = \"cosine\"\n[End]"
            .into()
    }

    fn run(&self, recipe: &Recipe, _ctx: &RunContext) -> ExecResult {
        let (reward, peak) = Self::score(recipe);
        let metrics = BTreeMap::from([("peak".to_string(), peak as f64)]);
        ExecResult::ok(reward, metrics, format!("peaks reward {reward:.4}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::execute;

    fn run(changes: &str) -> ExecResult {
        execute(
            &Peaks,
            &format!("[Experiment] x\n[Code Changes]\n{changes}\n[End]"),
            &RunContext::new("tiny", 0, std::env::temp_dir()),
        )
    }

    #[test]
    fn the_common_recipe_is_moderate_and_the_rare_peaks_are_high() {
        let baseline = Peaks::score(&Recipe::baseline(&Peaks::schema())).0;
        assert!((baseline - 0.2527).abs() < 1e-3, "{baseline}");
        let common = run("lr = 3e-3\nschedule = \"cosine\"");
        assert!((common.reward - 0.5).abs() < 1e-12, "{}", common.reward);
        let a = run("optimizer = \"muon\"\nactivation = \"relu2\"\nnorm = \"rmsnorm\"\nlr = 2e-2");
        assert!((a.reward - 1.0).abs() < 1e-12 && a.metrics["peak"] == 1.0);
        let b = run("optimizer = \"lion\"\nactivation = \"swiglu\"\nnorm = \"rmsnorm\"");
        assert!((b.reward - 0.8).abs() < 1e-12 && b.metrics["peak"] == 2.0);
    }

    #[test]
    fn part_of_a_peak_is_worse_than_none_of_it() {
        let common = run("lr = 3e-3\nschedule = \"cosine\"").reward;
        let part = run("lr = 3e-3\nschedule = \"cosine\"\noptimizer = \"muon\"\nactivation = \"relu2\"").reward;
        assert!((part - 0.64 * common).abs() < 1e-12, "{part}");
        assert_eq!(run("optimizer = \"adam\"").reward, 0.0);
    }
}
