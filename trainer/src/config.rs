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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// Samples per prompt.
    pub group_size: usize,
    /// Divide advantages by the group's reward std (GRPO); false gives Dr.GRPO's unscaled advantages.
    pub scale_rewards: bool,
    pub baseline: Baseline,
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
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            group_size: 8,
            scale_rewards: true,
            baseline: Baseline::GroupMean,
            clip_low: 0.2,
            clip_high: 0.2,
            beta: 0.04,
            entropy_coef: 0.0,
            loss_aggregation: LossAggregation::SequenceMean,
            micro_batch: 4,
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
