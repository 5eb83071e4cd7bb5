//! The asynchronous pipeline: the learner thread samples groups (tagged with the policy version that sampled
//! them) and hands their ideas to the [`dispatch`]er, which runs them on the backend's slots as soon as one is
//! free; results stream back, and complete groups go to the learner. Sampling runs ahead of training by up to
//! `max_inflight_groups` groups; a group more than `max_staleness` versions older than the policy when it would
//! be trained is dropped and counted (off-policy groups within the bound train correctly through their stored
//! behaviour log-probs). With `max_inflight_groups = groups_per_step` and `max_staleness = 0` this is the
//! synchronous loop: sample a step's groups, wait for all, update.
//!
//! The learner is pluggable ([`Learner`]): GRPO ([`grpo::GrpoAgent`]), evolutionary search
//! ([`evolve::EvolutionAgent`], whose "update" changes a prompt database instead of weights), and a frozen sampler
//! for evaluations and the baseline ([`frozen`]: one "update" that changes nothing).
//!
//! Crash safety: every transition is in the run store before it is acted on. On resume the caller restores the
//! learner from its newest checkpoint (version k); the store is rewound to k (the groups of lost updates become
//! complete again and are trained anew, never re-executed); pending ideas are launched, running ones re-attached
//! or launched again.

pub mod dispatch;
pub mod evolve;
pub mod frozen;
pub mod grpo;
pub mod interrupt;
pub mod reward;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ideator_envs::backend::Backend;
use ideator_envs::{FailureCause, Status};
use ideator_trainer::run_dir::{truncate_metrics, MetricsWriter};
use ideator_trainer::{ScoredGroup, ScoredSample};
use serde::{Deserialize, Serialize};

