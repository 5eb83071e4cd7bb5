//! What an execution's reward becomes before a learner sees it, and which executions share a seed.
//!
//! Common random numbers: executions that are compared with one another run at the same environment seed, so
//! that their difference is the recipes' and not the seeds' (the pretrain `tiny` baseline alone spreads over
//! 0.3802-0.3810 across seeds, which std-scaled GRPO advantages would turn into full-size signal). Every idea of a
//! group runs at the group's seed, and so does the group's reference run (the baseline recipe); in evolutionary
//! search every group of an epoch shares the epoch's seed. The seed changes from group to group (epoch to epoch),
//! so the policy does not learn one seed's noise.

use serde::{Deserialize, Serialize};

use super::mix;

/// Which executions share an environment seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeedScope {
    /// Every group has its own seed, shared by its ideas and its reference run (GRPO: advantages compare the
    /// ideas of a group; baseline runs at several seeds for the noise floor).
    #[default]
    Group,
    /// Every group of a step (an evolution epoch, an evaluation) shares the step's seed.
    Step,
}

/// The environment seed of group `seq` of a run with seed `run_seed` and `groups_per_step` groups per step.
/// Distinct from the group's sampling seed (`mix(run_seed, seq)`), so that sampling and execution draw
/// independent streams.
pub fn env_seed(run_seed: u64, scope: SeedScope, seq: u64, groups_per_step: usize) -> u64 {
    let unit = match scope {
        SeedScope::Group => seq,
        SeedScope::Step => seq / groups_per_step.max(1) as u64,
    };
    // Salted so that the environment's stream never coincides with the sampler's.
    mix(mix(run_seed, 0x454E_565F_5345_4544), unit)
}

/// `[rl] reward`: what the learner is given for an idea whose execution scored `r`, against the reference run
/// `b` (the baseline recipe at the same seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardMode {
    /// The environment's score as is (0 for a failure).
    #[default]
    Raw,
    /// `r - b`: the improvement over the baseline at the same seed (a failure scores `-b`).
    Improvement,
    /// `max(0, r - b)`: only improvements count; a failure and a recipe worse than the baseline both score 0,
    /// so a failure's 0 no longer dwarfs the differences between working recipes (1/loss values are compressed
    /// into a narrow band).
    PositiveImprovement,
}

impl RewardMode {
    /// Whether groups need a reference run.
    pub fn needs_reference(self) -> bool {
        self != RewardMode::Raw
    }

    /// The learner's reward for score `r` given the reference score `b`; `None` when the mode needs a reference
    /// and there is none (the reference run failed), so the group cannot be scored.
    pub fn shape(self, r: f64, b: Option<f64>) -> Option<f64> {
        match self {
            RewardMode::Raw => Some(r),
            RewardMode::Improvement => b.map(|b| r - b),
            RewardMode::PositiveImprovement => b.map(|b| (r - b).max(0.0)),
        }
    }
}

/// Whether the spread of a group's rewards (max - min) is within `noise`, the environment's seed-to-seed
/// standard deviation of a fixed recipe: such a group's ranking would be mostly noise were its ideas run at
/// different seeds.
pub(crate) fn within_noise(rewards: &[f64], noise: f64) -> bool {
    let (lo, hi) = rewards.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &r| (l.min(r), h.max(r)));
    rewards.is_empty() || hi - lo <= noise
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_share_a_seed_within_their_scope_and_not_across() {
        let g: Vec<u64> = (0..6).map(|s| env_seed(7, SeedScope::Group, s, 3)).collect();
        assert!(g.windows(2).all(|w| w[0] != w[1]));
        let e: Vec<u64> = (0..6).map(|s| env_seed(7, SeedScope::Step, s, 3)).collect();
        assert_eq!(e[0], e[2]);
        assert_eq!(e[3], e[5]);
        assert_ne!(e[2], e[3]);
        assert_ne!(env_seed(7, SeedScope::Group, 0, 1), mix(7, 0), "the sampling seed of the group");
        assert_ne!(env_seed(8, SeedScope::Group, 0, 1), env_seed(7, SeedScope::Group, 0, 1));
    }

    #[test]
    fn reward_modes_by_hand() {
        assert_eq!(RewardMode::Raw.shape(0.4, None), Some(0.4));
        assert_eq!(RewardMode::Improvement.shape(0.4, Some(0.38)).map(|x| (x * 100.0).round()), Some(2.0));
        assert_eq!(RewardMode::Improvement.shape(0.0, Some(0.38)), Some(-0.38));
        assert_eq!(RewardMode::PositiveImprovement.shape(0.0, Some(0.38)), Some(0.0));
        assert_eq!(RewardMode::PositiveImprovement.shape(0.36, Some(0.38)), Some(0.0));
        assert!(RewardMode::PositiveImprovement.shape(0.5, Some(0.38)).unwrap() > 0.11);
        assert_eq!(RewardMode::Improvement.shape(0.4, None), None);
        assert!(!RewardMode::Raw.needs_reference() && RewardMode::Improvement.needs_reference());
    }

    #[test]
    fn within_noise_compares_the_range() {
        assert!(within_noise(&[0.38, 0.3805, 0.381], 0.0011));
        assert!(!within_noise(&[0.38, 0.3805, 0.382], 0.0011));
        assert!(within_noise(&[0.5; 4], 0.0));
    }
}
