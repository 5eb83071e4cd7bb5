//! The sections of run config files (TOML) shared by `sft` and `train`, and how to read them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The flags naming a config and the run folder it runs in (every command that runs from a config file).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML config (its sections: CONFIG.md; examples in configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder (overrides the config's run folder).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// The flags of `sft`, `train` and `evolve`: a config, its run folder, resuming, and the summary's format.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: ConfigArgs,
    /// Continue the run in the run folder from its newest checkpoint (executions already done are reused).
    #[arg(long)]
    pub resume: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

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
    /// Precision of the weights sampling reads: `f32` (default, exact) or `bf16`: a rounded copy, refreshed after
    /// each update, that halves the bytes a CPU decode step streams. The behaviour log-probs then come from the
    /// copy; set `grpo.rollout_is_threshold` to correct for the mismatch. CPU with `dtype = "f32"` only.
    pub sampling_dtype: ideator_model::device::Precision,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            spec: String::new(),
            device: "auto".into(),
            dtype: Default::default(),
            sampling_dtype: Default::default(),
        }
    }
}

impl ModelSection {
    pub fn args(&self) -> crate::commands::model_args::ModelArgs {
        crate::commands::model_args::ModelArgs {
            model: (!self.spec.is_empty()).then(|| self.spec.clone()),
            device: self.device.clone(),
            dtype: self.dtype,
            sampling_dtype: self.sampling_dtype,
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

/// Reads and parses a TOML config; the error names the file and the offending key. Every float of every section
/// must be finite (see [`check_finite`]), before any section's own validation runs.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> anyhow::Result<(T, String)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let cfg = parse_config(&text).with_context(|| format!("invalid config {}", path.display()))?;
    Ok((cfg, text))
}

/// Parses config text: finiteness of every float first, then the typed sections.
pub(crate) fn parse_config<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let value: toml::Table = toml::from_str(text)?;
    check_finite(&toml::Value::Table(value), "")?;
    Ok(toml::from_str(text)?)
}

/// Refuses `nan`, `inf` and `-inf` anywhere in a config, naming the key (e.g. `optim.eps`). TOML accepts them
/// as floats, and range checks written as `x < 0.0` are false for NaN, so one check over the whole parsed file
/// covers every float setting of every section, including ones added later.
pub(crate) fn check_finite(value: &toml::Value, key: &str) -> anyhow::Result<()> {
    match value {
        toml::Value::Float(x) if !x.is_finite() => {
            anyhow::bail!(
                "{key} = {x} is not a finite number; set it to a finite value (or remove it for the default)"
            )
        }
        toml::Value::Table(t) => t
            .iter()
            .try_for_each(|(k, v)| check_finite(v, &if key.is_empty() { k.clone() } else { format!("{key}.{k}") })),
        toml::Value::Array(a) => a.iter().enumerate().try_for_each(|(i, v)| check_finite(v, &format!("{key}[{i}]"))),
        _ => Ok(()),
    }
}

/// The largest time setting accepted, in seconds (about 11.6 days of a single run or wait): larger values are
/// surely typos, and `Duration::from_secs_f64` panics on values near 1.8e19.
pub(crate) const MAX_SECONDS: f64 = 1e6;

/// A time setting in seconds (flag or config key `name`) as a Duration: positive, finite and at most
/// [`MAX_SECONDS`]; the error names the setting.
pub(crate) fn seconds(name: &str, secs: f64) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(
        secs > 0.0 && secs <= MAX_SECONDS,
        "{name} must be a number of seconds in (0, {MAX_SECONDS}], got {secs}"
    );
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `--time-limit` and friends, as a clap value parser (so the error names the flag and nothing starts).
pub(crate) fn seconds_arg(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    seconds("the time limit", secs).map(|_| secs).map_err(|e| e.to_string())
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
        spec: portable_spec(&model.spec),
        weights_sha256: hashes,
        config: serde_json::to_value(model.decoder.config())?,
    })
}

/// The model spec as checkpoints record it: a local file or folder as an absolute path (a relative one would only
/// resolve from the directory the run was started in), a hub name as it is.
pub(crate) fn portable_spec(spec: &ideator_model::ModelSpec) -> String {
    use ideator_model::ModelSpec;
    match spec {
        ModelSpec::Gguf(p) | ModelSpec::Folder(p) => {
            std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string()
        }
        hub => hub.to_string(),
    }
}