use crate::store::{GroupRow, GroupStatus, IdeaStatus, NewGroup, NewIdea, Store};
use crate::{Result, RolloutError};
use dispatch::{Command, DispatchStats, Event, Launcher, RetryPolicy};
use frozen::BASELINE_TEXT;
use reward::{env_seed, within_noise, RewardMode, SeedScope};

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

    pub fn inflight(&self, groups_per_step: usize) -> usize {
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
    /// One update from complete groups; returns its statistics (a JSON object).
    fn update(&mut self, groups: &[ScoredGroup]) -> Result<serde_json::Value>;
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
    pub record: &'a serde_json::Value,
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

/// What a step's groups held, beyond the learner's own statistics.
#[derive(Default)]
struct StepTally {
    /// Ideas left out of the update (infrastructure failures; ideas of a group whose reference run failed when
    /// the reward is relative to it).
    excluded: u64,
    /// Results (ideas and reference runs) copied from the execution cache.
    cache_hits: u64,
    references: u64,
    /// Groups whose trained rewards are all equal (no policy-gradient signal).
    zero_std: u64,
    /// Groups whose reward range is within the noise floor.
    within_noise: u64,
}

impl StepTally {
    fn write(&self, record: &mut serde_json::Value, groups: usize, ideas: usize, noise_std: Option<f64>) {
        let n = groups.max(1) as f64;
        record["ideas"] = ideas.into();
        record["reference_runs"] = self.references.into();
        record["cache_hits"] = self.cache_hits.into();
        record["executed_ideas"] = (ideas as u64 + self.references).saturating_sub(self.cache_hits).into();
        record["excluded_ideas"] = self.excluded.into();
        record["frac_reward_zero_std"] = (self.zero_std as f64 / n).into();
        record["noise_std"] = noise_std.into();
        record["frac_reward_within_noise"] = noise_std.map(|_| self.within_noise as f64 / n).into();
    }
}

/// Time split and counters between two updates.
#[derive(Default)]
struct Interval {
    sample_seconds: f64,
    wait_seconds: f64,
    sampled_groups: usize,
    dropped: u64,
}

/// Runs the pipeline until the learner reaches `ctx.steps` updates or `ctx.stop` is set.
pub fn run_pipeline(
    learner: &mut dyn Learner,
    ctx: &mut PipelineContext,
    backend: Box<dyn Backend>,
    launcher: Box<dyn Launcher>,
) -> Result<PipelineSummary> {
    ctx.cfg.validate(ctx.groups_per_step)?;
    let store = ctx.store;
    let run = ctx.run;
    let t_run = Instant::now();
    let start_version = learner.version();
    // Updates after the checkpoint we resumed from are lost: forget them (their groups train again).
    store.rewind_to(run, start_version)?;
    store.record_policy_version(run, start_version)?;
    let metrics_path = ctx.run_dir.join("metrics.jsonl");
    let ideas_path = ctx.run_dir.join("ideas.jsonl");
    truncate_metrics(&metrics_path, start_version)?;
    truncate_metrics(&ideas_path, start_version)?;
    let mut metrics_out = MetricsWriter::open(&metrics_path)?;
    let mut ideas_out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ideas_path)
        .map_err(|e| RolloutError::Io { path: ideas_path.clone(), message: e.to_string() })?;

    let mut best: Option<(f64, String)> = None;
    for g in store.groups_with_status(run, &[GroupStatus::Trained])? {
        for i in &g.ideas {
            if let Some(r) = i.result.as_ref().filter(|r| r.status == Status::Ok) {
                if best.as_ref().is_none_or(|(b, _)| r.reward > *b) {
                    best = Some((r.reward, i.text.clone()));
                }
            }
        }
    }

    // Groups not yet trained: complete ones wait for the learner; executing ones for their ideas.
    let mut ready: VecDeque<GroupRow> = store.groups_with_status(run, &[GroupStatus::Complete])?.into();
    let mut executing: HashMap<i64, (GroupRow, usize)> = HashMap::new();
    let store_path = store.path().to_path_buf();
    let retry =
        RetryPolicy { max_attempts: ctx.cfg.max_attempts, backoff: Duration::from_secs_f64(ctx.cfg.retry_backoff_s) };
    let mut dispatcher = dispatch::start(&store_path, backend, launcher, retry)?;
    for g in store.groups_with_status(run, &[GroupStatus::Executing])? {
        let mut remaining = 0;
        for i in g.executions() {
            match i.status {
                IdeaStatus::Pending => dispatcher.send(Command::Run(i.clone())),
                IdeaStatus::Running => dispatcher.send(Command::Reattach(i.clone())),
                _ => continue,
            }
            remaining += 1;
        }
        if remaining == 0 {
            // Every idea is done but the group was not marked (cannot happen with one transaction; be safe).
            ready.push_back(g);
        } else {
            executing.insert(g.id, (g, remaining));
        }
    }
    if !ready.is_empty() || !executing.is_empty() {
        tracing::info!(
            "resuming at version {start_version}: {} complete groups to train, {} groups still executing",
            ready.len(),
            executing.len()
        );
    }

    let inflight_limit = ctx.cfg.inflight(ctx.groups_per_step);
    let mut next_seq = store.next_group_seq(run)?;
    let mut prompts: HashMap<i64, Vec<u32>> = HashMap::new();
    let mut prompt_ids_by_text: HashMap<Vec<u32>, i64> = HashMap::new();
    let mut interval = Interval::default();
    let mut t_interval = Instant::now();
    let mut last_stats = dispatcher.stats.lock().expect("stats").clone();
    let mut total_wait = 0.0;
    let mut dropped_total = 0u64;
    let mut interrupted = false;
    let mut executions_at_start = None;
    // Ideas handed to the dispatcher (compared with what it has taken in, for its true queue depth).
    let mut sent: u64 = 0;

    let outcome: Result<()> = (|| {
        loop {
            // 1. Take in finished ideas.
            let mut got = Vec::new();
            while let Ok(ev) = dispatcher.events.try_recv() {
                got.push(ev);
            }
            for ev in got {
                handle_event(ev, store, &mut executing, &mut ready)?;
            }
            if executions_at_start.is_none() {
                executions_at_start = Some(dispatcher.stats.lock().expect("stats").completed);
            }
            // 2. Drop groups too stale to train on.
            let version = learner.version();
            ready.retain(|g| {
                let staleness = version.saturating_sub(g.policy_version);
                if staleness > ctx.cfg.max_staleness {
                    tracing::info!(
                        "dropping group {} (sampled at version {}, now {version})",
                        g.seq,
                        g.policy_version
                    );
                    let _ = store.drop_group(g.id, staleness);
                    interval.dropped += 1;
                    dropped_total += 1;
                    false
                } else {
                    true
                }
            });
            // Groups still executing that are already too stale will never train: stop their runs now.
            let hopeless: Vec<i64> = executing
                .values()
                .filter(|(g, _)| version.saturating_sub(g.policy_version) > ctx.cfg.max_staleness)
                .map(|(g, _)| g.id)
                .collect();
            for id in hopeless {
                let (g, _) = executing.remove(&id).expect("listed above");
                let staleness = version.saturating_sub(g.policy_version);
                tracing::info!(
                    "dropping group {} while it executes (sampled at version {})",
                    g.seq,
                    g.policy_version
                );
                // Recorded first, so that a result arriving meanwhile is refused by the store.
                store.drop_unfinished_group(g.id, staleness)?;
                dispatcher.send(Command::Cancel(g.ideas.iter().map(|i| i.id).collect()));
                interval.dropped += 1;
                dropped_total += 1;
            }
            if version >= ctx.steps {
                break;
            }
            if ctx.stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            // 3. Decide between updating and sampling. Sampling comes first while the backend's queue holds less
            //    than one idea per slot (so slots never starve during a run of back-to-back updates); otherwise
            //    a step's worth of complete groups is trained at once.
            let open = ready.len() + executing.len();
            let needed = (ctx.steps - version) as usize * ctx.groups_per_step;
            let can_sample = open < inflight_limit && open < needed;
            let (queued, slots) = {
                let s = dispatcher.stats.lock().expect("stats");
                (s.queued as u64 + sent.saturating_sub(s.received), s.slots as u64)
            };
            let starving = queued < slots;
            if ready.len() >= ctx.groups_per_step && !(can_sample && starving) {
                let groups: Vec<GroupRow> = ready.drain(..ctx.groups_per_step).collect();
                let stats_now = dispatcher.stats.lock().expect("stats").clone();
                train_step(
                    learner,
                    ctx,
                    &groups,
                    &mut prompts,
                    &mut interval,
                    t_interval.elapsed().as_secs_f64(),
                    (&last_stats, &stats_now),
                    &mut best,
                    &mut metrics_out,
                    &mut ideas_out,
                    &ideas_path,
                )?;
                total_wait += interval.wait_seconds;
                interval = Interval::default();
                t_interval = Instant::now();
                last_stats = dispatcher.stats.lock().expect("stats").clone();
                continue;
            }
            // 4. Sample ahead while the bound allows and more groups may still be needed.
            if can_sample {
                let t0 = Instant::now();
                let seq = next_seq;
                let sampled = learner.sample_group(mix(ctx.seed, seq))?;
                let sample_seconds = t0.elapsed().as_secs_f64();
                interval.sample_seconds += sample_seconds;
                interval.sampled_groups += 1;
                let prompt_id = match prompt_ids_by_text.get(&sampled.prompt_ids) {
                    Some(&id) => id,
                    None => {
                        let id = store.intern_prompt(run, &sampled.prompt_text, &sampled.prompt_ids)?;
                        prompt_ids_by_text.insert(sampled.prompt_ids.clone(), id);
                        prompts.insert(id, sampled.prompt_ids.clone());
                        id
                    }
                };
                let seed = env_seed(ctx.seed, ctx.seed_scope, seq, ctx.groups_per_step);
                let mut ideas: Vec<NewIdea> = sampled
                    .ideas
                    .into_iter()
                    .map(|s| NewIdea {
                        text: s.text,
                        token_ids: s.token_ids,
                        logprobs: s.logprobs,
                        finish_reason: s.finish_reason,
                        seed,
                        reference: false,
                    })
                    .collect();
                if ctx.reference {
                    ideas.push(NewIdea {
                        text: BASELINE_TEXT.into(),
                        token_ids: vec![],
                        logprobs: vec![],
                        finish_reason: "reference".into(),
                        seed,
                        reference: true,
                    });
                }
                let new = NewGroup {
                    seq,
                    prompt_id,
                    policy_version: version,
                    sample_seconds,
                    temperature: sampled.temperature,
                    ideas,
                };
                // Stored before any of its ideas is launched.
                let row = store.insert_group(run, &new)?;
                next_seq += 1;
                for i in row.executions() {
                    dispatcher.send(Command::Run(i.clone()));
                    sent += 1;
                }
                let n = row.executions().count();
                executing.insert(row.id, (row, n));
                continue;
            }
            // 5. Nothing to do but wait for results: the learner is idle.
            let t0 = Instant::now();
            match dispatcher.events.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) => handle_event(ev, store, &mut executing, &mut ready)?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RolloutError::Backend("the dispatcher stopped unexpectedly".into()))
                }
            }
            interval.wait_seconds += t0.elapsed().as_secs_f64();
        }
        Ok(())
    })();

    // Shut the dispatcher down: at the end of training leftover runs are useless; on an interrupt, cancel or wait.
    let cancel = !interrupted || ctx.cfg.on_interrupt == OnInterrupt::Cancel || outcome.is_err();
    dispatcher.send(Command::Shutdown { cancel });
    loop {
        match dispatcher.events.recv() {
            Ok(Event::Stopped) | Err(_) => break,
            Ok(Event::Fatal(e)) => tracing::error!("dispatcher: {e}"),
            Ok(ev @ Event::Done { .. }) => {
                if outcome.is_ok() {
                    handle_event(ev, store, &mut executing, &mut ready)?;
                }
            }
        }
    }
    dispatcher.join();
    let final_stats = dispatcher.stats.lock().expect("stats").clone();
    outcome?;
    if interrupted {
        if learner.version() > start_version || !store.checkpoints(run)?.iter().any(|c| c.step == learner.version()) {
            if let Some(path) = learner.checkpoint(None)? {
                store.record_checkpoint(run, learner.version(), &path, None)?;
            }
        }
        store.set_run_status(run, "interrupted")?;
    } else {
        // Training is done: what is still unfinished will never be needed.
        store.cancel_unfinished(run)?;
        store.set_run_status(run, "done")?;
    }
    let wall = t_run.elapsed().as_secs_f64();
    let executions = final_stats.completed - executions_at_start.unwrap_or(0);
    Ok(PipelineSummary {
        steps: learner.version(),
        interrupted,
        best_reward: best.as_ref().map(|b| b.0),
        best_idea: best.map(|b| b.1),
        executions,
        cache_hits: final_stats.cache_hits,
        dropped_stale_groups: dropped_total,
        wall_seconds: wall,
        slot_utilisation: final_stats.busy_slot_seconds / (final_stats.slots as f64 * wall).max(1e-9),
        learner_idle_frac: total_wait / wall.max(1e-9),
        executions_per_hour: executions as f64 / wall.max(1e-9) * 3600.0,
        staleness_histogram: store.staleness_histogram(run)?,
    })
}

