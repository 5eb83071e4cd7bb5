//! The GRPO learner: scored groups in, one optimiser update out.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::advantages::{compute_advantages, is_zero_std, GroupInput};
use crate::config::{GrpoConfig, OptimConfig};
use crate::data::ScoredGroup;
use crate::loss::{grpo_loss, token_weights, LossStats, SequenceTerms};
use crate::micro_batches;
use crate::optim::{AdamW, GradAccumulator};
use crate::policy::TrainablePolicy;
use crate::{Result, TrainerError};

/// Metrics of one update (DESIGN section 5 lists what every step reports; TRL's metric names).
///
/// Serialised, it is the GRPO part of the pipeline's step record (`rollout::pipeline::StepRecord`), which
/// measures the step, the rewards and the time itself: the fields marked "not serialised" are for callers of
/// [`GrpoLearner::train_step`] outside the pipeline (tests, benchmarks) and read as their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpoStepStats {
    /// Updates before this one (not serialised).
    #[serde(skip)]
    pub step: u64,
    pub lr: f64,
    pub loss: f64,
    pub policy_loss: f64,
    pub kl: f64,
    pub entropy: f64,
    pub clip_low_frac: f64,
    pub clip_high_frac: f64,
    pub ratio_mean: f64,
    pub ratio_max: f64,
    pub grad_norm: f64,
    /// Mean, population std and max of the rewards trained on (not serialised).
    #[serde(skip)]
    pub reward_mean: f64,
    #[serde(skip)]
    pub reward_std: f64,
    #[serde(skip)]
    pub reward_max: f64,
    /// Fraction of groups whose rewards are all equal (not serialised).
    #[serde(skip)]
    pub frac_reward_zero_std: f64,
    pub completion_len_mean: f64,
    /// Sequences trained on (not serialised).
    #[serde(skip)]
    pub sequences: usize,
    pub trained_tokens: usize,
    /// Whether the optimiser applied an update (false when no sequence carried a gradient).
    pub updated: bool,
    /// Seconds of the reference model's pass.
    pub reference_seconds: f64,
    /// Seconds of the update after the reference pass (not serialised).
    #[serde(skip)]
    pub update_seconds: f64,
    /// Mean |log pi_train - log pi_rollout| over the tokens of groups sampled by the weights this update started
    /// from: how far the sampler (e.g. a bf16 sampling copy) is from the trained policy, in nats per token
    /// (includes LoRA dropout's noise when dropout is on). `None` when no group was on-policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_logprob_diff_mean: Option<f64>,
    /// Mean truncated importance weight `min(pi_train / pi_rollout, C)` over those tokens, and the fraction
    /// truncated at C (verl's `rollout_is_mean`, `rollout_is_ratio_fraction_high`); `None` without
    /// `grpo.rollout_is_threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_is_mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_is_ratio_fraction_high: Option<f64>,
    /// The advantage estimator's own metrics (`estimator/quantity`), averaged over the step's groups; empty for
    /// `grpo`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub advantage_metrics: BTreeMap<String, f64>,
}

/// Mean, population standard deviation and max of `rewards`; `None` when there are none. The step statistics of
/// the learner and of the pipeline's step record both come from here.
pub fn reward_moments(rewards: &[f64]) -> Option<(f64, f64, f64)> {
    if rewards.is_empty() {
        return None;
    }
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    Some((mean, std, rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max)))
}

/// Samples of one group that run through the policy together (they share the group's prompt).
struct MicroBatch<'g> {
    group: &'g ScoredGroup,
    /// (sample index in the group, advantage, token weight).
    members: Vec<(usize, f64, f64)>,
    /// Position among the step's micro-batches; seeds the micro-batch's LoRA dropout.
    index: u64,
    /// The reference's log-probs of each member's completion tokens, when beta > 0.
    reference: Option<Vec<Vec<f32>>>,
}

impl MicroBatch<'_> {
    fn continuations(&self) -> Vec<Vec<u32>> {
        self.members.iter().map(|&(j, _, _)| self.group.samples[j].completion_ids.clone()).collect()
    }
}

pub struct GrpoLearner {
    policy: TrainablePolicy,
    optimizer: AdamW,
    cfg: GrpoConfig,
    optim: OptimConfig,
    /// Updates in the whole run (for the schedule).
    total_steps: u64,
    /// Updates done so far.
    step: u64,
    seed: u64,
    /// Normaliser of the constant (Dr.GRPO) aggregation: the sampler's max new tokens.
    max_completion_tokens: usize,
}

pub use crate::state::{ExportedState, LearnerState};

use ideator_model::seed::mix;

