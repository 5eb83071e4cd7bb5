//! LayerNorm and RMSNorm with their gain (and bias) in one fused CPU op, forward and backward.
//!
//! Composed as `normalize(x)`, then `broadcast_mul(weight)`, then `broadcast_add(bias)`, a norm costs two more
//! passes over the activations forward, and backward two more elementwise passes plus a strided column sum for
//! each of the weight's and the bias's gradients (candle's `sum_keepdim` over the rows, one of its slow reductions:
//! `Map1::map` at 3-7% of a `tiny` run's samples, perf, one thread). Here one pass gives `y`, and one pass over
//! `x` and the output gradient gives all of `dx`, `dweight` and `dbias`. Other devices use the composed form.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use ideator_model::device::{kernel_for, Kernel};

use super::fused::{contiguous_f32, normalize, Normalize};

/// `normalize(x) * weight + bias` over the last dimension of `x` (`(..., d)`; `weight` and `bias` `(d)`):
/// LayerNorm when there is a bias (the rows are centred), RMSNorm without one (Ba et al. 2016; Zhang & Sennrich
/// 2019).
pub(crate) fn affine_normalize(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let center = bias.is_some();
    if kernel_for(&[x, weight]) == Kernel::CpuFast {
        let op = AffineNormalize(Normalize { center, eps: eps as f32, d: x.dim(D::Minus1)? });
        let x = x.contiguous()?;
        return match bias {
            Some(b) => x.apply_op3(weight, b, op),
            None => x.apply_op2(weight, op),
        };
    }
    let y = normalize(x, center, eps)?.broadcast_mul(weight)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

struct AffineNormalize(Normalize);

impl AffineNormalize {
    fn forward(&self, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>> {
        let d = self.0.d;
        if weight.len() != d || bias.is_some_and(|b| b.len() != d) || !x.len().is_multiple_of(d) {
            candle_core::bail!("affine normalize: weight or bias of the wrong length for rows of {d}");
        }
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            self.0.normalized(xr, yr);
            yr.iter_mut().zip(weight).for_each(|(o, &w)| *o *= w);
            if let Some(b) = bias {
                yr.iter_mut().zip(b).for_each(|(o, &b)| *o += b);
            }
        }
        Ok(y)
    }

    /// `dx`, `dweight` and `dbias` as one `(rows + 2, d)` tensor (in that order), from `x`, `weight` and the output
    /// gradient `g`.
    fn gradients(&self, x: &Tensor, weight: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let d = self.0.d;
        let rows = x.elem_count() / d;
        let all = x.apply_op3_no_bwd(weight, &g.contiguous()?, &AffineNormalizeGrad(&self.0))?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        Ok((dx, all.narrow(0, rows, 1)?.reshape(d)?, all.narrow(0, rows + 1, 1)?.reshape(d)?))
    }
}

impl CustomOp2 for AffineNormalize {
    fn name(&self) -> &'static str {
        "rms-norm-fused"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp2::name(self);
        let y = self.forward(contiguous_f32(s1, l1, name)?, contiguous_f32(s2, l2, name)?, None)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.gradients(x, w, g)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for AffineNormalize {
    fn name(&self) -> &'static str {
        "layer-norm-fused"
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
        let name = CustomOp3::name(self);
        let (x, w, b) = (contiguous_f32(s1, l1, name)?, contiguous_f32(s2, l2, name)?, contiguous_f32(s3, l3, name)?);
        Ok((CpuStorage::F32(self.forward(x, w, Some(b))?), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.gradients(x, w, g)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// With `xhat = (x - mean) * inv` and `y = xhat * w + b`: `dxhat = g w`, `dx` from it as
/// [`Normalize::input_gradient`] gives it, `dw = sum over rows of g xhat`, `db = sum over rows of g`. Output
/// `(rows + 2, d)`: `dx`, then `dw`, then `db`.
struct AffineNormalizeGrad<'a>(&'a Normalize);

impl CustomOp3 for AffineNormalizeGrad<'_> {
    fn name(&self) -> &'static str {
        "affine-normalize-fused-grad"
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
        let (x, w, g) = (
            contiguous_f32(s1, l1, self.name())?,
            contiguous_f32(s2, l2, self.name())?,
            contiguous_f32(s3, l3, self.name())?,
        );
        let d = self.0.d;
        if x.len() != g.len() || w.len() != d {
            candle_core::bail!("{}: shapes differ", self.name());
        }
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, sums) = out.split_at_mut(rows * d);
        let (dw, db) = sums.split_at_mut(d);
        let (mut xhat, mut dxhat) = (vec![0f32; d], vec![0f32; d]);
        for ((xr, gr), dxr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let inv = self.0.normalized(xr, &mut xhat);
            for j in 0..d {
                dxhat[j] = gr[j] * w[j];
                dw[j] += gr[j] * xhat[j];
                db[j] += gr[j];
            }
            self.0.input_gradient(&xhat, &dxhat, inv, dxr);
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_affine_norms_match_the_composed_ops_and_all_their_gradients() {
        let dev = Device::Cpu;
        let (rows, d) = (7, 24);
        let var = |n: usize, shape: &[usize], f: fn(usize) -> f32| {
            Var::from_vec((0..n).map(f).collect::<Vec<_>>(), shape, &dev).unwrap()
        };
        let x = var(rows * d, &[rows, d], |i| ((i * 7919 % 97) as f32 - 40.0) / 13.0);
        let w = var(d, &[d], |i| 0.5 + (i % 5) as f32 * 0.3);
        let b = var(d, &[d], |i| (i % 3) as f32 * 0.2 - 0.2);
        // A weighting of the output so that every gradient is non-trivial.
        let probe =
            Tensor::from_vec((0..rows * d).map(|i| (i % 11) as f32 - 5.0).collect::<Vec<_>>(), (rows, d), &dev)
                .unwrap();
        for center in [true, false] {
            let bias = center.then(|| b.as_tensor());
            let fused = affine_normalize(x.as_tensor(), w.as_tensor(), bias, 1e-5).unwrap();
            let composed = {
                let y = normalize(x.as_tensor(), center, 1e-5).unwrap().broadcast_mul(w.as_tensor()).unwrap();
                if center {
                    y.broadcast_add(b.as_tensor()).unwrap()
                } else {
                    y
                }
            };
            assert!(max_diff(&fused, &composed) < 1e-5, "center {center}: forward");
            let gf = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let params: Vec<&Var> = if center { vec![&x, &w, &b] } else { vec![&x, &w] };
            for (name, p) in ["x", "weight", "bias"].iter().zip(params) {
                let (a, c) = (gf.get(p).unwrap(), gc.get(p).unwrap());
                let scale = c.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let diff = max_diff(a, c);
                assert!(scale > 0.1 && diff < 1e-4 * scale.max(1.0), "center {center}: d{name} differs by {diff}");
            }
            if !center {
                assert!(gf.get(&b).is_none(), "RMSNorm has no bias");
            }
        }
    }

    #[test]
    fn a_weight_of_the_wrong_length_is_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((3, 8), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::ones(5, candle_core::DType::F32, &dev).unwrap();
        let err = affine_normalize(&x, &w, None, 1e-5).unwrap_err().to_string();
        assert!(err.contains("wrong length"), "{err}");
    }
}
