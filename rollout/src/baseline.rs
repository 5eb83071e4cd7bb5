//! The environment's baseline recipe, executed once per run folder on the run's own backend and stored as a run
//! of kind `baseline` (named `baseline`) in the run store. Evolutionary search needs its score (exploit prompts
//! list the ideas that beat it); reports and comparisons show it as a reference line.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ideator_envs::backend::Backend;

use crate::pipeline::dispatch::ExecLauncher;
use crate::pipeline::frozen::{BaselineLauncher, BaselineLearner};
use crate::pipeline::{run_pipeline, PipelineConfig, PipelineContext};
use crate::store::{Store, StoredResult};
use crate::{Result, RolloutError};

/// The name of the baseline's run in a store.
pub const BASELINE_RUN: &str = "baseline";

/// The stored baseline result of a store, if it was run.
pub fn stored_baseline(store: &Store) -> Result<Option<StoredResult>> {
    let Some(run) = store.find_run(BASELINE_RUN)? else { return Ok(None) };
    Ok(store.ideas(run.id)?.into_iter().find_map(|i| i.result))
}

/// Runs the baseline unless the store already holds its result; returns the result and whether it was reused.
/// Its files go to `dir` (`metrics.jsonl`, `ideas.jsonl`, and the run's folder under `dir/work/`; the
/// launcher's `work_root` is replaced). Fails if interrupted before the result came in.
#[allow(clippy::too_many_arguments)]
pub fn run_baseline(
    store: &Store,
    dir: &Path,
    env: &str,
    scale: &str,
    seed: u64,
    backend: Box<dyn Backend>,
    mut launcher: ExecLauncher,
    cfg: PipelineConfig,
    stop: Arc<AtomicBool>,
) -> Result<(StoredResult, bool)> {
    let run = store.open_run(BASELINE_RUN, "baseline", env, scale, seed)?;
    if let Some(r) = stored_baseline(store)? {
        return Ok((r, true));
    }
    std::fs::create_dir_all(dir).map_err(|e| RolloutError::Io { path: dir.to_path_buf(), message: e.to_string() })?;
    launcher.work_root = std::path::absolute(dir.join("work"))
        .map_err(|e| RolloutError::Io { path: dir.to_path_buf(), message: e.to_string() })?;
    store.set_run_status(run.id, "running")?;
    let mut learner = BaselineLearner { version: store.steps(run.id)?.len().min(1) as u64 };
    let categorize = |_: &str| None;
    let mut on_step = |_: &crate::pipeline::StepReport| serde_json::Map::new();
    let mut ctx = PipelineContext {
        store,
        run: run.id,
        run_dir: dir,
        cfg: PipelineConfig { max_inflight_groups: 1, max_staleness: 0, ..cfg },
        steps: 1,
        groups_per_step: 1,
        checkpoint_every: 1,
        seed,
        stop,
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let summary = run_pipeline(&mut learner, &mut ctx, backend, Box::new(BaselineLauncher(launcher)))?;
    match stored_baseline(store)? {
        Some(r) => Ok((r, false)),
        None if summary.interrupted => Err(RolloutError::Interrupted),
        None => Err(RolloutError::Backend("the baseline run ended without a result".into())),
    }
}
