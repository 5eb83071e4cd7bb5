//! `ideator train`: GRPO on an ideator, rewarded by executing its ideas in an environment. Ideas run as separate
//! `ideator exec` processes on the configured backend (local slots or Slurm) through the asynchronous pipeline; the
//! run store (`store.sqlite` in the run folder) records everything, and `--resume` continues a run that was
//! stopped or killed at any moment.

use ideator_rollout::baseline::{run_baseline, stored_noise_floor, BaselinePlan};
use ideator_rollout::pipeline::reward::SeedScope;
use std::path::PathBuf;

use ideator_model::sampler::SamplingParams;
use ideator_rollout::pipeline::grpo::GrpoAgent;
use ideator_rollout::pipeline::StepRecord;
use ideator_rollout::pipeline::{run_pipeline, PipelineConfig, PipelineContext};
use ideator_rollout::rl::{RlConfig, StepReport};
use ideator_rollout::store::{RunKind, RunStatus, Store};
use ideator_trainer::config::{OptimConfig, TrainMode};
use ideator_trainer::run_dir::RunDir;
use ideator_trainer::{GrpoConfig, GrpoLearner, TrainablePolicy};
use serde::{Deserialize, Serialize};

use crate::execution::{
    categorize, fail_run_on_error, BackendSection, DiagnosticsSection, EnvSection, StepDiagnostics,
};
use crate::policy_init::{load_initial_policy, resolve_checkpoint};
use crate::run_config::{read_config, relative_to_config, run_dir_for, ModelSection, RunSection};
use crate::run_lock::lock_run_folder;

/// The command's flags: `--config`, `--run-dir`, `--resume`, `--json`.
pub type Args = crate::run_config::RunArgs;

/// `[init]`: start from an earlier checkpoint (e.g. the SFT warm-up), merged into the base.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InitSection {
    pub checkpoint: Option<PathBuf>,
}

