//! `ideator eval`: sample N ideas from a model or checkpoint for an environment, execute them, and report mean
//! reward, max@k, execution rate and diversity.
//!
//! The ideas go through the same pipeline, backend and run store as training: the evaluation is a run of kind
//! `eval` in the store of a run folder (by default the checkpoint's own run folder, so that `report` and `compare`
//! find it next to the run that wrote the checkpoint). Its name is a hash of everything that decides its ideas and
//! rewards (the checkpoint's manifest or the model's weights, the environment and its config, scale, n, seed and
//! sampling settings): the same evaluation asked again is read from the store and executes nothing, and one that
//! was interrupted continues where it stopped.

use ideator_rollout::pipeline::reward::{RewardMode, SeedScope};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ideator_diagnostics::{BatchDiagnostics, Category, CodeIdeaStats, MiniLmEmbedder, ScoredIdea, SentenceEmbedder};
use ideator_envs::backend::{LocalBackend, LocalConfig};
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::AdapterMode;
use ideator_rollout::generate::ModelGenerator;
use ideator_rollout::pipeline::frozen::FrozenSampler;
use ideator_rollout::pipeline::{run_pipeline, PipelineConfig, PipelineContext, StepReport};
use ideator_rollout::store::{GroupStatus, IdeaRow, RunKind, RunStatus, Store};

