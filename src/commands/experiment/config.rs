//! The experiment's config (TOML, `deny_unknown_fields`), its validation and the budget plan: how many steps (or
//! epochs, or sampling rounds) each arm gets so that every arm evaluates at most the same number of ideas.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ideator_model::sampler::SamplingParams;
use ideator_rollout::pipeline::reward::RewardMode;
use ideator_rollout::pipeline::PipelineConfig;
use ideator_trainer::config::{OptimConfig, TrainMode};
use ideator_trainer::GrpoConfig;
use serde::{Deserialize, Serialize};

use crate::execution::{BackendSection, DiagnosticsSection};
use crate::run_config::ModelSection;

/// The experiment, as written in its TOML file. Paths are relative to the file's folder. The optional tables are
/// shared by every arm and mean what they mean in `ideator train` / `ideator evolve` configs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Environment name (`ideator env list`).
    pub env: String,
    #[serde(default = "tiny")]
    pub scale: String,
    /// The command environment's config file.
    pub env_config: Option<PathBuf>,
    /// Per-idea time limit in seconds.
    pub time_limit_s: Option<f64>,
    /// The checkpoint every arm starts from (a checkpoint folder or a run folder: its newest checkpoint); none: the
    /// model of `[model]` itself.
    pub checkpoint: Option<PathBuf>,
    /// Ideas each arm may evaluate per seed (the common budget; an idea whose recipe already ran at the same
    /// seed is a free copy from the execution cache, so executions can be fewer: both are reported).
    pub executions: usize,
    /// One run of every arm per seed; arms at the same seed share the environment's seed stream.
    pub seeds: Vec<u64>,
    /// The experiment folder; `--run-dir` overrides it. Default: runs/<config file stem>.
    pub run_dir: Option<PathBuf>,
    /// k of the comparison's max@k curves.
    #[serde(default = "default_k")]
    pub max_k: usize,
    /// Baseline runs per GRPO run for its noise floor (`rl.noise_floor_seeds`; evolution always measures one).
    #[serde(default = "default_noise_seeds")]
    pub noise_floor_seeds: usize,
    /// `rl.reward` of the GRPO arms.
    #[serde(default)]
    pub reward: RewardMode,
    /// `rl.checkpoint_every` of the GRPO arms (a crash loses at most this many updates, never executions).
    #[serde(default = "one_u64")]
    pub checkpoint_every: u64,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub train: TrainMode,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Retries and interrupts; sampling ahead is off in an experiment (every arm runs step by step, so that its
    /// ideas are exactly its budget).
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub backend: BackendSection,
    #[serde(default)]
    pub diagnostics: DiagnosticsSection,
    pub arms: Vec<Arm>,
}

fn tiny() -> String {
    "tiny".into()
}

fn default_k() -> usize {
    8
}

fn default_noise_seeds() -> usize {
    ideator_rollout::baseline::NOISE_FLOOR_SEEDS
}

fn one_u64() -> u64 {
    1
}

/// One arm: how ideas are produced and what learns from their rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arm {
    /// The frozen ideator sampled `batch` ideas at a time (`ideator eval`): best-of-N without learning.
    BestOfN { name: String, batch: usize },
    /// Evolutionary search (the seed paper's method, `ideator evolve`): `ideas_per_epoch` ideas per epoch,
    /// `ideas_per_prompt` from each prompt; `exploit_ideas` / `explore_ideas` / `max_idea_chars` as in `[evolve]`.
    Evolve {
        name: String,
        ideas_per_epoch: usize,
        #[serde(default = "one")]
        ideas_per_prompt: usize,
        #[serde(default = "default_exploit")]
        exploit_ideas: usize,
        #[serde(default = "default_explore")]
        explore_ideas: usize,
        #[serde(default = "default_idea_chars")]
        max_idea_chars: usize,
    },
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

// A small ideator reads short prompts better (configs/evolve-toy.toml).
fn default_exploit() -> usize {
    6
}

fn default_explore() -> usize {
    12
}

fn default_idea_chars() -> usize {
    400
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

    pub fn kind(&self) -> &'static str {
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
    /// Reads and checks the config; returns it with its text.
    pub fn load(path: &std::path::Path) -> Result<(Self, String)> {
        let (cfg, text): (ExperimentConfig, String) = crate::run_config::read_config(path)?;
        cfg.validate().with_context(|| format!("invalid experiment config {}", path.display()))?;
        Ok((cfg, text))
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
        if self.max_k == 0 {
            bail!("max_k must be at least 1 (the k of the comparison's max@k curves)");
        }
        if self.checkpoint_every == 0 {
            bail!("checkpoint_every must be at least 1");
        }
        // Checked here, not only when the first GRPO arm starts (after the other arms may have run): the same
        // rule as `[rl] noise_floor_seeds`.
        ideator_rollout::rl::RlConfig { noise_floor_seeds: self.noise_floor_seeds, ..Default::default() }
            .validate()
            .context("noise_floor_seeds")?;
        self.optim.validate()?;
        self.train.validate()?;
        self.sampling.validate_for_training()?;
        anyhow::ensure!(
            self.sampling.temperature > 0.0,
            "sampling.temperature = 0 decodes greedily: every idea of a GRPO group would be the same; set it > 0"
        );
        self.diagnostics.alarm.validate()?;
        if let Some(secs) = self.time_limit_s {
            crate::run_config::seconds("time_limit_s", secs)?;
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
        match arm {
            Arm::Grpo { grpo, groups_per_step, .. } => {
                grpo.validate().with_context(|| format!("arm {name:?}"))?;
                if *groups_per_step == 0 {
                    bail!("arm {name:?}: groups_per_step must be at least 1");
                }
            }
            Arm::Evolve { ideas_per_epoch, ideas_per_prompt, .. } => {
                if *ideas_per_prompt == 0 || ideas_per_epoch % ideas_per_prompt != 0 {
                    bail!(
                        "arm {name:?}: ideas_per_epoch ({ideas_per_epoch}) must be a multiple of ideas_per_prompt \
                         ({ideas_per_prompt}), which must be at least 1"
                    );
                }
            }
            Arm::BestOfN { .. } => {}
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
        assert_eq!((cfg.max_k, cfg.checkpoint_every), (8, 1));
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
        assert!(bad("seeds = [1, 2, 3]", "seeds = [1, 2, 3]\nnoise_floor_seeds = 1").contains("noise_floor_seeds"));
        assert!(bad("ideas_per_epoch = 24", "ideas_per_epoch = 24\nideas_per_prompt = 5").contains("multiple"));
        assert!(toml::from_str::<ExperimentConfig>(&CONFIG.replace("batch = 16", "batch = 16\nbogus = 1")).is_err());
        assert!(toml::from_str::<ExperimentConfig>(&format!("[optim]\nbogus = 1\n{CONFIG}")).is_err());
    }
}
