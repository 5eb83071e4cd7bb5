//! Causal grouped-query attention for the trainable forward, computed in blocks of query rows so that no
//! (queries x keys) matrix outlives its block.
//!
//! Composed attention (matmul, mask, softmax, matmul) keeps about six (rows x keys) tensors per layer alive for
//! autograd: for a 1,600-token ideator prompt that is several GB over 30 layers, and a warm-up on such prompts ran
//! out of memory. On CPU this module's op keeps only its inputs, output and one log-sum-exp per row; the backward
//! pass recomputes each block's probabilities (as FlashAttention does, with gemm's blocked products and fused row
//! passes: kernel.rs, rows.rs), one task per key/value head. Other devices use the composed path, which has the
//! memory to spare.
//!
//! Layout: `q` is (batch, kv_heads, group * t, head_dim) — the query heads that share a key/value head stacked
//! group-major — and `k`, `v` are (batch, kv_heads, s, head_dim) with `s = offset + t`. Query row `g * t + i` sees
//! keys `0..=offset + i`: plain causal attention for `offset = 0`, and for continuations that attend to a shared
//! prefix of `offset` tokens. Right padding needs no mask: a real token never sees the padding after it.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Shape, Tensor, D};

use crate::cpu_op::{input_slice, map_items, with_f32_slices};
use crate::device::{kernel_for, Kernel};
use crate::{ModelError, Result};
use kernel::Dims;
use rows::RowPath;

mod kernel;
pub(crate) mod rows;

