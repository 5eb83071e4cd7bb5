//! The model being trained: a decoder with LoRA adapters or with every weight trainable, its KL reference, and
//! the (detached or differentiable) scoring of token sequences in micro-batches.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use ideator_checkpoints::WeightsKind;
use ideator_model::{AdapterMode, Backprop, Decoder, Scored};

use crate::config::TrainMode;
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
    params: Vec<(String, Var)>,
    lora: bool,
    reference: Reference,
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
        Ok(TrainablePolicy { decoder, params, lora, reference, pad_id })
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
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
    pub fn training_mode(&self, dropout_seed: u64) -> AdapterMode {
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

    /// Detached log-probs of continuations sharing `prefix` under the reference; `None` without a reference.
    pub fn reference_continuation_logprobs(
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
        let s = decoder.score_continuations(
            prefix,
            conts,
            self.pad_id,
            AdapterMode::default(),
            temperature,
            Backprop::None,
        )?;
        Ok(Some(split_flat(&s.logprobs.to_vec1::<f32>()?, conts)))
    }

    /// Detached log-probs (temperature 1) of continuations sharing `prefix` under the current policy.
    pub fn current_continuation_logprobs(&self, prefix: &[u32], conts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
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
    pub fn weight_tensors(&self) -> HashMap<String, Tensor> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Restores trained tensors saved by `weight_tensors`.
    pub fn load_weight_tensors(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        if saved.len() != self.params.len() {
            return Err(TrainerError::Data(format!(
                "checkpoint holds {} trained tensors, this policy has {} (different LoRA settings or training mode?)",
                saved.len(),
                self.params.len()
            )));
        }
        for (name, var) in &self.params {
            let t = saved
                .get(name)
                .ok_or_else(|| TrainerError::Data(format!("checkpoint lacks trained tensor '{name}'")))?;
            if t.dims() != var.as_tensor().dims() {
                return Err(TrainerError::Data(format!("checkpoint tensor '{name}' has the wrong shape")));
            }
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        Ok(())
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