use crate::commands::model_args::ModelArgs;
use crate::execution::{categorize, fail_run_on_error, DiagnosticsSection, EnvSection, StepDiagnostics};
use crate::policy_init::resolve_checkpoint;
use crate::run_lock::lock_run_folder;
use crate::store_data::{checkpoint_run_dir, code_idea, ideas_diagnostics_with, EvalKey};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Evaluate this checkpoint (its adapters merged into its base model) instead of --model.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Environment (see `ideator env list`).
    #[arg(long)]
    pub env: String,
    #[arg(long)]
    pub scale: Option<String>,
    /// The command environment's config file.
    #[arg(long)]
    pub env_config: Option<PathBuf>,
    /// Ideas to sample and execute.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 160)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Per-idea time limit in seconds (positive, at most 1e6).
    #[arg(long, value_parser = crate::run_config::seconds_arg)]
    pub time_limit: Option<f64>,
    /// Skip the sentence embeddings (Vendi score, cosine).
    #[arg(long)]
    pub no_embeddings: bool,
    /// Only implement the ideas (parse and validate them against the environment's knobs), without running
    /// them: measures the executable share cheaply (e.g. before and after a warm-up). Rewards are not measured.
    #[arg(long)]
    pub implement_only: bool,
    /// Run folder whose store holds the evaluation (default: the checkpoint's run folder, next to the run that
    /// wrote it; for --model, runs/eval).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Executions at once (local backend slots; each runs `ideator exec` with one thread).
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// Write every idea with its result to this JSONL file.
    #[arg(long)]
    pub ideas_out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.n >= 1, "--n must be at least 1");
    anyhow::ensure!(args.batch_size >= 1 && args.slots >= 1, "--batch-size and --slots must be at least 1");
    let env = ideator_envs::load(&args.env, args.env_config.as_deref())?;
    let scale = args.scale.clone().unwrap_or_else(|| env.default_scale());
    env.check_scale(&scale)?;
    let checkpoint = args.checkpoint.as_deref().map(resolve_checkpoint).transpose()?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        stop: vec!["[End]".into()],
        seed: args.seed,
        batch_size: args.batch_size,
        ..Default::default()
    };
    params.validate().map_err(|e| anyhow::anyhow!("{e} (--temperature, --top-p, --max-new-tokens)"))?;
    let root = match (&args.run_dir, &checkpoint) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => checkpoint_run_dir(c).unwrap_or_else(|| PathBuf::from("runs/eval")),
        (None, None) => PathBuf::from("runs/eval"),
    };
    // An existing folder is locked before the model loads, so that a second writer is refused at once; a new one
    // is created (and locked) only once the model has loaded, so that a bad model leaves nothing behind.
    // `--implement-only` stores nothing.
    let early_lock = if !args.implement_only && root.is_dir() { Some(lock_run_folder(&root, "eval")?) } else { None };
    let model = args.model.load_or_checkpoint(checkpoint.as_deref())?;
    let prompt_ids = ideator_rollout::prompt::prompt_ids(
        env.as_ref(),
        &scale,
        &model.tokenizer,
        args.max_new_tokens,
        model.decoder.max_positions(),
    )?;
    let sampling = Sampling { env: env.as_ref(), scale: &scale, model: &model, params, prompt_ids };
    if args.implement_only {
        return implement_only(&args, &sampling);
    }
    let key = eval_key(&args, &scale, checkpoint.as_deref(), &model)?;
    let key_text = serde_json::to_string_pretty(&key)?;
    let name = format!("eval-{}", &ideator_checkpoints::sha256_bytes(key_text.as_bytes())[..16]);
    let _lock = match early_lock {
        Some(lock) => lock,
        None => lock_run_folder(&root, "eval")?,
    };
    let dir = root.join("eval").join(&name);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let store = Store::open_in(&root)?;
    let run = store.open_run(&name, RunKind::Eval, &args.env, &scale, args.seed)?;
    if store.configs(run.id)?.is_empty() {
        store.add_config(run.id, &key_text)?;
    }
    let t0 = Instant::now();
    let mut executed_now = 0;
    let reused = !store.steps(run.id)?.is_empty();
    if !reused {
        executed_now = fail_run_on_error(&store, run.id, || {
            execute(&args, &EvalRun { store: &store, run: run.id, dir: &dir }, sampling)
        })?;
    }
    let ideas: Vec<IdeaRow> =
        store.groups_with_status(run.id, &[GroupStatus::Trained])?.into_iter().flat_map(|g| g.ideas).collect();
    anyhow::ensure!(
        ideas.len() == args.n,
        "the evaluation was interrupted with {} of {} ideas done; run the same command again to finish it",
        ideas.len(),
        args.n
    );
    let embedder =
        if args.no_embeddings { None } else { Some(MiniLmEmbedder::load_default(&candle_core::Device::Cpu)?) };
    let categorize = |text: &str| categorize(env.as_ref(), &scale, text);
    let diag = ideas_diagnostics_with(&ideas, &categorize, embedder.as_ref().map(|e| e as &dyn SentenceEmbedder))?;
    let code = CodeIdeaStats::compute(ideas.iter().filter_map(|i| i.result.as_ref().map(code_idea)));
    if let Some(path) = &args.ideas_out {
        let mut out = String::new();
        for i in &ideas {
            out.push_str(&serde_json::json!({"text": i.text, "result": i.result}).to_string());
            out.push('\n');
        }
        std::fs::write(path, out)?;
    }
    let source = key.label();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": source, "checkpoint": key.checkpoint, "env": args.env, "scale": scale,
                "n": args.n, "run_dir": root.display().to_string(), "run": name, "reused": reused,
                "executed_now": executed_now, "seconds": t0.elapsed().as_secs_f64(), "diagnostics": diag,
                "code_ideas": code})
        );
    } else {
        println!("{source} on {} ({scale}), {} ideas:", args.env, args.n);
        if reused {
            println!("  (stored as {name} in {}: nothing executed again)", root.display());
        }
        print_diagnostics(&diag, args.n);
        if let Some(c) = &code {
            print_code_ideas(c);
        }
    }
    Ok(())
}

