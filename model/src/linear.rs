//! A linear layer `y = x W^T + b` with an optional LoRA adapter `+ s * dropout(x) A^T B^T`.
//!
//! The base weight stays a plain tensor when only the adapter trains (candle then tracks no gradient for it);
//! full fine-tuning turns it into a `Var` instead.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cpu_op::{input_slice, product, with_f32_slice};
use crate::decode_copy::DecodeCopy;
use crate::device::{kernel_for, Kernel, Precision};
use crate::Result;

/// Up to this many input rows, `W x^T` is computed instead of `x W^T`: candle's
/// gemm packs its right operand, which for few rows means copying the whole weight matrix on every call. A bf16
/// decode copy takes as many rows in its few-rows kernel (decode_copy.rs); more (a prompt's prefill) go to gemm.
pub(crate) const FEW_ROWS: usize = 64;

/// A low-rank adapter: `A` is (rank, in), `B` is (out, rank); `B` starts at zero so a fresh adapter is a no-op.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    /// alpha / rank.
    pub scale: f64,
    pub dropout: f32,
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// The copy of `weight` that detached decoding reads (decode_copy.rs): packed f32, or the bf16 sampling copy
    /// (`Decoder::set_sampling_precision`).
    pub(crate) decode_copy: DecodeCopy,
}

/// Per-forward switches for adapters.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdapterMode {
    /// Apply LoRA adapters (false gives the base model, which is the KL reference for LoRA training).
    pub enabled: bool,
    /// Seed for LoRA dropout masks; `None` disables dropout (evaluation, sampling, reference).
    pub dropout_seed: Option<u64>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, lora: None, decode_copy: DecodeCopy::default() }
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `x` has any leading shape and `in` as its last dimension.
    pub fn forward(&self, x: &Tensor, mode: AdapterMode, layer_salt: u64) -> Result<Tensor> {
        self.apply(x, mode, layer_salt, false)
    }

    /// The same for callers that never need a gradient (decoding): decode-shaped f32 inputs on the CPU (the row
    /// counts of `kernel_choice::active`: 1 to `few_rows::MAX_ROWS`, or `kernel_choice::AMX_XEON_MAX_ROWS` on
    /// Intel cores with AMX, unless calibrated) go through the few-rows kernel, which streams the weight once for all
    /// the rows and records no graph, from the decode copy when it takes the rows (decode_copy.rs: packed tiles, or
    /// the bf16 sampling copy, whose prefill goes through gemm with the copy widened to f32: the same weights either
    /// way).
    pub(crate) fn forward_detached(&self, x: &Tensor, mode: AdapterMode) -> Result<Tensor> {
        self.apply(x, mode, 0, true)
    }

    fn apply(&self, x: &Tensor, mode: AdapterMode, layer_salt: u64, detached: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has at least one dimension");
        let rows = x.elem_count() / in_dim;
        let x2 = x.reshape((rows, in_dim))?;
        let frozen_in_training = !self.weight.is_variable() && x2.track_op();
        let f32_on_cpu = kernel_for(&[&x2, &self.weight]) == Kernel::CpuFast;
        if let (Some(lora), true, false, true) = (&self.lora, mode.enabled, detached, f32_on_cpu) {
            if !self.weight.is_variable() && (lora.dropout == 0.0 || mode.dropout_seed.is_none()) {
                let op = LoraMatmul { weight: self.weight.clone(), scale: lora.scale as f32 };
                let y = x2.contiguous()?.apply_op3(lora.a.as_tensor(), lora.b.as_tensor(), op)?;
                return self.finish(y, dims);
            }
        }
        let from_copy = if detached { self.decode_copy.product(&self.weight, &x2)? } else { None };
        let mut y = if let Some(y) = from_copy {
            y
        } else if detached && crate::few_rows::applies(&x2, &self.weight) {
            crate::few_rows::matmul_t(&x2.contiguous()?, &self.weight)?
        } else if frozen_in_training && f32_on_cpu {
            x2.contiguous()?.apply_op1(FrozenMatmul { weight: self.weight.clone() })?
        } else if !detached && self.weight.is_variable() && f32_on_cpu {
            x2.contiguous()?.apply_op2(&self.weight, TrainedMatmul)?
        } else if rows <= FEW_ROWS {
            // Decode-shaped: W x^T streams the weight once without packing it (measured ~2x faster at 8 rows).
            self.weight.matmul(&x2.t()?)?.t()?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        if let (Some(lora), true) = (&self.lora, mode.enabled) {
            let xin = match mode.dropout_seed {
                Some(seed) if lora.dropout > 0.0 => dropout(&x2, lora.dropout, seed ^ layer_salt)?,
                _ => x2,
            };
            let low = xin.matmul(&lora.a.as_tensor().t()?)?;
            let up = low.matmul(&lora.b.as_tensor().t()?)?;
            y = (y + (up * lora.scale)?)?;
        }
        self.finish(y, dims)
    }

    /// Adds the bias to `y` (rows, out) and gives it the input's leading dimensions `dims`.
    fn finish(&self, mut y: Tensor, mut dims: Vec<usize>) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        *dims.last_mut().unwrap() = self.out_dim();
        Ok(y.reshape(dims)?)
    }

    /// Drops the decode copy; the next detached product rebuilds it from the weight as it is then, in `precision`.
    pub(crate) fn reset_decode_copy(&mut self, precision: Precision) {
        self.decode_copy = DecodeCopy::new(precision);
    }

    /// The effective weight `W + s B A` (for merging adapters into a plain model).
    pub(crate) fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => Ok((&self.weight + (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?)?),
        }
    }
}

