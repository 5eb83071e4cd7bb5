//! Supervised fine-tuning on (prompt, completion) pairs: the warm-up that teaches a small ideator the idea
//! format before RL (most GRPO groups of an untrained small model would score all zeros).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::OptimConfig;
use crate::micro_batches;
use crate::optim::{AdamW, GradAccumulator};
use crate::policy::TrainablePolicy;
use crate::state::{ExportedState, LearnerState};
use crate::{Result, TrainerError};

/// One supervised example: the loss covers the completion tokens only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftStepStats {
    pub step: u64,
    pub lr: f64,
    /// Mean negative log-likelihood per completion token.
    pub loss: f64,
    pub tokens: usize,
    pub grad_norm: f64,
    pub seconds: f64,
}

/// Examples of one prompt that run through the policy together.
struct SftMicroBatch<'a> {
    prompt: &'a [u32],
    completions: Vec<Vec<u32>>,
    /// Position among the step's micro-batches; seeds the micro-batch's LoRA dropout.
    index: u64,
}

pub struct SftLearner {
    policy: TrainablePolicy,
    optimizer: AdamW,
    optim: OptimConfig,
    micro_batch: usize,
    total_steps: u64,
    step: u64,
    seed: u64,
}

impl SftLearner {
    pub fn new(
        policy: TrainablePolicy,
        optim: OptimConfig,
        micro_batch: usize,
        total_steps: u64,
        seed: u64,
    ) -> Result<Self> {
        if micro_batch == 0 {
            return Err(TrainerError::Config("sft micro_batch must be at least 1".into()));
        }
        let optimizer = AdamW::new(policy.params(), &optim)?;
        Ok(SftLearner { policy, optimizer, optim, micro_batch, total_steps, step: 0, seed })
    }

    pub fn policy(&self) -> &TrainablePolicy {
        &self.policy
    }

    pub fn into_policy(self) -> TrainablePolicy {
        self.policy
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// Examples grouped by identical prompt (first-seen order), so each prompt is run once per micro-batch.
    fn by_prompt(batch: &[SftExample]) -> Result<Vec<(&[u32], Vec<&SftExample>)>> {
        let mut groups: Vec<(&[u32], Vec<&SftExample>)> = Vec::new();
        for ex in batch {
            if ex.prompt_ids.is_empty() || ex.completion_ids.is_empty() {
                return Err(TrainerError::Data("an SFT example needs a non-empty prompt and completion".into()));
            }
            match groups.iter_mut().find(|(p, _)| *p == ex.prompt_ids.as_slice()) {
                Some((_, members)) => members.push(ex),
                None => groups.push((&ex.prompt_ids, vec![ex])),
            }
        }
        Ok(groups)
    }

    /// One update on `batch` (token-mean NLL over all completion tokens of the batch).
    pub fn train_step(&mut self, batch: &[SftExample]) -> Result<SftStepStats> {
        let t0 = Instant::now();
        let total: usize = batch.iter().map(|e| e.completion_ids.len()).sum();
        let lr = self.optim.schedule.lr(self.optim.lr, self.step, self.total_steps);
        // Micro-batches of examples sharing a prompt, their index seeding their LoRA dropout; their passes run
        // side by side on the CPU's threads, their gradients summed in this order.
        let mut parts = Vec::new();
        for (prompt, members) in Self::by_prompt(batch)? {
            for chunk in members.chunks(self.micro_batch) {
                let completions = chunk.iter().map(|e| e.completion_ids.clone()).collect();
                parts.push(SftMicroBatch { prompt, completions, index: parts.len() as u64 });
            }
        }
        let mut acc = GradAccumulator::new(self.policy.params().len());
        let mut nll = 0f64;
        let gradient_bytes = micro_batches::gradient_bytes(self.policy.params().iter().map(|(_, v)| v));
        micro_batches::in_waves(
            &parts,
            micro_batches::wave_width(self.policy.decoder().device(), gradient_bytes),
            |part| {
                let mode = self.policy.training_mode(self.seed ^ (self.step << 20) ^ part.index);
                let scored = self.policy.score_continuations(part.prompt, &part.completions, mode, 1.0)?;
                let loss = (scored.logprobs.sum_all()? * (-1.0 / total as f64))?;
                Ok((loss.to_scalar::<f32>()? as f64, scored.backward(&loss)?))
            },
            |(loss, grads)| {
                nll += loss;
                self.policy.accumulate(&mut acc, &grads)
            },
        )?;
        if !nll.is_finite() {
            return Err(TrainerError::NonFinite(format!("SFT loss ({nll})")));
        }
        let grad_norm = self.policy.apply_update(&mut self.optimizer, &acc.into_grads(), lr)?;
        self.step += 1;
        Ok(SftStepStats {
            step: self.step - 1,
            lr,
            loss: nll,
            tokens: total,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Mean NLL per completion token over `examples`, without updating.
    pub(crate) fn eval_loss(&self, examples: &[SftExample]) -> Result<f64> {
        let total: usize = examples.iter().map(|e| e.completion_ids.len()).sum();
        let mut sum = 0f64;
        for (prompt, members) in Self::by_prompt(examples)? {
            for chunk in members.chunks(self.micro_batch) {
                let conts: Vec<Vec<u32>> = chunk.iter().map(|e| e.completion_ids.clone()).collect();
                let lps = self.policy.current_continuation_logprobs(prompt, &conts)?;
                sum += lps.iter().flatten().map(|&x| x as f64).sum::<f64>();
            }
        }
        Ok(-sum / total.max(1) as f64)
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
