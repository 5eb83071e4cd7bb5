//! Log-probabilities of given tokens, and the entropy of each next-token distribution, straight from hidden
//! states, without keeping a (positions x vocabulary) tensor alive.
//!
//! `log p(y) = z_y - logsumexp(z)` with `z = h W^T`. On CPU a custom op computes it in chunks of rows and
//! recomputes the chunk's logits in the backward pass, so memory stays at one chunk of logits instead of the
//! several full copies that composing `log_softmax` keeps for autograd (hundreds of MB per step for a 49k
//! vocabulary). On other devices the composed version is used.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::device::{kernel_for, Kernel};
use crate::Result;

/// Rows of logits materialised at a time (64 x 49152 floats = 12.6 MB).
const CHUNK_ROWS: usize = 64;

/// Returns (N, 2): column 0 is `log p(target)`, column 1 the entropy of the full distribution. Both carry
/// gradients to `hidden` (N, H) and, if it is a variable, to `weight` (V, H).
pub fn linear_logprobs_and_entropy(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, _) = hidden.dims2()?;
    if n != targets.len() {
        return Err(crate::ModelError::Invalid(format!("{} hidden rows but {} targets", n, targets.len())));
    }
    let vocab = weight.dim(0)?;
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(crate::ModelError::Invalid(format!("target token {bad} is outside the vocabulary of {vocab}")));
    }
    if kernel_for(&[hidden, weight]) == Kernel::CpuFast {
        let op = FusedLogProbs { weight: weight.clone(), targets: targets.to_vec() };
        // The op reads the hidden states' storage directly: make it contiguous first.
        Ok(hidden.contiguous()?.apply_op2(weight, op)?)
    } else {
        composed(hidden, weight, targets)
    }
}

/// Reference implementation with ordinary ops (the portable path: other devices and dtypes, and the reference in
/// tests). The logits are computed in f32 whatever the inputs' dtype: a bf16 logit of magnitude 16 is only known
/// to +-0.06, an error that would go straight into every log-prob and importance ratio.
pub fn composed(hidden: &Tensor, weight: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let logits = hidden.to_dtype(DType::F32)?.matmul(&weight.to_dtype(DType::F32)?.t()?)?;
    let logp_all = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let idx = Tensor::new(targets, hidden.device())?.unsqueeze(1)?;
    let logp = logp_all.gather(&idx, 1)?;
    let entropy = (logp_all.exp()? * &logp_all)?.sum_keepdim(D::Minus1)?.neg()?;
    Ok(Tensor::cat(&[logp, entropy], 1)?)
}

struct FusedLogProbs {
    /// The same tensor as the op's second argument; held here so the forward can use tensor ops on it
    /// without copying its storage (the vocabulary matrix is large).
    weight: Tensor,
    targets: Vec<u32>,
}

/// For one chunk of rows: (logits, softmax probabilities, log-sum-exp per row).
fn chunk_softmax(h: &Tensor, weight: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let logits = h.matmul(&weight.t()?)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let exp = shifted.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    let probs = exp.broadcast_div(&sum)?;
    let lse = (sum.log()? + max)?;
    Ok((logits, probs, lse))
}

impl CustomOp2 for FusedLogProbs {
    fn name(&self) -> &'static str {
        "fused-linear-logprobs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let hidden = crate::cpu_op::input_tensor(self.name(), s1, l1)?;
        let n = hidden.dim(0)?;
        let mut out = Vec::with_capacity(n * 2);
        for start in (0..n).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(n - start);
            let h = hidden.narrow(0, start, rows)?;
            let (logits, probs, lse) = chunk_softmax(&h, &self.weight)?;
            let idx = Tensor::new(&self.targets[start..start + rows], h.device())?.unsqueeze(1)?;
            let target_logit = logits.gather(&idx, 1)?;
            let logp = (target_logit - &lse)?.flatten_all()?.to_vec1::<f32>()?;
            // H = lse - sum_j p_j z_j
            let expected = (probs * &logits)?.sum_keepdim(D::Minus1)?;
            let entropy = (lse - expected)?.flatten_all()?.to_vec1::<f32>()?;
            for (lp, e) in logp.into_iter().zip(entropy) {
                out.push(lp);
                out.push(e);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let hidden = hidden.detach();
        let weight_needs_grad = weight.track_op();
        let weight = weight.detach();
        let n = hidden.dim(0)?;
        let res = res.detach();
        let grad_res = grad_res.detach();
        let mut grad_h = Vec::with_capacity(n.div_ceil(CHUNK_ROWS));
        let mut grad_w: Option<Tensor> = None;
        for start in (0..n).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(n - start);
            let h = hidden.narrow(0, start, rows)?;
            let (_, probs, _) = chunk_softmax(&h, &weight)?;
            let g = grad_res.narrow(0, start, rows)?;
            let g_logp = g.narrow(1, 0, 1)?;
            let g_ent = g.narrow(1, 1, 1)?;
            let entropy = res.narrow(0, start, rows)?.narrow(1, 1, 1)?;
            // d logp_y / dz = onehot(y) - p ;  dH/dz = -p (log p + H)
            let idx = Tensor::new(&self.targets[start..start + rows], h.device())?.unsqueeze(1)?;
            let onehot = Tensor::zeros(probs.shape(), DType::F32, h.device())?.scatter_add(
                &idx,
                &Tensor::ones((rows, 1), DType::F32, h.device())?,
                1,
            )?;
            let d_logp = (onehot - &probs)?.broadcast_mul(&g_logp)?;
            let log_p = probs.clamp(1e-30f32, 1f32)?.log()?;
            let d_ent = (probs * log_p.broadcast_add(&entropy)?)?.neg()?.broadcast_mul(&g_ent)?;
            let grad_z = (d_logp + d_ent)?;
            grad_h.push(grad_z.matmul(&weight)?);
            if weight_needs_grad {
                let gw = grad_z.t()?.matmul(&h)?;
                grad_w = Some(match grad_w {
                    None => gw,
                    Some(acc) => (acc + gw)?,
                });
            }
        }
        Ok((Some(Tensor::cat(&grad_h, 0)?), grad_w))
    }
}
