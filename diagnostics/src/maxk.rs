//! Average versus best-of-N: the unbiased max@k estimator, its curve over k, mean and best.
//!
//! Given n scored samples with rewards sorted ascending r_(1) <= ... <= r_(n), the expected maximum of k samples
//! drawn without replacement is
//!
//! ```text
//! max@k = sum_{i=k..n} C(i-1, k-1) / C(n, k) * r_(i)
//! ```
//!
//! (r_(i) is the maximum of exactly C(i-1, k-1) of the C(n, k) subsets). For 0/1 rewards this is the unbiased
//! pass@k of Chen et al. (2021). The weights w_i = C(i-1, k-1) / C(n, k) are computed from the top down with the
//! ratio w_{i-1} = w_i * (i-k) / (i-1), starting at w_n = k/n: every factor is at most 1, so nothing overflows
//! for any n, and weights too small to matter underflow harmlessly to zero.

use serde::{Deserialize, Serialize};

use crate::error::{check_finite, DiagnosticsError, Result};

/// One point of a max@k curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaxAtK {
    pub k: usize,
    pub value: f64,
}

/// The unbiased estimate of the expected best reward among k of the given samples (1 <= k <= n).
pub fn max_at_k(rewards: &[f64], k: usize) -> Result<f64> {
    let sorted = sorted_rewards(rewards)?;
    max_at_k_sorted(&sorted, k)
}

/// max@k for k = 1, 2, 4, 8, ... and always n itself as the last point (so the curve ends at the batch's best).
pub fn max_at_k_curve(rewards: &[f64]) -> Result<Vec<MaxAtK>> {
    let sorted = sorted_rewards(rewards)?;
    curve_ks(sorted.len()).into_iter().map(|k| Ok(MaxAtK { k, value: max_at_k_sorted(&sorted, k)? })).collect()
}

/// The k values of [`max_at_k_curve`]: powers of two below n, then n.
pub(crate) fn curve_ks(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> =
        std::iter::successors(Some(1usize), |k| k.checked_mul(2)).take_while(|&k| k < n).collect();
    if n > 0 {
        ks.push(n);
    }
    ks
}

/// Arithmetic mean of the rewards (max@1).
pub fn mean(rewards: &[f64]) -> Result<f64> {
    check_batch(rewards)?;
    Ok(rewards.iter().sum::<f64>() / rewards.len() as f64)
}

/// Population standard deviation of the rewards (divides by n, like the GRPO group statistics).
pub(crate) fn std_dev(rewards: &[f64]) -> Result<f64> {
    let m = mean(rewards)?;
    Ok((rewards.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / rewards.len() as f64).sqrt())
}

