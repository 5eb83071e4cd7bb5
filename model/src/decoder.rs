//! The decoder: one implementation of the Llama / Qwen2 / Qwen3 block, with two forward paths.
//!
//! - `hidden_states` is the trainable forward over whole (padded) sequences. It uses only ops that carry
//!   gradients (composed RMS norm, composed softmax, differentiable RoPE): candle's fused kernels silently
//!   drop the gradient (DESIGN section 7).
//! - `decode` is the detached, KV-cached, batched forward used for sampling. It uses the fused kernels.
//!
//! Grouped-query attention never copies keys/values per query head: queries are reshaped to
//! (batch, kv_heads, group * time, head_dim) so each key/value head is multiplied once by its whole group.
//! Weights use the Hugging Face layout (q/k rows in "half rotation" order); GGUF loading un-permutes them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::config::ModelConfig;
use crate::kv_cache::KvCache;
use crate::linear::{AdapterMode, Linear};
use crate::lora::{init_rng, LoraConfig, LoraTarget};
use crate::rope::Rope;
use crate::scored::{activation_memory, Backprop, PairInput, Scored, Tape};
use crate::{ModelError, Result};

/// Additive mask value: finite so that a fully masked row (a pad query) softmaxes to uniform, not NaN.
const MASKED: f32 = -1e9;

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    fn linear_mut(&mut self, target: LoraTarget) -> &mut Linear {
        match target {
            LoraTarget::Q => &mut self.q,
            LoraTarget::K => &mut self.k,
            LoraTarget::V => &mut self.v,
            LoraTarget::O => &mut self.o,
            LoraTarget::Gate => &mut self.gate,
            LoraTarget::Up => &mut self.up,
            LoraTarget::Down => &mut self.down,
        }
    }

    fn linear(&self, target: LoraTarget) -> &Linear {
        match target {
            LoraTarget::Q => &self.q,
            LoraTarget::K => &self.k,
            LoraTarget::V => &self.v,
            LoraTarget::O => &self.o,
            LoraTarget::Gate => &self.gate,
            LoraTarget::Up => &self.up,
            LoraTarget::Down => &self.down,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Tensor>,
    rope: Rope,
    device: Device,
}

/// Input of the trainable forward: token ids (batch, time) and which positions are real tokens.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub ids: Tensor,
    /// 1 for a token, 0 for padding, per (batch, time). Padding is on the right: a real token never attends
    /// to the padding after it, so causal attention needs no padding mask.
    pub mask: Vec<Vec<u8>>,
}

impl TokenBatch {
    /// Right-pads sequences of different lengths into one batch.
    pub fn right_padded(seqs: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Invalid("a batch needs at least one non-empty sequence".into()));
        }
        let t = seqs.iter().map(Vec::len).max().unwrap();
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut mask = Vec::with_capacity(seqs.len());
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, t - s.len()));
            let mut m = vec![1u8; s.len()];
            m.resize(t, 0);
            mask.push(m);
        }
        Ok(TokenBatch { ids: Tensor::from_vec(ids, (seqs.len(), t), device)?, mask })
    }
}

