//! `e^x` on 16 f32 lanes with AVX-512F, for the CPU kernels that exponentiate many values at once (decode
//! attention's softmax, the sampler's normaliser). libm's scalar `expf` costs a call per value.

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
}
