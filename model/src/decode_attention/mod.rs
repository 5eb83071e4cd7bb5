//! Attention of a decode step's new tokens over the KV cache, on the CPU.
//!
//! A decode step attends each row's few queries (the query heads that share a key/value head, times the new
//! tokens) to every cached key. As matrix products that is two batched products per layer of shapes like
//! (3 x 64) x (64 x 400), where candle's gemm spends much of its time on dispatch and packing. Here each key and
//! value row is read once, in place in the cache (whose rows are the cache's capacity apart), and used by every
//! query of its row. Measured side by side (BENCHMARKS.md, SmolLM2-135M f32, one thread, 200 + 128 tokens), decoding
//! after the first token: 1.28x at batch 1, 1.00x at batch 8, 1.12x at batch 32 against the gemm calls; the
//! AVX-512 version for head dimensions 64 and 128 (`avx512.rs`: rows in registers, a vector exp, and prefetching
//! 8 rows ahead, since the loads of the cache were where the time went) gained another 1.06x / 1.13x / 1.22x (f32)
//! and 1.00x / 1.18x / 1.22x (bf16 copy). CPUs with AVX2 + FMA but not AVX-512 take the AVX2 version for the same
//! head dimensions (`avx2.rs`): the same structure on 8-lane vectors and 16 registers, 8 keys' scores per transposing
//! reduction and the values' weighted sums a 32-column slice at a time (on Zen 3, with the 3 x 4 products and the
//! sampler's 8-lane exp already in, batch-8 decoding 1.14x / 1.10x in two alternating pairs). Rows that continue one shared prompt go
//! through its keys and values together, a block at a time ([`DecodeAttention::tasks`]), so that the prompt is read
//! from memory once per step rather than once per row: 1.07x / 1.09x decoding at batch 8 / 16 after a 1,600-token
//! prompt (one thread, Intel Xeon with AVX-512, two alternating pairs each; BENCHMARKS.md).
//!
//! Layout: `q` is (rows, queries, head_dim), query `g * new + t` being new token `t` of query head `g`; the cache's
//! [`LayerKv`] gives each row's own keys and values as (rows, own, head_dim) views and, when rows continue shared
//! prompts, the prompts' (prompts * kv_heads, prompt_len, head_dim) ones, which come first: key `j` of row `r` is the
//! prompt's key `j` below `prompt_len`, else the row's own key `j - prompt_len`. `mask` is (batch, new, total), added
//! to the scores, and row `r` belongs to batch `r / kv_heads`. The softmax is candle's, `exp(x - max) / sum` in f32;
//! outputs agree with the composed ops to rounding (tested).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor, D};

use crate::cpu_op::map_tasks;
use crate::kv_cache::LayerKv;
use crate::Result;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Most new tokens per row the kernel takes: a decode step's one (or a few). A prompt's prefill has hundreds of
/// queries per key, where the products are compute-bound and gemm's packed kernels win (batch 8, 400-token prompt:
/// 2.0-2.1 s to the first token with the prefill through this kernel, 1.37-1.42 s with gemm; three pairs).
pub(crate) const MAX_NEW_TOKENS: usize = 4;

/// The attention output (rows, queries, head_dim) of `q` over a layer's cached keys and values `kv` under `mask`
/// (see the module doc). CPU f32 only; the caller takes the composed ops elsewhere.
///
/// # Errors
/// Shapes that do not fit together, a non-contiguous `q`, or cache views whose rows are not contiguous.
pub(crate) fn decode_attention(
    q: &Tensor,
    kv: &LayerKv,
    mask: &Tensor,
    kv_heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (batch, new, total) = mask.dims3()?;
    let kernel = Kernel::for_head_dim(q.dim(D::Minus1)?);
    let op = DecodeAttention {
        kernel,
        mask: mask.flatten_all()?.to_vec1::<f32>()?,
        batch,
        new,
        total,
        kv_heads,
        scale: scale as f32,
        shared: kv.shared.as_ref().map(|s| SharedPrompts {
            keys: s.keys.clone(),
            values: s.values.clone(),
            prompt_of_row: s.prompt_of_row.to_vec(),
        }),
    };
    Ok(q.apply_op3_no_bwd(&kv.keys, &kv.values, &op)?)
}

struct DecodeAttention {
    kernel: Kernel,
    /// (batch, new, total), row-major.
    mask: Vec<f32>,
    batch: usize,
    new: usize,
    total: usize,
    kv_heads: usize,
    scale: f32,
    shared: Option<SharedPrompts>,
}

/// The prompts the rows continue: keys and values (prompts * kv_heads, prompt_len, head_dim) and, per batch row,
/// which prompt.
struct SharedPrompts {
    keys: Tensor,
    values: Tensor,
    prompt_of_row: Vec<usize>,
}

