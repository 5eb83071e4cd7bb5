//! Weight matrices stored tile by tile for decoding, and their few-rows product (AVX-512).
//!
//! The few-rows kernel (few_rows.rs) reads 4 rows of a row-major weight side by side: four interleaved streams,
//! which Zen 4's prefetchers follow at 16-18 GB/s where one sequential stream reaches 25-29 GB/s (BENCHMARKS.md,
//! issue 16). Here a copy of the weight is laid out so that each tile of [`TILE_ROWS`] weight rows is one
//! contiguous run, the rows interleaved 16 values at a time, and the product is a single sequential stream: each
//! tile times blocks of up to 8 activation rows (3 x 8 = 24 accumulators), the tile four ahead prefetched into L2.
//! `ideator bench matmul --rows 8,16` times it against the few-rows kernel side by side: 1.05-1.3x at 8 rows and
//! 1.08x at 16, equal at 2 and 4; batch-8 decoding gained 1.1-1.2x (SmolLM2-135M, one thread, Zen 4 family 25 model
//! 17; BENCHMARKS.md).
//!
//! Layout of an `(n, k)` weight, `body = k - k % 16`: tile `t` holds rows `3t .. 3t + 2` (a last tile with fewer real
//! rows is padded with zero rows) as `[body / 16][3][16]`, then the `k % 16` tail columns row by row, `[3][k % 16]`.
//!
//! Every output is the dot product of the few-rows kernel, bit for bit: the 16 lanes accumulate in `k` order by
//! fused multiply-adds from zero, reduce in lane_sums.rs's fixed order, then the tail adds on by `mul_add` in `k`
//! order. So decoding gives the same tokens from the packed copy as from the row-major weight, a row's output does
//! not depend on the rest of the batch, and threads (which split the tiles) do not change it.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use half::bf16;

use crate::cpu_op::with_f32_slice;
use crate::few_rows::{Lanes, Path};

/// Weight rows per tile: 3 rows x 8 activation rows fill 24 of the 32 zmm accumulators, leaving room for the 3
/// weight vectors and one activation vector.
pub const TILE_ROWS: usize = 3;

/// Most activation rows one pass over a tile multiplies (the accumulator grid's width).
const PASS_ROWS: usize = 8;

/// Weight rows per parallel task: a multiple of [`TILE_ROWS`], as the few-rows kernel's 240.
const ROWS_PER_TASK: usize = 240;

/// The packed values, in the weight's precision.
enum Values {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

/// An `(n, k)` weight matrix packed tile by tile (see the module doc), f32 or bf16. Cheap to clone (shared).
#[derive(Clone)]
pub struct PackedWeight {
    values: Arc<Values>,
    n: usize,
    k: usize,
}

/// The shape and dtype, not the values (hundreds of MB).
impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({}, {}, {:?})", self.n, self.k, self.dtype())
    }
}

