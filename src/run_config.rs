//! The sections of run config files (TOML) shared by `sft` and `train`, and how to read them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// `[model]`: which ideator to load and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A .gguf file, a model folder, or hf:ORG/NAME; empty = the fetched default SmolLM2.
    pub spec: String,
    /// cpu, cuda, cuda:N or auto.
    pub device: String,
    /// Precision of sampling and of the training forward: `f32` (default) or `bf16` (on a GPU; the optimiser
    /// keeps f32 master weights and f32 moments either way).
    pub dtype: ideator_model::device::Precision,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection { spec: String::new(), device: "auto".into(), dtype: Default::default() }
    }
}

impl ModelSection {
    pub fn args(&self) -> crate::commands::model_args::ModelArgs {
        crate::commands::model_args::ModelArgs {
            model: (!self.spec.is_empty()).then(|| self.spec.clone()),
            device: self.device.clone(),
            dtype: self.dtype,
        }
    }
}

/// `[run]`: where results go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run folder; `--run-dir` overrides it. Default: runs/<config file stem>.
    pub dir: Option<PathBuf>,
    pub seed: u64,
}

/// Reads and parses a TOML config; the error names the file and the offending key.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> anyhow::Result<(T, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg = toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
    Ok((cfg, text))
}

/// A path written in a config file, relative to that file's folder (so a config works from any directory).
pub fn relative_to_config(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    } else {
        p.to_path_buf()
    }
}

/// The run folder: `--run-dir` (relative to the working directory), else `[run] dir` (relative to the config
/// file), else `runs/<config stem>` in the working directory.
pub fn run_dir_for(cli: Option<&Path>, section: &RunSection, config_path: &Path) -> PathBuf {
    if let Some(dir) = cli {
        return dir.to_path_buf();
    }
    if let Some(dir) = &section.dir {
        return relative_to_config(config_path, dir);
    }
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(stem)
}

/// Identity of the base model for checkpoints: its spec, the sha256 of its weight files and its config.
pub fn base_model_identity(model: &ideator_model::Model) -> anyhow::Result<ideator_checkpoints::BaseModel> {
    let mut hashes = Vec::new();
    for f in &model.weight_files {
        hashes.push(ideator_checkpoints::sha256_file(f)?);
    }
    Ok(ideator_checkpoints::BaseModel {
        spec: model.spec.to_string(),
        weights_sha256: hashes,
        config: serde_json::to_value(model.decoder.config())?,
    })
}
