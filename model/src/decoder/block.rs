//! One decoder block (Llama / Qwen2 / Qwen3) and its parts, shared by the trainable forward and by decoding.
//!
//! [`Block`] owns a layer's weights, split as in candle's `llama.rs` into [`Attention`] (q/k/v/o projections,
//! Qwen3's q/k norms) and [`Mlp`] (SwiGLU), each with its `load` and `forward`. The block's skeleton — norm,
//! attention, residual, norm, MLP, residual — is written once, in [`Block::forward`]. What differs between the
//! forwards is a [`Pass`]: where attention finds its keys and values (none before the input's own, a shared
//! prefix's, or the KV cache), and with it which ops run ([`Ops`]): training needs ops that carry gradients,
//! decoding is detached and takes the fused kernels and the few-rows matmul (see few_rows.rs).
//!
//! Grouped-query attention never copies keys/values per query head: queries are reshaped to
//! (batch, kv_heads, group * time, head_dim) so each key/value head is multiplied once by its whole group.

use candle_core::Tensor;

use super::rms_norm_differentiable;
use crate::config::ModelConfig;
use crate::device::{kernel_for, Kernel};
use crate::kv_cache::KvCache;
use crate::linear::{AdapterMode, Linear};
use crate::lora::LoraTarget;
use crate::rope::Rope;
use crate::swiglu::{silu_mul, silu_mul_detached};
use crate::Result;

/// Keys and values (batch, kv_heads, time, head_dim) of a block's input tokens, rotary applied.
#[derive(Debug, Clone)]
pub(crate) struct KeyValues {
    k: Tensor,
    v: Tensor,
}

impl KeyValues {
    /// The same keys and values without their graph.
    pub(crate) fn detach(&self) -> KeyValues {
        KeyValues { k: self.k.detach(), v: self.v.detach() }
    }
}

/// What differs between the forwards that run a block.
pub(crate) enum Pass<'a> {
    /// The trainable forward: ops that carry gradients (candle's fused kernels drop them, DESIGN section 7),
    /// causal attention among the input's tokens, after `prefix`'s keys and values when given (the
    /// continuations of a shared prefix, each row seeing the whole prefix).
    Train { prefix: Option<&'a KeyValues> },
    /// Detached decoding with the fused kernels: the new tokens' keys/values are appended to `cache`, and
    /// `mask` (batch, 1, 1, new, cached + new) is added to the scores (it hides padding and future keys).
    /// `unpadded`: every cached and new key is a real token, so the mask hides only future keys.
    Decode { cache: &'a mut KvCache, mask: &'a Tensor, unpadded: bool },
}

// Each projection's number in its LoRA dropout salt (`salt`). Fixed: a change would redraw every dropout mask,
// and a resumed run would no longer reproduce the one it continues.
const Q: u64 = 0;
const K: u64 = 1;
const V: u64 = 2;
const O: u64 = 3;
const GATE: u64 = 4;
const UP: u64 = 5;
const DOWN: u64 = 6;

/// Distinct LoRA-dropout salts per layer and projection.
fn salt(layer: u64, projection: u64) -> u64 {
    layer * 16 + projection
}

/// The ops one block runs with: differentiable ones, or detached fast ones (decoding); the adapters' mode; and
/// the layer, which salts LoRA dropout.
#[derive(Debug, Clone, Copy)]
struct Ops {
    detached: bool,
    mode: AdapterMode,
    layer: u64,
    eps: f64,
}

impl Ops {
    fn linear(&self, linear: &Linear, x: &Tensor, projection: u64) -> Result<Tensor> {
        if self.detached {
            linear.forward_detached(x, self.mode)
        } else {
            linear.forward(x, self.mode, salt(self.layer, projection))
        }
    }

    fn norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        if self.detached {
            // The fused kernel needs contiguous input: a no-op for the residual stream, a copy of the transposed
            // q/k heads (Qwen3's q/k norms).
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, self.eps as f32)?)
        } else {
            rms_norm_differentiable(x, weight, self.eps)
        }
    }

    /// Rotary embedding of (batch, heads, time, head_dim), returned contiguous for attention's matmuls.
    fn rope(&self, x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        if self.detached {
            Rope::apply_fast(x, cos, sin)
        } else {
            Ok(Rope::apply_differentiable(x, cos, sin)?.contiguous()?)
        }
    }
}

