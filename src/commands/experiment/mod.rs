//! `ideator experiment --config FILE`: several arms (the frozen ideator's best-of-N sampling, evolutionary search,
//! GRPO with each advantage estimator) x several seeds at **equal budgets**, on one environment and scale, from
//! one starting checkpoint, through the same executor, backends and run store (issue 17).
//!
//! Every (arm, seed) is a normal run folder `RUN_DIR/ARM/seed-S/` made by the code of `train`, `evolve` or `eval`
//! ([`runner`]), stopped at the planned steps ([`config::ExperimentConfig::plan`]). `RUN_DIR/experiment.json`
//! records the config and the resolved starting checkpoint; the experiment folder is locked while it runs.
//! Running the same command again (after a stop or a SIGKILL) skips finished runs and resumes the others: their
//! stores and execution caches mean nothing is executed twice; a changed config is refused. At the end the
//! comparison ([`comparison`]) is written to `RUN_DIR/comparison.md` and `comparison.json`; `ideator compare
//! RUN_DIR` prints it and `ideator report RUN_DIR` draws every arm on one chart per metric.

pub mod comparison;
pub mod config;
pub(crate) mod runner;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use config::ExperimentConfig;

/// The manifest's file name in the experiment folder.
pub const MANIFEST: &str = "experiment.json";

#[derive(clap::Args)]
#[command(after_help = crate::commands::EXIT_STATUS_HELP)]
pub struct Args {
    /// The experiment config (environment, scale, starting checkpoint, budget, seeds, arms, shared tables) and
    /// the experiment folder.
    #[command(flatten)]
    pub target: crate::run_config::ConfigArgs,
    /// Print the budget plan (steps per arm at the common budget) and exit.
    #[arg(long)]
    pub plan: bool,
}

/// What `experiment.json` records: the config (verbatim and as parsed, with every default filled in), the
/// checkpoint it resolved to, and the command.
#[derive(Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub config_text: String,
    pub config: serde_json::Value,
    pub checkpoint: Option<PathBuf>,
    pub command: String,
}

impl Manifest {
    pub(crate) fn read(root: &Path) -> Result<Option<Manifest>> {
        let path = root.join(MANIFEST);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not a valid manifest", path.display()))?))
    }

    /// Records this manifest, or checks that the folder's matches it: a different config or starting checkpoint
    /// would mix two experiments in one folder.
    fn record_or_check(&self, root: &Path) -> Result<()> {
        match Manifest::read(root)? {
            None => {
                let path = root.join(MANIFEST);
                std::fs::write(&path, serde_json::to_string_pretty(self)?)
                    .with_context(|| format!("cannot write {}", path.display()))
            }
            Some(old) => {
                if let Some(key) = first_difference(&old.config, &self.config, "") {
                    bail!(
                        "{} holds an experiment with a different config (first difference: {key}); run it with its \
                         own config (recorded in {}) to continue it, or choose another --run-dir for the new one",
                        root.display(),
                        root.join(MANIFEST).display()
                    );
                }
                anyhow::ensure!(
                    old.checkpoint == self.checkpoint,
                    "{} started from checkpoint {:?} but the config now resolves to {:?}; point checkpoint at the \
                     original, or choose another --run-dir",
                    root.display(),
                    old.checkpoint,
                    self.checkpoint
                );
                Ok(())
            }
        }
    }
}

/// The first key where two JSON values differ (`arms[1].batch`), or None when equal.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    let key = |k: &str| if at.is_empty() { k.to_string() } else { format!("{at}.{k}") };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, &key(k)),
                _ => Some(key(k)),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| first_difference(u, v, &format!("{at}[{i}]")))
        }
        _ => (a != b).then(|| if at.is_empty() { "(the whole config)".into() } else { at.to_string() }),
    }
}

fn print_plan(cfg: &ExperimentConfig, checkpoint: Option<&Path>) {
    println!(
        "experiment on {} ({}), from {}: {} ideas per arm and seed, seeds {:?}",
        cfg.env,
        cfg.scale,
        checkpoint.map_or("the [model] itself".into(), |c| c.display().to_string()),
        cfg.executions,
        cfg.seeds
    );
    println!("{:<24} {:<10} {:>10} {:>7} {:>11}", "arm", "kind", "per step", "steps", "ideas");
    let plan = cfg.plan();
    for p in &plan {
        println!("{:<24} {:<10} {:>10} {:>7} {:>11}", p.name, p.kind, p.executions_per_step, p.steps, p.executions);
    }
    let total: usize = plan.iter().map(|p| p.executions).sum::<usize>() * cfg.seeds.len();
    println!("total: {total} ideas over {} arms x {} seeds", plan.len(), cfg.seeds.len());
}

/// The experiment folder: `--run-dir`, else the config's `run_dir` (relative to the config file), else
/// `runs/<config stem>`.
fn experiment_dir(args: &Args, cfg: &ExperimentConfig) -> PathBuf {
    let section = crate::run_config::RunSection { dir: cfg.run_dir.clone(), seed: 0 };
    crate::run_config::run_dir_for(args.target.run_dir.as_deref(), &section, &args.target.config)
}

pub fn run(args: Args) -> Result<()> {
    let (cfg, text) = ExperimentConfig::load(&args.target.config)?;
    let rel = |p: &Path| crate::run_config::relative_to_config(&args.target.config, p);
    let checkpoint = cfg
        .checkpoint
        .as_deref()
        .map(|c| Ok::<_, anyhow::Error>(std::path::absolute(crate::policy_init::resolve_checkpoint(&rel(c))?)?))
        .transpose()?;
    print_plan(&cfg, checkpoint.as_deref());
    if args.plan {
        return Ok(());
    }
    let env_config = cfg.env_config.as_deref().map(|p| std::path::absolute(rel(p))).transpose()?;
    ideator_envs::load(&cfg.env, env_config.as_deref())?.check_scale(&cfg.scale)?;
    let root = experiment_dir(&args, &cfg);
    let _lock = crate::run_lock::lock_run_folder(&root, "experiment")?;
    let mut command = format!("ideator experiment --config {}", args.target.config.display());
    if let Some(d) = &args.target.run_dir {
        command.push_str(&format!(" --run-dir {}", d.display()));
    }
    let manifest =
        Manifest { config_text: text, config: serde_json::to_value(&cfg)?, checkpoint: checkpoint.clone(), command };
    manifest.record_or_check(&root)?;

    let shared = runner::Shared { cfg: &cfg, checkpoint, env_config };
    let plan = cfg.plan();
    let total = cfg.seeds.len() * cfg.arms.len();
    let mut done = 0;
    for seed in &cfg.seeds {
        for (arm, p) in cfg.arms.iter().zip(&plan) {
            done += 1;
            eprintln!(
                "[{done}/{total}] arm {} ({}), seed {seed}: {} steps, {} ideas",
                p.name, p.kind, p.steps, p.executions
            );
            if runner::run_arm(&shared, &root, arm, p, *seed)? {
                eprintln!("        finished earlier: skipped");
            }
            if ideator_rollout::pipeline::interrupt::exit_code().is_some() {
                println!("experiment interrupted; continue with: {}", manifest.command);
                return Ok(());
            }
        }
    }
    let data = comparison::load(&root, &cfg, manifest.command.clone())?;
    comparison::write(&root, &data)?;
    println!("{}", ideator_diagnostics::experiment::markdown(&data));
    println!("comparison written to {}", root.join("comparison.md").display());
    Ok(())
}
