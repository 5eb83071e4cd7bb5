//! The GPT's loss head: each token's next-byte negative log-likelihood and its logits' log-partition, as one CPU
//! op with its own backward.
//!
//! Composed (log-softmax, gather, narrow), candle's backward gives the `(tokens x vocab)` log-probabilities, the
//! gather and the narrow each a zero-filled gradient slot and an add, and a log-softmax written by hand called
//! libm's `expf` once per logit, forward and backward. Here the forward makes one pass over the logits (the
//! vectorised `e^x` of `lanes`) and writes two numbers per token, and the backward writes the logits' gradient in
//! one pass. Other devices use the composed ops, which compute the same function.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor, D};
use ideator_model::device::{kernel_for, Kernel};

use super::lanes;

/// Row 0: `-log softmax(logits)[target]` per token; row 1: `log Z = log sum_j e^(logits_j)` per token. `logits` is
/// `(tokens, vocab)` f32, `targets` `(tokens)` u32 class ids; the result is `(2, tokens)`, differentiable in
/// `logits`. The mean of row 0 is the cross-entropy; the mean square of row 1 is PaLM's z-loss (Chowdhery et al.
/// 2022, section 5).
///
/// # Errors
/// Shapes that do not match, a target outside `0..vocab`, or a failing candle op.
pub(crate) fn nll_and_log_z(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if targets.dims() != [n] {
        candle_core::bail!("cross-entropy: {n} rows of logits but targets of shape {:?}", targets.shape());
    }
    if kernel_for(&[logits]) == Kernel::CpuFast {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, NllAndLogZ)
    } else {
        composed(logits, targets)
    }
}

/// The same function from candle's ops (the GPU's path).
fn composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    // log Z = logits - log_softmax for any column; the shift-invariant form keeps it differentiable.
    let log_z = (logits.narrow(1, 0, 1)? - logp.narrow(1, 0, 1)?)?.squeeze(1)?;
    Tensor::stack(&[nll, log_z], 0)
}

struct NllAndLogZ;

impl CustomOp2 for NllAndLogZ {
    fn name(&self) -> &'static str {
        "nll-log-z-fused"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let (CpuStorage::F32(logits), CpuStorage::U32(targets)) = (s1, s2) else {
            candle_core::bail!("{}: wants f32 logits and u32 targets", self.name());
        };
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("{}: wants contiguous inputs", self.name());
        };
        let (logits, targets) = (&logits[a..b], &targets[c..d]);
        let mut out = vec![0f32; 2 * n];
        let (nll, log_z) = out.split_at_mut(n);
        lanes::log_partitions(logits, v, log_z);
        for (i, (&t, nll)) in targets.iter().zip(nll.iter_mut()).enumerate() {
            let t = class(t, v, i)?;
            *nll = log_z[i] - logits[i * v + t];
        }
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }

    /// With `a` and `b` the gradients of a token's NLL and log Z, and `p` its softmax:
    /// `d/dlogits_j = (a + b) p_j - a [j = target]`.
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let targets = targets.to_vec1::<u32>()?;
        let grad = grad_res.contiguous()?;
        let d_logits =
            ideator_model::with_f32_slices([logits, res, &grad], |[logits, res, grad]| -> Result<Vec<f32>> {
                let (a, b) = grad.split_at(n);
                let scale: Vec<f32> = a.iter().zip(b).map(|(a, b)| a + b).collect();
                let mut d = vec![0f32; n * v];
                lanes::scaled_softmax(logits, v, &res[n..], &scale, &mut d);
                for (i, &t) in targets.iter().enumerate() {
                    d[i * v + class(t, v, i)?] -= a[i];
                }
                Ok(d)
            })??;
        Ok((Some(Tensor::from_vec(d_logits, (n, v), &Device::Cpu)?), None))
    }
}

/// A target id as a column index, checked against the vocabulary.
fn class(t: u32, v: usize, row: usize) -> Result<usize> {
    let t = t as usize;
    if t >= v {
        candle_core::bail!("cross-entropy: target {t} at row {row} is outside the vocabulary of {v}");
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use ideator_model::device::with_portable_kernels;

    /// Logits spread over about [-40, 40] and targets that include the first and the last class.
    fn inputs(n: usize, v: usize) -> (Var, Tensor) {
        let data: Vec<f32> = (0..n * v).map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.08).collect();
        let logits = Var::from_vec(data, (n, v), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| [0, v - 1, i * 13 % v][i % 3] as u32).collect();
        (logits, Tensor::from_vec(targets, n, &Device::Cpu).unwrap())
    }

    /// Values, and the gradient of `sum(w0 * nll) + sum(w1 * log_z)`, of the op (fused on the CPU, or the composed
    /// form).
    fn run(logits: &Var, targets: &Tensor, portable: bool) -> (Vec<f32>, Vec<f32>) {
        let n = targets.dim(0).unwrap();
        let w: Vec<f32> = (0..2 * n).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1).collect();
        let w = Tensor::from_vec(w, (2, n), &Device::Cpu).unwrap();
        let go = || {
            let out = nll_and_log_z(logits.as_tensor(), targets).unwrap();
            let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&out), flat(grads.get(logits.as_tensor()).unwrap()))
        };
        if portable {
            with_portable_kernels(go)
        } else {
            go()
        }
    }

    #[test]
    fn fused_values_and_gradient_match_the_composed_ops() {
        for (n, v) in [(1, 256), (37, 256), (5, 11), (130, 17)] {
            let (logits, targets) = inputs(n, v);
            let ((out, grad), (want_out, want_grad)) = (run(&logits, &targets, false), run(&logits, &targets, true));
            for (i, (a, b)) in out.iter().zip(&want_out).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{n} x {v}: value {i} is {a}, composed {b}");
            }
            assert!(want_grad.iter().any(|g| g.abs() > 1e-3), "the test's gradient is all but zero");
            for (i, (a, b)) in grad.iter().zip(&want_grad).enumerate() {
                assert!((a - b).abs() <= 1e-5, "{n} x {v}: gradient {i} is {a}, composed {b}");
            }
        }
    }

    #[test]
    fn the_cross_entropy_of_uniform_logits_is_log_vocab() {
        let logits = Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(vec![0u32, 5, 255, 128], 4, &Device::Cpu).unwrap();
        let out = nll_and_log_z(&logits, &targets).unwrap().to_vec2::<f32>().unwrap();
        for v in out.iter().flatten() {
            assert!((v - 256f32.ln()).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn bad_targets_are_errors_that_name_the_problem() {
        let logits = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let outside = Tensor::from_vec(vec![1u32, 8], 2, &Device::Cpu).unwrap();
        let err = nll_and_log_z(&logits, &outside).unwrap_err().to_string();
        assert!(err.contains("target 8 at row 1") && err.contains("vocabulary of 8"), "{err}");
        let short = Tensor::from_vec(vec![1u32], 1, &Device::Cpu).unwrap();
        let err = nll_and_log_z(&logits, &short).unwrap_err().to_string();
        assert!(err.contains("2 rows of logits"), "{err}");
    }
}
