//! A byte-level GPT whose architecture is set by the recipe, with a differentiable forward in candle.
//!
//! Only ops with a backward are used in the training path (this crate's fused norms, GELU and log-softmax, the
//! model crate's blocked attention, candle's `rope_slow`): candle's own fused kernels silently cut the gradient.
//! Activations are kept as 2-D `(tokens, width)` matrices so every projection is one large matmul; only attention
//! reshapes to `(batch, heads, time, head_dim)`.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Bytes: the vocabulary is fixed, so every recipe is evaluated on the same prediction problem.
pub(crate) const VOCAB: usize = 256;
const NORM_EPS: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    ReluSquared,
    SwiGlu,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    Learned,
    Rope { base: f64 },
}

/// The shape and variant of the network.
#[derive(Debug, Clone, PartialEq)]
pub struct GptConfig {
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    /// Hidden width of the MLP (per branch for SwiGLU).
    pub mlp_hidden: usize,
    /// Longest sequence the model sees (training or evaluation): sizes the learned position table and RoPE tables.
    pub max_len: usize,
    pub norm: NormKind,
    pub post_norm: bool,
    pub qk_norm: bool,
    pub activation: Activation,
    pub positions: Positions,
    pub tied_embeddings: bool,
    /// `cap * tanh(logits / cap)` when set.
    pub logit_softcap: Option<f64>,
    pub init_std: f64,
    pub zero_init_head: bool,
}

impl GptConfig {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// Parameters that take part in matrix multiplies (attention, MLP, output head), per the usual FLOP count.
    pub(crate) fn matmul_params(&self) -> usize {
        let d = self.d_model;
        let mlp_mats = if self.activation == Activation::SwiGlu { 3 } else { 2 };
        self.n_layer * (4 * d * d + mlp_mats * d * self.mlp_hidden) + d * VOCAB
    }

    /// All trainable parameters.
    pub fn total_params(&self) -> usize {
        let d = self.d_model;
        let norm = if self.norm == NormKind::LayerNorm { 2 * d } else { d };
        let norms = 2 * self.n_layer * norm + if self.post_norm { 0 } else { norm };
        let emb = VOCAB * d + if self.positions == Positions::Learned { self.max_len * d } else { 0 };
        let head_extra = if self.tied_embeddings { 0 } else { d * VOCAB };
        self.matmul_params() - d * VOCAB + head_extra + emb + norms
    }

    /// Training FLOPs per token at sequence length `t`: 6 per matmul parameter plus attention scores and mixing
    /// (forward 4*t*d per layer, times 3 for backward), the usual estimate (Kaplan et al.; PaLM appendix B).
    pub(crate) fn train_flops_per_token(&self, t: usize) -> f64 {
        6.0 * self.matmul_params() as f64 + 12.0 * (self.n_layer * self.d_model * t) as f64
    }

    /// Shapes `(rows, cols)` of the matrices inside the blocks ([`ParamRole::Hidden`]: what Muon orthogonalises),
    /// as [`Gpt`] creates them.
    pub(crate) fn hidden_matrix_shapes(&self) -> Vec<(usize, usize)> {
        let (d, h) = (self.d_model, self.mlp_hidden);
        let mut per_layer = vec![(d, d); 4];
        per_layer.push((d, h));
        if self.activation == Activation::SwiGlu {
            per_layer.push((d, h));
        }
        per_layer.push((h, d));
        (0..self.n_layer).flat_map(|_| per_layer.clone()).collect()
    }
}

/// What an optimiser should do with a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRole {
    /// A 2-D matrix inside a block (Muon orthogonalises these).
    Hidden,
    /// Token or position embedding, or the output head.
    Embedding,
    /// Norm gains and biases (no weight decay).
    Vector,
}

struct Norm {
    weight: Var,
    bias: Option<Var>,
}

struct Block {
    ln1: Norm,
    ln2: Norm,
    wq: Var,
    wk: Var,
    wv: Var,
    wo: Var,
    /// Up projection (and the value branch of SwiGLU).
    w_up: Var,
    /// The gate branch of SwiGLU.
    w_gate: Option<Var>,
    w_down: Var,
}

