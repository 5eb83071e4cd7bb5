//! Learnability benchmark of the advantage estimators on the `peaks` landscape (issue 17), with a cheap simulated
//! policy instead of an LLM: a product of independent softmax categoricals, one per knob (optimizer, activation,
//! norm, schedule, and the learning rate over 7 values), started with a prior towards the defaults (+PRIOR logit,
//! default 1), trained by the same registry functions the GRPO learner uses (`compute_advantages`) and the
//! policy-gradient step theta += lr * (1/G) sum_i A_i grad log p(x_i) (on-policy, one update per group, so the
//! ratio clip of the real loss is inactive).
//!
//! Every arm gets the same budget of executions (steps x group size) and the same seeds. Reported per arm, over
//! the seeds, mean and 95% interval (1.96 standard errors) of:
//! - best@N: the best reward among the N recipes the run executed (what a researcher keeps);
//! - the final policy's exact E[reward] and E[max of 8 samples] (computed over all 672 recipes);
//! - the final policy's probability of peak A (the 1.0 peak).
//!
//! Run: `cargo run --release -p ideator-envs --example peaks_learnability -- [SEEDS] [STEPS] [GROUP] [PRIOR]`
//! (defaults 200 seeds, 60 steps, group 8, default logit 1; a larger PRIOR starts from a more collapsed policy).
//! Deterministic for given arguments.

use std::collections::BTreeMap;

use ideator_envs::knobs::KnobValue;
use ideator_envs::peaks::{Peaks, ACTIVATIONS, NORMS, OPTIMIZERS, SCHEDULES};
use ideator_envs::recipe::Recipe;
use ideator_trainer::advantages::{compute_advantages, GroupInput};
use ideator_trainer::config::{AdvantageEstimator, MaxKConfig, QuantileTies, RiskSeekingConfig};
use ideator_trainer::GrpoConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LRS: [f64; 7] = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 2e-2, 5e-2];

/// The knobs the policy chooses, with their options as text and the default's index.
fn knob_space() -> Vec<(&'static str, Vec<KnobValue>, usize)> {
    let choice = |xs: &[&str]| xs.iter().map(|s| KnobValue::Choice(s.to_string())).collect::<Vec<_>>();
    vec![
        ("optimizer", choice(&OPTIMIZERS), 0),
        ("activation", choice(&ACTIVATIONS), 0),
        ("norm", choice(&NORMS), 0),
        ("schedule", choice(&SCHEDULES), 0),
        ("lr", LRS.iter().map(|&l| KnobValue::Float(l)).collect(), 1),
    ]
}

/// Product of per-knob categoricals.
struct Policy {
    logits: Vec<Vec<f64>>,
}

impl Policy {
    /// Every knob's default gets logit `prior`, the other options 0.
    fn new(space: &[(&str, Vec<KnobValue>, usize)], prior: f64) -> Self {
        let logits = space
            .iter()
            .map(|(_, opts, default)| (0..opts.len()).map(|i| if i == *default { prior } else { 0.0 }).collect())
            .collect();
        Policy { logits }
    }