impl InitSection {
    /// The checkpoint to start from (relative paths are relative to the config file `config`), resolved to a
    /// checkpoint folder; `None` to start from the model itself. Errors name a path that is not a checkpoint.
    pub fn resolve(&self, config: &std::path::Path) -> anyhow::Result<Option<PathBuf>> {
        self.checkpoint.as_ref().map(|p| resolve_checkpoint(&relative_to_config(config, p))).transpose()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainFile {
    #[serde(default)]
    model: ModelSection,
    #[serde(default)]
    init: InitSection,
    #[serde(default)]
    train: TrainMode,
    #[serde(default)]
    optim: OptimConfig,
    #[serde(default)]
    grpo: GrpoConfig,
    #[serde(default)]
    sampling: SamplingParams,
    env: EnvSection,
    #[serde(default)]
    rl: RlConfig,
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    backend: BackendSection,
    #[serde(default)]
    diagnostics: DiagnosticsSection,
    #[serde(default)]
    run: RunSection,
}

/// The second line of a step's summary: what its ideas cost, and how many groups were within the noise floor.
fn cost_and_noise(r: &StepRecord) -> String {
    let e = &r.executions;
    let within = match (e.frac_reward_within_noise, e.noise_std) {
        (Some(f), Some(noise)) => format!("{:.0}% of groups within the noise floor ({noise:.5})", 100.0 * f),
        _ => "no noise floor measured".into(),
    };
    format!(
        "{} ideas; {} executions (reference runs included), {} results from the cache, {} ideas excluded; {:.0}% \
         of groups flat; {within}",
        e.ideas,
        e.executed_ideas,
        e.cache_hits,
        e.excluded_ideas,
        100.0 * e.frac_reward_zero_std,
    )
}

/// The environment's noise floor: the baseline recipe at `rl.noise_floor_seeds` seeds, run once per store on the
/// run's backend (0 seeds: only what the store already holds).
fn measure_noise_floor(
    cfg: &TrainFile,
    store: &Store,
    root: &std::path::Path,
    scale: &str,
    launcher: &ideator_rollout::pipeline::dispatch::ExecLauncher,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    quiet: bool,
) -> anyhow::Result<Option<f64>> {
    if cfg.rl.noise_floor_seeds == 0 {
        return Ok(stored_noise_floor(store)?.and_then(|f| f.std));
    }
    let measured = run_baseline(
        store,
        &RunDir::at(root).baseline().root,
        BaselinePlan { env: &cfg.env.name, scale, seeds: cfg.rl.noise_floor_seeds, pipeline: cfg.pipeline.clone() },
        cfg.backend.build()?,
        launcher.clone(),
        stop.clone(),
    );
    let (floor, reused) = match measured {
        Ok(m) => m,
        // Stopped (SIGINT/SIGTERM) while the baseline ran: the pipeline sees the same stop flag and ends the run
        // cleanly at once (status `interrupted`, exit code 130/143); a resume measures the rest.
        Err(ideator_rollout::RolloutError::Interrupted) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !quiet {
        eprintln!(
            "baseline {:.4} over {} seeds; noise floor (seed-to-seed std) {} ({})",
            floor.mean,
            floor.runs,
            floor.std.map_or("unknown".into(), |s| format!("{s:.5}")),
            if reused { "stored" } else { "measured" }
        );
    }
    Ok(floor.std)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Everything that can be checked without a model is checked before the run folder exists: a config error
    // leaves nothing behind.
    let (cfg, text): (TrainFile, String) = read_config(&args.target.config)?;
    validate(&cfg)?;
    let (env, scale) = cfg.env.load(&args.target.config)?;
    let init = cfg.init.resolve(&args.target.config)?;
    let backend = cfg.backend.build()?;

    let root = run_dir_for(args.target.run_dir.as_deref(), &cfg.run, &args.target.config);
    let _lock = lock_run_folder(&root, "train")?;
    let run_dir = RunDir::create(&root, args.resume)?;
    let store = Store::open_in(&run_dir.root)?;
    // A run started before (and not failed) may not have sampled ideas yet (it was stopped while the baseline
    // measured the noise floor): it is continued with --resume all the same.
    let started = store.find_run("train")?.is_some_and(|r| r.status != RunStatus::Failed);
    let run = store.open_run("train", RunKind::Rl, &cfg.env.name, &scale, cfg.run.seed)?;
    anyhow::ensure!(
        args.resume || (!started && store.next_group_seq(run.id)? == 0),
        "{} already holds a run (its store has sampled ideas); pass --resume to continue it or choose another \
         --run-dir",
        run_dir.root.display()
    );
    store.add_config(run.id, &text)?;
    store.set_run_status(run.id, RunStatus::Running)?;
    run_dir.write_config(&text)?;
    let started = Started { args: &args, cfg: &cfg, text: &text, env: env.as_ref(), scale: &scale, init, run_dir };
    fail_run_on_error(&store, run.id, || train(started, &store, run.id, backend))
}

/// The config checks that need no model, in the order a user would fix them. Errors name the key.
fn validate(cfg: &TrainFile) -> anyhow::Result<()> {
    cfg.train.validate()?;
    cfg.grpo.validate()?;
    cfg.optim.validate()?;
    cfg.rl.validate()?;
    cfg.pipeline.validate(cfg.rl.groups_per_step)?;
    cfg.sampling.validate_for_training()?;
    cfg.env.validate()?;
    cfg.diagnostics.alarm.validate()?;
    // Greedy decoding makes every idea of a group the same text: equal rewards, zero advantages, no update.
    anyhow::ensure!(
        cfg.sampling.temperature > 0.0,
        "sampling.temperature = 0 decodes greedily, so all grpo.group_size = {} ideas of a group would be the same \
         text with the same reward: every GRPO advantage would be 0 and the run would learn nothing; set \
         sampling.temperature > 0 (e.g. 0.7 to 1.0)",
        cfg.grpo.group_size
    );
    let f32 = ideator_model::device::Precision::F32;
    anyhow::ensure!(
        cfg.model.sampling_dtype == f32 || cfg.model.dtype == f32,
        "model.sampling_dtype = {} needs model.dtype = \"f32\" (the copy halves what the CPU's f32 decoding \
         streams); with dtype = \"{}\" (a GPU) leave sampling_dtype at f32",
        cfg.model.sampling_dtype,
        cfg.model.dtype
    );
    if cfg.model.sampling_dtype != f32 && cfg.grpo.rollout_is_threshold.is_none() {
        tracing::warn!(
            "model.sampling_dtype = {} samples from a rounded copy, and grpo.rollout_is_threshold is unset: the \
             ratio is taken against the copy's log-probs, uncorrected (set it, e.g. to 2.0, for truncated \
             importance sampling)",
            cfg.model.sampling_dtype
        );
    }
    Ok(())
}

/// What a started run needs beyond its store.
struct Started<'a> {
    args: &'a Args,
    cfg: &'a TrainFile,
    text: &'a str,
    env: &'a dyn ideator_envs::Environment,
    scale: &'a str,
    init: Option<PathBuf>,
    run_dir: RunDir,
}

/// Loads the policy and runs the pipeline to the end (or a clean stop).
fn train(
    started: Started,
    store: &Store,
    run: i64,
    backend: Box<dyn ideator_envs::backend::Backend>,
) -> anyhow::Result<()> {
    let Started { args, cfg, text, env, scale, init, run_dir } = started;
    let scale = scale.to_string();
    let (model, base) = load_initial_policy(&cfg.model, init.as_deref())?;
    let prompt_ids = ideator_rollout::prompt::prompt_ids(
        env,
        &scale,
        &model.tokenizer,
        cfg.sampling.max_new_tokens,
        model.decoder.max_positions(),
    )?;
    let prompt_text = ideator_envs::prompt::ideator_prompt(env, &scale)?;
    let pad = model.tokenizer.pad_id().unwrap_or(0);
    let tokenizer = model.tokenizer;
    let policy = TrainablePolicy::new(model.decoder, &cfg.train, cfg.grpo.beta > 0.0, cfg.run.seed, pad)?;
    let learner = GrpoLearner::new(
        policy,
        cfg.grpo.clone(),
        cfg.optim.clone(),
        cfg.rl.steps,
        cfg.sampling.max_new_tokens,
        cfg.run.seed,
    )?;
    let mut agent = GrpoAgent {
        learner,
        tokenizer: &tokenizer,
        prompt_text,
        prompt_ids,
        sampling: cfg.sampling.clone(),
        checkpoints: run_dir.checkpoints(),
        base_model: base,
        config_text: text.to_string(),
        retention: cfg.rl.retention.clone(),
    };
    let recorded = store.policy_versions(run)?.last().copied();
    if let Some(step) = agent.restore_latest(Some(recorded.unwrap_or(0)))? {
        tracing::info!("resumed from the checkpoint at step {step}");
        if !args.json {
            eprintln!("resuming {} at step {step}", run_dir.root.display());
        }
    }

    let mut diagnostics = StepDiagnostics::new(&cfg.diagnostics, store, run)?;
    let categorize = |idea: &str| categorize(env, &scale, idea);
    let bar = crate::progress::bar(cfg.rl.steps, "train", !args.json);
    let mut on_step = |report: &StepReport| -> serde_json::Map<String, serde_json::Value> {
        let (extra, alarms) = diagnostics.compute(report.ideas);
        for a in &alarms {
            crate::progress::say(&bar, format!("step {}: collapse alarm: {}", report.step, a.message));
        }
        let r = report.record;
        bar.set_position(report.step + 1);
        crate::progress::say(
            &bar,
            format!(
                "step {:>4}  reward mean {:.3} max {:.3}  executed {:.0}%  best so far {:.3}  kl {:.4}  {:.0}s \
             (sample {:.0} / wait {:.0} / update {:.0})  slots {:.0}% busy",
                report.step,
                r.rewards.reward_mean.unwrap_or(0.0),
                r.rewards.reward_max.unwrap_or(0.0),
                100.0 * r.rewards.execution_rate,
                r.rewards.best_reward_so_far.unwrap_or(0.0),
                r.learner.grpo.as_ref().map_or(0.0, |g| g.kl),
                r.timing.step_seconds,
                r.timing.sample_seconds,
                r.timing.wait_seconds,
                r.timing.update_seconds,
                100.0 * r.timing.slot_utilisation.unwrap_or(0.0),
            ),
        );
        crate::progress::say(&bar, format!("           {}", cost_and_noise(r)));
        extra
    };
    let launcher = cfg.env.launcher(&args.target.config, &scale, &run_dir.work())?;
    let stop = ideator_rollout::pipeline::interrupt::stop_flag();
    let noise_std = measure_noise_floor(cfg, store, &run_dir.root, &scale, &launcher, &stop, args.json)?;
    bar.set_position(agent.learner.step());
    let mut ctx = PipelineContext {
        store,
        run,
        run_dir: &run_dir.root,
        cfg: cfg.pipeline.clone(),
        steps: cfg.rl.steps,
        groups_per_step: cfg.rl.groups_per_step,
        checkpoint_every: cfg.rl.checkpoint_every,
        seed: cfg.run.seed,
        seed_scope: SeedScope::Group,
        reference: cfg.rl.reward.needs_reference(),
        reward: cfg.rl.reward,
        noise_std,
        stop,
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let summary = run_pipeline(&mut agent, &mut ctx, backend, Box::new(launcher))?;
    bar.finish_and_clear();
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["run_dir"] = run_dir.root.display().to_string().into();
        println!("{v}");
    } else {
        let best = summary.best_reward.map(|b| format!("{b:.4}")).unwrap_or_else(|| "none".into());
        let what = if summary.interrupted { "training interrupted" } else { "training done" };
        println!(
            "{what}: {} steps, best reward {best}; {} executions and {} cache hits ({:.0} executions/h), slots {:.0}% \
             busy, learner idle {:.0}%, {} stale groups dropped; run folder {}",
            summary.steps,
            summary.executions,
            summary.cache_hits,
            summary.executions_per_hour,
            100.0 * summary.slot_utilisation,
            100.0 * summary.learner_idle_frac,
            summary.dropped_stale_groups,
            run_dir.root.display()
        );
        if summary.interrupted {
            println!(
                "continue with: ideator train --config {} --run-dir {} --resume",
                args.target.config.display(),
                run_dir.root.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> anyhow::Result<()> {
        validate(&crate::run_config::parse_config::<TrainFile>(text)?)
    }

    #[test]
    fn every_float_setting_that_is_not_finite_is_refused_naming_its_key() {
        // Optional floats are set so that they are serialized (and therefore checked) too.
        let minimal = "[env]\nname = \"toy\"\ntime_limit_s = 60.0\n";
        let n = crate::run_config::float_keys::each_non_finite_is_refused::<TrainFile>(minimal, check);
        assert!(n >= 15, "only {n} float settings found in the train config");
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_their_key() {
        let cases = [
            ("[grpo]\nbeta = -0.1", "grpo.beta"),
            ("[grpo]\nclip_low = 1.5", "grpo.clip_low"),
            ("[optim]\neps = 0.0", "optim.eps"),
            ("[optim]\nbeta2 = 1.0", "optim.beta2"),
            ("[optim]\ngrad_clip = -1.0", "optim.grad_clip"),
            ("[train]\nmode = \"lora\"\n[train.lora]\nrank = 0", "lora.rank"),
            ("[train]\nmode = \"lora\"\n[train.lora]\nalpha = 0.0", "lora.alpha"),
            ("[env]\nname = \"toy\"\ntime_limit_s = -1.0", "env.time_limit_s"),
            ("[env]\nname = \"toy\"\ntime_limit_s = 1e30", "env.time_limit_s"),
            ("[pipeline]\nretry_backoff_s = 1e30", "pipeline.retry_backoff_s"),
            ("[sampling]\ntemperature = 0.0", "sampling.temperature = 0"),
            ("[grpo]\nrollout_is_threshold = 0.5", "grpo.rollout_is_threshold"),
            ("[model]\nsampling_dtype = \"f16\"", "sampling_dtype"),
            ("[model]\nsampling_dtype = \"bf16\"\ndtype = \"bf16\"", "needs model.dtype = \"f32\""),
        ];
        for (section, key) in cases {
            let env = if section.starts_with("[env]") { "" } else { "[env]\nname = \"toy\"\n" };
            let err = check(&format!("{env}{section}\n")).err().unwrap_or_else(|| panic!("{section} accepted"));
            assert!(format!("{err:#}").contains(key), "{section}: {err:#}");
        }
        check("[env]\nname = \"toy\"\n").unwrap();
    }
}
