//! Estimators of the gradient of E[max of k samples]: `max_k` (any k <= n) and `max_loo` (k = n).

use super::{ascending_order, finish, GroupAdvantages, GroupInput};
use crate::config::GrpoConfig;

/// ln(m!) for m = 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let mut acc = 0.0;
    out.push(0.0);
    for m in 1..=n {
        acc += (m as f64).ln();
        out.push(acc);
    }
    out
}

/// C(a, b) / C(n, k) through log-factorials (no overflow for large groups); 0 when b < 0 or b > a.
fn binom_ratio(lf: &[f64], a: i64, b: i64, n: usize, k: usize) -> f64 {
    if b < 0 || b > a || a < 0 {
        return 0.0;
    }
    let (a, b) = (a as usize, b as usize);
    let ln = |p: usize, q: usize| lf[p] - lf[q] - lf[p - q];
    (ln(a, b) - ln(n, k)).exp()
}

/// Unbiased estimate of E[max of k] from n >= k i.i.d. rewards (PKPO eq. 12; DESIGN section 6):
/// (1 / C(n, k)) sum_{i=k..n} C(i-1, k-1) g_(i), with g_(1) <= ... <= g_(n) the sorted rewards.
/// k = 1 gives the mean and k = n the max. Panics if k is 0 or above n.
pub fn max_at_k_estimate(rewards: &[f64], k: usize) -> f64 {
    let n = rewards.len();
    assert!(k >= 1 && k <= n, "max@k needs 1 <= k <= n (k = {k}, n = {n})");
    let lf = ln_factorials(n);
    let order = ascending_order(rewards);
    (k..=n).map(|i| binom_ratio(&lf, i as i64 - 1, k as i64 - 1, n, k) * rewards[order[i - 1]]).sum()
}

/// `max_k`: PKPO, Walder & Karkhanis 2025 ("Pass@K Policy Optimization", arXiv 2505.15201), continuous rewards,
/// with its k-1 leave-one-out baseline (s^(loo-1), their eq. 33). With the rewards sorted ascending
/// g_(1) <= ... <= g_(n) and i the rank of sample i:
///
///   s_i = (1/C(n,k)) sum_{|I|=k, i in I} [max_{j in I} g_j - max_{j in I \ i} g_j]
///       = (1/C(n,k)) sum_{j < i} C(j-1, k-2) (g_(i) - g_(j))          (k >= 2)
///
/// (the first sum is PKPO's s_i, eq. 19, whose expected score-function gradient is grad E[max of k]; the subtracted
/// term is (k/n) times the max@(k-1) estimate of the other n-1 samples, which does not depend on x_i, so it
/// leaves the expectation unchanged). The second line follows because the subsets whose max is above g_(i) give
/// the same max with or without i. Every weight is >= 0, ties get equal weights, and the worst sample gets 0.
/// Returned advantages are A_i = n s_i, so that E[(1/n) sum_i A_i grad log p(x_i)] = grad E[max of k].
/// k = 1 has no k-1 baseline (the max of an empty set): it uses the leave-one-out mean, A_i = g_i - mean of the
/// others (RLOO), which is the `grpo` estimator with `baseline = "leave_one_out"`.
/// k comes from `[grpo.max_k]` at update `step` (annealed if configured) and is clamped to [1, n].
/// Divided by the group's reward std when `scale_rewards`.
pub fn max_k(group: &GroupInput, cfg: &GrpoConfig, step: u64) -> GroupAdvantages {
    let rewards = &group.rewards;
    let n = rewards.len();
    let k = cfg.max_k.k_at(step).clamp(1, n.max(1));
    if n < 2 {
        return GroupAdvantages { advantages: vec![0.0; n], metrics: vec![("max_k/k", k as f64)] };
    }
    let weights = if k == 1 { leave_one_out(rewards) } else { pkpo_loo_minus_one(rewards, k) };
    GroupAdvantages {
        advantages: finish(rewards, weights, cfg),
        metrics: vec![("max_k/k", k as f64), ("max_k/max_at_k", max_at_k_estimate(rewards, k))],
    }
}

