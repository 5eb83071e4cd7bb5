//! The AVX-512 kernel of decode attention, for head dimensions 64 and 128 (every model we load has one of them):
//! a key or value row lives in `C` zmm registers, scores are 16-lane dot products reduced 16 at a time, the
//! softmax's exponentials are computed 16 at a time, and the weighted sum of values keeps blocks of queries' outputs
//! in registers through a block of values ([`key_block`]), saved and reloaded between blocks (exact). Same results
//! as the portable kernel up to float rounding (tested against the composed ops).

use std::arch::x86_64::*;
use std::ops::Range;

use super::{key_block, DecodeAttention, Row};
use crate::lane_sums::sum_lanes_of_16;
use crate::vector_exp::exp;

/// How many key (value) rows ahead of the one in use the kernel asks the cache for.
const PREFETCH_ROWS: usize = 8;

/// Whether the kernel covers `head_dim` (it is 16 lanes times a register count, 4 or 8).
pub(super) fn covers(head_dim: usize) -> bool {
    matches!(head_dim, 64 | 128)
}

/// [`super::attend`] with AVX-512F, for a head dimension [`covers`] accepts: a task's `rows` into `out` (rows,
/// queries, head_dim).
///
/// # Safety
/// The CPU supports AVX-512F, and `covers(head_dim)` for the rows' head dimension.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend(op: &DecodeAttention, rows: &[Row], out: &mut [f32]) {
    match rows[0].keys.head_dim() {
        64 => attend_with::<4>(op, rows, out),
        _ => attend_with::<8>(op, rows, out),
    }
}

/// Attention of a task's rows with head dimension `16 C`, a [`key_block`] of keys (then of values) at a time through
/// every row, so that rows sharing a prompt find its block in L1 after the first.
#[target_feature(enable = "avx512f")]
unsafe fn attend_with<const C: usize>(op: &DecodeAttention, rows: &[Row], out: &mut [f32]) {
    let (total, hd) = (op.total, 16 * C);
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
    // Query blocks whose outputs fit 16 registers, next to the C registers of a value row.
    let query_block = 16 / C;
    for j0 in (0..total).step_by(block) {
        let values = j0..(j0 + block).min(total);
        for ((row, s), o) in rows.iter().zip(scores.chunks_exact(per_row)).zip(out.chunks_exact_mut(queries * hd)) {
            let mut start = 0;
            while start < queries {
                let len = (queries - start).min(query_block);
                let (s, o, values) = (&s[start * total..], &mut o[start * hd..], values.clone());
                match len {
                    4 => weighted_values::<C, 4>(row, s, total, values, o),
                    3 => weighted_values::<C, 3>(row, s, total, values, o),
                    2 => weighted_values::<C, 2>(row, s, total, values, o),
                    _ => weighted_values::<C, 1>(row, s, total, values, o),
                }
                start += len;
            }
        }
    }
    for (o, inv) in out.chunks_exact_mut(hd).zip(inv_sums) {
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// The scaled, masked scores of keys `keys` (a range starting at a multiple of 16) into `scores` (queries, total).
/// Keys go 16 at a time: for each query the 16 keys' lane products stay in 16 registers and one transposing
/// reduction ([`sum_lanes_of_16`]) turns them into the 16 scores, where a horizontal sum per score (about 8
/// shuffles and adds each, on a dependency chain) was half of attention's time in a batch-8 decode step (perf,
/// Zen 4). A last partial block goes one key at a time.
#[target_feature(enable = "avx512f")]
unsafe fn scores_of_keys<const C: usize>(op: &DecodeAttention, row: &Row, keys: Range<usize>, scores: &mut [f32]) {
    let (total, new, hd) = (op.total, op.new, 16 * C);
    let queries = row.q.len() / hd;
    debug_assert!(keys.start.is_multiple_of(16) && keys.end <= total && scores.len() >= queries * total);
    let q = row.q.as_ptr();
    let scale = _mm512_set1_ps(op.scale);
    let body = keys.end - keys.len() % 16;
    for j0 in (keys.start..body).step_by(16) {
        let kps: [*const f32; 16] = std::array::from_fn(|j| row.keys.get(j0 + j).as_ptr());
        for kp in kps {
            for c in 0..C {
                _mm_prefetch::<_MM_HINT_T0>(kp.wrapping_add(16 * hd + 16 * c) as *const i8);
            }
        }
        for i in 0..queries {
            let qi: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(q.add(i * hd + 16 * c)));
            let products: [__m512; 16] = std::array::from_fn(|j| {
                let mut acc = _mm512_mul_ps(qi[0], _mm512_loadu_ps(kps[j]));
                for (c, qc) in qi.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(*qc, _mm512_loadu_ps(kps[j].add(16 * c)), acc);
                }
                acc
            });
            let mask = _mm512_loadu_ps(row.mask.as_ptr().add((i % new) * total + j0));
            let s = _mm512_fmadd_ps(sum_lanes_of_16(products), scale, mask);
            _mm512_storeu_ps(scores.as_mut_ptr().add(i * total + j0), s);
        }
    }
    for j in body..keys.end {
        let kp = row.keys.get(j).as_ptr();
        let k: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(kp.add(16 * c)));
        for i in 0..queries {
            let qi = q.add(i * hd);
            let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qi), k[0]);
            for (c, kc) in k.iter().enumerate().skip(1) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(qi.add(16 * c)), *kc, acc);
            }
            scores[i * total + j] = _mm512_reduce_add_ps(acc) * op.scale + row.mask[(i % new) * total + j];
        }
    }
}

