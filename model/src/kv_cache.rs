//! A preallocated key/value cache for batched decoding.
//!
//! Keys and values of each layer live in one (batch * kv_heads, capacity, head_dim) buffer written in place
//! (`slice_set`), and attention reads a narrowed view of it: no copy of the cache per step, which would cost as
//! much memory traffic as the weights at long lengths.
//!
//! Rows that continue the same prompt (a GRPO group, an evaluation's samples) can keep that prompt's keys and
//! values once ([`KvCache::into_shared_prompts`]): each row then stores only its own new tokens, and attention
//! reads the prompt's part in place for every row that continues it. At batch 8 after a 1,650-token prompt the
//! copies were 8 x 76 MB read per decode step (SmolLM2-135M), more than the weights' 538 MB; shared, the prompt is
//! read from memory once and from cache for the other rows.

use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer, the rows' own keys and values (batch * kv_heads, capacity, head_dim).
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// Tokens in the rows' own part.
    len: usize,
    capacity: usize,
    kv_heads: usize,
    /// The prompts the rows continue, kept once; `None` when every row holds all its keys.
    shared: Option<SharedPrompts>,
}

/// Prompts' keys and values kept once for all the rows that continue them.
#[derive(Debug, Clone)]
struct SharedPrompts {
    /// Per layer, (prompts * kv_heads, len, head_dim) views.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// Tokens per prompt (left-padded to a common length).
    len: usize,
    /// For each sequence of the batch, the prompt it continues.
    prompt_of_row: Vec<usize>,
}

/// One layer's cached keys and values as attention reads them, after [`KvCache::append`].
pub(crate) struct LayerKv<'a> {
    /// The rows' own keys and values (batch * kv_heads, own tokens, head_dim): strided views of the cache.
    pub(crate) keys: Tensor,
    pub(crate) values: Tensor,
    /// The shared prompts' part, which comes before the own keys of each row.
    pub(crate) shared: Option<SharedLayer<'a>>,
}

/// A layer's shared prompts: keys and values (prompts * kv_heads, len, head_dim) and, for each sequence of the
/// batch, the prompt it continues.
pub(crate) struct SharedLayer<'a> {
    pub(crate) keys: &'a Tensor,
    pub(crate) values: &'a Tensor,
    pub(crate) prompt_of_row: &'a [usize],
}

impl LayerKv<'_> {
    /// Keys per row: the shared prompt's and the row's own.
    pub(crate) fn total(&self) -> Result<usize> {
        let prompt = match &self.shared {
            Some(s) => s.keys.dim(1)?,
            None => 0,
        };
        Ok(prompt + self.keys.dim(1)?)
    }

    /// Every row's keys and values (batch * kv_heads, total, head_dim), the shared prompt's copied in front of the
    /// row's own: what the composed ops (and other devices) read.
    pub(crate) fn materialized(&self, kv_heads: usize) -> Result<(Tensor, Tensor)> {
        let Some(s) = &self.shared else {
            return Ok((self.keys.clone(), self.values.clone()));
        };
        let rows = Tensor::new(head_rows(s.prompt_of_row, kv_heads).as_slice(), self.keys.device())?;
        let full = |prompt: &Tensor, own: &Tensor| -> Result<Tensor> {
            // The prompt views are narrowed to the prompt length, and index_select wants contiguous input.
            let prompt = prompt.contiguous()?.index_select(&rows, 0)?;
            Ok(Tensor::cat(&[&prompt, &own.contiguous()?], 1)?)
        };
        Ok((full(s.keys, &self.keys)?, full(s.values, &self.values)?))
    }
}

impl KvCache {
    /// An empty cache of `layers` layers for `batch` sequences of `kv_heads` key/value heads each, and up to
    /// `capacity` tokens per sequence.
    pub fn new(
        layers: usize,
        (batch, kv_heads): (usize, usize),
        capacity: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for _ in 0..layers {
            keys.push(Tensor::zeros((batch * kv_heads, capacity, head_dim), dtype, device)?);
            values.push(Tensor::zeros((batch * kv_heads, capacity, head_dim), dtype, device)?);
        }
        Ok(KvCache { keys, values, len: 0, capacity, kv_heads, shared: None })
    }

