//! A Hugging Face model folder: `config.json` and `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::RawWeights;
use crate::config::ModelConfig;
use crate::{ModelError, Result};

/// The safetensors files of a folder: the single file, or every shard named by the index.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        return shards_from_index(&index);
    }
    Err(ModelError::file(dir, "no model.safetensors or model.safetensors.index.json in this folder"))
}

/// Shard file names listed in a `model.safetensors.index.json`, resolved next to it.
pub(crate) fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::file(index, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::file(index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::file(index, "has no weight_map object"))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads `config.json` and every tensor (converted to f32) of the given files.
pub fn load(config_path: &Path, files: &[PathBuf]) -> Result<RawWeights> {
    let config = ModelConfig::from_hf_json(config_path)?;
    let mut tensors = HashMap::new();
    for file in files {
        if !file.is_file() {
            return Err(ModelError::file(file, "weight file is missing"));
        }
        // Safety: the file is memory-mapped read-only; we copy every tensor out before the map is dropped.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }.map_err(|e| {
            ModelError::file(file, format!("not a readable safetensors file (truncated or corrupt?): {e}"))
        })?;
        for (name, _) in st.tensors() {
            let t = st
                .load(&name, &Device::Cpu)
                .map_err(|e| ModelError::file(file, format!("tensor '{name}' is unreadable: {e}")))?;
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(RawWeights { config, tensors, rope_freq_factors: None })
}
