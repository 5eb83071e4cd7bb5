//! The asynchronous pipeline: the learner thread samples groups (tagged with the policy version that sampled
//! them) and hands their ideas to the [`dispatch`]er, which runs them on the backend's slots as soon as one is
//! free; results stream back, and complete groups go to the learner. Sampling runs ahead of training by up to
//! `max_inflight_groups` groups; a group more than `max_staleness` versions older than the policy when it would
//! be trained is dropped and counted (off-policy groups within the bound train correctly through their stored
//! behaviour log-probs). With `max_inflight_groups = groups_per_step` and `max_staleness = 0` this is the
//! synchronous loop: sample a step's groups, wait for all, update.
//!
//! The learner is pluggable ([`Learner`]): GRPO ([`grpo::GrpoAgent`]), evolutionary search
//! ([`crate::evolution::EvolutionAgent`], whose "update" changes a prompt database instead of weights), and a
//! frozen sampler for evaluations and the baseline ([`frozen`]: one "update" that changes nothing).
//!
//! Crash safety: every transition is in the run store before it is acted on. On resume the caller restores the
//! learner from its newest checkpoint (version k); the store is rewound to k (the groups of lost updates become
//! complete again and are trained anew, never re-executed); pending ideas are launched, running ones re-attached
//! or launched again.

pub mod dispatch;
pub mod frozen;
pub mod grpo;
pub mod interrupt;
pub mod record;
pub mod reward;
mod run;
mod step;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ideator_envs::backend::Backend;
use ideator_envs::Status;
use ideator_trainer::ScoredGroup;
use serde::{Deserialize, Serialize};

use crate::store::Store;
use crate::{Result, RolloutError};
use dispatch::Launcher;
pub use record::{EpochStats, LearnerStats, StepRecord};
use reward::{RewardMode, SeedScope};

/// What to do with running executions when the trainer is interrupted (Ctrl-C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInterrupt {
    /// Kill them; they run again after a resume.
    Cancel,
    /// Let them finish and record their results (then stop).
    Wait,
}

/// `[pipeline]`: how far sampling runs ahead, staleness, retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Groups sampled and not yet trained, at most (0: twice the groups of a step).
    pub max_inflight_groups: usize,
    /// A group sampled by policy version v trains at version v + max_staleness at the latest, else is dropped.
    pub max_staleness: u64,
    /// Launches of an idea at most when the infrastructure fails (idea failures are never retried).
    pub max_attempts: u32,
    /// Seconds before the second launch; doubles with each further one.
    pub retry_backoff_s: f64,
    pub on_interrupt: OnInterrupt,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_inflight_groups: 0,
            max_staleness: 1,
            max_attempts: 3,
            retry_backoff_s: 5.0,
            on_interrupt: OnInterrupt::Cancel,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self, groups_per_step: usize) -> Result<()> {
        if self.max_inflight_groups != 0 && self.max_inflight_groups < groups_per_step {
            return Err(RolloutError::Config(format!(
                "pipeline.max_inflight_groups ({}) must be at least rl.groups_per_step ({groups_per_step}), or 0 for \
                 twice that",
                self.max_inflight_groups
            )));
        }
        // Written so that NaN fails too; the upper bound keeps Duration::from_secs_f64 from panicking.
        if self.max_attempts == 0 || !(0.0..=1e6).contains(&self.retry_backoff_s) {
            return Err(RolloutError::Config(format!(
                "pipeline.max_attempts must be at least 1 (got {}) and pipeline.retry_backoff_s in [0, 1e6] seconds \
                 (got {})",
                self.max_attempts, self.retry_backoff_s
            )));
        }
        Ok(())
    }

    pub(crate) fn inflight(&self, groups_per_step: usize) -> usize {
        if self.max_inflight_groups == 0 {
            2 * groups_per_step
        } else {
            self.max_inflight_groups
        }
    }
}

/// One sampled idea.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledIdea {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish_reason: String,
}

impl From<ideator_model::sampler::Completion> for SampledIdea {
    fn from(c: ideator_model::sampler::Completion) -> Self {
        SampledIdea {
            text: c.text,
            token_ids: c.token_ids,
            logprobs: c.logprobs,
            finish_reason: format!("{:?}", c.finish_reason).to_lowercase(),
        }
    }
}

/// A group of ideas sampled from one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledGroup {
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    pub ideas: Vec<SampledIdea>,
    /// Temperature of the distribution the behaviour log-probs come from (`SamplingParams::logprob_temperature`).
    pub temperature: f64,
}

/// What turns scored groups into a better policy. Sampling and updating happen on the pipeline's own thread (the
/// model need not be `Send`).
pub trait Learner {
    /// Updates done so far: the version of the policy that samples now.
    fn version(&self) -> u64;
    /// Samples one group with the current policy.
    fn sample_group(&mut self, seed: u64) -> Result<SampledGroup>;
    /// One update from complete groups; returns the learner's part of the step record (rewards, executions and
    /// timings are the pipeline's).
    fn update(&mut self, groups: &[ScoredGroup]) -> Result<LearnerStats>;
    /// Called just before [`Learner::update`] with the executed ideas of its groups, in group order (texts,
    /// failures and causes: what a learner that reads ideas, like evolutionary search, needs beyond rewards).
    fn see_results(&mut self, _ideas: &[IdeaRecord]) -> Result<()> {
        Ok(())
    }
    /// Whether an update is an evolution epoch: records then carry `epoch` next to `step` (the report tells
    /// evolution from RL by it).
    fn counts_epochs(&self) -> bool {
        false
    }
    /// Saves the current version; returns where, and a score for keeping the best.
    fn checkpoint(&mut self, score: Option<f64>) -> Result<Option<PathBuf>>;
}

