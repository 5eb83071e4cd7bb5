//! What `train`, `evolve` and `eval` share: the `[env]`, `[backend]` and `[diagnostics]` config sections, the
//! launcher of `ideator exec` runs, and the per-step diagnostics (diversity, max@k, categories, collapse alarms)
//! added to each step's record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ideator_diagnostics::step_entries::{self, StepEntries};
use ideator_diagnostics::{
    check_collapse, Alarm, AlarmConfig, BatchDiagnostics, Category, MiniLmEmbedder, ScoredIdea,
};
use ideator_envs::backend::{Backend, LocalBackend, LocalConfig, SlurmBackend, SlurmConfig};
use ideator_envs::{Environment, Status};
use ideator_rollout::cache::RecipeKeyer;
use ideator_rollout::pipeline::dispatch::ExecLauncher;
use ideator_rollout::pipeline::{IdeaRecord, StepRecord};
use ideator_rollout::store::Store;
use serde::{Deserialize, Serialize};

/// `[env]`: where ideas are executed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSection {
    pub name: String,
    /// Default: the environment's smallest scale.
    pub scale: Option<String>,
    /// The command environment's own config file.
    pub config: Option<PathBuf>,
    /// Per-idea time limit in seconds.
    pub time_limit_s: Option<f64>,
}

impl EnvSection {
    /// Checks the settings that need no file: the time limit. Errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(secs) = self.time_limit_s {
            crate::run_config::seconds("env.time_limit_s", secs)?;
        }
        Ok(())
    }

    /// The environment and its scale; `config_path` is the run config's path (the env config is relative to it).
    pub fn load(&self, config_path: &Path) -> anyhow::Result<(Box<dyn Environment>, String)> {
        let env_config = self.config.as_ref().map(|p| crate::run_config::relative_to_config(config_path, p));
        let env = ideator_envs::load(&self.name, env_config.as_deref())?;
        let scale = self.scale.clone().unwrap_or_else(|| env.default_scale());
        env.check_scale(&scale)?;
        Ok((env, scale))
    }

    /// Runs `ideator exec` (this binary) for each idea, with files under `work_root`.
    pub fn launcher(&self, config_path: &Path, scale: &str, work_root: &Path) -> anyhow::Result<ExecLauncher> {
        let env_config = match &self.config {
            Some(p) => {
                let p = crate::run_config::relative_to_config(config_path, p);
                Some(std::fs::canonicalize(&p).map_err(|e| anyhow::anyhow!("env config {}: {e}", p.display()))?)
            }
            None => None,
        };
        let env_config_text = match &env_config {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("env config {}: {e}", p.display()))?)
            }
            None => None,
        };
        let env = ideator_envs::load(&self.name, env_config.as_deref())?;
        let keyer = RecipeKeyer::new(Arc::from(env), scale, env_config_text.as_deref());
        Ok(ExecLauncher {
            program: std::env::current_exe()?,
            env: self.name.clone(),
            env_config,
            scale: scale.to_string(),
            work_root: std::path::absolute(work_root)?,
            time_limit: self.time_limit_s.map(|s| crate::run_config::seconds("env.time_limit_s", s)).transpose()?,
            keyer: Some(Arc::new(keyer)),
        })
    }
}

/// `[backend]`: where executions run. `kind = "local"` (default) or `"slurm"`; the other keys are the backend's.
#[derive(Serialize, Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendSection {
    Local(LocalConfig),
    Slurm(SlurmConfig),
}

impl Default for BackendSection {
    fn default() -> Self {
        BackendSection::Local(LocalConfig::default())
    }
}

impl BackendSection {
    pub fn build(&self) -> anyhow::Result<Box<dyn Backend>> {
        Ok(match self {
            BackendSection::Local(c) => Box::new(LocalBackend::new(c)?),
            BackendSection::Slurm(c) => {
                SlurmBackend::available()
                    .map_err(|e| anyhow::anyhow!("backend.kind = \"slurm\" but Slurm is not reachable: {e}"))?;
                Box::new(SlurmBackend::new(c)?)
            }
        })
    }
}

/// `[diagnostics]`: what is measured per step.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsSection {
    /// Embed ideas with MiniLM for Vendi score and mean cosine (costs a second or two per step).
    pub embeddings: bool,
    pub alarm: AlarmConfig,
}

impl Default for DiagnosticsSection {
    fn default() -> Self {
        DiagnosticsSection { embeddings: true, alarm: AlarmConfig::default() }
    }
}

/// The batch diagnostics a step record holds, if it holds readable ones.
pub fn stored_diagnostics(record: &StepRecord) -> Option<BatchDiagnostics> {
    step_entries::diagnostics(record).ok().flatten()
}

/// Computes a step's batch diagnostics and collapse alarms (against the run's first step).
pub struct StepDiagnostics {
    embedder: Option<MiniLmEmbedder>,
    alarm: AlarmConfig,
    initial: Option<BatchDiagnostics>,
}

impl StepDiagnostics {
    /// A resumed run compares with its first step as stored.
    pub fn new(section: &DiagnosticsSection, store: &Store, run: i64) -> anyhow::Result<Self> {
        let embedder =
            if section.embeddings { Some(MiniLmEmbedder::load_default(&candle_core::Device::Cpu)?) } else { None };
        let initial = store.steps(run)?.first().and_then(|s| stored_diagnostics(&s.record));
        Ok(StepDiagnostics { embedder, alarm: section.alarm.clone(), initial })
    }

    /// The entries to add to the step's record ([`StepEntries`]: the diagnostics and alarms), and the alarms.
    pub fn compute(&mut self, ideas: &[IdeaRecord]) -> (serde_json::Map<String, serde_json::Value>, Vec<Alarm>) {
        let categories: Vec<Option<Category>> =
            ideas.iter().map(|i| i.category.as_ref().map(|c| c.iter().cloned().collect())).collect();
        let scored: Vec<ScoredIdea> = ideas
            .iter()
            .zip(&categories)
            .map(|(i, c)| ScoredIdea {
                text: &i.text,
                reward: i.reward,
                executed: i.status == Status::Ok,
                category: c.as_ref(),
            })
            .collect();
        match BatchDiagnostics::compute(
            &scored,
            self.embedder.as_ref().map(|e| e as &dyn ideator_diagnostics::SentenceEmbedder),
        ) {
            Ok(d) => {
                let first = self.initial.get_or_insert_with(|| d.clone());
                let alarms = check_collapse(&self.alarm, first, &d);
                (StepEntries { diagnostics: &d, alarms: &alarms }.to_extra(), alarms)
            }
            Err(e) => {
                tracing::warn!("diagnostics failed: {e}");
                (serde_json::Map::new(), Vec::new())
            }
        }
    }
}

/// Runs `body` and, when it fails, marks `run` failed in `store` with the error as the user sees it, so that the
/// store never claims that a run which stopped on an error is still running. (An interrupted run is marked by
/// the pipeline and ends without an error.)
pub fn fail_run_on_error<T>(store: &Store, run: i64, body: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let result = body();
    if let Err(e) = &result {
        if let Err(mark) = store.fail_run(run, &format!("{e:#}")) {
            tracing::warn!("could not mark the run failed: {mark}");
        }
    }
    result
}

/// The knobs an idea changes (its category), or `None` if it cannot be implemented.
pub fn categorize(env: &dyn Environment, scale: &str, idea: &str) -> Option<Vec<String>> {
    if env.idea_format().is_some() {
        return env.categorize(idea, scale);
    }
    ideator_envs::implement(env, idea, scale).ok().map(|r| r.changed.into_iter().collect())
}
