//! Decode-shaped matrix products on the CPU: a few rows of activations times a large weight matrix.
//!
//! Decoding one token for each of `b` sequences multiplies `b` rows by every weight matrix of the model. For small
//! batches that is bound by streaming the weights from memory: 540 MB per step for
//! SmolLM2-135M in f32. candle's `gemm` packs the weight into panels first (reading and writing it again), and its
//! skinny-matrix kernels streamed the weights at about 10 GB/s at batch 8.
//!
//! Here each weight matrix is read from memory once per call, whatever the number of rows: the weight rows are
//! taken a few at a time (a tile small enough to stay in L1), and every activation row is multiplied by the tile
//! before the next tile is loaded. Within a tile the inner loop keeps `R` weight rows x `B` activation rows of
//! vector accumulators in registers (`R` weight loads and `B` activation loads feed `R * B` FMAs), and the tile
//! two ahead is prefetched into L2 while the current one is used; with AVX-512 a single activation row streams the
//! weight one row at a time (see `rows_avx512` and `rows_avx2` for the measurements behind these shapes). The
//! instruction set is picked at run time: AVX-512F, then AVX2 + FMA, then a portable loop (`kernel_choice.rs` may
//! pick another).
//!
//! Every output element is the same dot product (its lanes accumulate in `k` order, then reduce in one fixed order,
//! lane_sums.rs, then the scalar tail), whichever tile or activation block it falls in, so a row's output does not
//! depend on the other rows of the batch, nor on the thread count (threads split the weight rows).
//!
//! On a CPU whose chosen path is AVX-512, decoding multiplies packed copies of the weights instead
//! (packed_tiles.rs: the same dot products, bit for bit, read as one sequential stream); this kernel serves the
//! other CPUs and the row-major weights.
//!
//! The weight may also be a bf16 copy (the sampling copy, `Decoder::set_sampling_precision`): it is widened to
//! f32 as it is loaded (exact: a bf16 is the upper half of an f32) and multiplied in f32, so a step streams half
//! the bytes, and a product with a bf16 weight equals, bit for bit, the f32 product with that weight widened.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use half::bf16;

/// Most activation rows the decode path sends here unless this CPU is calibrated (`kernel_choice.rs`, `ideator
/// bench calibrate`). Up to this many the kernel beats or matches candle's matmul on a decode step's products
/// (`ideator bench matmul`, one thread; Xeon family 6 model 207: 1.1-1.3x at 1 row, 2.1-2.5x at 8, 1.3x at 16; Zen 4
/// family 25 model 17: 1.0x at 1 row, 2.6x at 2, 3.0x at 4, 1.7-2.3x at 8, 1.0-1.1x at 16). With more rows the
/// product turns from memory-bound to compute-bound and gemm's packed kernels catch up (0.7-1.0x at 24 and 32 rows
/// on those two), so decoding leaves them to gemm.
pub const MAX_ROWS: usize = 16;

/// Weight rows per parallel task: small enough to balance threads, large enough to amortise scheduling; a multiple
/// of every tile height (1, 2, 4) so only a matrix's last task has a partial tile.
const WEIGHT_ROWS_PER_TASK: usize = 240;

/// Whether `x W^T` is faster here than with candle's matmul: an f32 weight on the CPU, and a row count in the
/// active choice's range (1 to [`MAX_ROWS`] without a calibration; `kernel_choice::active`).
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    crate::kernel_choice::active().choice.few_rows_takes(rows)
        && crate::device::kernel_for(&[x, w]) == crate::device::Kernel::CpuFast
}

/// `x W^T` for `x` `(m, k)` f32 and `W` `(n, k)` f32 or bf16, both contiguous on the CPU, without gradient:
/// `(m, n)` f32, with the active choice's path. Any `m` is computed correctly; past the choice's row limit an f32
/// weight is faster with candle's matmul.
///
/// # Errors
/// Strided inputs, `x` and `W` disagreeing on `k`, or other dtypes.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &FewRowsMatmul { path: crate::kernel_choice::active().choice.few_rows_path })
}