/// A (rows, keys, head_dim) cache view: where row `r`'s key `j` starts in its storage.
#[derive(Clone, Copy)]
struct CacheView<'a> {
    data: &'a [f32],
    start: usize,
    row_stride: usize,
    head_dim: usize,
}

impl<'a> CacheView<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, head_dim: usize) -> candle_core::Result<Self> {
        let stride = layout.stride();
        if stride.len() != 3 || stride[2] != 1 || stride[1] != head_dim {
            candle_core::bail!("decode attention: cache view with strides {stride:?}, rows must be contiguous");
        }
        Ok(CacheView {
            data: storage.as_slice::<f32>()?,
            start: layout.start_offset(),
            row_stride: stride[0],
            head_dim,
        })
    }

    fn row(&self, r: usize, j: usize) -> &'a [f32] {
        let at = self.start + r * self.row_stride + j * self.head_dim;
        &self.data[at..at + self.head_dim]
    }
}

/// Where one row's keys (or values) are: the first `split` in its prompt's row of a shared view, the rest in the
/// row's own.
#[derive(Clone, Copy)]
struct KeyRows<'a> {
    prompt: CacheView<'a>,
    prompt_row: usize,
    split: usize,
    own: CacheView<'a>,
    own_row: usize,
}

impl<'a> KeyRows<'a> {
    /// Key (value) `j` of the row.
    #[inline(always)]
    fn get(&self, j: usize) -> &'a [f32] {
        if j < self.split {
            self.prompt.row(self.prompt_row, j)
        } else {
            self.own.row(self.own_row, j - self.split)
        }
    }

    fn head_dim(&self) -> usize {
        self.own.head_dim
    }
}

/// A CPU tensor's storage, read-locked, with its layout.
fn read_cpu(t: &Tensor) -> candle_core::Result<(impl std::ops::Deref<Target = Storage> + '_, &Layout)> {
    let (storage, layout) = t.storage_and_layout();
    if !matches!(&*storage, Storage::Cpu(_)) {
        candle_core::bail!("decode attention: the shared prompts are not on the CPU");
    }
    Ok((storage, layout))
}

fn cpu(storage: &Storage) -> &CpuStorage {
    match storage {
        Storage::Cpu(s) => s,
        _ => unreachable!("checked by read_cpu"),
    }
}

impl DecodeAttention {
    /// Checks the shapes: q (rows, queries, hd), own keys and values (rows, own, hd), shared prompts
    /// (prompts * kv_heads, prompt_len, hd) with own + prompt_len = total.
    fn check(
        &self,
        ql: &Layout,
        kl: &Layout,
        vl: &Layout,
        prompt: Option<(&Layout, &Layout)>,
    ) -> candle_core::Result<()> {
        let (rows, queries, hd) = ql.shape().dims3()?;
        let prompt_len = match prompt {
            Some((pk, _)) => pk.shape().dims3()?.1,
            None => 0,
        };
        let own = self.total.checked_sub(prompt_len).unwrap_or(usize::MAX);
        let mut fits = kl.shape().dims3()? == (rows, own, hd)
            && vl.shape().dims3()? == (rows, own, hd)
            && rows == self.batch * self.kv_heads
            && queries % self.new == 0;
        if let (Some((pk, pv)), Some(shared)) = (prompt, &self.shared) {
            let (prompt_rows, _, phd) = pk.shape().dims3()?;
            fits &= pv.shape().dims3()? == pk.shape().dims3()?
                && phd == hd
                && shared.prompt_of_row.len() == self.batch
                && shared.prompt_of_row.iter().all(|&p| (p + 1) * self.kv_heads <= prompt_rows);
        }
        if !fits {
            candle_core::bail!(
                "decode attention: q {:?}, keys {:?}, values {:?}, shared prompts {:?} do not fit a mask ({}, {}, {}) \
                 with {} kv heads",
                ql.shape(),
                kl.shape(),
                vl.shape(),
                prompt.map(|(pk, _)| pk.shape()),
                self.batch,
                self.new,
                self.total,
                self.kv_heads
            );
        }
        Ok(())
    }
}

