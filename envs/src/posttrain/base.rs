//! The base policy every recipe starts from: a small character-level decoder trained once by supervised learning
//! on worked problems to a middling accuracy, then cached on disk under a key derived from its whole config.
//!
//! Cache: `$IDEATOR_CACHE/posttrain/` (else `$XDG_CACHE_HOME/ideator/posttrain/`, `$HOME/.cache/ideator/posttrain/`,
//! or the system temp dir). Files are written under a temporary name and renamed into place, so a reader never sees a
//! half-written file; concurrent runs that need the same base take an advisory lock, so one trains it while the others
//! wait (checking their time limits) and then load it. The key covers the task, the model, the supervised recipe,
//! the device kind and a format version, so a changed config never reads a stale base.

use super::eval::held_out_accuracy;
use super::task::{Task, TaskSpec};
use crate::environment::RunContext;
use crate::result::FailureCause;
use candle_core::{DType, Device, Tensor};
use ideator_model::weights::random::random_weights;
use ideator_model::{AdapterMode, Arch, Decoder, ModelConfig, Tokenizer};
use ideator_trainer::optim::{AdamW, GradAccumulator};
use ideator_trainer::schedule::{ScheduleConfig, ScheduleKind};
use ideator_trainer::{OptimConfig, TrainMode, TrainablePolicy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bumped whenever the base's training or file layout changes, so older cached bases are not reused.
const CACHE_FORMAT: u32 = 3;

/// Padding id of the task's tokenizer (`<eos>`; padded positions are masked).
pub(crate) const PAD_ID: u32 = 0;

/// The decoder's shape (Llama-style: RMSNorm, SwiGLU, RoPE, tied embeddings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
}

/// Everything that determines the base policy (and hence its cache key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSpec {
    pub task: TaskSpec,
    pub shape: PolicyShape,
    pub init_seed: u64,
    pub data_seed: u64,
    pub sft_steps: usize,
    pub sft_batch: usize,
    pub sft_lr: f64,
    pub sft_warmup: usize,
    /// The first `clean_steps` supervised steps teach right answers only (the model learns to carry); the rest
    /// teach a mix in which a share `slip_rate` of answers carry the no-carry slip
    /// (`super::task::Problem::slipped_answer`), so the base can carry but often does not: a middling policy
    /// whose errors a verifiable reward can train away.
    pub clean_steps: usize,
    pub slip_rate: f64,
}

impl BaseSpec {
    /// The decoder config over the task's alphabet.
    pub(crate) fn model_config(&self) -> ModelConfig {
        let s = &self.shape;
        ModelConfig {
            arch: Arch::Llama,
            vocab_size: super::task::ALPHABET.chars().count() + 1,
            hidden_size: s.hidden,
            intermediate_size: s.intermediate,
            num_layers: s.layers,
            num_heads: s.heads,
            num_kv_heads: s.heads,
            head_dim: s.hidden / s.heads,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            // Prompt, answer, `<eos>`, and room for completions that run on (max_new_tokens is at most 16 over
            // the answer).
            max_position_embeddings: self.task.max_prompt_chars() + self.task.max_answer_chars() + 24,
            tie_word_embeddings: true,
            qkv_bias: false,
            qk_norm: false,
            rope_scaling: None,
        }
    }

    /// The cache key: a hash of the spec, the device kind (GPU kernels round differently from the CPU's) and the
    /// format version.
    pub fn key(&self, device: &Device) -> String {
        let kind = if device.is_cpu() { "cpu" } else { "gpu" };
        let text = format!("{CACHE_FORMAT}|{kind}|{}", serde_json::to_string(self).expect("plain data"));
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// What is recorded next to the cached weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BaseInfo {
    pub key: String,
    pub spec: BaseSpec,
    /// Held-out accuracy of the base (greedy, exact match).
    pub accuracy: f64,
    /// Mean supervised loss (nats per answer token) over the last tenth of the steps.
    pub final_sft_loss: f64,
    pub train_seconds: f64,
}

/// A loaded base policy.
pub(crate) struct BasePolicy {
    pub decoder: Decoder,
    pub info: BaseInfo,
    /// Whether it came from the cache (false: trained by this run).
    pub from_cache: bool,
}

/// Where cached bases live by default (see the module doc).
pub(crate) fn cache_dir() -> PathBuf {
    let root = std::env::var_os("IDEATOR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ideator")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("ideator")))
        .unwrap_or_else(|| std::env::temp_dir().join("ideator-cache"));
    root.join("posttrain")
}

type Failure = (FailureCause, String);

fn infra(context: &str, e: impl std::fmt::Display) -> Failure {
    (FailureCause::Infrastructure, format!("{context}: {e}"))
}

