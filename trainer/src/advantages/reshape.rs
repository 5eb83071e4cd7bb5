//! Estimators that reshape each reward within its group, then apply `grpo` (its baseline and std scaling) to
//! the reshaped rewards: `diversity` and `unlikeliness`.

use super::{group_advantages, GroupAdvantages, GroupInput};
use crate::config::GrpoConfig;

/// Novelty of each sample within its group: the fraction of the other samples that are a different idea
/// (DARLING's Div, Li et al. 2025). A sample without a cluster key differs from every other.
pub(crate) fn novelty(clusters: &[Option<u64>]) -> Vec<f64> {
    let n = clusters.len();
    if n < 2 {
        return vec![1.0; n];
    }
    let same = |a: Option<u64>, b: Option<u64>| a.is_some() && a == b;
    (0..n)
        .map(|i| (0..n).filter(|&j| j != i && !same(clusters[i], clusters[j])).count() as f64 / (n - 1) as f64)
        .collect()
}

/// `diversity`: DARLING (Li et al. 2025, "Jointly Reinforcing Diversity and Quality in Language Model
/// Generations", arXiv 2509.02534): r'_i = r_i * nov_i / max_j nov_j, with nov_i the fraction of the group's
/// other samples in a different cluster (clusters: equal `GroupInput::clusters` keys, e.g. the same canonical
/// recipe), then `grpo` on r'. The multiplicative form is the one DARLING found better than adding a bonus.
/// Normalising by the group's largest novelty keeps the most novel idea's reward whole; a group that is all one
/// idea (every novelty 0) has no diversity information and keeps its rewards (plain `grpo`).
pub fn diversity(group: &GroupInput, cfg: &GrpoConfig, _step: u64) -> GroupAdvantages {
    let nov = novelty(&group.clusters);
    let top = nov.iter().copied().fold(0.0, f64::max);
    let norm: Vec<f64> = nov.iter().map(|&v| if top > 0.0 { v / top } else { 1.0 }).collect();
    let reshaped: Vec<f64> = group.rewards.iter().zip(&norm).map(|(r, w)| r * w).collect();
    let distinct = distinct_clusters(&group.clusters);
    GroupAdvantages {
        advantages: group_advantages(&reshaped, cfg),
        metrics: vec![
            ("diversity/novelty_mean", nov.iter().sum::<f64>() / nov.len().max(1) as f64),
            ("diversity/distinct_frac", distinct as f64 / group.clusters.len().max(1) as f64),
        ],
    }
}

/// Number of distinct ideas in the group (each sample without a key is its own).
fn distinct_clusters(clusters: &[Option<u64>]) -> usize {
    let mut keys: Vec<u64> = clusters.iter().flatten().copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.len() + clusters.iter().filter(|c| c.is_none()).count()
}

/// Rank of each sample by likelihood: the number of the group's samples strictly less likely (0 = least likely;
/// equally likely samples share a rank).
pub(crate) fn likelihood_ranks(seq_logprobs: &[f64]) -> Vec<usize> {
    seq_logprobs.iter().map(|&l| seq_logprobs.iter().filter(|&&o| o < l).count()).collect()
}

/// `unlikeliness`: the unlikeliness reward of He, Fried & Welleck 2025 ("Rewarding the Unlikely: Lifting GRPO
/// Beyond Distribution Sharpening", arXiv 2506.02355): r'_i = r_i (1 - beta rank_i / n), rank_i the number of
/// group samples less likely than i under the behaviour policy (sequence log-likelihood = sum of the behaviour
/// token log-probs), then `grpo` on r'. Among equally rewarded ideas the likelier ones get less, which counters
/// the sharpening of the distribution onto ideas the policy already favours. beta from `[grpo.unlikeliness]`
/// (0.25 in the paper).
pub fn unlikeliness(group: &GroupInput, cfg: &GrpoConfig, _step: u64) -> GroupAdvantages {
    let n = group.rewards.len().max(1) as f64;
    let beta = cfg.unlikeliness.beta;
    let factors: Vec<f64> =
        likelihood_ranks(&group.seq_logprobs).iter().map(|&r| 1.0 - beta * r as f64 / n).collect();
    let reshaped: Vec<f64> = group.rewards.iter().zip(&factors).map(|(r, f)| r * f).collect();
    GroupAdvantages {
        advantages: group_advantages(&reshaped, cfg),
        metrics: vec![("unlikeliness/factor_mean", factors.iter().sum::<f64>() / n)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdvantageEstimator;

    #[test]
    fn novelty_counts_other_clusters_and_unknown_keys_are_distinct() {
        let nov = novelty(&[Some(1), Some(1), Some(2), None]);
        assert_eq!(nov, vec![2.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
        assert_eq!(distinct_clusters(&[Some(1), Some(1), Some(2), None]), 3);
    }

    #[test]
    fn diversity_favours_the_rare_idea_among_equal_rewards() {
        let cfg = GrpoConfig { advantage_estimator: AdvantageEstimator::Diversity, ..Default::default() };
        let mut g = GroupInput::from_rewards(&[1.0, 1.0, 1.0, 0.0]);
        g.clusters = vec![Some(7), Some(7), Some(9), Some(3)];
        let a = diversity(&g, &cfg, 0).advantages;
        assert!(a[2] > a[0] && a[0] == a[1] && a[3] < a[0], "{a:?}");
        // One idea everywhere: no diversity information, plain grpo.
        g.clusters = vec![Some(7); 4];
        assert_eq!(diversity(&g, &cfg, 0).advantages, group_advantages(&g.rewards, &cfg));
    }

    #[test]
    fn unlikeliness_cuts_the_likeliest_correct_idea() {
        let cfg = GrpoConfig {
            advantage_estimator: AdvantageEstimator::Unlikeliness,
            scale_rewards: false,
            ..Default::default()
        };
        let mut g = GroupInput::from_rewards(&[1.0, 1.0, 0.0, 0.0]);
        g.seq_logprobs = vec![-2.0, -9.0, -1.0, -5.0];
        assert_eq!(likelihood_ranks(&g.seq_logprobs), vec![2, 0, 3, 1]);
        // factors 1 - 0.25 rank / 4: [0.875, 1, ..]; reshaped [0.875, 1, 0, 0], mean 0.46875.
        let a = unlikeliness(&g, &cfg, 0).advantages;
        assert!((a[0] - 0.40625).abs() < 1e-12 && (a[1] - 0.53125).abs() < 1e-12, "{a:?}");
    }
}
