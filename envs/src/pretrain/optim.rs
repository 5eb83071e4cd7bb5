//! Optimisers written on candle tensors (candle-nn has AdamW only): AdamW, Lion, SGD with momentum, and Muon
//! (Newton-Schulz orthogonalised momentum for hidden matrices, AdamW for everything else). Weight decay is
//! decoupled and applies to matrices (embeddings included), never to norm gains and biases.
//!
//! AdamW's arithmetic is the trainer's [`adamw_update`] (one implementation in the project); this module adds the
//! other optimisers and the choice by parameter role.

use super::gpt::ParamRole;
use candle_core::{Result, Tensor, Var};
use ideator_trainer::optim::{adamw_update, AdamWStep};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    AdamW,
    Lion,
    Sgd,
    Muon,
}

/// Hyper-parameters of one optimiser step (learning rates already include the schedule's multiplier).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    /// Momentum of SGD and Muon.
    pub momentum: f64,
    pub eps: f64,
}

/// Per-parameter state.
enum State {
    Adam { m: Tensor, v: Tensor },
    Momentum { buf: Tensor },
}

/// An optimiser over a fixed list of parameters.
pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<(Var, ParamRole)>,
    state: Vec<State>,
    step: u64,
}

/// Coefficients of the quintic Newton-Schulz iteration (Jordan et al., Muon) that pushes singular values towards 1.
const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
const NS_STEPS: usize = 5;

impl Optimizer {
    pub fn new(cfg: OptimConfig, params: Vec<(Var, ParamRole)>) -> Result<Optimizer> {
        let mut state = Vec::with_capacity(params.len());
        for (var, role) in &params {
            let zeros = var.as_tensor().zeros_like()?;
            state.push(match (cfg.kind, role) {
                (OptimizerKind::AdamW, _) | (OptimizerKind::Muon, ParamRole::Embedding | ParamRole::Vector) => {
                    // Two buffers, not one shared: the fused AdamW update holds read locks on both.
                    State::Adam { m: zeros, v: var.as_tensor().zeros_like()? }
                }
                (OptimizerKind::Lion, _) => State::Adam { m: zeros.clone(), v: zeros },
                (OptimizerKind::Sgd, _) | (OptimizerKind::Muon, ParamRole::Hidden) => State::Momentum { buf: zeros },
            });
        }
        Ok(Optimizer { cfg, params, state, step: 0 })
    }

    /// One update. `lr` applies to everything except Muon's hidden matrices, which use `muon_lr`.
    /// `grads[i]` is the gradient of `params[i]` (`None`: the parameter did not influence the loss).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, muon_lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        for (i, ((var, role), state)) in self.params.iter().zip(self.state.iter_mut()).enumerate() {
            let Some(g) = &grads[i] else { continue };
            let p = var.as_tensor().detach();
            let decays = *role != ParamRole::Vector;
            let lr_here = if c.kind == OptimizerKind::Muon && *role == ParamRole::Hidden { muon_lr } else { lr };
            let weight_decay = if decays { c.weight_decay } else { 0.0 };
            // Decoupled weight decay, applied before the update (AdamW applies it inside `adamw_update`).
            let decayed =
                || if weight_decay > 0.0 { p.affine(1.0 - lr_here * weight_decay, 0.0) } else { Ok(p.clone()) };
            let new = match (c.kind, state) {
                (OptimizerKind::Lion, State::Adam { m, .. }) => {
                    let update = (m.affine(c.beta1, 0.0)? + g.affine(1.0 - c.beta1, 0.0)?)?.sign()?;
                    *m = (m.affine(c.beta2, 0.0)? + g.affine(1.0 - c.beta2, 0.0)?)?;
                    (decayed()? - update.affine(lr_here, 0.0)?)?
                }
                (_, State::Adam { m, v }) => {
                    let step = AdamWStep {
                        lr: lr_here,
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        weight_decay,
                        t: self.step,
                    };
                    adamw_update(&p, g, m, v, step)?
                }
                (OptimizerKind::Muon, State::Momentum { buf }) => {
                    *buf = (buf.affine(c.momentum, 0.0)? + g)?;
                    // Nesterov momentum, then orthogonalise: every direction of the update gets a similar size.
                    let nesterov = (g + buf.affine(c.momentum, 0.0)?)?;
                    let (rows, cols) = nesterov.dims2()?;
                    let ortho = newton_schulz(&nesterov)?;
                    // Our matrices are (in, out); scale so tall and wide matrices get comparable per-entry updates.
                    let scale = (cols as f64 / rows as f64).max(1.0).sqrt();
                    (decayed()? - ortho.affine(lr_here * scale, 0.0)?)?
                }
                (_, State::Momentum { buf }) => {
                    *buf = (buf.affine(c.momentum, 0.0)? + g)?;
                    (decayed()? - buf.affine(lr_here, 0.0)?)?
                }
            };
            var.set(&new)?;
        }
        Ok(())
    }
}