/// The instruction set a product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// AVX-512F: 4 weight rows x up to 4 activation rows of 16-lane accumulators.
    Avx512,

    /// AVX2 + FMA: 2 weight rows x up to 4 activation rows of 8-lane accumulators (16 registers).
    Avx2,
    /// Plain Rust, 8 partial sums per dot product, multiply then add (any CPU).
    Portable,
}

impl Path {
    /// The fastest path this CPU supports.
    pub fn detect() -> Path {
        Path::available()[0]
    }

    /// Every path this CPU can run, fastest first (the portable one always).
    pub fn available() -> Vec<Path> {
        let mut paths = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(Path::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                paths.push(Path::Avx2);
            }
        }
        paths.push(Path::Portable);
        paths
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Path::Avx512 => "avx512",
            Path::Avx2 => "avx2",
            Path::Portable => "portable",
        }
    }
}

/// `x W^T` with a given path (tests compare every path this CPU has).
///
/// # Errors
/// As `matmul_t`; also a path this CPU cannot run.
pub fn matmul_t_with(x: &Tensor, w: &Tensor, path: Path) -> Result<Tensor> {
    if !Path::available().contains(&path) {
        candle_core::bail!("few-rows matmul: this CPU cannot run the {} path", path.as_str());
    }
    x.apply_op2_no_bwd(w, &FewRowsMatmul { path })
}

struct FewRowsMatmul {
    path: Path,
}

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
        let out = match ws {
            CpuStorage::BF16(w) => products(x, m, &w[wa..wb], n, k, self.path),
            _ => products(x, m, &ws.as_slice::<f32>()?[wa..wb], n, k, self.path),
        };
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// A weight element the kernels read: f32, or bf16 widened to f32 (exactly) as it is loaded.
pub(crate) trait Weight: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
}

impl Weight for f32 {
    #[inline]
    fn widen(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// `(m, n)` row-major `x W^T`. Threads split the weight rows; each writes its outputs transposed (`(n, m)`, one
/// contiguous block per task), and one cheap pass puts them back in `(m, n)` order.
fn products<T: x86::Lanes>(x: &[f32], m: usize, w: &[T], n: usize, k: usize, path: Path) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let mut out_t = vec![0f32; n * m];
    crate::cpu_op::for_each_chunk_mut(&mut out_t, WEIGHT_ROWS_PER_TASK * m, |index, out_t| {
        let first = index * WEIGHT_ROWS_PER_TASK;
        let rows = out_t.len() / m;
        weight_rows_times_x(&w[first * k..(first + rows) * k], k, x, m, out_t, path);
    });
    for (j, col) in out_t.chunks_exact(m).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            out[r * n + j] = v;
        }
    }
    out
}

