//! The environment interface: what an environment declares (task, knobs, scales, plausible rewards) and how it
//! runs a validated recipe.

use crate::knobs::Schema;
use crate::recipe::Recipe;
use crate::result::ExecResult;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Errors in setting up an environment (not in running an idea: those are [`ExecResult`] failures).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("unknown environment {name:?}; known: {known}")]
    UnknownEnvironment { name: String, known: String },
    #[error("environment {env} has no scale {scale:?}; its scales are {known}")]
    UnknownScale { env: String, scale: String, known: String },
    #[error("{0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// One scale of an environment (same knobs, different budget and baseline size).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleInfo {
    pub name: String,
    /// One line: the model, the budget, and where it is meant to run.
    pub doc: String,
}

/// An environment turns a validated recipe into a measured reward.
///
/// Implementations must be deterministic for a given recipe, scale and seed on CPU, must check
/// [`RunContext::expired`] inside long loops, and report failures as [`ExecResult::failed`] (the executor also
/// catches panics, so a bug does not crash the caller).
pub trait Environment: Send + Sync {
    /// Short identifier (`pretrain`, `command`).
    fn name(&self) -> &str;

    /// The task as the ideator reads it: what is trained, on what, what the reward is, and what cannot change.
    fn description(&self) -> String;

    /// The scales, smallest first; the first is the default.
    fn scales(&self) -> Vec<ScaleInfo>;

    /// The knobs, with defaults equal to this scale's baseline recipe.
    fn schema(&self, scale: &str) -> Result<Schema, EnvError>;

    /// Rewards outside `[lo, hi]` are implausible at this scale (a bug or reward hacking) and score 0.
    fn plausible_reward(&self, scale: &str) -> (f64, f64);

    /// Conflicts between knobs beyond what the schema expresses, as a readable reason.
    fn check_conflicts(&self, _recipe: &Recipe, _scale: &str) -> Result<(), String> {
        Ok(())
    }

    /// The idea format told to the ideator when it is not the knob table's `key = value` lines (e.g. a unified
    /// diff for the `codebase` environment); `None` for knob environments.
    fn idea_format(&self) -> Option<String> {
        None
    }

    /// The category of an idea in an environment with its own [`Environment::idea_format`] (e.g. the code units
    /// a diff touches), without running it; `None` when unknown. Knob environments are categorised by the knobs
    /// the implemented recipe changes instead, so they need not override this.
    fn categorize(&self, _idea: &str, _scale: &str) -> Option<Vec<String>> {
        None
    }

    /// The failure of an idea the executor could not even parse (so [`Environment::run`] never saw it), with
    /// what the environment records for every idea added: the codebase environment marks it `applied = 0`, so
    /// that its applied rate counts every idea. Default: unchanged.
    fn not_implemented(&self, failure: ExecResult) -> ExecResult {
        failure
    }

    /// A hand-written idea in the exact format, shown in the ideator prompt.
    fn example_idea(&self) -> String;

    /// Runs a validated recipe.
    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> ExecResult;

    /// The default scale (the first declared).
    fn default_scale(&self) -> String {
        self.scales().first().map(|s| s.name.clone()).unwrap_or_else(|| "tiny".into())
    }

    /// Checks that `scale` exists.
    fn check_scale(&self, scale: &str) -> Result<(), EnvError> {
        let scales = self.scales();
        if scales.iter().any(|s| s.name == scale) {
            Ok(())
        } else {
            let known: Vec<String> = scales.into_iter().map(|s| s.name).collect();
            Err(EnvError::UnknownScale { env: self.name().into(), scale: scale.into(), known: known.join(", ") })
        }
    }

    /// The baseline recipe at a scale.
    fn baseline(&self, scale: &str) -> Result<Recipe, EnvError> {
        Ok(Recipe::baseline(&self.schema(scale)?))
    }

    /// What a run of `recipe` computes, for the execution cache: two recipes with the same identity give the same
    /// result at the same scale and seed (bit-exact on CPU), so the second reuses the first's result. `None`:
    /// never reuse. The default is the recipe's knob values, which are canonical (typed, normalised values in key
    /// order, defaults filled in), so `lr = 0.001` and `lr = 1e-3` written in any order are one recipe.
    /// Environments whose result depends on more than the knobs (the idea's free text) must override it.
    fn cache_identity(&self, recipe: &Recipe) -> Option<String> {
        serde_json::to_string(&recipe.values).ok()
    }

    /// How this environment uses several CPU threads; the process running it sets candle's thread pool to match
    /// before the first tensor operation.
    fn cpu_parallelism(&self) -> CpuParallelism {
        CpuParallelism::WithinOps
    }
}

/// How a run spreads over CPU threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuParallelism {
    /// The process sizes candle's thread pool to the run's threads and the run uses that pool: its tensor
    /// operations split over it, and a learner that runs micro-batches side by side (the trainer's
    /// `micro_batches::in_waves`, as the posttrain environment's GRPO does) runs one per pool thread.
    /// [`RunContext::threads`] is 1.
    WithinOps,
    /// The run splits its work (micro-batches) over [`RunContext::threads`] threads itself, each running
    /// single-threaded tensor operations: for small models, whose operations are too small for a thread pool to
    /// pay off.
    AcrossMicroBatches,
}

/// Where and how one run happens.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub scale: String,
    pub seed: u64,
    /// A folder the run may write to (and that is kept for inspection).
    pub work_dir: PathBuf,
    /// When the run must stop; checked cooperatively inside training loops.
    pub deadline: Option<Instant>,
    pub time_limit: Option<Duration>,
    pub device: Device,
    /// CPU threads the run may use itself (see [`CpuParallelism::AcrossMicroBatches`]); at least 1.
    pub threads: usize,
}

impl RunContext {
    /// A CPU run with no time limit.
    pub fn new(scale: &str, seed: u64, work_dir: impl Into<PathBuf>) -> RunContext {
        RunContext {
            scale: scale.into(),
            seed,
            work_dir: work_dir.into(),
            deadline: None,
            time_limit: None,
            device: Device::Cpu,
            threads: 1,
        }
    }

    /// Sets a time limit counted from now.
    pub fn with_time_limit(mut self, limit: Duration) -> RunContext {
        self.deadline = Some(Instant::now() + limit);
        self.time_limit = Some(limit);
        self
    }

    pub fn with_device(mut self, device: Device) -> RunContext {
        self.device = device;
        self
    }

    /// Lets the run use `threads` CPU threads itself (at least 1).
    pub fn with_threads(mut self, threads: usize) -> RunContext {
        self.threads = threads.max(1);
        self
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Time left before the deadline (`None`: no limit).
    pub(crate) fn time_left(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// The device for runs of this process (a backend selects the GPU through `CUDA_VISIBLE_DEVICES`, so the first
/// visible one is the one it chose); the model crate owns the choice.
pub use ideator_model::device::default_device;
