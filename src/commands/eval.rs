//! `ideator eval`: sample N ideas from a model or checkpoint for an environment, execute them, and report mean
//! reward, max@k, execution rate and diversity.

use std::path::PathBuf;
use std::time::Instant;

use ideator_diagnostics::{BatchDiagnostics, Category, MiniLmEmbedder, ScoredIdea, SentenceEmbedder};
use ideator_envs::Status;
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::AdapterMode;
use ideator_rollout::execute::{IdeaExecutor, IdeaJob, InProcess};

use crate::commands::model_args::ModelArgs;
use crate::policy_init::load_checkpoint_model;

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
    /// Per-idea time limit in seconds.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Skip the sentence embeddings (Vendi score, cosine).
    #[arg(long)]
    pub no_embeddings: bool,
    /// Only implement the ideas (parse and validate them against the environment's knobs), without running
    /// them: measures the executable share cheaply (e.g. before and after a warm-up). Rewards are not measured.
    #[arg(long)]
    pub implement_only: bool,
    /// Write every idea with its result to this JSONL file.
    #[arg(long)]
    pub ideas_out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.n >= 1, "--n must be at least 1");
    let env = ideator_envs::load(&args.env, args.env_config.as_deref())?;
    let scale = args.scale.clone().unwrap_or_else(|| env.default_scale());
    env.check_scale(&scale)?;
    let model = match &args.checkpoint {
        Some(dir) => load_checkpoint_model(dir, args.model.model.as_deref())?,
        None => args.model.load()?,
    };
    let prompt = ideator_rollout::prompt::prompt_ids(
        env.as_ref(),
        &scale,
        &model.tokenizer,
        args.max_new_tokens,
        model.decoder.max_positions(),
    )?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        stop: vec!["[End]".into()],
        seed: args.seed,
        batch_size: args.batch_size,
        ..Default::default()
    };
    let bar = crate::progress::bar(args.n as u64, "sampling", !args.json);
    let t0 = Instant::now();
    let ideas = sample(
        &model.decoder,
        &model.tokenizer,
        std::slice::from_ref(&prompt),
        args.n,
        &params,
        AdapterMode::default(),
        Some(&|done| bar.set_position(done as u64)),
    )?;
    bar.finish_and_clear();
    let sample_seconds = t0.elapsed().as_secs_f64();
    let jobs: Vec<IdeaJob> = ideas
        .iter()
        .map(|c| IdeaJob {
            id: format!("eval-{}", c.sample_index),
            text: c.text.clone(),
            seed: args.seed + c.sample_index as u64,
        })
        .collect();
    let work = std::env::temp_dir().join(format!("ideator-eval-{}", std::process::id()));
    let mut executor = InProcess {
        env: ideator_envs::load(&args.env, args.env_config.as_deref())?,
        scale: scale.clone(),
        work_root: work,
        time_limit: args.time_limit.map(std::time::Duration::from_secs_f64),
    };
    let t0 = Instant::now();
    let results = if args.implement_only {
        jobs.iter()
            .map(|j| match ideator_envs::implement(env.as_ref(), &j.text, &scale) {
                Ok(_) => ideator_envs::ExecResult::ok(0.0, Default::default(), "implemented (not run)"),
                Err(e) => ideator_envs::ExecResult::failed(ideator_envs::FailureCause::Implementation, e.to_string()),
            })
            .collect()
    } else {
        executor.run_batch(&jobs)
    };
    let execute_seconds = t0.elapsed().as_secs_f64();
    let categories: Vec<Option<Category>> = ideas
        .iter()
        .map(|c| ideator_envs::implement(env.as_ref(), &c.text, &scale).ok().map(|r| r.changed))
        .collect();
    let scored: Vec<ScoredIdea> = ideas
        .iter()
        .zip(&results)
        .zip(&categories)
        .map(|((c, r), cat)| ScoredIdea {
            text: &c.text,
            reward: r.reward,
            executed: r.status == Status::Ok,
            category: cat.as_ref(),
        })
        .collect();
    let embedder =
        if args.no_embeddings { None } else { Some(MiniLmEmbedder::load_default(&candle_core::Device::Cpu)?) };
    let diag = BatchDiagnostics::compute(&scored, embedder.as_ref().map(|e| e as &dyn SentenceEmbedder))?;
    if let Some(path) = &args.ideas_out {
        let mut out = String::new();
        for (c, r) in ideas.iter().zip(&results) {
            out.push_str(&serde_json::json!({"text": c.text, "result": r}).to_string());
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
                "sample_seconds": sample_seconds, "execute_seconds": execute_seconds, "diagnostics": diag})
        );
    } else {
        println!("{source} on {} ({scale}), {} ideas:", args.env, args.n);
        if args.implement_only {
            println!("  executable      {:.1}% (implemented only, not run)", 100.0 * diag.execution_rate);
            println!(
                "  categories      {} distinct, top share {:.2}",
                diag.categories.shares.len(),
                diag.categories.top_share
            );
            return Ok(());
        }
        println!("  executed        {:.1}%", 100.0 * diag.execution_rate);
        println!("  mean reward     {:.4}", diag.mean_reward);
        for m in &diag.max_at_k {
            println!("  max@{:<4}        {:.4}", m.k, m.value);
        }
        let fmt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
        println!("  distinct-2      {}", fmt(diag.text.distinct_2));
        if let Some(e) = &diag.embedding {
            println!(
                "  vendi score     {:.2} (of {}), mean cosine {}",
                e.vendi_score,
                args.n,
                fmt(e.mean_pairwise_cosine)
            );
        }
        println!(
            "  categories      {} distinct, top share {:.2}",
            diag.categories.shares.len(),
            diag.categories.top_share
        );
    }
    Ok(())
}