/// A projection's weight (and bias) under its Hugging Face name, e.g. `model.layers.0.self_attn.q_proj`.
fn load_linear(
    take: &mut impl FnMut(&str, &[usize]) -> Result<Tensor>,
    prefix: &str,
    target: LoraTarget,
    (out, inp): (usize, usize),
    bias: bool,
) -> Result<Linear> {
    let name = format!("{prefix}.{}", target.module_name());
    let weight = take(&format!("{name}.weight"), &[out, inp])?;
    let bias = if bias { Some(take(&format!("{name}.bias"), &[out])?) } else { None };
    Ok(Linear::new(weight, bias))
}

/// The SwiGLU feed-forward network: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(take: &mut impl FnMut(&str, &[usize]) -> Result<Tensor>, cfg: &ModelConfig, p: &str) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate: load_linear(take, p, LoraTarget::Gate, (i, h), false)?,
            up: load_linear(take, p, LoraTarget::Up, (i, h), false)?,
            down: load_linear(take, p, LoraTarget::Down, (h, i), false)?,
        })
    }

    fn forward(&self, x: &Tensor, ops: &Ops) -> Result<Tensor> {
        let gate = ops.linear(&self.gate, x, GATE)?;
        let up = ops.linear(&self.up, x, UP)?;
        let hidden = if ops.detached { silu_mul_detached(&gate, &up)? } else { silu_mul(&gate, &up)? };
        ops.linear(&self.down, &hidden, DOWN)
    }
}

