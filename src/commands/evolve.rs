//! `ideator evolve`: the seed paper's evolutionary search with a frozen ideator, on the same executor, backends
//! and run store as `ideator train`. Each epoch is one pipeline step: epoch 0 samples fresh ideas, later epochs
//! split their prompts into exploit (variants of ideas that beat the baseline) and explore (new directions, given
//! earlier ideas and failures); the prompt database is every executed idea in the store.
//!
//! The run is the store's run named `evolve`; its exports (`metrics.jsonl`, `ideas.jsonl`, `database.json`) and
//! execution folders go to `RUN/evolve/`, so an evolution can share a run folder (and store) with an RL run of
//! the same environment: `compare` and `report` then show both. The baseline is run at several seeds once per
//! store (run `baseline`, folder `RUN/baseline/`: its mean and noise floor); every group of an epoch runs at the
//! epoch's seed together with a reference run of the baseline there, and an idea "beats the baseline" against
//! that reference (common random numbers). `--resume` continues at the epoch the store says, rebuilding the prompts
//! of an epoch cut short and checking that they are the ones stored.

use ideator_rollout::pipeline::reward::{RewardMode, SeedScope};

use ideator_model::sampler::SamplingParams;
use ideator_model::AdapterMode;
use ideator_rollout::baseline::{run_baseline, BaselinePlan, NOISE_FLOOR_SEEDS};
use ideator_rollout::evolution::{EvolutionAgent, EvolveConfig};
use ideator_rollout::generate::ModelGenerator;
use ideator_rollout::pipeline::{run_pipeline, PipelineConfig, PipelineContext, StepReport};
use ideator_rollout::store::{RunKind, RunStatus, Store};
use serde::{Deserialize, Serialize};

use crate::commands::train::InitSection;
use crate::execution::{
    categorize, fail_run_on_error, BackendSection, DiagnosticsSection, EnvSection, StepDiagnostics,
};
use crate::policy_init::load_initial_policy;
use crate::run_config::{read_config, run_dir_for, ModelSection, RunSection};
use crate::run_lock::lock_run_folder;
use ideator_trainer::run_dir::RunDir;

/// The store's name for the evolution run (one per run folder).
pub const EVOLVE_RUN: &str = "evolve";

