//! A measurement, not part of the library: would decoding's products stream the weights faster if each tile of
//! weight rows were stored as one contiguous run (the rows interleaved 16 floats at a time) instead of being read
//! from several rows of the plain row-major matrix at once?
//!
//! The few-rows kernel (`few_rows.rs`) reads 4 weight rows side by side and multiplies them by up to 4 activation
//! rows per pass, so 8 rows take two passes over each tile. On Zen 4 (issue 16) it streams the weights at 16-18 GB/s at
//! 4 rows, where one sequential stream reaches 25-29 GB/s. This program times, in one process and alternating, over
//! SmolLM2-135M's shapes (30 layers of q, k, v, o, gate, up, down and the 49,152-row head; random f32 weights, 540
//! MB), for `m` activation rows:
//! - `shipped`: the library's few-rows AVX-512 kernel through `few_rows::matmul_t_with`, as decoding calls it;
//! - `plain 4x4`: the shipped kernel's scheme (4 weight rows x 4 activation rows, the weight two tiles ahead
//!   prefetched into L2, one pass per 4 activation rows);
//! - `packed 4x4`: the same tile with the 4 rows interleaved in memory, so the weights are one sequential stream;
//! - `packed 3x8`: 3 interleaved weight rows x up to 8 activation rows (24 accumulators), one pass per 8 rows.
//!
//! The three variants here compute the same dot products in the same order (checked bit for bit before timing; the
//! shipped kernel's lane reduction differs, so it is checked to 1e-3). Run with
//! `cargo run --release -p ideator-model --example packed_tiles -- 8` (the argument: rows, 4, 8 or 16; default 8), on an
//! otherwise idle machine.

use std::time::Instant;

/// SmolLM2-135M's decode products as (output rows n, inner size k): every projection of 30 layers, then the head.
fn shapes() -> Vec<(usize, usize)> {
    let layer = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let mut all: Vec<(usize, usize)> = (0..30).flat_map(|_| layer).collect();
    all.push((49152, 576));
    all
}

