//! The allocator settings keep even the largest freed buffers in the process: a buffer the size of a tied
//! embedding's gradient, freed and allocated again, is not page-faulted in (and zeroed by the kernel) a second time.
//! A process of its own without the test harness (`harness = false` in Cargo.toml): the settings are process-wide,
//! and glibc binds a thread to its arena at the thread's first allocation, so the check runs on the main thread, as
//! the binary's tensor work does after `main` applies the settings.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    a_freed_buffer_above_glibcs_mmap_threshold_is_reused_without_faults();
    println!("allocator: a freed buffer above glibc's mmap threshold is reused without page faults: ok");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("allocator: the settings are glibc's; nothing to check on this target");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn a_freed_buffer_above_glibcs_mmap_threshold_is_reused_without_faults() {
    ideator_model::allocator::keep_freed_tensor_memory();
    // 113 MB: SmolLM2-135M's (49,152 x 576) f32 embedding gradient, above the largest mmap threshold glibc allows.
    let bytes = 49_152 * 576 * 4;
    let first = faults_of_one_buffer(bytes);
    let second = faults_of_one_buffer(bytes);
    let third = faults_of_one_buffer(bytes);
    assert!(first > 0, "the first buffer must fault its pages in (got {first} faults)");
    assert!(
        second * 20 < first && third * 20 < first,
        "a freed buffer of {bytes} bytes was faulted in again: {first} faults, then {second} and {third}"
    );
}

/// Faults taken while a fresh buffer of `bytes` is allocated, written in full (as a tensor's output is) and freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn faults_of_one_buffer(bytes: usize) -> i64 {
    let before = minor_faults();
    let buffer = vec![1u8; bytes];
    std::hint::black_box(&buffer);
    drop(buffer);
    minor_faults() - before
}

/// Minor page faults of this thread so far.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_minflt
}