    fn probs(&self) -> Vec<Vec<f64>> {
        self.logits
            .iter()
            .map(|l| {
                let m = l.iter().copied().fold(f64::MIN, f64::max);
                let z: f64 = l.iter().map(|x| (x - m).exp()).sum();
                l.iter().map(|x| (x - m).exp() / z).collect()
            })
            .collect()
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Vec<usize> {
        self.probs()
            .iter()
            .map(|p| {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                p.iter()
                    .position(|&q| {
                        acc += q;
                        u < acc
                    })
                    .unwrap_or(p.len() - 1)
            })
            .collect()
    }

    fn log_prob(&self, choice: &[usize]) -> f64 {
        self.probs().iter().zip(choice).map(|(p, &c)| p[c].ln()).sum()
    }

    /// theta += lr * (1/G) sum_i A_i (e_{x_i} - p), knob by knob.
    fn step(&mut self, choices: &[Vec<usize>], advantages: &[f64], lr: f64) {
        let probs = self.probs();
        let g = choices.len() as f64;
        for (knob, p) in probs.iter().enumerate() {
            for (choice, a) in choices.iter().zip(advantages) {
                for (o, q) in p.iter().enumerate() {
                    let score = f64::from(u8::from(o == choice[knob])) - q;
                    self.logits[knob][o] += lr * a * score / g;
                }
            }
        }
    }
}

/// Every recipe of the space with its reward (the landscape is small enough to enumerate).
struct Landscape {
    space: Vec<(&'static str, Vec<KnobValue>, usize)>,
    rewards: BTreeMap<Vec<usize>, f64>,
}

impl Landscape {
    fn new() -> Self {
        let space = knob_space();
        let schema = Peaks::schema();
        let mut rewards = BTreeMap::new();
        let sizes: Vec<usize> = space.iter().map(|k| k.1.len()).collect();
        let total: usize = sizes.iter().product();
        for code in 0..total {
            let mut rest = code;
            let choice: Vec<usize> = sizes
                .iter()
                .map(|s| {
                    let c = rest % s;
                    rest /= s;
                    c
                })
                .collect();
            let set = space.iter().zip(&choice).map(|((name, opts, _), &c)| (name.to_string(), opts[c].clone()));
            let reward = Peaks::score(&Recipe::with_changes(&schema, set.collect())).0;
            rewards.insert(choice, reward);
        }
        Landscape { space, rewards }
    }

    /// Exact E[reward], E[max of k] and P(peak A) under the policy.
    fn evaluate(&self, policy: &Policy, k: i32) -> (f64, f64, f64) {
        let probs = policy.probs();
        let mut outcomes: Vec<(f64, f64)> = self
            .rewards
            .iter()
            .map(|(c, &r)| (r, c.iter().enumerate().map(|(knob, &o)| probs[knob][o]).product::<f64>()))
            .collect();
        outcomes.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mean = outcomes.iter().map(|(r, p)| r * p).sum();
        // E[max of k] = sum_j r_j (F_j^k - F_{j-1}^k) over outcomes sorted by reward.
        let (mut cdf, mut max_k) = (0.0, 0.0);
        for (r, p) in &outcomes {
            let next = cdf + p;
            max_k += r * (f64::powi(next, k) - f64::powi(cdf, k));
            cdf = next;
        }
        // Peak A is a combination of optimizer muon (2), activation relu2 (1) and norm rmsnorm (1), at any lr.
        let on_a: f64 = self
            .rewards
            .keys()
            .filter(|c| c[0] == 2 && c[1] == 1 && c[2] == 1)
            .map(|c| c.iter().enumerate().map(|(knob, &o)| probs[knob][o]).product::<f64>())
            .sum();
        (mean, max_k, on_a)
    }
}

struct Arm {
    name: &'static str,
    cfg: GrpoConfig,
}

fn arms(group: usize, steps: u64) -> Vec<Arm> {
    let base = GrpoConfig { group_size: group, ..Default::default() };
    let with = |e: AdvantageEstimator| GrpoConfig { advantage_estimator: e, ..base.clone() };
    let max_k = |k, k_final| GrpoConfig {
        max_k: MaxKConfig { k, k_final, anneal_steps: steps },
        ..with(AdvantageEstimator::MaxK)
    };
    let risk = |ties| GrpoConfig {
        risk_seeking: RiskSeekingConfig { epsilon: 0.25, ties },
        ..with(AdvantageEstimator::RiskSeeking)
    };
    vec![
        Arm { name: "grpo", cfg: base.clone() },
        Arm { name: "max_k k=2", cfg: max_k(2, None) },
        Arm { name: "max_k k=4", cfg: max_k(4, None) },
        Arm { name: "max_k k=8->1", cfg: max_k(group, Some(1)) },
        Arm { name: "max_loo", cfg: with(AdvantageEstimator::MaxLoo) },
        Arm { name: "risk_seeking eps=0.25 exact ties", cfg: risk(QuantileTies::Exact) },
        Arm { name: "risk_seeking eps=0.25 next_below", cfg: risk(QuantileTies::NextBelow) },
        Arm { name: "diversity", cfg: with(AdvantageEstimator::Diversity) },
        Arm { name: "unlikeliness", cfg: with(AdvantageEstimator::Unlikeliness) },
    ]
}

/// One run: best reward found, final exact mean, final E[max of 8], final P(peak A).
fn run(land: &Landscape, cfg: &GrpoConfig, (steps, group, prior): (u64, usize, f64), lr: f64, seed: u64) -> [f64; 4] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut policy = Policy::new(&land.space, prior);
    let mut best = f64::MIN;
    for step in 0..steps {
        let choices: Vec<Vec<usize>> = (0..group).map(|_| policy.sample(&mut rng)).collect();
        let rewards: Vec<f64> = choices.iter().map(|c| land.rewards[c]).collect();
        best = rewards.iter().copied().fold(best, f64::max);
        let input = GroupInput {
            clusters: choices.iter().map(|c| Some(c.iter().fold(0u64, |h, &o| h * 31 + o as u64))).collect(),
            seq_logprobs: choices.iter().map(|c| policy.log_prob(c)).collect(),
            rewards,
        };
        let adv = compute_advantages(&input, cfg, step).advantages;
        policy.step(&choices, &adv, lr);
    }
    let (mean, max8, peak_a) = land.evaluate(&policy, 8);
    [best, mean, max8, peak_a]
}

/// Mean and 1.96 standard errors.
fn interval(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, 1.96 * (var / n).sqrt())
}

