//! Starting a run from a base model plus an earlier checkpoint (e.g. RL after an SFT warm-up), and the
//! identity that the new run's checkpoints record.

use std::path::Path;

use anyhow::Context;
use ideator_checkpoints::{BaseModel, WeightsKind};
use ideator_model::Model;
use ideator_trainer::config::TrainMode;

use crate::run_config::{base_model_identity, ModelSection};

/// A checkpoint folder as named by the user: the folder itself when it holds a manifest, else the newest
/// checkpoint in it or in its `checkpoints/` subfolder (so a run folder names its latest checkpoint).
pub fn resolve_checkpoint(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    if path.join("manifest.json").is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [ideator_trainer::run_dir::RunDir::at(path).checkpoints(), path.to_path_buf()] {
        if let Some(c) = ideator_checkpoints::latest(&dir)? {
            return Ok(c.path);
        }
    }
    anyhow::bail!("{} is neither a checkpoint nor a folder with checkpoints", path.display())
}

/// The `[train]` section of the config a checkpoint was trained with (it tells the LoRA shape).
pub fn train_mode_of(checkpoint_config: &str) -> anyhow::Result<TrainMode> {
    let v: toml::Value = toml::from_str(checkpoint_config).context("the checkpoint's config.toml is invalid")?;
    match v.get("train") {
        Some(t) => Ok(t.clone().try_into().context("the checkpoint's [train] section is invalid")?),
        None => Ok(TrainMode::default()),
    }
}

/// Folds a checkpoint's trained weights into `model`: LoRA adapters are attached and merged, full weights
/// replace the model's. Refuses a checkpoint whose recorded base differs from `expected`.
pub fn apply_checkpoint(model: &mut Model, dir: &Path, expected: &BaseModel) -> anyhow::Result<()> {
    let c = ideator_checkpoints::load(dir, Some(expected))
        .with_context(|| format!("loading checkpoint {}", dir.display()))?;
    match c.weights_kind {
        WeightsKind::Lora => {
            let TrainMode::Lora { lora } = train_mode_of(&c.config_text)? else {
                anyhow::bail!("checkpoint {} holds adapters but its config is not a LoRA run", dir.display());
            };
            let vars = model.decoder.add_lora(&lora, 0)?;
            for (name, var) in &vars {
                let t = c.weights.get(name).with_context(|| format!("checkpoint lacks adapter {name}"))?;
                var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
            }
            model.decoder.merge_lora()?;
        }
        WeightsKind::Full => {
            let vars = model.decoder.make_trainable()?;
            for (name, var) in &vars {
                let t = c.weights.get(name).with_context(|| format!("checkpoint lacks weight {name}"))?;
                var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
            }
            model.decoder.refresh_sampling_copy()?;
        }
    }
    Ok(())
}

/// Loads the base model, applies the optional initial checkpoint, and returns the model with the identity
/// (base spec and hashes, plus the initial checkpoint's weights hash) that the run's checkpoints record.
pub fn load_initial_policy(
    model_section: &ModelSection,
    init: Option<&Path>,
) -> anyhow::Result<(Model, ideator_checkpoints::BaseModel)> {
    let mut model = model_section.args().load()?;
    let mut identity = base_model_identity(&model)?;
    if let Some(dir) = init {
        // Absolute in the identity, which every checkpoint of the run records: a relative path would only work
        // from the folder the run was started in.
        let dir = &resolve_checkpoint(dir)?;
        let dir = &std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        apply_checkpoint(&mut model, dir, &identity)?;
        identity.spec = format!("{} + {}", identity.spec, dir.display());
        identity.weights_sha256.push(ideator_checkpoints::sha256_file(&dir.join("weights.safetensors"))?);
    }
    Ok((model, identity))
}

/// The model a checkpoint describes: its recorded base (and initial checkpoint, for runs that started from one)
/// with the checkpoint's weights folded in. `model_override` replaces the recorded base model.
pub fn load_checkpoint_model(dir: &Path, model_override: Option<&str>) -> anyhow::Result<Model> {
    let dir = &resolve_checkpoint(dir)?;
    let manifest =
        ideator_checkpoints::verify(dir).with_context(|| format!("checking checkpoint {}", dir.display()))?;
    // A run started from an earlier checkpoint records its base as "<model> + <initial checkpoint>".
    let recorded = manifest.base_model.spec.clone();
    let (base, init) = match recorded.split_once(" + ") {
        Some((b, i)) => (b.to_string(), Some(std::path::PathBuf::from(i))),
        None => (recorded.clone(), None),
    };
    let section = ModelSection {
        spec: model_override.map(str::to_string).unwrap_or(base),
        device: "cpu".into(),
        ..Default::default()
    };
    let (mut model, identity) = load_initial_policy(&section, init.as_deref())?;
    apply_checkpoint(&mut model, dir, &identity)?;
    Ok(model)
}