/// Causal attention with a key offset; see the module doc for the layout. Differentiable. Returns the attention
/// output, shaped as `q`. The CPU path is FlashAttention's algorithm (Dao et al. 2022) over blocks of query rows;
/// other devices and dtypes use [`composed`].
///
/// # Errors
/// [`ModelError::Invalid`] when the shapes do not fit the layout (`q`'s rows not a multiple of `group`, keys or
/// values not `(batch, kv_heads, offset + t, head_dim)`); candle's errors from the ops.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, group: usize, offset: usize) -> Result<Tensor> {
    let (b, hkv, rows, d) = q.dims4()?;
    let fits = group > 0
        && rows > 0
        && rows % group == 0
        && k.dims() == [b, hkv, offset + rows / group, d]
        && v.dims() == k.dims();
    if !fits {
        return Err(ModelError::Invalid(format!(
            "attention shapes do not fit: q {:?}, k {:?}, v {:?}, group {group}, offset {offset}",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let scale = 1.0 / (d as f64).sqrt();
    if kernel_for(&[q, k, v]) == Kernel::CpuFast {
        let dims = Dims { group, t: rows / group, offset, d, scale: scale as f32 };
        let op = BlockedAttention { dims, lse: Mutex::new(None) };
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
    let mask = causal_mask(t, s, offset, q.device())?;
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
    Ok(probs.to_dtype(v.dtype())?.reshape((b, hkv, rows, s))?.matmul(v)?)
}

/// Additive mask (t, keys) for query positions 0..t: key j is hidden from query i when j > offset + i.
fn causal_mask(t: usize, keys: usize, offset: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; t * keys];
    for i in 0..t {
        m[i * keys + (offset + i + 1).min(keys)..(i + 1) * keys].fill(f32::NEG_INFINITY);
    }
    Tensor::from_vec(m, (t, keys), dev)
}

struct BlockedAttention {
    dims: Dims,
    /// Log-sum-exp of every query row, (batch * kv_heads, group * t), saved by the forward for the backward.
    lse: Mutex<Option<Vec<f32>>>,
}

/// One task of the op: key/value head `head` (of batch * kv_heads) and its query heads `groups`.
#[derive(Debug)]
struct Task {
    head: usize,
    groups: std::ops::Range<usize>,
}

impl BlockedAttention {
    /// One task per key/value head, or per query head when there are too few key/value heads to keep every
    /// thread busy (a shared prompt has 3: split into its 9 query heads, a warm-up step on 2 threads went from 30.7 s
    /// to 26.4 s).
    fn tasks(&self, heads: usize) -> Vec<Task> {
        let group = self.dims.group;
        let threads = rayon::current_num_threads();
        if threads == 1 || heads >= 2 * threads {
            return (0..heads).map(|head| Task { head, groups: 0..group }).collect();
        }
        (0..heads).flat_map(|head| (0..group).map(move |g| Task { head, groups: g..g + 1 })).collect()
    }

    /// The shape of a task's slice, and where its queries start in the op's (heads, group * t, d) layout.
    fn task_dims(&self, task: &Task) -> (Dims, std::ops::Range<usize>) {
        let Dims { group, t, d, .. } = self.dims;
        let per_group = t * d;
        let first = task.head * group * per_group + task.groups.start * per_group;
        (Dims { group: task.groups.len(), ..self.dims }, first..first + task.groups.len() * per_group)
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
        let q = input_slice(self.name(), s1, l1)?;
        let (k, v) = (input_slice(self.name(), s2, l2)?, input_slice(self.name(), s3, l3)?);
        let (kn, d) = (self.dims.keys() * self.dims.d, self.dims.d);
        let path = RowPath::detect();
        let tasks = self.tasks(k.len() / kn);
        if tasks.is_empty() {
            // An empty batch.
            *self.lse.lock().expect("lse lock") = Some(Vec::new());
            return Ok((CpuStorage::F32(Vec::new()), l1.shape().clone()));
        }
        // Tasks cover the queries in order, in equal parts: each writes its own chunk of the output.
        let per_task = q.len() / tasks.len();
        let (mut out, mut lse) = (vec![0f32; q.len()], vec![0f32; q.len() / d]);
        let chunks: Vec<_> = tasks.iter().zip(out.chunks_mut(per_task).zip(lse.chunks_mut(per_task / d))).collect();
        map_items(chunks, |(task, (out, lse))| {
            let (dims, qr) = self.task_dims(task);
            let (k, v) = (&k[task.head * kn..][..kn], &v[task.head * kn..][..kn]);
            kernel::forward(dims, &q[qr], k, v, out, lse, path);
        });
        *self.lse.lock().expect("lse lock") = Some(lse);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().expect("lse lock");
        let Some(lse) = lse.as_deref() else { candle_core::bail!("blocked attention: backward before forward") };
        let [qc, kc, vc, oc, gc] = [q, k, v, out, grad_out].map(|x| x.detach().to_dtype(DType::F32)?.contiguous());
        let (dq, dk, dv) = with_f32_slices([&qc?, &kc?, &vc?, &oc?, &gc?], |[q, k, v, out, grad_out]| {
            self.gradients(&kernel::Saved { q, k, v, out, lse, grad_out })
        })?;
        let dev = &Device::Cpu;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

impl BlockedAttention {
    /// `(dq, dk, dv)` of the whole op from its saved inputs, laid out as `q`, `k` and `v` (`saved` holds every
    /// head; its `lse` is the forward's).
    fn gradients(&self, saved: &kernel::Saved) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (kn, d) = (self.dims.keys() * self.dims.d, self.dims.d);
        let path = RowPath::detect();
        let tasks = self.tasks(saved.k.len() / kn);
        let task_inputs = |task: &Task| {
            let (dims, qr) = self.task_dims(task);
            let kr = task.head * kn..(task.head + 1) * kn;
            let slices = kernel::Saved {
                q: &saved.q[qr.clone()],
                k: &saved.k[kr.clone()],
                v: &saved.v[kr],
                out: &saved.out[qr.clone()],
                lse: &saved.lse[qr.start / d..qr.end / d],
                grad_out: &saved.grad_out[qr],
            };
            (dims, slices)
        };
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; saved.q.len()], vec![0f32; saved.k.len()], vec![0f32; saved.v.len()]);
        if tasks.is_empty() {
            return (dq, dk, dv); // an empty batch
        }
        let per_task = saved.q.len() / tasks.len();
        let dq_chunks = tasks.iter().zip(dq.chunks_mut(per_task));
        if tasks.iter().all(|task| task.groups.len() == self.dims.group) {
            // A task per key/value head: each writes its own chunks of dq, dk and dv.
            let chunks: Vec<_> = dq_chunks.zip(dk.chunks_mut(kn).zip(dv.chunks_mut(kn))).collect();
            map_items(chunks, |((task, dq), (dk, dv))| {
                let (dims, x) = task_inputs(task);
                kernel::backward(dims, &x, dq, dk, dv, path);
            });
            return (dq, dk, dv);
        }
        // A task per query head: each writes its chunk of dq; the heads that share a key/value head sum their dk
        // and dv, in task order.
        let parts = map_items(dq_chunks.collect(), |(task, dq)| {
            let (dims, x) = task_inputs(task);
            let (mut dk, mut dv) = (vec![0f32; kn], vec![0f32; kn]);
            kernel::backward(dims, &x, dq, &mut dk, &mut dv, path);
            (task.head, dk, dv)
        });
        for (head, dk_part, dv_part) in parts {
            let at = head * kn..(head + 1) * kn;
            dk[at.clone()].iter_mut().zip(&dk_part).for_each(|(a, b)| *a += b);
            dv[at].iter_mut().zip(&dv_part).for_each(|(a, b)| *a += b);
        }
        (dq, dk, dv)
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
        // One thread: a task per key/value head. Two: a task per query head below 4 key/value heads.
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                check(2, 2, 3, 7, 0, 8); // plain causal, one block
                check(1, 3, 2, 300, 0, 16); // several blocks, a partial last one
                check(3, 1, 2, 130, 45, 8); // continuations after a shared prefix
                check(2, 3, 3, 1, 20, 64); // one query per head after a prefix (SmolLM2's heads)
                check(1, 1, 1, 128, 0, 17); // whole blocks, an odd head dimension
                check(1, 2, 3, 65, 200, 64); // one row past a block, a prefix longer than the block
            });
        }
    }

    /// A batch of no sequences gives empty outputs and gradients (no task to split the work into).
    #[test]
    fn an_empty_batch_gives_empty_outputs() {
        let dev = Device::Cpu;
        let q = Var::from_tensor(&Tensor::zeros((0, 2, 6, 4), DType::F32, &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::zeros((0, 2, 3, 4), DType::F32, &dev).unwrap()).unwrap();
        let v = Var::from_tensor(&Tensor::zeros((0, 2, 3, 4), DType::F32, &dev).unwrap()).unwrap();
        let out = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), 2, 0).unwrap();
        assert_eq!(out.dims(), [0, 2, 6, 4]);
        let grads = out.sum_all().unwrap().backward().unwrap();
        for x in [&q, &k, &v] {
            assert_eq!(grads.get(x.as_tensor()).map(|g| g.elem_count()), Some(0));
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 1, 6, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 1, 5, 4), DType::F32, &dev).unwrap();
        assert!(causal_attention(&q, &k, &k, 2, 0).is_err());
        // Keys of another batch size than the queries'.
        let q = Tensor::zeros((2, 1, 4, 4), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 1, 4, 4), DType::F32, &dev).unwrap();
        assert!(causal_attention(&q, &k, &k, 1, 0).is_err());
    }
}
