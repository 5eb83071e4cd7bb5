//! Data parallelism over CPU threads: whole passes of independent micro-batches side by side, one per thread.
//!
//! Why: a small model's single operations split over the pool leave cores waiting at every op's join. On Zen 4,
//! two one-thread processes training half the batch each did 1.18-1.21x the tokens/s of one two-thread process on
//! the whole batch (SmolLM2-135M, BENCHMARKS.md, issue 16), and the pretrain environment's tiny GPT gained the same
//! way. Here each item runs on a rayon pool of one thread, so every operation inside it (the kernels that size
//! their work by `rayon::current_num_threads()`, and candle's gemm, whose threads run in the current pool) stays
//! on that thread.
//!
//! Results come back in item order whatever thread computed them: a caller that combines them in that order gets
//! the same sums with any thread count.

/// Runs `work` on every item, on up to `threads` threads, and returns the results in item order. Thread `j` takes
/// items `j, j + threads, ...`; with `threads` 1 (or one item) the items run on the calling thread and its pool,
/// as plain code would. The first error in item order is returned; a panicking item panics the caller, as does a
/// thread that cannot start (as `std::thread::spawn` does).
///
/// # Errors
/// The first error of `work`, in item order.
pub fn run_in_order<I: Sync, T: Send, E: Send>(
    items: &[I],
    threads: usize,
    work: impl Fn(&I) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(&work).collect();
    }
    let mut slots: Vec<Option<Result<T, E>>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..threads)
            .map(|j| {
                scope.spawn(move || {
                    let pool =
                        rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool starts");
                    pool.install(|| {
                        (j..items.len()).step_by(threads).map(|i| (i, work(&items[i]))).collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        for handle in handles {
            for (i, out) in handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                slots[i] = Some(out);
            }
        }
    });
    slots.into_iter().map(|s| s.expect("every item was assigned to a thread")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order_for_any_thread_count() {
        let items: Vec<u64> = (0..11).collect();
        for threads in [1, 2, 3, 8, 20] {
            let out = run_in_order(&items, threads, |&i| {
                Ok::<_, String>((i, std::thread::current().id(), rayon::current_num_threads()))
            })
            .unwrap();
            assert_eq!(out.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(), items);
            let distinct: std::collections::HashSet<_> = out.iter().map(|(_, t, _)| *t).collect();
            assert_eq!(distinct.len(), threads.min(items.len()), "{threads} threads");
            if threads > 1 {
                // Each worker's operations see a pool of one thread.
                assert!(out.iter().all(|&(_, _, pool)| pool == 1), "{threads} threads: {out:?}");
            }
        }
    }

    #[test]
    fn the_first_error_in_item_order_is_returned() {
        let items: Vec<u64> = (0..6).collect();
        let err = run_in_order(&items, 3, |&i| if i >= 2 { Err(format!("item {i}")) } else { Ok(i) }).unwrap_err();
        assert_eq!(err, "item 2");
    }
}
