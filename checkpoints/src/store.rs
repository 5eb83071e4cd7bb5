//! Saving, verifying, listing and loading checkpoint folders (`<root>/step-00000042/`).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::manifest::{BaseModel, FileEntry, Manifest, WeightsKind, FORMAT_VERSION};
use crate::{sha256_file, CheckpointError, Result};

const WEIGHTS: &str = "weights.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER_STATE: &str = "trainer_state.json";
const CONFIG: &str = "config.toml";
const MANIFEST: &str = "manifest.json";

/// Everything needed to resume training exactly.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub step: u64,
    pub weights_kind: WeightsKind,
    pub base_model: BaseModel,
    /// Adapters (LoRA) or all weights (full), by name.
    pub weights: HashMap<String, Tensor>,
    /// Optimiser moments etc., by name.
    pub optimizer: HashMap<String, Tensor>,
    /// Step counters, RNG states, data cursor...: whatever the trainer needs, as JSON.
    pub trainer_state: serde_json::Value,
    /// The run's config file, verbatim.
    pub config_text: String,
    /// Higher is better; used to keep the best checkpoint.
    pub score: Option<f64>,
}

/// A checkpoint on disk, with its parsed manifest.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    pub path: PathBuf,
    pub manifest: Manifest,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| CheckpointError::io(path, e))?;
    f.write_all(bytes).map_err(|e| CheckpointError::io(path, e))?;
    f.sync_all().map_err(|e| CheckpointError::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(|e| CheckpointError::io(path, e))
}

fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    // Tensors are written from the CPU so a GPU run's checkpoint loads anywhere.
    let cpu: HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?))).collect::<Result<_>>()?;
    candle_core::safetensors::save(&cpu, path)?;
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| CheckpointError::io(path, e))
}

/// Refuses tensors holding NaN or infinity (checked before anything is written, so nothing is left behind).
/// `x - x` is 0 for every finite x and NaN for NaN and +-inf, so its sum is 0 exactly when all values are finite.
fn check_finite(step: u64, file: &'static str, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if !t.dtype().is_float() {
            continue;
        }
        let sum = t.sub(t)?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if sum != 0.0 {
            return Err(CheckpointError::NonFinite { step, file, tensor: name.clone() });
        }
    }
    Ok(())
}

/// Writes the checkpoint atomically: into a temporary folder first, renamed into place once complete, so a
/// crash at any moment leaves either the previous state or the full new checkpoint, never half of one.
pub fn save(root: &Path, ckpt: &Checkpoint) -> Result<CheckpointDir> {
    check_finite(ckpt.step, WEIGHTS, &ckpt.weights)?;
    check_finite(ckpt.step, OPTIMIZER, &ckpt.optimizer)?;
    fs::create_dir_all(root).map_err(|e| CheckpointError::io(root, e))?;
    let name = step_dir_name(ckpt.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| CheckpointError::io(&tmp, e))?;
    write_tensors(&tmp.join(WEIGHTS), &ckpt.weights)?;
    write_tensors(&tmp.join(OPTIMIZER), &ckpt.optimizer)?;
    let state = serde_json::to_vec_pretty(&ckpt.trainer_state).expect("JSON values serialise");
    write_file(&tmp.join(TRAINER_STATE), &state)?;
    write_file(&tmp.join(CONFIG), ckpt.config_text.as_bytes())?;
    let mut files = BTreeMap::new();
    for f in [WEIGHTS, OPTIMIZER, TRAINER_STATE, CONFIG] {
        let p = tmp.join(f);
        let bytes = fs::metadata(&p).map_err(|e| CheckpointError::io(&p, e))?.len();
        files.insert(f.to_string(), FileEntry { sha256: sha256_file(&p)?, bytes });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        step: ckpt.step,
        weights: ckpt.weights_kind,
        base_model: ckpt.base_model.clone(),
        config_sha256: crate::hashing::sha256_bytes(ckpt.config_text.as_bytes()),
        score: ckpt.score,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        files,
    };
    write_file(&tmp.join(MANIFEST), &serde_json::to_vec_pretty(&manifest).expect("manifest serialises"))?;
    sync_dir(&tmp)?;
    let dest = root.join(&name);
    if dest.exists() {
        // Re-saving a step (after a resume) replaces it: move the old one aside first so the rename is atomic.
        let trash = root.join(format!(".old-{name}-{}", std::process::id()));
        fs::rename(&dest, &trash).map_err(|e| CheckpointError::io(&dest, e))?;
        fs::rename(&tmp, &dest).map_err(|e| CheckpointError::io(&dest, e))?;
        fs::remove_dir_all(&trash).map_err(|e| CheckpointError::io(&trash, e))?;
    } else {
        fs::rename(&tmp, &dest).map_err(|e| CheckpointError::io(&dest, e))?;
    }
    sync_dir(root)?;
    Ok(CheckpointDir { path: dest, manifest })
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST);
    let text =
        fs::read_to_string(&p).map_err(|e| CheckpointError::corrupt(dir, format!("cannot read {MANIFEST}: {e}")))?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::corrupt(dir, format!("{MANIFEST} is invalid: {e}")))?;
    if m.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Mismatch {
            path: dir.to_path_buf(),
            message: format!("format version {} (this build reads {FORMAT_VERSION})", m.format_version),
        });
    }
    Ok(m)
}

