//! The experiment's comparison, read from its runs' stores: every (arm, seed) run's ideas in execution order
//! (reference runs of the baseline left out; only ideas of trained groups, i.e. the ones the run's budget
//! counted), the noise floor its baselines measured, and the curves and table of `ideator_diagnostics::experiment`.
//! Written to `RUN_DIR/comparison.md` and `comparison.json`; `compare` and `report` read the folder the same way.

use std::path::Path;

use anyhow::{Context, Result};
use ideator_diagnostics::experiment::{compare, markdown, ExperimentData, ExperimentIdea, RunIdeas};
use ideator_rollout::baseline::stored_noise_floor;
use ideator_rollout::store::{GroupStatus, Store};

use super::config::ExperimentConfig;
use super::runner::{arm_run, run_folder};
use super::MANIFEST;

/// Whether `dir` is an experiment folder (it holds the experiment's manifest).
pub fn is_experiment(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

/// The baseline recipe's mean reward and seed-to-seed std (the noise floor) as a store measured them.
type Floor = (f64, Option<f64>);

/// The run's ideas in execution order, or None when the run has not started.
fn run_ideas(dir: &Path, arm: &super::config::Arm, seed: u64) -> Result<Option<(RunIdeas, Option<Floor>)>> {
    let path = crate::store_data::store_path(dir);
    if !path.is_file() {
        return Ok(None);
    }
    let store = Store::open_read_only(&path)?;
    let Some(run) = arm_run(&store, arm)? else { return Ok(None) };
    let mut ideas: Vec<_> = store
        .groups_with_status(run.id, &[GroupStatus::Trained])?
        .into_iter()
        .flat_map(|g| g.ideas)
        .filter(|i| !i.reference && i.result.is_some())
        .collect();
    ideas.sort_by(|a, b| {
        a.finished_at.unwrap_or(a.created_at).total_cmp(&b.finished_at.unwrap_or(b.created_at)).then(a.id.cmp(&b.id))
    });
    let ideas = ideas
        .into_iter()
        .map(|i| ExperimentIdea {
            reward: i.result.as_ref().map_or(0.0, |r| r.reward),
            executed: i.cached_from.is_none(),
            recipe: i.recipe_key.clone().unwrap_or(i.text),
        })
        .collect();
    let floor = stored_noise_floor(&store)?.map(|f| (f.mean, f.std));
    Ok(Some((RunIdeas { arm: arm.name().to_string(), seed, ideas }, floor)))
}

/// Reads every run of the experiment in `root` and computes the comparison.
pub fn load(root: &Path, cfg: &ExperimentConfig, command: String) -> Result<ExperimentData> {
    let mut runs = Vec::new();
    let mut noise: (Option<f64>, Option<f64>) = (None, None);
    for seed in &cfg.seeds {
        for arm in &cfg.arms {
            let dir = run_folder(root, arm.name(), *seed);
            let Some((ideas, floor)) =
                run_ideas(&dir, arm, *seed).with_context(|| format!("reading {}", dir.display()))?
            else {
                continue;
            };
            // The first measured floor with a spread (every store measures the same baseline recipe).
            if let Some((mean, std)) = floor {
                if noise.1.is_none() {
                    noise = (Some(mean), std);
                }
            }
            runs.push(ideas);
        }
    }
    let arms: Vec<(String, String)> = cfg.arms.iter().map(|a| (a.name().to_string(), a.kind().to_string())).collect();
    Ok(compare(&arms, &runs, cfg.max_k, noise, command))
}

/// Writes `comparison.md` (the table, with the command) and `comparison.json` (the curves) into `root`.
pub fn write(root: &Path, data: &ExperimentData) -> Result<()> {
    let md = format!("# Experiment comparison\n\n{}", markdown(data));
    std::fs::write(root.join("comparison.md"), md).with_context(|| format!("cannot write {}", root.display()))?;
    std::fs::write(root.join("comparison.json"), serde_json::to_string_pretty(data)?)?;
    Ok(())
}

/// The comparison of the experiment folder `root`, from its manifest's config.
pub fn load_folder(root: &Path) -> Result<ExperimentData> {
    let manifest = super::Manifest::read(root)?
        .with_context(|| format!("{} is not an experiment folder (no {MANIFEST})", root.display()))?;
    let cfg: ExperimentConfig = crate::run_config::parse_config(&manifest.config_text)
        .with_context(|| format!("the config recorded in {}", root.join(MANIFEST).display()))?;
    load(root, &cfg, manifest.command.clone())
}