/// The network's parameters and the tables its forward needs.
pub struct Gpt {
    pub cfg: GptConfig,
    wte: Var,
    wpe: Option<Var>,
    blocks: Vec<Block>,
    ln_f: Option<Norm>,
    head: Option<Var>,
    /// RoPE cos/sin tables, `(max_len, head_dim / 2)`.
    rope: Option<(Tensor, Tensor)>,
    params: Vec<(String, Var, ParamRole)>,
    /// The blocked kernel, or (tests' reference) the composed ops.
    composed_attention: bool,
}

/// Creates parameters in a fixed order from one random stream, so a seed fixes every weight.
struct ParamBuilder<'a> {
    rng: ChaCha8Rng,
    device: &'a Device,
    params: Vec<(String, Var, ParamRole)>,
}

impl ParamBuilder<'_> {
    fn normal(&mut self, name: String, shape: &[usize], std: f64, role: ParamRole) -> Result<Var> {
        let n: usize = shape.iter().product();
        let data = if std == 0.0 { vec![0f32; n] } else { normal_f32(&mut self.rng, n, std) };
        let var = Var::from_vec(data, shape, self.device)?;
        self.params.push((name, var.clone(), role));
        Ok(var)
    }

    fn norm(&mut self, name: &str, kind: NormKind, d: usize) -> Result<Norm> {
        let weight = Var::ones(d, DType::F32, self.device)?;
        self.params.push((format!("{name}.weight"), weight.clone(), ParamRole::Vector));
        let bias = match kind {
            NormKind::LayerNorm => {
                let b = Var::zeros(d, DType::F32, self.device)?;
                self.params.push((format!("{name}.bias"), b.clone(), ParamRole::Vector));
                Some(b)
            }
            NormKind::RmsNorm => None,
        };
        Ok(Norm { weight, bias })
    }
}

