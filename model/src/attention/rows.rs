//! The elementwise passes of training attention over one row of scores: the softmax of the forward pass and the
//! probabilities the backward pass recomputes from the saved log-sum-exp. Each row's first `n` entries are the
//! keys its query sees (causal), the rest are set to zero so that the products that follow can run over the whole
//! block.
//!
//! With AVX-512F the passes run 16 lanes at a time with the vector `exp` of vector_exp.rs; otherwise plain loops
//! with libm's `expf`. Composed candle ops did the same work in five separate passes over memory, with a scalar
//! libm call per value (a profile of the quickstart's warm-up: 10.6% of its time in `expf` alone).

/// Which implementation runs the passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowPath {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl RowPath {
    /// AVX-512F when this CPU has it.
    pub(crate) fn detect() -> RowPath {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return RowPath::Avx512;
        }
        RowPath::Portable
    }

    /// In place: `row[..n] = softmax(row[..n])`, `row[n..] = 0`. Returns the log-sum-exp `max + ln(sum exp(x -
    /// max))` of `row[..n]`, which the backward pass needs. `n` must be at least 1 and at most `row.len()`.
    pub(crate) fn softmax(self, row: &mut [f32], n: usize) -> f32 {
        assert!(n >= 1 && n <= row.len(), "softmax over {n} of {} entries", row.len());
        let max = self.max(&row[..n]);
        let sum = self.exp_shifted(&mut row[..n], max);
        let inv = 1.0 / sum;
        row[..n].iter_mut().for_each(|x| *x *= inv);
        row[n..].fill(0.0);
        max + sum.ln()
    }

    /// In place: `row[..n] = exp(row[..n] - lse)` (the probabilities again, from the forward's log-sum-exp),
    /// `row[n..] = 0`.
    pub(crate) fn probabilities(self, row: &mut [f32], n: usize, lse: f32) {
        assert!(n <= row.len(), "probabilities over {n} of {} entries", row.len());
        self.exp_shifted(&mut row[..n], lse);
        row[n..].fill(0.0);
    }

    /// The largest of `x` (`-inf` for none).
    pub(crate) fn max(self, x: &[f32]) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` returns this variant only when the CPU has AVX-512F.
            RowPath::Avx512 => unsafe { avx512::max(x) },
            RowPath::Portable => x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
        }
    }

    /// Every path this CPU can run: the portable one and the detected one, for tests to compare.
    #[cfg(test)]
    pub(crate) fn all() -> Vec<RowPath> {
        let mut paths = vec![RowPath::Portable];
        if RowPath::detect() != RowPath::Portable {
            paths.push(RowPath::detect());
        }
        paths
    }

    /// `x = exp(x - shift)` in place; returns the sum of the new values.
    fn exp_shifted(self, x: &mut [f32], shift: f32) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `max`.
            RowPath::Avx512 => unsafe { avx512::exp_shifted(x, shift) },
            RowPath::Portable => x.iter_mut().fold(0.0, |sum, v| {
                *v = (*v - shift).exp();
                sum + *v
            }),
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// The lanes of the first `len <= 16` values.
    pub(crate) fn tail_mask(len: usize) -> __mmask16 {
        ((1u32 << len) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max(x: &[f32]) -> f32 {
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        let chunks = x.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            m = _mm512_max_ps(m, _mm512_loadu_ps(c.as_ptr()));
        }
        if !tail.is_empty() {
            let mask = tail_mask(tail.len());
            m = _mm512_mask_max_ps(m, mask, m, _mm512_maskz_loadu_ps(mask, tail.as_ptr()));
        }
        _mm512_reduce_max_ps(m)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        let body = x.len() - x.len() % 16;
        let (head, tail) = x.split_at_mut(body);
        for c in head.chunks_exact_mut(16) {
            let e = crate::vector_exp::exp(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s));
            _mm512_storeu_ps(c.as_mut_ptr(), e);
            sum = _mm512_add_ps(sum, e);
        }
        if !tail.is_empty() {
            let mask = tail_mask(tail.len());
            let e = crate::vector_exp::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, tail.as_ptr()), s));
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, e);
            sum = _mm512_mask_add_ps(sum, mask, sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores with a wide range, including a large positive value (the shift must keep exp finite).
    fn scores(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.7 + if i == len / 2 { 60.0 } else { 0.0 }).collect()
    }

    #[test]
    fn softmax_matches_f64_and_zeros_the_hidden_keys() {
        for path in RowPath::all() {
            for (len, n) in [(1, 1), (5, 3), (16, 16), (17, 17), (40, 33), (300, 129), (300, 1)] {
                let mut row = scores(len);
                let x: Vec<f64> = row[..n].iter().map(|&v| v as f64).collect();
                let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
                let lse = path.softmax(&mut row, n);
                assert!((lse as f64 - (max + sum.ln())).abs() < 1e-5 * (1.0 + max.abs()), "{path:?} lse {lse}");
                for (j, &p) in row.iter().enumerate() {
                    let want = if j < n { (x[j] - max).exp() / sum } else { 0.0 };
                    assert!((p as f64 - want).abs() < 1e-6 * want + 1e-12, "{path:?} {len}/{n} p[{j}] {p} vs {want}");
                }
            }
        }
    }

    #[test]
    fn probabilities_invert_the_log_sum_exp() {
        for path in RowPath::all() {
            for (len, n) in [(20, 20), (40, 27), (7, 0)] {
                let mut soft = scores(len);
                let mut again = soft.clone();
                let lse = if n > 0 { RowPath::Portable.softmax(&mut soft, n) } else { 0.0 };
                path.probabilities(&mut again, n, lse);
                for (j, (&a, &b)) in again.iter().zip(&soft).enumerate() {
                    let b = if n == 0 { 0.0 } else { b };
                    assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-12, "{path:?} {len}/{n} p[{j}]: {a} vs {b}");
                }
            }
        }
    }
}
