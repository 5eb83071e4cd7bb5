//! Rotary position embeddings in the Hugging Face ("half rotation") layout.
//!
//! Two ways to apply them: `apply_differentiable` for the trainable forward (on the CPU in f32 one fused op whose
//! backward is the inverse rotation, elsewhere composed from narrow/mul/cat), `apply_fast` with candle's fused
//! kernel, which has no backward (the decode path). Both take per-row cos/sin of shape (batch, time, head_dim / 2),
//! so left-padded rows keep their true positions.
//!
//! The composed form is about ten graph nodes per use (two narrows, four broadcast products, a difference, a sum,
//! a concatenation, a copy), and candle's backward gives each a zeroed gradient buffer and an add: with the norms,
//! the elementwise work that ran on the calling thread while the pool waited (perf, Zen 4, two threads).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, D};

use crate::cpu_op::{for_each_chunk_mut, with_f32_slice};
use crate::device::{kernel_for, Kernel};

use crate::config::ModelConfig;
use crate::Result;

/// Longest position table we build; configs that claim more (Llama 3.1: 131072) are capped to this.
const MAX_TABLE: usize = 1 << 15;

#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl Rope {
    /// `freq_factors` (from a Llama 3.1 GGUF's `rope_freqs.weight`) divide the frequencies when present.
    pub fn new(cfg: &ModelConfig, freq_factors: Option<&[f32]>, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let mut inv_freq: Vec<f64> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64)).collect();
        if let Some(s) = cfg.rope_scaling {
            // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
            let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings as f64 / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        if let Some(factors) = freq_factors {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= *d as f64;
            }
        }
        let max_positions = cfg.max_position_embeddings.clamp(1, MAX_TABLE);
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
            max_positions,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos and sin for the given positions, each (batch, time, head_dim / 2).
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
        Ok((cos, sin))
    }

    /// x: (batch, heads, time, head_dim), any strides with a contiguous last dimension; cos, sin: (batch or 1,
    /// time, head_dim / 2). Differentiable. The fused CPU op returns a contiguous result.
    pub(crate) fn apply_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if kernel_for(&[x, cos, sin]) == Kernel::CpuFast {
            let op = Rotate { cos: cos.contiguous()?, sin: sin.contiguous()?, inverse: false };
            return Ok(x.apply_op1(op)?);
        }
        let half = x.dim(D::Minus1)? / 2;
        let cos = cos.unsqueeze(1)?.to_dtype(x.dtype())?;
        let sin = sin.unsqueeze(1)?.to_dtype(x.dtype())?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Ok(Tensor::cat(&[r1, r2], D::Minus1)?)
    }

    /// x: (batch, heads, time, head_dim). Fused kernel, no backward: only for detached decoding.
    pub(crate) fn apply_fast(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let dtype = x.dtype();
        let (cos, sin) = if dtype == DType::F32 {
            (cos.contiguous()?, sin.contiguous()?)
        } else {
            (cos.to_dtype(dtype)?.contiguous()?, sin.to_dtype(dtype)?.contiguous()?)
        };
        Ok(candle_nn::rotary_emb::rope(&x, &cos, &sin)?)
    }
}

/// Rows (of head_dim values) per task on the pool.
const ROWS_PER_TASK: usize = 256;

/// The half rotation as one CPU op: `out[j] = x[j] cos[j] - x[j + h] sin[j]`, `out[j + h] = x[j + h] cos[j] +
/// x[j] sin[j]` for `j < h = head_dim / 2` (Su et al. 2021, in Hugging Face's layout). Its transpose, the
/// backward, is the same rotation with `-sin` (`inverse`).
struct Rotate {
    cos: Tensor,
    sin: Tensor,
    inverse: bool,
}

impl Rotate {
    /// `out` (rows of `d`, contiguous (b, heads, t, d)) from `x` at `x_at(b, head, t)`, with `cos`/`sin` rows of
    /// `d / 2` for batch row `b` (0 when the tables are shared) and time `t`.
    fn rotate(
        &self,
        x: &[f32],
        x_at: impl Fn(usize) -> usize + Sync,
        (cos, sin): (&[f32], &[f32]),
        table_at: impl Fn(usize) -> usize + Sync,
        d: usize,
        out: &mut [f32],
    ) {
        let half = d / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        for_each_chunk_mut(out, ROWS_PER_TASK * d, |chunk, out| {
            for (i, o) in out.chunks_exact_mut(d).enumerate() {
                let row = chunk * ROWS_PER_TASK + i;
                let x = &x[x_at(row)..][..d];
                let at = table_at(row);
                let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    let s = sign * s[j];
                    o1[j] = x1[j] * c[j] - x2[j] * s;
                    o2[j] = x2[j] * c[j] + x1[j] * s;
                }
            }
        });
    }
}

