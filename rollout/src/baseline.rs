//! The environment's baseline recipe, executed at several seeds once per run store on the run's own backend and
//! stored as a run of kind `baseline` (named `baseline`): its mean, and its seed-to-seed spread, the noise floor.
//! Evolutionary search needs its score (exploit prompts list the ideas that beat it, when no baseline ran at their
//! own seed); training counts the groups whose rewards lie within the noise; reports and comparisons show it.

use crate::pipeline::reward::{RewardMode, SeedScope};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ideator_envs::backend::Backend;

use crate::pipeline::dispatch::ExecLauncher;
use crate::pipeline::frozen::{BaselineLauncher, BaselineLearner};
use crate::pipeline::{run_pipeline, PipelineConfig, PipelineContext};
use crate::store::{RunKind, RunStatus, Store, StoredResult};
use crate::{Result, RolloutError};
use ideator_envs::Status;
use serde::{Deserialize, Serialize};

/// The name of the baseline's run in a store.
pub const BASELINE_RUN: &str = "baseline";
/// The run seed of the baseline's run (the noise floor belongs to the environment and scale, not to a run).
pub(crate) const BASELINE_SEED: u64 = 0;
/// Seeds the baseline recipe runs at: enough for a seed-to-seed std to within about 25% (chi-square, 7 degrees
/// of freedom), cheap next to any RL run.
pub const NOISE_FLOOR_SEEDS: usize = 8;

/// The baseline recipe's scores at several seeds: its mean, and its seed-to-seed spread, the environment's
/// *noise floor*: two recipes whose scores differ by less than that, measured at different seeds, are not told
/// apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseFloor {
    /// Successful baseline runs (one per seed).
    pub runs: usize,
    /// Baseline runs that failed.
    pub failed: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1) across seeds; `None` with fewer than two runs.
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

impl NoiseFloor {
    /// From the scores of successful runs (`None` if there are none).
    pub(crate) fn from_scores(scores: &[f64], failed: usize) -> Option<NoiseFloor> {
        if scores.is_empty() {
            return None;
        }
        let n = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let std =
            (scores.len() > 1).then(|| (scores.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        Some(NoiseFloor {
            runs: scores.len(),
            failed,
            mean,
            std,
            min: scores.iter().copied().fold(f64::INFINITY, f64::min),
            max: scores.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// What [`run_baseline`] measures: the baseline recipe of `env` at `scale`, at `seeds` environment seeds, run by a
/// pipeline with these settings (retries, interrupt handling).
pub struct BaselinePlan<'a> {
    pub env: &'a str,
    pub scale: &'a str,
    pub seeds: usize,
    pub pipeline: PipelineConfig,
}

/// The stored baseline result of a store (its first seed), if it was run.
pub(crate) fn stored_baseline(store: &Store) -> Result<Option<StoredResult>> {
    let Some(run) = store.find_run(BASELINE_RUN)? else { return Ok(None) };
    Ok(store.ideas(run.id)?.into_iter().find_map(|i| i.result))
}

/// The noise floor of a store's baseline runs, if any succeeded.
pub fn stored_noise_floor(store: &Store) -> Result<Option<NoiseFloor>> {
    let Some(run) = store.find_run(BASELINE_RUN)? else { return Ok(None) };
    let results: Vec<StoredResult> = store.ideas(run.id)?.into_iter().filter_map(|i| i.result).collect();
    let scores: Vec<f64> = results.iter().filter(|r| r.status == Status::Ok).map(|r| r.reward).collect();
    Ok(NoiseFloor::from_scores(&scores, results.len() - scores.len()))
}

/// Runs the baseline recipe at `seeds` seeds unless the store already holds its runs; returns its noise floor
/// and whether it was reused. Its files go to `dir` (`metrics.jsonl`, `ideas.jsonl`, and the runs' folders under
/// `dir/work/`; the launcher's `work_root` is replaced). Fails if interrupted before the results came in, or if
/// every run failed.
pub fn run_baseline(
    store: &Store,
    dir: &Path,
    plan: BaselinePlan,
    backend: Box<dyn Backend>,
    mut launcher: ExecLauncher,
    stop: Arc<AtomicBool>,
) -> Result<(NoiseFloor, bool)> {
    let BaselinePlan { env, scale, seeds, pipeline: cfg } = plan;
    let run = match store.find_run(BASELINE_RUN)? {
        Some(r) => store.open_run(BASELINE_RUN, RunKind::Baseline, env, scale, r.seed)?,
        None => store.open_run(BASELINE_RUN, RunKind::Baseline, env, scale, BASELINE_SEED)?,
    };
    let done = !store.steps(run.id)?.is_empty();
    if done {
        return stored_noise_floor(store)?
            .map(|f| (f, true))
            .ok_or_else(|| RolloutError::Backend("every stored run of the baseline recipe failed".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| RolloutError::Io { path: dir.to_path_buf(), message: e.to_string() })?;
    launcher.work_root = std::path::absolute(ideator_trainer::run_dir::RunDir::at(dir).work())
        .map_err(|e| RolloutError::Io { path: dir.to_path_buf(), message: e.to_string() })?;
    store.set_run_status(run.id, RunStatus::Running)?;
    let mut learner = BaselineLearner { version: 0 };
    let categorize = |_: &str| None;
    let mut on_step = |_: &crate::pipeline::StepReport| serde_json::Map::new();
    let seeds = seeds.max(1);
    let mut ctx = PipelineContext {
        store,
        run: run.id,
        run_dir: dir,
        cfg: PipelineConfig { max_inflight_groups: seeds, max_staleness: 0, ..cfg },
        steps: 1,
        groups_per_step: seeds,
        checkpoint_every: 1,
        seed: run.seed,
        // One group per seed: the spread across groups is the noise floor.
        seed_scope: SeedScope::Group,
        reference: false,
        reward: RewardMode::Raw,
        noise_std: None,
        stop,
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let summary = run_pipeline(&mut learner, &mut ctx, backend, Box::new(BaselineLauncher(launcher)))?;
    if summary.interrupted {
        return Err(RolloutError::Interrupted);
    }
    match stored_noise_floor(store)? {
        Some(f) => Ok((f, false)),
        None => Err(RolloutError::Backend(format!(
            "every run of the baseline recipe failed ({}); see {}",
            stored_baseline(store)?.map(|r| r.message).unwrap_or_default(),
            dir.display()
        ))),
    }
}
