//! `toy`: a synthetic environment whose reward is computed instantly from the recipe — a smooth bowl around a
//! hidden best recipe. It drives the RL loop in tests and quickstarts where real training runs would be too
//! slow, while exercising the same path as real environments (idea parsing, knob validation, failure causes).
//!
//! Reward = exp(-sum_i w_i d_i^2), where d_i is how far knob i is from its best value in its natural unit
//! (decades for the learning rate, hundreds of steps for warm-up, ...). The baseline scores about 0.19; the
//! best recipe scores 1.

use std::collections::BTreeMap;

use crate::environment::{EnvError, Environment, RunContext, ScaleInfo};
use crate::knobs::{Knob, Schema};
use crate::recipe::Recipe;
use crate::result::ExecResult;

pub struct Toy;

const SCHEDULES: [&str; 4] = ["constant", "linear", "cosine", "wsd"];

impl Toy {
    fn schema() -> Schema {
        Schema::new(vec![
            Knob::float("lr", 1e-5, 1.0, true, 3e-4, "peak learning rate")
                .why("the learning rate is the knob a short run is most sensitive to"),
            Knob::int("warmup_steps", 0, 2000, 0, "linear warm-up steps").why("warm-up keeps early updates stable"),
            Knob::float("weight_decay", 0.0, 0.5, false, 0.0, "decoupled weight decay")
                .why("decay regularises and keeps weights small"),
            Knob::choice("schedule", &SCHEDULES, "constant", "learning-rate schedule after warm-up")
                .why("decaying the rate at the end usually lowers the final loss"),
            Knob::int("batch_size", 4, 512, 16, "sequences per step").why("larger batches give less noisy gradients"),
            Knob::float("grad_clip", 0.0, 10.0, false, 0.0, "global gradient-norm clip (0 = off)")
                .why("clipping tames loss spikes"),
        ])
    }

    /// Reward of a recipe and the per-knob distances (for metrics).
    pub fn score(recipe: &Recipe) -> (f64, BTreeMap<String, f64>) {
        let mut d = BTreeMap::new();
        d.insert("lr".to_string(), (recipe.f("lr").log10() - 3e-3f64.log10()) / 0.5);
        d.insert("warmup_steps".to_string(), (recipe.i("warmup_steps") as f64 - 200.0) / 200.0);
        d.insert("weight_decay".to_string(), (recipe.f("weight_decay") - 0.1) / 0.1);
        let schedule_gap = match recipe.s("schedule") {
            "cosine" => 0.0,
            "wsd" => 0.3,
            "linear" => 0.5,
            _ => 1.0,
        };
        d.insert("schedule".to_string(), schedule_gap);
        d.insert("batch_size".to_string(), ((recipe.i("batch_size") as f64).log2() - 6.0) / 2.0);
        d.insert("grad_clip".to_string(), (recipe.f("grad_clip") - 1.0) / 2.0);
        let energy: f64 = d.values().map(|x| 0.25 * x * x).sum();
        ((-energy).exp(), d)
    }
}

impl Environment for Toy {
    fn name(&self) -> &str {
        "toy"
    }

    fn description(&self) -> String {
        "A synthetic training recipe scored instantly: the reward (between 0 and 1) measures how close the \
         recipe's knobs are to an unknown best recipe for training a small language model. Change one or a few \
         knobs that you expect to help."
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
        let (reward, distances) = Self::score(recipe);
        let metrics = distances.into_iter().map(|(k, v)| (format!("distance_{k}"), v.abs())).collect();
        ExecResult::ok(reward, metrics, format!("toy reward {reward:.4}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::execute;

    fn run(idea: &str) -> ExecResult {
        execute(&Toy, idea, &RunContext::new("tiny", 0, std::env::temp_dir()))
    }

    #[test]
    fn better_recipes_score_higher_and_the_best_scores_one() {
        let baseline = Toy::score(&Recipe::baseline(&Toy::schema())).0;
        assert!((0.1..0.3).contains(&baseline), "{baseline}");
        let one = run("[Experiment] x\n[Code Changes]\nschedule = \"cosine\"\n[End]");
        assert!(one.reward > baseline);
        let best = run(
            "[Experiment] all\n[Code Changes]\nlr = 3e-3\nwarmup_steps = 200\nweight_decay = 0.1\nschedule = \"cosine\"\n\
             batch_size = 64\ngrad_clip = 1.0\n[End]",
        );
        assert!((best.reward - 1.0).abs() < 1e-9, "{}", best.reward);
        let worse = run("[Experiment] x\n[Code Changes]\nlr = 0.9\n[End]");
        assert!(worse.reward < baseline);
    }

    #[test]
    fn broken_ideas_fail_with_reward_zero() {
        let r = run("[Experiment] x\n[Code Changes]\nlearning_rate = 1e-3\n[End]");
        assert_eq!(r.reward, 0.0);
        assert!(!r.is_ok());
    }
}
