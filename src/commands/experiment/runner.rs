//! Runs one (arm, seed) of an experiment as a normal run folder, `RUN_DIR/ARM/seed-S/`, through the same command
//! code as `ideator train` (GRPO arms), `ideator evolve` (the evolution arm) and `ideator eval` (best-of-N), in
//! this process. GRPO and evolution arms get a generated config file next to their folder (`RUN_DIR/ARM/
//! seed-S.toml`: the experiment's shared tables, the arm's settings, the planned steps, absolute paths) and are
//! always started with `--resume`, which continues an unfinished run and starts a new one alike; best-of-N is an
//! evaluation, which continues where it stopped when asked again. A run whose store says `done` is skipped.
//!
//! Common random numbers: every run gets the experiment seed as its `[run] seed` (`--seed` for the evaluation),
//! so the environment seeds of every arm at that seed come from the same stream `reward::env_seed(seed, ..)`:
//! the i-th GRPO group, the i-th evolution epoch and the evaluation's (single) step draw the i-th seed of it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ideator_rollout::store::{RunKind, RunStatus, Store};

use super::config::{Arm, ArmPlan, ExperimentConfig};
use crate::execution::BackendSection;

/// Where a run of the experiment lives.
pub(crate) fn run_folder(root: &Path, arm: &str, seed: u64) -> PathBuf {
    root.join(arm).join(format!("seed-{seed}"))
}

/// What every run of the experiment shares, resolved once: absolute paths.
pub(crate) struct Shared<'a> {
    pub cfg: &'a ExperimentConfig,
    pub checkpoint: Option<PathBuf>,
    pub env_config: Option<PathBuf>,
}

/// The store's run an arm writes: `train`, `evolve`, or the evaluation (kind `eval`, named by a hash).
pub(crate) fn arm_run(store: &Store, arm: &Arm) -> Result<Option<ideator_rollout::store::RunInfo>> {
    Ok(match arm {
        Arm::Grpo { .. } => store.find_run("train")?,
        Arm::Evolve { .. } => store.find_run(crate::commands::evolve::EVOLVE_RUN)?,
        Arm::BestOfN { .. } => store.runs()?.into_iter().find(|r| r.kind == RunKind::Eval),
    })
}

/// Whether the run in `dir` finished (its store says `done`).
fn finished(dir: &Path, arm: &Arm) -> Result<bool> {
    let path = crate::store_data::store_path(dir);
    if !path.is_file() {
        return Ok(false);
    }
    let store = Store::open_read_only(&path)?;
    Ok(arm_run(&store, arm)?.is_some_and(|r| r.status == RunStatus::Done))
}

/// Runs (or continues, or skips when finished) one arm at one seed. Returns whether it was skipped.
pub(crate) fn run_arm(shared: &Shared, root: &Path, arm: &Arm, plan: &ArmPlan, seed: u64) -> Result<bool> {
    let dir = run_folder(root, arm.name(), seed);
    if finished(&dir, arm)? {
        return Ok(true);
    }
    let config = root.join(arm.name()).join(format!("seed-{seed}.toml"));
    let what = || format!("arm {:?} at seed {seed} ({})", arm.name(), dir.display());
    match arm {
        Arm::Grpo { grpo, groups_per_step, .. } => {
            let text = toml::to_string(&train_config(shared, grpo, *groups_per_step, plan.steps as u64, seed)?)?;
            write_config(&config, &text)?;
            let args = run_args(config, &dir);
            crate::commands::train::run(args).with_context(what)?;
        }
        Arm::Evolve { .. } => {
            let text = toml::to_string(&evolve_config(shared, arm, plan.steps as u64, seed)?)?;
            write_config(&config, &text)?;
            let args = run_args(config, &dir);
            crate::commands::evolve::run(args).with_context(what)?;
        }
        Arm::BestOfN { batch, .. } => {
            crate::commands::eval::run(eval_args(shared, *batch, plan.executions, seed, &dir)?).with_context(what)?
        }
    }
    Ok(false)
}

