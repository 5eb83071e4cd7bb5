//! A preallocated key/value cache for batched decoding.
//!
//! Keys and values of each layer live in one (batch * kv_heads, capacity, head_dim) buffer written in place
//! (`slice_set`), and attention reads a narrowed view of it: no copy of the cache per step, which would cost as
//! much memory traffic as the weights at long lengths.

use candle_core::{DType, Device, Tensor};

use crate::Result;

#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(
        layers: usize,
        rows: usize,
        capacity: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for _ in 0..layers {
            keys.push(Tensor::zeros((rows, capacity, head_dim), dtype, device)?);
            values.push(Tensor::zeros((rows, capacity, head_dim), dtype, device)?);
        }
        Ok(KvCache { keys, values, len: 0, capacity })
    }

    /// Tokens cached per row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes the new keys/values (rows, new, head_dim) of `layer` after the cached ones and returns views of
    /// all keys and values so far. The length advances once per step, after every layer, with `advance`.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.dim(1)?;
        self.keys[layer].slice_set(k, 1, self.len)?;
        self.values[layer].slice_set(v, 1, self.len)?;
        Ok((self.keys[layer].narrow(1, 0, self.len + new)?, self.values[layer].narrow(1, 0, self.len + new)?))
    }

    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Keeps only the given rows (each row = one sequence's kv heads), e.g. to drop finished sequences.
    pub(crate) fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(rows, 0)?;
        }
        Ok(())
    }
}
