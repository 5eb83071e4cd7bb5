//! Row norms, RMSNorm and LayerNorm, with their gain (and bias), as fused differentiable CPU ops: one pass forward,
//! one pass backward, rows in fixed blocks over the thread pool. Used by the decoder's trainable forward and by the
//! pretrain environment's GPT.
//!
//! Composed from candle's ops an RMSNorm is about eight graph nodes over the activations (square, mean, add,
//! square root, reciprocal, two broadcast products), and candle's backward gives each node a zeroed gradient
//! buffer plus an add, and sums the gain's gradient with a strided column reduction. In the decoder's training
//! step at two threads these ran on the calling thread while the pool waited (perf, Zen 4). Here `y` is one pass,
//! and one pass over `x` and the output gradient gives all of `dx`, `dweight` and `dbias`.
//!
//! Rows go to the pool in blocks of [`ROWS_PER_TASK`]; the gain's and bias's gradients are summed per block, then
//! over the blocks in order, so the bits do not depend on the thread count. Other devices and dtypes use the
//! composed form, which computes the same function.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu_op::{for_each_chunk_mut, input_slice};
use crate::device::{kernel_for, Kernel};

/// Rows per task on the pool; fixed, so that the per-block gradient sums (and their bits) never depend on it.
const ROWS_PER_TASK: usize = 64;

/// Normalises each row (last dimension) of `x`: `(x - mean) / sqrt(var + eps)` when `center` (LayerNorm without its
/// affine part), `x / sqrt(mean(x^2) + eps)` otherwise (RMSNorm without its gain). Differentiable; same shape.
///
/// # Errors
/// candle's errors from the ops.
pub fn normalize(x: &Tensor, center: bool, eps: f64) -> Result<Tensor> {
    if kernel_for(&[x]) == Kernel::CpuFast {
        let d = x.dim(D::Minus1)?;
        x.contiguous()?.apply_op1(Normalize { center, eps: eps as f32, d })
    } else if center {
        let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + eps)?.sqrt()?)
    } else {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(ms + eps)?.sqrt()?)
    }
}

