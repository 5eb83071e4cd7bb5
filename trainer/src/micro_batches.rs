//! Micro-batches' forward and backward passes side by side on CPU threads (data parallelism), their results
//! combined in micro-batch order.
//!
//! Why: on the CPU a 135M model's single operations split over two threads wait at every op's join; whole passes,
//! one per thread, avoid those joins. On Zen 4, two one-thread processes each training half a batch did 1.18-1.21x
//! the tokens/s of one two-thread process (BENCHMARKS.md, issue 16); in one process, on Zen 3, this schedule
//! measured 1.02x (interval 0.98-1.07x) against one pass, so the gain is not yet shown in-process. The passes of a
//! wave are alive at once, so they share the memory one pass had: each pass's graph gets its share of the
//! activation memory (`ideator_model::scored::with_activation_share`), and [`wave_width`] runs no more passes than
//! the activation memory holds the gradients of. The GRPO and SFT learners and `ideator bench train` run their
//! passes through [`in_waves`], so the benchmark measures the learners' own schedule.

use candle_core::{Device, Var};
use ideator_model::scored::{activation_memory_total, with_activation_share};

use crate::Result;

/// Runs `pass` (one micro-batch's forward and backward) on every item, `width` items at a time, each on a
/// thread of its own ([`ideator_model::data_parallel::run_in_order`]), and hands the results to `fold` in item
/// order, a wave at a time. At most `width` passes (their graphs and gradients) are alive at once; each pass of a
/// wave of `n` may keep `1/n` of the activation memory before it checkpoints. A wave of one item runs on the
/// calling thread with the whole pool and the whole activation memory, as plain code would. Choose `width` with
/// [`wave_width`].
///
/// `fold` sees the results in the same order for any thread count. A pass on a one-thread pool computes the bits
/// it computes on one thread; the lone pass of a last wave of one runs with the whole pool, where the attention
/// op splits its work, and sums, by the pool's size (`ideator_model::attention`), so its bits may differ.
///
/// # Errors
/// The first error of `pass` (in item order within its wave) or of `fold`; the rest of that wave still runs, later
/// waves do not.
pub fn in_waves<I: Sync, T: Send>(
    items: &[I],
    width: usize,
    pass: impl Fn(&I) -> Result<T> + Sync,
    mut fold: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    for wave in items.chunks(width.max(1)) {
        let shared_pass = |item: &I| with_activation_share(wave.len(), || pass(item));
        for out in ideator_model::data_parallel::run_in_order(wave, width, shared_pass)? {
            fold(out)?;
        }
    }
    Ok(())
}

/// How many passes [`in_waves`] should run side by side on `device`: on the CPU one per thread of the current
/// pool (the global `--threads`), but no more than the activation memory (`--activation-memory-gb`) holds the
/// gradient stores of, `gradient_bytes` each (see [`gradient_bytes`]); at least one. One on a GPU, where one kernel
/// stream takes the whole micro-batch.
pub fn wave_width(device: &Device, gradient_bytes: usize) -> usize {
    if device.is_cpu() {
        width_within(rayon::current_num_threads(), activation_memory_total(), gradient_bytes)
    } else {
        1
    }
}

/// `threads`, capped so that that many gradient stores of `gradient_bytes` fit in `memory` bytes; at least one.
fn width_within(threads: usize, memory: usize, gradient_bytes: usize) -> usize {
    threads.min(memory / gradient_bytes.max(1)).max(1)
}

/// Bytes of one pass's gradients of `params` (one tensor of each parameter's shape and dtype).
pub fn gradient_bytes<'a>(params: impl IntoIterator<Item = &'a Var>) -> usize {
    params.into_iter().map(|v| v.elem_count() * v.dtype().size_in_bytes()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrainerError;
    use ideator_model::scored::activation_memory;

    #[test]
    fn results_reach_fold_in_item_order_a_wave_at_a_time() {
        let items: Vec<usize> = (0..7).collect();
        for threads in [1, 2, 3, 8] {
            let alive = std::sync::atomic::AtomicUsize::new(0);
            let mut seen = Vec::new();
            in_waves(
                &items,
                threads,
                |&i| {
                    // Passes of one wave run at the same time; none of a later wave starts before `fold` took
                    // the earlier one's results.
                    let now = alive.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    Ok((i, now))
                },
                |(i, now)| {
                    assert!(now <= threads, "{threads} threads: {now} passes alive");
                    alive.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    seen.push(i);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen, items, "{threads} threads");
        }
    }

    #[test]
    fn the_width_is_capped_by_the_gradient_stores_the_memory_holds() {
        assert_eq!(width_within(8, 8 << 30, 540 << 20), 8, "15 stores of 540 MiB fit in 8 GiB");
        assert_eq!(width_within(64, 8 << 30, 540 << 20), 15);
        assert_eq!(width_within(4, 1 << 30, 540 << 20), 1, "one store of 540 MiB fits in 1 GiB");
        assert_eq!(width_within(4, 0, 540 << 20), 1, "at least one pass runs");
        assert_eq!(width_within(0, 8 << 30, 0), 1);
    }

    #[test]
    fn gradient_bytes_count_every_element_at_its_dtype_size() {
        let dev = Device::Cpu;
        let a = Var::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
        let b = Var::zeros(5, candle_core::DType::BF16, &dev).unwrap();
        assert_eq!(gradient_bytes([&a, &b]), 12 * 4 + 5 * 2);
    }

    #[test]
    fn each_pass_of_a_wave_gets_its_share_of_the_activation_memory() {
        // The share is a thread-local read on the pass's own thread; the total stays what it was.
        let items: Vec<usize> = (0..5).collect();
        let mut shares = Vec::new();
        let total = activation_memory_total();
        in_waves(
            &items,
            2,
            |_| Ok(activation_memory()),
            |bytes| {
                shares.push(bytes);
                Ok(())
            },
        )
        .unwrap();
        let half = total / 2;
        assert_eq!(shares, [half, half, half, half, total], "waves of 2, 2 and a last wave of 1");
        assert_eq!(activation_memory(), total, "the calling thread's share is restored");
    }

    #[test]
    fn an_error_stops_the_later_waves() {
        let items: Vec<usize> = (0..6).collect();
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let err = in_waves(
            &items,
            2,
            |&i| {
                ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i == 3 {
                    Err(TrainerError::Data(format!("item {i}")))
                } else {
                    Ok(i)
                }
            },
            |_| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("item 3"), "{err}");
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 4, "waves {{0,1}} and {{2,3}} ran, {{4,5}} not");
    }
}
