//! AdamW with decoupled weight decay and exportable state, gradient accumulation across micro-batches, and
//! global-norm clipping. candle-nn's AdamW keeps its moments private, and exact resume needs them saved.
//!
//! [`adamw_update`] is the project's one AdamW arithmetic: the trainer's [`AdamW`] and the pretrain environment's
//! optimisers (AdamW, and Muon's AdamW half) both call it.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::config::OptimConfig;
use crate::{Result, TrainerError};

/// Sums of gradients over the micro-batches of one step, aligned with the parameter list.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(params: usize) -> Self {
        GradAccumulator { sums: vec![None; params] }
    }

    /// Adds the gradients of `params` found in `grads`, converted to f32 (the sums, the clipping norm and the
    /// optimiser work in f32 whatever dtype the forward ran in).
    pub fn add(&mut self, params: &[(String, Var)], grads: &GradStore) -> Result<()> {
        for (slot, (_, var)) in self.sums.iter_mut().zip(params) {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.to_dtype(DType::F32)?;
                *slot = Some(match slot.take() {
                    None => g.detach(),
                    Some(acc) => (acc + g)?.detach(),
                });
            }
        }
        Ok(())
    }

    pub fn into_grads(self) -> Vec<Option<Tensor>> {
        self.sums
    }
}

/// sqrt of the sum of squares of all gradients.
pub(crate) fn global_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(sq.sqrt())
}

/// Hyper-parameters of one [`adamw_update`] call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate of this step (the schedule already applied).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay of this parameter (0 for parameters that do not decay, such as norm gains).
    pub weight_decay: f64,
    /// 1-based index of this update, for the bias corrections.
    pub t: u64,
}

impl AdamWStep {
    /// Adam's bias corrections `(1 - beta1^t, 1 - beta2^t)`, in f64 (both forms of the update round from these).
    fn bias_corrections(&self) -> (f64, f64) {
        (1.0 - self.beta1.powi(self.t as i32), 1.0 - self.beta2.powi(self.t as i32))
    }
}

/// One AdamW update of one parameter (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization",
/// Algorithm 2, with Adam's bias corrections; the decay is `lr wd`, PyTorch's convention, where the paper scales
/// `wd` by the schedule's multiplier alone): updates the moments `m` and `v` in place and returns the new
/// parameter
///
/// `m = beta1 m + (1 - beta1) g`, `v = beta2 v + (1 - beta2) g^2`,
/// `theta' = theta (1 - lr wd) - (lr / (1 - beta1^t)) m / (sqrt(v / (1 - beta2^t)) + eps)`.
///
/// All tensors have the parameter's shape and dtype (f32 in practice). The order of the arithmetic is part of the
/// contract: the pretrain environment's rewards are pinned bit for bit per recipe and seed, so it must not change.
///
/// On the CPU, for f32 tensors of one shape, this is one pass over the elements ([`fused_cpu`]); elsewhere the same
/// arithmetic in candle's element-wise ops. Both give the same bits (tested).
///
/// # Errors
/// A shape or dtype mismatch between the tensors (candle's error).
pub fn adamw_update(
    theta: &Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    h: AdamWStep,
) -> candle_core::Result<Tensor> {
    match fused_cpu(theta, g, m, v, h)? {
        Some((theta, new_m, new_v)) => {
            (*m, *v) = (new_m, new_v);
            Ok(theta)
        }
        None => adamw_update_composed(theta, g, m, v, h),
    }
}

/// [`adamw_update`] in candle's element-wise ops: any device and dtype. Every op allocates and streams its
/// tensors once, about a dozen passes over the parameter per update.
fn adamw_update_composed(
    theta: &Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    h: AdamWStep,
) -> candle_core::Result<Tensor> {
    let theta = theta.detach();
    let decayed = if h.weight_decay > 0.0 { theta.affine(1.0 - h.lr * h.weight_decay, 0.0)? } else { theta };
    *m = (m.affine(h.beta1, 0.0)? + g.affine(1.0 - h.beta1, 0.0)?)?;
    *v = (v.affine(h.beta2, 0.0)? + g.sqr()?.affine(1.0 - h.beta2, 0.0)?)?;
    let (bc1, bc2) = h.bias_corrections();
    let denom = (v.affine(1.0 / bc2, 0.0)?.sqrt()? + h.eps)?;
    decayed - (m.affine(h.lr / bc1, 0.0)? / denom)?
}

/// Elements per task when the update is split over the thread pool (the arithmetic is element-wise, so the split
/// never changes a bit).
const FUSED_CHUNK: usize = 1 << 16;

