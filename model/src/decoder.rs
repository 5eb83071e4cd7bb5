//! The decoder: embedding, a stack of `block::Block`s (the Llama / Qwen2 / Qwen3 layer, written once in
//! decoder/block.rs), final norm and output head, with two forward paths through the same blocks.
//!
//! - `hidden_states` and `score_continuations` are the trainable forward over whole (padded) sequences. They use
//!   only ops that carry gradients (composed RMS norm, composed softmax, differentiable RoPE): candle's fused
//!   kernels silently drop the gradient (DESIGN section 7).
//! - `decode` is the detached, KV-cached, batched forward used for sampling. It uses the fused kernels, and reads
//!   each projection and the head through its decode copy (decode_copy.rs): in f32 on AVX-512 the weight packed
//!   tile by tile (packed_tiles.rs); with a bf16 sampling copy (`set_sampling_precision`) every weight matrix
//!   (embedding, projections, head) rounded to bf16, the projections and head streamed at half the bytes and
//!   multiplied in f32. Norms, biases and LoRA adapters stay f32. The trainable forward always reads the f32
//!   weights.
//!
//! Weights use the Hugging Face layout (q/k rows in "half rotation" order); GGUF loading un-permutes them.

mod block;
mod prefix;

pub use prefix::PrefixStates;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::config::ModelConfig;
use crate::decode_copy::DecodeCopy;
use crate::device::Precision;
use crate::kv_cache::KvCache;
use crate::linear::{AdapterMode, Linear};
use crate::lora::{init_rng, LoraConfig, LoraTarget};
use crate::rope::Rope;
use crate::scored::{activation_memory, Backprop, PairInput, Scored, Tape};
use crate::{ModelError, Result};
use block::{Block, Pass};

/// Additive mask value: finite so that a fully masked row (a pad query) softmaxes to uniform, not NaN.
const MASKED: f32 = -1e9;

/// The output of the blocks over a shared prefix and its continuations (`Decoder::score_continuations`).
struct SharedStack {
    /// The prefix's (1, p, hidden) and the continuations' (b, c, hidden) last hidden states, before the final norm.
    xp: Tensor,
    xc: Tensor,
    /// Every block's input, kept for the recomputation of a checkpointed backward (else empty).
    layer_inputs: Vec<(Tensor, Tensor)>,
    /// The leaves a checkpointed backward starts from (`Backprop::Checkpointed` only).
    top: Option<(Var, Var)>,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Tensor>,
    rope: Rope,
    device: Device,
    /// Precision of the weights `decode` reads (see [`Decoder::set_sampling_precision`]).
    sampling: Precision,
    /// The output head's decode copy (decode_copy.rs), in `sampling`'s precision.
    head_copy: DecodeCopy,
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
    pub(crate) fn right_padded(seqs: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
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
        let embed = take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let blocks = (0..cfg.num_layers).map(|i| Block::load(&mut take, &cfg, i)).collect::<Result<Vec<_>>>()?;
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
        Ok(Decoder {
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            rope,
            device: device.clone(),
            sampling: Precision::F32,
            head_copy: DecodeCopy::default(),
        })
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

    /// Precision of the weights that sampling (`decode`) reads: f32 (the default: the trained weights themselves)
    /// or bf16 (every weight matrix rounded: half the bytes a decode step streams).
    pub fn sampling_precision(&self) -> Precision {
        self.sampling
    }

    /// Sets the precision that sampling reads the weights in, and drops the copies of the old one; the next
    /// decode step builds them (decode_copy.rs). The copies are of the weights as they are then: after the weights
    /// change (an optimiser update, a loaded checkpoint), call [`Decoder::refresh_sampling_copy`].
    ///
    /// # Errors
    /// A bf16 copy of a decoder that is not f32 on the CPU: the copy exists to halve what the CPU kernel streams;
    /// on a GPU, compute in bf16 throughout (`dtype = "bf16"`) instead.
    pub fn set_sampling_precision(&mut self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 && !(self.device.is_cpu() && self.dtype() == DType::F32) {
            return Err(ModelError::Invalid(format!(
                "a {precision} sampling copy needs an f32 decoder on the CPU, and this one computes in {:?} on {:?}: \
                 on the CPU keep dtype f32 with sampling_dtype {precision}; on a GPU set dtype bf16 and leave \
                 sampling_dtype at f32",
                self.dtype(),
                self.device
            )));
        }
        self.sampling = precision;
        self.refresh_sampling_copy()
    }

    /// Drops the copies decoding reads (decode_copy.rs: the bf16 sampling copy, or the packed f32 one), so that
    /// the next decode step rebuilds them from the current weights. A clone of this decoder shares its weights
    /// but not its copies: refresh each.
    pub fn refresh_sampling_copy(&mut self) -> Result<()> {
        for block in self.blocks.iter_mut() {
            for target in LoraTarget::ALL {
                block.linear_mut(target).reset_decode_copy(self.sampling);
            }
        }
        self.head_copy = DecodeCopy::new(self.sampling);
        Ok(())
    }

    /// The output projection (V, H): the embedding when tied.
    pub(crate) fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of parameters one decode step reads (`decode`): every layer's norms and projections (with their
    /// biases, and their LoRA adapters when `mode` enables them), the final norm and the output head once (their
    /// sampling copies when set). The embedding rows of the new tokens are left out (a few KB); with a tied head
    /// the embedding is counted once, as the head. The weight-streaming limit of decoding divides the read bandwidth by this
    /// ([`crate::machine::StreamingLimit`]).
    pub fn decode_weight_bytes(&self, mode: AdapterMode) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let linear = |l: &Linear| {
            let lora = match (&l.lora, mode.enabled) {
                (Some(a), true) => bytes(a.a.as_tensor()) + bytes(a.b.as_tensor()),
                _ => 0,
            };
            l.decode_copy.bytes(&l.weight) + l.bias.as_ref().map_or(0, bytes) + lora
        };
        let layers: usize = self
            .blocks
            .iter()
            .map(|l| {
                LoraTarget::ALL.map(|t| linear(l.linear(t))).iter().sum::<usize>()
                    + l.norms().map(bytes).sum::<usize>()
            })
            .sum();
        layers + bytes(&self.final_norm) + self.head_copy.bytes(self.lm_head_weight())
    }

