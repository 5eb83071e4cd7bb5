//! `manifest.json`: what a checkpoint holds and how to check it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsKind {
    /// LoRA adapters only; the base model comes from `base_model`.
    Lora,
    /// Every weight of the model.
    Full,
}

/// Identity of the base model a checkpoint was trained from: resuming onto another model is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    /// What the user named (`.gguf` path, folder, `hf:ORG/NAME`).
    pub spec: String,
    /// sha256 of the weight files, in order.
    pub weights_sha256: Vec<String>,
    /// The decoder config, serialised.
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub step: u64,
    pub weights: WeightsKind,
    pub base_model: BaseModel,
    /// sha256 of the run config text (changing the config of a resumed run is allowed only where the trainer
    /// says so; it compares this).
    pub config_sha256: String,
    /// Metric used to rank checkpoints for "keep the best" (higher is better), if any.
    pub score: Option<f64>,
    pub created_unix: u64,
    pub files: BTreeMap<String, FileEntry>,
}