/// One executed idea, as logged in `ideas.jsonl` and shown to the per-step callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeaRecord {
    /// The update that trained on it.
    pub step: u64,
    /// The evolution epoch (equal to `step`) when the learner is evolutionary search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub group: u64,
    pub sample: usize,
    /// Policy version that sampled the idea.
    pub policy_version: u64,
    pub text: String,
    pub completion_tokens: usize,
    pub finish_reason: String,
    pub status: Status,
    pub reward: f64,
    pub cause: Option<String>,
    pub message: String,
    pub metrics: BTreeMap<String, f64>,
    pub seconds: f64,
    pub attempts: u32,
    /// The knobs the idea changes (its category); `None` if it could not be implemented.
    pub category: Option<Vec<String>>,
    /// The environment seed it ran at (shared by its group: common random numbers).
    #[serde(default)]
    pub seed: u64,
    /// The reference run's score at the same seed (the baseline recipe), when the group has one that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_reward: Option<f64>,
    /// The result was copied from an earlier execution of the same recipe at the same seed.
    #[serde(default)]
    pub cached: bool,
    /// Left out of the update: the machine failed (after the retries), not the idea.
    #[serde(default)]
    pub excluded: bool,
}

/// What the caller sees after each step; it may add metrics (diagnostics) to the step's record.
pub struct StepReport<'a> {
    pub step: u64,
    pub ideas: &'a [IdeaRecord],
    pub record: &'a StepRecord,
}

/// Everything the pipeline needs besides the learner.
pub struct PipelineContext<'a> {
    pub store: &'a Store,
    pub run: i64,
    /// `metrics.jsonl` and `ideas.jsonl` (exports; the store is the source of truth) go here.
    pub run_dir: &'a Path,
    pub cfg: PipelineConfig,
    /// Updates in the whole run.
    pub steps: u64,
    pub groups_per_step: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
    /// Which executions share an environment seed (common random numbers).
    pub seed_scope: SeedScope,
    /// Give every group a reference run: the environment's baseline recipe at the group's seed (needed by reward
    /// modes relative to the baseline and by evolutionary search; a cached execution after the first per seed).
    pub reference: bool,
    /// What the learner is given for an idea's score.
    pub reward: RewardMode,
    /// The environment's seed-to-seed std of a fixed recipe (its noise floor), when measured: groups whose reward
    /// range lies within it are counted (`frac_reward_within_noise`).
    pub noise_std: Option<f64>,
    /// Set (e.g. by Ctrl-C) to stop: sampling stops, runs are cancelled or awaited, a checkpoint is saved.
    pub stop: Arc<AtomicBool>,
    pub categorize: &'a dyn Fn(&str) -> Option<Vec<String>>,
    pub on_step: &'a mut dyn FnMut(&StepReport) -> serde_json::Map<String, serde_json::Value>,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSummary {
    pub steps: u64,
    pub interrupted: bool,
    pub best_reward: Option<f64>,
    pub best_idea: Option<String>,
    /// Executions that ran in this session (reference runs included, cache hits not).
    pub executions: u64,
    /// Results copied from the execution cache in this session.
    #[serde(default)]
    pub cache_hits: u64,
    pub dropped_stale_groups: u64,
    pub wall_seconds: f64,
    pub slot_utilisation: f64,
    pub learner_idle_frac: f64,
    pub executions_per_hour: f64,
    pub staleness_histogram: BTreeMap<u64, u64>,
}

/// The seed of group `seq` of a run with seed `run_seed` (what [`Learner::sample_group`] receives).
pub fn mix_seed(run_seed: u64, seq: u64) -> u64 {
    mix(run_seed, seq)
}

pub(crate) use ideator_model::seed::mix;

/// Test hook: `IDEATOR_TEST_CRASH_AFTER_STEP=N` aborts the process right after step N's record is committed and
/// before its checkpoint is written, the window in which a crash must lose the step, never train it twice.
fn crash_point_for_tests(step: u64) {
    if std::env::var("IDEATOR_TEST_CRASH_AFTER_STEP").ok().and_then(|v| v.parse::<u64>().ok()) == Some(step) {
        eprintln!("IDEATOR_TEST_CRASH_AFTER_STEP={step}: aborting between the step record and its checkpoint");
        std::process::abort();
    }
}

/// Runs the pipeline until the learner reaches `ctx.steps` updates or `ctx.stop` is set.
///
/// Errors: the store, the backend or the learner failing; after an error the dispatcher is shut down and its
/// running executions cancelled before the error is returned.
pub fn run_pipeline(
    learner: &mut dyn Learner,
    ctx: &mut PipelineContext,
    backend: Box<dyn Backend>,
    launcher: Box<dyn Launcher>,
) -> Result<PipelineSummary> {
    let mut pipeline = run::Pipeline::open(learner, ctx, backend, launcher)?;
    let outcome = pipeline.run_loop();
    let interrupted = matches!(outcome, Ok(true));
    let stats = pipeline.shut_down(interrupted, outcome.is_err())?;
    outcome?;
    pipeline.finish(interrupted, stats)
}