    /// The kernel a decode step's products of `rows` rows run with on the CPU in f32 (decode_copy.rs):
    /// `packed_avx512`, a few-rows path (`avx512`, `avx2`, `portable`), or `gemm`.
    pub fn decode_kernel(&self, rows: usize) -> &'static str {
        crate::decode_copy::kernel_name(self.sampling, rows)
    }

    /// Bytes per weight-matrix value that decoding reads: the sampling copy's when one is set, else the dtype's.
    pub fn decode_bytes_per_weight(&self) -> usize {
        match self.sampling {
            Precision::F32 => self.dtype().size_in_bytes(),
            copy => copy.dtype().size_in_bytes(),
        }
    }

    /// Longest sequence the position tables cover.
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    // ------------------------------------------------------------------------------------------------------
    // Trainable forward
    // ------------------------------------------------------------------------------------------------------

    /// Final-norm hidden states (batch, time, hidden) of a padded batch. Differentiable end to end.
    pub(crate) fn hidden_states(&self, batch: &TokenBatch, mode: AdapterMode) -> Result<Tensor> {
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
        let rope = self.rope.tables(&Tensor::from_vec(positions, (b, t), &self.device)?)?;
        let mut x = self.embed.index_select(&batch.ids.flatten_all()?, 0)?.reshape((b, t, self.cfg.hidden_size))?;
        for block in &self.blocks {
            (x, _) = block.forward(&x, &rope, Pass::Train { prefix: None }, mode)?;
        }
        rms_norm_differentiable(&x, &self.final_norm, self.cfg.rms_norm_eps)
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
        self.check_scoring(prefix, continuations, temperature)?;
        let p = prefix.len();
        let b = continuations.len();
        let c = continuations.iter().map(Vec::len).max().unwrap();
        let backprop = match backprop {
            Backprop::Auto if self.full_graph_bytes(p + b * c) > activation_memory() => Backprop::Checkpointed,
            Backprop::Auto => Backprop::Full,
            other => other,
        };
        let pair = self.pair_input(prefix, continuations, pad_id, mode)?;
        let stack = self.shared_prefix_stack(&pair, backprop)?;
        let (logprobs, entropies) =
            self.continuation_scores(&stack.xp, &stack.xc, continuations, temperature, backprop)?;
        let tape = stack.top.map(|top| Tape { decoder: self, pair, layer_inputs: stack.layer_inputs, top });
        Ok(Scored { logprobs, entropies, backprop, tape })
    }

    /// The inputs [`Decoder::score_continuations`] and [`Decoder::score_after_prefix`] accept: a positive finite
    /// temperature, a non-empty prefix and continuations, and prefix plus longest continuation within the model's
    /// positions.
    fn check_scoring(&self, prefix: &[u32], continuations: &[Vec<u32>], temperature: f64) -> Result<()> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(ModelError::Invalid(format!("scoring temperature must be positive, got {temperature}")));
        }
        if prefix.is_empty() || continuations.is_empty() || continuations.iter().any(|c| c.is_empty()) {
            return Err(ModelError::Invalid("a non-empty prefix and non-empty continuations are needed".into()));
        }
        let tokens = prefix.len() + continuations.iter().map(Vec::len).max().unwrap_or(0);
        if tokens > self.max_positions() {
            return Err(ModelError::Invalid(format!(
                "{tokens} tokens exceed the model's {} positions",
                self.max_positions()
            )));
        }
        Ok(())
    }

    /// Prefix: positions 0..p, causal. Continuations: positions p..p+c, right-padded; each sees the whole prefix
    /// and its own earlier tokens (causal attention with the prefix as an offset).
    fn pair_input(
        &self,
        prefix: &[u32],
        continuations: &[Vec<u32>],
        pad_id: u32,
        mode: AdapterMode,
    ) -> Result<PairInput> {
        let dev = &self.device;
        let (p, b) = (prefix.len(), continuations.len());
        let c = continuations.iter().map(Vec::len).max().unwrap_or(0);
        let prefix_ids = Tensor::new(prefix, dev)?;
        let pos_p = Tensor::new((0..p as u32).collect::<Vec<_>>().as_slice(), dev)?.unsqueeze(0)?;
        let rope_p = self.rope.tables(&pos_p)?;
        let cont_ids = TokenBatch::right_padded(continuations, pad_id, dev)?.ids.flatten_all()?;
        let pos_c: Vec<u32> = (0..b).flat_map(|_| (p as u32)..((p + c) as u32)).collect();
        let rope_c = self.rope.tables(&Tensor::from_vec(pos_c, (b, c), dev)?)?;
        Ok(PairInput { p, b, c, rope_p, rope_c, prefix_ids, cont_ids, mode })
    }

    /// The prefix and its continuations run through every block, with the graph `backprop` asks for.
    fn shared_prefix_stack(&self, pair: &PairInput, backprop: Backprop) -> Result<SharedStack> {
        let (mut xp, mut xc) = self.embed_pair(pair)?;
        let mut layer_inputs = Vec::new();
        for i in 0..self.blocks.len() {
            if backprop != Backprop::Full {
                // Cut the graph at every layer boundary: only the layer inputs are kept (for the recomputation).
                (xp, xc) = (xp.detach(), xc.detach());
                if backprop == Backprop::Checkpointed {
                    layer_inputs.push((xp.clone(), xc.clone()));
                }
            }
            (xp, xc) = self.shared_prefix_block(i, &xp, &xc, pair)?;
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
        Ok(SharedStack { xp, xc, layer_inputs, top })
    }

    /// Log-probs and entropies at `temperature` of every continuation token, from the last hidden states of the
    /// prefix (1, p, hidden) and of the right-padded continuations (b, c, hidden).
    fn continuation_scores(
        &self,
        xp: &Tensor,
        xc: &Tensor,
        continuations: &[Vec<u32>],
        temperature: f64,
        backprop: Backprop,
    ) -> Result<(Tensor, Tensor)> {
        let (hsz, eps) = (self.cfg.hidden_size, self.cfg.rms_norm_eps);
        let (p, (b, c, _)) = (xp.dim(1)?, xc.dims3()?);
        let last_prefix =
            rms_norm_differentiable(&xp.narrow(1, p - 1, 1)?, &self.final_norm, eps)?.reshape((1, hsz))?;
        let hc = rms_norm_differentiable(xc, &self.final_norm, eps)?.reshape((b * c, hsz))?;
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
        let picked = rows_all.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        // logits / T = (h / T) W^T: scaling the few picked rows is cheaper than scaling logits.
        let picked = if temperature != 1.0 { (picked / temperature)? } else { picked };
        let head =
            if backprop == Backprop::None { self.lm_head_weight().detach() } else { self.lm_head_weight().clone() };
        let out = crate::logprob::linear_logprobs_and_entropy(&picked, &head, &targets)?;
        Ok((out.narrow(1, 0, 1)?.squeeze(1)?, out.narrow(1, 1, 1)?.squeeze(1)?))
    }

    /// Rough peak bytes of a full-graph forward and backward over `tokens` tokens: the forward keeps every op's
    /// output (counted for SmolLM2: ~24 hidden-sized and 8 MLP-sized f32 vectors per token per layer) and the
    /// backward about doubles it (1,224 tokens with LoRA: estimated 7.6 GB, measured peak 7.2 GB). [`Backprop::Auto`]
    /// checkpoints a forward whose estimate exceeds its share of the activation memory (`scored.rs`).
    pub fn full_graph_bytes(&self, tokens: usize) -> usize {
        let per_token_layer = 4 * (24 * self.cfg.hidden_size + 8 * self.cfg.intermediate_size);
        2 * tokens * self.blocks.len() * per_token_layer
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
        let block = &self.blocks[index];
        let (xp, prefix) = block.forward(xp, &pair.rope_p, Pass::Train { prefix: None }, pair.mode)?;
        let (xc, _) = block.forward(xc, &pair.rope_c, Pass::Train { prefix: Some(&prefix) }, pair.mode)?;
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
            (batch, self.cfg.num_kv_heads),
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
        let rope = self.rope.tables(positions)?;
        let mask = self.decode_mask(key_valid, past, tn)?;
        let unpadded = key_valid.iter().all(|row| row.iter().all(|&valid| valid));
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, tn, self.cfg.hidden_size))?;
        if self.sampling != Precision::F32 {
            // The rows of the rounded embedding: rounding the few rows looked up equals looking up rounded rows.
            x = x.to_dtype(self.sampling.dtype())?.to_dtype(DType::F32)?;
        }
        for block in &self.blocks {
            (x, _) = block.forward(&x, &rope, Pass::Decode { cache: &mut *cache, mask: &mask, unpadded }, mode)?;
        }
        cache.advance(tn);
        let last = x.narrow(1, tn - 1, 1)?.squeeze(1)?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, self.cfg.rms_norm_eps as f32)?;
        // Streams the largest matrix once for all the rows (decode_copy.rs, few_rows.rs).
        let head = self.lm_head_weight();
        if let Some(logits) = self.head_copy.head_product(head, &last)? {
            return Ok(logits);
        }
        if self.dtype() != DType::F32 {
            // In f32, like the training forward's log-probs (logprob/), so behaviour and policy agree.
            return Ok(last.to_dtype(DType::F32)?.matmul(&head.to_dtype(DType::F32)?.t()?)?);
        }
        if crate::few_rows::applies(&last, head) {
            Ok(crate::few_rows::matmul_t(&last, head)?)
        } else {
            Ok(head.matmul(&last.t()?)?.t()?.contiguous()?)
        }
    }

    /// The additive attention mask (batch, 1, 1, new, past + new) of `new` tokens after `past` cached ones: a key
    /// is hidden when it is padding (`key_valid` false) or comes after the query.
    fn decode_mask(&self, key_valid: &[Vec<bool>], past: usize, tn: usize) -> Result<Tensor> {
        let (b, total) = (key_valid.len(), past + tn);
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
        Ok(Tensor::from_vec(m, (b, 1, 1, tn, total), &self.device)?.to_dtype(self.dtype())?)
    }

    // ------------------------------------------------------------------------------------------------------
    // Parameters
    // ------------------------------------------------------------------------------------------------------

    /// Every base tensor under its Hugging Face name (the tied head is not listed twice).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for block in &self.blocks {
            out.extend(block.named_tensors());
        }
        out.push(("model.norm.weight".into(), self.final_norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h.clone()));
        }
        out
    }

    fn for_each_tensor_mut(&mut self, mut f: impl FnMut(&str, &mut Tensor) -> Result<()>) -> Result<()> {
        f("model.embed_tokens.weight", &mut self.embed)?;
        for block in self.blocks.iter_mut() {
            block.for_each_tensor_mut(&mut f)?;
        }
        f("model.norm.weight", &mut self.final_norm)?;
        if let Some(h) = &mut self.lm_head {
            f("lm_head.weight", h)?;
        }
        Ok(())
    }

    /// Full fine-tuning: turns every base tensor into a variable and returns them by name.
    /// The tied output head shares the embedding's variable. Setting a variable changes the weights in place: call
    /// [`Decoder::refresh_sampling_copy`] afterwards, or decoding keeps reading the copies of the old weights.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        self.for_each_tensor_mut(|name, t| {
            let var = if t.is_variable() { Var::from_tensor(t)? } else { Var::from_tensor(&t.copy()?)? };
            *t = var.as_tensor().clone();
            vars.push((name.to_string(), var));
            Ok(())
        })?;
        // The copies were of the tensors just replaced.
        self.refresh_sampling_copy()?;
        Ok(vars)
    }

    /// A frozen deep copy of the base weights without adapters: the KL reference for full fine-tuning.
    pub fn frozen_copy(&self) -> Result<Decoder> {
        let mut copy = self.clone();
        copy.for_each_tensor_mut(|_, t| {
            *t = t.detach().copy()?;
            Ok(())
        })?;
        for l in copy.blocks.iter_mut() {
            for target in LoraTarget::ALL {
                l.linear_mut(target).lora = None;
            }
        }
        // The reference only scores; it never samples.
        copy.set_sampling_precision(Precision::F32)?;
        Ok(copy)
    }

    /// Adds fresh LoRA adapters to the targeted projections of every layer and returns their variables by name
    /// (`model.layers.{i}.self_attn.q_proj.lora_A.weight`, PEFT's naming).
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<Vec<(String, Var)>> {
        cfg.validate()?;
        let mut rng = init_rng(seed);
        for l in self.blocks.iter_mut() {
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

    /// Ids of every trainable tensor: full-fine-tuning weights and LoRA adapters.
    pub(crate) fn variable_ids(&self) -> std::collections::HashSet<candle_core::TensorId> {
        let weights = self.named_tensors().into_iter().map(|(_, t)| t).filter(Tensor::is_variable);
        let adapters = self.lora_vars().into_iter().map(|(_, v)| v.as_tensor().clone());
        weights.chain(adapters).map(|t| t.id()).collect()
    }

    /// The attached LoRA variables by name (empty without adapters).
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for l in &self.blocks {
            for target in LoraTarget::ALL {
                if let Some(lora) = &l.linear(target).lora {
                    let p = format!("{}.{}", l.name(), target.module_name());
                    out.push((format!("{p}.lora_A.weight"), lora.a.clone()));
                    out.push((format!("{p}.lora_B.weight"), lora.b.clone()));
                }
            }
        }
        out
    }

    pub fn has_lora(&self) -> bool {
        self.blocks.iter().any(|l| LoraTarget::ALL.iter().any(|&t| l.linear(t).lora.is_some()))
    }

    /// Folds the adapters into the base weights (W + s B A) and removes them.
    pub fn merge_lora(&mut self) -> Result<()> {
        for l in self.blocks.iter_mut() {
            for target in LoraTarget::ALL {
                let lin = l.linear_mut(target);
                if lin.lora.is_some() {
                    lin.weight = lin.merged_weight()?.detach();
                    lin.lora = None;
                }
            }
        }
        self.refresh_sampling_copy()
    }
}

/// Differentiable RMS norm, `x / sqrt(mean(x^2) + eps) * w` over the last dimension: on the CPU in f32 the fused
/// op of [`crate::norm`] (one pass each way, rows over the pool), else built from candle's ops, computed in f32 and
/// returned in `x`'s dtype (as Hugging Face's `LlamaRMSNorm` does: a bf16 mean of 576 squares loses too much).
pub(crate) fn rms_norm_differentiable(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::device::kernel_for(&[x, weight]) == crate::device::Kernel::CpuFast {
        return Ok(crate::norm::affine_normalize(x, weight, None, eps)?);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(&weight.to_dtype(DType::F32)?)?.to_dtype(dtype)?)
}