/// The command's flags: `--config`, `--run-dir`, `--resume`, `--json`.
pub type Args = crate::run_config::RunArgs;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EvolveFile {
    #[serde(default)]
    model: ModelSection,
    #[serde(default)]
    init: InitSection,
    #[serde(default)]
    sampling: SamplingParams,
    env: EnvSection,
    #[serde(default)]
    evolve: EvolveConfig,
    /// Retries and interrupts; sampling ahead and staleness are fixed (an epoch's prompts depend on every result
    /// before it, so the search runs synchronously).
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    backend: BackendSection,
    #[serde(default)]
    diagnostics: DiagnosticsSection,
    #[serde(default)]
    run: RunSection,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (cfg, text): (EvolveFile, String) = read_config(&args.target.config)?;
    cfg.evolve.validate()?;
    cfg.sampling.validate()?;
    cfg.diagnostics.alarm.validate()?;
    let prompts = cfg.evolve.prompts_per_epoch;
    anyhow::ensure!(
        cfg.pipeline.max_inflight_groups == 0 || cfg.pipeline.max_inflight_groups == prompts,
        "pipeline.max_inflight_groups must be 0 or evolve.prompts_per_epoch ({prompts}): evolutionary search runs \
         one epoch at a time"
    );
    let pipeline = PipelineConfig { max_inflight_groups: prompts, max_staleness: 0, ..cfg.pipeline.clone() };
    pipeline.validate(prompts)?;
    cfg.env.validate()?;
    let (env, scale) = cfg.env.load(&args.target.config)?;
    // Checked before the run folder exists, so that a bad path or backend leaves nothing behind.
    let init = cfg.init.resolve(&args.target.config)?;
    cfg.backend.build()?;

    let root = run_dir_for(args.target.run_dir.as_deref(), &cfg.run, &args.target.config);
    let _lock = lock_run_folder(&root, "evolve")?;
    let layout = RunDir::at(&root);
    let evolution = layout.evolution();
    let dir = evolution.root.clone();
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let store = Store::open_in(&root)?;
    // Started before and not failed, perhaps stopped while the baseline ran: continued with --resume.
    let started = store.find_run(EVOLVE_RUN)?.is_some_and(|r| r.status != RunStatus::Failed);
    let run = store.open_run(EVOLVE_RUN, RunKind::Evolve, &cfg.env.name, &scale, cfg.run.seed)?;
    anyhow::ensure!(
        args.resume || (!started && store.next_group_seq(run.id)? == 0),
        "{} already holds an evolution (its store has sampled ideas); pass --resume to continue it or choose \
         another --run-dir",
        root.display()
    );
    store.add_config(run.id, &text)?;
    std::fs::write(evolution.config_path(), &text)?;
    fail_run_on_error(&store, run.id, || {
        let stop = ideator_rollout::pipeline::interrupt::stop_flag();

        // The ideator first: a model that cannot load should fail before any execution starts.
        let (model, _) = load_initial_policy(&cfg.model, init.as_deref())?;
        // The baseline's score decides which ideas are "winners" for exploit prompts.
        let launcher = cfg.env.launcher(&args.target.config, &scale, &evolution.work())?;
        let measured = run_baseline(
            &store,
            &layout.baseline().root,
            BaselinePlan { env: &cfg.env.name, scale: &scale, seeds: NOISE_FLOOR_SEEDS, pipeline: pipeline.clone() },
            cfg.backend.build()?,
            launcher.clone(),
            stop.clone(),
        );
        let (floor, reused) = match measured {
            Ok(m) => m,
            // Stopped (SIGINT/SIGTERM) while the baseline ran: a clean stop (exit code 130/143); a resume goes on.
            Err(ideator_rollout::RolloutError::Interrupted) => {
                store.set_run_status(run.id, RunStatus::Interrupted)?;
                let msg = "evolution interrupted while the baseline ran; continue with --resume";
                if args.json {
                    println!("{}", serde_json::json!({ "interrupted": true, "steps": 0, "message": msg }));
                } else {
                    println!("{msg}");
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let baseline = floor.mean;
        let noise_std = floor.std;
        tracing::info!(
            "baseline reward {baseline:.4} over {} seeds, noise floor (seed-to-seed std) {} ({})",
            floor.runs,
            noise_std.map_or("unknown".into(), |s| format!("{s:.5}")),
            if reused { "stored" } else { "measured" }
        );
        store.set_run_status(run.id, RunStatus::Running)?;

        let mut generator = ModelGenerator {
            decoder: &model.decoder,
            tokenizer: &model.tokenizer,
            params: cfg.sampling.clone(),
            mode: AdapterMode::default(),
        };
        let task = ideator_envs::prompt::task_prompt(env.as_ref(), &scale)?;
        let mut agent = EvolutionAgent::new(
            &mut generator,
            cfg.evolve.clone(),
            task,
            baseline,
            Some(evolution.evolution_database()),
        )?;
        let restored = agent.restore(&store, run.id, cfg.run.seed)?;
        if args.resume && !args.json {
            eprintln!(
                "resuming {} at epoch {} ({} ideas in the database, {} prompts of this epoch already sampled{})",
                root.display(),
                restored.epoch,
                restored.database,
                restored.sampled_prompts,
                if restored.mismatched_prompts > 0 {
                    format!(", {} of them differ from the rebuilt ones", restored.mismatched_prompts)
                } else {
                    String::new()
                }
            );
        }

        let mut diagnostics = StepDiagnostics::new(&cfg.diagnostics, &store, run.id)?;
        let categorize = |idea: &str| categorize(env.as_ref(), &scale, idea);
        let bar = crate::progress::bar(cfg.evolve.epochs, "evolve", !args.json);
        bar.set_position(restored.epoch);
        let mut on_step = |report: &StepReport| -> serde_json::Map<String, serde_json::Value> {
            let (extra, alarms) = diagnostics.compute(report.ideas);
            for a in &alarms {
                crate::progress::say(&bar, format!("epoch {}: collapse alarm: {}", report.step, a.message));
            }
            let r = report.record;
            let epoch = r.learner.evolution.clone().unwrap_or_default();
            bar.set_position(report.step + 1);
            crate::progress::say(
                &bar,
                format!(
                "epoch {:>3}  reward mean {:.3} max {:.3}  executed {:.0}%  beat baseline {}  best so far {:.3}  \
                 prompts {} exploit / {} explore / {} fresh  {:.0}s",
                report.step,
                r.rewards.reward_mean.unwrap_or(0.0),
                r.rewards.reward_max.unwrap_or(0.0),
                100.0 * r.rewards.execution_rate,
                epoch.beat_baseline,
                r.rewards.best_reward_so_far.unwrap_or(0.0),
                epoch.exploit_prompts,
                epoch.explore_prompts,
                epoch.fresh_prompts,
                r.timing.step_seconds,
            ),
            );
            extra
        };
        let mut ctx = PipelineContext {
            store: &store,
            run: run.id,
            run_dir: &dir,
            cfg: pipeline,
            steps: cfg.evolve.epochs,
            groups_per_step: prompts,
            checkpoint_every: 1,
            seed: cfg.run.seed,
            seed_scope: SeedScope::Step,
            reference: true,
            reward: RewardMode::Raw,
            noise_std,
            stop,
            categorize: &categorize,
            on_step: &mut on_step,
        };
        let summary = run_pipeline(&mut agent, &mut ctx, cfg.backend.build()?, Box::new(launcher))?;
        bar.finish_and_clear();
        if args.json {
            let mut v = serde_json::to_value(&summary)?;
            v["run_dir"] = root.display().to_string().into();
            v["baseline_reward"] = baseline.into();
            v["noise_std"] = noise_std.into();
            v["resumed_at_epoch"] = restored.epoch.into();
            v["resumed_prompts"] = restored.sampled_prompts.into();
            v["mismatched_prompts"] = restored.mismatched_prompts.into();
            println!("{v}");
        } else {
            let best = summary.best_reward.map(|b| format!("{b:.4}")).unwrap_or_else(|| "none".into());
            let what = if summary.interrupted { "evolution interrupted" } else { "evolution done" };
            println!(
                "{what}: {} epochs, best reward {best} (baseline {:.4}); {} executions this session; run folder {}",
                summary.steps,
                baseline,
                summary.executions,
                root.display()
            );
            if summary.interrupted {
                println!(
                    "continue with: ideator evolve --config {} --run-dir {} --resume",
                    args.target.config.display(),
                    root.display()
                );
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_setting_that_is_not_finite_is_refused_naming_its_key() {
        let check = |text: &str| -> anyhow::Result<()> {
            let cfg: EvolveFile = crate::run_config::parse_config(text)?;
            Ok(cfg.evolve.validate()?)
        };
        let minimal = "[env]\nname = \"toy\"\ntime_limit_s = 60.0\n";
        let n = crate::run_config::float_keys::each_non_finite_is_refused::<EvolveFile>(minimal, check);
        assert!(n >= 5, "only {n} float settings found in the evolve config");
    }
}
