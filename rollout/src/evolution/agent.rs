//! Evolutionary search as a pipeline [`Learner`]: the ideator is frozen; each "update" adds an epoch's executed
//! ideas to the prompt database from which the next epoch's prompts are built.
//!
//! An epoch is one pipeline step of `prompts_per_epoch` groups (one prompt each, `ideas_per_prompt` completions).
//! The pipeline must run synchronously (`max_inflight_groups = prompts_per_epoch`, `max_staleness = 0`): an
//! epoch's prompts depend on every result of the epochs before it, and each prompt lists the ideas sampled
//! before it in the same epoch.
//!
//! Resume needs no checkpoint: the run store holds every trained group (the database), and the groups sampled for
//! the current epoch (the ideas to avoid). [`EvolutionAgent::restore`] rebuilds both and checks that the prompts
//! it would have built are the ones stored. `database.json` in the run folder is a readable export.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ideator_envs::prompt::evolution::{fit_prompt, FittedPrompt, PromptKind, PromptRequest};
use ideator_envs::prompt::SYSTEM_PROMPT;
use ideator_envs::Status;
use ideator_trainer::ScoredGroup;

use super::database::{Entry, PromptDatabase};
use super::schedule::{exploit_prompts, exploit_share, prompt_kind};
use super::EvolveConfig;
use crate::generate::IdeaGenerator;
use crate::pipeline::{mix_seed, EpochStats, IdeaRecord, Learner, LearnerStats, SampledGroup};
use crate::store::{GroupStatus, Store};
use crate::{Result, RolloutError};

/// What one prompt of the current epoch was.
#[derive(Debug, Clone)]
struct PromptInfo {
    kind: PromptKind,
    tokens: usize,
    listed: usize,
    dropped: usize,
}

/// What [`EvolutionAgent::restore`] found in the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// The epoch the run continues with.
    pub epoch: u64,
    /// Ideas in the database.
    pub database: usize,
    /// Prompts of this epoch sampled before the interruption.
    pub sampled_prompts: usize,
    /// Of those, prompts that the rebuilt state would have built differently (the config or model changed).
    pub mismatched_prompts: usize,
}

pub struct EvolutionAgent<'a> {
    generator: &'a mut dyn IdeaGenerator,
    cfg: EvolveConfig,
    /// The environment's task, knobs, format and example (`ideator_envs::prompt::task_prompt`).
    task: String,
    db: PromptDatabase,
    version: u64,
    /// This epoch's sampled ideas, in order (what later prompts ask to avoid).
    epoch_ideas: Vec<String>,
    epoch_prompts: Vec<PromptInfo>,
    results: Vec<IdeaRecord>,
    /// Where the database is exported after each epoch.
    export: Option<PathBuf>,
}

impl<'a> EvolutionAgent<'a> {
    pub fn new(
        generator: &'a mut dyn IdeaGenerator,
        cfg: EvolveConfig,
        task: String,
        baseline: f64,
        export: Option<PathBuf>,
    ) -> Result<Self> {
        cfg.validate()?;
        Ok(EvolutionAgent {
            generator,
            cfg,
            task,
            db: PromptDatabase::new(baseline),
            version: 0,
            epoch_ideas: Vec::new(),
            epoch_prompts: Vec::new(),
            results: Vec::new(),
            export,
        })
    }

    /// Rebuilds the state of a run from its store: the database from every trained group (epoch = the step
    /// that trained it), the epoch in progress from the groups sampled since. `run_seed` is the pipeline's seed
    /// (groups are sampled with `mix_seed(run_seed, seq)`).
    pub fn restore(&mut self, store: &Store, run: i64, run_seed: u64) -> Result<Restored> {
        self.version = store.steps(run)?.last().map_or(0, |s| s.step + 1);
        self.restore_database(store, run)?;
        let mut restored = self.restore_epoch(store, run, run_seed)?;
        restored.database = self.db.entries.len();
        Ok(restored)
    }

    /// The database: every executed idea of the groups trained before the current epoch.
    fn restore_database(&mut self, store: &Store, run: i64) -> Result<()> {
        self.db.entries.clear();
        for g in store.groups_with_status(run, &[GroupStatus::Trained])? {
            let epoch = g.trained_step.unwrap_or(g.policy_version);
            if epoch >= self.version {
                continue;
            }
            let baseline = g.reference_reward();
            for i in &g.ideas {
                let r = i.result.as_ref().ok_or_else(|| {
                    RolloutError::Config(format!("idea {} of a trained group has no result", i.key))
                })?;
                if r.cause == Some(ideator_envs::FailureCause::Infrastructure) {
                    continue;
                }
                self.db.add(Entry {
                    epoch,
                    text: i.text.clone(),
                    reward: r.reward,
                    failure: failure_text(r.status, r.cause.map(|c| c.as_str().to_string()).as_deref(), &r.message),
                    baseline,
                });
            }
        }
        Ok(())
    }

