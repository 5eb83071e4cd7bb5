//! Advantage estimators: a group's rewards in, one advantage per sample out, chosen by name
//! (`[grpo] advantage_estimator`), in the shape of verl's `core_algos.py` registry (`register_adv_est` /
//! `get_adv_estimator_fn`): one pure function per estimator, all with the signature `AdvantageFn`.
//!
//! Convention shared by every estimator (so that they compose with the same loss, clipping, KL and aggregation):
//! with n samples x_1..x_n of one prompt, the estimator's advantages A_i satisfy
//! E[(1/n) sum_i A_i grad log p(x_i)] = grad J for its objective J (the sequence-mean aggregation averages over
//! the group's samples). `grpo` with the leave-one-out baseline has `J = E[r]`; `max_k` has `J = E[max of k]`; ...
//! Dividing by the group's std (`scale_rewards`) rescales each group by a positive number that depends on the
//! draw, which keeps each group's direction but makes the expectation only approximately proportional to grad J
//! (it is how GRPO and verl's `grpo_passk` scale); the exactness tests run with it off.

mod max_k;
mod reshape;
mod risk;

use crate::config::{AdvantageEstimator, Baseline, GrpoConfig};
use crate::data::ScoredGroup;

pub use max_k::max_at_k_estimate;

/// Added to the std before dividing, as in GRPO implementations.
pub(crate) const STD_EPS: f64 = 1e-4;

/// What an estimator sees of one group: rewards, and what some estimators need besides (all of length n).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInput {
    /// Reward of each sample (failed executions score 0).
    pub rewards: Vec<f64>,
    /// Identity of each sample's idea (e.g. the hash of its canonical recipe); equal keys are the same idea for
    /// `diversity`. None counts as distinct from every other sample.
    pub clusters: Vec<Option<u64>>,
    /// Log-likelihood of each sample under the behaviour policy (sum of its tokens' log-probs, nats), for
    /// `unlikeliness`.
    pub seq_logprobs: Vec<f64>,
}

impl GroupInput {
    /// Rewards only: no cluster keys, equal likelihoods.
    pub fn from_rewards(rewards: &[f64]) -> Self {
        GroupInput {
            rewards: rewards.to_vec(),
            clusters: vec![None; rewards.len()],
            seq_logprobs: vec![0.0; rewards.len()],
        }
    }

    pub(crate) fn from_group(group: &ScoredGroup) -> Self {
        GroupInput {
            rewards: group.rewards(),
            clusters: group.samples.iter().map(|s| s.cluster).collect(),
            seq_logprobs: group
                .samples
                .iter()
                .map(|s| s.behaviour_logprobs.iter().map(|&l| l as f64).sum())
                .collect(),
        }
    }
}

/// One group's advantages and the estimator's own metrics (names are `estimator/quantity`, averaged over the
/// step's groups by the learner).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupAdvantages {
    pub advantages: Vec<f64>,
    pub metrics: Vec<(&'static str, f64)>,
}

/// An estimator: the group, the config (for its settings) and the update index (for schedules such as
/// annealing k).
pub(crate) type AdvantageFn = fn(&GroupInput, &GrpoConfig, u64) -> GroupAdvantages;

/// The registry: the function of each estimator name.
pub(crate) fn get_adv_estimator_fn(estimator: AdvantageEstimator) -> AdvantageFn {
    match estimator {
        AdvantageEstimator::Grpo => grpo,
        AdvantageEstimator::MaxK => max_k::max_k,
        AdvantageEstimator::MaxLoo => max_k::max_loo,
        AdvantageEstimator::RiskSeeking => risk::risk_seeking,
        AdvantageEstimator::Diversity => reshape::diversity,
        AdvantageEstimator::Unlikeliness => reshape::unlikeliness,
    }
}

/// Advantages of one group with the configured estimator at update `step`.
pub fn compute_advantages(group: &GroupInput, cfg: &GrpoConfig, step: u64) -> GroupAdvantages {
    get_adv_estimator_fn(cfg.advantage_estimator)(group, cfg, step)
}

/// `grpo`: A_j = r_j - b_j, b_j the group mean (GRPO, Shao et al. 2024) or the mean of the others (RLOO,
/// Ahmadian et al. 2024: r_j - mean of the others = n/(n-1) (r_j - mean)); divided by (sample std + 1e-4) when
/// `scale_rewards` (GRPO; Dr.GRPO drops it). Only the leave-one-out form is unbiased for `grad E[r]`; the group
/// mean gives (n-1)/n of it. All-equal rewards give all-zero advantages.
pub fn grpo(group: &GroupInput, cfg: &GrpoConfig, _step: u64) -> GroupAdvantages {
    GroupAdvantages { advantages: group_advantages(&group.rewards, cfg), metrics: Vec::new() }
}

/// Advantages of one group's rewards by the `grpo` estimator (see [`grpo`]).
pub(crate) fn group_advantages(rewards: &[f64], cfg: &GrpoConfig) -> Vec<f64> {
    let n = rewards.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let mean = rewards.iter().sum::<f64>() / n as f64;
    let centred: Vec<f64> = match cfg.baseline {
        Baseline::GroupMean => rewards.iter().map(|r| r - mean).collect(),
        Baseline::LeaveOneOut => rewards.iter().map(|r| (r - mean) * n as f64 / (n - 1) as f64).collect(),
    };
    if is_zero_std(rewards) {
        return vec![0.0; n];
    }
    if cfg.scale_rewards {
        let std = sample_std(rewards, mean);
        centred.iter().map(|a| a / (std + STD_EPS)).collect()
    } else {
        centred
    }
}