/// `n` samples of N(0, std^2) by Box-Muller from a ChaCha stream (portable and reproducible everywhere).
fn normal_f32(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    use rand::Rng;
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl Gpt {
    /// A freshly initialised model; the same seed gives the same weights on every device.
    pub fn new(cfg: GptConfig, seed: u64, device: &Device) -> Result<Gpt> {
        let mut b = ParamBuilder { rng: ChaCha8Rng::seed_from_u64(seed), device, params: Vec::new() };
        let d = cfg.d_model;
        let h = cfg.mlp_hidden;
        let std = cfg.init_std;
        // GPT-2: residual output projections scaled down with depth so the residual stream does not grow with it.
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let wte = b.normal("wte".into(), &[VOCAB, d], std, ParamRole::Embedding)?;
        let wpe = match cfg.positions {
            Positions::Learned => Some(b.normal("wpe".into(), &[cfg.max_len, d], std, ParamRole::Embedding)?),
            Positions::Rope { .. } => None,
        };
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let ln1 = b.norm(&format!("h{l}.ln1"), cfg.norm, d)?;
            let wq = b.normal(format!("h{l}.wq"), &[d, d], std, ParamRole::Hidden)?;
            let wk = b.normal(format!("h{l}.wk"), &[d, d], std, ParamRole::Hidden)?;
            let wv = b.normal(format!("h{l}.wv"), &[d, d], std, ParamRole::Hidden)?;
            let wo = b.normal(format!("h{l}.wo"), &[d, d], proj_std, ParamRole::Hidden)?;
            let ln2 = b.norm(&format!("h{l}.ln2"), cfg.norm, d)?;
            let w_up = b.normal(format!("h{l}.w_up"), &[d, h], std, ParamRole::Hidden)?;
            let w_gate = match cfg.activation {
                Activation::SwiGlu => Some(b.normal(format!("h{l}.w_gate"), &[d, h], std, ParamRole::Hidden)?),
                _ => None,
            };
            let w_down = b.normal(format!("h{l}.w_down"), &[h, d], proj_std, ParamRole::Hidden)?;
            blocks.push(Block { ln1, ln2, wq, wk, wv, wo, w_up, w_gate, w_down });
        }
        // Post-norm blocks end with a norm already; pre-norm needs a final one before the head.
        let ln_f = if cfg.post_norm { None } else { Some(b.norm("ln_f", cfg.norm, d)?) };
        let head = if cfg.tied_embeddings {
            None
        } else {
            let head_std = if cfg.zero_init_head { 0.0 } else { std };
            Some(b.normal("head".into(), &[d, VOCAB], head_std, ParamRole::Embedding)?)
        };
        let rope = match cfg.positions {
            Positions::Rope { base } => Some(rope_tables(cfg.max_len, cfg.head_dim(), base, device)?),
            Positions::Learned => None,
        };
        Ok(Gpt { cfg, wte, wpe, blocks, ln_f, head, rope, params: b.params, composed_attention: false })
    }

    /// Every trainable parameter with its name and role, in a fixed order.
    pub fn params(&self) -> &[(String, Var, ParamRole)] {
        &self.params
    }

    /// Logits `(batch * time, VOCAB)` for byte ids `(batch, time)`.
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (bsz, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let n = bsz * t;
        let flat = ids.reshape(n)?;
        let mut x = self.wte.as_tensor().embedding(&flat)?;
        if let Some(wpe) = &self.wpe {
            let pos = wpe.as_tensor().narrow(0, 0, t)?;
            x = x.reshape((bsz, t, cfg.d_model))?.broadcast_add(&pos)?.reshape((n, cfg.d_model))?;
        }
        for block in &self.blocks {
            x = if cfg.post_norm {
                let a = self.attention(block, &x, bsz, t)?;
                let x = self.norm(&block.ln1, &(x + a)?)?;
                let m = self.mlp(block, &x)?;
                self.norm(&block.ln2, &(x + m)?)?
            } else {
                let a = self.attention(block, &self.norm(&block.ln1, &x)?, bsz, t)?;
                let x = (x + a)?;
                let m = self.mlp(block, &self.norm(&block.ln2, &x)?)?;
                (x + m)?
            };
        }
        if let Some(ln_f) = &self.ln_f {
            x = self.norm(ln_f, &x)?;
        }
        let logits = match &self.head {
            Some(head) => x.matmul(head.as_tensor())?,
            None => x.matmul(&self.wte.as_tensor().t()?)?,
        };
        match cfg.logit_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// Mean next-byte cross-entropy of `inputs -> targets` (both `(batch, time)`), and the mean squared
    /// log-partition (for z-loss).
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = self.logits(inputs)?;
        // (2, tokens): each token's NLL and log-partition, one op with its own backward on the CPU.
        let rows = super::cross_entropy::nll_and_log_z(&logits, &targets.flatten_all()?)?;
        let ce = rows.get(0)?.mean_all()?;
        let z_sq = rows.get(1)?.sqr()?.mean_all()?;
        Ok((ce, z_sq))
    }

    fn norm(&self, norm: &Norm, x: &Tensor) -> Result<Tensor> {
        let bias = norm.bias.as_ref().map(Var::as_tensor);
        ideator_model::norm::affine_normalize(x, norm.weight.as_tensor(), bias, NORM_EPS)
    }

    fn attention(&self, blk: &Block, x: &Tensor, bsz: usize, t: usize) -> Result<Tensor> {
        let (nh, hd) = (self.cfg.n_head, self.cfg.head_dim());
        let split = |w: &Var| -> Result<Tensor> {
            x.matmul(w.as_tensor())?.reshape((bsz, t, nh, hd))?.transpose(1, 2)?.contiguous()
        };
        let (mut q, mut k, v) = (split(&blk.wq)?, split(&blk.wk)?, split(&blk.wv)?);
        if self.cfg.qk_norm {
            q = ideator_model::norm::normalize(&q, false, NORM_EPS)?;
            k = ideator_model::norm::normalize(&k, false, NORM_EPS)?;
        }
        if let Some((cos, sin)) = &self.rope {
            let (cos, sin) = (cos.narrow(0, 0, t)?, sin.narrow(0, 0, t)?);
            q = candle_nn::rotary_emb::rope_slow(&q, &cos, &sin)?;
            k = candle_nn::rotary_emb::rope_slow(&k, &cos, &sin)?;
        }
        let y = causal_attention(&q, &k, &v, self.composed_attention)?;
        let y = y.transpose(1, 2)?.reshape((bsz * t, nh * hd))?;
        y.matmul(blk.wo.as_tensor())
    }

    fn mlp(&self, blk: &Block, x: &Tensor) -> Result<Tensor> {
        let (w_up, w_down) = (blk.w_up.as_tensor(), blk.w_down.as_tensor());
        match (self.cfg.activation, &blk.w_gate) {
            // One op with its own backward (mlp.rs): no zero-filled gradient slots for the wide intermediates.
            (Activation::Gelu, _) => super::mlp::mlp_gelu(x, w_up, w_down),
            (Activation::ReluSquared, _) => x.matmul(w_up)?.relu()?.sqr()?.matmul(w_down),
            (Activation::SwiGlu, Some(gate)) => {
                let up = x.matmul(w_up)?;
                (x.matmul(gate.as_tensor())?.silu()? * up)?.matmul(w_down)
            }
            (Activation::SwiGlu, None) => unreachable!("SwiGLU blocks are built with a gate"),
        }
    }
}