/// n s_i of [`max_k`] for 2 <= k <= n, in the input's order.
fn pkpo_loo_minus_one(rewards: &[f64], k: usize) -> Vec<f64> {
    let n = rewards.len();
    let lf = ln_factorials(n);
    let order = ascending_order(rewards);
    let sorted: Vec<f64> = order.iter().map(|&i| rewards[i]).collect();
    // w_j = n C(j-1, k-2) / C(n, k) for 1-based rank j.
    let w: Vec<f64> = (1..=n).map(|j| n as f64 * binom_ratio(&lf, j as i64 - 1, k as i64 - 2, n, k)).collect();
    let mut out = vec![0.0; n];
    for (rank, &sample) in order.iter().enumerate() {
        // Tied lower samples add exact zeros, so tied samples get bit-identical weights.
        out[sample] = (0..rank).map(|j| w[j] * (sorted[rank] - sorted[j])).sum();
    }
    out
}

/// A_i = g_i - mean of the other samples (RLOO).
fn leave_one_out(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len() as f64;
    let sum: f64 = rewards.iter().sum();
    rewards.iter().map(|g| g - (sum - g) / (n - 1.0)).collect()
}

/// `max_loo`: the k = n case of [`max_k`], A_i = n (max_j g_j - max_{j != i} g_j): only the best sample gets a
/// weight, its margin over the runner-up (Tang et al. 2025, "Optimizing Language Models for Inference Time
/// Objectives using Reinforcement Learning"; verl's `compute_grpo_passk_outcome_advantage`). verl's weights are
/// these divided by n; the factor n puts them on the convention of this module
/// (E[(1/n) sum_i A_i grad log p(x_i)] = grad E[max of n]). A tie for the best gives all zeros.
/// Divided by the group's reward std when `scale_rewards`.
pub fn max_loo(group: &GroupInput, cfg: &GrpoConfig, _step: u64) -> GroupAdvantages {
    let rewards = &group.rewards;
    let n = rewards.len();
    if n < 2 {
        return GroupAdvantages { advantages: vec![0.0; n], metrics: Vec::new() };
    }
    let order = ascending_order(rewards);
    let (best, second) = (order[n - 1], order[n - 2]);
    let mut weights = vec![0.0; n];
    weights[best] = n as f64 * (rewards[best] - rewards[second]);
    GroupAdvantages { advantages: finish(rewards, weights, cfg), metrics: vec![("max_loo/max", rewards[best])] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_at_k_is_the_mean_at_one_and_the_max_at_n() {
        let g = [0.3, 0.9, 0.1, 0.5];
        assert!((max_at_k_estimate(&g, 1) - 0.45).abs() < 1e-12);
        assert!((max_at_k_estimate(&g, 4) - 0.9).abs() < 1e-12);
        // k = 2 over 4: pairs' maxima: (.3,.9).9 (.3,.1).3 (.3,.5).5 (.9,.1).9 (.9,.5).9 (.1,.5).5 -> 4.0 / 6
        assert!((max_at_k_estimate(&g, 2) - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn weights_match_the_subset_definition_by_brute_force() {
        let g = [0.3, 0.9, 0.1, 0.5, 0.5, 0.0];
        let n = g.len();
        for k in 2..=n {
            let got = pkpo_loo_minus_one(&g, k);
            let mut want = vec![0.0; n];
            let mut subsets = 0.0;
            for mask in 0u32..(1 << n) {
                if mask.count_ones() as usize != k {
                    continue;
                }
                subsets += 1.0;
                let members: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
                let max = members.iter().map(|&i| g[i]).fold(f64::MIN, f64::max);
                for &i in &members {
                    let without = members.iter().filter(|&&j| j != i).map(|&j| g[j]).fold(f64::MIN, f64::max);
                    want[i] += max - without;
                }
            }
            for i in 0..n {
                assert!((got[i] - n as f64 * want[i] / subsets).abs() < 1e-12, "k={k} i={i}");
            }
            // Tied samples (0.5, 0.5) get equal weights, the worst sample none.
            assert_eq!(got[3], got[4]);
            assert_eq!(got[5], 0.0);
        }
    }
}
