//! The AVX2 + FMA kernel of decode attention, for head dimensions 64 and 128: the AVX-512 kernel's structure
//! (`avx512.rs`) on 8-lane vectors and the 16 ymm registers AVX2 has. Scores are dot products of one query with 8
//! keys at a time, their lanes reduced together ([`sum_lanes_of_8`]); the softmax's exponentials are computed 8 at a
//! time ([`exp8`]); and the weighted sum of values keeps blocks of up to 3 queries' outputs in registers through a
//! block of values ([`key_block`]), a slice of 32 columns at a time (a whole row of 64 is 8 registers, so only one
//! query's would fit beside it), saved and reloaded between blocks and slices (exact). Same results as the portable
//! kernel up to float rounding (tested against the composed ops).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{key_block, DecodeAttention, Row};
use crate::lane_sums::sum_lanes_of_8;
use crate::vector_exp::exp8;

/// Keys scored together: one per lane of the vector [`sum_lanes_of_8`] returns.
const KEY_STEP: usize = 8;

/// How many key rows ahead of the step in use the kernel asks the cache for: two steps, the distance of the AVX-512
/// kernel's one 16-key step.
const KEY_PREFETCH_ROWS: usize = 2 * KEY_STEP;

/// How many value rows ahead of the one in use the kernel asks the cache for (as the AVX-512 kernel).
const PREFETCH_ROWS: usize = 8;

/// Output columns of a query held in registers by [`weighted_values`]: 4 registers.
const SLICE: usize = 32;

/// Most queries whose output slices [`weighted_values`] holds at once: 3 x 4 accumulators, the 3 queries' weights and
/// one chunk of the value row fill the 16 registers.
const QUERY_BLOCK: usize = 3;

/// Whether the kernel covers `head_dim` (it is 8 lanes times a register count, 8 or 16, and a whole number of
/// [`SLICE`]s).
pub(super) fn covers(head_dim: usize) -> bool {
    matches!(head_dim, 64 | 128)
}

/// [`super::attend`] with AVX2 + FMA, for a head dimension [`covers`] accepts: a task's `rows` into `out` (rows,
/// queries, head_dim).
///
/// # Safety
/// The CPU supports AVX2 and FMA, and `covers(head_dim)` for the rows' head dimension.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn attend(op: &DecodeAttention, rows: &[Row], out: &mut [f32]) {
    match rows[0].keys.head_dim() {
        64 => attend_with::<8>(op, rows, out),
        _ => attend_with::<16>(op, rows, out),
    }
}

