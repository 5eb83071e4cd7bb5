//! SwiGLU's gate, `silu(gate) * up`, in one pass on the CPU: detached for decoding, and differentiable for the
//! trainable forward, whose backward is one pass too.
//!
//! candle computes `silu` with libm's scalar `expf` per element, then multiplies in a second op and a second
//! buffer: at batch 8 that was about 2% of a decode step (perf, Zen 4). Its backward is worse: about ten
//! whole-tensor ops for `silu`'s derivative (negate, `exp`, add, reciprocal, ...) and two for the product, each a
//! fresh (tokens x intermediate) buffer. Here the forward is one AVX-512 pass with the 16-lane exponential of
//! [`crate::vector_exp`], and the backward one pass that writes both gradients. Elsewhere (no AVX-512, other
//! devices and dtypes) the composed ops run; the fused passes are tested against them.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_op::{for_each_chunk_mut, input_slice, with_f32_slice};
use crate::device::{kernel_for, Kernel};
use crate::Result;

/// Elements per task when the pool has several threads: 64 KB of each input, enough to pay for the hand-off.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) * up` elementwise, without gradient; `gate` and `up` of one shape.
///
/// # Errors
/// Shapes that differ, or a failing candle op.
pub(crate) fn silu_mul_detached(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_applies(gate, up) {
        return Ok(gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluMul)?);
    }
    Ok((gate.silu()? * up)?)
}

/// `silu(gate) * up` elementwise, differentiable (`silu(x) = x sigmoid(x)`, SwiGLU: Shazeer 2020); `gate` and
/// `up` of one shape. The gradients are `d_up = g silu(gate)` and `d_gate = g up sigmoid(gate) (1 + gate (1 -
/// sigmoid(gate)))` for the output's gradient `g`.
///
/// # Errors
/// Shapes that differ, or a failing candle op.
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_applies(gate, up) {
        return Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)?);
    }
    Ok((gate.silu()? * up)?)
}