/// Causal self-attention of `(batch, heads, t, head_dim)` queries, keys and values, scaled by `1/sqrt(head_dim)`.
/// On CPU the model crate's blocked kernel (FlashAttention's forward and backward, one head at a time): no
/// `(t, t)` scores or probabilities are kept for autograd, where the composed form stored both and candle's
/// backward added a zero-filled gradient buffer for each. `composed` asks for the composed ops everywhere.
fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, composed: bool) -> Result<Tensor> {
    use ideator_model::attention;
    let out = if composed { attention::composed(q, k, v, 1, 0) } else { attention::causal_attention(q, k, v, 1, 0) };
    out.map_err(|e| match e {
        ideator_model::ModelError::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    })
}

/// RoPE tables for `rope_slow` (non-interleaved halves): cos and sin of `pos * base^(-2i/head_dim)`.
fn rope_tables(max_len: usize, head_dim: usize, base: f64, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(max_len * half);
    let mut sin = Vec::with_capacity(max_len * half);
    for p in 0..max_len {
        for i in 0..half {
            let angle = p as f64 * base.powf(-2.0 * i as f64 / head_dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((Tensor::from_vec(cos, (max_len, half), device)?, Tensor::from_vec(sin, (max_len, half), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss and every parameter's gradient with the blocked attention kernel equal those with the composed
    /// ops, for learned positions and for RoPE with q/k norms (the two ways queries and keys reach attention).
    #[test]
    fn blocked_attention_gives_the_composed_loss_and_gradients() {
        for (positions, qk_norm) in [(Positions::Learned, false), (Positions::Rope { base: 10_000.0 }, true)] {
            let cfg = GptConfig {
                n_layer: 2,
                d_model: 32,
                n_head: 4,
                mlp_hidden: 64,
                max_len: 70,
                norm: NormKind::LayerNorm,
                post_norm: false,
                qk_norm,
                activation: Activation::Gelu,
                positions,
                tied_embeddings: false,
                logit_softcap: None,
                init_std: 0.1,
                zero_init_head: false,
            };
            let dev = Device::Cpu;
            // 70 positions: a whole block of query rows and a partial one.
            let ids: Vec<u32> = (0..2 * 70).map(|i| (i * 37 % 251) as u32).collect();
            let inputs = Tensor::from_vec(ids.clone(), (2, 70), &dev).unwrap();
            let targets =
                Tensor::from_vec(ids.iter().map(|i| (i + 1) % 256).collect::<Vec<_>>(), (2, 70), &dev).unwrap();
            let run = |composed: bool| {
                let mut gpt = Gpt::new(cfg.clone(), 7, &dev).unwrap();
                gpt.composed_attention = composed;
                let (ce, _) = gpt.loss(&inputs, &targets).unwrap();
                let grads = ce.backward().unwrap();
                let flat: Vec<Vec<f32>> = gpt
                    .params()
                    .iter()
                    .map(|(_, v, _)| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                    .collect();
                (ce.to_scalar::<f32>().unwrap(), flat)
            };
            let ((loss, grads), (want_loss, want_grads)) = (run(false), run(true));
            assert!((loss - want_loss).abs() < 1e-5, "loss {loss}, composed {want_loss}");
            for ((name, _, _), (g, want)) in
                Gpt::new(cfg.clone(), 7, &dev).unwrap().params().iter().zip(grads.iter().zip(&want_grads))
            {
                let scale = want.iter().fold(0f32, |m, w| m.max(w.abs()));
                assert!(scale > 0.0, "{name}: no gradient");
                for (a, b) in g.iter().zip(want) {
                    assert!((a - b).abs() <= 1e-4 * scale, "{name}: blocked {a}, composed {b} (largest {scale})");
                }
            }
        }
    }
}