/// Attention of a task's rows with head dimension `8 C`, a [`key_block`] of keys (then of values) at a time through
/// every row, so that rows sharing a prompt find its block in L1 after the first.
///
/// # Safety
/// AVX2 and FMA; the rows' head dimension is `8 C`.
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_with<const C: usize>(op: &DecodeAttention, rows: &[Row], out: &mut [f32]) {
    let (total, hd) = (op.total, 8 * C);
    let queries = rows[0].q.len() / hd;
    let (per_row, block) = (queries * total, key_block(hd));
    let mut scores = vec![0f32; rows.len() * per_row];
    for j0 in (0..total).step_by(block) {
        let keys = j0..(j0 + block).min(total);
        for (row, s) in rows.iter().zip(scores.chunks_exact_mut(per_row)) {
            scores_of_keys::<C>(op, row, keys.clone(), s);
        }
    }
    let inv_sums: Vec<f32> = scores.chunks_exact_mut(total).map(|s| 1.0 / softmax_numerators(s)).collect();
    out.fill(0.0);
    for j0 in (0..total).step_by(block) {
        let values = j0..(j0 + block).min(total);
        for ((row, s), o) in rows.iter().zip(scores.chunks_exact(per_row)).zip(out.chunks_exact_mut(queries * hd)) {
            let mut start = 0;
            while start < queries {
                let len = (queries - start).min(QUERY_BLOCK);
                for col in (0..hd).step_by(SLICE) {
                    let (s, o, values) = (&s[start * total..], &mut o[start * hd + col..], values.clone());
                    match len {
                        3 => weighted_values::<C, 3>(row, s, total, values, col, o),
                        2 => weighted_values::<C, 2>(row, s, total, values, col, o),
                        _ => weighted_values::<C, 1>(row, s, total, values, col, o),
                    }
                }
                start += len;
            }
        }
    }
    for (o, inv) in out.chunks_exact_mut(hd).zip(inv_sums) {
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// The scaled, masked scores of keys `keys` (a range starting at a multiple of 8) into `scores` (queries, total).
/// Keys go 8 at a time: for each query the 8 keys' lane products stay in 8 registers and one transposing reduction
/// ([`sum_lanes_of_8`]) turns them into the 8 scores, rather than a horizontal sum per score on a dependency chain.
/// A last partial step is scored as a whole one whose missing keys repeat its last key, keeping the real keys'
/// scores.
///
/// # Safety
/// AVX2 and FMA; the row's head dimension is `8 C`, `scores` holds (queries, total) and `keys` ends by `total`.
#[target_feature(enable = "avx2,fma")]
unsafe fn scores_of_keys<const C: usize>(op: &DecodeAttention, row: &Row, keys: Range<usize>, scores: &mut [f32]) {
    let (total, new, hd) = (op.total, op.new, 8 * C);
    let queries = row.q.len() / hd;
    debug_assert!(keys.start.is_multiple_of(KEY_STEP) && keys.end <= total && scores.len() >= queries * total);
    let q = row.q.as_ptr();
    let scale = _mm256_set1_ps(op.scale);
    let body = keys.end - keys.len() % KEY_STEP;
    for j0 in (keys.start..body).step_by(KEY_STEP) {
        // A loop rather than `array::from_fn`, whose closure was left a call per key.
        let mut kps = [std::ptr::null(); KEY_STEP];
        for (j, kp) in kps.iter_mut().enumerate() {
            *kp = row.keys.get(j0 + j).as_ptr();
        }
        for kp in kps {
            for line in 0..hd / 16 {
                _mm_prefetch::<_MM_HINT_T0>(kp.wrapping_add(KEY_PREFETCH_ROWS * hd + 16 * line) as *const i8);
            }
        }
        for i in 0..queries {
            let dots = dots_of_8::<C>(q.add(i * hd), &kps);
            let mask = _mm256_loadu_ps(row.mask.as_ptr().add((i % new) * total + j0));
            _mm256_storeu_ps(scores.as_mut_ptr().add(i * total + j0), _mm256_fmadd_ps(dots, scale, mask));
        }
    }
    let last = keys.end - body;
    if last > 0 {
        let kps: [*const f32; KEY_STEP] = std::array::from_fn(|j| row.keys.get(body + j.min(last - 1)).as_ptr());
        for i in 0..queries {
            let mut dots = [0f32; KEY_STEP];
            _mm256_storeu_ps(dots.as_mut_ptr(), dots_of_8::<C>(q.add(i * hd), &kps));
            let (s, mask) = (&mut scores[i * total + body..][..last], &row.mask[(i % new) * total + body..][..last]);
            for ((s, d), m) in s.iter_mut().zip(dots).zip(mask) {
                *s = d.mul_add(op.scale, *m);
            }
        }
    }
}

/// The dot products of query `q` (`8 C` values) with the 8 keys at `kps`, key `j`'s in lane `j`. The query goes a
/// chunk of 8 at a time through all 8 keys, so that the 8 keys' lane products and the chunk take 9 registers
/// whatever `C`, and the keys' chunks are read as operands of the FMAs.
///
/// # Safety
/// AVX2 and FMA; `q` and every pointer of `kps` can be read for `8 C` values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dots_of_8<const C: usize>(q: *const f32, kps: &[*const f32; KEY_STEP]) -> __m256 {
    let q0 = _mm256_loadu_ps(q);
    let mut products: [__m256; KEY_STEP] = std::array::from_fn(|j| _mm256_mul_ps(q0, _mm256_loadu_ps(kps[j])));
    for c in 1..C {
        let qc = _mm256_loadu_ps(q.add(8 * c));
        for (p, kp) in products.iter_mut().zip(kps) {
            *p = _mm256_fmadd_ps(qc, _mm256_loadu_ps(kp.add(8 * c)), *p);
        }
    }
    sum_lanes_of_8(products)
}

/// Replaces each score `s` by `exp(s - max)` and returns their sum (candle's softmax before its division). The last
/// partial vector is read and written under a lane mask, its missing lanes taking no part in the max or the sum.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_numerators(s: &mut [f32]) -> f32 {
    let n = s.len();
    let body = n - n % 8;
    let p = s.as_mut_ptr();
    let tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((n % 8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let live = _mm256_castsi256_ps(tail);
    let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in (0..body).step_by(8) {
        max = _mm256_max_ps(max, _mm256_loadu_ps(p.add(c)));
    }
    let last = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), _mm256_maskload_ps(p.add(body), tail), live);
    let max = _mm256_set1_ps(max_of_lanes(_mm256_max_ps(max, last)));
    let mut sum = _mm256_setzero_ps();
    for c in (0..body).step_by(8) {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(c)), max));
        _mm256_storeu_ps(p.add(c), e);
        sum = _mm256_add_ps(sum, e);
    }
    let e = _mm256_and_ps(exp8(_mm256_sub_ps(last, max)), live);
    _mm256_maskstore_ps(p.add(body), tail, e);
    sum_of_lanes(_mm256_add_ps(sum, e))
}