/// Helpers for tests that derive the float settings of a config type from the type itself.
#[cfg(test)]
pub(crate) mod float_keys {
    /// Paths (e.g. `["optim", "eps"]`) of every float in a serialized config, arrays included (`name[i]`).
    pub(crate) fn paths(value: &toml::Value) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        walk(value, &mut Vec::new(), &mut out);
        out
    }

    fn walk(value: &toml::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match value {
            toml::Value::Float(_) => out.push(at.clone()),
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| {
                at.push(k.clone());
                walk(v, at, out);
                at.pop();
            }),
            toml::Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| {
                at.push(format!("[{i}]"));
                walk(v, at, out);
                at.pop();
            }),
            _ => {}
        }
    }

    /// Sets the value at `path` (as returned by [`paths`]).
    pub(crate) fn set(value: &mut toml::Value, path: &[String], x: f64) {
        let mut v = value;
        for key in path {
            v = match key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
                Some(i) => &mut v.as_array_mut().unwrap()[i.parse::<usize>().unwrap()],
                None => v.get_mut(key.as_str()).unwrap(),
            };
        }
        *v = toml::Value::Float(x);
    }

    /// The key as errors name it: `optim.eps`, `a.b[0]`.
    pub(crate) fn key(path: &[String]) -> String {
        path.iter().fold(String::new(), |acc, k| match (acc.is_empty(), k.starts_with('[')) {
            (true, _) | (false, true) => acc + k,
            (false, false) => acc + "." + k,
        })
    }

    /// For a config type `T` and a minimal config text, sets each float of the complete config (every default
    /// filled in by `T`) to NaN, +inf and -inf in turn, and checks that `check` refuses it naming the key. Returns
    /// the number of float settings found.
    pub(crate) fn each_non_finite_is_refused<T>(minimal: &str, check: impl Fn(&str) -> anyhow::Result<()>) -> usize
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let parsed: T = toml::from_str(minimal).unwrap();
        let full = toml::Value::try_from(&parsed).unwrap();
        let paths = paths(&full);
        for path in &paths {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let mut v = full.clone();
                set(&mut v, path, bad);
                let text = toml::to_string(&v).unwrap();
                let err = check(&text).err().unwrap_or_else(|| panic!("{} = {bad} was accepted", key(path)));
                let msg = format!("{err:#}");
                assert!(msg.contains(&format!("{} = {bad}", key(path))), "{} = {bad}: {msg}", key(path));
            }
        }
        paths.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_are_named_wherever_they_are() {
        let v: toml::Value = toml::from_str("a = 1.0\n[b]\nc = [1.0, nan]\n[b.d]\ne = -inf\n").unwrap();
        let err = check_finite(&v, "").unwrap_err().to_string();
        assert!(err.contains("b.c[1] = NaN"), "{err}");
        let v: toml::Value = toml::from_str("[b.d]\ne = -inf\n").unwrap();
        assert!(check_finite(&v, "").unwrap_err().to_string().contains("b.d.e = -inf"));
        let v: toml::Value = toml::from_str("a = 1e308\nb = -0.0\nc = 'nan'\n").unwrap();
        check_finite(&v, "").unwrap();
    }

    #[test]
    fn time_settings_are_positive_and_bounded() {
        for bad in [-1.0, 0.0, f64::NAN, f64::INFINITY, 1e30, MAX_SECONDS * 2.0] {
            let err = seconds("env.time_limit_s", bad).unwrap_err().to_string();
            assert!(err.contains("env.time_limit_s"), "{err}");
        }
        assert_eq!(seconds("x", 1.5).unwrap(), std::time::Duration::from_millis(1500));
        assert_eq!(seconds("x", MAX_SECONDS).unwrap().as_secs_f64(), MAX_SECONDS);
        assert!(seconds_arg("-1").is_err() && seconds_arg("1e30").is_err() && seconds_arg("soon").is_err());
        assert_eq!(seconds_arg("2.5"), Ok(2.5));
    }
}