/// Replaces each score `s` by `exp(s - max)` and returns their sum (candle's softmax before its division).
#[target_feature(enable = "avx512f")]
unsafe fn softmax_numerators(s: &mut [f32]) -> f32 {
    let n = s.len();
    let tail = (1u32 << (n % 16)) as u16 - 1;
    let body = n - n % 16;
    let p = s.as_mut_ptr();
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in (0..body).step_by(16) {
        max = _mm512_max_ps(max, _mm512_loadu_ps(p.add(c)));
    }
    max = _mm512_mask_max_ps(max, tail, max, _mm512_maskz_loadu_ps(tail, p.add(body)));
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
    let mut sum = _mm512_setzero_ps();
    for c in (0..body).step_by(16) {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(p.add(c)), max));
        _mm512_storeu_ps(p.add(c), e);
        sum = _mm512_add_ps(sum, e);
    }
    let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p.add(body)), max));
    _mm512_mask_storeu_ps(p.add(body), tail, e);
    sum = _mm512_mask_add_ps(sum, tail, sum, e);
    _mm512_reduce_add_ps(sum)
}

/// `out[b] += sum_{j in values} scores[b][j] v_j` for `B` queries (scores `total` apart, outputs `16 C` apart), their
/// outputs held in `B x C` registers while each value row of the range is read once.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values<const C: usize, const B: usize>(
    row: &Row,
    scores: &[f32],
    total: usize,
    values: Range<usize>,
    out: &mut [f32],
) {
    debug_assert!(scores.len() >= (B - 1) * total + values.end && out.len() >= B * 16 * C);
    let o = out.as_mut_ptr();
    let mut acc: [[__m512; C]; B] =
        std::array::from_fn(|b| std::array::from_fn(|c| _mm512_loadu_ps(o.add((b * C + c) * 16))));
    let s = scores.as_ptr();
    for j in values {
        let vp = row.values.get(j).as_ptr();
        let mut v = [_mm512_setzero_ps(); C];
        for (c, vc) in v.iter_mut().enumerate() {
            _mm_prefetch::<_MM_HINT_T0>(vp.wrapping_add(PREFETCH_ROWS * 16 * C + 16 * c) as *const i8);
            *vc = _mm512_loadu_ps(vp.add(16 * c));
        }
        for (b, acc_b) in acc.iter_mut().enumerate() {
            let weight = _mm512_set1_ps(*s.add(b * total + j));
            for (a, vc) in acc_b.iter_mut().zip(&v) {
                *a = _mm512_fmadd_ps(weight, *vc, *a);
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        for (c, a) in acc_b.iter().enumerate() {
            _mm512_storeu_ps(o.add((b * C + c) * 16), *a);
        }
    }
}