/// The largest reward (max@n).
pub fn best(rewards: &[f64]) -> Result<f64> {
    check_batch(rewards)?;
    Ok(rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

fn check_batch(rewards: &[f64]) -> Result<()> {
    if rewards.is_empty() {
        return Err(DiagnosticsError::Invalid("no rewards given; a batch needs at least one scored idea".into()));
    }
    check_finite("rewards", rewards)
}

fn sorted_rewards(rewards: &[f64]) -> Result<Vec<f64>> {
    check_batch(rewards)?;
    let mut sorted = rewards.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(sorted)
}

fn max_at_k_sorted(sorted: &[f64], k: usize) -> Result<f64> {
    let n = sorted.len();
    if k == 0 || k > n {
        return Err(DiagnosticsError::Invalid(format!("max@k needs 1 <= k <= n, got k = {k} with n = {n} samples")));
    }
    // Walk i = n, n-1, ..., k (1-based) carrying w_i; sorted[i - 1] is r_(i).
    let mut weight = k as f64 / n as f64;
    let mut total = 0.0;
    for i in (k..=n).rev() {
        total += weight * sorted[i - 1];
        if i > k {
            weight *= (i - k) as f64 / (i - 1) as f64;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean of the maximum over every k-subset of indices, by enumeration.
    fn brute_force(rewards: &[f64], k: usize) -> f64 {
        let n = rewards.len();
        let (mut sum, mut count) = (0.0, 0u64);
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize == k {
                let m = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| rewards[i]).fold(f64::NEG_INFINITY, f64::max);
                sum += m;
                count += 1;
            }
        }
        sum / count as f64
    }

    #[test]
    fn matches_brute_force_with_ties() {
        let batches: [&[f64]; 4] = [
            &[0.3, 0.1, 0.3, 0.9, 0.0, 0.3, 0.9, 0.5, 0.2, 0.0, 0.7],
            &[1.0, 1.0, 1.0, 1.0, 1.0],
            &[-2.0, 5.0, -2.0, 3.5, 3.5, 0.0, 1.25],
            &[0.4],
        ];
        for rewards in batches {
            for k in 1..=rewards.len() {
                let got = max_at_k(rewards, k).unwrap();
                let want = brute_force(rewards, k);
                assert!((got - want).abs() < 1e-12, "n={} k={k}: {got} vs {want}", rewards.len());
            }
        }
    }

    #[test]
    fn binary_rewards_give_unbiased_pass_at_k() {
        // pass@k = 1 - C(n-c, k) / C(n, k), computed with the product form of Chen et al.
        let rewards =
            [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let n = rewards.len();
        let c = rewards.iter().filter(|&&r| r == 1.0).count();
        for k in 1..=n {
            let pass = if n - c < k {
                1.0
            } else {
                1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
            };
            let got = max_at_k(&rewards, k).unwrap();
            assert!((got - pass).abs() < 1e-12, "k={k}: {got} vs pass@k {pass}");
        }
    }

    #[test]
    fn ends_are_mean_and_max() {
        let rewards = [0.25, 0.8, 0.1, 0.55, 0.3, 0.8, 0.05];
        assert!((max_at_k(&rewards, 1).unwrap() - mean(&rewards).unwrap()).abs() < 1e-15);
        assert_eq!(max_at_k(&rewards, rewards.len()).unwrap(), best(&rewards).unwrap());
    }

    #[test]
    fn stable_for_thousands_of_samples() {
        // A deterministic spread of rewards in [0, 1) for n = 4000; C(4000, 2000) overflows f64 by far.
        let n = 4000;
        let rewards: Vec<f64> = (0..n).map(|i| ((i * 7919) % n) as f64 / n as f64).collect();
        let curve = max_at_k_curve(&rewards).unwrap();
        assert!(curve.iter().all(|p| p.value.is_finite()));
        assert!(curve.windows(2).all(|w| w[1].value >= w[0].value), "max@k must not decrease with k");
        assert!((curve[0].value - mean(&rewards).unwrap()).abs() < 1e-12);
        assert_eq!(curve.last().unwrap().value, best(&rewards).unwrap());
        // For rewards j/n, j = 0..n-1 (a permutation of them), E[max of k] = (n - 1) - (n - k)/(k + 1), over n.
        for p in &curve {
            let (nf, kf) = (n as f64, p.k as f64);
            let exact = ((nf - 1.0) - (nf - kf) / (kf + 1.0)) / nf;
            assert!((p.value - exact).abs() < 1e-9, "k={}: {} vs {exact}", p.k, p.value);
        }
        // A constant batch stays constant at every k: the weights sum to one.
        let constant = vec![0.37; n];
        for k in [1, 3, 1000, 2001, n] {
            assert!((max_at_k(&constant, k).unwrap() - 0.37).abs() < 1e-12);
        }
    }

    #[test]
    fn curve_uses_powers_of_two_then_n() {
        assert_eq!(curve_ks(1), vec![1]);
        assert_eq!(curve_ks(8), vec![1, 2, 4, 8]);
        assert_eq!(curve_ks(10), vec![1, 2, 4, 8, 10]);
        assert!(curve_ks(0).is_empty());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(max_at_k(&[], 1).is_err());
        assert!(max_at_k(&[0.1, 0.2], 0).is_err());
        assert!(max_at_k(&[0.1, 0.2], 3).is_err());
        let err = max_at_k(&[0.1, f64::NAN], 1).unwrap_err().to_string();
        assert!(err.contains("rewards[1]"), "{err}");
        assert!(mean(&[]).is_err());
    }
}
