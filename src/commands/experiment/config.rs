//! `ideator experiment --config FILE`: several arms (the frozen ideator's best-of-N sampling, evolutionary search,
//! GRPO with each advantage estimator) x several seeds at **equal execution budgets**, on one environment and
//! scale, from one starting checkpoint (issue 17).
//!
//! Built so far: the config (TOML, `deny_unknown_fields`), its validation and the budget plan that `--plan`
//! prints: how many steps (or epochs, or sampling rounds) each arm gets so that every arm spends at most the same
//! number of executions. Running the arms through the train / evolve / eval machinery and the run store is not
//! built yet; without `--plan` the command says so.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ideator_trainer::GrpoConfig;
use serde::Deserialize;

#[derive(clap::Args)]
pub struct Args {
    /// Experiment config (TOML): environment, scale, starting checkpoint, budget, seeds, arms.
    #[arg(long)]
    pub config: PathBuf,
    /// Print the budget plan (steps per arm at the common execution budget) and exit.
    #[arg(long)]
    pub plan: bool,
}

/// The experiment, as written in its TOML file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Environment name (`ideator env list`).
    pub env: String,
    #[serde(default = "tiny")]
    pub scale: String,
    /// The checkpoint every arm starts from (e.g. the quickstart's warmed-up ideator).
    pub checkpoint: PathBuf,
    /// Executions each arm may spend per seed (the common budget).
    pub executions: usize,
    /// One run of every arm per seed.
    pub seeds: Vec<u64>,
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    pub arms: Vec<Arm>,
}

fn tiny() -> String {
    "tiny".into()
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("runs/experiment")
}

/// One arm: how ideas are produced and what learns from their rewards.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arm {
    /// The frozen ideator sampled `batch` ideas at a time: best-of-N without learning.
    BestOfN { name: String, batch: usize },
    /// Evolutionary search (the seed paper's method): `ideas_per_epoch` executions per epoch.
    Evolve { name: String, ideas_per_epoch: usize },
    /// GRPO with the advantage estimator of its `[arms.grpo]` table: `groups_per_step` x `grpo.group_size`
    /// executions per step.
    Grpo {
        name: String,
        #[serde(default = "one")]
        groups_per_step: usize,
        #[serde(default)]
        grpo: GrpoConfig,
    },
}

fn one() -> usize {
    1
}

impl Arm {
    pub fn name(&self) -> &str {
        match self {
            Arm::BestOfN { name, .. } | Arm::Evolve { name, .. } | Arm::Grpo { name, .. } => name,
        }
    }

    /// Executions one step (sampling round, epoch, update) spends.
    pub fn executions_per_step(&self) -> usize {
        match self {
            Arm::BestOfN { batch, .. } => *batch,
            Arm::Evolve { ideas_per_epoch, .. } => *ideas_per_epoch,
            Arm::Grpo { groups_per_step, grpo, .. } => groups_per_step * grpo.group_size,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Arm::BestOfN { .. } => "best_of_n",
            Arm::Evolve { .. } => "evolve",
            Arm::Grpo { .. } => "grpo",
        }
    }
}

/// One arm's share of the budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmPlan {
    pub name: String,
    pub kind: &'static str,
    pub executions_per_step: usize,
    /// Whole steps that fit in the budget.
    pub steps: usize,
    /// Executions those steps spend (<= the budget; the rest is left unspent so no arm gets more).
    pub executions: usize,
}