impl Decoder {
    /// Builds the decoder from tensors named as in Hugging Face checkpoints (`model.layers.0.self_attn.q_proj.weight`).
    /// All tensors are converted to `dtype`.
    pub fn from_tensors(
        cfg: ModelConfig,
        mut tensors: HashMap<String, Tensor>,
        rope_freq_factors: Option<Vec<f32>>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| ModelError::Unsupported(format!("the checkpoint has no tensor '{name}'")))?;
            if t.dims() != shape {
                return Err(ModelError::Unsupported(format!(
                    "tensor '{name}' has shape {:?}, the config implies {:?}",
                    t.dims(),
                    shape
                )));
            }
            Ok(t.to_dtype(dtype)?.to_device(device)?)
        };
        let h = cfg.hidden_size;
        let q_out = cfg.num_heads * cfg.head_dim;
        let kv_out = cfg.num_kv_heads * cfg.head_dim;
        let embed = take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                let w = take(&format!("{p}.{name}.weight"), &[out, inp])?;
                let b = if bias { Some(take(&format!("{p}.{name}.bias"), &[out])?) } else { None };
                Ok(Linear::new(w, b))
            };
            let q = lin("self_attn.q_proj", q_out, h, cfg.qkv_bias)?;
            let k = lin("self_attn.k_proj", kv_out, h, cfg.qkv_bias)?;
            let v = lin("self_attn.v_proj", kv_out, h, cfg.qkv_bias)?;
            let o = lin("self_attn.o_proj", h, q_out, false)?;
            let gate = lin("mlp.gate_proj", cfg.intermediate_size, h, false)?;
            let up = lin("mlp.up_proj", cfg.intermediate_size, h, false)?;
            let down = lin("mlp.down_proj", h, cfg.intermediate_size, false)?;
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(take(&format!("{p}.self_attn.q_norm.weight"), &[cfg.head_dim])?),
                    Some(take(&format!("{p}.self_attn.k_norm.weight"), &[cfg.head_dim])?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                attn_norm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                q,
                k,
                v,
                o,
                q_norm,
                k_norm,
                ffn_norm: take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate,
                up,
                down,
            });
        }
        let final_norm = take("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            tensors.remove("lm_head.weight");
            None
        } else {
            Some(take("lm_head.weight", &[cfg.vocab_size, h])?)
        };
        let rope = Rope::new(&cfg, rope_freq_factors.as_deref(), device)?;
        if let Some(extra) = tensors.keys().find(|k| !k.contains("rotary_emb")) {
            tracing::warn!("ignoring unexpected tensor '{extra}' in the checkpoint");
        }
        Ok(Decoder { cfg, embed, layers, final_norm, lm_head, rope, device: device.clone() })
    }

    /// Builds the decoder from loaded weights.
    pub fn from_raw(raw: crate::weights::RawWeights, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_tensors(raw.config, raw.tensors, raw.rope_freq_factors, dtype, device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// The output projection (V, H): the embedding when tied.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of parameters one decode step reads (`decode`): every layer's norms and projections (with their
    /// biases, and their LoRA adapters when `mode` enables them), the final norm and the output head once. The
    /// embedding rows of the new tokens are left out (a few KB); with a tied head the embedding is counted once,
    /// as the head. The weight-streaming limit of decoding divides the read bandwidth by this
    /// ([`crate::machine::StreamingLimit`]).
    pub fn decode_weight_bytes(&self, mode: AdapterMode) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let linear = |l: &Linear| {
            let lora = match (&l.lora, mode.enabled) {
                (Some(a), true) => bytes(a.a.as_tensor()) + bytes(a.b.as_tensor()),
                _ => 0,
            };
            bytes(&l.weight) + l.bias.as_ref().map_or(0, bytes) + lora
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].into_iter().map(linear).sum::<usize>()
                    + bytes(&l.attn_norm)
                    + bytes(&l.ffn_norm)
                    + l.q_norm.as_ref().map_or(0, bytes)
                    + l.k_norm.as_ref().map_or(0, bytes)
            })
            .sum();
        layers + bytes(&self.final_norm) + bytes(self.lm_head_weight())
    }

    /// Longest sequence the position tables cover.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    // ------------------------------------------------------------------------------------------------------
    // Trainable forward
    // ------------------------------------------------------------------------------------------------------

    /// Final-norm hidden states (batch, time, hidden) of a padded batch. Differentiable end to end.
    pub fn hidden_states(&self, batch: &TokenBatch, mode: AdapterMode) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        if batch.mask.len() != b || batch.mask.iter().any(|r| r.len() != t) {
            return Err(ModelError::Invalid("mask shape does not match the ids".into()));
        }
        if batch.mask.iter().any(|r| r.windows(2).any(|w| w[0] < w[1])) {
            return Err(ModelError::Invalid("the trainable forward takes right-padded batches only".into()));
        }
        if t > self.max_positions() {
            return Err(ModelError::Invalid(format!(
                "sequence of {t} tokens exceeds the model's {} positions",
                self.max_positions()
            )));
        }
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let (cos, sin) = self.rope.tables(&Tensor::from_vec(positions, (b, t), &self.device)?)?;
        let mut x = self.embed.index_select(&batch.ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let i = i as u64;
            let (q, k, v) = self.train_qkv(layer, i, &x, &cos, &sin, mode)?;
            let y = self.train_attention(&q, &k, &v, 0)?;
            x = self.train_block_tail(layer, i, &x, &y, mode)?;
        }
        rms_norm_differentiable(&x, &self.final_norm, self.cfg.rms_norm_eps)
    }

    /// Normed input -> q (b, heads, t, hd), k and v (b, kv_heads, t, hd) with rotary applied, all differentiable.
    fn train_qkv(
        &self,
        layer: &Layer,
        index: u64,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mode: AdapterMode,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let h = rms_norm_differentiable(x, &layer.attn_norm, cfg.rms_norm_eps)?;
        let q = layer.q.forward(&h, mode, salt(index, 0))?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let k = layer.k.forward(&h, mode, salt(index, 1))?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let v = layer.v.forward(&h, mode, salt(index, 2))?.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (
                rms_norm_differentiable(&q, qn, cfg.rms_norm_eps)?,
                rms_norm_differentiable(&k, kn, cfg.rms_norm_eps)?,
            ),
            _ => (q, k),
        };
        let q = Rope::apply_differentiable(&q, cos, sin)?.contiguous()?;
        let k = Rope::apply_differentiable(&k, cos, sin)?.contiguous()?;
        Ok((q, k, v))
    }

    /// Causal grouped-query attention of q (b, heads, tq, hd) over k, v (b, kv_heads, offset + tq, hd): query i
    /// sees keys 0..=offset + i. Memory-efficient on CPU (see attention.rs). Returns (b, tq, heads * hd).
    fn train_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, nh, tq, hd) = q.dims4()?;
        let nkv = self.cfg.num_kv_heads;
        let group = nh / nkv;
        // Heads h = kv * group + g, so (b, heads, t, d) is already (b, kv_heads, group * t, d) in memory.
        let q = q.reshape((b, nkv, group * tq, hd))?;
        let y = crate::attention::causal_attention(&q, k, v, group, offset)?;
        Ok(y.reshape((b, nh, tq, hd))?.transpose(1, 2)?.reshape((b, tq, nh * hd))?)
    }

    /// Output projection, residual, and the MLP with its residual.
    fn train_block_tail(
        &self,
        layer: &Layer,
        index: u64,
        x: &Tensor,
        y: &Tensor,
        mode: AdapterMode,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let x = (x + layer.o.forward(y, mode, salt(index, 3))?)?;
        let h = rms_norm_differentiable(&x, &layer.ffn_norm, eps)?;
        let gate = layer.gate.forward(&h, mode, salt(index, 4))?.silu()?;
        let up = layer.up.forward(&h, mode, salt(index, 5))?;
        let ffn = layer.down.forward(&(gate * up)?, mode, salt(index, 6))?;
        Ok((x + ffn)?)
    }

    /// Log-probabilities (and entropies) of continuations that share one prefix, e.g. the samples of a GRPO group
    /// or SFT answers to one prompt. The prefix is run once and its keys/values are broadcast to every
    /// continuation, instead of being recomputed per sequence: for a 500-token prompt and 100-token answers this
    /// is several times less work and memory than [`Decoder::score_tokens`] on the concatenations, with the same
    /// values and gradients (the prefix's gradient sums over the continuations, as it should).
    ///
    /// Every token of every continuation is scored (the first one given the prefix), under the distribution
    /// `softmax(logits / temperature)` — the one a sampler at that temperature drew from, so that importance
    /// ratios against its behaviour log-probs are 1 for an unchanged policy. Returns flat rank-1 tensors,
    /// continuation by continuation; `backprop` chooses between no graph, the full graph and activation
    /// checkpointing (see scored.rs), and [`Scored::backward`] differentiates a loss built from them.
    pub fn score_continuations(
        &self,
        prefix: &[u32],
        continuations: &[Vec<u32>],
        pad_id: u32,
        mode: AdapterMode,
        temperature: f64,
        backprop: Backprop,
    ) -> Result<Scored<'_>> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(ModelError::Invalid(format!("scoring temperature must be positive, got {temperature}")));
        }
        if prefix.is_empty() || continuations.is_empty() || continuations.iter().any(|c| c.is_empty()) {
            return Err(ModelError::Invalid("a non-empty prefix and non-empty continuations are needed".into()));
        }
        let p = prefix.len();
        let b = continuations.len();
        let c = continuations.iter().map(Vec::len).max().unwrap();
        if p + c > self.max_positions() {
            return Err(ModelError::Invalid(format!(
                "{} tokens exceed the model's {} positions",
                p + c,
                self.max_positions()
            )));
        }
        let backprop = match backprop {
            Backprop::Auto if self.graph_bytes(p + b * c) > activation_memory() => Backprop::Checkpointed,
            Backprop::Auto => Backprop::Full,
            other => other,
        };
        let dev = &self.device;
        let hsz = self.cfg.hidden_size;
        // Prefix: positions 0..p, causal. Continuations: positions p..p+c, right-padded; each sees the whole
        // prefix and its own earlier tokens (causal attention with the prefix as an offset).
        let prefix_ids = Tensor::new(prefix, dev)?;
        let pos_p = Tensor::new((0..p as u32).collect::<Vec<_>>().as_slice(), dev)?.unsqueeze(0)?;
        let (cos_p, sin_p) = self.rope.tables(&pos_p)?;
        let cont_ids = TokenBatch::right_padded(continuations, pad_id, dev)?.ids.flatten_all()?;
        let pos_c: Vec<u32> = (0..b).flat_map(|_| (p as u32)..((p + c) as u32)).collect();
        let (cos_c, sin_c) = self.rope.tables(&Tensor::from_vec(pos_c, (b, c), dev)?)?;
        let pair = PairInput { p, b, c, cos_p, sin_p, cos_c, sin_c, prefix_ids, cont_ids, mode };
        let (mut xp, mut xc) = self.embed_pair(&pair)?;
        let mut layer_inputs = Vec::new();
        for i in 0..self.layers.len() {
            if backprop != Backprop::Full {
                // Cut the graph at every layer boundary: only the layer inputs are kept (for the recomputation).
                (xp, xc) = (xp.detach(), xc.detach());
                if backprop == Backprop::Checkpointed {
                    layer_inputs.push((xp.clone(), xc.clone()));
                }
            }
            (xp, xc) = self.shared_prefix_block(i, &xp, &xc, &pair)?;
        }
        let mut top = None;
        if backprop == Backprop::Checkpointed {
            // The head's gradient stops at these leaves; `Scored::backward` carries it down the layers.
            let (vp, vc) = (Var::from_tensor(&xp.detach())?, Var::from_tensor(&xc.detach())?);
            (xp, xc) = (vp.as_tensor().clone(), vc.as_tensor().clone());
            top = Some((vp, vc));
        } else if backprop == Backprop::None {
            (xp, xc) = (xp.detach(), xc.detach());
        }
        let eps = self.cfg.rms_norm_eps;
        let last_prefix =
            rms_norm_differentiable(&xp.narrow(1, p - 1, 1)?, &self.final_norm, eps)?.reshape((1, hsz))?;
        let hc = rms_norm_differentiable(&xc, &self.final_norm, eps)?.reshape((b * c, hsz))?;
        // Row 0: the prefix's last state (predicts every continuation's first token); then the continuations.
        let rows_all = Tensor::cat(&[&last_prefix, &hc], 0)?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, cont) in continuations.iter().enumerate() {
            for (t, &token) in cont.iter().enumerate() {
                rows.push(if t == 0 { 0 } else { (1 + i * c + t - 1) as u32 });
                targets.push(token);
            }
        }
        let picked = rows_all.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
        // logits / T = (h / T) W^T: scaling the few picked rows is cheaper than scaling logits.
        let picked = if temperature != 1.0 { (picked / temperature)? } else { picked };
        let head =
            if backprop == Backprop::None { self.lm_head_weight().detach() } else { self.lm_head_weight().clone() };
        let out = crate::logprob::linear_logprobs_and_entropy(&picked, &head, &targets)?;
        let (logprobs, entropies) = (out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?);
        let tape = top.map(|top| Tape { decoder: self, pair, layer_inputs, top });
        Ok(Scored { logprobs, entropies, backprop, tape })
    }

    /// Rough peak bytes of a full-graph forward and backward over `tokens` tokens: the forward keeps every op's
    /// output (counted for SmolLM2: ~24 hidden-sized and 8 MLP-sized f32 vectors per token per layer) and the
    /// backward about doubles it (1,224 tokens with LoRA: estimated 7.6 GB, measured peak 7.2 GB).
    fn graph_bytes(&self, tokens: usize) -> usize {
        let per_token_layer = 4 * (24 * self.cfg.hidden_size + 8 * self.cfg.intermediate_size);
        2 * tokens * self.layers.len() * per_token_layer
    }

    /// Token embeddings of the prefix (1, p, hidden) and of the continuations (b, c, hidden).
    pub(crate) fn embed_pair(&self, pair: &PairInput) -> Result<(Tensor, Tensor)> {
        let hsz = self.cfg.hidden_size;
        let xp = self.embed.index_select(&pair.prefix_ids, 0)?.reshape((1, pair.p, hsz))?;
        let xc = self.embed.index_select(&pair.cont_ids, 0)?.reshape((pair.b, pair.c, hsz))?;
        Ok((xp, xc))
    }

    /// One decoder block over a shared prefix (1, p, hidden) and its continuations (b, c, hidden): the prefix's
    /// keys/values are broadcast to every continuation instead of being recomputed per sequence.
    pub(crate) fn shared_prefix_block(
        &self,
        index: usize,
        xp: &Tensor,
        xc: &Tensor,
        pair: &PairInput,
    ) -> Result<(Tensor, Tensor)> {
        let layer = &self.layers[index];
        let index = index as u64;
        let (nkv, hd) = (self.cfg.num_kv_heads, self.cfg.head_dim);
        let (b, p) = (pair.b, pair.p);
        let (qp, kp, vp) = self.train_qkv(layer, index, xp, &pair.cos_p, &pair.sin_p, pair.mode)?;
        let yp = self.train_attention(&qp, &kp, &vp, 0)?;
        let (qc, kc, vc) = self.train_qkv(layer, index, xc, &pair.cos_c, &pair.sin_c, pair.mode)?;
        // cat of a broadcast view yields a strided result; attention's matmul needs it contiguous.
        let k_all = Tensor::cat(&[&kp.broadcast_as((b, nkv, p, hd))?, &kc], 2)?.contiguous()?;
        let v_all = Tensor::cat(&[&vp.broadcast_as((b, nkv, p, hd))?, &vc], 2)?.contiguous()?;
        let yc = self.train_attention(&qc, &k_all, &v_all, p)?;
        let xc = self.train_block_tail(layer, index, xc, &yc, pair.mode)?;
        let xp = self.train_block_tail(layer, index, xp, &yp, pair.mode)?;
        Ok((xp, xc))
    }

    /// Log-probability of each scored token and the entropy of the distribution it was drawn from.
    ///
    /// For every sequence `i`, tokens `seqs[i][score_from[i]..]` are scored, each given all tokens before it.
    /// Returns one (logprobs, entropies) pair of rank-1 tensors holding all scored tokens in order (sequence
    /// by sequence), both differentiable.
    pub fn score_tokens(
        &self,
        seqs: &[Vec<u32>],
        score_from: &[usize],
        pad_id: u32,
        mode: AdapterMode,
    ) -> Result<(Tensor, Tensor)> {
        if seqs.len() != score_from.len() {
            return Err(ModelError::Invalid("one score_from per sequence is needed".into()));
        }
        for (s, &f) in seqs.iter().zip(score_from) {
            if f == 0 || f > s.len() {
                return Err(ModelError::Invalid(format!(
                    "score_from {f} must be in 1..={} (the first token has no context)",
                    s.len()
                )));
            }
        }
        let batch = TokenBatch::right_padded(seqs, pad_id, &self.device)?;
        let (_, t) = batch.ids.dims2()?;
        let hidden = self.hidden_states(&batch, mode)?;
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, (s, &f)) in seqs.iter().zip(score_from).enumerate() {
            for (pos, &token) in s.iter().enumerate().skip(f) {
                rows.push((i * t + pos - 1) as u32);
                targets.push(token);
            }
        }
        if rows.is_empty() {
            let empty = Tensor::zeros(0, DType::F32, &self.device)?;
            return Ok((empty.clone(), empty));
        }
        let flat = hidden.reshape((seqs.len() * t, self.cfg.hidden_size))?;
        let picked = flat.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let out = crate::logprob::linear_logprobs_and_entropy(&picked, self.lm_head_weight(), &targets)?;
        Ok((out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?))
    }

    // ------------------------------------------------------------------------------------------------------
    // Detached, KV-cached decoding
    // ------------------------------------------------------------------------------------------------------

    /// An empty cache for `batch` rows and up to `capacity` tokens per row.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        KvCache::new(
            self.cfg.num_layers,
            batch * self.cfg.num_kv_heads,
            capacity,
            self.cfg.head_dim,
            self.dtype(),
            &self.device,
        )
    }

    /// Runs `ids` (batch, new) through the model on top of `cache` and returns the logits (batch, vocab) of the
    /// last new position. `positions` (batch, new) are the rotary positions of the new tokens; `key_valid[b]`
    /// says, for each cached-plus-new key of row b, whether it is a real token (false for left padding).
    pub fn decode(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_valid: &[Vec<bool>],
        cache: &mut KvCache,
        mode: AdapterMode,
    ) -> Result<Tensor> {
        let (b, tn) = ids.dims2()?;
        let past = cache.len();
        let total = past + tn;
        if total > cache.capacity() {
            return Err(ModelError::Invalid(format!("KV cache capacity {} exceeded", cache.capacity())));
        }
        if key_valid.len() != b || key_valid.iter().any(|r| r.len() != total) {
            return Err(ModelError::Invalid("key_valid must cover every cached and new token of every row".into()));
        }
        let mode = AdapterMode { dropout_seed: None, ..mode };
        let (cos, sin) = self.rope.tables(positions)?;
        let mut m = vec![0f32; b * tn * total];
        for (bi, row) in key_valid.iter().enumerate() {
            for i in 0..tn {
                for (j, &valid) in row.iter().enumerate() {
                    if !valid || j > past + i {
                        m[(bi * tn + i) * total + j] = MASKED;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, 1, tn, total), &self.device)?.to_dtype(self.dtype())?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, tn, self.cfg.hidden_size))?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.decode_block(layer, i, &x, &cos, &sin, &mask, cache, mode)?;
        }
        cache.advance(tn);
        let last = x.narrow(1, tn - 1, 1)?.squeeze(1)?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, self.cfg.rms_norm_eps as f32)?;
        // Streams the largest matrix once for all the rows without packing it (see linear.rs and few_rows.rs).
        let head = self.lm_head_weight();
        if self.dtype() != DType::F32 {
            // In f32, like the training forward's log-probs (logprob.rs), so behaviour and policy agree.
            return Ok(last.to_dtype(DType::F32)?.matmul(&head.to_dtype(DType::F32)?.t()?)?);
        }
        if crate::few_rows::applies(&last, head) {
            Ok(crate::few_rows::matmul_t(&last, head)?)
        } else {
            Ok(head.matmul(&last.t()?)?.t()?.contiguous()?)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_block(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        mode: AdapterMode,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps as f32;
        let (b, tn, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let group = nh / nkv;
        let h = candle_nn::ops::rms_norm(&x.contiguous()?, &layer.attn_norm, eps)?;
        let q = layer.q.forward_detached(&h, mode)?.reshape((b, tn, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = layer.k.forward_detached(&h, mode)?.reshape((b, tn, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = layer.v.forward_detached(&h, mode)?.reshape((b, tn, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (candle_nn::ops::rms_norm(&q, qn, eps)?, candle_nn::ops::rms_norm(&k, kn, eps)?),
            _ => (q, k),
        };
        let q = Rope::apply_fast(&q, cos, sin)?;
        let k = Rope::apply_fast(&k, cos, sin)?;
        let (keys, values) = cache.append(index, &k.reshape((b * nkv, tn, hd))?, &v.reshape((b * nkv, tn, hd))?)?;
        let total = keys.dim(1)?;
        let q = q.reshape((b * nkv, group * tn, hd))?;
        let scores = (q.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.reshape((b, nkv, group, tn, total))?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b * nkv, group * tn, total))?;
        let y = probs.matmul(&values)?.reshape((b, nh, tn, hd))?.transpose(1, 2)?.reshape((b, tn, nh * hd))?;
        let x = (x + layer.o.forward_detached(&y, mode)?)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
        let gate = layer.gate.forward_detached(&h, mode)?.silu()?;
        let up = layer.up.forward_detached(&h, mode)?;
        Ok((x + layer.down.forward_detached(&(gate * up)?, mode)?)?)
    }

    // ------------------------------------------------------------------------------------------------------
    // Parameters
    // ------------------------------------------------------------------------------------------------------

    /// Every base tensor under its Hugging Face name (the tied head is not listed twice).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), l.attn_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.ffn_norm.clone()));
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                out.push((format!("{p}.self_attn.q_norm.weight"), qn.clone()));
                out.push((format!("{p}.self_attn.k_norm.weight"), kn.clone()));
            }
            for target in LoraTarget::ALL {
                let lin = l.linear(target);
                out.push((format!("{p}.{}.weight", target.module_name()), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.{}.bias", target.module_name()), b.clone()));
                }
            }
        }
        out.push(("model.norm.weight".into(), self.final_norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h.clone()));
        }
        out
    }

    fn for_each_tensor_mut(&mut self, mut f: impl FnMut(&str, &mut Tensor) -> Result<()>) -> Result<()> {
        f("model.embed_tokens.weight", &mut self.embed)?;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            f(&format!("{p}.input_layernorm.weight"), &mut l.attn_norm)?;
            f(&format!("{p}.post_attention_layernorm.weight"), &mut l.ffn_norm)?;
            if let Some(qn) = &mut l.q_norm {
                f(&format!("{p}.self_attn.q_norm.weight"), qn)?;
            }
            if let Some(kn) = &mut l.k_norm {
                f(&format!("{p}.self_attn.k_norm.weight"), kn)?;
            }
            for target in LoraTarget::ALL {
                let lin = l.linear_mut(target);
                f(&format!("{p}.{}.weight", target.module_name()), &mut lin.weight)?;
                if let Some(b) = &mut lin.bias {
                    f(&format!("{p}.{}.bias", target.module_name()), b)?;
                }
            }
        }
        f("model.norm.weight", &mut self.final_norm)?;
        if let Some(h) = &mut self.lm_head {
            f("lm_head.weight", h)?;
        }
        Ok(())
    }

    /// Full fine-tuning: turns every base tensor into a variable and returns them by name.
    /// The tied output head shares the embedding's variable.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        self.for_each_tensor_mut(|name, t| {
            let var = if t.is_variable() { Var::from_tensor(t)? } else { Var::from_tensor(&t.copy()?)? };
            *t = var.as_tensor().clone();
            vars.push((name.to_string(), var));
            Ok(())
        })?;
        Ok(vars)
    }

    /// A frozen deep copy of the base weights without adapters: the KL reference for full fine-tuning.
    pub fn frozen_copy(&self) -> Result<Decoder> {
        let mut copy = self.clone();
        copy.for_each_tensor_mut(|_, t| {
            *t = t.detach().copy()?;
            Ok(())
        })?;
        for l in copy.layers.iter_mut() {
            for target in LoraTarget::ALL {
                l.linear_mut(target).lora = None;
            }
        }
        Ok(copy)
    }

    /// Adds fresh LoRA adapters to the targeted projections of every layer and returns their variables by name
    /// (`model.layers.{i}.self_attn.q_proj.lora_A.weight`, PEFT's naming).
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<(String, Var)>> {
        cfg.validate()?;
        let mut rng = init_rng(seed);
        for l in self.layers.iter_mut() {
            for &target in &cfg.targets {
                let lin = l.linear_mut(target);
                if lin.lora.is_some() {
                    return Err(ModelError::Invalid("LoRA adapters are already attached".into()));
                }
                lin.lora = Some(cfg.new_adapter(lin.out_dim(), lin.in_dim(), &mut rng, &lin.weight)?);
            }
        }
        Ok(self.lora_vars())
    }

    /// The attached LoRA variables by name (empty without adapters).
    /// Ids of every trainable tensor: full-fine-tuning weights and LoRA adapters.
    pub(crate) fn variable_ids(&self) -> std::collections::HashSet<candle_core::TensorId> {
        let weights = self.named_tensors().into_iter().map(|(_, t)| t).filter(Tensor::is_variable);
        let adapters = self.lora_vars().into_iter().map(|(_, v)| v.as_tensor().clone());
        weights.chain(adapters).map(|t| t.id()).collect()
    }

    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                if let Some(lora) = &l.linear(target).lora {
                    let p = format!("model.layers.{i}.{}", target.module_name());
                    out.push((format!("{p}.lora_A.weight"), lora.a.clone()));
                    out.push((format!("{p}.lora_B.weight"), lora.b.clone()));
                }
            }
        }
        out
    }

    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| LoraTarget::ALL.iter().any(|&t| l.linear(t).lora.is_some()))
    }

    /// Folds the adapters into the base weights (W + s B A) and removes them.
    pub fn merge_lora(&mut self) -> Result<()> {
        for l in self.layers.iter_mut() {
            for target in LoraTarget::ALL {
                let lin = l.linear_mut(target);
                if lin.lora.is_some() {
                    lin.weight = lin.merged_weight()?.detach();
                    lin.lora = None;
                }
            }
        }
        Ok(())
    }
}

/// Distinct LoRA-dropout salts per layer and projection.
fn salt(layer: u64, projection: u64) -> u64 {
    layer * 16 + projection
}

/// RMS norm built from differentiable ops: `x / sqrt(mean(x^2) + eps) * w`, computed in f32 and returned in
/// `x`'s dtype (as Hugging Face's `LlamaRMSNorm` does: a bf16 mean of 576 squares loses too much).
pub fn rms_norm_differentiable(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(&weight.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}
