//! Trainer settings, as they appear in the TOML config (sections `[grpo]`, `[optim]`, `[train]`).

use ideator_model::LoraConfig;
use serde::{Deserialize, Serialize};

use crate::schedule::ScheduleConfig;
use crate::{Result, TrainerError};

/// How per-token losses are averaged into the step's loss (DESIGN section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    /// GRPO: mean over sequences of each sequence's token mean.
    SequenceMean,
    /// DAPO: mean over all tokens of the batch.
    TokenMean,
    /// Dr.GRPO: sum over tokens divided by a constant (sequences x max completion tokens).
    Constant,
}

/// Baseline subtracted from rewards within a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    GroupMean,
    /// Mean of the other samples of the group (RLOO).
    LeaveOneOut,
}

/// Which advantage estimator turns a group's rewards into per-sample advantages (the registry in
/// [`crate::advantages`]; verl calls this `algorithm.adv_estimator`). Formulas and sources are on each function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// Group-relative reward (the mean of the group or of the others as baseline): raises the mean reward.
    #[default]
    Grpo,
    /// PKPO (Walder & Karkhanis 2025): raises E[max of k samples] for the configured `k`.
    MaxK,
    /// The k = n case of `max_k` (Tang et al. 2025; verl `grpo_passk`).
    MaxLoo,
    /// Risk-seeking policy gradient (Petersen et al. 2021): raises the mean of the top epsilon fraction.
    RiskSeeking,
    /// DARLING (Li et al. 2025): reward times the idea's normalised novelty within its group, then `grpo`.
    Diversity,
    /// Unlikeliness reward (He, Fried & Welleck 2025): rewards of the group's most likely ideas scaled down by rank.
    Unlikeliness,
}

impl AdvantageEstimator {
    /// Every estimator, in registry order.
    pub const ALL: [AdvantageEstimator; 6] = [
        AdvantageEstimator::Grpo,
        AdvantageEstimator::MaxK,
        AdvantageEstimator::MaxLoo,
        AdvantageEstimator::RiskSeeking,
        AdvantageEstimator::Diversity,
        AdvantageEstimator::Unlikeliness,
    ];

    /// The name used in configs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AdvantageEstimator::Grpo => "grpo",
            AdvantageEstimator::MaxK => "max_k",
            AdvantageEstimator::MaxLoo => "max_loo",
            AdvantageEstimator::RiskSeeking => "risk_seeking",
            AdvantageEstimator::Diversity => "diversity",
            AdvantageEstimator::Unlikeliness => "unlikeliness",
        }
    }
}

/// Settings of `max_k` (`[grpo.max_k]`): the k of E[max of k], optionally annealed linearly over updates
/// (PKPO found annealing k from high to low raised both max@1 and max@k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaxKConfig {
    /// k at update 0; 1 <= k <= group_size.
    pub k: usize,
    /// k reached after `anneal_steps` updates (none = k stays fixed).
    pub k_final: Option<usize>,
    /// Updates over which k moves linearly from `k` to `k_final` (rounded to the nearest integer).
    pub anneal_steps: u64,
}

impl Default for MaxKConfig {
    fn default() -> Self {
        MaxKConfig { k: 4, k_final: None, anneal_steps: 0 }
    }
}

impl MaxKConfig {
    /// k at update `step`: `k + (k_final - k) * min(step / anneal_steps, 1)`, rounded.
    pub fn k_at(&self, step: u64) -> usize {
        match self.k_final {
            Some(end) if self.anneal_steps > 0 => {
                let t = (step as f64 / self.anneal_steps as f64).min(1.0);
                (self.k as f64 + (end as f64 - self.k as f64) * t).round() as usize
            }
            Some(end) => end,
            None => self.k,
        }
    }
}

/// Settings of `risk_seeking` (`[grpo.risk_seeking]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskSeekingConfig {
    /// Fraction of each group that counts as its top (Petersen et al.'s epsilon): m = ceil(epsilon * n) samples.
    pub epsilon: f64,
    /// What a group whose top m all tie with the quantile contributes (see trainer/src/advantages/risk.rs).
    pub ties: QuantileTies,
}

