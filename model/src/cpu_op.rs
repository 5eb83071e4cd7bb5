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
