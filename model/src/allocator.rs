//! Keeps freed tensor buffers inside the process.
//!
//! candle allocates a fresh buffer for every intermediate tensor. With glibc's defaults, every buffer above the
//! (dynamic) mmap threshold is mapped on allocation and unmapped on free, so the next tensor of the same size
//! page-faults its memory in again and has it zeroed by the kernel: in a training forward + backward of
//! SmolLM2-135M that kernel work was about a quarter of the profile. Raising the mmap threshold to its maximum
//! (32 MiB: larger buffers, like a vocabulary-sized logits chunk, are still mapped) and making glibc trim its heap
//! only above 2 GiB of free top memory lets those buffers be reused. The process's peak memory does not grow
//! (freed memory is reused, not added to), but it stays resident until the process ends or frees much more.

/// Applies the allocator settings above. Call once at start-up, before the first tensor; a no-op off glibc.
pub fn keep_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
