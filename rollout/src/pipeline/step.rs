//! One update of the pipeline: score the step's complete groups (rewards shaped against their reference runs,
//! infrastructure failures left out), let the learner update, commit the step record, export it and save a
//! checkpoint when one is due. The phases are the functions of [`train_step`], in order.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ideator_envs::{FailureCause, Status};
use ideator_trainer::run_dir::MetricsWriter;
use ideator_trainer::{ScoredGroup, ScoredSample};

use super::dispatch::DispatchStats;
use super::record::{ExecutionStats, RewardStats, StepTiming};
use super::reward::within_noise;
use super::run::{Interval, PromptCache};
use super::{IdeaRecord, Learner, LearnerStats, PipelineContext, StepRecord, StepReport};
use crate::store::GroupRow;
use crate::{Result, RolloutError};

/// The human-readable exports the pipeline appends to (the store is the source of truth).
pub(crate) struct Exports {
    pub(crate) metrics: MetricsWriter,
    pub(crate) ideas: std::fs::File,
    pub(crate) ideas_path: PathBuf,
}

/// What the loop hands one update.
pub(crate) struct StepInputs<'s> {
    pub(crate) groups: &'s [GroupRow],
    pub(crate) interval: &'s Interval,
    /// Seconds since the previous update.
    pub(crate) interval_seconds: f64,
    /// Dispatcher counters at the previous update and now.
    pub(crate) dispatch: (&'s DispatchStats, &'s DispatchStats),
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
    fn stats(&self, groups: usize, ideas: usize, noise_std: Option<f64>) -> ExecutionStats {
        let n = groups.max(1) as f64;
        ExecutionStats {
            ideas,
            reference_runs: self.references,
            cache_hits: self.cache_hits,
            executed_ideas: (ideas as u64 + self.references).saturating_sub(self.cache_hits),
            excluded_ideas: self.excluded,
            frac_reward_zero_std: self.zero_std as f64 / n,
            noise_std,
            frac_reward_within_noise: noise_std.map(|_| self.within_noise as f64 / n),
            ..ExecutionStats::default()
        }
    }
}

/// The step's groups as the learner sees them, and as the logs see them.
struct ScoredStep {
    scored: Vec<ScoredGroup>,
    records: Vec<IdeaRecord>,
    /// (group id, staleness) of every group.
    staleness: Vec<(i64, u64)>,
    tally: StepTally,
}

/// One update: score, update, record, export, checkpoint.
pub(crate) fn train_step(
    learner: &mut dyn Learner,
    ctx: &mut PipelineContext,
    inputs: StepInputs,
    prompts: &mut PromptCache,
    best: &mut Option<(f64, String)>,
    exports: &mut Exports,
) -> Result<()> {
    let step = learner.version();
    let scored = score_groups(learner, ctx, inputs.groups, prompts, best)?;
    let t0 = Instant::now();
    learner.see_results(&scored.records)?;
    let stats = learner.update(&scored.scored)?;
    let update_seconds = t0.elapsed().as_secs_f64();
    let mut record = step_record(stats, step, &scored, best, &inputs, update_seconds, ctx.noise_std);
    record.epoch = learner.counts_epochs().then_some(step);
    record.extra = (ctx.on_step)(&StepReport { step, ideas: &scored.records, record: &record });
    // The update counts once its groups are marked trained and its row is written (one transaction).
    ctx.store.record_step(ctx.run, step, &scored.staleness, &record)?;
    super::crash_point_for_tests(step);
    export(exports, &record, &scored.records)?;
    save_checkpoint_if_due(learner, ctx, record.checkpoint_score())
}

/// Turns complete groups into the learner's [`ScoredGroup`]s and the logs' [`IdeaRecord`]s.
fn score_groups(
    learner: &dyn Learner,
    ctx: &PipelineContext,
    groups: &[GroupRow],
    prompts: &mut PromptCache,
    best: &mut Option<(f64, String)>,
) -> Result<ScoredStep> {
    let version = learner.version();
    let mut out = ScoredStep { scored: vec![], records: vec![], staleness: vec![], tally: StepTally::default() };
    for g in groups {
        let mut samples = Vec::with_capacity(g.ideas.len());
        for i in &g.ideas {
            let record = idea_record(learner, ctx, g, i)?;
            if record.status == Status::Ok && best.as_ref().is_none_or(|(b, _)| record.reward > *b) {
                *best = Some((record.reward, i.text.clone()));
            }
            let shaped = ctx.reward.shape(record.reward, record.baseline_reward);
            match shaped {
                Some(reward) if !record.excluded => samples.push(ScoredSample {
                    completion_ids: i.token_ids.clone(),
                    behaviour_logprobs: i.logprobs.clone(),
                    reward,
                    // The `diversity` estimator's idea identity: the canonical recipe (the execution cache's key),
                    // else the set of knobs changed.
                    cluster: cluster_of(i.recipe_key.as_deref(), record.category.as_deref()),
                }),
                _ => out.tally.excluded += 1,
            }
            out.tally.cache_hits += u64::from(record.cached);
            out.records.push(IdeaRecord { excluded: record.excluded || shaped.is_none(), ..record });
        }
        if let Some(r) = &g.reference {
            out.tally.references += 1;
            out.tally.cache_hits += u64::from(r.cached_from.is_some());
        }
        let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        out.tally.zero_std += u64::from(ideator_trainer::advantages::is_zero_std(&rewards));
        if let Some(noise) = ctx.noise_std {
            out.tally.within_noise += u64::from(within_noise(&rewards, noise));
        }
        out.staleness.push((g.id, version.saturating_sub(g.policy_version)));
        out.scored.push(ScoredGroup {
            prompt_ids: prompts.ids(ctx.store, g.prompt_id)?,
            samples,
            policy_version: g.policy_version,
            temperature: g.temperature,
        });
    }
    Ok(out)
}