/// The base for `spec`: from the cache when present, else trained now (and cached). Waiting for another process
/// that trains the same base, and training it, both respect the run's time limit.
pub(crate) fn load_or_train(
    spec: &BaseSpec,
    dir: &Path,
    task: &Task,
    tokenizer: &Tokenizer,
    eval_batch: usize,
    ctx: &RunContext,
    log: &mut String,
) -> Result<BasePolicy, Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| infra(&format!("cannot create the cache folder {}", dir.display()), e))?;
    let key = spec.key(&ctx.device);
    let weights_path = dir.join(format!("base-{key}.safetensors"));
    let info_path = dir.join(format!("base-{key}.json"));
    if let Some(base) = try_load(spec, &key, &weights_path, &info_path, &ctx.device) {
        return Ok(base);
    }
    let _lock = CacheLock::acquire(&dir.join(format!("base-{key}.lock")), ctx)?;
    // Another process may have finished it while this one waited.
    if let Some(base) = try_load(spec, &key, &weights_path, &info_path, &ctx.device) {
        return Ok(base);
    }
    let (tensors, loss, seconds) = train(spec, task, tokenizer, ctx, log)?;
    let decoder = build(spec, tensors.clone(), &ctx.device)?;
    let accuracy = held_out_accuracy(&decoder, tokenizer, task, AdapterMode::default(), eval_batch)
        .map_err(|e| (FailureCause::RuntimeError, format!("evaluating the base policy failed: {e}")))?;
    let info =
        BaseInfo { key: key.clone(), spec: spec.clone(), accuracy, final_sft_loss: loss, train_seconds: seconds };
    log.push_str(&format!(
        "base policy trained in {seconds:.1}s: sft loss {loss:.4}, held-out accuracy {accuracy:.4}; cached as {}\n",
        weights_path.display()
    ));
    let info_json = serde_json::to_vec_pretty(&info).expect("plain data");
    write_atomically(&info_path, |tmp| std::fs::write(tmp, &info_json).map_err(|e| e.to_string()))
        .map_err(|e| infra("cannot write the base policy's info", e))?;
    write_atomically(&weights_path, |tmp| candle_core::safetensors::save(&tensors, tmp).map_err(|e| e.to_string()))
        .map_err(|e| infra("cannot write the base policy", e))?;
    Ok(BasePolicy { decoder, info, from_cache: false })
}

fn build(spec: &BaseSpec, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Decoder, Failure> {
    Decoder::from_tensors(spec.model_config(), tensors, None, DType::F32, device)
        .map_err(|e| (FailureCause::RuntimeError, format!("building the base policy failed: {e}")))
}

/// The cached base, or `None` when absent or unreadable (then it is trained again and the files replaced).
fn try_load(spec: &BaseSpec, key: &str, weights: &Path, info: &Path, device: &Device) -> Option<BasePolicy> {
    let info: BaseInfo = serde_json::from_slice(&std::fs::read(info).ok()?).ok()?;
    if info.key != key || info.spec != *spec {
        return None;
    }
    let tensors = match candle_core::safetensors::load(weights, device) {
        Ok(t) => t,
        Err(e) => {
            if weights.exists() {
                tracing::warn!("cached base {} is unreadable ({e}); training it again", weights.display());
            }
            return None;
        }
    };
    let decoder = build(spec, tensors, device).ok()?;
    Some(BasePolicy { decoder, info, from_cache: true })
}

/// Writes `path` through a uniquely named temporary file in the same folder and renames it into place.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| format!("{}: {e}", path.display()))
}

