//! `e^x` on 16 f32 lanes with AVX-512F and on 8 with AVX2 + FMA, for the CPU kernels that exponentiate many values
//! at once (decode attention's softmax, the sampler's normaliser). libm's scalar `expf` costs a call per value.

use std::arch::x86_64::*;

/// `e^x` for 16 lanes, `x <= 0` (a softmax's shifted scores; `-inf` gives 0): Cephes' `expf` (S. Moshier), i.e.
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r` (relative error about 1e-7) and the
/// exponent applied with `vscalefps`. Inputs below -104 (where `e^x` is 0 in f32) are clamped there first.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 in two parts, so `n ln 2` is subtracted without rounding error (Cody-Waite).
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let e_r = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(e_r, n)
}

/// [`exp`] on 8 lanes with AVX2 + FMA: the same reduction and polynomial, so the same values where both are normal
/// floats. AVX2 has no `vscalefps`, so `2^n` is built from exponent bits, in two factors `2^(n - n/2) 2^(n/2)`: for
/// `n` down to -150 each factor stays a normal float, and the product rounds into the subnormal range once, as
/// `vscalefps` does.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-104.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let e_r = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let n = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32::<1>(n);
    let pow2 = |e: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(e, _mm256_set1_epi32(127))));
    _mm256_mul_ps(_mm256_mul_ps(e_r, pow2(_mm256_sub_epi32(n, half))), pow2(half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_on_softmax_inputs() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.0053).collect();
        xs.extend([0.0, -1e-30, -87.0, -88.0, -103.0, -104.0, -200.0, f32::NEG_INFINITY]);
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F was detected above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = x.exp();
                let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
                assert!(ulp <= 2 || (want < 1e-37 && g < 1e-37), "exp({x}) = {g}, libm {want}");
            }
        }
    }

    #[test]
    fn exp8_is_within_two_ulp_of_libm_on_softmax_inputs_and_gives_exps_bits() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let with_avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let mut xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.0053).collect();
        xs.extend([0.0, -1e-30, -87.0, -87.5, -88.0, -95.0, -103.0, -103.9, -104.0, -200.0, f32::NEG_INFINITY]);
        for chunk in xs.chunks(8) {
            let mut lanes = [0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(lanes.as_ptr()))) };
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = x.exp();
                let ulp = (want.to_bits() as i64 - g.to_bits() as i64).abs();
                // Subnormal results too: bit distance counts their ulps the same way.
                assert!(ulp <= 2, "exp8({x}) = {g}, libm {want}");
                assert!(g >= 0.0 && g.is_finite(), "exp8({x}) = {g}");
            }
            if with_avx512 {
                let mut wide = [0f32; 16];
                wide[..8].copy_from_slice(&lanes);
                let mut got16 = [0f32; 16];
                // SAFETY: AVX-512F was detected above.
                unsafe { _mm512_storeu_ps(got16.as_mut_ptr(), exp(_mm512_loadu_ps(wide.as_ptr()))) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&got16[..8]), "exp8 and exp differ on {chunk:?}");
            }
        }
    }
}
