//! Exactness of the advantage estimators by enumeration: a categorical policy p = softmax(theta) over a few
//! outcomes with known rewards; every ordered draw of n samples is enumerated, so
//! E[(1/n) sum_i A_i grad log p(x_i)] is computed exactly and compared with the exact gradient of the estimator's
//! objective (DESIGN section 9: "Test every estimator for unbiasedness by exact enumeration").

use ideator_trainer::advantages::{compute_advantages, max_at_k_estimate, GroupInput};
use ideator_trainer::config::{AdvantageEstimator, Baseline, MaxKConfig, QuantileTies, RiskSeekingConfig};
use ideator_trainer::GrpoConfig;

/// A categorical policy with its outcomes' rewards.
struct Policy {
    probs: Vec<f64>,
    rewards: Vec<f64>,
}

impl Policy {
    fn new(logits: &[f64], rewards: &[f64]) -> Self {
        let z: f64 = logits.iter().map(|l| l.exp()).sum();
        Policy { probs: logits.iter().map(|l| l.exp() / z).collect(), rewards: rewards.to_vec() }
    }

    /// grad_theta log p(x) = e_x - p.
    fn score(&self, x: usize) -> Vec<f64> {
        self.probs.iter().enumerate().map(|(a, p)| f64::from(u8::from(a == x)) - p).collect()
    }

    /// Calls `f(draw, probability)` for every ordered draw of n outcomes.
    fn for_each_draw(&self, n: usize, mut f: impl FnMut(&[usize], f64)) {
        let c = self.probs.len();
        let mut draw = vec![0usize; n];
        for code in 0..c.pow(n as u32) {
            let mut rest = code;
            for slot in draw.iter_mut() {
                *slot = rest % c;
                rest /= c;
            }
            f(&draw, draw.iter().map(|&x| self.probs[x]).product());
        }
    }

    /// Exact E[(1/n) sum_i A_i grad log p(x_i)] of an estimator.
    fn expected_update(&self, n: usize, cfg: &GrpoConfig) -> Vec<f64> {
        let mut out = vec![0.0; self.probs.len()];
        self.for_each_draw(n, |draw, prob| {
            let rewards: Vec<f64> = draw.iter().map(|&x| self.rewards[x]).collect();
            let adv = compute_advantages(&GroupInput::from_rewards(&rewards), cfg, 0).advantages;
            for (&x, a) in draw.iter().zip(adv) {
                for (o, s) in out.iter_mut().zip(self.score(x)) {
                    *o += prob * a * s / n as f64;
                }
            }
        });
        out
    }

    /// Exact gradient of J = E[f(draw of n)]: grad P(draw) = P(draw) sum_i grad log p(x_i) (the score identity,
    /// exact for a finite sum).
    fn objective_gradient(&self, n: usize, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
        let mut out = vec![0.0; self.probs.len()];
        self.for_each_draw(n, |draw, prob| {
            let rewards: Vec<f64> = draw.iter().map(|&x| self.rewards[x]).collect();
            let value = f(&rewards);
            for &x in draw {
                for (o, s) in out.iter_mut().zip(self.score(x)) {
                    *o += prob * value * s;
                }
            }
        });
        out
    }

    /// E[max of k] in closed form, sum_u u (F(u)^k - F(u-)^k) over the distinct reward values u, and its
    /// gradient through the softmax (an independent check of `objective_gradient`).
    fn max_of_k(&self, k: usize) -> (f64, Vec<f64>) {
        let c = self.probs.len();
        let cdf = |u: f64, strict: bool| -> f64 {
            (0..c)
                .filter(|&l| if strict { self.rewards[l] < u } else { self.rewards[l] <= u })
                .map(|l| self.probs[l])
                .sum()
        };
        let mut values = self.rewards.clone();
        values.sort_by(f64::total_cmp);
        values.dedup();
        let kf = k as f64;
        let mut j = 0.0;
        let mut d_dp = vec![0.0; c];
        for &u in &values {
            let (hi, lo) = (cdf(u, false), cdf(u, true));
            j += u * (hi.powi(k as i32) - lo.powi(k as i32));
            for (l, d) in d_dp.iter_mut().enumerate() {
                let v = self.rewards[l];
                if v <= u {
                    *d += u * kf * hi.powi(k as i32 - 1);
                }
                if v < u {
                    *d -= u * kf * lo.powi(k as i32 - 1);
                }
            }
        }
        let mean_d: f64 = (0..c).map(|b| self.probs[b] * d_dp[b]).sum();
        (j, (0..c).map(|a| self.probs[a] * (d_dp[a] - mean_d)).collect())
    }
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < tol, "{what}: got {got:?}, want {want:?}");
    }
}