fn write_config(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn value<T: serde::Serialize>(section: &T) -> Result<toml::Value> {
    Ok(toml::Value::try_from(section)?)
}

/// The sections every generated config shares: model, init, sampling, env, backend, diagnostics, run.
fn shared_tables(shared: &Shared, seed: u64) -> Result<toml::Table> {
    let cfg = shared.cfg;
    let mut t = toml::Table::new();
    t.insert("model".into(), value(&cfg.model)?);
    t.insert("init".into(), value(&crate::commands::train::InitSection { checkpoint: shared.checkpoint.clone() })?);
    t.insert("sampling".into(), value(&cfg.sampling)?);
    let env = crate::execution::EnvSection {
        name: cfg.env.clone(),
        scale: Some(cfg.scale.clone()),
        config: shared.env_config.clone(),
        time_limit_s: cfg.time_limit_s,
    };
    t.insert("env".into(), value(&env)?);
    t.insert("backend".into(), value(&cfg.backend)?);
    t.insert("diagnostics".into(), value(&cfg.diagnostics)?);
    t.insert("run".into(), value(&crate::run_config::RunSection { dir: None, seed })?);
    Ok(t)
}

/// An `ideator train` config for a GRPO arm: synchronous (no sampling ahead, no stale groups), so the run's ideas
/// are exactly `steps x groups_per_step x group_size`.
fn train_config(
    shared: &Shared,
    grpo: &ideator_trainer::GrpoConfig,
    groups_per_step: usize,
    steps: u64,
    seed: u64,
) -> Result<toml::Table> {
    let cfg = shared.cfg;
    let mut t = shared_tables(shared, seed)?;
    t.insert("train".into(), value(&cfg.train)?);
    t.insert("optim".into(), value(&cfg.optim)?);
    t.insert("grpo".into(), value(grpo)?);
    let rl = ideator_rollout::rl::RlConfig {
        steps,
        groups_per_step,
        checkpoint_every: cfg.checkpoint_every.min(steps),
        reward: cfg.reward,
        noise_floor_seeds: cfg.noise_floor_seeds,
        ..Default::default()
    };
    t.insert("rl".into(), value(&rl)?);
    let pipeline = ideator_rollout::pipeline::PipelineConfig {
        max_inflight_groups: groups_per_step,
        max_staleness: 0,
        ..cfg.pipeline.clone()
    };
    t.insert("pipeline".into(), value(&pipeline)?);
    Ok(t)
}

/// An `ideator evolve` config for the evolution arm: `epochs` epochs of `ideas_per_epoch` ideas.
fn evolve_config(shared: &Shared, arm: &Arm, epochs: u64, seed: u64) -> Result<toml::Table> {
    let Arm::Evolve { ideas_per_epoch, ideas_per_prompt, exploit_ideas, explore_ideas, max_idea_chars, .. } = arm
    else {
        bail!("not an evolution arm");
    };
    let mut t = shared_tables(shared, seed)?;
    let evolve = ideator_rollout::evolution::EvolveConfig {
        epochs,
        prompts_per_epoch: ideas_per_epoch / ideas_per_prompt,
        ideas_per_prompt: *ideas_per_prompt,
        exploit_ideas: *exploit_ideas,
        explore_ideas: *explore_ideas,
        max_idea_chars: *max_idea_chars,
    };
    t.insert("evolve".into(), value(&evolve)?);
    let pipeline =
        ideator_rollout::pipeline::PipelineConfig { max_inflight_groups: 0, ..shared.cfg.pipeline.clone() };
    t.insert("pipeline".into(), value(&pipeline)?);
    Ok(t)
}

/// `ideator eval` of the starting checkpoint: `n` ideas sampled `batch` at a time, on the local backend's slots.
fn eval_args(shared: &Shared, batch: usize, n: usize, seed: u64, dir: &Path) -> Result<crate::commands::eval::Args> {
    let cfg = shared.cfg;
    let slots = match &cfg.backend {
        BackendSection::Local(local) => local.slots,
        BackendSection::Slurm(_) => bail!(
            "best_of_n arms run through `ideator eval`, which executes on local slots only: use [backend] kind = \
             \"local\", or drop the best_of_n arm"
        ),
    };
    let s = &cfg.sampling;
    Ok(crate::commands::eval::Args {
        model: cfg.model.args(),
        checkpoint: shared.checkpoint.clone(),
        env: cfg.env.clone(),
        scale: Some(cfg.scale.clone()),
        env_config: shared.env_config.clone(),
        n,
        temperature: s.temperature,
        top_p: s.top_p,
        max_new_tokens: s.max_new_tokens,
        seed,
        batch_size: batch,
        time_limit: cfg.time_limit_s,
        no_embeddings: !cfg.diagnostics.embeddings,
        implement_only: false,
        run_dir: Some(dir.to_path_buf()),
        slots: slots.max(1),
        ideas_out: None,
        json: false,
    })
}

/// `train` / `evolve` flags that run (or resume) `config` in `dir`.
fn run_args(config: PathBuf, dir: &Path) -> crate::run_config::RunArgs {
    crate::run_config::RunArgs {
        target: crate::run_config::ConfigArgs { config, run_dir: Some(dir.to_path_buf()) },
        resume: true,
        json: false,
    }
}
