//! The elementwise passes of the vocabulary-blocked log-probabilities over one row of one block of logits: the
//! forward's statistics (maximum, sum of exponentials, and their first moment, for the log-sum-exp and the
//! entropy) and the backward's gradient with respect to the logits. One pass each over the row, 16 lanes at a
//! time with AVX-512F (the vector `exp` of vector_exp.rs), plain loops otherwise.

use crate::attention::rows::RowPath;

/// One row's statistics over some logits `z` (a block, or several merged): `max`, `sum = sum_j e^(z_j - max)` and
/// `moment = sum_j e^(z_j - max) (z_j - max)`. Then `lse = max + ln sum` and the entropy of `softmax(z)` is
/// `ln sum - moment / sum`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RowStats {
    pub(crate) max: f32,
    pub(crate) sum: f64,
    pub(crate) moment: f64,
}

impl RowStats {
    /// The statistics of no logits.
    pub(crate) const EMPTY: RowStats = RowStats { max: f32::NEG_INFINITY, sum: 0.0, moment: 0.0 };

    /// The statistics of the union of both sets of logits (the online softmax's rescaling, with the moment
    /// shifted too: `sum_j e^(z_j - M) (z_j - M) = e^(m - M) (moment + (m - M) sum)` for a new maximum `M`).
    pub(crate) fn merge(self, other: RowStats) -> RowStats {
        let max = self.max.max(other.max);
        let rescaled = |s: RowStats| {
            if s.sum == 0.0 {
                return (0.0, 0.0);
            }
            let shift = s.max as f64 - max as f64;
            let scale = shift.exp();
            (scale * s.sum, scale * (s.moment + shift * s.sum))
        };
        let (a_sum, a_moment) = rescaled(self);
        let (b_sum, b_moment) = rescaled(other);
        RowStats { max, sum: a_sum + b_sum, moment: a_moment + b_moment }
    }

    /// `log sum_j e^(z_j)`.
    pub(crate) fn log_sum_exp(&self) -> f64 {
        self.max as f64 + self.sum.ln()
    }

    /// The entropy of `softmax(z)` in nats.
    pub(crate) fn entropy(&self) -> f64 {
        self.sum.ln() - self.moment / self.sum
    }
}

/// The statistics of the logits `z` (at least one).
pub(crate) fn stats(path: RowPath, z: &[f32]) -> RowStats {
    assert!(!z.is_empty(), "statistics of an empty row");
    let max = path.max(z);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `RowPath::detect` returns this variant only when the CPU has AVX-512F.
        RowPath::Avx512 => unsafe { avx512::stats(z, max) },
        RowPath::Portable => {
            let (mut sum, mut moment) = (0.0f64, 0.0f64);
            for &v in z {
                let d = v - max;
                let e = d.exp();
                sum += e as f64;
                moment += (e * d) as f64;
            }
            RowStats { max, sum, moment }
        }
    }
}

