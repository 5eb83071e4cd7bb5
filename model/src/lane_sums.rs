//! Horizontal sums of AVX-512 and AVX2 vectors in one fixed order, for the kernels that reduce many dot products'
//! lanes.
//!
//! [`sum_lanes_of_16`] turns 16 vectors into the vector of their sums in 45 shuffles and adds, where one
//! `_mm512_reduce_add_ps` per vector costs about 8 on a dependency chain. [`sum_lanes`] sums a single vector in the
//! same order, so that a dot product reduced alone or among 15 others gives the same bits (the few-rows kernel's
//! outputs must not depend on the other rows of the batch). The order, per vector: within each 128-bit lane
//! `(x0 + x2) + (x1 + x3)`, then across the four lanes `(l0 + l1) + (l2 + l3)`. [`sum_lanes_of_8`] does the same
//! for 8 AVX2 vectors of two 128-bit lanes, `((x0 + x2) + (x1 + x3)) + ((x4 + x6) + (x5 + x7))`.

use std::arch::x86_64::*;

/// Lane `j` of the result is the sum of the 16 lanes of `v[j]`: 45 shuffles and adds for 16 sums. First pairs and
/// then quadruples of vectors are folded within each 128-bit lane (leaving, per 128-bit lane, the partial sums of
/// four vectors side by side), then the 128-bit lanes are folded across the four quadruples.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn sum_lanes_of_16(v: [__m512; 16]) -> __m512 {
    // [a0+a2, b0+b2, a1+a3, b1+b3] per 128-bit lane.
    let pair = |a: __m512, b: __m512| _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    // Per 128-bit lane: [sum a, sum b, sum c, sum d] of that lane's four elements.
    let quad = |ab: __m512, cd: __m512| {
        _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(ab, cd), _mm512_shuffle_ps::<0b11_10_11_10>(ab, cd))
    };
    let w: [__m512; 4] = std::array::from_fn(|g| {
        let b = 4 * g;
        quad(pair(v[b], v[b + 1]), pair(v[b + 2], v[b + 3]))
    });
    // Adds 128-bit lanes 0 + 1 and 2 + 3 of `x` and of `y`: [x01, x23, y01, y23].
    let fold = |x: __m512, y: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
    };
    fold(fold(w[0], w[1]), fold(w[2], w[3]))
}

/// Lane `j` of the result is the sum of the 8 lanes of `v[j]`: 21 shuffles and adds for 8 sums, where a horizontal
/// sum per vector costs about 6 on a dependency chain. As in [`sum_lanes_of_16`], pairs and then quadruples of
/// vectors are folded within each 128-bit lane (leaving, per 128-bit lane, the partial sums of four vectors side by
/// side), then the two 128-bit lanes of the two quadruples are added.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn sum_lanes_of_8(v: [__m256; 8]) -> __m256 {
    // [a0+a2, b0+b2, a1+a3, b1+b3] per 128-bit lane.
    let pair = |a: __m256, b: __m256| _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    // Per 128-bit lane: [sum a, sum b, sum c, sum d] of that lane's four elements.
    let quad = |ab: __m256, cd: __m256| {
        _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(ab, cd), _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd))
    };
    let low = quad(pair(v[0], v[1]), pair(v[2], v[3]));
    let high = quad(pair(v[4], v[5]), pair(v[6], v[7]));
    // [low.l0, high.l0] + [low.l1, high.l1].
    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(low, high), _mm256_permute2f128_ps::<0x31>(low, high))
}