impl DecodeAttention {
    /// The rows each task attends together, in order. Rows that continue the same prompt through the same
    /// key/value head go together: they read the prompt's keys and values block by block ([`key_block`]), so the
    /// rows after the first find each block in L1 instead of each streaming the whole prompt from the outer caches
    /// (at batch 8 after a 1,600-token prompt, 8 x 74 MB a step for SmolLM2-135M). When there are fewer such groups
    /// than two per thread, each is split into equal parts so that every thread has work. Without shared prompts,
    /// one row per task.
    fn tasks(&self, threads: usize) -> Vec<Vec<usize>> {
        let rows = self.batch * self.kv_heads;
        let Some(shared) = &self.shared else {
            return (0..rows).map(|r| vec![r]).collect();
        };
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for r in 0..rows {
            let prompt_row = shared.prompt_of_row[r / self.kv_heads] * self.kv_heads + r % self.kv_heads;
            match groups.iter_mut().find(|(p, _)| *p == prompt_row) {
                Some((_, group)) => group.push(r),
                None => groups.push((prompt_row, vec![r])),
            }
        }
        let parts = if threads > 1 { (2 * threads).div_ceil(groups.len().max(1)) } else { 1 };
        let mut tasks = Vec::new();
        for (_, group) in groups {
            let size = group.len().div_ceil(parts.min(group.len()));
            tasks.extend(group.chunks(size).map(<[usize]>::to_vec));
        }
        tasks
    }
}

/// Keys (values) per block of [`DecodeAttention::tasks`]' rows: 16 KB of them, in whole 16-key steps of the AVX-512
/// kernel (and so whole 8-key steps of the AVX2 one; 64 keys at head dimension 64, 32 at 128), so that a block stays
/// in L1 beside the rest while every row of a task goes through it.
pub(super) fn key_block(head_dim: usize) -> usize {
    (4096 / head_dim / 16 * 16).max(16)
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, queries, hd) = ql.shape().dims3()?;
        let Some((qa, qb)) = ql.contiguous_offsets() else {
            candle_core::bail!("decode attention expects a contiguous q");
        };
        let prompt = match &self.shared {
            Some(s) => Some((read_cpu(&s.keys)?, read_cpu(&s.values)?)),
            None => None,
        };
        self.check(ql, kl, vl, prompt.as_ref().map(|(k, v)| (k.1, v.1)))?;
        let (q, keys, values) =
            (&qs.as_slice::<f32>()?[qa..qb], CacheView::new(ks, kl, hd)?, CacheView::new(vs, vl, hd)?);
        let (prompt_keys, prompt_values, split) = match &prompt {
            Some(((ks, kl), (vs, vl))) => {
                (CacheView::new(cpu(ks), kl, hd)?, CacheView::new(cpu(vs), vl, hd)?, kl.shape().dims()[1])
            }
            None => (keys, values, 0),
        };
        let row = |r: usize| {
            let (b, h) = (r / self.kv_heads, r % self.kv_heads);
            let prompt_row = self.shared.as_ref().map_or(0, |s| s.prompt_of_row[b] * self.kv_heads + h);
            let rows_of = |prompt, own| KeyRows { prompt, prompt_row, split, own, own_row: r };
            Row {
                q: &q[r * queries * hd..(r + 1) * queries * hd],
                keys: rows_of(prompt_keys, keys),
                values: rows_of(prompt_values, values),
                mask: &self.mask[b * self.new * self.total..][..self.new * self.total],
            }
        };
        let tasks = self.tasks(rayon::current_num_threads());
        let outputs = map_tasks(tasks.len(), |t| {
            let task_rows: Vec<Row> = tasks[t].iter().map(|&r| row(r)).collect();
            let mut out = vec![0f32; task_rows.len() * queries * hd];
            attend_dispatch(self, &task_rows, &mut out, self.kernel);
            out
        });
        let mut out = vec![0f32; rows * queries * hd];
        for (task, task_out) in tasks.iter().zip(outputs) {
            for (&r, o) in task.iter().zip(task_out.chunks_exact(queries * hd)) {
                out[r * queries * hd..(r + 1) * queries * hd].copy_from_slice(o);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, queries, hd))))
    }
}

/// What one row (a batch row's key/value head) of the op reads: its queries (queries, head_dim), its keys and
/// values, and its batch row's mask (new, total).
struct Row<'a> {
    q: &'a [f32],
    keys: KeyRows<'a>,
    values: KeyRows<'a>,
    mask: &'a [f32],
}

/// Which compiled version of the kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// [`avx512::attend`]: AVX-512F and a head dimension it covers.
    Avx512,
    /// [`avx2::attend`]: AVX2 + FMA and a head dimension it covers.
    Avx2,
    /// The portable loops compiled for AVX2 + FMA, so that their fixed-width loops become vector instructions: the
    /// head dimensions the AVX2 kernel does not cover.
    Avx2Autovectorised,
    Portable,
}