    /// Tokens cached per sequence (a shared prompt's included).
    pub fn len(&self) -> usize {
        self.prompt_len() + self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most tokens per sequence (a shared prompt's included).
    pub fn capacity(&self) -> usize {
        self.prompt_len() + self.capacity
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.keys.first().map_or(0, |k| k.dims()[0] / self.kv_heads)
    }

    fn prompt_len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.len)
    }

    /// Writes the new keys/values (rows, new, head_dim) of `layer` after the cached ones and returns what attention
    /// reads. The length advances once per step, after every layer, with `advance`.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<LayerKv<'_>> {
        let new = k.dim(1)?;
        self.keys[layer].slice_set(k, 1, self.len)?;
        self.values[layer].slice_set(v, 1, self.len)?;
        let shared = self.shared.as_ref().map(|s| SharedLayer {
            keys: &s.keys[layer],
            values: &s.values[layer],
            prompt_of_row: &s.prompt_of_row,
        });
        Ok(LayerKv {
            keys: self.keys[layer].narrow(1, 0, self.len + new)?,
            values: self.values[layer].narrow(1, 0, self.len + new)?,
            shared,
        })
    }

    pub(crate) fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Keeps only the sequences `keep` (indices into the batch, in their new order), e.g. to drop finished ones.
    ///
    /// # Errors
    /// An index outside the batch.
    pub fn select_rows(&mut self, keep: &[usize]) -> Result<()> {
        let batch = self.batch();
        if let Some(&bad) = keep.iter().find(|&&i| i >= batch) {
            return Err(ModelError::Invalid(format!("KV cache: sequence {bad} kept out of a batch of {batch}")));
        }
        let rows = self.rows_of(keep)?;
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(&rows, 0)?;
        }
        if let Some(s) = &mut self.shared {
            s.prompt_of_row = keep.iter().map(|&i| s.prompt_of_row[i]).collect();
        }
        Ok(())
    }

    /// This cache's sequences, each a distinct prompt, made the shared prompts of a new batch: sequence `i` of it
    /// continues prompt `prompt_of_row[i]` and has room for `capacity` tokens of its own. The prompts' keys and
    /// values are kept once (not copied per sequence) and read in place by every sequence that continues them.
    ///
    /// # Errors
    /// A cache that already shares prompts, or a prompt index outside this cache's batch.
    pub fn into_shared_prompts(self, prompt_of_row: &[usize], capacity: usize) -> Result<KvCache> {
        let prompts = self.batch();
        if self.shared.is_some() {
            return Err(ModelError::Invalid("KV cache: its rows already continue shared prompts".into()));
        }
        if let Some(&bad) = prompt_of_row.iter().find(|&&p| p >= prompts) {
            return Err(ModelError::Invalid(format!("KV cache: prompt {bad} of {prompts} cached prompts")));
        }
        let Some(first) = self.keys.first() else {
            return Err(ModelError::Invalid("KV cache: a model without layers has no prompts to share".into()));
        };
        let (head_dim, dtype, device) = (first.dim(2)?, first.dtype(), first.device().clone());
        let layers = self.keys.len();
        let mut own = KvCache::new(layers, (prompt_of_row.len(), self.kv_heads), capacity, head_dim, dtype, &device)?;
        let view = |t: &Tensor| t.narrow(1, 0, self.len);
        own.shared = Some(SharedPrompts {
            keys: self.keys.iter().map(view).collect::<candle_core::Result<_>>()?,
            values: self.values.iter().map(view).collect::<candle_core::Result<_>>()?,
            len: self.len,
            prompt_of_row: prompt_of_row.to_vec(),
        });
        Ok(own)
    }

    /// The cache rows (sequence * kv_heads + head) of sequences `seqs`.
    fn rows_of(&self, seqs: &[usize]) -> Result<Tensor> {
        let device = self.keys.first().map_or(Device::Cpu, |k| k.device().clone());
        Ok(Tensor::new(head_rows(seqs, self.kv_heads).as_slice(), &device)?)
    }
}

/// The buffer rows (sequence * kv_heads + head) of sequences `seqs`, in order.
fn head_rows(seqs: &[usize], kv_heads: usize) -> Vec<u32> {
    seqs.iter().flat_map(|&s| (0..kv_heads).map(move |h| (s * kv_heads + h) as u32)).collect()
}