fn handle_event(
    ev: Event,
    store: &Store,
    executing: &mut HashMap<i64, (GroupRow, usize)>,
    ready: &mut VecDeque<GroupRow>,
) -> Result<()> {
    match ev {
        Event::Done { group, .. } => {
            if let Some((_, remaining)) = executing.get_mut(&group) {
                *remaining -= 1;
                if *remaining == 0 {
                    executing.remove(&group);
                    // Re-read: the group now carries every result.
                    let g = store.group(group)?;
                    // Keep sampling order: a group that finishes early waits behind older complete ones only
                    // if they are older; insert by sequence number.
                    let pos = ready.iter().position(|r| r.seq > g.seq).unwrap_or(ready.len());
                    ready.insert(pos, g);
                }
            }
            Ok(())
        }
        Event::Fatal(e) => Err(RolloutError::Backend(e)),
        Event::Stopped => Err(RolloutError::Backend("the dispatcher stopped unexpectedly".into())),
    }
}

/// A key equal for ideas that change the same knobs (deterministic within a build: SipHash with fixed keys).
/// An idea's identity for novelty within its group: its canonical recipe when it implements, else the knobs it
/// changes; `None` when neither is known. (Hashed within one process: only compared within a step.)
fn cluster_of(recipe_key: Option<&str>, category: Option<&[String]>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match (recipe_key, category) {
        (Some(k), _) => k.hash(&mut h),
        (None, Some(c)) => c.hash(&mut h),
        (None, None) => return None,
    }
    Some(h.finish())
}

