//! Causal grouped-query attention for the trainable forward, computed in blocks of query rows so that no
//! (queries x keys) matrix outlives its block.
//!
//! Composed attention (matmul, mask, softmax, matmul) keeps about six (rows x keys) tensors per layer alive for
//! autograd: for a 1,600-token ideator prompt that is several GB over 30 layers, and a warm-up on such prompts ran
//! out of memory. On CPU this module's op keeps only its inputs, output and one log-sum-exp per row; the backward
//! pass recomputes each block's probabilities (as FlashAttention does, but with blocked matrix products instead of
//! a fused kernel). Other devices use the composed path, which has the memory to spare.
//!
//! Layout: `q` is (batch, kv_heads, group * t, head_dim) — the query heads that share a key/value head stacked
//! group-major — and `k`, `v` are (batch, kv_heads, s, head_dim) with `s = offset + t`. Query row `g * t + i` sees
//! keys `0..=offset + i`: plain causal attention for `offset = 0`, and for continuations that attend to a shared
//! prefix of `offset` tokens. Right padding needs no mask: a real token never sees the padding after it.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, D};

use crate::cpu_op::{input_tensor, output_storage};
use crate::device::{kernel_for, Kernel};
use crate::{ModelError, Result};

/// Query rows (per group) processed together: a block holds (rows x keys) floats per head.
const BLOCK_ROWS: usize = 128;

