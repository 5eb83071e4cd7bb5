//! How a pretraining step's batch splits into micro-batches, for data parallelism over CPU threads.
//!
//! A tiny GPT's tensor operations (1,024 x 128 matrices) are too small for candle's thread pool to pay off: with
//! two threads per operation a run was slower than with one. Splitting a step's batch into micro-batches that run
//! whole forward and backward passes side by side, each on one thread (`ideator_model::data_parallel`), uses every
//! core instead.
//!
//! The number of micro-batches is fixed by the batch (not by the thread count), and their results are combined in
//! micro-batch order whatever thread computed them, so a run gives bit-identical results with 1 or N threads.

use candle_core::Device;

/// Micro-batches per step on the CPU at most (fewer when the batch is smaller). Four lets up to four cores work;
/// with one thread the extra per-operation overhead of four smaller passes was within noise when first measured
/// (at the tiny scale, before `MIN_MICRO_BATCH_TOKENS`).
pub(crate) const CPU_MICRO_BATCHES: usize = 4;

/// Tokens a CPU micro-batch holds at least (when the step has that many). Below it the per-op overhead wins: the
/// tiny scale's 1,024 tokens in two micro-batches instead of four ran 1.07-1.21x faster on two threads (Zen 4,
/// three alternating pairs; one thread 0.92-1.15x), where the small scale (8,192 tokens) kept four (two were
/// 0.91-0.98x).
pub(crate) const MIN_MICRO_BATCH_TOKENS: usize = 512;

/// Splits `batch` rows of `seq_len` tokens into contiguous `(start, len)` micro-batches: one on a GPU (a GPU is
/// fastest with the whole batch), on the CPU up to `CPU_MICRO_BATCHES` of near-equal size with at least
/// `MIN_MICRO_BATCH_TOKENS` tokens each (one when the whole step has fewer). The split depends only on the batch's
/// shape, never on the thread count, so results are the same on any number of threads.
pub fn split(batch: usize, seq_len: usize, device: &Device) -> Vec<(usize, usize)> {
    // Near-equal parts of at least `rows` rows each: the smallest part has batch / n (rounded down) rows.
    let rows = MIN_MICRO_BATCH_TOKENS.div_ceil(seq_len.max(1));
    let n = if device.is_cpu() { (batch / rows).clamp(1, CPU_MICRO_BATCHES) } else { 1 };
    let (base, extra) = (batch / n, batch % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let part = (start, len);
            start += len;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_batch_in_near_equal_contiguous_parts() {
        let cpu = Device::Cpu;
        assert_eq!(split(8, 256, &cpu), vec![(0, 2), (2, 2), (4, 2), (6, 2)]);
        assert_eq!(split(10, 256, &cpu), vec![(0, 3), (3, 3), (6, 2), (8, 2)]);
        assert_eq!(split(3, 512, &cpu), vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(split(1, 4096, &cpu), vec![(0, 1)]);
        // The tiny scale's 8 x 128 tokens: two micro-batches of 512.
        assert_eq!(split(8, 128, &cpu), vec![(0, 4), (4, 4)]);
        // A step smaller than one micro-batch's minimum stays whole.
        assert_eq!(split(4, 16, &cpu), vec![(0, 4)]);
        // Rows that do not divide evenly: 3 x 400 would be 800 + 400 tokens in two, so it stays one.
        assert_eq!(split(3, 400, &cpu), vec![(0, 3)]);
        for (batch, seq_len) in [(5, 220), (7, 100), (32, 256), (9, 64), (2, 1000)] {
            let parts = split(batch, seq_len, &cpu);
            assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), batch);
            if parts.len() > 1 {
                assert!(
                    parts.iter().all(|p| p.1 * seq_len >= MIN_MICRO_BATCH_TOKENS),
                    "{batch} x {seq_len}: {parts:?}"
                );
            }
        }
    }
}
