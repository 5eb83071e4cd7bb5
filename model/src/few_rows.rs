//! Decode-shaped matrix products on the CPU: one row of activations times a large weight matrix.
//!
//! Decoding one token of one sequence multiplies a single row by every weight matrix of the model, which is bound
//! by streaming the weights from memory. candle's `gemm` packs the weight into panels first, reading and writing it
//! again. Here each weight row is read once, straight from its row-major `(out, in)` layout, with a prefetch ahead
//! of it: on the 49152 x 576 head that streams at about 36 GB/s against gemm's 28-30 GB/s.
//!
//! A multi-row version (every activation row in registers, one pass over the weight) was measured and dropped: at 8
//! rows it beat gemm 2.4x with the weight in cache but lost 6% of a whole decode step, whose weights come from
//! memory. So callers use this kernel for one row ([`applies`]); given several rows it still computes them, one
//! pass over the weight per row.
//!
//! Every output element is the same dot product (its lanes accumulate in `k` order, then reduce), so a row's logits
//! do not depend on the other rows of the batch, nor on the thread count (threads split the output columns).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Weight rows per parallel task: small enough to balance threads, large enough to amortise scheduling.
const WEIGHT_ROWS_PER_TASK: usize = 256;

/// Whether `x W^T` is faster here than with candle's matmul: one f32 row and an f32 weight, on the CPU.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    rows == 1 && crate::device::kernel_for(&[x, w]) == crate::device::Kernel::CpuFast
}

/// `x W^T` for `x` `(m, k)` and `W` `(n, k)`, both contiguous f32 on the CPU, without gradient: `(m, n)`.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &FewRowsMatmul)
}

struct FewRowsMatmul;

impl CustomOp2 for FewRowsMatmul {
    fn name(&self) -> &'static str {
        "few-rows-matmul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            candle_core::bail!("few-rows matmul expects contiguous inputs");
        };
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if k != wk {
            candle_core::bail!("few-rows matmul: x is ({m}, {k}) but W is ({n}, {wk})");
        }
        let x = &xs.as_slice::<f32>()?[xa..xb];
        let w = &ws.as_slice::<f32>()?[wa..wb];
        let mut out = vec![0f32; m * n];
        if k > 0 && n > 0 {
            for (xr, out_r) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
                let task = |(index, out): (usize, &mut [f32])| {
                    let first = index * WEIGHT_ROWS_PER_TASK;
                    dot_rows(&w[first * k..(first + out.len()) * k], k, xr, out);
                };
                // On one thread, stay on the caller's: handing each product to rayon's pool and waiting for it
                // costs tens of microseconds, a third of a one-row decode step over its 211 products.
                if rayon::current_num_threads() > 1 {
                    out_r.par_chunks_mut(WEIGHT_ROWS_PER_TASK).enumerate().for_each(task);
                } else {
                    out_r.chunks_mut(WEIGHT_ROWS_PER_TASK).enumerate().for_each(task);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `out[j] = dot(w_j, x)` for every row `w_j` (of length `k`) of `w`, with the fastest instruction set this CPU has.
fn dot_rows(w: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
    debug_assert!(x.len() == k && w.len() == out.len() * k);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { x86::dot_rows_avx512(w, k, x, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot_rows_avx2(w, k, x, out) };
        }
    }
    dot_rows_scalar(w, k, x, out)
}

/// Portable fallback, with 8 partial sums per dot product like the AVX2 path.
fn dot_rows_scalar(w: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
    let body = k - k % 8;
    for (wj, o) in w.chunks_exact(k).zip(out.iter_mut()) {
        let mut lanes = [0f32; 8];
        for c in (0..body).step_by(8) {
            for l in 0..8 {
                lanes[l] = wj[c + l].mul_add(x[c + l], lanes[l]);
            }
        }
        let mut sum = lanes.iter().sum::<f32>();
        for c in body..k {
            sum = wj[c].mul_add(x[c], sum);
        }
        *o = sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// How far ahead (in floats) of the current weight chunk to prefetch: 4 KB, one cache line per 16 floats.
    const PREFETCH_AHEAD: usize = 1024;

    /// 16-lane accumulation over each weight row's 16-float chunks, then one horizontal sum and the scalar tail.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows_avx512(w: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
        let body = k - k % 16;
        for (wj, o) in w.chunks_exact(k).zip(out.iter_mut()) {
            let mut acc = _mm512_setzero_ps();
            let mut c = 0;
            while c < body {
                _mm_prefetch::<_MM_HINT_T0>(wj.as_ptr().wrapping_add(c + PREFETCH_AHEAD) as *const i8);
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(wj.as_ptr().add(c)), _mm512_loadu_ps(x.as_ptr().add(c)), acc);
                c += 16;
            }
            let mut sum = _mm512_reduce_add_ps(acc);
            for t in body..k {
                sum = wj[t].mul_add(x[t], sum);
            }
            *o = sum;
        }
    }

    /// The same with 8-lane AVX2 accumulation (one prefetch per cache line).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_avx2(w: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
        let body = k - k % 8;
        for (wj, o) in w.chunks_exact(k).zip(out.iter_mut()) {
            let mut acc = _mm256_setzero_ps();
            let mut c = 0;
            while c < body {
                if c % 16 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(wj.as_ptr().wrapping_add(c + PREFETCH_AHEAD) as *const i8);
                }
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(wj.as_ptr().add(c)), _mm256_loadu_ps(x.as_ptr().add(c)), acc);
                c += 8;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            let mut sum = lanes.iter().sum::<f32>();
            for t in body..k {
                sum = wj[t].mul_add(x[t], sum);
            }
            *o = sum;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut s = seed;
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_a_plain_matmul_for_every_row_count_and_ragged_sizes() {
        for &(k, n) in &[(576, 300), (37, 513), (16, 1), (1536, 64)] {
            let w = random((n, k), 7 + k as u64);
            for m in [1, 2, 3, 7, 8, 9, 16, 17, 33] {
                let x = random((m, k), m as u64);
                let ours = matmul_t(&x, &w).unwrap();
                let plain = x.matmul(&w.t().unwrap()).unwrap();
                assert_eq!(ours.dims(), &[m, n]);
                let diff = (ours - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4 * (k as f32).sqrt(), "m {m} k {k} n {n}: max difference {diff}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_batch() {
        let (k, n) = (576, 700);
        let w = random((n, k), 3);
        let x = random((12, k), 4);
        let batch = matmul_t(&x, &w).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in batch.iter().enumerate() {
            let alone = matmul_t(&x.narrow(0, r, 1).unwrap(), &w).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(row, &alone[0], "row {r}");
        }
    }

    #[test]
    fn strided_inputs_are_refused_with_a_reason() {
        let w = random((8, 4), 1);
        let x = random((4, 2), 2).t().unwrap();
        let err = matmul_t(&x, &w).unwrap_err().to_string();
        assert!(err.contains("contiguous"), "{err}");
    }
}