/// The sum of the 16 lanes of `v`, in [`sum_lanes_of_16`]'s order (same bits as its lane for `v`).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn sum_lanes(v: __m512) -> f32 {
    // Within each 128-bit lane: [x0 + x2, x1 + x3, x2 + x0, x3 + x1], then (x0 + x2) + (x1 + x3) in every element.
    let t = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
    let t = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
    // Across lanes: l0 + l1 (and l2 + l3), then (l0 + l1) + (l2 + l3).
    let t = _mm512_add_ps(t, _mm512_shuffle_f32x4::<0b10_11_00_01>(t, t));
    let t = _mm512_add_ps(t, _mm512_shuffle_f32x4::<0b01_00_11_10>(t, t));
    _mm512_cvtss_f32(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_lanes_of_16_gives_each_vectors_sum_in_its_lane() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        // Small integers: every order of summation gives the exact sum, so any misplaced lane shows.
        let values: Vec<f32> = (0..256).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let mut got = [0f32; 16];
        // SAFETY: AVX-512F was detected above; every load reads 16 of the 256 values.
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(values.as_ptr().add(16 * j)));
            _mm512_storeu_ps(got.as_mut_ptr(), sum_lanes_of_16(v));
        }
        for (j, g) in got.iter().enumerate() {
            assert_eq!(*g, values[16 * j..16 * (j + 1)].iter().sum::<f32>(), "lane {j}");
        }
    }

    #[test]
    fn one_vectors_sum_has_the_bits_of_its_lane_among_16() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        // Values of very different sizes, so that another order of the additions rounds differently.
        let values: Vec<f32> =
            (0..256u32).map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) as f32 - 8e6) * 1.37e-3).collect();
        let mut together = [0f32; 16];
        // SAFETY: AVX-512F was detected above; every load reads 16 of the 256 values.
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(values.as_ptr().add(16 * j)));
            _mm512_storeu_ps(together.as_mut_ptr(), sum_lanes_of_16(v));
            for (j, want) in together.iter().enumerate() {
                assert_eq!(sum_lanes(v[j]).to_bits(), want.to_bits(), "vector {j}");
            }
        }
        // The order matters for these values: a sequential sum differs for some vector.
        let sequential = |j: usize| values[16 * j..16 * (j + 1)].iter().sum::<f32>();
        assert!((0..16).any(|j| sequential(j).to_bits() != together[j].to_bits()));
    }

    #[test]
    fn sum_lanes_of_8_gives_each_vectors_sum_in_its_lane() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // Small integers: every order of summation gives the exact sum, so any misplaced lane shows.
        let values: Vec<f32> = (0..64).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let mut got = [0f32; 8];
        // SAFETY: AVX2 was detected above; every load reads 8 of the 64 values.
        unsafe {
            let v: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(values.as_ptr().add(8 * j)));
            _mm256_storeu_ps(got.as_mut_ptr(), sum_lanes_of_8(v));
        }
        for (j, g) in got.iter().enumerate() {
            assert_eq!(*g, values[8 * j..8 * (j + 1)].iter().sum::<f32>(), "lane {j}");
        }
    }

    #[test]
    fn sum_lanes_of_8_adds_in_the_documented_order() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // Values of very different sizes (scaled by 2^-5 to 2^5), so that another order of the additions rounds
        // differently.
        let values: Vec<f32> = (0..64u32)
            .map(|i| {
                let x = ((i.wrapping_mul(2_654_435_761) >> 8) as f32 - 8e6) * 1.37e-3;
                x * 2f32.powi((i * 3 % 11) as i32 - 5)
            })
            .collect();
        let mut got = [0f32; 8];
        // SAFETY: AVX2 was detected above; every load reads 8 of the 64 values.
        unsafe {
            let v: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(values.as_ptr().add(8 * j)));
            _mm256_storeu_ps(got.as_mut_ptr(), sum_lanes_of_8(v));
        }
        let ordered = |x: &[f32]| ((x[0] + x[2]) + (x[1] + x[3])) + ((x[4] + x[6]) + (x[5] + x[7]));
        for (j, g) in got.iter().enumerate() {
            assert_eq!(g.to_bits(), ordered(&values[8 * j..8 * (j + 1)]).to_bits(), "lane {j}");
        }
        // The order matters for these values: a sequential sum differs for some vector.
        let sequential = |j: usize| values[8 * j..8 * (j + 1)].iter().sum::<f32>();
        assert!((0..8).any(|j| sequential(j).to_bits() != got[j].to_bits()));
    }
}
