//! The log-probabilities kernel on plain slices, one block of the vocabulary at a time: `(rows x block)` logits
//! by one gemm product, then a row pass over them (rows.rs). The forward merges each row's block statistics
//! (an online softmax); the backward recomputes each block's logits, turns them into their gradient in place, and
//! takes the two products of that block: `dH += G W_block` and `dW_block = G^T H`, the latter written straight into
//! the weight gradient's rows (no accumulator per block). This is Cut Cross-Entropy's blocking over the vocabulary
//! (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"), on the CPU.
//!
//! Blocking the vocabulary rather than the rows keeps every product tall (all rows at once), where gemm runs near
//! its peak, and packs each weight block once per pass; row chunks of 64 packed the whole 113 MB head for every
//! chunk and accumulated a fresh (vocab x hidden) gradient per chunk.

use crate::attention::rows::RowPath;
use crate::cpu_op::{for_each_chunk_mut, map_tasks, product};

use super::rows::{logit_gradient, stats, RowStats};

/// Logits held per block: 2 Mi floats (8 MiB), which a last-level cache keeps between the product and the row pass.
const BLOCK_FLOATS: usize = 2 << 20;

/// Vocabulary entries per block for `rows` rows: about `BLOCK_FLOATS / rows`, a multiple of 16, at least 256 (so
/// the products stay wide) and at most `vocab`.
pub(crate) fn vocab_block(rows: usize, vocab: usize) -> usize {
    ((BLOCK_FLOATS / rows.max(1)) / 16 * 16).max(256).min(vocab).max(1)
}

/// The operands: `hidden` (rows, dim), `weight` (vocab, dim), both row-major, one target per row.
pub(crate) struct Operands<'a> {
    pub(crate) hidden: &'a [f32],
    pub(crate) weight: &'a [f32],
    pub(crate) targets: &'a [u32],
    pub(crate) dim: usize,
    /// Vocabulary entries per block (see [`vocab_block`]).
    pub(crate) block: usize,
}

impl Operands<'_> {
    fn rows(&self) -> usize {
        self.targets.len()
    }

    fn vocab(&self) -> usize {
        self.weight.len() / self.dim
    }

    /// The vocabulary blocks: (first entry, entries).
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (vocab, block) = (self.vocab(), self.block);
        (0..vocab).step_by(block).map(move |v0| (v0, block.min(vocab - v0)))
    }

    /// `logits (rows x width) = hidden . weight[v0 .. v0 + width]^T`.
    fn logits(&self, (v0, width): (usize, usize), logits: &mut [f32]) {
        let (rows, dim) = (self.rows(), self.dim);
        let w = &self.weight[v0 * dim..(v0 + width) * dim];
        product((rows, width, dim), logits, width, false, (self.hidden, dim, 1), (w, 1, dim), 1.0, gemm_threads());
    }

    /// Where a row's target falls in the block `(v0, width)`, if it does.
    fn target_in(&self, row: usize, (v0, width): (usize, usize)) -> Option<usize> {
        let t = self.targets[row] as usize;
        (v0..v0 + width).contains(&t).then(|| t - v0)
    }
}

/// gemm's threads: the pool's, since the products are the callers' only work.
fn gemm_threads() -> usize {
    rayon::current_num_threads()
}

/// Per row: `[log p(target), entropy, log-sum-exp]`, flat (rows * 3).
pub(crate) fn forward(x: &Operands, path: RowPath) -> Vec<f32> {
    let rows = x.rows();
    let mut logits = vec![0f32; rows * x.block];
    let mut acc = vec![RowStats::EMPTY; rows];
    let mut target_logit = vec![0f32; rows];
    for block in x.blocks() {
        let width = block.1;
        let logits = &mut logits[..rows * width];
        x.logits(block, logits);
        let logits = &*logits;
        let block_stats = map_tasks(rows, |r| stats(path, &logits[r * width..(r + 1) * width]));
        for (r, s) in block_stats.into_iter().enumerate() {
            acc[r] = acc[r].merge(s);
            if let Some(j) = x.target_in(r, block) {
                target_logit[r] = logits[r * width + j];
            }
        }
    }
    let mut out = Vec::with_capacity(rows * 3);
    for (s, z) in acc.iter().zip(target_logit) {
        let lse = s.log_sum_exp();
        out.extend([(z as f64 - lse) as f32, s.entropy() as f32, lse as f32]);
    }
    out
}

/// The gradients `(dL/d hidden (rows, dim), dL/d weight (vocab, dim) when `weight_grad`)` of a loss whose gradient
/// with respect to the forward's output is `grad_out` (rows * 3, the last column ignored: the log-sum-exp is
/// returned for this pass, not as a result), given that output `out`.
pub(crate) fn backward(
    x: &Operands,
    out: &[f32],
    grad_out: &[f32],
    weight_grad: bool,
    path: RowPath,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (rows, dim) = (x.rows(), x.dim);
    let mut logits = vec![0f32; rows * x.block];
    let mut d_hidden = vec![0f32; rows * dim];
    let mut d_weight = weight_grad.then(|| vec![0f32; x.weight.len()]);
    for block in x.blocks() {
        let (v0, width) = block;
        let g = &mut logits[..rows * width];
        x.logits(block, g);
        for_each_chunk_mut(g, width, |r, row| {
            let (entropy, lse) = (out[r * 3 + 1], out[r * 3 + 2]);
            let grads = (grad_out[r * 3], grad_out[r * 3 + 1]);
            logit_gradient(path, row, lse, entropy, grads, x.target_in(r, block));
        });
        let w = &x.weight[v0 * dim..(v0 + width) * dim];
        product((rows, dim, width), &mut d_hidden, dim, true, (g, width, 1), (w, dim, 1), 1.0, gemm_threads());
        if let Some(dw) = &mut d_weight {
            let dw = &mut dw[v0 * dim..(v0 + width) * dim];
            product((width, dim, rows), dw, dim, false, (g, 1, width), (x.hidden, dim, 1), 1.0, gemm_threads());
        }
    }
    (d_hidden, d_weight)
}