impl PackedWeight {
    /// Packs `w` `(n, k)`, an f32 tensor on the CPU, in `dtype` (f32, or bf16 rounded to nearest even as candle's
    /// `to_dtype` does).
    ///
    /// # Errors
    /// `w` not a 2-d f32 CPU tensor, or `dtype` neither f32 nor bf16.
    pub fn pack(w: &Tensor, dtype: DType) -> Result<PackedWeight> {
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            candle_core::bail!(
                "packing a weight takes an f32 tensor on the CPU, got {:?} on {:?}",
                w.dtype(),
                w.device()
            );
        }
        let (n, k) = w.dims2()?;
        let w = w.contiguous()?;
        let values = match dtype {
            DType::F32 => Values::F32(with_f32_slice(&w, |values| interleave(values, n, k, |v| v))?),
            // `bf16::from_f32` rounds to nearest even, as candle's `to_dtype` does.
            DType::BF16 => Values::Bf16(with_f32_slice(&w, |values| interleave(values, n, k, bf16::from_f32))?),
            other => candle_core::bail!("a packed weight is f32 or bf16, not {other:?}"),
        };
        Ok(PackedWeight { values: Arc::new(values), n, k })
    }

    /// `(n, k)`: output rows and inner size.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn dtype(&self) -> DType {
        match *self.values {
            Values::F32(_) => DType::F32,
            Values::Bf16(_) => DType::BF16,
        }
    }

    /// Bytes a product streams: the stored values, padding rows included.
    pub fn bytes(&self) -> usize {
        match &*self.values {
            Values::F32(v) => v.len() * 4,
            Values::Bf16(v) => v.len() * 2,
        }
    }

    /// The weight back in row-major order, widened to f32 (exact): `(n, k)` (for products with many rows, which
    /// gemm does faster).
    ///
    /// # Errors
    /// Only candle's, building the tensor.
    pub fn unpacked_f32(&self) -> Result<Tensor> {
        let values = match &*self.values {
            Values::F32(v) => deinterleave(v, self.n, self.k, |v| v),
            Values::Bf16(v) => deinterleave(v, self.n, self.k, bf16::to_f32),
        };
        Tensor::from_vec(values, (self.n, self.k), &Device::Cpu)
    }

    /// `x W^T` for `x` `(m, k)` f32 on the CPU: `(m, n)` f32, with `path` (`Avx512`, or any other path for the
    /// portable loop, which gives the same bits, slowly).
    ///
    /// # Errors
    /// `x` not `(m, k)` f32 on the CPU, or a path this CPU cannot run.
    pub fn matmul_t(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        if !Path::available().contains(&path) {
            candle_core::bail!("packed matmul: this CPU cannot run the {} path", path.as_str());
        }
        let (m, k) = x.dims2()?;
        if k != self.k || x.dtype() != DType::F32 || !x.device().is_cpu() {
            candle_core::bail!(
                "packed matmul: x is {:?} {:?} on {:?}, the weight ({}, {}) takes (rows, {}) f32 on the CPU",
                x.dims(),
                x.dtype(),
                x.device(),
                self.n,
                self.k,
                self.k
            );
        }
        let out = with_f32_slice(&x.contiguous()?, |xs| match &*self.values {
            Values::F32(w) => products(xs, m, w, self.n, k, path),
            Values::Bf16(w) => products(xs, m, w, self.n, k, path),
        })?;
        Tensor::from_vec(out, (m, self.n), &Device::Cpu)
    }
}

/// `w` `(n, k)` row-major into tiles (module doc), each value through `convert`.
fn interleave<T: Copy + Default>(w: &[f32], n: usize, k: usize, convert: impl Fn(f32) -> T) -> Vec<T> {
    let body = k - k % 16;
    let tiles = n.div_ceil(TILE_ROWS);
    let mut packed = Vec::with_capacity(tiles * TILE_ROWS * k);
    // Columns `cols` of row `r`, zeros for a padding row.
    let mut push = |r: usize, cols: Range<usize>| {
        if r < n {
            packed.extend(w[r * k + cols.start..r * k + cols.end].iter().map(|&v| convert(v)));
        } else {
            packed.resize(packed.len() + cols.len(), T::default());
        }
    };
    for t in 0..tiles {
        for c in (0..body).step_by(16) {
            for r in t * TILE_ROWS..(t + 1) * TILE_ROWS {
                push(r, c..c + 16);
            }
        }
        for r in t * TILE_ROWS..(t + 1) * TILE_ROWS {
            push(r, body..k);
        }
    }
    packed
}

/// The inverse of [`interleave`]: the `n` real rows, row-major, each value through `widen`.
fn deinterleave<T: Copy>(packed: &[T], n: usize, k: usize, widen: impl Fn(T) -> f32) -> Vec<f32> {
    let body = k - k % 16;
    let mut w = Vec::with_capacity(n * k);
    for r in 0..n {
        let tile = &packed[(r / TILE_ROWS) * TILE_ROWS * k..];
        let i = r % TILE_ROWS;
        for c in (0..body).step_by(16) {
            w.extend(tile[c * TILE_ROWS + 16 * i..][..16].iter().map(|&v| widen(v)));
        }
        w.extend(tile[body * TILE_ROWS + i * (k - body)..][..k - body].iter().map(|&v| widen(v)));
    }
    w
}

/// `(m, n)` row-major `x W^T` from the packed `w`. Threads split the tiles, and each task writes its tiles'
/// outputs straight into their columns of the result (a transposed buffer and a pass to put it back in order were
/// 3% of a batch-8 decode run's `perf` samples; without them decoding measured 1.05x, within this machine's noise).
fn products<T: Lanes>(x: &[f32], m: usize, w: &[T], n: usize, k: usize, path: Path) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let columns = Columns { out: out.as_mut_ptr(), m, n };
    crate::cpu_op::map_tasks(n.div_ceil(ROWS_PER_TASK), |task| {
        let first = task * ROWS_PER_TASK;
        let rows = ROWS_PER_TASK.min(n - first);
        tiles_times_x(&w[first * k..], k, x, first..first + rows, columns, path);
    });
    out
}

