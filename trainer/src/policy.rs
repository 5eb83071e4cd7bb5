//! The model being trained: a decoder with LoRA adapters or with every weight trainable, its KL reference, and
//! the (detached or differentiable) scoring of token sequences in micro-batches.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use ideator_checkpoints::WeightsKind;
use ideator_model::decoder::PrefixStates;
use ideator_model::{AdapterMode, Backprop, Decoder, Scored};

use crate::config::TrainMode;
use crate::optim::{AdamW, GradAccumulator};
use crate::{Result, TrainerError};

/// The reference policy of the KL term.
enum Reference {
    /// beta = 0: no reference is kept.
    None,
    /// LoRA: the base model is the decoder with its adapters switched off.
    BaseWithoutAdapters,
    /// Full fine-tuning: a frozen copy of the initial weights.
    Frozen(Box<Decoder>),
}

pub struct TrainablePolicy {
    decoder: Decoder,
    /// The decoder's trained variables, in the decoder's dtype: what the forward reads and the backward
    /// differentiates.
    params: Vec<(String, Var)>,
    /// f32 master copies of `params` when the decoder computes in bf16 (mixed precision, Micikevicius et al.
    /// 2018): the optimiser updates these and its moments stay f32, so updates far smaller than a bf16 weight's
    /// resolution (lr 1e-6 on weights of 0.05: 2^-8 relative steps) still accumulate. `None` in f32.
    master: Option<Vec<(String, Var)>>,
    lora: bool,
    reference: Reference,
    /// The reference's pass over the last prompt it scored. The reference is frozen, so its prompt states stay
    /// valid for the whole run, and the groups of later steps with the same prompt (an environment's prompt is
    /// usually fixed) run only their continuations: with the quickstart's 1,655-token prompt and 8 x 128
    /// tokens, about 60% of the reference pass.
    reference_prompt: Mutex<Option<PrefixStates>>,
    pad_id: u32,
}