/// `out_t[j * m + r] = dot(w_j, x_r)` for every row `w_j` of `w` (each of length `k`) and every row `x_r` of `x`.
fn weight_rows_times_x<T: x86::Lanes>(w: &[T], k: usize, x: &[f32], m: usize, out_t: &mut [f32], path: Path) {
    debug_assert!(x.len() == m * k && w.len() * m == out_t.len() * k);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Path::available` lists AVX-512F only when the CPU has it, and the slices' lengths are checked
        // above (every pointer the tiles read or write stays inside them).
        Path::Avx512 => unsafe { x86::rows_avx512(w, k, x, m, out_t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 and FMA.
        Path::Avx2 => unsafe { x86::rows_avx2(w, k, x, m, out_t) },
        _ => rows_portable(w, k, x, m, out_t),
    }
}

/// Portable fallback: each weight row is read from memory once and then, from L1, dotted with every activation row
/// (8 partial sums per dot product).
fn rows_portable<T: Weight>(w: &[T], k: usize, x: &[f32], m: usize, out_t: &mut [f32]) {
    let body = k - k % 8;
    for (wj, out_j) in w.chunks_exact(k).zip(out_t.chunks_exact_mut(m)) {
        for (xr, o) in x.chunks_exact(k).zip(out_j.iter_mut()) {
            let mut lanes = [0f32; 8];
            for c in (0..body).step_by(8) {
                for l in 0..8 {
                    // Not `mul_add`: without FMA in the baseline target it is a libm call, 10x slower.
                    lanes[l] += wj[c + l].widen() * xr[c + l];
                }
            }
            let mut sum = lanes.iter().sum::<f32>();
            for c in body..k {
                sum += wj[c].widen() * xr[c];
            }
            *o = sum;
        }
    }
}

/// Splits `m` activation rows into blocks of at most `max` rows, as even as possible (8 rows with blocks of 4 give
/// 4 + 4, not 4 + 3 + 1): a small block would waste the weight loads of its pass.
pub(crate) fn row_blocks(m: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = m.div_ceil(max);
    let (base, extra) = (m / blocks, m % blocks);
    (0..blocks).scan(0, move |start, i| {
        let len = base + usize::from(i < extra);
        let block = (*start, len);
        *start += len;
        Some(block)
    })
}

pub(crate) use x86::Lanes;

/// Elsewhere only the portable loop runs, which needs no vector loads.
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(crate) trait Lanes: super::Weight {}
    impl Lanes for f32 {}
    impl Lanes for half::bf16 {}
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::bf16;

    use super::{row_blocks, Weight};
    use crate::lane_sums::{sum_lanes, sum_lanes_of_16};

    /// Vector loads of a weight element type, widened to f32 lanes.
    pub(crate) trait Lanes: Weight {
        /// 16 elements at `p` as 16 f32 lanes.
        ///
        /// # Safety
        /// The CPU supports AVX-512F; 16 elements are readable at `p`.
        unsafe fn load16(p: *const Self) -> __m512;
        /// 8 elements at `p` as 8 f32 lanes.
        ///
        /// # Safety
        /// The CPU supports AVX2; 8 elements are readable at `p`.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Lanes for f32 {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }

    /// bf16 to f32 is a 16-bit left shift of the bits: zero-extend each 16-bit lane to 32 bits, shift, reinterpret.
    impl Lanes for bf16 {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn load16(p: *const bf16) -> __m512 {
            let bits = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn load8(p: *const bf16) -> __m256 {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
    }

    /// Whether a tile's row loop prefetches at column `c`: once per 64-byte line of weights.
    #[inline]
    fn line_start<T>(c: usize) -> bool {
        (c * std::mem::size_of::<T>()).is_multiple_of(64)
    }

    /// Expands to a `match` over the block height `$b` (1..=`$max`) that calls `$tile::<$r, b>`.
    macro_rules! dispatch_rows {
        ($tile:ident, $r:literal, $b:expr, $($arg:expr),*) => {
            match $b {
                1 => $tile::<_, $r, 1>($($arg),*),
                2 => $tile::<_, $r, 2>($($arg),*),
                3 => $tile::<_, $r, 3>($($arg),*),
                4 => $tile::<_, $r, 4>($($arg),*),
                _ => unreachable!("row blocks are at most 4 rows"),
            }
        };
    }

    /// AVX-512F: tiles of 4 weight rows, each multiplied by blocks of up to 4 activation rows (16 accumulators, 4
    /// weight and 1 activation register), the weight two tiles ahead prefetched into L2; a single activation row
    /// reads the weight one row at a time, with no prefetch.
    ///
    /// Why this shape (`ideator bench matmul`, SmolLM2-135M's products, one thread, Zen 4 family 25 model 17): at
    /// 8 rows, 3 x 8 tiles with an L1 prefetch of the next tile reached 42-45 GFLOP/s; 4 x 4 tiles with the L2
    /// prefetch 69-77 (of the machine's 99), as the weight then arrives while the FMAs run. One row is bound by the
    /// stream alone, and Zen 4's prefetchers follow one sequential stream (25 GB/s) better than three interleaved
    /// rows (12-13 GB/s).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `x` is `(m, k)`, `w` `(rows, k)` and `out_t` `(rows, m)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_avx512<T: Lanes>(w: &[T], k: usize, x: &[f32], m: usize, out_t: &mut [f32]) {
        let rows = w.len() / k;
        let height = if m == 1 { 1 } else { 4 };
        let (wp, xp, op) = (w.as_ptr(), x.as_ptr(), out_t.as_mut_ptr());
        let mut j = 0;
        while j < rows {
            let r = (rows - j).min(height);
            for (start, len) in row_blocks(m, 4) {
                let (wt, xt, ot) = (wp.add(j * k), xp.add(start * k), op.add(j * m + start));
                match r {
                    4 => dispatch_rows!(tile_avx512, 4, len, wt, k, xt, ot, m),
                    3 => dispatch_rows!(tile_avx512, 3, len, wt, k, xt, ot, m),
                    2 => dispatch_rows!(tile_avx512, 2, len, wt, k, xt, ot, m),
                    _ => dispatch_rows!(tile_avx512, 1, len, wt, k, xt, ot, m),
                }
            }
            j += r;
        }
    }

    /// `out_t[i * m + b] = dot(w_i, x_b)` for `R` weight rows at `w` and `B` activation rows at `x` (each `k`
    /// floats apart), prefetching the next tile's weight rows.
    // Indexed loops: the accumulator grid is indexed by weight row and activation row at once.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_avx512<T: Lanes, const R: usize, const B: usize>(
        w: *const T,
        k: usize,
        x: *const f32,
        out_t: *mut f32,
        m: usize,
    ) {
        let body = k - k % 16;
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        let mut c = 0;
        while c < body {
            let mut wv = [_mm512_setzero_ps(); R];
            for (i, v) in wv.iter_mut().enumerate() {
                let row = w.add(i * k + c);
                // Into L2, the same place two tiles on. A single row (the one-row pass) streams without it.
                if R > 1 && line_start::<T>(c) {
                    _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(2 * R * k) as *const i8);
                }
                *v = T::load16(row);
            }
            for b in 0..B {
                let xv = _mm512_loadu_ps(x.add(b * k + c));
                for i in 0..R {
                    acc[i][b] = _mm512_fmadd_ps(wv[i], xv, acc[i][b]);
                }
            }
            c += 16;
        }
        // The R x B sums: together in one transposing reduction (45 shuffles and adds) when there are enough of
        // them, else one at a time; the two give the same bits (lane_sums.rs), so an output does not depend on its
        // tile's shape.
        let sums: [f32; 16] = if R * B >= 6 {
            let v = std::array::from_fn(|j| if j < R * B { acc[j / B][j % B] } else { _mm512_setzero_ps() });
            let mut sums = [0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), sum_lanes_of_16(v));
            sums
        } else {
            std::array::from_fn(|j| if j < R * B { sum_lanes(acc[j / B][j % B]) } else { 0.0 })
        };
        for i in 0..R {
            for b in 0..B {
                let mut sum = sums[i * B + b];
                for t in body..k {
                    sum = (*w.add(i * k + t)).widen().mul_add(*x.add(b * k + t), sum);
                }
                *out_t.add(i * m + b) = sum;
            }
        }
    }

    /// AVX2 + FMA: tiles of 3 weight rows by blocks of up to 4 activation rows (12 accumulators, 3 weight and 1
    /// activation register: all 16 ymm registers), prefetching into L2 as [`rows_avx512`] does; a single activation
    /// row takes 2 weight rows a step.
    ///
    /// Why these heights (`ideator bench matmul` shapes, one thread): on Zen 1 (family 23 model 1) a single row
    /// reached 0.89-0.96x candle's gemv one weight row at a time (7.8-10.8 GB/s), 1.06-1.12x two at a time (12.2-13.0
    /// GB/s, the probe's 12.4), 0.97-0.99x four. On Zen 3 (family 25 model 1), SmolLM2-135M's products streamed from
    /// memory, 3 x 4 tiles against the 2 x 4 ones this path had before: 1.05x at 2 rows, 1.01x at 4, 1.08x at 8,
    /// 1.12x at 12, 1.15x at 16 (with the weights hot in L2, 8 rows: 87 against 74 GFLOP/s). Each output still
    /// accumulates alone in `k` order, so its bits do not depend on the tile.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; shapes as [`rows_avx512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2<T: Lanes>(w: &[T], k: usize, x: &[f32], m: usize, out_t: &mut [f32]) {
        let rows = w.len() / k;
        let height = if m == 1 { 2 } else { 3 };
        let (wp, xp, op) = (w.as_ptr(), x.as_ptr(), out_t.as_mut_ptr());
        let mut j = 0;
        while j < rows {
            let r = (rows - j).min(height);
            for (start, len) in row_blocks(m, 4) {
                let (wt, xt, ot) = (wp.add(j * k), xp.add(start * k), op.add(j * m + start));
                match r {
                    3 => dispatch_rows!(tile_avx2, 3, len, wt, k, xt, ot, m),
                    2 => dispatch_rows!(tile_avx2, 2, len, wt, k, xt, ot, m),
                    _ => dispatch_rows!(tile_avx2, 1, len, wt, k, xt, ot, m),
                }
            }
            j += r;
        }
    }

    /// The AVX2 tile: as [`tile_avx512`] with 8 lanes (one prefetch per 64-byte line).
    // Indexed loops: the accumulator grid is indexed by weight row and activation row at once.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_avx2<T: Lanes, const R: usize, const B: usize>(
        w: *const T,
        k: usize,
        x: *const f32,
        out_t: *mut f32,
        m: usize,
    ) {
        let body = k - k % 8;
        let mut acc = [[_mm256_setzero_ps(); B]; R];
        let mut c = 0;
        while c < body {
            let mut wv = [_mm256_setzero_ps(); R];
            for (i, v) in wv.iter_mut().enumerate() {
                let row = w.add(i * k + c);
                if R > 1 && line_start::<T>(c) {
                    _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(2 * R * k) as *const i8);
                }
                *v = T::load8(row);
            }
            for b in 0..B {
                let xv = _mm256_loadu_ps(x.add(b * k + c));
                for i in 0..R {
                    acc[i][b] = _mm256_fmadd_ps(wv[i], xv, acc[i][b]);
                }
            }
            c += 8;
        }
        for i in 0..R {
            for b in 0..B {
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][b]);
                let mut sum = lanes.iter().sum::<f32>();
                for t in body..k {
                    sum = (*w.add(i * k + t)).widen().mul_add(*x.add(b * k + t), sum);
                }
                *out_t.add(i * m + b) = sum;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// A `shape` f32 tensor of values in [-0.5, 0.5) from a fixed generator (the packed kernel's tests use it too).
    pub(crate) fn random(shape: (usize, usize), seed: u64) -> Tensor {
        let mut s = seed;
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A plain triple loop in f64: the reference every path is held to.
    fn plain(x: &Tensor, w: &Tensor) -> Vec<Vec<f32>> {
        let (x, w) = (x.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        x.iter()
            .map(|xr| {
                w.iter().map(|wj| xr.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32).collect()
            })
            .collect()
    }

    #[test]
    fn every_path_equals_a_plain_matmul_for_batches_1_to_33_and_ragged_sizes() {
        let paths = Path::available();
        assert_eq!(paths.last(), Some(&Path::Portable));
        // k below, at and off the vector widths; n not a multiple of any tile height or task size.
        for &(k, n) in &[(576, 301), (37, 513), (16, 1), (5, 7), (1536, 64), (24, 482)] {
            let w = random((n, k), 7 + k as u64);
            for m in 1..=33 {
                let x = random((m, k), m as u64 + 100 * k as u64);
                let expected = plain(&x, &w);
                for &path in &paths {
                    let ours = matmul_t_with(&x, &w, path).unwrap();
                    assert_eq!(ours.dims(), &[m, n]);
                    for (r, (got, want)) in ours.to_vec2::<f32>().unwrap().iter().zip(&expected).enumerate() {
                        for (j, (g, e)) in got.iter().zip(want).enumerate() {
                            assert!(
                                (g - e).abs() <= 1e-5 * (k as f32).sqrt(),
                                "{path:?} m {m} k {k} n {n}: ({r}, {j}) is {g}, plain {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_t_agrees_with_candles_matmul() {
        let (k, n) = (576, 300);
        let w = random((n, k), 5);
        for m in [1, 8, 32] {
            let x = random((m, k), m as u64);
            let ours = matmul_t(&x, &w).unwrap();
            let theirs = x.matmul(&w.t().unwrap()).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "m {m}: max difference {diff}");
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_batch_on_every_path() {
        let (k, n) = (581, 700);
        let w = random((n, k), 3);
        let x = random((13, k), 4);
        for path in Path::available() {
            let batch = matmul_t_with(&x, &w, path).unwrap().to_vec2::<f32>().unwrap();
            for (r, row) in batch.iter().enumerate() {
                let alone = matmul_t_with(&x.narrow(0, r, 1).unwrap(), &w, path).unwrap().to_vec2::<f32>().unwrap();
                assert_eq!(row, &alone[0], "{path:?} row {r}");
            }
        }
    }

    /// A weight row gives the same bits whichever tile it falls in: the full product (tiles of several weight rows,
    /// and a one-row tile at an odd end) against each weight row alone, for one and several activation rows.
    #[test]
    fn a_weight_row_gives_the_same_bits_in_any_tile_on_every_path() {
        let (k, n) = (581, 7);
        let w = random((n, k), 5);
        for m in [1, 3] {
            let x = random((m, k), 6 + m as u64);
            for path in Path::available() {
                let full = matmul_t_with(&x, &w, path).unwrap().to_vec2::<f32>().unwrap();
                for j in 0..n {
                    let alone =
                        matmul_t_with(&x, &w.narrow(0, j, 1).unwrap(), path).unwrap().to_vec2::<f32>().unwrap();
                    for (row, alone_row) in full.iter().zip(&alone) {
                        assert_eq!(row[j].to_bits(), alone_row[0].to_bits(), "{path:?} m {m} weight row {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_bf16_weight_gives_the_bits_of_its_f32_widening_on_every_path_for_batches_1_to_33() {
        for &(k, n) in &[(576, 301), (37, 513), (16, 1), (5, 7), (24, 482)] {
            let w16 = random((n, k), 11 + k as u64).to_dtype(candle_core::DType::BF16).unwrap();
            let widened = w16.to_dtype(candle_core::DType::F32).unwrap();
            for m in 1..=33 {
                let x = random((m, k), m as u64 + 7 * k as u64);
                for path in Path::available() {
                    let ours = matmul_t_with(&x, &w16, path).unwrap().to_vec2::<f32>().unwrap();
                    let f32_path = matmul_t_with(&x, &widened, path).unwrap().to_vec2::<f32>().unwrap();
                    assert_eq!(ours, f32_path, "{path:?} m {m} k {k} n {n}");
                }
                // And against the plain f64 reference on the widened weight.
                let expected = plain(&x, &widened);
                let got = matmul_t(&x, &w16).unwrap().to_vec2::<f32>().unwrap();
                for (g, e) in got.iter().flatten().zip(expected.iter().flatten()) {
                    assert!((g - e).abs() <= 1e-5 * (k as f32).sqrt(), "m {m} k {k}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn other_weight_dtypes_are_refused() {
        let x = random((2, 8), 1);
        let w = random((3, 8), 2).to_dtype(candle_core::DType::F16).unwrap();
        assert!(matmul_t(&x, &w).is_err());
    }

    #[test]
    fn row_blocks_are_even_and_cover_every_row() {
        let blocks = |m, max| row_blocks(m, max).collect::<Vec<_>>();
        assert_eq!(blocks(8, 4), vec![(0, 4), (4, 4)]);
        assert_eq!(blocks(9, 8), vec![(0, 5), (5, 4)]);
        assert_eq!(blocks(1, 8), vec![(0, 1)]);
        for m in 1..=40 {
            let b = blocks(m, 8);
            assert_eq!(b.iter().map(|&(_, l)| l).sum::<usize>(), m);
            assert!(b.iter().all(|&(_, l)| (1..=8).contains(&l)), "{m}: {b:?}");
            assert!(b.windows(2).all(|p| p[0].0 + p[0].1 == p[1].0));
        }
    }

    #[test]
    fn strided_inputs_and_mismatched_widths_are_refused_with_a_reason() {
        let w = random((8, 4), 1);
        let x = random((4, 2), 2).t().unwrap();
        let err = matmul_t(&x, &w).unwrap_err().to_string();
        assert!(err.contains("contiguous"), "{err}");
        let err = matmul_t(&random((2, 5), 3), &w).unwrap_err().to_string();
        assert!(err.contains("(2, 5)") && err.contains("(8, 4)"), "{err}");
    }
}