/// The `(m, n)` output that the tasks share: each writes only the columns of its own weight rows.
#[derive(Clone, Copy)]
struct Columns {
    out: *mut f32,
    m: usize,
    n: usize,
}

// SAFETY: tasks write disjoint columns (`products` hands each a distinct range of weight rows), and the buffer
// outlives them (`map_tasks` returns after every task).
unsafe impl Send for Columns {}
unsafe impl Sync for Columns {}

/// `out[b][j] = dot(w_j, x_b)` for the weight rows `rows`, whose tiles start at `w` (`rows.start` is a multiple of
/// [`TILE_ROWS`]), and every activation row `x_b`.
fn tiles_times_x<T: Lanes>(w: &[T], k: usize, x: &[f32], rows: Range<usize>, out: Columns, path: Path) {
    let m = out.m;
    debug_assert!(w.len() >= rows.len().div_ceil(TILE_ROWS) * TILE_ROWS * k && x.len() == m * k);
    debug_assert!(rows.end <= out.n && rows.start.is_multiple_of(TILE_ROWS));
    for (t, j0) in rows.clone().step_by(TILE_ROWS).enumerate() {
        let tile = &w[t * TILE_ROWS * k..(t + 1) * TILE_ROWS * k];
        let real = TILE_ROWS.min(rows.end - j0);
        for (start, len) in crate::few_rows::row_blocks(m, PASS_ROWS) {
            let mut sums = [[0f32; PASS_ROWS]; TILE_ROWS];
            let xb = &x[start * k..(start + len) * k];
            match path {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `matmul_t` refuses a path the CPU lacks (`Path::available`), so this one has AVX-512F;
                // the tile holds 3 k values and `xb` len k values, as the kernel reads.
                Path::Avx512 => unsafe { x86::tile(tile.as_ptr(), k, xb.as_ptr(), len, &mut sums) },
                _ => tile_portable(tile, k, xb, len, &mut sums),
            }
            for (i, row_sums) in sums.iter().enumerate().take(real) {
                for (r, &sum) in row_sums.iter().enumerate().take(len) {
                    // SAFETY: row `start + r < m` and column `j0 + i < rows.end <= n`: inside the (m, n) output,
                    // in a column only this task writes (`Columns`).
                    unsafe { *out.out.add((start + r) * out.n + j0 + i) = sum };
                }
            }
        }
    }
}

/// The tile's dot products in the AVX-512 kernel's order, with plain arithmetic (any CPU; tests hold the AVX-512
/// kernel to it bit for bit).
fn tile_portable<T: Lanes>(tile: &[T], k: usize, x: &[f32], b: usize, sums: &mut [[f32; PASS_ROWS]; TILE_ROWS]) {
    let body = k - k % 16;
    for (i, row_sums) in sums.iter_mut().enumerate() {
        for (r, sum) in row_sums.iter_mut().enumerate().take(b) {
            let xr = &x[r * k..(r + 1) * k];
            let mut lanes = [0f32; 16];
            for c in (0..body).step_by(16) {
                let wv = &tile[c * TILE_ROWS + 16 * i..][..16];
                for l in 0..16 {
                    lanes[l] = wv[l].widen().mul_add(xr[c + l], lanes[l]);
                }
            }
            *sum = sum_lanes_in_order(&lanes);
            let tail = &tile[body * TILE_ROWS + i * (k - body)..][..k - body];
            for (t, wt) in tail.iter().enumerate() {
                *sum = wt.widen().mul_add(xr[body + t], *sum);
            }
        }
    }
}

