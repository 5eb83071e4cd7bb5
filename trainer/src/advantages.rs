//! Group-relative advantages: each sample's reward against the others of its group.

use crate::config::{Baseline, GrpoConfig};

/// Added to the std before dividing, as in GRPO implementations.
pub const STD_EPS: f64 = 1e-4;

/// Advantages of one group's rewards. All-equal rewards give all-zero advantages (no policy gradient).
pub fn group_advantages(rewards: &[f64], cfg: &GrpoConfig) -> Vec<f64> {
    let n = rewards.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let mean = rewards.iter().sum::<f64>() / n as f64;
    let centred: Vec<f64> = match cfg.baseline {
        Baseline::GroupMean => rewards.iter().map(|r| r - mean).collect(),
        // r_j - mean of the others = n/(n-1) * (r_j - mean)
        Baseline::LeaveOneOut => rewards.iter().map(|r| (r - mean) * n as f64 / (n - 1) as f64).collect(),
    };
    if is_zero_std(rewards) {
        return vec![0.0; n];
    }
    if cfg.scale_rewards {
        // Sample std (n - 1), as TRL computes it.
        let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = var.sqrt();
        centred.iter().map(|a| a / (std + STD_EPS)).collect()
    } else {
        centred
    }
}

/// Whether every reward of the group is the same (such groups carry no policy-gradient signal).
pub fn is_zero_std(rewards: &[f64]) -> bool {
    rewards.windows(2).all(|w| w[0] == w[1])
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
}
