//! Keeps freed tensor buffers inside the process.
//!
//! candle allocates a fresh buffer for every intermediate tensor. With glibc's defaults, every buffer above the
//! (dynamic) mmap threshold is mapped on allocation and unmapped on free, so the next tensor of the same size
//! page-faults its memory in again and has it zeroed by the kernel: in a training forward + backward of
//! SmolLM2-135M that kernel work was about a quarter of the profile. So glibc maps nothing itself here
//! (`M_MMAP_MAX` 0): every buffer comes from the heap, and glibc never trims it: a step that frees more than any
//! finite trim threshold at once (a training step frees gigabytes between its forward and its backward) would
//! otherwise hand the memory back and fault all of it in again. With a 2 GiB threshold, `strace` showed the heap
//! shrink by 2.1 GB twice in a two-iteration `bench train` (8 x 256, full fine-tuning) on two threads, and `perf` the
//! kernel clearing pages in 14-20% of the samples; never trimming took that run from 95.6 / 105.7 / 105.6 to 128.9 /
//! 136.3 / 132.3 tokens/s (two threads) and from 66.0 / 64.6 to 93.0 / 86.8 (one thread; Zen 4, alternating
//! binaries). The process's peak memory does not grow (freed memory is reused, not added to), but it stays resident
//! until the process ends.
//!
//! Why no mapping at all rather than the largest threshold (32 MiB, glibc's cap): the buffers above it are the
//! largest of a step, the (vocabulary x hidden) gradients of a tied embedding (113 MB for SmolLM2) and a micro-batch's
//! logits, and they were still mapped, faulted in and zeroed by the kernel at every use. In a full fine-tuning GRPO
//! step (`bench grpo --lora-rank 0`, one thread, Intel family 6 model 207) that was 6% of the update's samples in
//! `clear_page_erms`; with `GLIBC_TUNABLES=glibc.malloc.mmap_max=0`, alternating, the update took 8.74 / 7.66 / 8.26 s
//! against 10.11 / 8.66 / 8.61 s, and `bench train` (8 x 256) 157.0 / 148.9 / 149.8 / 143.3 tok/s against 148.8 /
//! 150.5 / 136.9 / 141.0, with the same peak memory (5.21-5.23 GB and 3.13-3.14 GB). Were the heap unable to grow,
//! glibc still falls back to a mapping.
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
        // No buffer of glibc's own mapping: the largest tensors are reused from the heap as well.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // -1 is the largest threshold there is (glibc stores it unsigned): never trim.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
