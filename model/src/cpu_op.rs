//! Glue for custom ops whose CPU forward is written with ordinary tensor ops: candle hands a custom op raw
//! storage and expects raw storage back.

use candle_core::{CpuStorage, Device, Layout, Shape, Tensor};

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