/// Everything that decides the evaluation's ideas and rewards.
fn eval_key(
    args: &Args,
    scale: &str,
    checkpoint: Option<&Path>,
    model: &ideator_model::Model,
) -> anyhow::Result<EvalKey> {
    let (checkpoint_text, step, manifest_sha256, weights_sha256) = match checkpoint {
        Some(c) => {
            let manifest = ideator_checkpoints::verify(c)?;
            (
                Some(std::fs::canonicalize(c)?.display().to_string()),
                Some(manifest.step),
                Some(ideator_checkpoints::sha256_file(&c.join("manifest.json"))?),
                Vec::new(),
            )
        }
        None => (None, None, None, crate::run_config::base_model_identity(model)?.weights_sha256),
    };
    let env_config_sha256 = args.env_config.as_deref().map(ideator_checkpoints::sha256_file).transpose()?;
    Ok(EvalKey {
        checkpoint: checkpoint_text,
        step,
        manifest_sha256,
        model: if checkpoint.is_none() || args.model.model.is_some() { Some(model.spec.to_string()) } else { None },
        weights_sha256,
        env: args.env.clone(),
        env_config_sha256,
        scale: scale.to_string(),
        n: args.n,
        seed: args.seed,
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size,
        time_limit_s: args.time_limit,
        dtype: args.model.dtype,
        sampling_dtype: args.model.sampling_dtype,
    })
}

/// What samples the evaluation's ideas: the model, its prompt for the environment at a scale, and the sampling.
struct Sampling<'a> {
    env: &'a dyn ideator_envs::Environment,
    scale: &'a str,
    model: &'a ideator_model::Model,
    params: SamplingParams,
    prompt_ids: Vec<u32>,
}

/// Where the evaluation's ideas are stored: the store, the run in it, and the run's folder.
struct EvalRun<'a> {
    store: &'a Store,
    run: i64,
    dir: &'a Path,
}