/// An advisory lock on a file (released when dropped, or by the OS if the process dies).
struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    fn acquire(path: &Path, ctx: &RunContext) -> Result<CacheLock, Failure> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| infra(&format!("cannot open the cache lock {}", path.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            loop {
                // SAFETY: flock on a file descriptor this function owns; no memory is shared.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if rc == 0 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) && err.kind() != std::io::ErrorKind::Interrupted {
                    // A file system without locks: go on unlocked (the atomic renames still keep files whole).
                    tracing::warn!("cannot lock {} ({err}); training the base without a lock", path.display());
                    break;
                }
                if ctx.expired() {
                    return Err((
                        FailureCause::TimeLimit,
                        "time limit reached while waiting for another run to train the base policy".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(CacheLock { _file: file })
    }
}

/// Supervised training of the base from random weights: answer tokens only (prompt tokens are context), AdamW
/// with warm-up and cosine decay. Returns the weights (on the run's device), the final loss and the seconds.
fn train(
    spec: &BaseSpec,
    task: &Task,
    tokenizer: &Tokenizer,
    ctx: &RunContext,
    log: &mut String,
) -> Result<(HashMap<String, Tensor>, f64, f64), Failure> {
    let runtime = |e: &dyn std::fmt::Display| (FailureCause::RuntimeError, format!("training the base policy: {e}"));
    let start = Instant::now();
    let raw = random_weights(&spec.model_config(), spec.init_seed, 1.0).map_err(|e| runtime(&e))?;
    let decoder = Decoder::from_raw(raw, DType::F32, &ctx.device).map_err(|e| runtime(&e))?;
    let mut policy = TrainablePolicy::new(decoder, &TrainMode::Full, false, 0, PAD_ID).map_err(|e| runtime(&e))?;
    let optim = OptimConfig {
        lr: spec.sft_lr,
        weight_decay: 0.0,
        grad_clip: Some(1.0),
        schedule: ScheduleConfig {
            kind: ScheduleKind::Cosine,
            warmup_steps: spec.sft_warmup as u64,
            min_lr_ratio: 0.1,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut opt = AdamW::new(policy.params(), &optim).map_err(|e| runtime(&e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.data_seed);
    let encode = |s: &str| tokenizer.encode(s, false).map_err(|e| runtime(&e));
    let eos = tokenizer.eos_ids()[0];
    let mut recent = Vec::new();
    let tail = (spec.sft_steps / 10).max(1);
    for step in 0..spec.sft_steps {
        if ctx.expired() {
            return Err((
                FailureCause::TimeLimit,
                format!("time limit reached after {step} of {} steps of the base policy's training", spec.sft_steps),
            ));
        }
        let mut seqs = Vec::with_capacity(spec.sft_batch);
        let mut score_from = Vec::with_capacity(spec.sft_batch);
        for _ in 0..spec.sft_batch {
            let p = task.train_problem(&mut rng);
            let mut ids = encode(&p.prompt())?;
            score_from.push(ids.len());
            let answer = if step >= spec.clean_steps && rng.random::<f64>() < spec.slip_rate {
                super::task::write_number(p.slipped_answer())
            } else {
                p.answer_text()
            };
            ids.extend(encode(&answer)?);
            ids.push(eos);
            seqs.push(ids);
        }
        let (logp, _) = policy
            .decoder()
            .score_tokens(&seqs, &score_from, PAD_ID, policy.sampling_mode())
            .map_err(|e| runtime(&e))?;
        let loss = logp.mean_all().and_then(|m| m.neg()).map_err(|e| runtime(&e))?;
        let value = loss.to_scalar::<f32>().map_err(|e| runtime(&e))? as f64;
        if !value.is_finite() {
            return Err(runtime(&format!("the supervised loss became {value} at step {step}")));
        }
        let grads = loss.backward().map_err(|e| runtime(&e))?;
        let mut acc = GradAccumulator::new(policy.params().len());
        policy.accumulate(&mut acc, &grads).map_err(|e| runtime(&e))?;
        let lr = optim.schedule.lr(optim.lr, step as u64, spec.sft_steps as u64);
        policy.apply_update(&mut opt, &acc.into_grads(), lr).map_err(|e| runtime(&e))?;
        if step + tail >= spec.sft_steps {
            recent.push(value);
        }
        if step % (spec.sft_steps / 10).max(1) == 0 {
            log.push_str(&format!("base sft step {step:>5}/{}  loss {value:.4}\n", spec.sft_steps));
        }
    }
    let tensors: HashMap<String, Tensor> =
        policy.into_decoder().named_tensors().into_iter().map(|(n, t)| (n, t.detach())).collect();
    let loss = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
    Ok((tensors, loss, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_only_the_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomically(&path, |tmp| std::fs::write(tmp, b"one").map_err(|e| e.to_string())).unwrap();
        write_atomically(&path, |tmp| std::fs::write(tmp, b"two").map_err(|e| e.to_string())).unwrap();
        assert!(write_atomically(&path, |_| Err("disk full".into())).unwrap_err().contains("disk full"));
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.json")]);
    }

    #[test]
    fn a_held_lock_makes_others_wait_until_their_time_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.lock");
        let ctx = RunContext::new("tiny", 0, dir.path());
        let held = CacheLock::acquire(&path, &ctx).unwrap();
        let waiting = RunContext::new("tiny", 0, dir.path()).with_time_limit(Duration::from_millis(300));
        let started = Instant::now();
        let err = CacheLock::acquire(&path, &waiting).err().expect("the lock is held");
        assert_eq!(err.0, FailureCause::TimeLimit, "{}", err.1);
        assert!(started.elapsed() >= Duration::from_millis(250));
        drop(held);
        assert!(CacheLock::acquire(&path, &ctx).is_ok(), "released when dropped");
    }

    #[test]
    fn the_key_changes_with_the_config_and_the_device_kind() {
        let spec = super::super::scales()[0].budget.base.clone();
        let key = spec.key(&Device::Cpu);
        assert_eq!(key.len(), 16);
        assert_eq!(key, spec.key(&Device::Cpu));
        let other = BaseSpec { sft_steps: spec.sft_steps + 1, ..spec.clone() };
        assert_ne!(key, other.key(&Device::Cpu));
    }
}