/// [`adamw_update`] as one pass over CPU f32 slices: returns `(theta', m', v')`, or `None` where the tensors are
/// not all contiguous f32 CPU tensors of one shape (the caller then takes the composed ops). Each value goes
/// through the composed form's f32 operations in its order (candle's `affine(mul, add)` is `x * mul + add` with
/// both constants rounded to f32, `t + eps` is `affine(1, eps)`), so the bits are the same.
fn fused_cpu(
    theta: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    h: AdamWStep,
) -> candle_core::Result<Option<(Tensor, Tensor, Tensor)>> {
    let tensors = [theta, g, m, v];
    let fits = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
    if !tensors.iter().all(|t| fits(t) && t.shape() == theta.shape()) {
        return Ok(None);
    }
    let k = FusedConstants::new(h);
    let n = theta.elem_count();
    let (mut theta_out, mut m_out, mut v_out) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    ideator_model::with_f32_slices(tensors, |[theta, g, m, v]| {
        if rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            let outputs = theta_out.par_chunks_mut(FUSED_CHUNK).zip(m_out.par_chunks_mut(FUSED_CHUNK));
            outputs.zip(v_out.par_chunks_mut(FUSED_CHUNK)).enumerate().for_each(|(i, ((t_out, m_out), v_out))| {
                let at = i * FUSED_CHUNK..i * FUSED_CHUNK + t_out.len();
                k.apply(&theta[at.clone()], &g[at.clone()], &m[at.clone()], &v[at], t_out, m_out, v_out);
            });
        } else {
            // One thread: no hand-off to the pool (as `ideator_model`'s own element-wise ops).
            k.apply(theta, g, m, v, &mut theta_out, &mut m_out, &mut v_out);
        }
    })?;
    let (shape, dev) = (theta.shape(), theta.device());
    Ok(Some((
        Tensor::from_vec(theta_out, shape, dev)?,
        Tensor::from_vec(m_out, shape, dev)?,
        Tensor::from_vec(v_out, shape, dev)?,
    )))
}

/// The constants of one update, rounded to f32 as candle's `affine` rounds them.
struct FusedConstants {
    /// `1 - lr wd`, or `None` without decay (the composed form then skips the multiply).
    decay: Option<f32>,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bc2: f32,
    eps: f32,
    lr_over_bc1: f32,
}

impl FusedConstants {
    fn new(h: AdamWStep) -> Self {
        let (bc1, bc2) = h.bias_corrections();
        FusedConstants {
            decay: (h.weight_decay > 0.0).then_some((1.0 - h.lr * h.weight_decay) as f32),
            beta1: h.beta1 as f32,
            one_minus_beta1: (1.0 - h.beta1) as f32,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: h.eps as f32,
            lr_over_bc1: (h.lr / bc1) as f32,
        }
    }

    /// The composed form's operations on each element, in its order. `x * c + 0.0` is kept as written: adding
    /// +0 turns -0 into +0, as candle's `affine(c, 0)` does.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        theta: &[f32],
        g: &[f32],
        m: &[f32],
        v: &[f32],
        t_out: &mut [f32],
        m_out: &mut [f32],
        v_out: &mut [f32],
    ) {
        let outputs = t_out.iter_mut().zip(m_out.iter_mut()).zip(v_out.iter_mut());
        let inputs = theta.iter().zip(g).zip(m.iter().zip(v));
        for (((t_out, m_out), v_out), ((&theta, &g), (&m, &v))) in outputs.zip(inputs) {
            let decayed = match self.decay {
                Some(d) => theta * d + 0.0,
                None => theta,
            };
            let m_new = (m * self.beta1 + 0.0) + (g * self.one_minus_beta1 + 0.0);
            let v_new = (v * self.beta2 + 0.0) + ((g * g) * self.one_minus_beta2 + 0.0);
            let denom = (v_new * self.inv_bc2 + 0.0).sqrt() * 1.0 + self.eps;
            *t_out = decayed - (m_new * self.lr_over_bc1 + 0.0) / denom;
            *m_out = m_new;
            *v_out = v_new;
        }
    }
}