impl ExperimentConfig {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: ExperimentConfig =
            toml::from_str(&text).with_context(|| format!("invalid experiment config {}", path.display()))?;
        cfg.validate().with_context(|| format!("invalid experiment config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks what the plan needs; every message says what to change.
    pub fn validate(&self) -> Result<()> {
        if self.executions == 0 {
            bail!("executions must be at least 1 (the budget each arm spends per seed)");
        }
        if self.seeds.is_empty() {
            bail!("seeds is empty: list at least one seed (several, to get intervals across seeds)");
        }
        if self.seeds.iter().collect::<BTreeSet<_>>().len() != self.seeds.len() {
            bail!("seeds repeat a value: each seed must be distinct");
        }
        if self.arms.len() < 2 {
            bail!("an experiment compares arms: give at least two [[arms]]");
        }
        let mut names = BTreeSet::new();
        for arm in &self.arms {
            self.validate_arm(arm, &mut names)?;
        }
        Ok(())
    }

    fn validate_arm(&self, arm: &Arm, names: &mut BTreeSet<String>) -> Result<()> {
        let name = arm.name();
        if name.is_empty() || !names.insert(name.to_string()) {
            bail!("arm names must be non-empty and distinct (got {name:?} twice or empty)");
        }
        if let Arm::Grpo { grpo, groups_per_step, .. } = arm {
            grpo.validate().with_context(|| format!("arm {name:?}"))?;
            if *groups_per_step == 0 {
                bail!("arm {name:?}: groups_per_step must be at least 1");
            }
        }
        let per_step = arm.executions_per_step();
        if per_step == 0 || per_step > self.executions {
            bail!(
                "arm {name:?} spends {per_step} executions per step, which does not fit the budget of {} \
                 executions: raise executions or shrink the arm's step",
                self.executions
            );
        }
        Ok(())
    }

    /// Steps per arm at the common budget: floor(executions / executions per step).
    pub fn plan(&self) -> Vec<ArmPlan> {
        self.arms
            .iter()
            .map(|arm| {
                let per = arm.executions_per_step();
                let steps = self.executions / per;
                ArmPlan {
                    name: arm.name().to_string(),
                    kind: arm.kind(),
                    executions_per_step: per,
                    steps,
                    executions: steps * per,
                }
            })
            .collect()
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = ExperimentConfig::load(&args.config)?;
    let plan = cfg.plan();
    println!(
        "experiment on {} ({}), from {}: {} executions per arm and seed, seeds {:?}",
        cfg.env,
        cfg.scale,
        cfg.checkpoint.display(),
        cfg.executions,
        cfg.seeds
    );
    println!("{:<24} {:<10} {:>10} {:>7} {:>11}", "arm", "kind", "per step", "steps", "executions");
    for p in &plan {
        println!("{:<24} {:<10} {:>10} {:>7} {:>11}", p.name, p.kind, p.executions_per_step, p.steps, p.executions);
    }
    let total: usize = plan.iter().map(|p| p.executions).sum::<usize>() * cfg.seeds.len();
    println!("total: {total} executions over {} arms x {} seeds", plan.len(), cfg.seeds.len());
    if !args.plan {
        bail!(
            "running an experiment's arms is not built yet (issue 17): run each arm with `ideator train` / \
             `ideator evolve` / `ideator eval` at the steps above, or pass --plan to only print the plan"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
env = "peaks"
checkpoint = "runs/quickstart/sft"
executions = 64
seeds = [1, 2, 3]

[[arms]]
kind = "best_of_n"
name = "frozen"
batch = 16

[[arms]]
kind = "evolve"
name = "evolution"
ideas_per_epoch = 24

[[arms]]
kind = "grpo"
name = "max_k4"
groups_per_step = 2
[arms.grpo]
group_size = 8
advantage_estimator = "max_k"
max_k = { k = 4 }
"#;

    #[test]
    fn the_plan_gives_every_arm_whole_steps_within_the_same_budget() {
        let cfg: ExperimentConfig = toml::from_str(CONFIG).unwrap();
        cfg.validate().unwrap();
        let plan = cfg.plan();
        let got: Vec<(&str, usize, usize)> = plan.iter().map(|p| (p.name.as_str(), p.steps, p.executions)).collect();
        assert_eq!(got, vec![("frozen", 4, 64), ("evolution", 2, 48), ("max_k4", 4, 64)]);
        assert_eq!(cfg.scale, "tiny");
        match &cfg.arms[2] {
            Arm::Grpo { grpo, .. } => assert_eq!(grpo.max_k.k, 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_experiments_say_what_to_change() {
        let bad = |from: &str, to: &str| {
            let cfg: ExperimentConfig = toml::from_str(&CONFIG.replace(from, to)).unwrap();
            format!("{:#}", cfg.validate().unwrap_err())
        };
        assert!(bad("executions = 64", "executions = 20").contains("does not fit the budget"));
        assert!(bad("seeds = [1, 2, 3]", "seeds = [1, 1]").contains("distinct"));
        assert!(bad("name = \"evolution\"", "name = \"frozen\"").contains("distinct"));
        assert!(bad("max_k = { k = 4 }", "max_k = { k = 9 }").contains("grpo.max_k.k = 9"));
        assert!(toml::from_str::<ExperimentConfig>(&CONFIG.replace("batch = 16", "batch = 16\nbogus = 1")).is_err());
    }
}
