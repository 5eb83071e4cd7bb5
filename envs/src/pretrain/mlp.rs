//! The GELU MLP of a GPT block, `gelu(x W_up) W_down`, as one CPU op with its own backward.
//!
//! Composed from two matmuls and the fused GELU, candle's backward gives each of the two `(tokens x hidden)`
//! intermediates a fresh zero-filled gradient slot and adds the incoming gradient into it (`GradStore::or_insert`
//! then `add`): two extra passes over 4x-width buffers per intermediate, the largest in the step. This op runs the
//! same gemm products (the same shapes and strides as candle's `matmul` and its backward, so the same rounding)
//! and GELU kernels, keeps the two intermediates itself for the backward (as autograd kept them), and hands candle
//! only the gradients of its three inputs. Other devices use the composed ops, which compute the same function.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use ideator_model::device::{kernel_for, Kernel};
use ideator_model::gemm_product;

use super::{fused, lanes};

/// `gelu_tanh(x W_up) W_down`: `x` is `(tokens, d)`, `w_up` `(d, hidden)`, `w_down` `(hidden, d)`; the result is
/// `(tokens, d)`. Differentiable in all three.
///
/// # Errors
/// Shapes that do not chain, or a failing candle op.
pub(crate) fn mlp_gelu(x: &Tensor, w_up: &Tensor, w_down: &Tensor) -> Result<Tensor> {
    if kernel_for(&[x, w_up, w_down]) == Kernel::CpuFast {
        x.contiguous()?.apply_op3(&w_up.contiguous()?, &w_down.contiguous()?, MlpGelu::default())
    } else {
        fused::gelu_tanh(&x.matmul(w_up)?)?.matmul(w_down)
    }
}

/// The forward's intermediates, `(tokens, hidden)` each, kept for the backward.
struct Saved {
    up: Vec<f32>,
    hidden: Vec<f32>,
}

/// One application of the op: candle keeps this value in the graph, so what the forward saves here is what the
/// backward of the same node reads (and it is freed with the graph).
#[derive(Default)]
struct MlpGelu {
    saved: OnceLock<Saved>,
}

/// `(tokens, d, hidden)` of the three inputs, checked to chain.
fn dims(x: &Layout, w_up: &Layout, w_down: &Layout) -> Result<(usize, usize, usize)> {
    let (n, d) = x.shape().dims2()?;
    let (d_up, h) = w_up.shape().dims2()?;
    let (h_down, d_down) = w_down.shape().dims2()?;
    if d_up != d || h_down != h || d_down != d {
        candle_core::bail!(
            "mlp-gelu: x {:?}, w_up {:?} and w_down {:?} do not chain",
            x.shape(),
            w_up.shape(),
            w_down.shape()
        );
    }
    Ok((n, d, h))
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("mlp-gelu supports f32 only") };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("mlp-gelu needs contiguous inputs")
    };
    Ok(&data[start..end])
}