    /// The epoch in progress: its prompts and ideas so far, each prompt rebuilt (the same database, ideas to
    /// avoid and seed) and checked against the stored one; a mismatch means the config or the environment
    /// changed.
    fn restore_epoch(&mut self, store: &Store, run: i64, run_seed: u64) -> Result<Restored> {
        self.epoch_ideas.clear();
        self.epoch_prompts.clear();
        let open = store.groups_with_status(run, &[GroupStatus::Executing, GroupStatus::Complete])?;
        let epoch = self.version;
        let mut restored = Restored { epoch, ..Default::default() };
        for g in open.iter().filter(|g| g.policy_version == epoch) {
            let (fitted, kind) = self.build_prompt(mix_seed(run_seed, g.seq))?;
            let ids = self.generator.encode(SYSTEM_PROMPT, &fitted.text)?;
            restored.sampled_prompts += 1;
            if ids != store.prompt_ids(g.prompt_id)? {
                restored.mismatched_prompts += 1;
                tracing::warn!(
                    "group {} of epoch {}: its stored prompt differs from the one rebuilt on resume (did the config, \
                     the model or the environment change?); continuing with the stored ideas",
                    g.seq,
                    self.version
                );
            }
            self.note_prompt(&fitted, kind);
            self.epoch_ideas.extend(g.ideas.iter().map(|i| i.text.clone()));
        }
        Ok(restored)
    }

    /// The prompt of the next group of this epoch.
    fn build_prompt(&self, seed: u64) -> Result<(FittedPrompt, PromptKind)> {
        let index = self.epoch_prompts.len();
        if index >= self.cfg.prompts_per_epoch {
            return Err(RolloutError::Config(format!(
                "epoch {} already has its {} prompts: evolutionary search must run synchronously \
                 (pipeline.max_inflight_groups = evolve.prompts_per_epoch, max_staleness = 0)",
                self.version, self.cfg.prompts_per_epoch
            )));
        }
        let winners = !self.db.winners().is_empty();
        let kind = prompt_kind(self.version, self.cfg.prompts_per_epoch, index, winners);
        let req = PromptRequest {
            kind,
            task: &self.task,
            baseline: self.db.baseline,
            listed: self.db.listed(kind, &self.cfg, seed),
            avoid: self.epoch_ideas.iter().map(String::as_str).collect(),
            max_idea_chars: self.cfg.max_idea_chars,
        };
        // The count covers the whole conversation as the model sees it (system turn and chat template included).
        let failure = std::cell::RefCell::new(None);
        let count = |user: &str| match self.generator.encode(SYSTEM_PROMPT, user) {
            Ok(ids) => ids.len(),
            Err(e) => {
                failure.borrow_mut().get_or_insert(e);
                usize::MAX
            }
        };
        let fitted = fit_prompt(&req, self.generator.prompt_budget(), &count);
        if let Some(e) = failure.into_inner() {
            return Err(e);
        }
        Ok((fitted?, kind))
    }

    fn note_prompt(&mut self, fitted: &FittedPrompt, kind: PromptKind) {
        self.epoch_prompts.push(PromptInfo {
            kind,
            tokens: fitted.tokens,
            listed: fitted.listed,
            dropped: fitted.dropped,
        });
    }