/// `normalize(x) * weight + bias` over the last dimension of `x` (`(..., d)`; `weight` and `bias` `(d)`):
/// LayerNorm when there is a bias (the rows are centred; Ba et al. 2016), RMSNorm without one (Zhang & Sennrich
/// 2019). Differentiable in all three; same shape as `x`.
///
/// # Errors
/// A weight or bias whose length is not `d`; candle's errors from the ops.
pub fn affine_normalize(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let center = bias.is_some();
    let inputs: Vec<&Tensor> = [Some(x), Some(weight), bias].into_iter().flatten().collect();
    if kernel_for(&inputs) == Kernel::CpuFast {
        let op = AffineNormalize(Normalize { center, eps: eps as f32, d: x.dim(D::Minus1)? });
        let x = x.contiguous()?;
        return match bias {
            Some(b) => x.apply_op3(&weight.contiguous()?, &b.contiguous()?, op),
            None => x.apply_op2(&weight.contiguous()?, op),
        };
    }
    let y = normalize(x, center, eps)?.broadcast_mul(weight)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `sum_i f(a_i, b_i)` over two slices of the same length in 16 partial sums, which the compiler keeps in vector
/// registers (a sequential f32 sum is one dependency chain it may not reorder). Differs from the sequential sum by
/// rounding only.
#[inline(always)]
fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (xa, xb) in ca.zip(cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
            *l += f(x, y);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// One norm's settings: centring (LayerNorm) or not (RMSNorm), `eps`, and the row length `d`.
struct Normalize {
    center: bool,
    eps: f32,
    d: usize,
}

impl Normalize {
    /// The row's mean (0 without centring) and 1 / standard deviation (or 1 / rms).
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = if self.center { sum_pairs(row, row, |v, _| v) / n } else { 0.0 };
        let var = sum_pairs(row, row, |v, _| (v - mean) * (v - mean)) / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    /// Writes the normalised `row`, `xhat = (x - mean) * inv`, into `xhat` and returns `inv`.
    fn normalized(&self, row: &[f32], xhat: &mut [f32]) -> f32 {
        let (mean, inv) = self.stats(row);
        for (o, &v) in xhat.iter_mut().zip(row) {
            *o = (v - mean) * inv;
        }
        inv
    }

    /// One row's input gradient from `dxhat`, the gradient with respect to its normalised values `xhat`:
    /// `dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))` (no `mean(dxhat)` term without centring).
    fn input_gradient(&self, xhat: &[f32], dxhat: &[f32], inv: f32, dx: &mut [f32]) {
        let n = self.d as f32;
        let m1 = if self.center { sum_pairs(dxhat, dxhat, |v, _| v) / n } else { 0.0 };
        let m2 = sum_pairs(dxhat, xhat, |a, b| a * b) / n;
        for ((o, &dy), &y) in dx.iter_mut().zip(dxhat).zip(xhat) {
            *o = inv * (dy - m1 - y * m2);
        }
    }

    fn check_rows(&self, op: &str, x: &[f32]) -> Result<()> {
        if self.d == 0 || !x.len().is_multiple_of(self.d) {
            candle_core::bail!("{op}: {} values are not rows of {}", x.len(), self.d);
        }
        Ok(())
    }

    /// `normalize(x) * weight + bias`, row by row (no weight: the plain normalisation).
    fn forward(&self, op: &str, x: &[f32], weight: Option<&[f32]>, bias: Option<&[f32]>) -> Result<Vec<f32>> {
        self.check_rows(op, x)?;
        let d = self.d;
        if weight.is_some_and(|w| w.len() != d) || bias.is_some_and(|b| b.len() != d) {
            candle_core::bail!("{op}: weight or bias of the wrong length for rows of {d}");
        }
        let mut y = vec![0f32; x.len()];
        for_each_chunk_mut(&mut y, ROWS_PER_TASK * d, |block, out| {
            let x = &x[block * ROWS_PER_TASK * d..][..out.len()];
            for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                self.normalized(xr, yr);
                if let Some(w) = weight {
                    yr.iter_mut().zip(w).for_each(|(o, &w)| *o *= w);
                }
                if let Some(b) = bias {
                    yr.iter_mut().zip(b).for_each(|(o, &b)| *o += b);
                }
            }
        });
        Ok(y)
    }
}

impl CustomOp1 for Normalize {
    fn name(&self) -> &'static str {
        "normalize-fused"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input_slice(self.name(), storage, layout)?;
        Ok((CpuStorage::F32(self.forward(self.name(), x, None, None)?), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = NormalizeGrad(Normalize { center: self.center, eps: self.eps, d: self.d });
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &op)?))
    }
}

/// With `y = (x - mean) * inv`: `dx = inv * (g - mean(g) - y * mean(g * y))` (no `mean(g)` term without centring).
struct NormalizeGrad(Normalize);