/// The gradient of a loss `g_logp log p_y + g_entropy H` with respect to the logits `z` of the row, in place: with
/// `d_j = z_j - lse` and `p_j = e^(d_j)`, `dz_j = -p_j (g_logp + g_entropy (d_j + H))`, plus `g_logp` at `target`
/// when it lies in this block (`Some(index into z)`). From `d log p_y / dz_j = [j = y] - p_j` and
/// `dH / dz_j = -p_j (log p_j + H)`.
pub(crate) fn logit_gradient(
    path: RowPath,
    z: &mut [f32],
    lse: f32,
    entropy: f32,
    (g_logp, g_entropy): (f32, f32),
    target: Option<usize>,
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `stats`.
        RowPath::Avx512 => unsafe { avx512::logit_gradient(z, lse, entropy, g_logp, g_entropy) },
        RowPath::Portable => {
            for v in z.iter_mut() {
                let d = *v - lse;
                *v = -d.exp() * (g_logp + g_entropy * (d + entropy));
            }
        }
    }
    if let Some(t) = target {
        z[t] += g_logp;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::RowStats;
    use crate::attention::rows::avx512::tail_mask;
    use crate::vector_exp::exp;

    /// Lanes are summed in f32 over this many values, then added into f64 (keeps long rows' sums exact to ~1e-7).
    const F32_RUN: usize = 512;

    /// [`super::stats`]; `max` is the largest of `z`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn stats(z: &[f32], max: f32) -> RowStats {
        let m = _mm512_set1_ps(max);
        let (mut sum, mut moment) = (0.0f64, 0.0f64);
        for run in z.chunks(F32_RUN) {
            let (mut s, mut t) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let chunks = run.chunks_exact(16);
            let tail = chunks.remainder();
            for c in chunks {
                let d = _mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), m);
                let e = exp(d);
                s = _mm512_add_ps(s, e);
                t = _mm512_fmadd_ps(e, d, t);
            }
            if !tail.is_empty() {
                let mask = tail_mask(tail.len());
                let d = _mm512_maskz_sub_ps(mask, _mm512_maskz_loadu_ps(mask, tail.as_ptr()), m);
                let e = _mm512_maskz_mov_ps(mask, exp(d));
                s = _mm512_add_ps(s, e);
                t = _mm512_fmadd_ps(e, d, t);
            }
            sum += _mm512_reduce_add_ps(s) as f64;
            moment += _mm512_reduce_add_ps(t) as f64;
        }
        RowStats { max, sum, moment }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn logit_gradient(z: &mut [f32], lse: f32, entropy: f32, g_logp: f32, g_entropy: f32) {
        let (l, h) = (_mm512_set1_ps(lse), _mm512_set1_ps(entropy));
        let (gl, ge) = (_mm512_set1_ps(g_logp), _mm512_set1_ps(g_entropy));
        let grad = |d: __m512| {
            let coef = _mm512_fmadd_ps(ge, _mm512_add_ps(d, h), gl);
            _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(exp(d), coef))
        };
        let body = z.len() - z.len() % 16;
        let (head, tail) = z.split_at_mut(body);
        for c in head.chunks_exact_mut(16) {
            let d = _mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), l);
            _mm512_storeu_ps(c.as_mut_ptr(), grad(d));
        }
        if !tail.is_empty() {
            let mask = tail_mask(tail.len());
            let d = _mm512_maskz_sub_ps(mask, _mm512_maskz_loadu_ps(mask, tail.as_ptr()), l);
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, grad(d));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits with a wide range and one large value.
    fn logits(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 37 + seed * 11) % 101) as f32 * 0.23 - 9.0 + if i == len / 3 { 14.0 } else { 0.0 })
            .collect()
    }

    /// log-sum-exp and entropy of `z` in f64.
    fn exact(z: &[f32]) -> (f64, f64) {
        let max = z.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let entropy = -z.iter().map(|&v| (v as f64 - lse).exp() * (v as f64 - lse)).sum::<f64>();
        (lse, entropy)
    }

    #[test]
    fn merged_block_statistics_give_the_exact_log_sum_exp_and_entropy() {
        for path in RowPath::all() {
            for (len, block) in [(1, 1), (17, 17), (300, 64), (1000, 333), (5000, 5000), (49_152, 4096)] {
                let z = logits(len, len);
                let merged = z.chunks(block).fold(RowStats::EMPTY, |acc, b| acc.merge(stats(path, b)));
                let (lse, entropy) = exact(&z);
                assert!((merged.log_sum_exp() - lse).abs() < 1e-5 * (1.0 + lse.abs()), "{path:?} {len}: lse");
                assert!((merged.entropy() - entropy).abs() < 1e-5 * (1.0 + entropy), "{path:?} {len}: entropy");
            }
        }
    }

    #[test]
    fn logit_gradient_matches_f64_formula() {
        for path in RowPath::all() {
            for (len, target) in [(1, Some(0)), (16, None), (45, Some(44)), (300, Some(7))] {
                let z = logits(len, 3);
                let (lse, entropy) = exact(&z);
                let (gl, ge) = (0.7f32, -0.3f32);
                let mut g = z.clone();
                logit_gradient(path, &mut g, lse as f32, entropy as f32, (gl, ge), target);
                for (j, (&got, &zj)) in g.iter().zip(&z).enumerate() {
                    let d = zj as f64 - lse;
                    let p = d.exp();
                    let want = -p * (gl as f64 + ge as f64 * (d + entropy))
                        + if target == Some(j) { gl as f64 } else { 0.0 };
                    assert!(
                        (got as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                        "{path:?} {len} [{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
