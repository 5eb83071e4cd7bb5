//! A frozen model's pass over a prompt, kept to score later continuations of the same prompt without running the
//! prompt again: the GRPO reference (the base model, or a frozen copy) sees the same prompt at every step of a
//! run on one environment, and its prompt states never change. The scores equal [`Decoder::score_continuations`]'s
//! without a graph, bit for bit: the same ops run on the same inputs, the prompt's before the continuations'.

use candle_core::Tensor;

use super::block::{KeyValues, Pass};
use super::Decoder;
use crate::linear::AdapterMode;
use crate::scored::Backprop;
use crate::{ModelError, Result};

/// Every layer's keys and values of a prompt and its last position's hidden state (before the final norm), all
/// detached; built by [`Decoder::prefix_states`] for one decoder and adapter switch.
#[derive(Debug, Clone)]
pub struct PrefixStates {
    prefix: Vec<u32>,
    mode: AdapterMode,
    layers: Vec<KeyValues>,
    /// (1, 1, hidden).
    last: Tensor,
}

impl PrefixStates {
    /// The prompt these states belong to.
    pub fn prefix(&self) -> &[u32] {
        &self.prefix
    }
}

impl Decoder {
    /// Runs `prefix` through every layer under `mode` (no dropout, no graph) and keeps what its continuations
    /// need. Memory: 2 x layers x prefix x kv_heads x head_dim floats (76 MB for SmolLM2-135M and 1,650 tokens).
    ///
    /// # Errors
    /// An empty prefix, or one that leaves no position for a continuation.
    pub fn prefix_states(&self, prefix: &[u32], mode: AdapterMode) -> Result<PrefixStates> {
        // At least one position must be left for a continuation.
        if prefix.is_empty() || prefix.len() >= self.max_positions() {
            return Err(ModelError::Invalid(format!(
                "a prefix of 1 to {} tokens is needed, got {}",
                self.max_positions() - 1,
                prefix.len()
            )));
        }
        let mode = AdapterMode { dropout_seed: None, ..mode };
        let pair = self.pair_input(prefix, &[vec![0]], 0, mode)?;
        let (mut xp, _) = self.embed_pair(&pair)?;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (x, kv) = block.forward(&xp.detach(), &pair.rope_p, Pass::Train { prefix: None }, mode)?;
            layers.push(kv.detach());
            xp = x;
        }
        let last = xp.narrow(1, prefix.len() - 1, 1)?.detach();
        Ok(PrefixStates { prefix: prefix.to_vec(), mode, layers, last })
    }

    /// Log-probabilities at `temperature` of every token of `continuations` after the prompt of `states` (flat,
    /// continuation by continuation, as [`Decoder::score_continuations`]), without a graph.
    ///
    /// # Errors
    /// Empty continuations, too many positions, a bad temperature, or states of a decoder with other layers.
    pub fn score_after_prefix(
        &self,
        states: &PrefixStates,
        continuations: &[Vec<u32>],
        pad_id: u32,
        temperature: f64,
    ) -> Result<Tensor> {
        self.check_scoring(&states.prefix, continuations, temperature)?;
        if states.layers.len() != self.blocks.len() {
            return Err(ModelError::Invalid("prefix states of a decoder with another number of layers".into()));
        }
        let pair = self.pair_input(&states.prefix, continuations, pad_id, states.mode)?;
        let (_, mut xc) = self.embed_pair(&pair)?;
        for (block, kv) in self.blocks.iter().zip(&states.layers) {
            (xc, _) = block.forward(&xc.detach(), &pair.rope_c, Pass::Train { prefix: Some(kv) }, states.mode)?;
        }
        let (logprobs, _) =
            self.continuation_scores(&states.last, &xc.detach(), continuations, temperature, Backprop::None)?;
        Ok(logprobs)
    }
}
