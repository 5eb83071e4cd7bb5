//! Intervals for comparing runs: is a difference in mean reward larger than chance and than the environment's
//! noise floor?
//!
//! The percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample each run's rewards with replacement,
//! recompute the difference of means, and take the 2.5% and 97.5% quantiles of the resampled differences. It
//! treats a run's ideas as independent draws, which understates the uncertainty when ideas within a run are
//! correlated (a collapsed policy): read a narrow interval on a collapsed run with care.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples per interval: enough for the 2.5% quantile to be stable to a few percent of the interval's width.
pub(crate) const BOOTSTRAP_RESAMPLES: usize = 4000;

/// A difference of means `mean(a) - mean(b)` with its 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanDifference {
    pub difference: f64,
    pub lo: f64,
    pub hi: f64,
}

impl MeanDifference {
    /// Whether the interval excludes 0 (the difference is not chance at the 5% level).
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// Whether the difference is beyond chance and larger than `noise`, the environment's seed-to-seed standard
    /// deviation of a fixed recipe (the noise floor).
    pub fn beyond_noise(&self, noise: f64) -> bool {
        self.excludes_zero() && self.difference.abs() > noise
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn resampled_mean(x: &[f64], rng: &mut ChaCha8Rng) -> f64 {
    (0..x.len()).map(|_| x[rng.random_range(0..x.len())]).sum::<f64>() / x.len() as f64
}

/// `mean(a) - mean(b)` with its 95% percentile-bootstrap interval (`BOOTSTRAP_RESAMPLES` resamples, seeded so
/// that the same data give the same interval). `None` when either side is empty.
pub fn bootstrap_mean_difference(a: &[f64], b: &[f64], seed: u64) -> Option<MeanDifference> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut diffs: Vec<f64> =
        (0..BOOTSTRAP_RESAMPLES).map(|_| resampled_mean(a, &mut rng) - resampled_mean(b, &mut rng)).collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
    Some(MeanDifference { difference: mean(a) - mean(b), lo: at(0.025), hi: at(0.975) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_samples_exclude_zero_and_identical_ones_do_not() {
        let a: Vec<f64> = (0..40).map(|i| 0.5 + 0.01 * (i % 5) as f64).collect();
        let b: Vec<f64> = (0..40).map(|i| 0.3 + 0.01 * (i % 5) as f64).collect();
        let d = bootstrap_mean_difference(&a, &b, 1).unwrap();
        assert!((d.difference - 0.2).abs() < 1e-12);
        assert!(d.lo > 0.19 && d.hi < 0.21 && d.excludes_zero(), "{d:?}");
        assert!(d.beyond_noise(0.05) && !d.beyond_noise(0.5));
        let same = bootstrap_mean_difference(&a, &a, 2).unwrap();
        assert_eq!(same.difference, 0.0);
        assert!(!same.excludes_zero(), "{same:?}");
        assert!(bootstrap_mean_difference(&[], &a, 0).is_none());
    }

    /// The interval's width shrinks like 1/sqrt(n): 4x the samples, half the width (within resampling noise).
    #[test]
    fn width_shrinks_with_the_square_root_of_the_sample_size() {
        let noisy =
            |n: usize, off: f64| -> Vec<f64> { (0..n).map(|i| off + ((i * 7919) % 101) as f64 / 100.0).collect() };
        let w = |n: usize| {
            let d = bootstrap_mean_difference(&noisy(n, 0.0), &noisy(n, 0.1), 3).unwrap();
            d.hi - d.lo
        };
        let ratio = w(100) / w(400);
        assert!((1.7..2.3).contains(&ratio), "{ratio}");
    }
}