/// `w` (n, k) row-major with its rows in tiles of `r`: tile t holds rows r t .. r t + r - 1 as [k / 16][r][16].
fn interleave(w: &[f32], n: usize, k: usize, r: usize) -> Vec<f32> {
    let mut packed = Vec::with_capacity(n * k);
    for tile in 0..n / r {
        for c in (0..k).step_by(16) {
            for row in tile * r..tile * r + r {
                packed.extend_from_slice(&w[row * k + c..row * k + c + 16]);
            }
        }
    }
    packed
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    /// Where weight row `i` of the tile starting at `tile` has its 16 floats at column `c`.
    #[derive(Clone, Copy)]
    pub enum Layout {
        /// Row-major: `tile + i k + c`.
        Plain,
        /// Interleaved by `R` rows: `tile + c R + 16 i`.
        Packed,
    }

    /// `out[b n + j] = dot(w_j, x_b)` for all `n` rows of `w` and `m` rows of `x`, in tiles of `R` weight rows and
    /// passes of up to `B` activation rows; the weight two tiles ahead is prefetched into L2.
    ///
    /// # Safety
    /// AVX-512F; `w` holds `n k` floats in `layout`, `x` `m k`, `out` `m n`; `n` is a multiple of `R`, `k` of 16,
    /// `m` of `B`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn product<const R: usize, const B: usize>(
        w: &[f32],
        (n, k, m): (usize, usize, usize),
        x: &[f32],
        out: &mut [f32],
        layout: Layout,
    ) {
        let at = |tile: *const f32, i: usize, c: usize| match layout {
            Layout::Plain => tile.wrapping_add(i * k + c),
            Layout::Packed => tile.wrapping_add(c * R + i * 16),
        };
        for j in (0..n).step_by(R) {
            let tile = w.as_ptr().add(j * k);
            for start in (0..m).step_by(B) {
                let mut acc = [[_mm512_setzero_ps(); B]; R];
                for c in (0..k).step_by(16) {
                    let mut wv = [_mm512_setzero_ps(); R];
                    for (i, v) in wv.iter_mut().enumerate() {
                        _mm_prefetch::<_MM_HINT_T1>(at(tile, i, c).wrapping_add(2 * R * k) as *const i8);
                        *v = _mm512_loadu_ps(at(tile, i, c));
                    }
                    for b in 0..B {
                        let xv = _mm512_loadu_ps(x.as_ptr().add((start + b) * k + c));
                        for (row, v) in acc.iter_mut().zip(&wv) {
                            row[b] = _mm512_fmadd_ps(*v, xv, row[b]);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (b, v) in row.iter().enumerate() {
                        out[(start + b) * n + j + i] = _mm512_reduce_add_ps(*v);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use kernels::{product, Layout};
    let m: usize = std::env::args().nth(1).map_or(8, |a| a.parse().expect("rows: 4, 8 or 16"));
    assert!(std::arch::is_x86_feature_detected!("avx512f"), "this measurement needs AVX-512F");
    assert!([4, 8, 16].contains(&m), "rows: 4, 8 or 16 (whole passes of 4 and 8 rows)");
    let shapes = shapes();
    let mut state = 1u64;
    let mut random = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let plain: Vec<Vec<f32>> = shapes.iter().map(|&(n, k)| (0..n * k).map(|_| random()).collect()).collect();
    let by4: Vec<Vec<f32>> = shapes.iter().zip(&plain).map(|(&(n, k), w)| interleave(w, n, k, 4)).collect();
    let by3: Vec<Vec<f32>> = shapes.iter().zip(&plain).map(|(&(n, k), w)| interleave(w, n, k, 3)).collect();
    let x: Vec<f32> = (0..m * 1536).map(|_| random()).collect();
    let mut out = vec![0f32; m * 49152];
    type Run<'a> = (&'a str, &'a [Vec<f32>], fn(&[f32], (usize, usize, usize), &[f32], &mut [f32]));
    let variants: [Run; 3] = [
        // SAFETY (all three): AVX-512F is checked above; every shape's n is a multiple of 3 and 4, k of 16, and m of
        // the pass height (4, 8 or 16 rows; asserted above); the buffers are sized for the largest shape.
        ("plain 4x4", &plain, |w, s, x, o| unsafe { product::<4, 4>(w, s, x, o, Layout::Plain) }),
        ("packed 4x4", &by4, |w, s, x, o| unsafe { product::<4, 4>(w, s, x, o, Layout::Packed) }),
        ("packed 3x8", &by3, |w, s, x, o| unsafe {
            if s.2 % 8 == 0 {
                product::<3, 8>(w, s, x, o, Layout::Packed)
            } else {
                product::<3, 4>(w, s, x, o, Layout::Packed)
            }
        }),
    ];
    // The same products from every variant, bit for bit (each dot product accumulates in the same order).
    let (n, k) = shapes[6];
    let results: Vec<Vec<f32>> = variants
        .iter()
        .map(|(_, weights, run)| {
            run(&weights[6], (n, k, m), &x[..m * k], &mut out);
            out[..m * n].to_vec()
        })
        .collect();
    assert!(results.iter().all(|r| r == &results[0]), "the variants disagree");
    let bytes: usize = shapes.iter().map(|&(n, k)| n * k * 4).sum();
    let flops = 2.0 * (bytes / 4) as f64 * m as f64;
    // The shipped kernel through its public entry (with its output allocation and layout pass, as decoding calls it).
    let device = candle_core::Device::Cpu;
    let tensors: Vec<candle_core::Tensor> = shapes
        .iter()
        .zip(&plain)
        .map(|(&(n, k), w)| candle_core::Tensor::from_slice(w, (n, k), &device).expect("weight tensor"))
        .collect();
    let xs: Vec<candle_core::Tensor> = [576, 1536]
        .iter()
        .map(|&k| candle_core::Tensor::from_slice(&x[..m * k], (m, k), &device).expect("activation tensor"))
        .collect();
    let shipped = ideator_model::few_rows::matmul_t_with(&xs[0], &tensors[0], ideator_model::few_rows::Path::Avx512)
        .expect("the shipped kernel")
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("its values");
    let (n0, k0) = shapes[0];
    variants[2].2(&by3[0], (n0, k0, m), &x[..m * k0], &mut out);
    let most = shipped.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(most < 1e-3, "the shipped kernel and the packed one differ by {most}");
    for round in 0..5 {
        let mut line = format!("rows {m}, round {round}:");
        let start = Instant::now();
        for (w, &(_, k)) in tensors.iter().zip(&shapes) {
            let x = &xs[usize::from(k == 1536)];
            ideator_model::few_rows::matmul_t_with(x, w, ideator_model::few_rows::Path::Avx512).expect("product");
        }
        let s = start.elapsed().as_secs_f64();
        line +=
            &format!("  shipped {:.1} ms {:.1} GB/s {:.0} GFLOP/s", s * 1e3, bytes as f64 / s / 1e9, flops / s / 1e9);
        for (name, weights, run) in &variants {
            let start = Instant::now();
            for (&(n, k), w) in shapes.iter().zip(weights.iter()) {
                run(w, (n, k, m), &x[..m * k], &mut out);
            }
            let s = start.elapsed().as_secs_f64();
            line += &format!(
                "  {name} {:.1} ms {:.1} GB/s {:.0} GFLOP/s",
                s * 1e3,
                bytes as f64 / s / 1e9,
                flops / s / 1e9
            );
        }
        println!("{line}");
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    eprintln!("packed_tiles measures x86-64 AVX-512 kernels only");
}