/// Causal grouped-query self-attention with rotary positions (Qwen2: q/k/v biases; Qwen3: q/k RMS norms).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(take: &mut impl FnMut(&str, &[usize]) -> Result<Tensor>, cfg: &ModelConfig, p: &str) -> Result<Self> {
        let (h, hd, bias) = (cfg.hidden_size, cfg.head_dim, cfg.qkv_bias);
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let q = load_linear(take, p, LoraTarget::Q, (q_out, h), bias)?;
        let k = load_linear(take, p, LoraTarget::K, (kv_out, h), bias)?;
        let v = load_linear(take, p, LoraTarget::V, (kv_out, h), bias)?;
        let o = load_linear(take, p, LoraTarget::O, (h, q_out), false)?;
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(take(&format!("{p}.self_attn.q_norm.weight"), &[hd])?),
                Some(take(&format!("{p}.self_attn.k_norm.weight"), &[hd])?),
            )
        } else {
            (None, None)
        };
        let (num_heads, num_kv_heads, head_dim) = (cfg.num_heads, cfg.num_kv_heads, hd);
        Ok(Attention { q, k, v, o, q_norm, k_norm, num_heads, num_kv_heads, head_dim })
    }

    /// Normed input (b, t, hidden) -> the output projection of its attention (b, t, hidden), and the input's own
    /// keys and values (which a shared prefix hands to its continuations).
    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), pass: Pass, ops: &Ops) -> Result<(Tensor, KeyValues)> {
        let (q, kv) = self.qkv(x, rope, ops)?;
        let y = match pass {
            Pass::Train { prefix: None } => self.causal(&q, &kv.k, &kv.v, 0)?,
            Pass::Train { prefix: Some(prefix) } => {
                let (b, nkv, p, hd) = (q.dim(0)?, self.num_kv_heads, prefix.k.dim(2)?, self.head_dim);
                // cat of a broadcast view yields a strided result; attention's matmul needs it contiguous.
                let k = Tensor::cat(&[&prefix.k.broadcast_as((b, nkv, p, hd))?, &kv.k], 2)?.contiguous()?;
                let v = Tensor::cat(&[&prefix.v.broadcast_as((b, nkv, p, hd))?, &kv.v], 2)?.contiguous()?;
                self.causal(&q, &k, &v, p)?
            }
            Pass::Decode { cache, mask, unpadded } => {
                self.cached(&q, &kv, cache, (mask, unpadded), ops.layer as usize)?
            }
        };
        Ok((ops.linear(&self.o, &y, O)?, kv))
    }

    /// Normed input -> q (b, heads, t, hd), and k, v (b, kv_heads, t, hd), with rotary applied.
    fn qkv(&self, x: &Tensor, rope: &(Tensor, Tensor), ops: &Ops) -> Result<(Tensor, KeyValues)> {
        let (b, t, _) = x.dims3()?;
        let heads =
            |y: Tensor, n: usize| -> Result<Tensor> { Ok(y.reshape((b, t, n, self.head_dim))?.transpose(1, 2)?) };
        let q = heads(ops.linear(&self.q, x, Q)?, self.num_heads)?;
        let k = heads(ops.linear(&self.k, x, K)?, self.num_kv_heads)?;
        let v = heads(ops.linear(&self.v, x, V)?, self.num_kv_heads)?.contiguous()?;
        let (q, k) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (ops.norm(&q, qn)?, ops.norm(&k, kn)?),
            _ => (q, k),
        };
        Ok((ops.rope(&q, rope)?, KeyValues { k: ops.rope(&k, rope)?, v }))
    }

    /// Training: causal attention of q (b, heads, tq, hd) over k, v (b, kv_heads, offset + tq, hd), query i
    /// seeing keys 0..=offset + i; memory-efficient on CPU (see attention/). Returns (b, tq, heads * hd).
    fn causal(&self, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, nh, tq, hd) = q.dims4()?;
        let group = nh / self.num_kv_heads;
        // Heads h = kv * group + g, so (b, heads, t, d) is already (b, kv_heads, group * t, d) in memory.
        let q = q.reshape((b, self.num_kv_heads, group * tq, hd))?;
        self.merge_heads(&crate::attention::causal_attention(&q, k, v, group, offset)?, b, tq)
    }

    /// Decoding: appends the new keys/values to layer `layer`'s cache and attends over all of them under `mask`
    /// (`unpadded`: it hides only future keys). On the CPU a step's few new tokens go through the
    /// `decode_attention` kernel and an unpadded prefill through training attention's blocked kernel (causal with
    /// the cached keys as offset; a 1,650-token prompt at batch 8: 10.6-11.2 s -> 4.7-5.2 s to the first token, two
    /// pairs, and the same at 200 tokens); the rest, and
    /// other devices, through matmuls and the fused softmax. Returns (b, tn, heads * hd).
    fn cached(
        &self,
        q: &Tensor,
        kv: &KeyValues,
        cache: &mut KvCache,
        (mask, unpadded): (&Tensor, bool),
        layer: usize,
    ) -> Result<Tensor> {
        let (b, nh, tn, hd) = q.dims4()?;
        let nkv = self.num_kv_heads;
        let group = nh / nkv;
        let layer_kv = cache.append(layer, &kv.k.reshape((b * nkv, tn, hd))?, &kv.v.reshape((b * nkv, tn, hd))?)?;
        let total = layer_kv.total()?;
        let q = q.reshape((b * nkv, group * tn, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        // A prompt's prefill (many new tokens) is compute-bound and gemm is faster there; a step's few are not.
        let fast = kernel_for(&[&q, &layer_kv.keys, &layer_kv.values, mask]) == Kernel::CpuFast;
        if tn <= crate::decode_attention::MAX_NEW_TOKENS && fast {
            let mask = mask.reshape((b, tn, total))?;
            let y = crate::decode_attention::decode_attention(&q, &layer_kv, &mask, nkv, scale)?;
            return self.merge_heads(&y, b, tn);
        }
        // Off the fused kernel, a shared prompt's keys are copied in front of each row's own.
        let (keys, values) = layer_kv.materialized(nkv)?;
        if unpadded && kernel_for(&[&q, &keys, &values]) == Kernel::CpuFast {
            let past = total - tn;
            let q = q.reshape((b, nkv, group * tn, hd))?;
            let (k, v) = (keys.reshape((b, nkv, total, hd))?, values.reshape((b, nkv, total, hd))?);
            return self.merge_heads(&crate::attention::causal_attention(&q, &k, &v, group, past)?, b, tn);
        }
        let scores = (q.matmul(&keys.t()?)? * scale)?;
        let scores = scores.reshape((b, nkv, group, tn, total))?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((b * nkv, group * tn, total))?;
        self.merge_heads(&probs.matmul(&values)?, b, tn)
    }

    /// Per-head outputs laid out as (b, heads, t, hd) -> (b, t, heads * hd).
    fn merge_heads(&self, y: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let (nh, hd) = (self.num_heads, self.head_dim);
        Ok(y.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?)
    }
}

/// One decoder layer: pre-norm attention and pre-norm MLP, each added to the residual stream.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// The layer's position in the model: its weights' names, its LoRA dropout salts, its KV-cache slot.
    index: usize,
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    mlp: Mlp,
    eps: f64,
}

impl Block {
    /// Layer `index`'s weights, taken by Hugging Face name (`model.layers.{index}.…`) and shape.
    pub(crate) fn load(
        take: &mut impl FnMut(&str, &[usize]) -> Result<Tensor>,
        cfg: &ModelConfig,
        index: usize,
    ) -> Result<Self> {
        let p = format!("model.layers.{index}");
        let attn = Attention::load(take, cfg, &p)?;
        let mlp = Mlp::load(take, cfg, &p)?;
        let attn_norm = take(&format!("{p}.input_layernorm.weight"), &[cfg.hidden_size])?;
        let ffn_norm = take(&format!("{p}.post_attention_layernorm.weight"), &[cfg.hidden_size])?;
        Ok(Block { index, attn_norm, attn, ffn_norm, mlp, eps: cfg.rms_norm_eps })
    }