fn policies() -> Vec<Policy> {
    vec![
        // A common moderate outcome and a rare high one.
        Policy::new(&[1.5, 0.2, -1.0], &[0.4, 0.1, 1.0]),
        // Ties between outcomes' rewards.
        Policy::new(&[0.3, -0.4, 0.9, -1.2], &[0.5, 0.0, 0.5, 0.9]),
    ]
}

fn cfg(estimator: AdvantageEstimator, n: usize) -> GrpoConfig {
    GrpoConfig { advantage_estimator: estimator, group_size: n, scale_rewards: false, ..Default::default() }
}

#[test]
fn the_closed_form_max_of_k_gradient_matches_the_score_identity() {
    for p in policies() {
        for k in 1..=4 {
            let (j, grad) = p.max_of_k(k);
            let by_draws = p.objective_gradient(k, |r| r.iter().copied().fold(f64::MIN, f64::max));
            assert_close(&grad, &by_draws, 1e-12, "grad E[max of k]");
            let mut expected_max = 0.0;
            p.for_each_draw(k, |d, prob| {
                expected_max += prob * d.iter().map(|&x| p.rewards[x]).fold(f64::MIN, f64::max)
            });
            assert!((j - expected_max).abs() < 1e-12);
        }
    }
}

#[test]
fn max_at_k_estimate_is_unbiased() {
    for p in policies() {
        for n in 1..=5 {
            for k in 1..=n {
                let mut mean = 0.0;
                p.for_each_draw(n, |d, prob| {
                    let r: Vec<f64> = d.iter().map(|&x| p.rewards[x]).collect();
                    mean += prob * max_at_k_estimate(&r, k);
                });
                assert!((mean - p.max_of_k(k).0).abs() < 1e-12, "n={n} k={k}");
            }
        }
    }
}

#[test]
fn max_k_is_an_unbiased_gradient_of_the_expected_max_of_k() {
    for p in policies() {
        for n in 2..=6 {
            for k in 1..=n {
                let c =
                    GrpoConfig { max_k: MaxKConfig { k, ..Default::default() }, ..cfg(AdvantageEstimator::MaxK, n) };
                let got = p.expected_update(n, &c);
                assert_close(&got, &p.max_of_k(k).1, 1e-9, &format!("max_k n={n} k={k}"));
            }
        }
    }
}

#[test]
fn max_loo_is_an_unbiased_gradient_of_the_expected_max_of_n() {
    for p in policies() {
        for n in 2..=6 {
            let got = p.expected_update(n, &cfg(AdvantageEstimator::MaxLoo, n));
            assert_close(&got, &p.max_of_k(n).1, 1e-9, &format!("max_loo n={n}"));
        }
    }
}

#[test]
fn risk_seeking_is_an_unbiased_gradient_of_the_mean_of_the_top_m() {
    for p in policies() {
        for n in 2..=6 {
            for epsilon in [0.2, 0.34, 0.5, 0.8] {
                let c = risk_cfg(n, epsilon, QuantileTies::Exact);
                let got = p.expected_update(n, &c);
                let want = p.objective_gradient(n, top_mean(n, epsilon));
                assert_close(&got, &want, 1e-9, &format!("risk n={n} eps={epsilon}"));
            }
        }
    }
}

fn risk_cfg(n: usize, epsilon: f64, ties: QuantileTies) -> GrpoConfig {
    GrpoConfig { risk_seeking: RiskSeekingConfig { epsilon, ties }, ..cfg(AdvantageEstimator::RiskSeeking, n) }
}

/// The mean of the top m = ceil(epsilon n) (at most n - 1) rewards of a draw.
fn top_mean(n: usize, epsilon: f64) -> impl Fn(&[f64]) -> f64 {
    let m = ((epsilon * n as f64 - 1e-9).ceil() as usize).clamp(1, n - 1);
    move |r: &[f64]| {
        let mut s = r.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        s[..m].iter().sum::<f64>() / m as f64
    }
}