impl TrainablePolicy {
    /// Prepares `decoder` for training in `mode`; keeps a reference only if `need_reference` (beta > 0).
    /// `seed` initialises LoRA adapters.
    pub fn new(mut decoder: Decoder, mode: &TrainMode, need_reference: bool, seed: u64, pad_id: u32) -> Result<Self> {
        let (params, lora, reference) = match mode {
            TrainMode::Lora { lora } => {
                let params = decoder.add_lora(lora, seed)?;
                (params, true, if need_reference { Reference::BaseWithoutAdapters } else { Reference::None })
            }
            TrainMode::Full => {
                let reference = if need_reference {
                    Reference::Frozen(Box::new(decoder.frozen_copy()?))
                } else {
                    Reference::None
                };
                (decoder.make_trainable()?, false, reference)
            }
        };
        let master = if decoder.dtype() == DType::F32 {
            None
        } else {
            let copies = params
                .iter()
                .map(|(n, v)| Ok((n.clone(), Var::from_tensor(&v.as_tensor().to_dtype(DType::F32)?)?)))
                .collect::<Result<Vec<_>>>()?;
            tracing::info!("training in {:?} with f32 master weights and optimiser state", decoder.dtype());
            Some(copies)
        };
        Ok(TrainablePolicy { decoder, params, master, lora, reference, reference_prompt: Mutex::new(None), pad_id })
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The trained parameters the optimiser updates and checkpoints hold: always f32 (the master copies when the
    /// decoder computes in bf16).
    pub fn params(&self) -> &[(String, Var)] {
        self.master.as_deref().unwrap_or(&self.params)
    }

    /// Adds the gradients of one backward pass (taken with respect to the decoder's variables) to `acc`, in f32.
    pub fn accumulate(&self, acc: &mut GradAccumulator, grads: &GradStore) -> Result<()> {
        acc.add(&self.params, grads)
    }

    /// One optimiser update of [`Self::params`] with the accumulated gradients, then the decoder's copies are
    /// refreshed from them. Returns the gradient norm before clipping (see [`AdamW::step`]).
    pub fn apply_update(&mut self, optimizer: &mut AdamW, grads: &[Option<Tensor>], lr: f64) -> Result<f64> {
        let norm = optimizer.step(self.params(), grads, lr)?;
        self.sync_copies()?;
        Ok(norm)
    }

    /// After the trained tensors changed: copies the f32 master weights into the decoder's (bf16) variables, and
    /// rebuilds the decoder's sampling copy when the base weights train (LoRA leaves them unchanged, and the
    /// adapters are read in f32 by sampling too).
    fn sync_copies(&mut self) -> Result<()> {
        if let Some(master) = &self.master {
            for ((_, compute), (_, m)) in self.params.iter().zip(master) {
                compute.set(&m.as_tensor().to_dtype(compute.dtype())?)?;
            }
        }
        if !self.lora {
            self.decoder.refresh_sampling_copy()?;
        }
        Ok(())
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn weights_kind(&self) -> WeightsKind {
        if self.lora {
            WeightsKind::Lora
        } else {
            WeightsKind::Full
        }
    }

    /// Adapter switches for sampling from the current policy.
    pub fn sampling_mode(&self) -> AdapterMode {
        AdapterMode { enabled: self.lora, dropout_seed: None }
    }

    /// Adapter switches for a training forward (LoRA dropout drawn from `dropout_seed`).
    pub(crate) fn training_mode(&self, dropout_seed: u64) -> AdapterMode {
        AdapterMode { enabled: self.lora, dropout_seed: Some(dropout_seed) }
    }

    /// Differentiable log-probs and entropies of continuations sharing `prefix` (the prefix is run once).
    /// Differentiate a loss built from them with [`Scored::backward`]: long prompts are scored with activation
    /// checkpointing (`Backprop::Auto`), where `loss.backward()` alone would stop at the top layer.
    pub fn score_continuations(
        &self,
        prefix: &[u32],
        conts: &[Vec<u32>],
        mode: AdapterMode,
        temperature: f64,
    ) -> Result<Scored<'_>> {
        Ok(self.decoder.score_continuations(prefix, conts, self.pad_id, mode, temperature, Backprop::Auto)?)
    }

    /// Detached log-probs of continuations sharing `prefix` under the reference; `None` without a reference. The
    /// prompt's pass is kept for the next call with the same prompt (`reference_prompt`; the same values).
    pub(crate) fn reference_continuation_logprobs(
        &self,
        prefix: &[u32],
        conts: &[Vec<u32>],
        temperature: f64,
    ) -> Result<Option<Vec<Vec<f32>>>> {
        let decoder = match &self.reference {
            Reference::None => return Ok(None),
            Reference::BaseWithoutAdapters => &self.decoder,
            Reference::Frozen(d) => d.as_ref(),
        };
        let mut kept = self.reference_prompt.lock().expect("reference prompt lock");
        if kept.as_ref().is_none_or(|states| states.prefix() != prefix) {
            *kept = Some(decoder.prefix_states(prefix, AdapterMode::default())?);
        }
        let states = kept.as_ref().expect("set above");
        let logprobs = decoder.score_after_prefix(states, conts, self.pad_id, temperature)?;
        Ok(Some(split_flat(&logprobs.to_vec1::<f32>()?, conts)))
    }

    /// Detached log-probs (temperature 1) of continuations sharing `prefix` under the current policy.
    pub(crate) fn current_continuation_logprobs(&self, prefix: &[u32], conts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let s = self.decoder.score_continuations(
            prefix,
            conts,
            self.pad_id,
            self.sampling_mode(),
            1.0,
            Backprop::None,
        )?;
        Ok(split_flat(&s.logprobs.to_vec1::<f32>()?, conts))
    }

    /// The trained tensors by name: adapters for LoRA, every weight for full fine-tuning.
    pub(crate) fn weight_tensors(&self) -> HashMap<String, Tensor> {
        self.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Restores trained tensors saved by `weight_tensors`.
    pub(crate) fn load_weight_tensors(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        if saved.len() != self.params().len() {
            return Err(TrainerError::Data(format!(
                "checkpoint holds {} trained tensors, this policy has {} (different LoRA settings or training mode?)",
                saved.len(),
                self.params().len()
            )));
        }
        for (name, var) in self.params() {
            let t = saved
                .get(name)
                .ok_or_else(|| TrainerError::Data(format!("checkpoint lacks trained tensor '{name}'")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(TrainerError::Data(format!("checkpoint tensor '{name}' has the wrong shape")));
            }
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        self.sync_copies()
    }

    /// Consumes the policy and returns its decoder (adapters still attached for LoRA).
    pub fn into_decoder(self) -> Decoder {
        self.decoder
    }
}

/// Splits a flat vector of per-token values into one vector per continuation.
fn split_flat(flat: &[f32], conts: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(conts.len());
    let mut at = 0;
    for c in conts {
        out.push(flat[at..at + c.len()].to_vec());
        at += c.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ideator_model::tiny::tiny_decoder;

    /// The reference's log-probs through the kept prompt equal a fresh pass over prompt and continuations, also
    /// when the prompt changes and changes back (the kept pass is replaced, never reused for another prompt).
    #[test]
    fn the_kept_reference_prompt_follows_the_prompt() {
        let conts = vec![vec![5, 9, 2], vec![7], vec![3, 3, 8, 1]];
        let (a, b): (Vec<u32>, Vec<u32>) = ((1..40).collect(), (3..25).rev().collect());
        for mode in [TrainMode::Lora { lora: Default::default() }, TrainMode::Full] {
            let policy = TrainablePolicy::new(tiny_decoder(1).unwrap(), &mode, true, 7, 0).unwrap();
            for (_, v) in policy.params() {
                // Move the policy away from its reference (LoRA's B starts at zero).
                v.set(&(v.as_tensor() + Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap()).unwrap()).unwrap();
            }
            let reference = tiny_decoder(1).unwrap();
            for prompt in [&a, &b, &a] {
                let kept = policy.reference_continuation_logprobs(prompt, &conts, 0.9).unwrap().unwrap();
                let fresh = reference
                    .score_continuations(prompt, &conts, 0, AdapterMode::default(), 0.9, Backprop::None)
                    .unwrap();
                let fresh = split_flat(&fresh.logprobs.to_vec1::<f32>().unwrap(), &conts);
                assert_eq!(kept, fresh, "{mode:?}, prompt of {} tokens", prompt.len());
            }
        }
    }
}