    /// The block over `x` (b, t, hidden) at the rotary positions `rope` (cos, sin), each (b, t, head_dim / 2).
    /// Returns the new residual stream and the input tokens' keys and values.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        pass: Pass,
        mode: AdapterMode,
    ) -> Result<(Tensor, KeyValues)> {
        let detached = matches!(pass, Pass::Decode { .. });
        let ops = Ops { detached, mode, layer: self.index as u64, eps: self.eps };
        let (y, kv) = self.attn.forward(&ops.norm(x, &self.attn_norm)?, rope, pass, &ops)?;
        let x = (x + y)?;
        let y = self.mlp.forward(&ops.norm(&x, &self.ffn_norm)?, &ops)?;
        Ok(((x + y)?, kv))
    }

    pub(crate) fn linear(&self, target: LoraTarget) -> &Linear {
        match target {
            LoraTarget::Q => &self.attn.q,
            LoraTarget::K => &self.attn.k,
            LoraTarget::V => &self.attn.v,
            LoraTarget::O => &self.attn.o,
            LoraTarget::Gate => &self.mlp.gate,
            LoraTarget::Up => &self.mlp.up,
            LoraTarget::Down => &self.mlp.down,
        }
    }

    pub(crate) fn linear_mut(&mut self, target: LoraTarget) -> &mut Linear {
        match target {
            LoraTarget::Q => &mut self.attn.q,
            LoraTarget::K => &mut self.attn.k,
            LoraTarget::V => &mut self.attn.v,
            LoraTarget::O => &mut self.attn.o,
            LoraTarget::Gate => &mut self.mlp.gate,
            LoraTarget::Up => &mut self.mlp.up,
            LoraTarget::Down => &mut self.mlp.down,
        }
    }

    /// Every weight under its Hugging Face name: the norms, then each projection's weight and bias.
    pub(crate) fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let p = self.name();
        let mut out = vec![
            (format!("{p}.input_layernorm.weight"), self.attn_norm.clone()),
            (format!("{p}.post_attention_layernorm.weight"), self.ffn_norm.clone()),
        ];
        if let (Some(qn), Some(kn)) = (&self.attn.q_norm, &self.attn.k_norm) {
            out.push((format!("{p}.self_attn.q_norm.weight"), qn.clone()));
            out.push((format!("{p}.self_attn.k_norm.weight"), kn.clone()));
        }
        for target in LoraTarget::ALL {
            let lin = self.linear(target);
            out.push((format!("{p}.{}.weight", target.module_name()), lin.weight.clone()));
            if let Some(b) = &lin.bias {
                out.push((format!("{p}.{}.bias", target.module_name()), b.clone()));
            }
        }
        out
    }

    /// Calls `f` on every weight, by name, in the order of [`Block::named_tensors`].
    pub(crate) fn for_each_tensor_mut(&mut self, f: &mut impl FnMut(&str, &mut Tensor) -> Result<()>) -> Result<()> {
        let p = self.name();
        f(&format!("{p}.input_layernorm.weight"), &mut self.attn_norm)?;
        f(&format!("{p}.post_attention_layernorm.weight"), &mut self.ffn_norm)?;
        if let Some(qn) = &mut self.attn.q_norm {
            f(&format!("{p}.self_attn.q_norm.weight"), qn)?;
        }
        if let Some(kn) = &mut self.attn.k_norm {
            f(&format!("{p}.self_attn.k_norm.weight"), kn)?;
        }
        for target in LoraTarget::ALL {
            let lin = self.linear_mut(target);
            f(&format!("{p}.{}.weight", target.module_name()), &mut lin.weight)?;
            if let Some(b) = &mut lin.bias {
                f(&format!("{p}.{}.bias", target.module_name()), b)?;
            }
        }
        Ok(())
    }

    /// The prefix of the block's Hugging Face names: `model.layers.{index}`.
    pub(crate) fn name(&self) -> String {
        format!("model.layers.{}", self.index)
    }

    /// The norms' weights (the projections are reached through [`Block::linear`]).
    pub(crate) fn norms(&self) -> impl Iterator<Item = &Tensor> {
        [Some(&self.attn_norm), Some(&self.ffn_norm), self.attn.q_norm.as_ref(), self.attn.k_norm.as_ref()]
            .into_iter()
            .flatten()
    }
}
