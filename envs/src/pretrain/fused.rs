//! Fused CPU kernels (with backward) for the element-wise hot spots of a small model's training step.
//!
//! Composed from candle's elementary ops, GELU costs seven passes over the MLP activations forward and more
//! backward, and its `tanh` goes through a slow scalar libm call; at `tiny` scale that was a quarter of the step.
//! Here it is one pass forward and one backward (the norms are the model crate's fused ops, `ideator_model::norm`;
//! attention its blocked kernel: `gpt.rs`; the MLP `mlp.rs`; the loss head `cross_entropy.rs`). Other devices
//! (CUDA) use the composed form, which computes the same function.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use ideator_model::device::{kernel_for, Kernel};

use super::lanes::{C, K};

/// GELU with the tanh approximation (GPT-2's), written as `x * sigmoid(2k (x + c x^3))`, which equals
/// `0.5 x (1 + tanh(k (x + c x^3)))` and needs one `exp` per element instead of a `tanh`.
pub(crate) fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if kernel_for(&[x]) == Kernel::CpuFast {
        x.contiguous()?.apply_op1(GeluTanh)
    } else {
        let cube = (x.sqr()? * x)?;
        let z = (x + cube.affine(C as f64, 0.0)?)?.affine(2.0 * K as f64, 0.0)?;
        x * candle_nn::ops::sigmoid(&z)?
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{op} supports f32 only") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op} needs a contiguous input") };
    Ok(&data[start..end])
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh-fused"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let mut y = vec![0f32; x.len()];
        super::lanes::gelu(x, &mut y);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluTanhGrad)?))
    }
}

/// `grad * d/dx [x s(z)] = grad * (s + x s (1 - s) 2k (1 + 3c x^2))` with `s = sigmoid(z)`, `z = 2k (x + c x^3)`.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-fused-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let g = contiguous_f32(s2, l2, self.name())?;
        if x.len() != g.len() {
            candle_core::bail!("{}: shapes differ", self.name());
        }
        let mut out = vec![0f32; x.len()];
        super::lanes::gelu_grad(x, g, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_gelu_matches_candle_gelu_and_its_gradient() {
        let data: Vec<f32> = (0..2001).map(|i| (i as f32 - 1000.0) / 100.0).collect();
        let x = Var::from_vec(data, 2001, &Device::Cpu).unwrap();
        let fused = gelu_tanh(x.as_tensor()).unwrap();
        let reference = x.as_tensor().gelu().unwrap();
        let diff = (&fused - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "forward differs by {diff}");
        let g_fused = fused.sum_all().unwrap().backward().unwrap();
        let g_ref = reference.sum_all().unwrap().backward().unwrap();
        let (a, b) = (g_fused.get(&x).unwrap(), g_ref.get(&x).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "gradient differs by {diff}");
    }
}

#[cfg(test)]
mod fallback_tests {
    //! The composed forms (used on GPUs) compute the same functions as the fused CPU kernels. On the CPU they are
    //! reached with f64 inputs, which the fused kernels do not take.
    use super::*;
    use candle_core::{DType, Device};

    fn max_diff(fused: &Tensor, composed: &Tensor) -> f32 {
        let composed = composed.to_dtype(DType::F32).unwrap();
        (fused - composed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn composed_forms_match_the_fused_kernels() {
        let (b, t) = (2usize, 6usize);
        let data: Vec<f32> = (0..b * t * t).map(|i| ((i * 7919 % 97) as f32 - 48.0) / 9.0).collect();
        let x = Tensor::from_vec(data, (b, t, t), &Device::Cpu).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert!(max_diff(&gelu_tanh(&x).unwrap(), &gelu_tanh(&x64).unwrap()) < 1e-5);
    }
}
