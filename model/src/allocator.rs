//! Keeps freed tensor buffers inside the process.
//!
//! candle allocates a fresh buffer for every intermediate tensor. With glibc's defaults, every buffer above the
//! (dynamic) mmap threshold is mapped on allocation and unmapped on free, so the next tensor of the same size
//! page-faults its memory in again and has it zeroed by the kernel: in a training forward + backward of
//! SmolLM2-135M that kernel work was about a quarter of the profile. Raising the mmap threshold to its maximum
//! (32 MiB: larger buffers, like a (vocabulary x hidden) gradient, are still mapped) lets those buffers be reused,
//! and glibc never trims its heap: a step that frees more than any finite trim threshold at once (a training step
//! frees gigabytes between its forward and its backward) would otherwise hand the memory back and fault all of it
//! in again. With a 2 GiB threshold, `strace` showed the heap shrink by 2.1 GB twice in a two-iteration `bench
//! train` (8 x 256, full fine-tuning) on two threads, and `perf` the kernel clearing pages in 14-20% of the
//! samples; never trimming took that run from 95.6 / 105.7 / 105.6 to 128.9 / 136.3 / 132.3 tokens/s (two threads)
//! and from 66.0 / 64.6 to 93.0 / 86.8 (one thread; Zen 4, alternating binaries). The process's peak memory does
//! not grow (freed memory is reused, not added to), but it stays resident until the process ends.
//!
//! One arena for every thread: glibc gives each new thread its own arena, whose heaps are at most 64 MiB and are
//! handed back to the kernel when they empty, so a worker thread of [`crate::data_parallel`] faulted its tensor
//! memory in afresh on every pass. A data-parallel `bench train` (8 x 256, full fine-tuning, two threads, Zen 3)
//! went from 105.7 / 104.1 / 103.8 tokens/s to 134.0 with `GLIBC_TUNABLES=glibc.malloc.arena_max=1`, the setting
//! made here (one run with it, on a machine that swings by 20%: weak evidence). The lock on the one arena should
//! cost little, as tensors are few and large; that was not measured beyond two cores.

/// Applies the allocator settings above. Call once at start-up, before the first tensor; a no-op off glibc.
pub fn keep_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        // -1 is the largest threshold there is (glibc stores it unsigned): never trim.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