/// Samples and executes the evaluation's ideas through the pipeline (continuing an interrupted attempt);
/// returns the executions done now.
fn execute(args: &Args, target: &EvalRun, sampling: Sampling) -> anyhow::Result<u64> {
    let EvalRun { store, run, dir } = *target;
    let Sampling { env, scale, model, params, prompt_ids } = sampling;
    let prompt_text = ideator_envs::prompt::ideator_prompt(env, scale)?;
    store.set_run_status(run, RunStatus::Running)?;
    let sampled = store.ideas(run)?.len();
    let mut generator =
        ModelGenerator { decoder: &model.decoder, tokenizer: &model.tokenizer, params, mode: AdapterMode::default() };
    let mut sampler =
        FrozenSampler::new(&mut generator, prompt_text, prompt_ids, args.n, args.batch_size, sampled, false)?;
    let groups = FrozenSampler::groups(args.n, args.batch_size);
    // Paths on the command line are relative to the working directory, not to a config file.
    let env_section = EnvSection {
        name: args.env.clone(),
        scale: Some(scale.to_string()),
        config: args.env_config.as_ref().map(std::path::absolute).transpose()?,
        time_limit_s: args.time_limit,
    };
    let launcher = env_section.launcher(Path::new("."), scale, &ideator_trainer::run_dir::RunDir::at(dir).work())?;
    let backend =
        LocalBackend::new(&LocalConfig { slots: args.slots, threads_per_run: Some(1), ..Default::default() })?;
    let diagnostics_cfg = DiagnosticsSection { embeddings: !args.no_embeddings, ..Default::default() };
    let mut diagnostics = StepDiagnostics::new(&diagnostics_cfg, store, run)?;
    let categorize = |text: &str| categorize(env, scale, text);
    let bar = crate::progress::bar(args.n as u64, "eval", !args.json);
    let mut on_step = |report: &StepReport| diagnostics.compute(report.ideas).0;
    let mut ctx = PipelineContext {
        store,
        run,
        run_dir: dir,
        cfg: PipelineConfig { max_inflight_groups: groups, max_staleness: 0, ..Default::default() },
        steps: 1,
        groups_per_step: groups,
        checkpoint_every: 1,
        seed: args.seed,
        seed_scope: SeedScope::Step,
        reference: false,
        reward: RewardMode::Raw,
        noise_std: None,
        stop: ideator_rollout::pipeline::interrupt::stop_flag(),
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let summary = run_pipeline(&mut sampler, &mut ctx, Box::new(backend), Box::new(launcher))?;
    bar.finish_and_clear();
    anyhow::ensure!(!summary.interrupted, "the evaluation was interrupted; run the same command again to finish it");
    Ok(summary.executions)
}

fn print_diagnostics(diag: &BatchDiagnostics, n: usize) {
    println!("  executed        {:.1}%", 100.0 * diag.execution_rate);
    println!("  mean reward     {:.4}", diag.mean_reward);
    for m in &diag.max_at_k {
        println!("  max@{:<4}        {:.4}", m.k, m.value);
    }
    let fmt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
    println!("  distinct-2      {}", fmt(diag.text.distinct_2));
    if let Some(e) = &diag.embedding {
        println!("  vendi score     {:.2} (of {n}), mean cosine {}", e.vendi_score, fmt(e.mean_pairwise_cosine));
    }
    println!(
        "  categories      {} distinct, top share {:.2}",
        diag.categories.shares.len(),
        diag.categories.top_share
    );
}

/// The execution rate of code ideas split as the seed paper reports it.
fn print_code_ideas(c: &CodeIdeaStats) {
    let fmt = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    println!("  diff applied    {:.1}% of {} code ideas", 100.0 * c.applied_rate, c.n_ideas);
    println!("  applied and ran {:.1}%", 100.0 * c.ran_rate);
    println!("  diff lines      {} (mean over applied)", fmt(c.mean_diff_lines));
    println!("  repairs         {} (mean per idea)", fmt(c.mean_repair_attempts));
    if let Some(top) = c.categories.shares.first() {
        println!(
            "  touched code    {} distinct, most common {} ({:.0}% of applied)",
            c.categories.shares.len(),
            top.label,
            100.0 * top.share
        );
    }
}

/// `--implement-only`: samples in this process and only parses the ideas (nothing runs, so nothing is stored).
fn implement_only(args: &Args, sampling: &Sampling) -> anyhow::Result<()> {
    let Sampling { env, scale, model, ref params, ref prompt_ids } = *sampling;
    let bar = crate::progress::bar(args.n as u64, "sampling", !args.json);
    let ideas = sample(
        &model.decoder,
        &model.tokenizer,
        std::slice::from_ref(prompt_ids),
        args.n,
        params,
        AdapterMode::default(),
        Some(&|done| bar.set_position(done as u64)),
    )?;
    bar.finish_and_clear();
    let implemented: Vec<Result<Category, String>> = ideas
        .iter()
        .map(|c| ideator_envs::implement(env, &c.text, scale).map(|r| r.changed).map_err(|e| e.to_string()))
        .collect();
    let scored: Vec<ScoredIdea> = ideas
        .iter()
        .zip(&implemented)
        .map(|(c, r)| ScoredIdea { text: &c.text, reward: 0.0, executed: r.is_ok(), category: r.as_ref().ok() })
        .collect();
    let diag = BatchDiagnostics::compute(&scored, None)?;
    if let Some(path) = &args.ideas_out {
        let mut out = String::new();
        for (c, r) in ideas.iter().zip(&implemented) {
            out.push_str(
                &serde_json::json!({"text": c.text, "implemented": r.is_ok(), "error": r.as_ref().err()}).to_string(),
            );
            out.push('\n');
        }
        std::fs::write(path, out)?;
    }
    let source = match &args.checkpoint {
        Some(d) => d.display().to_string(),
        None => model.spec.to_string(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": source, "env": args.env, "scale": scale, "n": args.n,
                "implement_only": true, "diagnostics": diag})
        );
    } else {
        println!("{source} on {} ({scale}), {} ideas:", args.env, args.n);
        println!("  executable      {:.1}% (implemented only, not run)", 100.0 * diag.execution_rate);
        println!(
            "  categories      {} distinct, top share {:.2}",
            diag.categories.shares.len(),
            diag.categories.top_share
        );
    }
    Ok(())
}