impl CustomOp2 for NormalizeGrad {
    fn name(&self) -> &'static str {
        "normalize-fused-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input_slice(self.name(), s1, l1)?;
        let g = input_slice(self.name(), s2, l2)?;
        if x.len() != g.len() {
            candle_core::bail!("{}: shapes differ", self.name());
        }
        self.0.check_rows(self.name(), x)?;
        let d = self.0.d;
        let mut out = vec![0f32; x.len()];
        for_each_chunk_mut(&mut out, ROWS_PER_TASK * d, |block, out| {
            let at = block * ROWS_PER_TASK * d..block * ROWS_PER_TASK * d + out.len();
            let mut xhat = vec![0f32; d];
            for ((xr, gr), or) in
                x[at.clone()].chunks_exact(d).zip(g[at].chunks_exact(d)).zip(out.chunks_exact_mut(d))
            {
                let inv = self.0.normalized(xr, &mut xhat);
                self.0.input_gradient(&xhat, gr, inv, or);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct AffineNormalize(Normalize);

impl AffineNormalize {
    /// `dx`, `dweight` and `dbias` from `x`, `weight` and the output gradient `g`.
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
        let (x, w) = (input_slice(name, s1, l1)?, input_slice(name, s2, l2)?);
        Ok((CpuStorage::F32(self.0.forward(name, x, Some(w), None)?), l1.shape().clone()))
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
        let (x, w, b) = (input_slice(name, s1, l1)?, input_slice(name, s2, l2)?, input_slice(name, s3, l3)?);
        Ok((CpuStorage::F32(self.0.forward(name, x, Some(w), Some(b))?), l1.shape().clone()))
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

impl AffineNormalizeGrad<'_> {
    /// One block's `dx` rows, and its partial `dw` and `db` (`2 d` values) added into `sums`.
    fn block(&self, (x, w, g): (&[f32], &[f32], &[f32]), dx: &mut [f32], sums: &mut [f32]) {
        let d = self.0.d;
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
    }
}

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
        let (x, w, g) =
            (input_slice(self.name(), s1, l1)?, input_slice(self.name(), s2, l2)?, input_slice(self.name(), s3, l3)?);
        let d = self.0.d;
        self.0.check_rows(self.name(), x)?;
        if x.len() != g.len() || w.len() != d {
            candle_core::bail!("{}: shapes differ", self.name());
        }
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, sums) = out.split_at_mut(rows * d);
        let mut partial = vec![0f32; rows.div_ceil(ROWS_PER_TASK) * 2 * d];
        let size = ROWS_PER_TASK * d;
        let task = |(i, (dx, sums)): (usize, (&mut [f32], &mut [f32]))| {
            let at = i * size..i * size + dx.len();
            self.block((&x[at.clone()], w, &g[at]), dx, sums);
        };
        if rayon::current_num_threads() > 1 {
            dx.par_chunks_mut(size).zip(partial.par_chunks_mut(2 * d)).enumerate().for_each(task);
        } else {
            dx.chunks_mut(size).zip(partial.chunks_mut(2 * d)).enumerate().for_each(task);
        }
        // The blocks' sums in block order: the same bits at any thread count.
        for block in partial.chunks_exact(2 * d) {
            sums.iter_mut().zip(block).for_each(|(s, &p)| *s += p);
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let b = b.to_dtype(a.dtype()).unwrap();
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn max_abs(a: &Tensor) -> f32 {
        a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn composed_normalize(x: &Tensor, center: bool) -> Tensor {
        let xc = if center { x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap() } else { x.clone() };
        let ms = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        xc.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap()
    }

    #[test]
    fn sum_pairs_equals_the_sum_up_to_rounding() {
        for n in [0, 1, 15, 16, 17, 100, 1001] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7919 % 97) as f32 - 40.0) / 13.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let got = sum_pairs(&a, &b, |x, y| x * y) as f64;
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "n {n}: {got}, want {want}");
        }
    }

    /// The plain norm (no gain: the pretrain environment's q/k norm) on one short block and on several blocks with a
    /// ragged last one, at 1 and 2 threads, from an input that starts inside a larger buffer (a row slice).
    #[test]
    fn fused_normalize_matches_the_composed_one_and_its_gradient() {
        let dev = Device::Cpu;
        for (rows, d) in [(6, 16), (2 * ROWS_PER_TASK + 3, 20)] {
            let all = rows + 2;
            let data: Vec<f32> = (0..all * d).map(|i| ((i * 7919 % 97) as f32 - 40.0) / 13.0).collect();
            let x_all = Var::from_vec(data, (all, d), &dev).unwrap();
            let x = x_all.as_tensor().narrow(0, 2, rows).unwrap();
            let w =
                Tensor::from_vec((0..rows * d).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(), (rows, d), &dev)
                    .unwrap();
            for center in [true, false] {
                let composed = composed_normalize(&x, center);
                let gc = (&composed * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let want = gc.get(&x_all).unwrap();
                let mut bits = Vec::new();
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let (fused, gf) = pool.install(|| {
                        let fused = normalize(&x, center, 1e-5).unwrap();
                        let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
                        (fused, gf)
                    });
                    let what = format!("{rows} rows, center {center}, {threads} threads");
                    assert!(max_diff(&fused, &composed) < 1e-5, "{what}: forward");
                    let got = gf.get(&x_all).unwrap();
                    let diff = max_diff(got, want);
                    assert!(max_abs(want) > 0.1 && diff < 1e-4, "{what}: gradient differs by {diff}");
                    bits.push(
                        got.flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                    );
                }
                assert_eq!(bits[0], bits[1], "{rows} rows, center {center}: gradient bits at 1 and 2 threads");
            }
        }
    }