impl CustomOp1 for Rotate {
    fn name(&self) -> &'static str {
        "rope-fused"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, heads, t, d) = layout.shape().dims4()?;
        let stride = layout.stride();
        let (tb, tt, th) = self.cos.dims3()?;
        if stride[3] != 1
            || d % 2 != 0
            || tt != t
            || th != d / 2
            || (tb != b && tb != 1)
            || self.sin.dims() != self.cos.dims()
        {
            candle_core::bail!(
                "rope-fused: x {:?} (strides {stride:?}) and tables {:?} / {:?} do not fit (batch, heads, time, \
                 head_dim) with (batch or 1, time, head_dim / 2)",
                layout.dims(),
                self.cos.dims(),
                self.sin.dims()
            );
        }
        let x = &storage.as_slice::<f32>()?[layout.start_offset()..];
        // Row r of the output is (batch, head, time) = (r / (heads t), r / t % heads, r % t).
        let x_at = |r: usize| (r / (heads * t)) * stride[0] + (r / t % heads) * stride[1] + (r % t) * stride[2];
        let table_at = |r: usize| ((if tb == 1 { 0 } else { r / (heads * t) }) * t + r % t) * (d / 2);
        let mut out = vec![0f32; b * heads * t * d];
        with_f32_slice(&self.cos, |cos| {
            with_f32_slice(&self.sin, |sin| self.rotate(x, x_at, (cos, sin), table_at, d, &mut out))
        })??;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = Rotate { cos: self.cos.clone(), sin: self.sin.clone(), inverse: !self.inverse };
        Ok(Some(grad.apply_op1_no_bwd(&inverse)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The composed rotation (the GPU's path), with the fused op off.
    fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        crate::device::with_portable_kernels(|| Rope::apply_differentiable(x, cos, sin).unwrap())
    }

    /// Values and gradient against the composed rotation: a short input, and one of more rows than a task holds
    /// (300 > 256 rows of (b, heads, t)) that starts inside a larger buffer; per-row and shared tables; 1 and 2
    /// threads.
    #[test]
    fn the_fused_rotation_equals_the_composed_one_and_its_gradient() {
        for (b, heads, t, d) in [(2, 3, 5, 8), (2, 3, 50, 8)] {
            check_rotation(b, heads, t, d);
        }
    }

    fn check_rotation(b: usize, heads: usize, t: usize, d: usize) {
        let dev = Device::Cpu;
        // x laid out (b, t, heads, d) and transposed, as the projections give it: strided, and (as a slice of one
        // more batch row) at a non-zero offset.
        let all = b + 1;
        let data: Vec<f32> = (0..all * t * heads * d).map(|i| ((i * 7919 % 97) as f32 - 48.0) / 9.0).collect();
        let x_all = Var::from_vec(data, (all, t, heads, d), &dev).unwrap();
        let xt = x_all.as_tensor().narrow(0, 1, b).unwrap().transpose(1, 2).unwrap();
        let probe: Vec<f32> = (0..b * heads * t * d).map(|i| (i % 11) as f32 - 5.0).collect();
        let probe = Tensor::from_vec(probe, (b, heads, t, d), &dev).unwrap();
        let angle = |i: usize| i as f32 * 0.37 - 1.0;
        for table_rows in [b, 1] {
            let n = table_rows * t * d / 2;
            let cos =
                Tensor::from_vec((0..n).map(|i| angle(i).cos()).collect::<Vec<_>>(), (table_rows, t, d / 2), &dev)
                    .unwrap();
            let sin =
                Tensor::from_vec((0..n).map(|i| angle(i).sin()).collect::<Vec<_>>(), (table_rows, t, d / 2), &dev)
                    .unwrap();
            let want = composed(&xt, &cos, &sin);
            let want_grad = (&want * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (got, grad) = pool.install(|| {
                    let got = Rope::apply_differentiable(&xt, &cos, &sin).unwrap();
                    let grad = (&got * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    (got, grad)
                });
                assert!(got.is_contiguous());
                for (what, a, c) in [
                    ("value", values(&got), values(&want)),
                    ("gradient", values(grad.get(&x_all).unwrap()), values(want_grad.get(&x_all).unwrap())),
                ] {
                    assert!(c.iter().any(|v| v.abs() > 0.1), "{what}: the composed result is not trivial");
                    for (i, (a, c)) in a.iter().zip(&c).enumerate() {
                        assert!(
                            (a - c).abs() <= 1e-5 * (1.0 + c.abs()),
                            "{what} {i} ({b}x{heads}x{t}, {table_rows} table rows, {threads} threads): fused {a}, \
                             composed {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tables_that_do_not_fit_are_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let cos = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
        let err = Rope::apply_differentiable(&x, &cos, &cos).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
