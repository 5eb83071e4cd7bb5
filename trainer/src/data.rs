//! Plain data the learners consume: groups of scored samples that share a prompt.

use serde::{Deserialize, Serialize};

/// One sampled completion with its reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    pub completion_ids: Vec<u32>,
    /// Log-probability of each completion token under the policy that sampled it (the behaviour policy).
    pub behaviour_logprobs: Vec<f32>,
    pub reward: f64,
    /// Identity of the sample's idea (e.g. a hash of its canonical recipe): samples with equal keys are the same
    /// idea for the `diversity` estimator. None = unknown, distinct from every other sample.
    #[serde(default)]
    pub cluster: Option<u64>,
}

/// Samples of one prompt, scored: the unit GRPO computes advantages over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredGroup {
    pub prompt_ids: Vec<u32>,
    pub samples: Vec<ScoredSample>,
    /// Policy version that sampled the group (for staleness accounting).
    pub policy_version: u64,
    /// Temperature of the distribution the behaviour log-probs come from
    /// (`SamplingParams::logprob_temperature`); the learner scores at the same one.
    #[serde(default = "one")]
    pub temperature: f64,
}

fn one() -> f64 {
    1.0
}

impl ScoredGroup {
    pub fn rewards(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.reward).collect()
    }
}
