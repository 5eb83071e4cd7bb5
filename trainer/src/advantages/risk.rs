//! `risk_seeking`: raise the mean of a group's top samples rather than the mean of all.

use super::{ascending_order, finish, GroupAdvantages, GroupInput};
use crate::config::{GrpoConfig, QuantileTies};

/// Number of samples that count as the top of a group of n: m = ceil(epsilon n), kept in [1, n - 1] so that a
/// quantile below the top exists.
pub(crate) fn top_count(n: usize, epsilon: f64) -> usize {
    ((epsilon * n as f64 - 1e-9).ceil() as usize).clamp(1, n.saturating_sub(1).max(1))
}

/// `risk_seeking`: the risk-seeking policy gradient of Petersen et al. 2021 ("Deep symbolic regression",
/// ICLR 2021, eq. 3): A_i = (n/m) (r_i - q)_+, where m = ceil(epsilon n) and the empirical quantile q is the
/// (m+1)-th largest reward of the group. Their objective is E[R | R >= q_epsilon]; the finite-group objective this
/// estimates exactly is J = E[mean of the top m of n rewards] (which tends to theirs as n grows with m/n =
/// epsilon): with f = sum of the top m rewards of the group and f_{-i} = sum of the top m of the other n-1
/// (a baseline that does not depend on x_i), f - f_{-i} = (r_i - q)_+, so E[(1/n) sum_i A_i grad log p(x_i)]
/// = grad J.
///
/// Ties: the weights depend only on values, not on how ties are broken, and samples tied at the quantile get 0
/// (not a negative weight). When the whole top m ties with the quantile (a policy whose best idea keeps
/// repeating), the exact estimate for that draw is 0: removing any one top sample leaves the top sum unchanged.
/// With `ties = "exact"` such a group gives no gradient, and the estimator is unbiased for J. With
/// `ties = "next_below"` (the default) the baseline of such a group drops to the largest reward below the tied
/// value, q' = max{r_j : r_j < q}, so the tied top samples get (n/m)(q - q') each and the gradient does not vanish
/// while the group still separates its best from the rest; this adds a push towards the tied best outcome (a bias
/// by design). The metric `risk_seeking/tied_top` counts such groups either way (a constant group is not counted
/// and gives nothing in either mode). Divided by the group's reward std when `scale_rewards`.
pub fn risk_seeking(group: &GroupInput, cfg: &GrpoConfig, _step: u64) -> GroupAdvantages {
    let rewards = &group.rewards;
    let n = rewards.len();
    if n < 2 {
        return GroupAdvantages { advantages: vec![0.0; n], metrics: Vec::new() };
    }
    let m = top_count(n, cfg.risk_seeking.epsilon);
    let order = ascending_order(rewards);
    let quantile = rewards[order[n - m - 1]];
    let tied_top = rewards[order[n - 1]] == quantile && !super::is_zero_std(rewards);
    let baseline = match cfg.risk_seeking.ties {
        // The largest reward below the tied value (one exists: the group is not constant).
        QuantileTies::NextBelow if tied_top => {
            order.iter().rev().map(|&i| rewards[i]).find(|&r| r < quantile).unwrap_or(quantile)
        }
        _ => quantile,
    };
    let scale = n as f64 / m as f64;
    let weights: Vec<f64> = rewards.iter().map(|&r| scale * (r - baseline).max(0.0)).collect();
    GroupAdvantages {
        advantages: finish(rewards, weights, cfg),
        metrics: vec![
            ("risk_seeking/quantile", quantile),
            ("risk_seeking/baseline", baseline),
            ("risk_seeking/top_count", m as f64),
            ("risk_seeking/tied_top", f64::from(u8::from(tied_top))),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AdvantageEstimator, RiskSeekingConfig};

    fn cfg(epsilon: f64) -> GrpoConfig {
        cfg_ties(epsilon, QuantileTies::Exact)
    }

    fn cfg_ties(epsilon: f64, ties: QuantileTies) -> GrpoConfig {
        GrpoConfig {
            advantage_estimator: AdvantageEstimator::RiskSeeking,
            risk_seeking: RiskSeekingConfig { epsilon, ties },
            scale_rewards: false,
            ..Default::default()
        }
    }

    #[test]
    fn only_samples_above_the_quantile_get_weight() {
        // n = 4, epsilon 0.5 -> m = 2, q = 3rd largest = 0.2; A = 2 (r - 0.2)_+.
        let g = GroupInput::from_rewards(&[0.1, 0.9, 0.2, 0.5]);
        let a = risk_seeking(&g, &cfg(0.5), 0).advantages;
        let want = [0.0, 1.4, 0.0, 0.6];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{a:?}");
        }
        assert_eq!(top_count(4, 0.5), 2);
        assert_eq!(top_count(8, 0.25), 2);
        assert_eq!(top_count(8, 0.99), 7);
        assert_eq!(top_count(8, 0.01), 1);
    }

    #[test]
    fn ties_at_the_quantile_get_zero_and_a_tied_top_is_reported() {
        let g = GroupInput::from_rewards(&[0.5, 0.5, 0.5, 0.1]);
        let out = risk_seeking(&g, &cfg(0.25), 0);
        assert_eq!(out.advantages, vec![0.0; 4]);
        assert!(out.metrics.contains(&("risk_seeking/tied_top", 1.0)));
        let g = GroupInput::from_rewards(&[0.7, 0.5, 0.5, 0.1]);
        let out = risk_seeking(&g, &cfg(0.25), 0);
        assert!((out.advantages[0] - 4.0 * 0.2).abs() < 1e-12 && out.advantages[1..] == [0.0; 3]);
        assert!(out.metrics.contains(&("risk_seeking/tied_top", 0.0)));
    }

    #[test]
    fn next_below_keeps_a_tied_top_group_learning_and_changes_nothing_else() {
        // Top 1 of 4 (epsilon 0.25) ties with the quantile 0.5: exact gives 0; next_below's baseline is 0.1,
        // so each 0.5 gets 4 (0.5 - 0.1) and the 0.1 gets 0.
        let tied = GroupInput::from_rewards(&[0.5, 0.5, 0.5, 0.1]);
        let out = risk_seeking(&tied, &cfg_ties(0.25, QuantileTies::NextBelow), 0);
        for (a, want) in out.advantages.iter().zip([1.6, 1.6, 1.6, 0.0]) {
            assert!((a - want).abs() < 1e-12, "{:?}", out.advantages);
        }
        assert!(out.metrics.contains(&("risk_seeking/tied_top", 1.0)));
        assert!(out.metrics.contains(&("risk_seeking/baseline", 0.1)));
        // Without a tie at the top both modes agree; a constant group gives nothing in either.
        for rewards in [[0.1, 0.9, 0.2, 0.5], [0.7, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3]] {
            let g = GroupInput::from_rewards(&rewards);
            for eps in [0.25, 0.5] {
                let exact = risk_seeking(&g, &cfg_ties(eps, QuantileTies::Exact), 0).advantages;
                let below = risk_seeking(&g, &cfg_ties(eps, QuantileTies::NextBelow), 0).advantages;
                assert_eq!(exact, below, "{rewards:?} eps {eps}");
            }
        }
    }
}