/// Inverted dropout with a mask drawn from our own seeded RNG: candle's CPU RNG cannot be seeded, and exact
/// resume needs every random draw to be reproducible.
fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 - p;
    let mask: Vec<f32> =
        (0..x.elem_count()).map(|_| if rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// Sum of squares of a tensor, as f64 (used for norms in tests and diagnostics).
pub fn sum_sq(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.sqr()?.flatten_all()?.sum(D::Minus1)?.to_scalar::<f64>()?)
}

/// `x W^T` for a frozen `W` (LoRA training): the backward returns only `dL/dx = g W`. candle's own matmul
/// backward would also compute `x^T g` for the weight — as much work as the forward — and nobody needs it.
struct FrozenMatmul {
    /// (out, in).
    weight: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::cpu_op::input_tensor(self.name(), storage, layout)?;
        crate::cpu_op::output_storage(&x.matmul(&self.weight.t()?)?)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x W^T` for a trained `W` (out, in) (full fine-tuning), as one op on (rows, in) inputs. Composed, `W^T` is a
/// graph node of its own: candle's backward fills an (in, out) zero tensor for it, adds the product's weight
/// gradient into it, then adds its transpose (a strided, scalar add) into a second zero-filled (out, in) tensor for
/// `W`, all on the calling thread, for each of a layer's seven projections. Here the backward writes `dW = g^T x`
/// in `W`'s own layout, and `dx = g W`, each one gemm over the pool.
struct TrainedMatmul;

impl CustomOp2 for TrainedMatmul {
    fn name(&self) -> &'static str {
        "trained-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((rows, inp), (out, w_in)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        if w_in != inp {
            candle_core::bail!("trained-matmul: x {:?} and W {:?} do not fit together", xl.shape(), wl.shape());
        }
        let (x, w) = (input_slice(self.name(), xs, xl)?, input_slice(self.name(), ws, wl)?);
        let mut y = vec![0f32; rows * out];
        product((rows, out, inp), &mut y, out, false, (x, inp, 1), (w, 1, inp), 1.0, rayon::current_num_threads());
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let ((rows, inp), (out, _)) = (x.dims2()?, w.dims2()?);
        let (g, threads) = (g.contiguous()?, rayon::current_num_threads());
        let (mut dx, mut dw) = (vec![0f32; rows * inp], vec![0f32; out * inp]);
        with_f32_slice(&g, |g| {
            with_f32_slice(w, |w| {
                product((rows, inp, out), &mut dx, inp, false, (g, out, 1), (w, inp, 1), 1.0, threads)
            })?;
            with_f32_slice(x, |x| {
                product((out, inp, rows), &mut dw, inp, false, (g, 1, out), (x, inp, 1), 1.0, threads)
            })
        })??;
        let dev = Device::Cpu;
        Ok((Some(Tensor::from_vec(dx, (rows, inp), &dev)?), Some(Tensor::from_vec(dw, (out, inp), &dev)?)))
    }
}

/// `x W^T + s (x A^T) B^T` for a frozen `W` (out, in) and a LoRA adapter `A` (rank, in), `B` (out, rank), as one
/// op on (rows, in) inputs. Composed, the adapter adds three (rows, out) nodes to the graph (`B`'s product, the
/// scaling, the sum), and candle's backward fills a zero tensor and adds into it for every node it reaches: seven
/// adapted projections per layer made that 4-8% of a warm-up step (measured side by side). The backward (Hu et
/// al. 2021, LoRA, with `low = x A^T` recomputed): `dB = s g^T low`, `dlow = s g B`, `dA = dlow^T x`,
/// `dx = g W + dlow A`.
struct LoraMatmul {
    weight: Tensor,
    scale: f32,
}

impl LoraMatmul {
    /// `low = x A^T` (rows, rank).
    fn low(x: &[f32], a: &[f32], (rows, inp, rank): (usize, usize, usize), threads: usize) -> Vec<f32> {
        let mut low = vec![0f32; rows * rank];
        product((rows, rank, inp), &mut low, rank, false, (x, inp, 1), (a, 1, inp), 1.0, threads);
        low
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "lora-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ((rows, inp), (rank, a_in), (out, b_rank)) =
            (xl.shape().dims2()?, al.shape().dims2()?, bl.shape().dims2()?);
        if a_in != inp || b_rank != rank || self.weight.dims() != [out, inp] {
            candle_core::bail!(
                "lora-matmul: x {:?}, A {:?}, B {:?} and W {:?} do not fit together",
                xl.shape(),
                al.shape(),
                bl.shape(),
                self.weight.shape()
            );
        }
        let (x, a, b) = (
            input_slice(self.name(), xs, xl)?,
            input_slice(self.name(), a_s, al)?,
            input_slice(self.name(), bs, bl)?,
        );
        let threads = rayon::current_num_threads();
        let mut y = vec![0f32; rows * out];
        with_f32_slice(&self.weight, |w| {
            product((rows, out, inp), &mut y, out, false, (x, inp, 1), (w, 1, inp), 1.0, threads)
        })?;
        let low = Self::low(x, a, (rows, inp, rank), threads);
        product((rows, out, rank), &mut y, out, true, (&low, rank, 1), (b, 1, rank), self.scale, threads);
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((rows, inp), (rank, _), (out, _)) = (x.dims2()?, a.dims2()?, b.dims2()?);
        let flat = |t: &Tensor| t.detach().contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (x, av, bv, g) = (flat(x)?, flat(a)?, flat(b)?, flat(g)?);
        let (s, threads) = (self.scale, rayon::current_num_threads());
        let low = Self::low(&x, &av, (rows, inp, rank), threads);
        let mut db = vec![0f32; out * rank];
        product((out, rank, rows), &mut db, rank, false, (&g, 1, out), (&low, rank, 1), s, threads);
        let mut dlow = vec![0f32; rows * rank];
        product((rows, rank, out), &mut dlow, rank, false, (&g, out, 1), (&bv, rank, 1), s, threads);
        let mut da = vec![0f32; rank * inp];
        product((rank, inp, rows), &mut da, inp, false, (&dlow, 1, rank), (&x, inp, 1), 1.0, threads);
        let mut dx = vec![0f32; rows * inp];
        with_f32_slice(&self.weight, |w| {
            product((rows, inp, out), &mut dx, inp, false, (&g, out, 1), (w, inp, 1), 1.0, threads)
        })?;
        product((rows, inp, rank), &mut dx, inp, true, (&dlow, rank, 1), (&av, inp, 1), 1.0, threads);
        let dev = Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dx, (rows, inp), &dev)?),
            Some(Tensor::from_vec(da, (rank, inp), &dev)?),
            Some(Tensor::from_vec(db, (out, rank), &dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn frozen_weights_give_the_input_gradient_of_a_plain_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 7, &dev).unwrap();
        let lin = Linear::new(w.clone(), Some(bias.clone()));
        // More rows than FEW_ROWS, and a leading batch dimension.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 40, 5), &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 40, 7), &dev).unwrap();
        let run = |y: Tensor| {
            let dx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&y), flat(dx.get(x.as_tensor()).unwrap()))
        };
        let frozen = run(lin.forward(x.as_tensor(), AdapterMode::default(), 0).unwrap());
        let plain = run(x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap());
        for (a, b) in frozen.0.iter().zip(&plain.0).chain(frozen.1.iter().zip(&plain.1)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "frozen {a} vs plain {b}");
        }
    }

    #[test]
    fn trained_weights_give_the_values_and_both_gradients_of_a_plain_matmul() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap()).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 7, &dev).unwrap();
        let lin = Linear::new(w.as_tensor().clone(), Some(bias.clone()));
        // Few and many rows (more than FEW_ROWS), and a leading batch dimension.
        for rows in [3, 70] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, rows, 5), &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, (2, rows, 7), &dev).unwrap();
            let run = |y: Tensor| {
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                [flat(&y), flat(grads.get(x.as_tensor()).unwrap()), flat(grads.get(w.as_tensor()).unwrap())]
            };
            let plain = run(x
                .as_tensor()
                .broadcast_matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap());
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let fused = pool.install(|| run(lin.forward(x.as_tensor(), AdapterMode::default(), 0).unwrap()));
                for (what, (f, p)) in ["y", "dx", "dW"].iter().zip(fused.iter().zip(&plain)) {
                    assert_eq!(f.len(), p.len());
                    for (a, b) in f.iter().zip(p) {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "{what}, {rows} rows, {threads} threads: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_lora_gives_the_values_and_gradients_of_the_composed_adapter() {
        let dev = Device::Cpu;
        let (inp, out, rank, scale) = (24, 10, 4, 2.5);
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.3, (rank, inp), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, (out, rank), &dev).unwrap()).unwrap();
        let mut lin = Linear::new(w.clone(), None);
        lin.lora = Some(LoraAdapter { a: a.clone(), b: b.clone(), scale, dropout: 0.0 });
        let mode = AdapterMode { enabled: true, dropout_seed: None };
        for shape in [(1, 3, inp), (2, 70, inp)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap();
            let g = Tensor::randn(0f32, 1.0, (shape.0, shape.1, out), &dev).unwrap();
            let run = |y: Tensor| {
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let grad = |v: &Var| flat(grads.get(v.as_tensor()).unwrap());
                [flat(&y), grad(&x), grad(&a), grad(&b)]
            };
            let fused = run(lin.forward(x.as_tensor(), mode, 0).unwrap());
            let xt = x.as_tensor();
            let low = xt.broadcast_matmul(&a.as_tensor().t().unwrap()).unwrap();
            let up = (low.broadcast_matmul(&b.as_tensor().t().unwrap()).unwrap() * scale).unwrap();
            let composed = run((xt.broadcast_matmul(&w.t().unwrap()).unwrap() + up).unwrap());
            for (what, (f, c)) in ["y", "dx", "dA", "dB"].iter().zip(fused.iter().zip(&composed)) {
                assert_eq!(f.len(), c.len());
                for (p, q) in f.iter().zip(c) {
                    assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{what} {shape:?}: fused {p} vs composed {q}");
                }
            }
        }
    }
}
