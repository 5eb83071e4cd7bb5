//! Log-probabilities of given tokens, and the entropy of each next-token distribution, straight from hidden
//! states, without keeping a (positions x vocabulary) tensor alive.
//!
//! `log p(y) = z_y - logsumexp(z)` with `z = h W^T`. On CPU a custom op computes it one block of the vocabulary
//! at a time (blocks.rs, with the row passes of rows.rs) and recomputes each block's logits in the backward pass,
//! so memory stays at one block of logits instead of the several full copies that composing `log_softmax` keeps
//! for autograd (hundreds of MB per step for a 49k vocabulary). On other devices the composed version is used.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use crate::attention::rows::RowPath;
use crate::cpu_op::{input_slice, with_f32_slice};
use crate::device::{kernel_for, Kernel};
use crate::Result;

mod blocks;
mod rows;

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
        fused(hidden, weight, targets, blocks::vocab_block(n, vocab))
    } else {
        composed(hidden, weight, targets)
    }
}

/// The CPU op with vocabulary blocks of `block` entries. Its third column, the log-sum-exp the backward needs, is
/// dropped here.
fn fused(hidden: &Tensor, weight: &Tensor, targets: &[u32], block: usize) -> Result<Tensor> {
    let op = FusedLogProbs { targets: targets.to_vec(), block };
    // The op reads both inputs' storage directly: make them contiguous first.
    let out = hidden.contiguous()?.apply_op2(&weight.contiguous()?, op)?;
    Ok(out.narrow(1, 0, 2)?)
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
    targets: Vec<u32>,
    /// Vocabulary entries per block.
    block: usize,
}

impl CustomOp2 for FusedLogProbs {
    fn name(&self) -> &'static str {
        "fused-linear-logprobs"
    }

    /// (N, 3): log p(target), entropy, log-sum-exp.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, dim) = l1.shape().dims2()?;
        let x = blocks::Operands {
            hidden: input_slice(self.name(), s1, l1)?,
            weight: input_slice(self.name(), s2, l2)?,
            targets: &self.targets,
            dim,
            block: self.block,
        };
        Ok((CpuStorage::F32(blocks::forward(&x, RowPath::detect())), Shape::from((n, 3))))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let weight_grad = weight.track_op();
        let (n, dim) = hidden.dims2()?;
        // The output and its gradient are (N, 3): small enough to copy.
        let out = res.flatten_all()?.to_vec1::<f32>()?;
        let grad_out = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let (d_hidden, d_weight) = with_f32_slice(hidden, |h| {
            with_f32_slice(weight, |w| {
                let x = blocks::Operands { hidden: h, weight: w, targets: &self.targets, dim, block: self.block };
                blocks::backward(&x, &out, &grad_out, weight_grad, RowPath::detect())
            })
        })??;
        let device = hidden.device();
        let d_hidden = Tensor::from_vec(d_hidden, (n, dim), device)?;
        let d_weight = d_weight.map(|dw| Tensor::from_vec(dw, weight.shape(), device)).transpose()?;
        Ok((Some(d_hidden), d_weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op with several ragged vocabulary blocks, against the composed ops: values and both gradients.
    #[test]
    fn blocked_op_matches_composed_values_and_gradients_across_block_sizes() {
        let dev = Device::Cpu;
        let (n, dim, vocab) = (37, 24, 301);
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, dim), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (vocab, dim), &dev).unwrap()).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| (i * 53 % vocab) as u32).collect();
        let coef = Tensor::new(&[[1.0f32, -0.4]], &dev).unwrap();
        let run = |block: Option<usize>| {
            let out = match block {
                Some(b) => fused(h.as_tensor(), w.as_tensor(), &targets, b).unwrap(),
                None => composed(h.as_tensor(), w.as_tensor(), &targets).unwrap(),
            };
            let g = out.broadcast_mul(&coef).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            [flat(&out), flat(g.get(h.as_tensor()).unwrap()), flat(g.get(w.as_tensor()).unwrap())]
        };
        let want = run(None);
        for block in [1, 16, 100, 300, 301] {
            let got = run(Some(block));
            for (what, (a, b)) in ["values", "grad hidden", "grad weight"].iter().zip(got.iter().zip(&want)) {
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "block {block}, {what}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient() {
        let dev = Device::Cpu;
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (40, 8), &dev).unwrap();
        let out = fused(h.as_tensor(), &w, &[0, 3, 39, 7, 7], 16).unwrap();
        let g = out.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none());
        assert_eq!(g.get(h.as_tensor()).unwrap().dims(), &[5, 8]);
    }

    #[test]
    fn vocabulary_blocks_are_wide_and_bounded() {
        assert_eq!(blocks::vocab_block(2048, 49_152), 1024);
        assert_eq!(blocks::vocab_block(1, 49_152), 49_152);
        assert_eq!(blocks::vocab_block(100_000, 49_152), 256);
        assert_eq!(blocks::vocab_block(10, 7), 7);
    }
}
