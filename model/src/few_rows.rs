//! Decode-shaped matrix products on the CPU: a few rows of activations times a large weight matrix.
//!
//! Decoding one token per sequence multiplies `m` rows (the batch, often 1-16) by every weight matrix of the model.
//! That is bound by streaming the weights from memory, once per step. A general GEMM (candle's `gemm`) packs the
//! weight into panels first, which reads and writes it again, and its register tiles are shaped for many rows: at 8
//! rows it used the 1-row AVX-512 tile, and packing took a sixth of the decode profile. Here each weight row is read
//! once, straight from its row-major `(out, in)` layout, and multiplied with every activation row held in registers
//! (up to [`ROWS_PER_PASS`] rows per pass over the weight).
//!
//! Every output element is the same dot product whatever `m` is (its lanes accumulate in `k` order, then reduce), so
//! a row's logits do not depend on which other rows share the batch, and they do not depend on the thread count
//! (threads split the output columns).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Up to this many rows the kernel beats candle's gemm in a real decode, where the weights stream from memory:
/// at 1 row it streams a weight at about 36 GB/s against gemm's 28-30 GB/s (SmolLM2 decode-only tokens/s +8%); at 8
/// rows it wins when the weight is in cache (2.4x for a 1536 x 576 matrix) but lost 6% of a whole decode step,
/// whose weights come from memory. Callers use candle's matmul above it.
pub const FASTER_UP_TO_ROWS: usize = 1;

/// Activation rows one pass over the weight serves; more rows take more passes.
pub const ROWS_PER_PASS: usize = 8;

/// Weight rows per parallel task: small enough to balance threads, large enough to amortise scheduling.
const WEIGHT_ROWS_PER_TASK: usize = 256;

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
        // Computed as (n, m): each task owns a contiguous block of weight rows; transposed at the end.
        let mut out_t = vec![0f32; n * m];
        let task = |(index, out): (usize, &mut [f32])| {
            let first = index * WEIGHT_ROWS_PER_TASK;
            let rows = out.len() / m;
            let w = &w[first * k..(first + rows) * k];
            for (pass, x_rows) in x.chunks(ROWS_PER_PASS * k).enumerate() {
                let col = pass * ROWS_PER_PASS;
                dot_rows(w, k, x_rows, |j, r, v| out[j * m + col + r] = v);
            }
        };
        if m > 0 && n > 0 {
            // On one thread, stay on the caller's: handing each product to rayon's pool and waiting for it costs
            // tens of microseconds, a third of a one-row decode step over its 211 products.
            if rayon::current_num_threads() > 1 {
                out_t.par_chunks_mut(WEIGHT_ROWS_PER_TASK * m).enumerate().for_each(task);
            } else {
                out_t.chunks_mut(WEIGHT_ROWS_PER_TASK * m).enumerate().for_each(task);
            }
        }
        let mut out = vec![0f32; m * n];
        for (j, row) in out_t.chunks_exact(m.max(1)).enumerate().take(n) {
            for (r, &v) in row.iter().enumerate() {
                out[r * n + j] = v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// For every weight row `j` of `w` (rows of length `k`) and every activation row `r` of `x` (at most
/// [`ROWS_PER_PASS`]), `store(j, r, dot(w_j, x_r))`, with the fastest instruction set this CPU has.
fn dot_rows(w: &[f32], k: usize, x: &[f32], store: impl FnMut(usize, usize, f32)) {
    let m = x.len() / k;
    debug_assert!(m <= ROWS_PER_PASS && x.len() == m * k && w.len().is_multiple_of(k));
    #[cfg(target_arch = "x86_64")]
    {
        // The row count as a constant: the accumulators stay in registers and the inner loop has no branches.
        macro_rules! by_rows {
            ($f:ident) => {
                match m {
                    1 => x86::$f::<1>(w, k, x, store),
                    2 => x86::$f::<2>(w, k, x, store),
                    3 => x86::$f::<3>(w, k, x, store),
                    4 => x86::$f::<4>(w, k, x, store),
                    5 => x86::$f::<5>(w, k, x, store),
                    6 => x86::$f::<6>(w, k, x, store),
                    7 => x86::$f::<7>(w, k, x, store),
                    _ => x86::$f::<8>(w, k, x, store),
                }
            };
        }
        const _: () = assert!(ROWS_PER_PASS == 8, "by_rows! covers 1..=8 rows");
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { by_rows!(dot_rows_avx512) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { by_rows!(dot_rows_avx2) };
        }
    }
    dot_rows_scalar(w, k, x, m, store)
}

/// Portable fallback, with 8 partial sums per dot product like the AVX2 path.
fn dot_rows_scalar(w: &[f32], k: usize, x: &[f32], m: usize, mut store: impl FnMut(usize, usize, f32)) {
    for (j, wj) in w.chunks_exact(k).enumerate() {
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            let mut lanes = [0f32; 8];
            let body = k - k % 8;
            for c in (0..body).step_by(8) {
                for l in 0..8 {
                    lanes[l] = wj[c + l].mul_add(xr[c + l], lanes[l]);
                }
            }
            let mut sum = lanes.iter().sum::<f32>();
            for c in body..k {
                sum = wj[c].mul_add(xr[c], sum);
            }
            store(j, r, sum);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// How far ahead (in floats) of the current weight chunk to prefetch: 4 KB.
    const PREFETCH_AHEAD: usize = 1024;

    /// One pass over `w` with `M` (<= 8) activation rows: 16-lane accumulators, one per activation row, fed by each
    /// 16-float chunk of a weight row, which is loaded once.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_rows_avx512<const M: usize>(
        w: &[f32],
        k: usize,
        x: &[f32],
        mut store: impl FnMut(usize, usize, f32),
    ) {
        let body = k - k % 16;
        for (j, wj) in w.chunks_exact(k).enumerate() {
            let mut acc = [_mm512_setzero_ps(); M];
            let mut c = 0;
            while c < body {
                // One cache line per chunk: ask for the line PREFETCH_AHEAD floats on now, so that the weight keeps
                // streaming while the FMAs of many activation rows run (without it the large head matrix streamed
                // at a third of the memory bandwidth at 8 rows).
                _mm_prefetch::<_MM_HINT_T0>(wj.as_ptr().wrapping_add(c + PREFETCH_AHEAD) as *const i8);
                let wv = _mm512_loadu_ps(wj.as_ptr().add(c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.as_ptr().add(r * k + c)), *a);
                }
                c += 16;
            }
            for (r, a) in acc.iter().enumerate() {
                let mut sum = _mm512_reduce_add_ps(*a);
                for t in body..k {
                    sum = wj[t].mul_add(x[r * k + t], sum);
                }
                store(j, r, sum);
            }
        }
    }

    /// The same with 8-lane AVX2 accumulators.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_avx2<const M: usize>(
        w: &[f32],
        k: usize,
        x: &[f32],
        mut store: impl FnMut(usize, usize, f32),
    ) {
        let body = k - k % 8;
        for (j, wj) in w.chunks_exact(k).enumerate() {
            let mut acc = [_mm256_setzero_ps(); M];
            let mut c = 0;
            while c < body {
                if c % 16 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(wj.as_ptr().wrapping_add(c + PREFETCH_AHEAD) as *const i8);
                }
                let wv = _mm256_loadu_ps(wj.as_ptr().add(c));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(r * k + c)), *a);
                }
                c += 8;
            }
            for (r, a) in acc.iter().enumerate() {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                let mut sum = lanes.iter().sum::<f32>();
                for t in body..k {
                    sum = wj[t].mul_add(x[r * k + t], sum);
                }
                store(j, r, sum);
            }
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
