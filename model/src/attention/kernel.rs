//! Training attention of one key/value head on plain slices: the forward pass and its backward, in blocks of query
//! rows, with gemm's products and the fused row passes of rows.rs. One call works on one (batch, kv_head) pair
//! and keeps two score blocks of (`BLOCK_ROWS` x keys) floats as scratch, so nothing of size (queries x keys)
//! is ever allocated.
//!
//! Layout (see the module doc of attention/mod.rs): `q` is (group * t, d), the query heads that share this key
//! head stacked group-major; `k` and `v` are (offset + t, d); query row `g * t + i` sees keys `0..=offset + i`.
//! The backward pass is FlashAttention's (Dao et al. 2022, algorithm 2) with blocked products: recompute
//! `P = exp(S - lse)`, then `dV += P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)` with `D_i = dO_i . O_i`,
//! `dQ = scale dS K`, `dK += scale dS^T Q`.

use super::rows::RowPath;
use crate::cpu_op::product;

/// Query rows per group processed together. 64 rows of a 1,750-key prompt are 450 KB of scores: two such blocks
/// stay in this machine class's 2 MB L2 between the pass that writes them and the product that reads them.
const BLOCK_ROWS: usize = 64;

/// The shape of one head's attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// Query heads per key/value head.
    pub group: usize,
    /// Query positions per head.
    pub t: usize,
    /// Keys before the first query (a shared prefix); there are `offset + t` keys.
    pub offset: usize,
    /// Head dimension.
    pub d: usize,
    /// `1 / sqrt(d)`.
    pub scale: f32,
}

impl Dims {
    /// Keys per head: the offset and the queries' own.
    pub(crate) fn keys(&self) -> usize {
        self.offset + self.t
    }

    /// Query blocks `(t0, t1)`, each `t1 - t0 <= BLOCK_ROWS` positions.
    fn blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let t = self.t;
        (0..t).step_by(BLOCK_ROWS).map(move |t0| (t0, (t0 + BLOCK_ROWS).min(t)))
    }

    /// Keys seen by position `i`.
    fn seen(&self, i: usize) -> usize {
        self.offset + i + 1
    }
}

/// Forward pass of one head: writes `out` (group * t, d) and the log-sum-exp of every query row, `lse` (group *
/// t). Slices as in the module doc.
pub(crate) fn forward(dims: Dims, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32], path: RowPath) {
    let Dims { group, t, d, scale, .. } = dims;
    let mut scores = vec![0f32; BLOCK_ROWS * dims.keys()];
    for (t0, t1) in dims.blocks() {
        // Keys past offset + t1 - 1 are hidden from the whole block: skip them.
        let (rows, limit) = (t1 - t0, dims.offset + t1);
        for g in 0..group {
            let first = g * t + t0;
            let s = &mut scores[..rows * limit];
            product((rows, limit, d), s, limit, false, (&q[first * d..], d, 1), (k, 1, d), scale, 1);
            for (r, row) in s.chunks_exact_mut(limit).enumerate() {
                lse[first + r] = path.softmax(row, dims.seen(t0 + r));
            }
            product((rows, d, limit), &mut out[first * d..], d, false, (s, limit, 1), (v, d, 1), 1.0, 1);
        }
    }
}

/// The inputs of one head's backward pass: the forward's inputs, output and log-sum-exps, and the output's
/// gradient, all laid out as in [`forward`].
pub(crate) struct Saved<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: &'a [f32],
    pub lse: &'a [f32],
    pub grad_out: &'a [f32],
}

/// Backward pass of one head: writes `dq` (group * t, d), `dk` and `dv` (offset + t, d).
pub(crate) fn backward(dims: Dims, x: &Saved, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], path: RowPath) {
    let Dims { group, t, d, scale, .. } = dims;
    // D_i = dO_i . O_i, the row term of the softmax's gradient.
    let delta: Vec<f32> = x
        .grad_out
        .chunks_exact(d)
        .zip(x.out.chunks_exact(d))
        .map(|(a, b)| a.iter().zip(b).map(|(a, b)| a * b).sum())
        .collect();
    dk.fill(0.0);
    dv.fill(0.0);
    let mut p = vec![0f32; BLOCK_ROWS * dims.keys()];
    let mut ds = vec![0f32; BLOCK_ROWS * dims.keys()];
    for (t0, t1) in dims.blocks() {
        let (rows, limit) = (t1 - t0, dims.offset + t1);
        for g in 0..group {
            let first = g * t + t0;
            let (q_blk, do_blk) = (&x.q[first * d..], &x.grad_out[first * d..]);
            let (p, ds) = (&mut p[..rows * limit], &mut ds[..rows * limit]);
            product((rows, limit, d), p, limit, false, (q_blk, d, 1), (x.k, 1, d), scale, 1);
            for (r, row) in p.chunks_exact_mut(limit).enumerate() {
                path.probabilities(row, dims.seen(t0 + r), x.lse[first + r]);
            }
            product((limit, d, rows), dv, d, true, (p, 1, limit), (do_blk, d, 1), 1.0, 1);
            product((rows, limit, d), ds, limit, false, (do_blk, d, 1), (x.v, 1, d), 1.0, 1);
            for (r, (ds_row, p_row)) in ds.chunks_exact_mut(limit).zip(p.chunks_exact(limit)).enumerate() {
                let delta_r = delta[first + r];
                ds_row.iter_mut().zip(p_row).for_each(|(s, &p)| *s = p * (*s - delta_r));
            }
            product((rows, d, limit), &mut dq[first * d..], d, false, (ds, limit, 1), (x.k, d, 1), scale, 1);
            product((limit, d, rows), dk, d, true, (ds, 1, limit), (q_blk, d, 1), scale, 1);
        }
    }
}