impl GrpoLearner {
    pub fn new(
        policy: TrainablePolicy,
        cfg: GrpoConfig,
        optim: OptimConfig,
        total_steps: u64,
        max_completion_tokens: usize,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        let optimizer = AdamW::new(policy.params(), &optim)?;
        Ok(GrpoLearner { policy, optimizer, cfg, optim, total_steps, step: 0, seed, max_completion_tokens })
    }

    pub fn policy(&self) -> &TrainablePolicy {
        &self.policy
    }

    pub fn config(&self) -> &GrpoConfig {
        &self.cfg
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn lr(&self) -> f64 {
        self.optim.schedule.lr(self.optim.lr, self.step, self.total_steps)
    }

    /// One update from complete groups.
    pub fn train_step(&mut self, groups: &[ScoredGroup]) -> Result<GrpoStepStats> {
        if groups.is_empty() {
            return Err(TrainerError::Data("a GRPO step needs at least one group".into()));
        }
        let mut stats = GrpoStepStats { step: self.step, lr: self.lr(), ..Default::default() };
        let all_rewards: Vec<f64> = groups.iter().flat_map(|g| g.rewards()).collect();
        // No rewards at all (a caller outside the pipeline): the formulas' 0/0, NaN, and a max of -inf.
        (stats.reward_mean, stats.reward_std, stats.reward_max) =
            reward_moments(&all_rewards).unwrap_or((f64::NAN, f64::NAN, f64::NEG_INFINITY));
        stats.frac_reward_zero_std =
            groups.iter().filter(|g| is_zero_std(&g.rewards())).count() as f64 / groups.len() as f64;

        // Per group: the samples with tokens, their advantages and their share of the step loss.
        let mut lengths = Vec::new();
        let mut per_group: Vec<Vec<(usize, f64)>> = Vec::with_capacity(groups.len());
        let mut metric_sums: BTreeMap<String, f64> = BTreeMap::new();
        for g in groups {
            let out = compute_advantages(&GroupInput::from_group(g), &self.cfg, self.step);
            for (name, v) in out.metrics {
                *metric_sums.entry(name.to_string()).or_default() += v / groups.len() as f64;
            }
            let adv = out.advantages;
            let mut kept = Vec::new();
            for (j, (s, a)) in g.samples.iter().zip(adv).enumerate() {
                if s.completion_ids.is_empty() {
                    continue;
                }
                if s.behaviour_logprobs.len() != s.completion_ids.len() {
                    return Err(TrainerError::Data(format!(
                        "{} behaviour log-probs for {} completion tokens",
                        s.behaviour_logprobs.len(),
                        s.completion_ids.len()
                    )));
                }
                kept.push((j, a));
                lengths.push(s.completion_ids.len());
            }
            per_group.push(kept);
        }
        stats.advantage_metrics = metric_sums;
        stats.sequences = lengths.len();
        stats.completion_len_mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        let weights = token_weights(&lengths, self.cfg.loss_aggregation, self.max_completion_tokens);

        let t_update = Instant::now();
        let mut batches = self.micro_batches(groups, &per_group, &weights);
        let reference_seconds = self.reference_logprobs(&mut batches)?;
        let mut acc = GradAccumulator::new(self.policy.params().len());
        let mut loss_stats = LossStats::default();
        let gradient_bytes = micro_batches::gradient_bytes(self.policy.params().iter().map(|(_, v)| v));
        micro_batches::in_waves(
            &batches,
            micro_batches::wave_width(self.policy.decoder().device(), gradient_bytes),
            |batch| self.micro_batch_gradients(batch),
            |(s, grads)| {
                loss_stats.merge(&s);
                self.policy.accumulate(&mut acc, &grads)
            },
        )?;
        let any = !batches.is_empty();
        stats.reference_seconds = reference_seconds;
        let tokens = loss_stats.tokens.max(1) as f64;
        stats.trained_tokens = loss_stats.tokens;
        stats.loss = loss_stats.loss;
        stats.policy_loss = loss_stats.policy_loss;
        stats.kl = loss_stats.kl_sum / tokens;
        stats.entropy = loss_stats.entropy_sum / tokens;
        stats.clip_low_frac = loss_stats.clipped_low as f64 / tokens;
        stats.clip_high_frac = loss_stats.clipped_high as f64 / tokens;
        stats.ratio_mean = loss_stats.ratio_sum / tokens;
        stats.ratio_max = loss_stats.ratio_max;
        let mean_over = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
        stats.rollout_logprob_diff_mean = mean_over(loss_stats.mismatch_abs_sum, loss_stats.mismatch_tokens);
        stats.rollout_is_mean = mean_over(loss_stats.is_weight_sum, loss_stats.is_tokens);
        stats.rollout_is_ratio_fraction_high = mean_over(loss_stats.is_truncated as f64, loss_stats.is_tokens);
        if any {
            let grads = acc.into_grads();
            stats.grad_norm = self.policy.apply_update(&mut self.optimizer, &grads, stats.lr)?;
            stats.updated = true;
        }
        stats.update_seconds = t_update.elapsed().as_secs_f64() - reference_seconds;
        self.step += 1;
        Ok(stats)
    }

    /// The step's micro-batches in order: per group, its samples that carry a gradient (a zero advantage without KL
    /// or entropy bonus carries none, and is not run at all), `grpo.micro_batch` at a time. `per_group` holds each
    /// group's kept (sample, advantage) pairs and `weights` their token weights, in the same order.
    fn micro_batches<'g>(
        &self,
        groups: &'g [ScoredGroup],
        per_group: &[Vec<(usize, f64)>],
        weights: &[f64],
    ) -> Vec<MicroBatch<'g>> {
        let carries_gradient = |a: f64| a != 0.0 || self.cfg.beta > 0.0 || self.cfg.entropy_coef > 0.0;
        let mut weights = weights.iter();
        let mut batches = Vec::new();
        for (group, kept) in groups.iter().zip(per_group) {
            let members: Vec<(usize, f64, f64)> = kept
                .iter()
                .map(|&(j, a)| (j, a, *weights.next().expect("a token weight per kept sample")))
                .filter(|&(_, a, _)| carries_gradient(a))
                .collect();
            // Each micro-batch shares the group's prompt: it is run once per micro-batch, not once per sample.
            for chunk in members.chunks(self.cfg.micro_batch) {
                let index = batches.len() as u64;
                batches.push(MicroBatch { group, members: chunk.to_vec(), index, reference: None });
            }
        }
        batches
    }

    /// The reference's log-probs of every micro-batch (when beta > 0), in order, so that the reference keeps one
    /// prompt's pass for the micro-batches that share it. Returns the seconds taken.
    fn reference_logprobs(&self, batches: &mut [MicroBatch<'_>]) -> Result<f64> {
        let t0 = Instant::now();
        if self.cfg.beta > 0.0 {
            for batch in batches.iter_mut() {
                let g = batch.group;
                batch.reference = self.policy.reference_continuation_logprobs(
                    &g.prompt_ids,
                    &batch.continuations(),
                    g.temperature,
                )?;
            }
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    /// One micro-batch's forward pass, GRPO loss and backward pass: its loss statistics and gradients.
    fn micro_batch_gradients(&self, batch: &MicroBatch<'_>) -> Result<(LossStats, GradStore)> {
        let g = batch.group;
        let terms: Vec<SequenceTerms> = batch
            .members
            .iter()
            .enumerate()
            .map(|(k, &(j, a, w))| SequenceTerms {
                advantage: a,
                behaviour_logprobs: g.samples[j].behaviour_logprobs.clone(),
                reference_logprobs: batch.reference.as_ref().map(|r| r[k].clone()),
                token_weight: w,
                on_policy: g.policy_version == self.step,
            })
            .collect();
        let mode = self.policy.training_mode(mix(mix(self.seed, self.step), batch.index));
        let scored = self.policy.score_continuations(&g.prompt_ids, &batch.continuations(), mode, g.temperature)?;
        let (loss, s) = grpo_loss(&scored.logprobs, &scored.entropies, &terms, &self.cfg)?;
        if !s.loss.is_finite() {
            return Err(TrainerError::NonFinite(format!("loss ({})", s.loss)));
        }
        Ok((s, scored.backward(&loss)?))
    }

    /// Advances the step without an update, for a step whose every sample was excluded (the machine failed, not
    /// the ideas: there is nothing to learn from). The schedule moves on as if the step had been taken, so a
    /// resumed run and an uninterrupted one stay in step.
    pub fn skip_step(&mut self) -> GrpoStepStats {
        let stats = GrpoStepStats { step: self.step, lr: self.lr(), ..Default::default() };
        self.step += 1;
        stats
    }

    /// Trained tensors, optimiser tensors and counters, for a checkpoint.
    pub fn export(&self) -> ExportedState {
        crate::state::export(&self.policy, &self.optimizer, self.step)
    }

    /// Restores what `export` produced.
    pub fn restore(
        &mut self,
        weights: &HashMap<String, Tensor>,
        optimizer: &HashMap<String, Tensor>,
        state: &LearnerState,
    ) -> Result<()> {
        self.step = crate::state::restore(&mut self.policy, &mut self.optimizer, weights, optimizer, state)?;
        Ok(())
    }
}