/// The sum of 16 lanes in lane_sums.rs's order: within each group of four `(x0 + x2) + (x1 + x3)`, then across
/// the four groups `(g0 + g1) + (g2 + g3)`.
fn sum_lanes_in_order(lanes: &[f32; 16]) -> f32 {
    let group = |g: usize| {
        let x = &lanes[4 * g..4 * g + 4];
        (x[0] + x[2]) + (x[1] + x[3])
    };
    (group(0) + group(1)) + (group(2) + group(3))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PASS_ROWS, TILE_ROWS};
    use crate::few_rows::Lanes;
    use crate::lane_sums::sum_lanes_of_16;

    /// How many tiles ahead the kernel prefetches into L2. `ideator bench matmul --rows 8`, Zen 4, three rounds
    /// alternating: 4 or 8 tiles ahead took 27-30 ms per step, 2 tiles 31-36 ms, 1 tile 28-39 ms, none 53-74 ms.
    const PREFETCH_TILES: usize = 4;

    /// Expands to a `match` over the pass height `$b` (1..=8) that calls `tile_with::<_, b>`.
    macro_rules! dispatch_pass {
        ($b:expr, $($arg:expr),*) => {
            match $b {
                1 => tile_with::<_, 1>($($arg),*),
                2 => tile_with::<_, 2>($($arg),*),
                3 => tile_with::<_, 3>($($arg),*),
                4 => tile_with::<_, 4>($($arg),*),
                5 => tile_with::<_, 5>($($arg),*),
                6 => tile_with::<_, 6>($($arg),*),
                7 => tile_with::<_, 7>($($arg),*),
                8 => tile_with::<_, 8>($($arg),*),
                _ => unreachable!("passes are at most {PASS_ROWS} rows"),
            }
        };
    }

    /// The products of one tile (3 weight rows at `w`, packed) and `b` activation rows at `x` (`k` apart) into
    /// `sums[i][r]`.
    ///
    /// # Safety
    /// AVX-512F; `w` holds a whole tile (`3 k` values) and `x` `b k` values; `1 <= b <= 8`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<T: Lanes>(
        w: *const T,
        k: usize,
        x: *const f32,
        b: usize,
        sums: &mut [[f32; PASS_ROWS]; TILE_ROWS],
    ) {
        dispatch_pass!(b, w, k, x, sums)
    }

    // Indexed loops: the accumulator grid is indexed by weight row and activation row at once.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_with<T: Lanes, const B: usize>(
        w: *const T,
        k: usize,
        x: *const f32,
        sums: &mut [[f32; PASS_ROWS]; TILE_ROWS],
    ) {
        let body = k - k % 16;
        let mut acc = [[_mm512_setzero_ps(); B]; TILE_ROWS];
        let mut c = 0;
        while c < body {
            let run = w.add(c * TILE_ROWS);
            let mut wv = [_mm512_setzero_ps(); TILE_ROWS];
            for (i, v) in wv.iter_mut().enumerate() {
                // Into L2, tiles ahead: the stream arrives while this tile's FMAs run. `wrapping_add`: past the
                // matrix's end the address is never dereferenced (a prefetch does not fault).
                _mm_prefetch::<_MM_HINT_T1>(run.wrapping_add(PREFETCH_TILES * TILE_ROWS * k + 16 * i) as *const i8);
                *v = T::load16(run.add(16 * i));
            }
            for r in 0..B {
                let xv = _mm512_loadu_ps(x.add(r * k + c));
                for i in 0..TILE_ROWS {
                    acc[i][r] = _mm512_fmadd_ps(wv[i], xv, acc[i][r]);
                }
            }
            c += 16;
        }
        // Reduced 16 at a time in lane_sums.rs's order: the same bits as one at a time.
        let count = TILE_ROWS * B;
        let mut reduced = [0f32; 32];
        for group in (0..count).step_by(16) {
            let v = std::array::from_fn(|j| {
                let at = group + j;
                if at < count {
                    acc[at / B][at % B]
                } else {
                    _mm512_setzero_ps()
                }
            });
            _mm512_storeu_ps(reduced.as_mut_ptr().add(group), sum_lanes_of_16(v));
        }
        let tail = w.add(body * TILE_ROWS);
        for i in 0..TILE_ROWS {
            for r in 0..B {
                let mut sum = reduced[i * B + r];
                for t in 0..k - body {
                    sum = (*tail.add(i * (k - body) + t)).widen().mul_add(*x.add(r * k + body + t), sum);
                }
                sums[i][r] = sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::few_rows::tests::random;

    /// k below, at and off the vector width; n not a multiple of the tile height or of a task's rows.
    const SHAPES: [(usize, usize); 6] = [(576, 301), (37, 513), (16, 1), (5, 7), (1536, 64), (24, 482)];

    /// A plain triple loop in f64 over `w` widened to f32.
    fn plain(x: &Tensor, w: &Tensor) -> Vec<Vec<f32>> {
        let (x, w) = (x.to_vec2::<f32>().unwrap(), w.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());
        x.iter()
            .map(|xr| {
                w.iter().map(|wj| xr.iter().zip(wj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32).collect()
            })
            .collect()
    }

    #[test]
    fn packing_keeps_every_value_and_unpacks_to_the_weight() {
        for &(k, n) in &SHAPES {
            let w = random((n, k), 3 + k as u64);
            let f32_copy = PackedWeight::pack(&w, DType::F32).unwrap();
            assert_eq!(f32_copy.dims(), (n, k));
            assert_eq!(f32_copy.bytes(), n.div_ceil(TILE_ROWS) * TILE_ROWS * k * 4);
            assert_eq!(f32_copy.unpacked_f32().unwrap().to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
            let bf16_copy = PackedWeight::pack(&w, DType::BF16).unwrap();
            assert_eq!(bf16_copy.dtype(), DType::BF16);
            let rounded = w.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(
                bf16_copy.unpacked_f32().unwrap().to_vec2::<f32>().unwrap(),
                rounded.to_vec2::<f32>().unwrap()
            );
        }
    }

    /// Every path against the plain product, and against the few-rows kernel on the row-major weight bit for bit
    /// (the same dot products in the same order), f32 and bf16, batches 1 to 33.
    #[test]
    fn every_path_equals_a_plain_matmul_and_the_few_rows_kernels_bits_for_batches_1_to_33() {
        let paths: Vec<Path> = Path::available().into_iter().filter(|p| *p != Path::Avx2).collect();
        for &(k, n) in &SHAPES {
            let w = random((n, k), 7 + k as u64);
            for dtype in [DType::F32, DType::BF16] {
                let packed = PackedWeight::pack(&w, dtype).unwrap();
                let row_major = w.to_dtype(dtype).unwrap();
                for m in 1..=33 {
                    let x = random((m, k), m as u64 + 100 * k as u64);
                    let expected = plain(&x, &row_major);
                    for &path in &paths {
                        let ours = packed.matmul_t(&x, path).unwrap().to_vec2::<f32>().unwrap();
                        for (g, e) in ours.iter().flatten().zip(expected.iter().flatten()) {
                            assert!(
                                (g - e).abs() <= 1e-5 * (k as f32).sqrt(),
                                "{path:?} {dtype:?} m {m} k {k}: {g} vs {e}"
                            );
                        }
                        if path == Path::Avx512 || path == Path::Portable && Path::available().contains(&Path::Avx512)
                        {
                            let few_rows = crate::few_rows::matmul_t_with(&x, &row_major, Path::Avx512).unwrap();
                            assert_eq!(
                                ours,
                                few_rows.to_vec2::<f32>().unwrap(),
                                "{path:?} {dtype:?} m {m} k {k} n {n}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_in_a_batch_and_at_any_thread_count() {
        let (k, n) = (581, 1000);
        let w = random((n, k), 3);
        let packed = PackedWeight::pack(&w, DType::F32).unwrap();
        let x = random((13, k), 4);
        let path = Path::detect();
        let batch = packed.matmul_t(&x, path).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in batch.iter().enumerate() {
            let alone = packed.matmul_t(&x.narrow(0, r, 1).unwrap(), path).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(row, &alone[0], "row {r}");
        }
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let parallel = pool.install(|| packed.matmul_t(&x, path).unwrap().to_vec2::<f32>().unwrap());
            assert_eq!(parallel, batch, "{threads} threads");
        }
    }

    #[test]
    fn bad_inputs_are_refused_with_a_reason() {
        let w = random((8, 4), 1);
        let packed = PackedWeight::pack(&w, DType::F32).unwrap();
        let err = packed.matmul_t(&random((2, 5), 2), Path::Portable).unwrap_err().to_string();
        assert!(err.contains("(8, 4)") && err.contains("[2, 5]"), "{err}");
        let err = PackedWeight::pack(&w.to_dtype(DType::BF16).unwrap(), DType::F32).unwrap_err().to_string();
        assert!(err.contains("f32 tensor"), "{err}");
        assert!(PackedWeight::pack(&w, DType::F16).is_err());
    }
}