/// Causal attention with a key offset; see the module doc for the layout. Differentiable.
pub(crate) fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, group: usize, offset: usize) -> Result<Tensor> {
    let (_, _, rows, d) = q.dims4()?;
    let s = k.dim(2)?;
    if group == 0 || rows % group != 0 || s != offset + rows / group || k.dims() != v.dims() || k.dim(3)? != d {
        return Err(ModelError::Invalid(format!(
            "attention shapes do not fit: q {:?}, k {:?}, v {:?}, group {group}, offset {offset}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let scale = 1.0 / (d as f64).sqrt();
    if kernel_for(&[q, k, v]) == Kernel::CpuFast {
        let op = BlockedAttention { group, offset, scale, lse: Mutex::new(None) };
        return Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?);
    }
    composed(q, k, v, group, offset)
}

/// The same attention with ordinary ops (the portable path: other devices and dtypes, and the reference in tests).
/// The softmax runs in f32 whatever the inputs' dtype (a bf16 softmax over long rows loses the small
/// probabilities); the products run in the inputs' dtype.
pub fn composed(q: &Tensor, k: &Tensor, v: &Tensor, group: usize, offset: usize) -> Result<Tensor> {
    let (b, hkv, rows, d) = q.dims4()?;
    let t = rows / group;
    let s = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?.reshape((b, hkv, group, t, s))?;
    let mask = causal_mask(0, t, s, offset, q.device())?;
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
    Ok(probs.to_dtype(v.dtype())?.reshape((b, hkv, rows, s))?.matmul(v)?)
}

/// Additive mask (t1 - t0, limit) for query positions t0..t1: key j is hidden when j > offset + i.
fn causal_mask(t0: usize, t1: usize, limit: usize, offset: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; (t1 - t0) * limit];
    for (r, i) in (t0..t1).enumerate() {
        for j in (offset + i + 1)..limit {
            m[r * limit + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (t1 - t0, limit), dev)
}

struct BlockedAttention {
    group: usize,
    offset: usize,
    scale: f64,
    /// Log-sum-exp of every query row, (batch * kv_heads, group * t), saved by the forward for the backward.
    lse: Mutex<Option<Tensor>>,
}

/// The rows of block t0..t1 of every group: (bh, group * (t1 - t0), d) from (bh, group * t, d).
fn block_rows(x: &Tensor, group: usize, t: usize, t0: usize, t1: usize) -> candle_core::Result<Tensor> {
    let (bh, _, d) = x.dims3()?;
    x.reshape((bh, group, t, d))?.narrow(2, t0, t1 - t0)?.reshape((bh, group * (t1 - t0), d))
}

/// Puts per-block results (each (bh, group * rows_i, d), in block order) back into (bh, group * t, d).
fn unblock(parts: Vec<Tensor>, group: usize) -> candle_core::Result<Tensor> {
    let bh = parts[0].dim(0)?;
    let d = parts[0].dim(2)?;
    let per_group: Vec<Tensor> = parts
        .into_iter()
        .map(|p| {
            let rows = p.dim(1)? / group;
            p.reshape((bh, group, rows, d))
        })
        .collect::<candle_core::Result<_>>()?;
    let joined = Tensor::cat(&per_group, 2)?;
    let t = joined.dim(2)?;
    joined.reshape((bh, group * t, d))
}

impl BlockedAttention {
    fn blocks(&self, t: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..t).step_by(BLOCK_ROWS).map(move |t0| (t0, (t0 + BLOCK_ROWS).min(t)))
    }
}

impl CustomOp3 for BlockedAttention {
    fn name(&self) -> &'static str {
        "blocked-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, hkv, rows, d) = l1.shape().dims4()?;
        let s = l2.shape().dims()[2];
        let (g, t) = (self.group, rows / self.group);
        let q = input_tensor(self.name(), s1, l1)?.reshape((b * hkv, rows, d))?;
        let k = input_tensor(self.name(), s2, l2)?.reshape((b * hkv, s, d))?;
        let v = input_tensor(self.name(), s3, l3)?.reshape((b * hkv, s, d))?;
        let mut outs = Vec::new();
        let mut lses = Vec::new();
        for (t0, t1) in self.blocks(t) {
            // Keys past offset + t1 - 1 are hidden from the whole block: skip them.
            let limit = self.offset + t1;
            let qb = block_rows(&q, g, t, t0, t1)?;
            let kb = k.narrow(1, 0, limit)?;
            let scores = (qb.matmul(&kb.t()?)? * self.scale)?;
            let scores = scores
                .reshape((b * hkv, g, t1 - t0, limit))?
                .broadcast_add(&causal_mask(t0, t1, limit, self.offset, &Device::Cpu)?)?
                .reshape((b * hkv, g * (t1 - t0), limit))?;
            let max = scores.max_keepdim(D::Minus1)?;
            let exp = scores.broadcast_sub(&max)?.exp()?;
            let sum = exp.sum_keepdim(D::Minus1)?;
            outs.push(exp.broadcast_div(&sum)?.matmul(&v.narrow(1, 0, limit)?)?);
            lses.push((sum.log()? + max)?);
        }
        let out = unblock(outs, g)?;
        *self.lse.lock().expect("lse lock") = Some(unblock(lses, g)?);
        output_storage(&out.reshape((b, hkv, rows, d))?)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, hkv, rows, d) = q.dims4()?;
        let s = k.dim(2)?;
        let (g, t) = (self.group, rows / self.group);
        let bh = b * hkv;
        let q = q.detach().reshape((bh, rows, d))?;
        let k = k.detach().reshape((bh, s, d))?;
        let v = v.detach().reshape((bh, s, d))?;
        let dout = grad_out.detach().reshape((bh, rows, d))?;
        let lse = match self.lse.lock().expect("lse lock").clone() {
            Some(l) => l,
            None => candle_core::bail!("blocked attention: backward before forward"),
        };
        // D_i = sum_j dO_ij O_ij, the row term of the softmax gradient.
        let delta = (&dout * out.detach().reshape((bh, rows, d))?)?.sum_keepdim(D::Minus1)?;
        let mut dq_parts = Vec::new();
        let mut dk = Tensor::zeros((bh, s, d), DType::F32, &Device::Cpu)?;
        let mut dv = Tensor::zeros((bh, s, d), DType::F32, &Device::Cpu)?;
        for (t0, t1) in self.blocks(t) {
            let limit = self.offset + t1;
            let qb = block_rows(&q, g, t, t0, t1)?;
            let dob = block_rows(&dout, g, t, t0, t1)?;
            let lseb = block_rows(&lse, g, t, t0, t1)?;
            let deltab = block_rows(&delta, g, t, t0, t1)?;
            let kb = k.narrow(1, 0, limit)?;
            let vb = v.narrow(1, 0, limit)?;
            let scores = (qb.matmul(&kb.t()?)? * self.scale)?;
            let scores = scores
                .reshape((bh, g, t1 - t0, limit))?
                .broadcast_add(&causal_mask(t0, t1, limit, self.offset, &Device::Cpu)?)?
                .reshape((bh, g * (t1 - t0), limit))?;
            let p = scores.broadcast_sub(&lseb)?.exp()?;
            let dv_part = p.t()?.matmul(&dob)?;
            let dp = dob.matmul(&vb.t()?)?;
            let ds = (p * dp.broadcast_sub(&deltab)?)?;
            dq_parts.push((ds.matmul(&kb)? * self.scale)?);
            let dk_part = (ds.t()?.matmul(&qb)? * self.scale)?;
            let pad = s - limit;
            dk = (dk + dk_part.pad_with_zeros(1, 0, pad)?)?;
            dv = (dv + dv_part.pad_with_zeros(1, 0, pad)?)?;
        }
        let dq = unblock(dq_parts, g)?.reshape((b, hkv, rows, d))?;
        Ok((Some(dq), Some(dk.reshape((b, hkv, s, d))?), Some(dv.reshape((b, hkv, s, d))?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn check(b: usize, hkv: usize, g: usize, t: usize, offset: usize, d: usize) {
        let dev = Device::Cpu;
        let s = offset + t;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hkv, g * t, d), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hkv, s, d), &dev).unwrap()).unwrap();
        let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, hkv, s, d), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, hkv, g * t, d), &dev).unwrap();
        let run = |blocked: bool| {
            let o = if blocked {
                causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), g, offset).unwrap()
            } else {
                composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), g, offset).unwrap()
            };
            let grads = (&o * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            vec![
                flat(&o),
                flat(grads.get(q.as_tensor()).unwrap()),
                flat(grads.get(k.as_tensor()).unwrap()),
                flat(grads.get(v.as_tensor()).unwrap()),
            ]
        };
        let (a, r) = (run(true), run(false));
        for (what, (x, y)) in ["output", "dq", "dk", "dv"].iter().zip(a.iter().zip(&r)) {
            for (p, q) in x.iter().zip(y) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{what}: blocked {p} vs composed {q}");
            }
        }
    }

    #[test]
    fn blocked_equals_composed_in_values_and_gradients() {
        check(2, 2, 3, 7, 0, 8); // plain causal, one block
        check(1, 3, 2, 300, 0, 16); // several blocks, a partial last one
        check(3, 1, 2, 130, 45, 8); // continuations after a shared prefix
    }

    #[test]
    fn bad_shapes_are_refused() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 1, 6, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 1, 5, 4), DType::F32, &dev).unwrap();
        assert!(causal_attention(&q, &k, &k, 2, 0).is_err());
    }
}