/// FLOPs of one [`newton_schulz`] call on a `rows x cols` matrix: with m = min(rows, cols) and n = max(rows, cols),
/// each of the [`NS_STEPS`] iterations computes the m x m Gram matrix (2 m^2 n), its square (2 m^3) and the
/// polynomial times x (2 m^2 n), counting a multiply-add as 2 FLOPs like the model's FLOP count.
pub(crate) fn newton_schulz_flops(rows: usize, cols: usize) -> f64 {
    let (m, n) = (rows.min(cols) as f64, rows.max(cols) as f64);
    NS_STEPS as f64 * (4.0 * m * m * n + 2.0 * m * m * m)
}

/// Approximately the orthogonal factor U V^T of `g = U S V^T`, by five quintic Newton-Schulz iterations on the
/// wide orientation (fewer flops: the Gram matrix is the small side).
pub fn newton_schulz(g: &Tensor) -> Result<Tensor> {
    let (a, b, c) = NS_COEFFS;
    let (rows, cols) = g.dims2()?;
    let transpose = rows > cols;
    let mut x = if transpose { g.t()?.contiguous()? } else { g.clone() };
    let norm = x.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    x = x.affine(1.0 / (norm + 1e-7), 0.0)?;
    for _ in 0..NS_STEPS {
        let gram = x.matmul(&x.t()?)?;
        let poly = (gram.affine(b, 0.0)? + gram.matmul(&gram)?.affine(c, 0.0)?)?;
        x = (x.affine(a, 0.0)? + poly.matmul(&x)?)?;
    }
    if transpose {
        x.t()?.contiguous()
    } else {
        Ok(x)
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm` (0: no clipping). Returns the norm before.
pub(crate) fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.iter().flatten() {
        sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = g.affine(scale, 0.0)?;
        }
    }
    Ok(norm)
}

/// Exponential moving average of the weights, bias-corrected (it starts at zero), for evaluation.
pub(crate) struct Ema {
    decay: f64,
    shadow: Vec<Tensor>,
    updates: i32,
}

impl Ema {
    pub fn new(decay: f64, params: &[Var]) -> Result<Ema> {
        let shadow = params.iter().map(|v| v.as_tensor().zeros_like()).collect::<Result<_>>()?;
        Ok(Ema { decay, shadow, updates: 0 })
    }

    pub fn update(&mut self, params: &[Var]) -> Result<()> {
        self.updates += 1;
        for (s, v) in self.shadow.iter_mut().zip(params) {
            *s = (s.affine(self.decay, 0.0)? + v.as_tensor().detach().affine(1.0 - self.decay, 0.0)?)?;
        }
        Ok(())
    }

    /// Replaces the parameters by the averaged ones.
    pub(crate) fn copy_to(&self, params: &[Var]) -> Result<()> {
        let correction = 1.0 - self.decay.powi(self.updates.max(1));
        for (s, v) in self.shadow.iter().zip(params) {
            v.set(&s.affine(1.0 / correction, 0.0)?)?;
        }
        Ok(())
    }
}