impl Default for RiskSeekingConfig {
    fn default() -> Self {
        RiskSeekingConfig { epsilon: 0.25, ties: QuantileTies::NextBelow }
    }
}

/// `[grpo.risk_seeking] ties`: the baseline of a group whose top m rewards all equal its quantile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantileTies {
    /// The quantile stays the baseline, so such a group gives no gradient: the exact leave-one-out estimate of
    /// E[mean of the top m of n] (unbiased; the test by enumeration checks this mode).
    Exact,
    /// The baseline drops to the largest reward below the tied value, so the tied top samples are still pushed up
    /// and a policy whose best ideas keep repeating does not stall. Biased towards the tied top outcome (an
    /// extra push towards what is already the group's best), which is the intent.
    NextBelow,
}

/// Settings of `unlikeliness` (`[grpo.unlikeliness]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnlikelinessConfig {
    /// How much the most likely idea's reward is cut: r_i * (1 - beta * rank_i / n); He et al. use 0.25.
    pub beta: f64,
}

impl Default for UnlikelinessConfig {
    fn default() -> Self {
        UnlikelinessConfig { beta: 0.25 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Samples per prompt.
    pub group_size: usize,
    /// Divide advantages by the group's reward std (GRPO); false gives Dr.GRPO's unscaled advantages.
    /// Applies to every estimator (for `diversity` and `unlikeliness`, the std of the reshaped rewards).
    pub scale_rewards: bool,
    /// Baseline of `grpo`, `diversity` and `unlikeliness` (the others define their own).
    pub baseline: Baseline,
    /// How rewards become advantages (default `grpo`).
    pub advantage_estimator: AdvantageEstimator,
    pub max_k: MaxKConfig,
    pub risk_seeking: RiskSeekingConfig,
    pub unlikeliness: UnlikelinessConfig,
    /// Ratio clip range [1 - clip_low, 1 + clip_high]; clip_high > clip_low is DAPO's clip-higher.
    pub clip_low: f64,
    pub clip_high: f64,
    /// Coefficient of the k3 KL to the reference; 0 loads no reference model.
    pub beta: f64,
    /// Coefficient of the entropy bonus (0 = off).
    pub entropy_coef: f64,
    pub loss_aggregation: LossAggregation,
    /// Sequences per forward/backward pass; gradients accumulate over micro-batches, so any group fits.
    pub micro_batch: usize,
    /// Truncated importance sampling for a sampler that differs from the trained policy (a bf16 sampling copy):
    /// each token of a group sampled by the current weights is weighted by `min(pi_train / pi_rollout, C)` with
    /// this `C`, and its PPO ratio is taken against the trained policy's own log-prob (verl's rollout correction,
    /// `rollout_is_threshold` at token level in truncate mode; Yao et al. 2025 use C = 2). Unset (default): no
    /// weighting, the ratio is against the rollout log-probs.
    pub rollout_is_threshold: Option<f64>,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            group_size: 8,
            scale_rewards: true,
            baseline: Baseline::GroupMean,
            advantage_estimator: AdvantageEstimator::Grpo,
            max_k: MaxKConfig::default(),
            risk_seeking: RiskSeekingConfig::default(),
            unlikeliness: UnlikelinessConfig::default(),
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.04,
            entropy_coef: 0.0,
            loss_aggregation: LossAggregation::SequenceMean,
            micro_batch: 4,
            rollout_is_threshold: None,
        }
    }
}

