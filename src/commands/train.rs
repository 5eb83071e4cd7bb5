//! `ideator train`: GRPO on an ideator, rewarded by executing its ideas in an environment.

use std::path::PathBuf;

use ideator_diagnostics::{check_collapse, AlarmConfig, BatchDiagnostics, Category, MiniLmEmbedder, ScoredIdea};
use ideator_envs::Status;
use ideator_model::sampler::SamplingParams;
use ideator_rollout::execute::InProcess;
use ideator_rollout::rl::{run_rl, RlConfig, RlContext, StepReport};
use ideator_trainer::config::{OptimConfig, TrainMode};
use ideator_trainer::run_dir::RunDir;
use ideator_trainer::{GrpoConfig, GrpoLearner, TrainablePolicy};
use serde::Deserialize;

use crate::policy_init::load_initial_policy;
use crate::run_config::{read_config, relative_to_config, run_dir_for, ModelSection, RunSection};

#[derive(clap::Args)]
pub struct Args {
    /// TOML config: [model], [init], [train], [optim], [grpo], [sampling], [env], [rl], [diagnostics], [run]
    /// (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Run folder (overrides [run] dir).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in the run folder from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `[env]`: where ideas are executed.
#[derive(Deserialize)]
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

/// `[init]`: start from an earlier checkpoint (e.g. the SFT warm-up), merged into the base.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InitSection {
    pub checkpoint: Option<PathBuf>,
}

/// `[diagnostics]`: what is measured per step.
#[derive(Deserialize)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainFile {
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
    diagnostics: DiagnosticsSection,
    #[serde(default)]
    run: RunSection,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (cfg, text): (TrainFile, String) = read_config(&args.config)?;
    cfg.grpo.validate()?;
    cfg.optim.validate()?;
    cfg.rl.validate()?;
    cfg.sampling.validate()?;
    cfg.diagnostics.alarm.validate()?;
    let relative = |p: &PathBuf| relative_to_config(&args.config, p);
    let env = ideator_envs::load(&cfg.env.name, cfg.env.config.as_ref().map(relative).as_deref())?;
    let scale = cfg.env.scale.clone().unwrap_or_else(|| env.default_scale());
    env.check_scale(&scale)?;
    let run_dir = RunDir::create(&run_dir_for(args.run_dir.as_deref(), &cfg.run, &args.config), args.resume)?;
    run_dir.write_config(&text)?;

    let init = cfg.init.checkpoint.as_ref().map(relative);
    let (model, base) = load_initial_policy(&cfg.model, init.as_deref())?;
    let prompt_ids = ideator_rollout::prompt::prompt_ids(
        env.as_ref(),
        &scale,
        &model.tokenizer,
        cfg.sampling.max_new_tokens,
        model.decoder.max_positions(),
    )?;
    let pad = model.tokenizer.pad_id().unwrap_or(0);
    let tokenizer = model.tokenizer;
    let policy = TrainablePolicy::new(model.decoder, &cfg.train, cfg.grpo.beta > 0.0, cfg.run.seed, pad)?;
    let mut learner = GrpoLearner::new(
        policy,
        cfg.grpo.clone(),
        cfg.optim.clone(),
        cfg.rl.steps,
        cfg.sampling.max_new_tokens,
        cfg.run.seed,
    )?;

    let embedder = if cfg.diagnostics.embeddings {
        Some(MiniLmEmbedder::load_default(&candle_core::Device::Cpu)?)
    } else {
        None
    };
    let categorize = |idea: &str| {
        ideator_envs::implement(env.as_ref(), idea, &scale).ok().map(|r| r.changed.into_iter().collect::<Vec<_>>())
    };
    let bar = crate::progress::bar(cfg.rl.steps, "train", !args.json);
    let mut initial: Option<BatchDiagnostics> = None;
    let mut on_step = |report: &StepReport| -> serde_json::Map<String, serde_json::Value> {
        let mut extra = serde_json::Map::new();
        let categories: Vec<Option<Category>> =
            report.ideas.iter().map(|i| i.category.as_ref().map(|c| c.iter().cloned().collect())).collect();
        let scored: Vec<ScoredIdea> = report
            .ideas
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
            embedder.as_ref().map(|e| e as &dyn ideator_diagnostics::SentenceEmbedder),
        ) {
            Ok(d) => {
                let first = initial.get_or_insert_with(|| d.clone());
                let alarms = check_collapse(&cfg.diagnostics.alarm, first, &d);
                for a in &alarms {
                    crate::progress::say(&bar, format!("step {}: collapse alarm: {}", report.step, a.message));
                }
                extra.insert("diagnostics".into(), serde_json::to_value(&d).unwrap_or_default());
                extra.insert("alarms".into(), serde_json::to_value(&alarms).unwrap_or_default());
            }
            Err(e) => tracing::warn!("diagnostics failed at step {}: {e}", report.step),
        }
        let r = report.record;
        bar.set_position(report.step + 1);
        crate::progress::say(
            &bar,
            format!(
                "step {:>4}  reward mean {:.3} max {:.3}  executed {:.0}%  best so far {:.3}  kl {:.4}  {:.0}s",
                report.step,
                r["reward_mean"].as_f64().unwrap_or(0.0),
                r["reward_max"].as_f64().unwrap_or(0.0),
                100.0 * r["execution_rate"].as_f64().unwrap_or(0.0),
                r["best_reward_so_far"].as_f64().unwrap_or(0.0),
                r["kl"].as_f64().unwrap_or(0.0),
                r["step_seconds"].as_f64().unwrap_or(0.0),
            ),
        );
        extra
    };
    let mut executor = InProcess {
        env: ideator_envs::load(&cfg.env.name, cfg.env.config.as_ref().map(relative).as_deref())?,
        scale: scale.clone(),
        work_root: run_dir.root.join("work"),
        time_limit: cfg.env.time_limit_s.map(std::time::Duration::from_secs_f64),
    };
    let mut ctx = RlContext {
        run_dir: &run_dir,
        base_model: base,
        config_text: text.clone(),
        prompt_ids,
        sampling: cfg.sampling.clone(),
        seed: cfg.run.seed,
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let summary = run_rl(&mut learner, &tokenizer, &mut executor, &cfg.rl, &mut ctx)?;
    bar.finish_and_clear();
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "training done: {} steps, best reward {}; run folder {}",
            summary["steps"],
            summary["best_reward"],
            run_dir.root.display()
        );
    }
    Ok(())
}