/// One executed idea of group `g` as the logs see it; `excluded` says only whether the machine failed.
fn idea_record(
    learner: &dyn Learner,
    ctx: &PipelineContext,
    g: &GroupRow,
    i: &crate::store::IdeaRow,
) -> Result<IdeaRecord> {
    let r = i
        .result
        .clone()
        .ok_or_else(|| RolloutError::Config(format!("idea {} of a complete group has no result", i.key)))?;
    let step = learner.version();
    Ok(IdeaRecord {
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
        message: r.message,
        metrics: r.metrics,
        seconds: r.seconds,
        attempts: i.attempts,
        category: (ctx.categorize)(&i.text),
        seed: i.seed,
        baseline_reward: g.reference_reward(),
        cached: i.cached_from.is_some(),
        // The machine failed, not the idea (after the retries): no signal either way.
        excluded: r.cause == Some(FailureCause::Infrastructure),
    })
}

/// An idea's identity for novelty within its group: its canonical recipe when it implements, else the knobs it
/// changes; `None` when neither is known. (SipHash with fixed keys: deterministic within a build, and only
/// compared within a step.)
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

/// The step's record: the pipeline's reward, execution and timing figures around the learner's statistics.
fn step_record(
    learner: LearnerStats,
    step: u64,
    scored: &ScoredStep,
    best: &Option<(f64, String)>,
    inputs: &StepInputs,
    update_seconds: f64,
    noise_std: Option<f64>,
) -> StepRecord {
    let records = &scored.records;
    let n = records.len().max(1) as f64;
    let trained: Vec<f64> = scored.scored.iter().flat_map(|g| g.rewards()).collect();
    let mut failures = BTreeMap::new();
    for c in records.iter().filter_map(|r| r.cause.as_ref()) {
        *failures.entry(c.clone()).or_insert(0usize) += 1;
    }
    let rewards = RewardStats {
        execution_rate: records.iter().filter(|r| r.status == Status::Ok).count() as f64 / n,
        best_reward_so_far: best.as_ref().map(|b| b.0),
        idea_chars_mean: records.iter().map(|r| r.text.chars().count()).sum::<usize>() as f64 / n,
        failures,
        ..RewardStats::of(&trained)
    };
    let mut staleness = BTreeMap::new();
    for (_, s) in &scored.staleness {
        *staleness.entry(s.to_string()).or_insert(0u64) += 1;
    }
    let tally = scored.tally.stats(inputs.groups.len(), records.len(), noise_std);
    StepRecord {
        step,
        epoch: None,
        policy_version: step,
        rewards,
        executions: with_dispatch(tally, inputs, update_seconds),
        timing: timing(inputs, update_seconds),
        staleness,
        learner,
        extra: Default::default(),
        missing: Default::default(),
    }
}

/// The step's tally completed with what the dispatcher and the sampler did since the previous update.
fn with_dispatch(tally: ExecutionStats, inputs: &StepInputs, update_seconds: f64) -> ExecutionStats {
    let (before, after) = inputs.dispatch;
    let executions = after.completed - before.completed;
    let wall = inputs.interval_seconds + update_seconds;
    ExecutionStats {
        executions,
        executions_per_hour: executions as f64 / wall.max(1e-9) * 3600.0,
        slots: after.slots,
        queued_ideas: after.queued,
        running_ideas: after.running,
        sampled_groups: inputs.interval.sampled_groups,
        dropped_stale_groups: inputs.interval.dropped,
        infrastructure_failures: after.infrastructure_failures - before.infrastructure_failures,
        ..tally
    }
}

/// Where the time went since the previous update, and how busy the slots were.
fn timing(inputs: &StepInputs, update_seconds: f64) -> StepTiming {
    let (before, after) = inputs.dispatch;
    let interval = inputs.interval;
    let wall = inputs.interval_seconds + update_seconds;
    let busy = after.busy_slot_seconds - before.busy_slot_seconds;
    StepTiming {
        sample_seconds: interval.sample_seconds,
        wait_seconds: interval.wait_seconds,
        update_seconds,
        step_seconds: wall,
        learner_idle_frac: interval.wait_seconds / wall.max(1e-9),
        // Over an interval too short to measure (back-to-back updates) the ratio is noise: leave it out.
        slot_utilisation: (inputs.interval_seconds >= 0.05)
            .then(|| (busy / (after.slots as f64 * inputs.interval_seconds)).min(1.0)),
    }
}

/// Appends the step to `metrics.jsonl` and its ideas to `ideas.jsonl`.
fn export(exports: &mut Exports, record: &StepRecord, ideas: &[IdeaRecord]) -> Result<()> {
    exports.metrics.write(&record.to_json())?;
    for r in ideas {
        writeln!(exports.ideas, "{}", serde_json::to_string(r).expect("records serialise"))
            .and_then(|_| exports.ideas.flush())
            .map_err(|e| RolloutError::Io { path: exports.ideas_path.clone(), message: e.to_string() })?;
    }
    Ok(())
}

/// Saves a checkpoint every `checkpoint_every` updates and after the last one, scored for keeping the best.
fn save_checkpoint_if_due(learner: &mut dyn Learner, ctx: &PipelineContext, score: Option<f64>) -> Result<()> {
    let version = learner.version();
    if version.is_multiple_of(ctx.checkpoint_every) || version == ctx.steps {
        if let Some(path) = learner.checkpoint(score)? {
            ctx.store.record_checkpoint(ctx.run, version, &path, score)?;
        }
    }
    Ok(())
}