impl CustomOp3 for MlpGelu {
    fn name(&self) -> &'static str {
        "mlp-gelu-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d, h) = dims(l1, l2, l3)?;
        let (x, w_up, w_down) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let threads = candle_core::utils::get_num_threads();
        let mut up = vec![0f32; n * h];
        gemm_product((n, h, d), &mut up, h, false, (x, d, 1), (w_up, h, 1), 1.0, threads);
        let mut hidden = vec![0f32; n * h];
        lanes::gelu(&up, &mut hidden);
        let mut y = vec![0f32; n * d];
        gemm_product((n, d, h), &mut y, d, false, (&hidden, h, 1), (w_down, d, 1), 1.0, threads);
        if self.saved.set(Saved { up, hidden }).is_err() {
            candle_core::bail!("mlp-gelu: one op value applied twice");
        }
        Ok((CpuStorage::F32(y), Shape::from((n, d))))
    }

    /// With `u = x W_up`, `a = gelu(u)` and the output's gradient `g`: `dW_down = a^T g`, `da = g W_down^T`,
    /// `du = gelu'(u) da`, `dx = du W_up^T`, `dW_up = x^T du`; each product as candle's `matmul` backward takes it.
    fn bwd(
        &self,
        x: &Tensor,
        w_up: &Tensor,
        w_down: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(Saved { up, hidden }) = self.saved.get() else {
            candle_core::bail!("mlp-gelu: backward without a forward");
        };
        let (n, d) = x.dims2()?;
        let h = w_up.dim(1)?;
        let g = grad_res.contiguous()?;
        let threads = candle_core::utils::get_num_threads();
        let (dx, dw_up, dw_down) = ideator_model::with_f32_slices([x, w_up, w_down, &g], |[x, w_up, w_down, g]| {
            let mut dw_down = vec![0f32; h * d];
            gemm_product((h, d, n), &mut dw_down, d, false, (hidden, 1, h), (g, d, 1), 1.0, threads);
            let mut d_hidden = vec![0f32; n * h];
            gemm_product((n, h, d), &mut d_hidden, h, false, (g, d, 1), (w_down, 1, d), 1.0, threads);
            let mut d_up = vec![0f32; n * h];
            lanes::gelu_grad(up, &d_hidden, &mut d_up);
            let mut dx = vec![0f32; n * d];
            gemm_product((n, d, h), &mut dx, d, false, (&d_up, h, 1), (w_up, 1, h), 1.0, threads);
            let mut dw_up = vec![0f32; d * h];
            gemm_product((d, h, n), &mut dw_up, h, false, (x, 1, d), (&d_up, h, 1), 1.0, threads);
            (dx, dw_up, dw_down)
        })?;
        let dev = Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dx, (n, d), &dev)?),
            Some(Tensor::from_vec(dw_up, (d, h), &dev)?),
            Some(Tensor::from_vec(dw_down, (h, d), &dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn values(n: usize, scale: f32, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 211) as f32 - 105.0) * scale).collect()
    }

    /// The fused op gives the composed form's output and the gradients of all three inputs bit for bit (the same
    /// gemm products and GELU kernels; candle's zero-then-add of each gradient changes no bit), at ragged shapes.
    #[test]
    fn fused_mlp_equals_the_composed_ops_bit_for_bit() {
        let dev = Device::Cpu;
        for (n, d, h) in [(1, 4, 16), (37, 24, 96), (130, 32, 128)] {
            let x = Var::from_vec(values(n * d, 0.01, 1), (n, d), &dev).unwrap();
            let w_up = Var::from_vec(values(d * h, 0.003, 2), (d, h), &dev).unwrap();
            let w_down = Var::from_vec(values(h * d, 0.002, 3), (h, d), &dev).unwrap();
            let weights = Tensor::from_vec(values(n * d, 0.5, 4), (n, d), &dev).unwrap();
            let run = |fused_op: bool| {
                let (xt, ut, wt) = (x.as_tensor(), w_up.as_tensor(), w_down.as_tensor());
                let y = if fused_op {
                    mlp_gelu(xt, ut, wt).unwrap()
                } else {
                    fused::gelu_tanh(&xt.matmul(ut).unwrap()).unwrap().matmul(wt).unwrap()
                };
                let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let g = |v: &Var| flat(grads.get(v.as_tensor()).expect("a gradient"));
                (flat(&y), g(&x), g(&w_up), g(&w_down))
            };
            let (fused_run, composed_run) = (run(true), run(false));
            assert!(composed_run.1.iter().any(|v| *v != 0.0), "the test's gradients are all zero");
            assert_eq!(fused_run.0, composed_run.0, "output at {n} x {d} x {h}");
            assert_eq!(fused_run.1, composed_run.1, "dx at {n} x {d} x {h}");
            assert_eq!(fused_run.2, composed_run.2, "dW_up at {n} x {d} x {h}");
            assert_eq!(fused_run.3, composed_run.3, "dW_down at {n} x {d} x {h}");
        }
    }

    #[test]
    fn shapes_that_do_not_chain_are_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
        let w_up = Tensor::zeros((4, 8), candle_core::DType::F32, &dev).unwrap();
        let w_down = Tensor::zeros((7, 4), candle_core::DType::F32, &dev).unwrap();
        let err = mlp_gelu(&x, &w_up, &w_down).unwrap_err().to_string();
        assert!(err.contains("do not chain"), "{err}");
    }
}