fn fused_applies(gate: &Tensor, up: &Tensor) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && gate.shape() == up.shape()
            && kernel_for(&[gate, up]) == Kernel::CpuFast
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (gate, up);
        false
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gate, up) = (input_slice("silu-mul", gs, gl)?, input_slice("silu-mul", us, ul)?);
        if gate.len() != up.len() {
            candle_core::bail!("silu-mul: gate {:?} and up {:?} differ in shape", gl.shape(), ul.shape());
        }
        let mut out = vec![0f32; gate.len()];
        for_each_chunk_mut(&mut out, CHUNK, |i, out| {
            let at = i * CHUNK..i * CHUNK + out.len();
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `fused_applies` sends work here only when the CPU has AVX-512F; the slices have one length.
            unsafe {
                x86::silu_mul(&gate[at.clone()], &up[at], out)
            };
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (at, out);
                unreachable!("the fused SwiGLU is built on x86-64 only (`fused_applies`)");
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        if gate.shape() != up.shape() || gate.shape() != grad.shape() {
            candle_core::bail!(
                "silu-mul backward: gate {:?}, up {:?}, gradient {:?}",
                gate.shape(),
                up.shape(),
                grad.shape()
            );
        }
        let (d_gate, d_up) = with_f32_slice(gate, |gate| {
            with_f32_slice(up, |up| with_f32_slice(&grad, |grad| gradients(gate, up, grad)))
        })???;
        let (d_gate, d_up) = (
            Tensor::from_vec(d_gate, gate.shape(), &Device::Cpu)?,
            Tensor::from_vec(d_up, up.shape(), &Device::Cpu)?,
        );
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// `(d_gate, d_up)` of `silu(gate) * up` for the output's gradient `grad`, in chunks over the pool.
///
/// # Panics
/// When the three slices differ in length.
fn gradients(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(gate.len() == up.len() && gate.len() == grad.len(), "silu-mul backward: lengths differ");
    let n = gate.len();
    let (mut d_gate, mut d_up) = (vec![0f32; n], vec![0f32; n]);
    let task = |i: usize, (d_gate, d_up): (&mut [f32], &mut [f32])| {
        let at = i * CHUNK..i * CHUNK + d_gate.len();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the op is only built after `fused_applies` found AVX-512F; the five slices have one length.
        unsafe {
            x86::silu_mul_grad(&gate[at.clone()], &up[at.clone()], &grad[at], d_gate, d_up)
        };
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (at, d_gate, d_up);
            unreachable!("the fused SwiGLU is built on x86-64 only (`fused_applies`)");
        }
    };
    if rayon::current_num_threads() > 1 {
        d_gate.par_chunks_mut(CHUNK).zip(d_up.par_chunks_mut(CHUNK)).enumerate().for_each(|(i, c)| task(i, c));
    } else {
        d_gate.chunks_mut(CHUNK).zip(d_up.chunks_mut(CHUNK)).enumerate().for_each(|(i, c)| task(i, c));
    }
    (d_gate, d_up)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::attention::rows::avx512::tail_mask;
    use crate::vector_exp::exp;

    /// `out = silu(gate) * up` with `silu(x) = x sigmoid(x)`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the slices have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for (c, mask) in steps(gate.len()) {
            let x = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(c));
            let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(c));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), mask, _mm512_mul_ps(_mm512_mul_ps(x, sigmoid(x)), u));
        }
    }

    /// `(start, lanes)` of each 16-lane step over `n` values, the last step masked to the tail.
    fn steps(n: usize) -> impl Iterator<Item = (usize, __mmask16)> {
        (0..n).step_by(16).map(move |c| (c, tail_mask((n - c).min(16))))
    }

    /// `sigmoid(x)` of 16 lanes with the exponential only of `-|x|` (the range [`exp`] covers): `1 / (1 + t)`
    /// for `x >= 0`, `t / (1 + t)` below, `t = e^-|x|`.
    #[target_feature(enable = "avx512f")]
    unsafe fn sigmoid(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        // -|x|: the sign bit set.
        let t = exp(_mm512_or_ps(x, _mm512_set1_ps(-0.0)));
        _mm512_div_ps(_mm512_mask_blend_ps(negative, one, t), _mm512_add_ps(one, t))
    }

    /// The gradients of `silu(gate) * up` for the output's gradient `grad`: `d_up = grad silu(gate)` and
    /// `d_gate = grad up s (1 + gate (1 - s))` with `s = sigmoid(gate)`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the slices have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul_grad(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        for (c, mask) in steps(gate.len()) {
            let x = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(c));
            let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(c));
            let g = _mm512_maskz_loadu_ps(mask, grad.as_ptr().add(c));
            let s = sigmoid(x);
            let d_silu = _mm512_mul_ps(s, _mm512_add_ps(one, _mm512_mul_ps(x, _mm512_sub_ps(one, s))));
            _mm512_mask_storeu_ps(d_up.as_mut_ptr().add(c), mask, _mm512_mul_ps(g, _mm512_mul_ps(x, s)));
            _mm512_mask_storeu_ps(d_gate.as_mut_ptr().add(c), mask, _mm512_mul_ps(_mm512_mul_ps(g, u), d_silu));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn the_fused_pass_equals_candles_silu_times_up_within_a_few_ulps() {
        // Zero, tiny, large of both signs, where silu saturates, and a ragged length (a masked tail).
        let mut gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        gate.extend([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 104.0, -104.0, -150.0, 300.0, 3.0]);
        let up: Vec<f32> = (0..gate.len()).map(|i| ((i * 7919) % 97) as f32 * 0.05 - 2.0).collect();
        let n = gate.len();
        let (g, u) =
            (Tensor::from_vec(gate, n, &Device::Cpu).unwrap(), Tensor::from_vec(up, n, &Device::Cpu).unwrap());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(fused_applies(&g, &u), "the fused pass is what this test checks");
        }
        let ours = silu_mul_detached(&g, &u).unwrap().to_vec1::<f32>().unwrap();
        let theirs = (g.silu().unwrap() * &u).unwrap().to_vec1::<f32>().unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let tolerance = 4.0 * f32::EPSILON * b.abs() + 1e-37;
            assert!((a - b).abs() <= tolerance, "element {i}: fused {a}, candle {b}");
        }
    }

    #[test]
    fn the_differentiable_pass_equals_candles_ops_and_their_gradients() {
        // Both signs, saturation, zero, and a ragged length (a masked tail in the last chunk's last vector).
        let mut gate: Vec<f32> = (0..20_011).map(|i| (i as f32 - 10_000.0) * 0.0019).collect();
        gate.extend([0.0, -0.0, 88.0, -88.0, 104.0, -104.0, -1.278_464_5]);
        let n = gate.len();
        let up: Vec<f32> = (0..n).map(|i| ((i * 7919) % 97) as f32 * 0.05 - 2.0).collect();
        let w: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 89) as f32 * 0.03 - 1.3).collect();
        let dev = Device::Cpu;
        let (g, u) = (Var::from_vec(gate, n, &dev).unwrap(), Var::from_vec(up, n, &dev).unwrap());
        let w = Tensor::from_vec(w, n, &dev).unwrap();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(fused_applies(&g, &u), "the fused pass is what this test checks");
        }
        let run = |out: Tensor| {
            let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.to_vec1::<f32>().unwrap();
            [flat(&out), flat(grads.get(&g).unwrap()), flat(grads.get(&u).unwrap())]
        };
        // Two threads as well: the chunks then go through the pool.
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let ours = pool.install(|| run(silu_mul(&g, &u).unwrap()));
            let theirs = run((g.silu().unwrap() * u.as_tensor()).unwrap());
            for (what, (a, b)) in ["value", "d_gate", "d_up"].iter().zip(ours.iter().zip(&theirs)) {
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what} {i}: fused {a}, candle {b}");
                }
            }
        }
    }

    #[test]
    fn shapes_that_differ_take_the_composed_ops_and_fail_there() {
        let g = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let u = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(silu_mul_detached(&g, &u).is_err());
    }
}