/// The largest of the 8 lanes of `v`.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn max_of_lanes(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// The sum of the 8 lanes of `v`.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn sum_of_lanes(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `out[b][..SLICE] += sum_{j in values} scores[b][j] v_j[col..col + SLICE]` for `B` queries (scores `total` apart,
/// outputs `8 C` apart, `out` starting at column `col` of the first), their output slices held in `4 B` registers
/// while each value row's slice is read once, a chunk at a time through the `B` queries (holding the whole slice
/// too would spill accumulators at `B` = 3). The first slice (`col` 0) prefetches whole value rows [`PREFETCH_ROWS`]
/// ahead; the later slices of the block find them in L1.
///
/// # Safety
/// AVX2 and FMA; the row's head dimension is `8 C`, `col + SLICE <= 8 C`, `scores` holds `B` queries' scores of
/// the values and `out` their outputs from column `col`.
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_values<const C: usize, const B: usize>(
    row: &Row,
    scores: &[f32],
    total: usize,
    values: Range<usize>,
    col: usize,
    out: &mut [f32],
) {
    const R: usize = SLICE / 8;
    let hd = 8 * C;
    debug_assert!(
        scores.len() >= (B - 1) * total + values.end && out.len() >= (B - 1) * hd + SLICE && col + SLICE <= hd
    );
    let o = out.as_mut_ptr();
    let mut acc: [[__m256; R]; B] =
        std::array::from_fn(|b| std::array::from_fn(|c| _mm256_loadu_ps(o.add(b * hd + 8 * c))));
    let s = scores.as_ptr();
    for j in values {
        let vp = row.values.get(j).as_ptr();
        if col == 0 {
            for line in 0..hd / 16 {
                _mm_prefetch::<_MM_HINT_T0>(vp.wrapping_add(PREFETCH_ROWS * hd + 16 * line) as *const i8);
            }
        }
        let weights: [__m256; B] = std::array::from_fn(|b| _mm256_set1_ps(*s.add(b * total + j)));
        for c in 0..R {
            let v = _mm256_loadu_ps(vp.add(col + 8 * c));
            for (acc_b, w) in acc.iter_mut().zip(&weights) {
                acc_b[c] = _mm256_fmadd_ps(*w, v, acc_b[c]);
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        for (c, a) in acc_b.iter().enumerate() {
            _mm256_storeu_ps(o.add(b * hd + 8 * c), *a);
        }
    }
}
