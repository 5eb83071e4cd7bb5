//! `[rl]`: the RL loop's own settings (the learner's are `[grpo]` and `[optim]`, the sampler's `[sampling]`, the
//! pipeline's `[pipeline]`). The loop itself is the asynchronous [`crate::pipeline`] with a
//! [`crate::pipeline::grpo::GrpoAgent`] as its learner.

use ideator_checkpoints::RetentionPolicy;
use serde::{Deserialize, Serialize};

use crate::pipeline::reward::RewardMode;
use crate::{Result, RolloutError};

pub use crate::pipeline::{IdeaRecord, StepReport};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// Policy updates in the run.
    pub steps: u64,
    /// Groups (of `grpo.group_size` ideas each) per update.
    pub groups_per_step: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    pub retention: RetentionPolicy,
    /// What the learner is given for an idea: `raw` (the environment's score), `improvement` (score minus the
    /// baseline recipe's score at the same seed) or `positive_improvement` (that, floored at 0). The relative
    /// modes give every group a reference run of the baseline.
    pub reward: RewardMode,
    /// Seeds the baseline recipe runs at before training, once per run store, to measure the environment's noise
    /// floor (0: skip; the per-step `frac_reward_within_noise` then needs a store that measured it earlier).
    pub noise_floor_seeds: usize,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig {
            steps: 20,
            groups_per_step: 1,
            checkpoint_every: 5,
            retention: RetentionPolicy::default(),
            reward: RewardMode::Raw,
            noise_floor_seeds: crate::baseline::NOISE_FLOOR_SEEDS,
        }
    }
}

impl RlConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.groups_per_step == 0 || self.checkpoint_every == 0 {
            return Err(RolloutError::Config(
                "rl.steps, rl.groups_per_step and rl.checkpoint_every must be at least 1".into(),
            ));
        }
        if self.noise_floor_seeds == 1 || self.noise_floor_seeds > MAX_NOISE_FLOOR_SEEDS {
            return Err(RolloutError::Config(format!(
                "rl.noise_floor_seeds = {} must be 0 (skip) or between 2 (a spread needs two runs) and \
                 {MAX_NOISE_FLOOR_SEEDS}",
                self.noise_floor_seeds
            )));
        }
        Ok(())
    }
}

/// The most seeds the baseline may be run at to measure the noise floor (each seed is one execution).
pub const MAX_NOISE_FLOOR_SEEDS: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_floor_seeds_are_zero_or_a_sensible_count() {
        for ok in [0, 2, 8, MAX_NOISE_FLOOR_SEEDS] {
            assert!(RlConfig { noise_floor_seeds: ok, ..Default::default() }.validate().is_ok(), "{ok}");
        }
        for bad in [1, MAX_NOISE_FLOOR_SEEDS + 1, usize::MAX] {
            let err = RlConfig { noise_floor_seeds: bad, ..Default::default() }.validate().unwrap_err().to_string();
            assert!(err.contains("rl.noise_floor_seeds"), "{err}");
        }
    }
}