pub struct AdamW {
    cfg: OptimConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates applied so far (bias correction uses it).
    steps: u64,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], cfg: &OptimConfig) -> Result<Self> {
        cfg.validate()?;
        let zeros = |var: &Var| var.as_tensor().zeros_like();
        Ok(AdamW {
            cfg: cfg.clone(),
            m: params.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?,
            v: params.iter().map(|(_, v)| zeros(v)).collect::<candle_core::Result<_>>()?,
            steps: 0,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Clips (if configured) and applies one update with learning rate `lr`. Returns the gradient norm before
    /// clipping. Non-finite gradients leave the parameters untouched and return an error.
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Option<Tensor>], lr: f64) -> Result<f64> {
        let norm = global_norm(grads)?;
        if !norm.is_finite() {
            return Err(TrainerError::NonFinite(format!("gradient norm ({norm})")));
        }
        let scale = match self.cfg.grad_clip {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.steps += 1;
        for (i, ((_, var), g)) in params.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let g = if scale != 1.0 { (g * scale)? } else { g.clone() };
            let theta = var.as_tensor();
            // Decay matrices only: norm gains and biases (rank 1) keep their scale.
            let weight_decay = if theta.rank() >= 2 { self.cfg.weight_decay } else { 0.0 };
            let step = AdamWStep {
                lr,
                beta1: self.cfg.beta1,
                beta2: self.cfg.beta2,
                eps: self.cfg.eps,
                weight_decay,
                t: self.steps,
            };
            var.set(&adamw_update(theta, &g, &mut self.m[i], &mut self.v[i], step)?)?;
        }
        Ok(norm)
    }

    /// Moments by parameter name (`adam.m.<name>`, `adam.v.<name>`), for checkpoints.
    pub(crate) fn state_tensors(&self, params: &[(String, Var)]) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in params.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.m[i].clone());
            out.insert(format!("adam.v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by `state_tensors` and the update count.
    pub(crate) fn load_state(
        &mut self,
        params: &[(String, Var)],
        state: &HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<()> {
        for (i, (name, var)) in params.iter().enumerate() {
            for (prefix, slot) in [("adam.m.", &mut self.m[i]), ("adam.v.", &mut self.v[i])] {
                let key = format!("{prefix}{name}");
                let t = state.get(&key).ok_or_else(|| {
                    TrainerError::Data(format!("optimiser state has no '{key}': the checkpoint is of another model"))
                })?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(TrainerError::Data(format!("optimiser state '{key}' has the wrong shape")));
                }
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_adam_step_moves_by_lr_in_the_gradient_sign() {
        let p = vec![("w".to_string(), Var::new(&[[1.0f32, -1.0]], &Device::Cpu).unwrap())];
        let cfg = OptimConfig { grad_clip: None, ..Default::default() };
        let mut opt = AdamW::new(&p, &cfg).unwrap();
        let g = vec![Some(Tensor::new(&[[0.5f32, -2.0]], &Device::Cpu).unwrap())];
        opt.step(&p, &g, 0.1).unwrap();
        let w = p[0].1.as_tensor().to_vec2::<f32>().unwrap();
        // Bias-corrected first step: update = g / |g| (up to eps).
        assert!((w[0][0] - 0.9).abs() < 1e-5 && (w[0][1] + 0.9).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = vec![("w".to_string(), Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap())];
        let g = vec![Some(Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap())];
        assert!((global_norm(&g).unwrap() - 5.0).abs() < 1e-9);
        // SGD-like check through Adam's first moment: clipping does not change the direction, only the norm
        // reported before clipping is returned.
        let cfg = OptimConfig { grad_clip: Some(1.0), ..Default::default() };
        let mut opt = AdamW::new(&p, &cfg).unwrap();
        assert!((opt.step(&p, &g, 0.0).unwrap() - 5.0).abs() < 1e-9);
        let m = opt.state_tensors(&p)["adam.m.w"].to_vec1::<f32>().unwrap();
        // m = (1 - beta1) * g * (1 / 5)
        assert!((m[0] - 0.1 * 0.6).abs() < 1e-6 && (m[1] - 0.1 * 0.8).abs() < 1e-6, "{m:?}");
    }

    /// Three AdamW steps on a few values against the paper's formula evaluated in f64 element by element.
    #[test]
    fn adamw_update_follows_the_decoupled_formula() {
        let (b1, b2, eps, wd, lr) = (0.9, 0.95, 1e-8, 0.1, 0.01);
        let dev = Device::Cpu;
        let mut theta = Tensor::new(&[0.5f32, -1.5, 2.0], &dev).unwrap();
        let (mut m, mut v) = (theta.zeros_like().unwrap(), theta.zeros_like().unwrap());
        let grads = [[0.3f32, -0.2, 1.0], [-0.1, -0.4, 0.5], [0.2, 0.0, -2.0]];
        let mut reference = [(0.5f64, 0.0f64, 0.0f64), (-1.5, 0.0, 0.0), (2.0, 0.0, 0.0)];
        for (t, g) in grads.iter().enumerate() {
            let h = AdamWStep { lr, beta1: b1, beta2: b2, eps, weight_decay: wd, t: t as u64 + 1 };
            let gt = Tensor::new(g, &dev).unwrap();
            theta = adamw_update(&theta, &gt, &mut m, &mut v, h).unwrap();
            for (r, &gi) in reference.iter_mut().zip(g) {
                let gi = gi as f64;
                r.1 = b1 * r.1 + (1.0 - b1) * gi;
                r.2 = b2 * r.2 + (1.0 - b2) * gi * gi;
                let m_hat = r.1 / (1.0 - b1.powi(t as i32 + 1));
                let v_hat = r.2 / (1.0 - b2.powi(t as i32 + 1));
                r.0 = r.0 * (1.0 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps);
            }
        }
        let got = theta.to_vec1::<f32>().unwrap();
        for (g, r) in got.iter().zip(&reference) {
            assert!((*g as f64 - r.0).abs() < 1e-6, "{got:?} against {reference:?}");
        }
        let no_decay = AdamWStep { lr, beta1: b1, beta2: b2, eps, weight_decay: 0.0, t: 1 };
        let (mut m, mut v) = (theta.zeros_like().unwrap(), theta.zeros_like().unwrap());
        let zero = theta.zeros_like().unwrap();
        let same = adamw_update(&theta, &zero, &mut m, &mut v, no_decay).unwrap();
        assert_eq!(same.to_vec1::<f32>().unwrap(), got, "no gradient and no decay: no change");
    }

    /// The one-pass CPU update gives the composed ops' bits for theta, m and v, over steps with and without decay,
    /// on a tensor larger than one task (so the pool splits it), with zeros of both signs among the values.
    #[test]
    fn the_fused_update_gives_the_composed_bits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // Two whole tasks and a partial one, as a (rows, 7) matrix.
        let n = 7 * ((2 * FUSED_CHUNK) / 7 + 11);
        let mut random = |scale: f32| -> Vec<f32> {
            (0..n)
                .map(|i| match i % 97 {
                    0 => 0.0,
                    1 => -0.0,
                    _ => (rng.random::<f32>() - 0.5) * scale,
                })
                .collect()
        };
        let dev = Device::Cpu;
        let bits = |t: &Tensor| {
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let theta0 = Tensor::from_vec(random(2.0), (n / 7, 7), &dev).unwrap();
        let (mut fused, mut composed) = (theta0.clone(), theta0.clone());
        let zeros = || theta0.zeros_like().unwrap();
        let (mut fm, mut fv, mut cm, mut cv) = (zeros(), zeros(), zeros(), zeros());
        for t in 1..=4u64 {
            let g = Tensor::from_vec(random(0.1), theta0.shape(), &dev).unwrap();
            let weight_decay = if t % 2 == 0 { 0.1 } else { 0.0 };
            let h = AdamWStep { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay, t };
            assert!(fused_cpu(&fused, &g, &fm, &fv, h).unwrap().is_some(), "the fused path must run here");
            fused = adamw_update(&fused, &g, &mut fm, &mut fv, h).unwrap();
            composed = adamw_update_composed(&composed, &g, &mut cm, &mut cv, h).unwrap();
            assert_eq!(bits(&fused), bits(&composed), "theta after step {t}");
            assert_eq!(bits(&fm), bits(&cm), "m after step {t}");
            assert_eq!(bits(&fv), bits(&cv), "v after step {t}");
        }
        // A strided gradient (a transpose) takes the composed ops, with the same result.
        let h = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, t: 5 };
        let g_t = Tensor::from_vec(random(0.1), (7, n / 7), &dev).unwrap().t().unwrap();
        assert!(fused_cpu(&fused, &g_t, &fm, &fv, h).unwrap().is_none());
        let (mut sm, mut sv) = (fm.clone(), fv.clone());
        let strided = adamw_update(&fused, &g_t, &mut sm, &mut sv, h).unwrap();
        let want = adamw_update(&fused, &g_t.contiguous().unwrap(), &mut fm, &mut fv, h).unwrap();
        assert_eq!(bits(&strided), bits(&want));
        // One thread takes the pass without the pool, with the same bits.
        let g = Tensor::from_vec(random(0.1), theta0.shape(), &dev).unwrap();
        let update = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (mut m, mut v) = (fm.clone(), fv.clone());
            let theta = pool.install(|| adamw_update(&fused, &g, &mut m, &mut v, h).unwrap());
            (bits(&theta), bits(&m), bits(&v))
        };
        assert_eq!(update(1), update(2));
        // Other dtypes take the composed ops.
        let f64s = theta0.to_dtype(DType::F64).unwrap();
        let h = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0, t: 1 };
        assert!(fused_cpu(&f64s, &f64s, &f64s, &f64s, h).unwrap().is_none());
    }

    #[test]
    fn non_finite_gradients_are_refused() {
        let p = vec![("w".to_string(), Var::new(&[1.0f32], &Device::Cpu).unwrap())];
        let mut opt = AdamW::new(&p, &OptimConfig::default()).unwrap();
        let g = vec![Some(Tensor::new(&[f32::NAN], &Device::Cpu).unwrap())];
        assert!(opt.step(&p, &g, 0.1).is_err());
        assert_eq!(p[0].1.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0]);
    }
}
