//! `ideator env`: list the environments, show one's knobs, print its ideator prompt, or write example ideas
//! (chat JSONL) for the supervised warm-up.

use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// Options naming one environment.
#[derive(clap::Args)]
pub struct Which {
    /// Environment name (`ideator env list` shows them).
    pub name: String,
    /// Scale whose baseline the defaults show (default: the environment's smallest).
    #[arg(long)]
    pub scale: Option<String>,
    /// Config file of a `command` environment.
    #[arg(long)]
    pub env_config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// List the environments.
    List,
    /// Show an environment's task, scales and knobs (Markdown).
    Show {
        #[command(flatten)]
        which: Which,
        /// Print the knob schema as JSON instead.
        #[arg(long)]
        json: bool,
        /// A run folder whose store measured the noise floor (`ideator env noise`, `train`, `evolve`): show it.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Measure the environment's noise floor: run the baseline recipe at several seeds (once per run store; a
    /// second call reads the stored runs) and print the mean and the seed-to-seed standard deviation.
    Noise {
        #[command(flatten)]
        which: Which,
        /// Seeds to run the baseline at.
        #[arg(long, default_value_t = ideator_rollout::baseline::NOISE_FLOOR_SEEDS)]
        seeds: usize,
        /// Run folder whose store keeps the runs (default: runs/noise/ENV-SCALE).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Runs side by side (local CPU slots, one thread each).
        #[arg(long, default_value_t = 2)]
        slots: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print the ideator prompt of an environment.
    Prompt {
        #[command(flatten)]
        which: Which,
    },
    /// Write N varied, schema-valid example ideas as chat JSONL (system, user = prompt, assistant = idea).
    Examples {
        #[command(flatten)]
        which: Which,
        #[arg(long, default_value_t = 32)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// What `env show` says of the noise floor: the stored measurement of `run_dir`, or how to make one.
fn noise_line(run_dir: Option<&std::path::Path>, name: &str, scale: &str) -> anyhow::Result<String> {
    let measured = match run_dir {
        Some(dir) if crate::store_data::store_path(dir).is_file() => {
            let store = ideator_rollout::store::Store::open_read_only(&crate::store_data::store_path(dir))?;
            ideator_rollout::baseline::stored_noise_floor(&store)?
        }
        _ => None,
    };
    Ok(match measured {
        Some(f) => crate::store_data::noise_note(&f),
        None => format!(
            "not measured in this store; measure it with `ideator env noise {name} --scale {scale}` (ENVIRONMENTS.md \
             lists the measured values)"
        ),
    })
}

fn noise(which: Which, seeds: usize, run_dir: Option<PathBuf>, slots: usize, json: bool) -> anyhow::Result<()> {
    let max = ideator_rollout::rl::MAX_NOISE_FLOOR_SEEDS;
    anyhow::ensure!(
        (2..=max).contains(&seeds),
        "--seeds must be between 2 (a spread needs two runs) and {max} (got {seeds})"
    );
    anyhow::ensure!((1..=1024).contains(&slots), "--slots must be between 1 and 1024 (got {slots})");
    let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
    let scale = which.scale.clone().unwrap_or_else(|| env.default_scale());
    env.check_scale(&scale)?;
    let dir = run_dir.unwrap_or_else(|| PathBuf::from("runs/noise").join(format!("{}-{scale}", which.name)));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _lock = crate::run_lock::lock_run_folder(&dir, "env noise")?;
    let section = crate::execution::EnvSection {
        name: which.name.clone(),
        scale: Some(scale.clone()),
        config: which.env_config.map(std::path::absolute).transpose()?,
        time_limit_s: None,
    };
    let launcher = section.launcher(std::path::Path::new("."), &scale, &dir.join("baseline/work"))?;
    let backend = ideator_envs::backend::LocalBackend::new(&ideator_envs::backend::LocalConfig {
        slots,
        threads_per_run: Some(1),
        ..Default::default()
    })?;
    let store = ideator_rollout::store::Store::open_in(&dir)?;
    let (floor, reused) = ideator_rollout::baseline::run_baseline(
        &store,
        &ideator_trainer::run_dir::RunDir::at(&dir).baseline().root,
        ideator_rollout::baseline::BaselinePlan {
            env: &which.name,
            scale: &scale,
            seeds,
            pipeline: Default::default(),
        },
        Box::new(backend),
        launcher,
        ideator_rollout::pipeline::interrupt::stop_flag(),
    )?;
    if json {
        let mut v = serde_json::to_value(&floor)?;
        v["env"] = which.name.into();
        v["scale"] = scale.into();
        v["reused"] = reused.into();
        println!("{v}");
    } else {
        println!(
            "{} ({}; store {})",
            crate::store_data::noise_note(&floor),
            if reused { "stored" } else { "measured" },
            dir.display()
        );
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::List => {
            for (name, summary) in ideator_envs::list() {
                println!("{name:<10} {summary}");
            }
        }
        Action::Noise { which, seeds, run_dir, slots, json } => noise(which, seeds, run_dir, slots, json)?,
        Action::Show { which, json, run_dir } => {
            let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
            let scale = which.scale.unwrap_or_else(|| env.default_scale());
            env.check_scale(&scale)?;
            let schema = env.schema(&scale)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&schema)?);
                return Ok(());
            }
            println!("# {}\n\n{}\n\n## Scales\n", env.name(), env.description().trim());
            for s in env.scales() {
                let (lo, hi) = env.plausible_reward(&s.name);
                println!("- `{}`: {} (plausible reward {lo:.3} to {hi:.3})", s.name, s.doc);
            }
            println!("\n## Noise floor\n\n{}", noise_line(run_dir.as_deref(), &which.name, &scale)?);
            println!("\n## Knobs (defaults = baseline at scale `{scale}`)\n\n{}", schema.to_markdown());
        }
        Action::Prompt { which } => {
            let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
            let scale = which.scale.unwrap_or_else(|| env.default_scale());
            println!("{}", ideator_envs::prompt::ideator_prompt(env.as_ref(), &scale)?);
        }
        Action::Examples { which, n, seed, out } => {
            let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
            let scale = which.scale.unwrap_or_else(|| env.default_scale());
            let examples = ideator_envs::prompt::examples(env.as_ref(), &scale, n, seed)?;
            let jsonl = ideator_envs::prompt::to_jsonl(&examples);
            match out {
                Some(path) => {
                    std::fs::write(&path, jsonl).with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {} example ideas to {}", examples.len(), path.display());
                }
                None => print!("{jsonl}"),
            }
        }
    }
    Ok(())
}