/// Sample std (n - 1), as TRL computes it.
fn sample_std(rewards: &[f64], mean: f64) -> f64 {
    let n = rewards.len();
    (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// The common tail of estimators that define their own baseline: zero for a constant group, else divided by the
/// rewards' sample std + 1e-4 when `scale_rewards` (as verl's `grpo_passk` does with `norm_adv_by_std_in_grpo`).
pub(crate) fn finish(rewards: &[f64], weights: Vec<f64>, cfg: &GrpoConfig) -> Vec<f64> {
    let n = rewards.len();
    if n < 2 || is_zero_std(rewards) {
        return vec![0.0; n];
    }
    if !cfg.scale_rewards {
        return weights;
    }
    let std = sample_std(rewards, rewards.iter().sum::<f64>() / n as f64);
    weights.iter().map(|w| w / (std + STD_EPS)).collect()
}

/// Whether every reward of the group is the same (such groups carry no policy-gradient signal).
pub fn is_zero_std(rewards: &[f64]) -> bool {
    rewards.windows(2).all(|w| w[0] == w[1])
}

/// Indices of `values` in ascending order of value (ties keep their index order).
pub(crate) fn ascending_order(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_baseline_with_and_without_std_scaling() {
        let cfg = GrpoConfig { scale_rewards: false, ..Default::default() };
        assert_eq!(group_advantages(&[1.0, 0.0, 0.0, 1.0], &cfg), vec![0.5, -0.5, -0.5, 0.5]);
        let cfg = GrpoConfig { scale_rewards: true, ..Default::default() };
        // sample std of [1,0,0,1] = sqrt(1/3)
        let a = group_advantages(&[1.0, 0.0, 0.0, 1.0], &cfg);
        let want = 0.5 / ((1.0f64 / 3.0).sqrt() + STD_EPS);
        assert!((a[0] - want).abs() < 1e-12 && (a[1] + want).abs() < 1e-12);
    }

    #[test]
    fn leave_one_out_uses_the_others_mean() {
        let cfg = GrpoConfig { scale_rewards: false, baseline: Baseline::LeaveOneOut, ..Default::default() };
        let a = group_advantages(&[3.0, 0.0, 0.0], &cfg);
        assert!((a[0] - 3.0).abs() < 1e-12 && (a[1] + 1.5).abs() < 1e-12);
    }

    #[test]
    fn equal_rewards_give_zero_advantages() {
        for scale in [true, false] {
            let cfg = GrpoConfig { scale_rewards: scale, ..Default::default() };
            assert_eq!(group_advantages(&[0.3; 5], &cfg), vec![0.0; 5]);
        }
        assert!(is_zero_std(&[0.0, 0.0]) && !is_zero_std(&[0.0, 1e-9]));
    }

    #[test]
    fn constant_rewards_give_zero_advantages_unless_the_estimator_reshapes_them() {
        let mut group = GroupInput::from_rewards(&[0.4; 6]);
        group.seq_logprobs = vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0];
        group.clusters = vec![Some(1), Some(1), Some(2), None, Some(3), Some(3)];
        let cfg = |e| GrpoConfig { advantage_estimator: e, group_size: 6, ..Default::default() };
        for e in [
            AdvantageEstimator::Grpo,
            AdvantageEstimator::MaxK,
            AdvantageEstimator::MaxLoo,
            AdvantageEstimator::RiskSeeking,
        ] {
            assert_eq!(compute_advantages(&group, &cfg(e), 0).advantages, vec![0.0; 6], "{}", e.name());
        }
        // Reshaping estimators still separate equally rewarded ideas: the novel ones (keys 2 and None) and the
        // least likely one (the last) get the most.
        let a = compute_advantages(&group, &cfg(AdvantageEstimator::Diversity), 0).advantages;
        assert!(a[2] == a[3] && a[2] > a[0] && a[0] == a[1] && a[0] == a[4], "{a:?}");
        let a = compute_advantages(&group, &cfg(AdvantageEstimator::Unlikeliness), 0).advantages;
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        for e in AdvantageEstimator::ALL {
            let cfg = GrpoConfig { advantage_estimator: e, group_size: 6, ..Default::default() };
            let g = GroupInput::from_rewards(&[0.1, 0.5, 0.2, 0.9, 0.0, 0.3]);
            let a = compute_advantages(&g, &cfg, 0).advantages;
            assert_eq!(a.len(), 6, "{}", e.name());
            assert!(a.iter().all(|x| x.is_finite()) && a.iter().any(|&x| x != 0.0), "{}: {a:?}", e.name());
        }
    }

    #[test]
    fn std_scaling_divides_every_estimator_by_the_same_group_std() {
        let rewards = [0.1, 0.5, 0.2, 0.9, 0.0, 0.3];
        let group = GroupInput::from_rewards(&rewards);
        let mean = rewards.iter().sum::<f64>() / 6.0;
        let std = sample_std(&rewards, mean);
        for e in [AdvantageEstimator::MaxK, AdvantageEstimator::MaxLoo, AdvantageEstimator::RiskSeeking] {
            let raw =
                GrpoConfig { advantage_estimator: e, scale_rewards: false, group_size: 6, ..Default::default() };
            let scaled = GrpoConfig { scale_rewards: true, ..raw.clone() };
            let a = compute_advantages(&group, &raw, 0).advantages;
            let b = compute_advantages(&group, &scaled, 0).advantages;
            for (x, y) in a.iter().zip(&b) {
                assert!((x / (std + STD_EPS) - y).abs() < 1e-12, "{}", e.name());
            }
        }
    }
}
