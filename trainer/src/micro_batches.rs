//! Micro-batches' forward and backward passes side by side on CPU threads (data parallelism), their results
//! combined in micro-batch order.
//!
//! Why: on the CPU a 135M model's single operations split over two threads wait at every op's join; whole passes,
//! one per thread, avoid those joins. On Zen 4, two one-thread processes each training half a batch did 1.18-1.21x
//! the tokens/s of one two-thread process (BENCHMARKS.md, issue 16); in one process, on Zen 3, this schedule
//! measured 1.02x (interval 0.98-1.07x) against one pass, so the gain is not yet shown in-process. It costs memory:
//! `threads` passes (activations and gradients) are alive at once. The GRPO and SFT learners and `ideator bench
//! train` run their passes through [`in_waves`], so the benchmark measures the learners' own schedule.

use candle_core::Device;

use crate::Result;

/// Runs `pass` (one micro-batch's forward and backward) on every item, `threads` items at a time, each on a
/// thread of its own ([`ideator_model::data_parallel::run_in_order`]), and hands the results to `fold` in item
/// order, a wave at a time. At most `threads` passes (their graphs and gradients) are alive at once. A wave of one
/// item runs on the calling thread with the whole pool, as plain code would.
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
    threads: usize,
    pass: impl Fn(&I) -> Result<T> + Sync,
    mut fold: impl FnMut(T) -> Result<()>,
) -> Result<()> {
    for wave in items.chunks(threads.max(1)) {
        for out in ideator_model::data_parallel::run_in_order(wave, threads, &pass)? {
            fold(out)?;
        }
    }
    Ok(())
}

/// Threads for data-parallel passes on `device`: the current pool's on the CPU (the global `--threads`), one on a
/// GPU, where one kernel stream takes the whole micro-batch.
pub fn threads_for(device: &Device) -> usize {
    if device.is_cpu() {
        rayon::current_num_threads()
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrainerError;

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