fn main() {
    let args: Vec<f64> =
        std::env::args().skip(1).map(|a| a.parse().expect("arguments: SEEDS STEPS GROUP PRIOR")).collect();
    let seeds = args.first().copied().unwrap_or(200.0) as u64;
    let steps = args.get(1).copied().unwrap_or(60.0) as u64;
    let group = args.get(2).copied().unwrap_or(8.0) as usize;
    let prior = args.get(3).copied().unwrap_or(1.0);
    let land = Landscape::new();
    let (start_mean, start_max8, start_a) = land.evaluate(&Policy::new(&land.space, prior), 8);
    println!(
        "peaks landscape, {} recipes; start policy (default logit {prior}): E[reward] {start_mean:.4}, E[max of 8] {start_max8:.4}, \
         P(peak A) {start_a:.4}",
        land.rewards.len()
    );
    println!("budget: {steps} steps x group {group} = {} executions per run, {seeds} seeds\n", steps * group as u64);
    println!("| arm | lr | best@N | final E[reward] | final E[max of 8] | final P(peak A) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    // The frozen start policy (learning rate 0) is best-of-N sampling without training: the reference every
    // objective has to beat at the same budget.
    let frozen = Arm { name: "frozen start policy", cfg: GrpoConfig { group_size: group, ..Default::default() } };
    for arm in std::iter::once(frozen).chain(arms(group, steps)) {
        let lrs: &[f64] = if arm.name.starts_with("frozen") { &[0.0] } else { &[0.1, 0.3, 1.0] };
        for &lr in lrs {
            let runs: Vec<[f64; 4]> =
                (0..seeds).map(|s| run(&land, &arm.cfg, (steps, group, prior), lr, s)).collect();
            let cell = |i: usize| {
                let (m, h) = interval(&runs.iter().map(|r| r[i]).collect::<Vec<_>>());
                format!("{m:.4} ± {h:.4}")
            };
            println!("| {} | {lr} | {} | {} | {} | {} |", arm.name, cell(0), cell(1), cell(2), cell(3));
        }
    }
}