#[allow(clippy::too_many_arguments)]
fn train_step(
    learner: &mut dyn Learner,
    ctx: &mut PipelineContext,
    groups: &[GroupRow],
    prompts: &mut HashMap<i64, Vec<u32>>,
    interval: &mut Interval,
    interval_seconds: f64,
    (before, after): (&DispatchStats, &DispatchStats),
    best: &mut Option<(f64, String)>,
    metrics_out: &mut MetricsWriter,
    ideas_out: &mut std::fs::File,
    ideas_path: &Path,
) -> Result<()> {
    let store = ctx.store;
    let version = learner.version();
    let step = version;
    let mut scored = Vec::with_capacity(groups.len());
    let mut records = Vec::new();
    let mut staleness = Vec::new();
    let mut tally = StepTally::default();
    for g in groups {
        let prompt = match prompts.get(&g.prompt_id) {
            Some(p) => p.clone(),
            None => {
                let p = store.prompt_ids(g.prompt_id)?;
                prompts.insert(g.prompt_id, p.clone());
                p
            }
        };
        let baseline_reward = g.reference_reward();
        let mut samples = Vec::with_capacity(g.ideas.len());
        for i in &g.ideas {
            let r = i
                .result
                .clone()
                .ok_or_else(|| RolloutError::Config(format!("idea {} of a complete group has no result", i.key)))?;
            // The machine failed, not the idea (after the retries): no signal either way.
            let excluded = r.cause == Some(FailureCause::Infrastructure);
            let shaped = ctx.reward.shape(r.reward, baseline_reward);
            let category = (ctx.categorize)(&i.text);
            match shaped {
                Some(reward) if !excluded => samples.push(ScoredSample {
                    completion_ids: i.token_ids.clone(),
                    behaviour_logprobs: i.logprobs.clone(),
                    reward,
                    // The `diversity` estimator's idea identity: the canonical recipe (the execution cache's key),
                    // else the set of knobs changed.
                    cluster: cluster_of(i.recipe_key.as_deref(), category.as_deref()),
                }),
                _ => tally.excluded += 1,
            }
            if r.status == Status::Ok && best.as_ref().is_none_or(|(b, _)| r.reward > *b) {
                *best = Some((r.reward, i.text.clone()));
            }
            tally.cache_hits += u64::from(i.cached_from.is_some());
            records.push(IdeaRecord {
                step,
                epoch: learner.counts_epochs().then_some(step),
                group: g.seq,
                sample: i.index,
                policy_version: g.policy_version,
                text: i.text.clone(),
                completion_tokens: i.token_ids.len(),
                finish_reason: i.finish_reason.clone(),
                status: r.status,
                reward: r.reward,
                cause: r.cause.map(|c| c.as_str().to_string()),
                message: r.message.clone(),
                metrics: r.metrics.clone(),
                seconds: r.seconds,
                attempts: i.attempts,
                category,
                seed: i.seed,
                baseline_reward,
                cached: i.cached_from.is_some(),
                excluded: excluded || shaped.is_none(),
            });
        }
        if let Some(r) = &g.reference {
            tally.references += 1;
            tally.cache_hits += u64::from(r.cached_from.is_some());
        }
        let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        tally.zero_std += u64::from(ideator_trainer::advantages::is_zero_std(&rewards));
        if let Some(noise) = ctx.noise_std {
            tally.within_noise += u64::from(within_noise(&rewards, noise));
        }
        staleness.push((g.id, version.saturating_sub(g.policy_version)));
        scored.push(ScoredGroup {
            prompt_ids: prompt,
            samples,
            policy_version: g.policy_version,
            temperature: g.temperature,
        });
    }
    let t0 = Instant::now();
    learner.see_results(&records)?;
    let stats = learner.update(&scored)?;
    let update_seconds = t0.elapsed().as_secs_f64();
    let wall = interval_seconds + update_seconds;
    let mut record = if stats.is_object() { stats } else { serde_json::json!({ "learner": stats }) };
    record["step"] = step.into();
    let executed = records.iter().filter(|r| r.status == Status::Ok).count();
    record["execution_rate"] = (executed as f64 / records.len().max(1) as f64).into();
    record["best_reward_so_far"] = best.as_ref().map(|b| b.0).into();
    record["idea_chars_mean"] =
        (records.iter().map(|r| r.text.chars().count()).sum::<usize>() as f64 / records.len().max(1) as f64).into();
    let mut causes = BTreeMap::new();
    for r in &records {
        if let Some(c) = &r.cause {
            *causes.entry(c.clone()).or_insert(0usize) += 1;
        }
    }
    record["failures"] = serde_json::to_value(&causes).expect("map serialises");
    // Pipeline metrics: where the time went since the previous update, and how busy the slots were.
    record["sample_seconds"] = interval.sample_seconds.into();
    record["wait_seconds"] = interval.wait_seconds.into();
    record["update_seconds"] = update_seconds.into();
    record["step_seconds"] = wall.into();
    record["learner_idle_frac"] = (interval.wait_seconds / wall.max(1e-9)).into();
    let busy = after.busy_slot_seconds - before.busy_slot_seconds;
    // Over an interval too short to measure (back-to-back updates) the ratio is noise: leave it out.
    record["slot_utilisation"] = if interval_seconds >= 0.05 {
        (busy / (after.slots as f64 * interval_seconds)).min(1.0).into()
    } else {
        serde_json::Value::Null
    };
    record["executions"] = (after.completed - before.completed).into();
    record["executions_per_hour"] = ((after.completed - before.completed) as f64 / wall.max(1e-9) * 3600.0).into();
    record["slots"] = after.slots.into();
    record["queued_ideas"] = after.queued.into();
    record["running_ideas"] = after.running.into();
    record["sampled_groups"] = interval.sampled_groups.into();
    record["dropped_stale_groups"] = interval.dropped.into();
    record["infrastructure_failures"] = (after.infrastructure_failures - before.infrastructure_failures).into();
    let mut hist = BTreeMap::new();
    for (_, s) in &staleness {
        *hist.entry(s.to_string()).or_insert(0u64) += 1;
    }
    record["staleness"] = serde_json::to_value(&hist).expect("map serialises");
    tally.write(&mut record, groups.len(), records.len(), ctx.noise_std);
    record["policy_version"] = version.into();
    let extra = (ctx.on_step)(&StepReport { step, ideas: &records, record: &record });
    for (k, v) in extra {
        record[k] = v;
    }
    // The update counts once its groups are marked trained and its row is written (one transaction).
    store.record_step(ctx.run, step, &staleness, &record)?;
    crash_point_for_tests(step);
    metrics_out.write(&record)?;
    for r in &records {
        writeln!(ideas_out, "{}", serde_json::to_string(r).expect("records serialise"))
            .and_then(|_| ideas_out.flush())
            .map_err(|e| RolloutError::Io { path: ideas_path.to_path_buf(), message: e.to_string() })?;
    }
    let new_version = learner.version();
    if new_version.is_multiple_of(ctx.checkpoint_every) || new_version == ctx.steps {
        let score = record["reward_mean"].as_f64();
        if let Some(path) = learner.checkpoint(score)? {
            store.record_checkpoint(ctx.run, new_version, &path, score)?;
        }
    }
    Ok(())
}