    /// The fused norms against the composed ops, values and every gradient, on `rows` rows of `d` (more rows than
    /// one block: several blocks and a ragged last one), at 1 and 2 threads; returns the fused results' bits per
    /// thread count.
    fn check_affine(rows: usize, d: usize) -> Vec<Vec<Vec<u32>>> {
        let dev = Device::Cpu;
        let var = |n: usize, shape: &[usize], f: &dyn Fn(usize) -> f32| {
            Var::from_vec((0..n).map(f).collect::<Vec<_>>(), shape, &dev).unwrap()
        };
        let x = var(rows * d, &[rows, d], &|i| ((i * 7919 % 97) as f32 - 40.0) / 13.0);
        let w = var(d, &[d], &|i| 0.5 + (i % 5) as f32 * 0.3);
        let b = var(d, &[d], &|i| (i % 3) as f32 * 0.2 - 0.2);
        // A weighting of the output so that every gradient is non-trivial.
        let probe =
            Tensor::from_vec((0..rows * d).map(|i| (i % 11) as f32 - 5.0).collect::<Vec<_>>(), (rows, d), &dev)
                .unwrap();
        let mut bits = Vec::new();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut run_bits = Vec::new();
            for center in [true, false] {
                let bias = center.then(|| b.as_tensor());
                let fused = pool.install(|| affine_normalize(x.as_tensor(), w.as_tensor(), bias, 1e-5).unwrap());
                let composed = {
                    let y = composed_normalize(x.as_tensor(), center).broadcast_mul(w.as_tensor()).unwrap();
                    if center {
                        y.broadcast_add(b.as_tensor()).unwrap()
                    } else {
                        y
                    }
                };
                assert!(max_diff(&fused, &composed) < 1e-5, "center {center}: forward");
                let gf = pool.install(|| (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap());
                let gc = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let params: Vec<&Var> = if center { vec![&x, &w, &b] } else { vec![&x, &w] };
                run_bits.push(
                    fused.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect(),
                );
                for (name, p) in ["x", "weight", "bias"].iter().zip(params) {
                    let (a, c) = (gf.get(p).unwrap(), gc.get(p).unwrap());
                    let (scale, diff) = (max_abs(c), max_diff(a, c));
                    assert!(
                        scale > 0.1 && diff < 1e-4 * scale.max(1.0),
                        "center {center}: d{name} differs by {diff}"
                    );
                    run_bits.push(
                        a.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect(),
                    );
                }
                if !center {
                    assert!(gf.get(&b).is_none(), "RMSNorm has no bias");
                }
            }
            bits.push(run_bits);
        }
        bits
    }

    #[test]
    fn fused_affine_norms_match_the_composed_ops_and_all_their_gradients() {
        check_affine(7, 24);
    }

    #[test]
    fn several_blocks_give_the_same_bits_at_one_and_two_threads() {
        let rows = 2 * ROWS_PER_TASK + 5;
        let bits = check_affine(rows, 40);
        assert_eq!(bits[0], bits[1], "values and gradients at 1 and 2 threads");
    }

    #[test]
    fn a_weight_of_the_wrong_length_is_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        let w = Tensor::ones(5, DType::F32, &dev).unwrap();
        let err = affine_normalize(&x, &w, None, 1e-5).unwrap_err().to_string();
        assert!(err.contains("wrong length"), "{err}");
    }

    #[test]
    fn composed_forms_match_the_fused_kernels() {
        // f64 inputs do not take the fused kernels: the composed forms (the GPU's path) compute the same function.
        let data: Vec<f32> = (0..2 * 6 * 6).map(|i| ((i * 7919 % 97) as f32 - 48.0) / 9.0).collect();
        let x = Tensor::from_vec(data, (2, 6, 6), &Device::Cpu).unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let w = Tensor::from_vec((0..6).map(|i| 0.5 + i as f32 * 0.25).collect::<Vec<_>>(), 6, &Device::Cpu).unwrap();
        let w64 = w.to_dtype(DType::F64).unwrap();
        for center in [true, false] {
            assert!(max_diff(&normalize(&x, center, 1e-5).unwrap(), &normalize(&x64, center, 1e-5).unwrap()) < 1e-5);
            let bias = center.then(|| w.clone());
            let bias64 = center.then(|| w64.clone());
            let fused = affine_normalize(&x, &w, bias.as_ref(), 1e-5).unwrap();
            let composed = affine_normalize(&x64, &w64, bias64.as_ref(), 1e-5).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5, "center {center}");
        }
    }
}