impl GrpoConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainerError::Config(m.to_string()));
        if self.group_size < 2 {
            return bad("grpo.group_size must be at least 2 (advantages are relative to the group)");
        }
        check("grpo.clip_low", self.clip_low, "in [0, 1)", |x| (0.0..1.0).contains(&x))?;
        check("grpo.clip_high", self.clip_high, "positive", |x| x > 0.0)?;
        check("grpo.beta", self.beta, ">= 0", |x| x >= 0.0)?;
        check("grpo.entropy_coef", self.entropy_coef, ">= 0", |x| x >= 0.0)?;
        if self.micro_batch == 0 {
            return bad("grpo.micro_batch must be at least 1");
        }
        if let Some(c) = self.rollout_is_threshold {
            check("grpo.rollout_is_threshold", c, ">= 1 (it caps pi_train / pi_rollout; 2 is usual)", |x| x >= 1.0)?;
        }
        self.validate_estimator()
    }

    /// Checks the settings of the chosen estimator only, so unused tables may keep their defaults.
    fn validate_estimator(&self) -> Result<()> {
        let bad = |m: String| Err(TrainerError::Config(m));
        let n = self.group_size;
        match self.advantage_estimator {
            AdvantageEstimator::MaxK => {
                let m = &self.max_k;
                for (name, k) in [("grpo.max_k.k", Some(m.k)), ("grpo.max_k.k_final", m.k_final)] {
                    if let Some(k) = k.filter(|&k| k == 0 || k > n) {
                        return bad(format!(
                            "{name} = {k} must be between 1 and grpo.group_size ({n}): E[max of k] is estimated \
                             from the group's samples"
                        ));
                    }
                }
            }
            AdvantageEstimator::RiskSeeking => {
                let e = self.risk_seeking.epsilon;
                if !(e > 0.0 && e < 1.0) {
                    return bad(format!(
                        "grpo.risk_seeking.epsilon = {e} must be in (0, 1): it is the fraction of each group that \
                         counts as its top"
                    ));
                }
            }
            AdvantageEstimator::Unlikeliness => {
                let b = self.unlikeliness.beta;
                if !(0.0..=1.0).contains(&b) {
                    return bad(format!(
                        "grpo.unlikeliness.beta = {b} must be in [0, 1] (1 zeroes the most likely idea's reward)"
                    ));
                }
            }
            AdvantageEstimator::Grpo | AdvantageEstimator::MaxLoo | AdvantageEstimator::Diversity => {}
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this value (none = no clipping).
    pub grad_clip: Option<f64>,
    pub schedule: ScheduleConfig,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-5,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            grad_clip: Some(1.0),
            schedule: ScheduleConfig::default(),
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainerError::Config(m));
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("optim.lr must be positive, got {}", self.lr));
        }
        check("optim.beta1", self.beta1, "in [0, 1)", |x| (0.0..1.0).contains(&x))?;
        check("optim.beta2", self.beta2, "in [0, 1)", |x| (0.0..1.0).contains(&x))?;
        check("optim.weight_decay", self.weight_decay, ">= 0", |x| x >= 0.0)?;
        check("optim.eps", self.eps, "positive", |x| x > 0.0)?;
        if let Some(c) = self.grad_clip {
            check("optim.grad_clip", c, "positive (omit it to disable clipping)", |x| x > 0.0)?;
        }
        self.schedule.validate()
    }
}

/// Refuses `x` unless it is finite and `ok(x)` holds; `what` names the range (e.g. "in [0, 1)"). Checks state what
/// must hold rather than what must not: every comparison with NaN is false, so `x < 0.0` lets NaN through.
///
/// Errors: [`TrainerError::Config`] naming `key`, the range and the value.
pub(crate) fn check(key: &str, x: f64, what: &str, ok: impl Fn(f64) -> bool) -> Result<()> {
    if x.is_finite() && ok(x) {
        Ok(())
    } else {
        Err(TrainerError::Config(format!("{key} must be {what}, got {x}")))
    }
}

/// LoRA adapters or every weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum TrainMode {
    Lora {
        #[serde(default)]
        lora: LoraConfig,
    },
    Full,
}

impl Default for TrainMode {
    fn default() -> Self {
        TrainMode::Lora { lora: LoraConfig::default() }
    }
}

impl TrainMode {
    /// Checks the LoRA settings (rank, alpha, dropout, targets); full training has none.
    pub fn validate(&self) -> Result<()> {
        match self {
            TrainMode::Lora { lora } => Ok(lora.validate()?),
            TrainMode::Full => Ok(()),
        }
    }
}