/// Re-hashes every file listed in the manifest.
pub fn verify(dir: &Path) -> Result<Manifest> {
    let m = read_manifest(dir)?;
    for (name, entry) in &m.files {
        let p = dir.join(name);
        let meta = fs::metadata(&p).map_err(|_| CheckpointError::corrupt(dir, format!("{name} is missing")))?;
        if meta.len() != entry.bytes {
            return Err(CheckpointError::corrupt(
                dir,
                format!("{name} has {} bytes, the manifest says {}", meta.len(), entry.bytes),
            ));
        }
        if sha256_file(&p)? != entry.sha256 {
            return Err(CheckpointError::corrupt(dir, format!("{name} does not match its sha256 in the manifest")));
        }
    }
    for required in [WEIGHTS, OPTIMIZER, TRAINER_STATE, CONFIG] {
        if !m.files.contains_key(required) {
            return Err(CheckpointError::corrupt(dir, format!("the manifest does not list {required}")));
        }
    }
    Ok(m)
}

fn read_tensors(dir: &Path, name: &str) -> Result<HashMap<String, Tensor>> {
    let p = dir.join(name);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| CheckpointError::corrupt(dir, format!("{name} is unreadable: {e}")))
}

/// Verifies and loads a checkpoint folder. If `expected_base` is given, a checkpoint of another base model is
/// refused.
pub fn load(dir: &Path, expected_base: Option<&BaseModel>) -> Result<Checkpoint> {
    let m = verify(dir)?;
    if let Some(base) = expected_base {
        if base.weights_sha256 != m.base_model.weights_sha256 || base.config != m.base_model.config {
            return Err(CheckpointError::Mismatch {
                path: dir.to_path_buf(),
                message: format!(
                    "it was trained from {} but the run uses {}; resume with the same base model",
                    m.base_model.spec, base.spec
                ),
            });
        }
    }
    let state_path = dir.join(TRAINER_STATE);
    let state_text = fs::read_to_string(&state_path).map_err(|e| CheckpointError::io(&state_path, e))?;
    let trainer_state = serde_json::from_str(&state_text)
        .map_err(|e| CheckpointError::corrupt(dir, format!("{TRAINER_STATE} is invalid JSON: {e}")))?;
    let config_path = dir.join(CONFIG);
    let config_text = fs::read_to_string(&config_path).map_err(|e| CheckpointError::io(&config_path, e))?;
    Ok(Checkpoint {
        step: m.step,
        weights_kind: m.weights,
        base_model: m.base_model.clone(),
        weights: read_tensors(dir, WEIGHTS)?,
        optimizer: read_tensors(dir, OPTIMIZER)?,
        trainer_state,
        config_text,
        score: m.score,
    })
}

/// Checkpoints under `root` whose manifest parses, oldest first. Temporary folders of interrupted saves are
/// ignored (and left for inspection).
pub fn list(root: &Path) -> Result<Vec<CheckpointDir>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CheckpointError::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| CheckpointError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("step-") || !entry.path().is_dir() {
            continue;
        }
        match read_manifest(&entry.path()) {
            Ok(manifest) => out.push(CheckpointDir { path: entry.path(), manifest }),
            Err(e) => tracing::warn!("skipping {}: {e}", entry.path().display()),
        }
    }
    out.sort_by_key(|c| c.manifest.step);
    Ok(out)
}

/// The newest checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Result<Option<CheckpointDir>> {
    Ok(list(root)?.pop())
}
