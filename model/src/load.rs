//! One call from what the user named (`--model SPEC`) to a ready decoder and tokenizer.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::weights::{gguf, hub, safetensors_dir, spec::ModelSpec};
use crate::{Decoder, Result, Tokenizer};

/// A loaded model: decoder, tokenizer, and where they came from.
pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub spec: ModelSpec,
    /// The files the weights were read from (for identity hashes in checkpoints).
    pub weight_files: Vec<PathBuf>,
}

/// Loads weights (dequantised / converted to `dtype`) and tokenizer from a GGUF file, a folder or the hub.
pub fn load_model(spec: &ModelSpec, dtype: DType, device: &Device) -> Result<Model> {
    let (raw, tokenizer, weight_files) = match spec {
        ModelSpec::Gguf(path) => {
            let content = gguf::read_content(path)?;
            let tokenizer = Tokenizer::from_gguf(&content)
                .map_err(|e| crate::ModelError::file(path, format!("cannot build its tokenizer: {e}")))?;
            (gguf::load(path, &content)?, tokenizer, vec![path.clone()])
        }
        ModelSpec::Folder(dir) => {
            if !dir.join("config.json").is_file() {
                return Err(crate::ModelError::file(
                    dir,
                    "is not a model folder: config.json is missing (a model folder holds config.json, \
                     model.safetensors or its shards, and tokenizer.json)",
                ));
            }
            let files = safetensors_dir::weight_files(dir)?;
            let raw = safetensors_dir::load(&dir.join("config.json"), &files)?;
            (raw, Tokenizer::from_folder(dir)?, files)
        }
        ModelSpec::Hub { repo, revision } => {
            let dir = hub::fetch(repo, revision)?;
            let files = safetensors_dir::weight_files(&dir)?;
            let raw = safetensors_dir::load(&dir.join("config.json"), &files)?;
            (raw, Tokenizer::from_folder(&dir)?, files)
        }
    };
    if tokenizer.vocab_size() > raw.config.vocab_size {
        tracing::warn!(
            "tokenizer has {} tokens but the model's embedding has {} rows",
            tokenizer.vocab_size(),
            raw.config.vocab_size
        );
    }
    let decoder = Decoder::from_raw(raw, dtype, device)?;
    Ok(Model { decoder, tokenizer, spec: spec.clone(), weight_files })
}