impl Kernel {
    /// The fastest kernel the CPU has for `head_dim` (checked once per op, not per row).
    fn for_head_dim(head_dim: usize) -> Kernel {
        use crate::few_rows::Path;
        let paths = Path::available();
        #[cfg(target_arch = "x86_64")]
        {
            if paths.contains(&Path::Avx512) && avx512::covers(head_dim) {
                return Kernel::Avx512;
            }
            if paths.contains(&Path::Avx2) && avx2::covers(head_dim) {
                return Kernel::Avx2;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = head_dim;
        if paths.contains(&Path::Avx2) {
            Kernel::Avx2Autovectorised
        } else {
            Kernel::Portable
        }
    }
}

/// The attention of a task's `rows` with `kernel`, into `out` (rows, queries, head_dim).
fn attend_dispatch(op: &DecodeAttention, rows: &[Row], out: &mut [f32], kernel: Kernel) {
    #[cfg(target_arch = "x86_64")]
    match kernel {
        // SAFETY: `Kernel::for_head_dim` picks AVX-512 only when `few_rows::Path::available` lists it (the CPU has
        // AVX-512F) and the kernel covers this head dimension.
        Kernel::Avx512 => return unsafe { avx512::attend(op, rows, out) },
        // SAFETY: `Kernel::for_head_dim` picks AVX2 only when `few_rows::Path::available` lists it (the CPU has AVX2
        // and FMA) and the kernel covers this head dimension.
        Kernel::Avx2 => return unsafe { avx2::attend(op, rows, out) },
        // SAFETY: picked only when the CPU has AVX2 and FMA; the body is safe code.
        Kernel::Avx2Autovectorised => return unsafe { attend_autovectorised(op, rows, out) },
        Kernel::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernel;
    attend(op, rows, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_autovectorised(op: &DecodeAttention, rows: &[Row], out: &mut [f32]) {
    attend(op, rows, out)
}

/// Scores every query of each row against every key, softmaxes each query's scores, and sums the values weighted by
/// them into `out` (rows, queries, head_dim). Keys and values go a [`key_block`] at a time through all the rows, so
/// that rows sharing a prompt read each of its blocks from memory once.
#[inline(always)]
fn attend(op: &DecodeAttention, rows: &[Row], out: &mut [f32]) {
    let (hd, total, new) = (rows[0].keys.head_dim(), op.total, op.new);
    let queries = rows[0].q.len() / hd;
    let (per_row, block) = (queries * total, key_block(hd));
    let mut scores = vec![0f32; rows.len() * per_row];
    for j0 in (0..total).step_by(block) {
        for (row, scores) in rows.iter().zip(scores.chunks_exact_mut(per_row)) {
            for j in j0..(j0 + block).min(total) {
                let k = row.keys.get(j);
                for (i, qi) in row.q.chunks_exact(hd).enumerate() {
                    scores[i * total + j] = dot(qi, k) * op.scale + row.mask[(i % new) * total + j];
                }
            }
        }
    }
    let mut inv_sums = Vec::with_capacity(rows.len() * queries);
    for row in scores.chunks_exact_mut(total) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        inv_sums.push(1.0 / sum);
    }
    out.fill(0.0);
    for j0 in (0..total).step_by(block) {
        for ((row, scores), out) in
            rows.iter().zip(scores.chunks_exact(per_row)).zip(out.chunks_exact_mut(queries * hd))
        {
            for j in j0..(j0 + block).min(total) {
                let v = row.values.get(j);
                for (i, o) in out.chunks_exact_mut(hd).enumerate() {
                    let p = scores[i * total + j];
                    for (o, &x) in o.iter_mut().zip(v) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    for (o, inv) in out.chunks_exact_mut(hd).zip(inv_sums) {
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

/// A dot product with 8 independent partial sums (a vector register's worth), then the tail.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (body_a, body_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let (tail_a, tail_b) = (body_a.remainder(), body_b.remainder());
    for (x, y) in body_a.zip(body_b) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail_a.iter().zip(tail_b).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// The composed ops `decoder::block` ran before this kernel (and still runs off the CPU).
    fn composed(q: &Tensor, keys: &Tensor, values: &Tensor, mask: &Tensor, kv_heads: usize, scale: f64) -> Tensor {
        let (b, new, total) = mask.dims3().unwrap();
        let (rows, queries, hd) = q.dims3().unwrap();
        let scores = (q.matmul(&keys.t().unwrap()).unwrap() * scale).unwrap();
        let scores = scores
            .reshape((b, kv_heads, queries / new, new, total))
            .unwrap()
            .broadcast_add(&mask.reshape((b, 1, 1, new, total)).unwrap())
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap().reshape((rows, queries, total)).unwrap();
        let out = probs.matmul(values).unwrap();
        assert_eq!(out.dims(), &[rows, queries, hd]);
        out
    }

    /// The op for `mask` (batch, new, total) with `kernel`, reading `shared` prompts if any.
    fn op(
        kernel: Kernel,
        mask: &Tensor,
        kv_heads: usize,
        scale: f64,
        shared: Option<SharedPrompts>,
    ) -> DecodeAttention {
        let (batch, new, total) = mask.dims3().unwrap();
        let mask = mask.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        DecodeAttention { kernel, mask, batch, new, total, kv_heads, scale: scale as f32, shared }
    }

    /// A (batch, new, total) mask: causal among the new tokens, and the first `pad` keys hidden from the batch rows
    /// `padded` picks (left padding).
    fn decode_mask(batch: usize, new: usize, total: usize, pad: usize, padded: impl Fn(usize) -> bool) -> Tensor {
        let mut m = vec![0f32; batch * new * total];
        for bi in 0..batch {
            for t in 0..new {
                for j in 0..total {
                    if (padded(bi) && j < pad) || j > total - new + t {
                        m[(bi * new + t) * total + j] = -1e9;
                    }
                }
            }
        }
        Tensor::from_vec(m, (batch, new, total), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The kernels this CPU can run for `head_dim`, the one [`Kernel::for_head_dim`] picks first.
    fn kernels(head_dim: usize) -> Vec<Kernel> {
        use crate::few_rows::Path;
        let paths = Path::available();
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if paths.contains(&Path::Avx512) && avx512::covers(head_dim) {
                kernels.push(Kernel::Avx512);
            }
            if paths.contains(&Path::Avx2) && avx2::covers(head_dim) {
                kernels.push(Kernel::Avx2);
            }
        }
        if paths.contains(&Path::Avx2) {
            kernels.push(Kernel::Avx2Autovectorised);
        }
        kernels.push(Kernel::Portable);
        assert_eq!(kernels[0], Kernel::for_head_dim(head_dim), "head dimension {head_dim}");
        kernels
    }

    /// Whether the CPU has AVX2 and FMA, which the AVX2 kernel needs.
    fn has_avx2() -> bool {
        crate::few_rows::Path::available().contains(&crate::few_rows::Path::Avx2)
    }

    /// Asserts that `kernel` over own `keys` and `values` (and `shared` prompts if any) gives `want` to rounding.
    #[allow(clippy::too_many_arguments)]
    fn assert_kernel_gives(
        kernel: Kernel,
        q: &Tensor,
        (keys, values): (&Tensor, &Tensor),
        shared: Option<SharedPrompts>,
        mask: &Tensor,
        kv_heads: usize,
        scale: f64,
        want: &Tensor,
        case: &str,
    ) {
        let ours = q.apply_op3_no_bwd(keys, values, &op(kernel, mask, kv_heads, scale, shared)).unwrap();
        let diff = max_diff(&ours, want);
        assert!(diff < 1e-5, "{kernel:?}: {case}: max diff {diff}");
    }

    #[test]
    fn every_kernel_equals_the_composed_ops_on_strided_cache_views_with_padding_and_several_new_tokens() {
        let dev = Device::Cpu;
        let shapes = [
            (2, 3, 3, 1, 7, 12, 64),
            (1, 1, 1, 1, 1, 1, 8),
            (3, 2, 4, 5, 9, 9, 13),
            (4, 3, 3, 1, 300, 310, 64),
            (2, 2, 7, 2, 37, 40, 64),
            (1, 2, 2, 3, 17, 20, 128),
            (2, 1, 5, 1, 16, 16, 128),
            (1, 1, 5, 1, 20, 24, 64),
        ];
        for &(b, kv_heads, group, new, total, capacity, hd) in &shapes {
            let rows = b * kv_heads;
            let q = Tensor::randn(0f32, 1.0, (rows, group * new, hd), &dev).unwrap();
            // Views of a larger cache, as `KvCache::append` returns them.
            let cache_k = Tensor::randn(0f32, 1.0, (rows, capacity, hd), &dev).unwrap();
            let cache_v = Tensor::randn(0f32, 1.0, (rows, capacity, hd), &dev).unwrap();
            let (keys, values) = (cache_k.narrow(1, 0, total).unwrap(), cache_v.narrow(1, 0, total).unwrap());
            // Left padding on odd batches, causal among the new tokens.
            let mask = decode_mask(b, new, total, 2.min(total - new), |bi| bi % 2 == 1);
            let scale = 1.0 / (hd as f64).sqrt();
            let want =
                composed(&q, &keys.contiguous().unwrap(), &values.contiguous().unwrap(), &mask, kv_heads, scale);
            for kernel in kernels(hd) {
                let ours = q.apply_op3_no_bwd(&keys, &values, &op(kernel, &mask, kv_heads, scale, None)).unwrap();
                let diff = max_diff(&ours, &want);
                let case = format!("{kernel:?}: b {b} kv {kv_heads} group {group} new {new} total {total} hd {hd}");
                assert!(diff < 1e-5, "{case}: max diff {diff}");
            }
        }
    }

    #[test]
    fn rows_reading_shared_prompts_in_place_equal_the_composed_ops_on_copies() {
        let dev = Device::Cpu;
        /// Prompts cached, the prompt of each batch row, kv heads, group, new tokens, prompt length, own tokens,
        /// capacities (prompt, own), head dimension.
        struct Case(usize, &'static [usize], usize, usize, usize, usize, usize, (usize, usize), usize);
        let cases = [
            Case(1, &[0, 0, 0], 3, 3, 1, 40, 5, (40, 9), 64),
            Case(2, &[1, 0, 1, 1], 2, 2, 1, 17, 1, (20, 4), 64),
            Case(2, &[0, 1], 1, 4, 2, 9, 3, (9, 3), 128),
            Case(3, &[2, 2, 0], 2, 1, 1, 33, 8, (35, 12), 13),
            Case(1, &[0], 1, 2, 1, 1, 1, (1, 1), 8),
            // Several key blocks (32 keys at head dimension 128, 64 at 64), with a 16-key step of the AVX-512
            // kernel across the prompt / own split (keys 32-47 and 64-79).
            Case(1, &[0, 0], 2, 2, 1, 40, 30, (40, 32), 128),
            Case(2, &[0, 1, 0], 1, 3, 1, 70, 20, (72, 24), 64),
        ];
        for &Case(prompts, prompt_of_row, kv_heads, group, new, prompt_len, own, (cap_p, cap_o), hd) in &cases {
            let b = prompt_of_row.len();
            let total = prompt_len + own;
            let q = Tensor::randn(0f32, 1.0, (b * kv_heads, group * new, hd), &dev).unwrap();
            let view = |rows: usize, cap: usize, len: usize| {
                Tensor::randn(0f32, 1.0, (rows, cap, hd), &dev).unwrap().narrow(1, 0, len).unwrap()
            };
            let (pk, pv) = (view(prompts * kv_heads, cap_p, prompt_len), view(prompts * kv_heads, cap_p, prompt_len));
            let (ok, ov) = (view(b * kv_heads, cap_o, own), view(b * kv_heads, cap_o, own));
            // Row 0 has left padding in its prompt; the new tokens are causal among themselves.
            let mask = decode_mask(b, new, total, 2.min(prompt_len - 1), |bi| bi == 0);
            let kv = LayerKv {
                keys: ok.clone(),
                values: ov.clone(),
                shared: Some(crate::kv_cache::SharedLayer { keys: &pk, values: &pv, prompt_of_row }),
            };
            let (keys, values) = kv.materialized(kv_heads).unwrap();
            let scale = 1.0 / (hd as f64).sqrt();
            let want = composed(&q, &keys, &values, &mask, kv_heads, scale);
            for kernel in kernels(hd) {
                let shared =
                    SharedPrompts { keys: pk.clone(), values: pv.clone(), prompt_of_row: prompt_of_row.to_vec() };
                let ours = q.apply_op3_no_bwd(&ok, &ov, &op(kernel, &mask, kv_heads, scale, Some(shared))).unwrap();
                let diff = max_diff(&ours, &want);
                let case =
                    format!("{kernel:?}: rows {prompt_of_row:?} kv {kv_heads} group {group} new {new} hd {hd}");
                assert!(diff < 1e-5, "{case}: max diff {diff}");
            }
            // The entry point takes the same path.
            let diff = max_diff(&decode_attention(&q, &kv, &mask, kv_heads, scale).unwrap(), &want);
            assert!(diff < 1e-5, "decode_attention: max diff {diff}");
        }
    }

    #[test]
    fn the_avx2_kernel_is_picked_for_the_head_dimensions_it_covers() {
        if !has_avx2() || std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        assert_eq!(Kernel::for_head_dim(64), Kernel::Avx2);
        assert_eq!(Kernel::for_head_dim(128), Kernel::Avx2);
        for hd in [8, 13, 32, 96] {
            assert_eq!(Kernel::for_head_dim(hd), Kernel::Avx2Autovectorised, "head dimension {hd}");
        }
    }

    /// Ragged lengths (none a multiple of 8, some over several key blocks: 64 keys at head dimension 64, 32 at 128)
    /// for every batch size, new token count and query block split (queries 1 to 16: blocks of 3, 2 and 1).
    #[test]
    fn the_avx2_kernel_equals_the_composed_ops_at_every_batch_size_new_token_count_and_ragged_length() {
        if !has_avx2() {
            eprintln!("no AVX2 + FMA on this CPU: the AVX2 kernel is not tested");
            return;
        }
        let dev = Device::Cpu;
        for hd in [64, 128] {
            for b in [1, 2, 5, 8] {
                for new in 1..=MAX_NEW_TOKENS {
                    for (kv_heads, group) in [(3, 3), (1, 4)] {
                        for total in [new, 7, 13, 61, 67, 131] {
                            let rows = b * kv_heads;
                            let q = Tensor::randn(0f32, 1.0, (rows, group * new, hd), &dev).unwrap();
                            let cache = || Tensor::randn(0f32, 1.0, (rows, total + 5, hd), &dev).unwrap();
                            let (keys, values) =
                                (cache().narrow(1, 0, total).unwrap(), cache().narrow(1, 0, total).unwrap());
                            let mask = decode_mask(b, new, total, 3.min(total - new), |bi| bi % 2 == 1);
                            let scale = 1.0 / (hd as f64).sqrt();
                            let (ck, cv) = (keys.contiguous().unwrap(), values.contiguous().unwrap());
                            let want = composed(&q, &ck, &cv, &mask, kv_heads, scale);
                            let case = format!("b {b} kv {kv_heads} group {group} new {new} total {total} hd {hd}");
                            let kv = (&keys, &values);
                            assert_kernel_gives(Kernel::Avx2, &q, kv, None, &mask, kv_heads, scale, &want, &case);
                        }
                    }
                }
            }
        }
    }

    /// Shared prompts whose lengths put an 8-key step of the AVX2 kernel across the prompt / own split (keys 8-15
    /// of 13, 56-63 of 61, 64-71 of 70, 24-31 of 29), for several batch sizes and new token counts.
    #[test]
    fn the_avx2_kernel_reads_shared_prompts_in_place_like_the_composed_ops_on_copies() {
        if !has_avx2() {
            eprintln!("no AVX2 + FMA on this CPU: the AVX2 kernel is not tested");
            return;
        }
        let dev = Device::Cpu;
        let (prompts, kv_heads, group) = (2, 3, 3);
        for hd in [64, 128] {
            for b in [1, 3, 8] {
                let prompt_of_row: Vec<usize> = (0..b).map(|bi| (bi * 5 + 1) % prompts).collect();
                for new in 1..=MAX_NEW_TOKENS {
                    // Prompt lengths, and own keys besides the new tokens.
                    for (prompt_len, extra) in [(5, 1), (13, 2), (29, 35), (61, 0), (70, 3)] {
                        let (own, total) = (new + extra, prompt_len + new + extra);
                        let q = Tensor::randn(0f32, 1.0, (b * kv_heads, group * new, hd), &dev).unwrap();
                        let view = |rows: usize, len: usize| {
                            Tensor::randn(0f32, 1.0, (rows, len + 3, hd), &dev).unwrap().narrow(1, 0, len).unwrap()
                        };
                        let (pk, pv) = (view(prompts * kv_heads, prompt_len), view(prompts * kv_heads, prompt_len));
                        let (ok, ov) = (view(b * kv_heads, own), view(b * kv_heads, own));
                        let mask = decode_mask(b, new, total, 2, |bi| bi % 3 == 0);
                        let kv = LayerKv {
                            keys: ok.clone(),
                            values: ov.clone(),
                            shared: Some(crate::kv_cache::SharedLayer {
                                keys: &pk,
                                values: &pv,
                                prompt_of_row: &prompt_of_row,
                            }),
                        };
                        let (keys, values) = kv.materialized(kv_heads).unwrap();
                        let scale = 1.0 / (hd as f64).sqrt();
                        let want = composed(&q, &keys, &values, &mask, kv_heads, scale);
                        let shared = SharedPrompts {
                            keys: pk.clone(),
                            values: pv.clone(),
                            prompt_of_row: prompt_of_row.clone(),
                        };
                        let case = format!("rows {prompt_of_row:?} new {new} prompt {prompt_len} own {own} hd {hd}");
                        let kv = (&ok, &ov);
                        assert_kernel_gives(Kernel::Avx2, &q, kv, Some(shared), &mask, kv_heads, scale, &want, &case);
                    }
                }
            }
        }
    }

    #[test]
    fn rows_continuing_one_prompt_through_one_head_go_together_and_groups_split_to_feed_the_threads() {
        let dev = Device::Cpu;
        let (kv_heads, mask) = (2, Tensor::zeros((4, 1, 10), DType::F32, &dev).unwrap());
        let prompts = Tensor::zeros((2 * kv_heads, 6, 8), DType::F32, &dev).unwrap();
        // Batch rows 0, 2, 3 continue prompt 0 and row 1 prompt 1; cache row r is batch row r / 2, head r % 2.
        let shared = SharedPrompts { keys: prompts.clone(), values: prompts, prompt_of_row: vec![0, 1, 0, 0] };
        let grouped = op(Kernel::Portable, &mask, kv_heads, 1.0, Some(shared));
        let groups = vec![vec![0, 4, 6], vec![1, 5, 7], vec![2], vec![3]];
        assert_eq!(grouped.tasks(1), groups);
        assert_eq!(grouped.tasks(2), groups, "four groups already give two threads two tasks each");
        assert_eq!(grouped.tasks(4), vec![vec![0, 4], vec![6], vec![1, 5], vec![7], vec![2], vec![3]]);
        let alone = op(Kernel::Portable, &mask, kv_heads, 1.0, None);
        assert_eq!(alone.tasks(3), (0..8).map(|r| vec![r]).collect::<Vec<_>>());
    }

    #[test]
    fn a_task_of_rows_gives_each_row_the_same_bits_as_attending_it_alone() {
        let dev = Device::Cpu;
        // One prompt of 150 keys (several key blocks and a partial one), 8 rows of 5 own keys each.
        let (kv_heads, group, hd, prompt_len, own) = (3, 3, 64, 150, 5);
        let (b, total) = (8, prompt_len + own);
        let q = Tensor::randn(0f32, 1.0, (b * kv_heads, group, hd), &dev).unwrap();
        let (pk, pv) = (
            Tensor::randn(0f32, 1.0, (kv_heads, prompt_len, hd), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (kv_heads, prompt_len, hd), &dev).unwrap(),
        );
        let (ok, ov) = (
            Tensor::randn(0f32, 1.0, (b * kv_heads, own, hd), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (b * kv_heads, own, hd), &dev).unwrap(),
        );
        let mask = decode_mask(b, 1, total, 3, |bi| bi % 3 == 1);
        let shared = SharedPrompts { keys: pk.clone(), values: pv.clone(), prompt_of_row: vec![0; b] };
        let op = op(Kernel::Portable, &mask, kv_heads, 0.125, Some(shared));
        fn storage(t: &Tensor) -> impl std::ops::Deref<Target = Storage> + '_ {
            t.storage_and_layout().0
        }
        fn cache_view<'a>(s: &'a Storage, t: &Tensor, hd: usize) -> CacheView<'a> {
            CacheView::new(cpu(s), t.layout(), hd).unwrap()
        }
        let (qs, pks, pvs, oks, ovs) = (storage(&q), storage(&pk), storage(&pv), storage(&ok), storage(&ov));
        let view = |s, t| cache_view(s, t, hd);
        let q_all = cpu(&qs).as_slice::<f32>().unwrap();
        let row = |r: usize| {
            let rows_of =
                |prompt, own| KeyRows { prompt, prompt_row: r % kv_heads, split: prompt_len, own, own_row: r };
            Row {
                q: &q_all[r * group * hd..(r + 1) * group * hd],
                keys: rows_of(view(&pks, &pk), view(&oks, &ok)),
                values: rows_of(view(&pvs, &pv), view(&ovs, &ov)),
                mask: &op.mask[(r / kv_heads) * total..][..total],
            }
        };
        let task: Vec<usize> = (0..b).map(|bi| bi * kv_heads + 1).collect();
        for kernel in kernels(hd) {
            let rows: Vec<Row> = task.iter().map(|&r| row(r)).collect();
            let mut together = vec![f32::NAN; task.len() * group * hd];
            attend_dispatch(&op, &rows, &mut together, kernel);
            for (i, &r) in task.iter().enumerate() {
                let mut alone = vec![f32::NAN; group * hd];
                attend_dispatch(&op, &[row(r)], &mut alone, kernel);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&together[i * group * hd..][..group * hd]), bits(&alone), "{kernel:?}, row {r}");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 3, 8), DType::F32, &dev).unwrap();
        let kv = Tensor::zeros((2, 5, 8), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((1, 1, 4), DType::F32, &dev).unwrap();
        let own = LayerKv { keys: kv.clone(), values: kv.clone(), shared: None };
        let err = decode_attention(&q, &own, &mask, 2, 1.0).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        // A row continuing a prompt the shared view does not hold.
        let prompt = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((1, 1, 9), DType::F32, &dev).unwrap();
        let q = Tensor::zeros((2, 3, 8), DType::F32, &dev).unwrap();
        let shared = |prompt_of_row| LayerKv {
            keys: kv.clone(),
            values: kv.clone(),
            shared: Some(crate::kv_cache::SharedLayer { keys: &prompt, values: &prompt, prompt_of_row }),
        };
        assert!(decode_attention(&q, &shared(&[0]), &mask, 2, 1.0).is_ok());
        let err = decode_attention(&q, &shared(&[1]), &mask, 2, 1.0).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