/// `ties = "next_below"` is biased on purpose (draws whose top ties with the quantile still push the tied best
/// up), but its expected update must still ascend the top-m objective: a positive inner product with the exact
/// gradient, on every policy, n and epsilon.
#[test]
fn risk_seeking_with_next_below_ties_still_ascends_the_mean_of_the_top_m() {
    for (pi, p) in policies().iter().enumerate() {
        for n in 2..=6 {
            for epsilon in [0.2, 0.34, 0.5, 0.8] {
                let got = p.expected_update(n, &risk_cfg(n, epsilon, QuantileTies::NextBelow));
                let want = p.objective_gradient(n, top_mean(n, epsilon));
                let dot: f64 = got.iter().zip(&want).map(|(a, b)| a * b).sum();
                let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                let cosine = dot / (norm(&got) * norm(&want));
                eprintln!("policy {pi} n={n} eps={epsilon}: cosine {cosine:.4}");
                assert!(cosine > 0.0, "policy {pi} n={n} eps={epsilon}: got {got:?}, exact {want:?}");
            }
        }
    }
}

#[test]
fn grpo_with_the_leave_one_out_baseline_is_unbiased_and_the_group_mean_is_shrunk_by_n_minus_one_over_n() {
    for p in policies() {
        for n in 2..=6 {
            let mean_grad = p.max_of_k(1).1;
            let loo = GrpoConfig { baseline: Baseline::LeaveOneOut, ..cfg(AdvantageEstimator::Grpo, n) };
            assert_close(&p.expected_update(n, &loo), &mean_grad, 1e-9, "rloo");
            let shrunk: Vec<f64> = mean_grad.iter().map(|g| g * (n - 1) as f64 / n as f64).collect();
            assert_close(&p.expected_update(n, &cfg(AdvantageEstimator::Grpo, n)), &shrunk, 1e-9, "group mean");
        }
    }
}

#[test]
fn special_cases_coincide() {
    let groups: [&[f64]; 4] =
        [&[0.1, 0.5, 0.2, 0.9, 0.0, 0.3], &[0.3, 0.3, 0.9, 0.9], &[1.0, 0.0], &[0.2, 0.7, 0.7, 0.1, 0.7]];
    for rewards in groups {
        let n = rewards.len();
        let g = GroupInput::from_rewards(rewards);
        for scale_rewards in [false, true] {
            let at = |e: AdvantageEstimator, k: usize, baseline: Baseline| {
                let c = GrpoConfig {
                    max_k: MaxKConfig { k, ..Default::default() },
                    baseline,
                    scale_rewards,
                    ..cfg(e, n)
                };
                compute_advantages(&g, &c, 0).advantages
            };
            let max_n = at(AdvantageEstimator::MaxK, n, Baseline::GroupMean);
            assert_close(&max_n, &at(AdvantageEstimator::MaxLoo, n, Baseline::GroupMean), 1e-12, "k = n vs max_loo");
            let max_1 = at(AdvantageEstimator::MaxK, 1, Baseline::GroupMean);
            assert_close(&max_1, &at(AdvantageEstimator::Grpo, 1, Baseline::LeaveOneOut), 1e-12, "k = 1 vs rloo");
        }
    }
}

#[test]
fn an_annealed_k_moves_linearly_from_k_to_k_final() {
    let m = MaxKConfig { k: 8, k_final: Some(2), anneal_steps: 12 };
    let ks: Vec<usize> = [0, 1, 6, 11, 12, 100].iter().map(|&s| m.k_at(s)).collect();
    assert_eq!(ks, vec![8, 8, 5, 3, 2, 2]);
    // The estimator uses the k of the step it is called at.
    let g = GroupInput::from_rewards(&[0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4, 0.6]);
    let c = GrpoConfig { max_k: m, ..cfg(AdvantageEstimator::MaxK, 8) };
    let fixed = |k| GrpoConfig { max_k: MaxKConfig { k, ..Default::default() }, ..c.clone() };
    assert_eq!(compute_advantages(&g, &c, 6).advantages, compute_advantages(&g, &fixed(5), 0).advantages);
    assert_eq!(compute_advantages(&g, &c, 50).advantages, compute_advantages(&g, &fixed(2), 0).advantages);
}