    /// Adds the epoch's executed ideas to the database (infrastructure failures left out) and returns the reward
    /// of each, by the kind of the prompt it came from.
    fn add_epoch(&mut self, records: &[IdeaRecord]) -> BTreeMap<&'static str, Vec<f64>> {
        // Groups (and their records) come in sampling order: the n-th distinct group is the n-th prompt.
        let mut seqs: Vec<u64> = records.iter().map(|r| r.group).collect();
        seqs.dedup();
        let mut by_kind: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for r in records {
            let index = seqs.iter().position(|&s| s == r.group).expect("listed above");
            let kind = self.epoch_prompts.get(index).map_or(PromptKind::Explore, |p| p.kind);
            by_kind.entry(kind.as_str()).or_default().push(r.reward);
            if r.excluded {
                continue;
            }
            self.db.add(Entry {
                epoch: self.version,
                text: r.text.clone(),
                reward: r.reward,
                failure: failure_text(r.status, r.cause.as_deref(), &r.message),
                baseline: r.baseline_reward,
            });
        }
        by_kind
    }

    /// The epoch's statistics, once its ideas are in the database.
    fn epoch_stats(
        &self,
        records: &[IdeaRecord],
        winners_before: usize,
        by_kind: &BTreeMap<&'static str, Vec<f64>>,
    ) -> EpochStats {
        let count = |k: PromptKind| self.epoch_prompts.iter().filter(|p| p.kind == k).count();
        let tokens: Vec<f64> = self.epoch_prompts.iter().map(|p| p.tokens as f64).collect();
        EpochStats {
            baseline_reward: self.db.baseline,
            beat_baseline: records
                .iter()
                .filter(|r| r.status == Status::Ok && r.reward > r.baseline_reward.unwrap_or(self.db.baseline))
                .count(),
            exploit_share: if self.version == 0 { 0.0 } else { exploit_share(self.version) },
            exploit_prompts_planned: exploit_prompts(self.version, self.cfg.prompts_per_epoch),
            fresh_prompts: count(PromptKind::Fresh),
            exploit_prompts: count(PromptKind::Exploit),
            explore_prompts: count(PromptKind::Explore),
            exploit_reward_mean: by_kind.get("exploit").and_then(|v| mean(v)),
            explore_reward_mean: by_kind.get("explore").and_then(|v| mean(v)),
            winners_before,
            database_size: self.db.entries.len(),
            prompt_tokens_mean: mean(&tokens),
            prompt_tokens_max: tokens.iter().cloned().fold(0.0, f64::max),
            listed_ideas_mean: mean(&self.epoch_prompts.iter().map(|p| p.listed as f64).collect::<Vec<_>>()),
            ideas_dropped_to_fit: self.epoch_prompts.iter().map(|p| p.dropped).sum::<usize>(),
        }
    }

    fn export_database(&self) -> Result<()> {
        let Some(path) = &self.export else { return Ok(()) };
        let mut ranked: Vec<&Entry> = self.db.entries.iter().collect();
        ranked.sort_by(|a, b| b.reward.total_cmp(&a.reward));
        let value = serde_json::json!({
            "baseline": self.db.baseline,
            "epochs": self.version,
            "entries": ranked,
        });
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&value).expect("plain data"))
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| RolloutError::Io { path: path.clone(), message: e.to_string() })
    }
}

/// How a failed idea is described in later prompts (`None` for an executed one).
fn failure_text(status: Status, cause: Option<&str>, message: &str) -> Option<String> {
    match status {
        Status::Ok => None,
        Status::Failed => {
            let first = message.lines().next().unwrap_or("").trim();
            Some(match (cause, first.is_empty()) {
                (Some(c), false) => format!("{c}: {first}"),
                (Some(c), true) => c.to_string(),
                (None, false) => first.to_string(),
                (None, true) => "failed".to_string(),
            })
        }
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

impl Learner for EvolutionAgent<'_> {
    fn version(&self) -> u64 {
        self.version
    }

    fn sample_group(&mut self, seed: u64) -> Result<SampledGroup> {
        let (fitted, kind) = self.build_prompt(seed)?;
        let prompt_ids = self.generator.encode(SYSTEM_PROMPT, &fitted.text)?;
        let ideas = self.generator.generate(&prompt_ids, self.cfg.ideas_per_prompt, seed)?;
        self.note_prompt(&fitted, kind);
        self.epoch_ideas.extend(ideas.iter().map(|i| i.text.clone()));
        Ok(SampledGroup { prompt_text: fitted.text, prompt_ids, ideas, temperature: self.generator.temperature() })
    }

    fn see_results(&mut self, ideas: &[IdeaRecord]) -> Result<()> {
        self.results = ideas.to_vec();
        Ok(())
    }

    fn counts_epochs(&self) -> bool {
        true
    }

    fn update(&mut self, groups: &[ScoredGroup]) -> Result<LearnerStats> {
        let records = std::mem::take(&mut self.results);
        if groups.len() != self.epoch_prompts.len() {
            return Err(RolloutError::Config(format!(
                "epoch {} trains {} groups but sampled {}: evolutionary search must run synchronously",
                self.version,
                groups.len(),
                self.epoch_prompts.len()
            )));
        }
        let winners_before = self.db.winners().len();
        let by_kind = self.add_epoch(&records);
        let stats = self.epoch_stats(&records, winners_before, &by_kind);
        self.version += 1;
        self.epoch_ideas.clear();
        self.epoch_prompts.clear();
        self.export_database()?;
        Ok(LearnerStats { grpo: None, evolution: Some(stats) })
    }

    /// The database lives in the run store (every trained group), so there is nothing else to save.
    fn checkpoint(&mut self, _score: Option<f64>) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}
