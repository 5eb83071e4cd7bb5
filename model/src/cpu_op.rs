//! Glue for custom CPU ops: tensors to and from the raw storage candle hands a custom op, and splitting an op's
//! output into per-task chunks over the thread pool.

use candle_core::{CpuStorage, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// An f32 op input as a CPU tensor (a copy). `op` names the op in the error for a strided input.
pub(crate) fn input_tensor(op: &str, s: &CpuStorage, l: &Layout) -> candle_core::Result<Tensor> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Tensor::from_slice(&data[a..b], l.shape(), &Device::Cpu),
        None => candle_core::bail!("{op} expects contiguous inputs"),
    }
}

/// A contiguous f32 op input, borrowed. `op` names the op in the error for a strided input.
pub(crate) fn input_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{op} expects contiguous inputs"),
    }
}

/// An f32 tensor as an op output (a copy).
pub(crate) fn output_storage(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(t.flatten_all()?.to_vec1::<f32>()?), t.shape().clone()))
}

/// Calls `task(index, chunk)` for each `size`-long chunk of `out`: on rayon's pool when it has more than one
/// thread, else on the caller's thread (handing each small op to the pool and waiting for it costs tens of
/// microseconds: a third of a one-row decode step over its 211 few-rows products).
pub(crate) fn for_each_chunk_mut(out: &mut [f32], size: usize, task: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if rayon::current_num_threads() > 1 {
        out.par_chunks_mut(size).enumerate().for_each(|(i, c)| task(i, c));
    } else {
        out.chunks_mut(size).enumerate().for_each(|(i, c)| task(i, c));
    }
}

/// `task(0) .. task(n - 1)` in order: on rayon's pool when it has more than one thread, else on the caller's
/// thread (as [`for_each_chunk_mut`]).
pub(crate) fn map_tasks<T: Send>(n: usize, task: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if rayon::current_num_threads() > 1 {
        (0..n).into_par_iter().map(task).collect()
    } else {
        (0..n).map(task).collect()
    }
}

/// `work` on every item, results in item order: on rayon's pool when it has more than one thread, else on the
/// caller's thread (as [`map_tasks`], for items that own what they write, such as disjoint output chunks).
pub(crate) fn map_items<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    if rayon::current_num_threads() > 1 {
        items.into_par_iter().map(work).collect()
    } else {
        items.into_iter().map(work).collect()
    }
}

/// `dst (m x n) = alpha * dst + beta * lhs (m x k) . rhs (k x n)`, every matrix given by its slice and (row,
/// column) strides; `accumulate = false` ignores dst's old values. `threads`: gemm's own threads (1 when the caller
/// parallelises). Rounding: gemm's, the same as candle's CPU `matmul` given the same shapes and strides.
///
/// # Panics
/// A slice too short for its shape and strides, or destination rows that overlap (`dst_rs < n` with `m > 1`).
#[allow(clippy::too_many_arguments)]
pub fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    beta: f32,
    threads: usize,
) {
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() > last(m, dst_rs, n, 1), "product: dst too short");
    // Overlapping destination rows would be written by several of gemm's threads at once.
    assert!(m == 1 || dst_rs >= n, "product: destination rows overlap");
    if k > 0 {
        assert!(
            lhs.len() > last(m, lhs_rs, k, lhs_cs) && rhs.len() > last(k, rhs_rs, n, rhs_cs),
            "product: operand too short"
        );
    }
    // SAFETY: the assertions above keep every element gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
        );
    }
}

/// Calls `f` with the values of a contiguous f32 CPU tensor, borrowed (no copy).
///
/// # Errors
/// A tensor that is not an f32 CPU tensor, or not contiguous.
pub(crate) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(f(&cpu.as_slice::<f32>()?[a..b])),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// Calls `f` with the values of `N` contiguous f32 CPU tensors, borrowed (no copy): [`with_f32_slice`] for several
/// tensors at once. It holds a read lock on each tensor's storage while `f` runs; tensors may share a storage, as
/// long as nothing writes to it meanwhile (custom ops' inputs never are: a second read lock on one storage could
/// otherwise wait behind a queued writer).
///
/// # Errors
/// A tensor that is not an f32 CPU tensor, or not contiguous.
pub fn with_f32_slices<const N: usize, R>(
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("expected a CPU tensor");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("expected a contiguous tensor");
        };
        *slot = &cpu.as_slice::<f32>()?[a..b];
    }
    Ok(f(slices))
}
