//! The element-wise math of the fused kernels (GELU and its gradient, the softmax of the logits' rows) as plain
//! loops over f32 slices that the compiler turns into vector instructions.
//!
//! libm's `expf` is a call per value and does not vectorise: in a `tiny` run it was 7% of the samples (perf, one
//! thread), under GELU's forward and backward and the causal softmax (now the model crate's attention kernel).
//! Here `e^x` is a polynomial written in scalar form ([`exp`]), inlined into each loop, and every loop is compiled
//! three times (AVX-512F, AVX2 + FMA, the baseline) and picked at run time. The arithmetic is separate multiplies
//! and adds (Rust never contracts them into FMAs), so the three versions give the same bits.

/// `e^x`, Cephes' `expf` (S. Moshier): `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6 polynomial for `e^r`
/// (relative error about 1e-7, within 2 ulp of libm: tested) and `2^n` written into the exponent bits. `x` is
/// clamped to [-87, 88], where `2^n` stays a normal f32 (so `e^x` below `e^-87`, 1.6e-38, comes out as that);
/// NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    // ln 2 in two parts, so that `n ln 2` is subtracted without rounding error (Cody-Waite).
    let r = x - n * 0.693_359_4;
    let r = r - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    let e_r = p * (r * r) + r + 1.0;
    // 2^n from n's bits: adding 1.5 * 2^23 puts the integer n + 127 (in [1, 254] after the clamp) in the low
    // mantissa bits, and the shift moves it into the exponent while the rest falls off. (`n as i32` would be a
    // saturating conversion, which the compiler does one lane at a time.)
    let biased = (n + (127.0 + 12_582_912.0)).to_bits();
    e_r * f32::from_bits(biased << 23)
}

/// sqrt(2 / pi) and the cubic coefficient of GELU's tanh approximation.
pub(crate) const K: f32 = 0.797_884_6;
pub(crate) const C: f32 = 0.044_715;

/// The logistic sigmoid of GELU's argument, `s(2k (x + c x^3))`: `x * s` is GELU, since
/// `0.5 x (1 + tanh(u)) = x sigmoid(2u)`.
#[inline(always)]
fn gelu_gate(x: f32) -> f32 {
    1.0 / (1.0 + exp(-2.0 * K * (x + C * x * x * x)))
}

/// Compiles `$body` (a function of `$args`) for AVX-512F, for AVX2 + FMA and for the baseline, and calls the best
/// version this CPU runs.
macro_rules! vectorised {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F; the body is safe code.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA; the body is safe code.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

vectorised! {
    /// GELU (tanh approximation) of each `x` into `y` (same length).
    fn gelu(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * gelu_gate(x);
        }
    }
}

vectorised! {
    /// `out = g * d/dx gelu(x) = g (s + x s (1 - s) 2k (1 + 3c x^2))` with `s` the gate, elementwise (same lengths).
    fn gelu_grad(x: &[f32], g: &[f32], out: &mut [f32]) {
        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
            let s = gelu_gate(x);
            *o = g * (s + x * s * (1.0 - s) * 2.0 * K * (1.0 + 3.0 * C * x * x));
        }
    }
}

/// Lanes of the row reductions: 16 f32, one AVX-512 register (two AVX2 ones). Partial sums in 16 lanes let the
/// compiler vectorise a sum it may not reorder.
const W: usize = 16;

vectorised! {
    /// `ln sum_j e^(x_j)` of each `v`-wide row of `x` into `out` (one value per row), as
    /// `max + ln sum_j e^(x_j - max)` so that no exponential overflows.
    fn log_partitions(x: &[f32], v: usize, out: &mut [f32]) {
        for (row, out) in x.chunks_exact(v).zip(out.iter_mut()) {
            let (body, tail) = row.split_at(row.len() / W * W);
            let mut lanes_max = [f32::NEG_INFINITY; W];
            for chunk in body.chunks_exact(W) {
                for (m, &x) in lanes_max.iter_mut().zip(chunk) {
                    *m = m.max(x);
                }
            }
            let max = lanes_max.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut lanes_sum = [0f32; W];
            for chunk in body.chunks_exact(W) {
                for (s, &x) in lanes_sum.iter_mut().zip(chunk) {
                    *s += exp(x - max);
                }
            }
            let sum = lanes_sum.iter().sum::<f32>() + tail.iter().map(|&x| exp(x - max)).sum::<f32>();
            *out = sum.ln() + max;
        }
    }
}

vectorised! {
    /// The softmax of each `v`-wide row of `x`, scaled per row: `out[i, j] = scale[i] e^(x[i, j] - log_z[i])`,
    /// with `log_z` the rows' log-partitions ([`log_partitions`]).
    fn scaled_softmax(x: &[f32], v: usize, log_z: &[f32], scale: &[f32], out: &mut [f32]) {
        for (((row, out), &log_z), &scale) in x.chunks_exact(v).zip(out.chunks_exact_mut(v)).zip(log_z).zip(scale) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = scale * exp(x - log_z);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_range_and_saturates_outside_it() {
        let mut worst = (0, 0.0);
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let d = ulps(exp(x), x.exp());
            if d > worst.0 {
                worst = (d, x);
            }
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 2e-38);
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn row_softmax_loops_match_their_f64_definitions_on_ragged_widths() {
        for v in [1, 11, 16, 17, 256] {
            let rows = 3;
            // Spread over [-80, 80): large enough that a naive sum of exponentials would overflow f32.
            let x: Vec<f32> = (0..rows * v).map(|i| ((i * 7919) % 1601) as f32 * 0.1 - 80.0).collect();
            let mut log_z = vec![f32::NAN; rows];
            log_partitions(&x, v, &mut log_z);
            let scale = [1.0, -0.5, 2.0];
            let mut p = vec![f32::NAN; rows * v];
            scaled_softmax(&x, v, &log_z, &scale, &mut p);
            for r in 0..rows {
                let row: Vec<f64> = x[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let want = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                assert!((log_z[r] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "row {r} of width {v}");
                for (j, x) in row.iter().enumerate() {
                    let want = scale[r] as f64 * (x - want).exp();
                    let got = p[r * v + j] as f64;
                    assert!((got - want).abs() <= 1e-5 * want.abs() + 1e-30, "p[{r}, {j}] = {got}, want {want}");
                }
            }
        }
    }

    #[test]
    fn the_loops_match_their_scalar_definitions_on_every_length() {
        for n in [0, 1, 15, 16, 17, 100, 1000] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2001) as f32 * 0.006 - 6.0).collect();
            let g: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 * 0.1 - 0.8).collect();
            let mut y = vec![f32::NAN; n];
            gelu(&x, &mut y);
            for (&x, &y) in x.iter().zip(&y) {
                let want = 0.5 * x * (1.0 + (K * (x + C * x * x * x)).tanh());
                assert!((y - want).abs() <= 2e-6 * (1.0 + want.abs()), "gelu({x}) = {y}, want {want}");
            }
            let mut d = vec![f32::NAN; n];
            gelu_grad(&x, &g, &mut d);
            for ((&x, &g), &d) in x.iter().zip(&g).zip(&d) {
                // Central difference of the tanh form, in f64.
                let f = |x: f64| 0.5 * x * (1.0 + (K as f64 * (x + C as f64 * x * x * x)).tanh());
                let want = g as f64 * (f(x as f64 + 1e-4) - f(x as f64 - 1e-4)) / 2e-4;
                assert!((d as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "gelu'({x}) * {g} = {d}, want {want}");
            }
        }
    }
}
