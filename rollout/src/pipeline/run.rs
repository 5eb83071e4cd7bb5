//! The pipeline loop as a state struct with one method per phase, read top to bottom in [`Pipeline::run_loop`]:
//! take results in, drop stale groups, then train, sample or wait; [`Pipeline::shut_down`] and
//! [`Pipeline::finish`] close the run. What one update does with its groups is in [`super::step`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ideator_envs::backend::Backend;
use ideator_envs::Status;
use ideator_trainer::run_dir::{truncate_metrics, MetricsWriter};

use super::dispatch::{self, Command, DispatchStats, DispatcherHandle, Event, Launcher, RetryPolicy};
use super::frozen::BASELINE_TEXT;
use super::reward::env_seed;
use super::step::{Exports, StepInputs};
use super::{mix, Learner, OnInterrupt, PipelineContext, PipelineSummary, SampledGroup};
use crate::store::{GroupRow, GroupStatus, IdeaStatus, NewGroup, NewIdea, RunStatus, Store};
use crate::{Result, RolloutError};

/// What the loop does next.
enum Action {
    Train,
    Sample,
    Wait,
}

/// Time split and counters between two updates.
#[derive(Default)]
pub(crate) struct Interval {
    pub(crate) sample_seconds: f64,
    pub(crate) wait_seconds: f64,
    pub(crate) sampled_groups: usize,
    pub(crate) dropped: u64,
}

/// Prompts interned in the store, by id (for training) and by token ids (to intern each once).
#[derive(Default)]
pub(crate) struct PromptCache {
    by_id: HashMap<i64, Vec<u32>>,
    by_ids: HashMap<Vec<u32>, i64>,
}

impl PromptCache {
    /// The token ids of prompt `id`, read from the store the first time.
    pub(crate) fn ids(&mut self, store: &Store, id: i64) -> Result<Vec<u32>> {
        if let Some(p) = self.by_id.get(&id) {
            return Ok(p.clone());
        }
        let p = store.prompt_ids(id)?;
        self.by_id.insert(id, p.clone());
        Ok(p)
    }

    fn intern(&mut self, store: &Store, run: i64, group: &SampledGroup) -> Result<i64> {
        if let Some(&id) = self.by_ids.get(&group.prompt_ids) {
            return Ok(id);
        }
        let id = store.intern_prompt(run, &group.prompt_text, &group.prompt_ids)?;
        self.by_ids.insert(group.prompt_ids.clone(), id);
        self.by_id.insert(id, group.prompt_ids.clone());
        Ok(id)
    }
}

/// The running pipeline: the learner, the dispatcher and the groups between them.
pub(crate) struct Pipeline<'a, 'c> {
    learner: &'a mut dyn Learner,
    ctx: &'a mut PipelineContext<'c>,
    dispatcher: DispatcherHandle,
    /// Complete groups waiting for the learner, in sampling order.
    ready: VecDeque<GroupRow>,
    /// Groups with executions still out, and how many.
    executing: HashMap<i64, (GroupRow, usize)>,
    prompts: PromptCache,
    exports: Exports,
    next_seq: u64,
    /// The best successful idea so far (reward, text).
    best: Option<(f64, String)>,
    interval: Interval,
    t_interval: Instant,
    /// Dispatcher counters at the previous update.
    last_stats: DispatchStats,
    /// Ideas handed to the dispatcher (compared with what it has taken in, for its true queue depth).
    sent: u64,
    total_wait: f64,
    dropped_total: u64,
    executions_at_start: Option<u64>,
    start_version: u64,
    t_run: Instant,
}

impl<'a, 'c> Pipeline<'a, 'c> {
    /// Rewinds the store to the learner's version, opens the exports, starts the dispatcher and hands it the
    /// unfinished executions of an earlier attempt.
    pub(crate) fn open(
        learner: &'a mut dyn Learner,
        ctx: &'a mut PipelineContext<'c>,
        backend: Box<dyn Backend>,
        launcher: Box<dyn Launcher>,
    ) -> Result<Self> {
        ctx.cfg.validate(ctx.groups_per_step)?;
        let (store, run) = (ctx.store, ctx.run);
        let t_run = Instant::now();
        let start_version = learner.version();
        // Updates after the checkpoint we resumed from are lost: forget them (their groups train again).
        store.rewind_to(run, start_version)?;
        store.record_policy_version(run, start_version)?;
        let exports = open_exports(ctx.run_dir, start_version)?;
        let best = best_trained_idea(store, run)?;
        let retry = RetryPolicy {
            max_attempts: ctx.cfg.max_attempts,
            backoff: Duration::from_secs_f64(ctx.cfg.retry_backoff_s),
        };
        let dispatcher = dispatch::start(store.path(), backend, launcher, retry)?;
        let last_stats = dispatcher.stats.lock().expect("stats").clone();
        let mut pipeline = Pipeline {
            learner,
            next_seq: store.next_group_seq(run)?,
            ctx,
            dispatcher,
            ready: VecDeque::new(),
            executing: HashMap::new(),
            prompts: PromptCache::default(),
            exports,
            best,
            interval: Interval::default(),
            t_interval: Instant::now(),
            last_stats,
            sent: 0,
            total_wait: 0.0,
            dropped_total: 0,
            executions_at_start: None,
            start_version,
            t_run,
        };
        pipeline.resume_groups()?;
        Ok(pipeline)
    }

    /// Complete groups wait for the learner; executing ones get their pending ideas launched and their running
    /// ones re-attached.
    fn resume_groups(&mut self) -> Result<()> {
        let (store, run) = (self.ctx.store, self.ctx.run);
        self.ready = store.groups_with_status(run, &[GroupStatus::Complete])?.into();
        for g in store.groups_with_status(run, &[GroupStatus::Executing])? {
            let mut remaining = 0;
            for i in g.executions() {
                match i.status {
                    IdeaStatus::Pending => self.dispatcher.send(Command::Run(i.clone())),
                    IdeaStatus::Running => self.dispatcher.send(Command::Reattach(i.clone())),
                    _ => continue,
                }
                remaining += 1;
            }
            if remaining == 0 {
                // Every idea is done but the group was not marked (cannot happen with one transaction; be safe).
                self.ready.push_back(g);
            } else {
                self.executing.insert(g.id, (g, remaining));
            }
        }
        if !self.ready.is_empty() || !self.executing.is_empty() {
            tracing::info!(
                "resuming at version {}: {} complete groups to train, {} groups still executing",
                self.start_version,
                self.ready.len(),
                self.executing.len()
            );
        }
        Ok(())
    }

    /// Runs until the learner has made every update (`Ok(false)`) or a stop was asked for (`Ok(true)`).
    pub(crate) fn run_loop(&mut self) -> Result<bool> {
        loop {
            self.take_results()?;
            self.drop_stale_groups()?;
            if self.learner.version() >= self.ctx.steps {
                return Ok(false);
            }
            if self.ctx.stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
            match self.next_action() {
                Action::Train => self.train()?,
                Action::Sample => self.sample()?,
                Action::Wait => self.wait_for_result()?,
            }
        }
    }

    /// Phase 1: take in the results that arrived since the last turn.
    fn take_results(&mut self) -> Result<()> {
        let got: Vec<Event> = self.dispatcher.events.try_iter().collect();
        for ev in got {
            self.handle_event(ev)?;
        }
        if self.executions_at_start.is_none() {
            self.executions_at_start = Some(self.dispatcher.stats.lock().expect("stats").completed);
        }
        Ok(())
    }

    /// Phase 2: drop groups too stale to train on; stop the runs of executing groups that already are.
    fn drop_stale_groups(&mut self) -> Result<()> {
        let version = self.learner.version();
        let max = self.ctx.cfg.max_staleness;
        let stale = |g: &GroupRow| version.saturating_sub(g.policy_version) > max;
        let (dropped, kept): (Vec<GroupRow>, Vec<GroupRow>) = self.ready.drain(..).partition(|g| stale(g));
        self.ready = kept.into();
        for g in dropped {
            tracing::info!("dropping group {} (sampled at version {}, now {version})", g.seq, g.policy_version);
            self.ctx.store.drop_group(g.id, version - g.policy_version)?;
            self.count_dropped();
        }
        let hopeless: Vec<i64> = self.executing.values().filter(|(g, _)| stale(g)).map(|(g, _)| g.id).collect();
        for id in hopeless {
            let (g, _) = self.executing.remove(&id).expect("listed above");
            tracing::info!("dropping group {} while it executes (sampled at version {})", g.seq, g.policy_version);
            // Recorded first, so that a result arriving meanwhile is refused by the store.
            self.ctx.store.drop_unfinished_group(g.id, version - g.policy_version)?;
            self.dispatcher.send(Command::Cancel(g.ideas.iter().map(|i| i.id).collect()));
            self.count_dropped();
        }
        Ok(())
    }

    fn count_dropped(&mut self) {
        self.interval.dropped += 1;
        self.dropped_total += 1;
    }

    /// Phase 3: sampling comes first while the backend's queue holds less than one idea per slot (so slots never
    /// starve during a run of back-to-back updates); otherwise a step's worth of complete groups is trained.
    fn next_action(&self) -> Action {
        let version = self.learner.version();
        let open = self.ready.len() + self.executing.len();
        let needed = (self.ctx.steps - version) as usize * self.ctx.groups_per_step;
        let can_sample = open < self.ctx.cfg.inflight(self.ctx.groups_per_step) && open < needed;
        let starving = {
            let s = self.dispatcher.stats.lock().expect("stats");
            (s.queued as u64 + self.sent.saturating_sub(s.received)) < s.slots as u64
        };
        if self.ready.len() >= self.ctx.groups_per_step && !(can_sample && starving) {
            Action::Train
        } else if can_sample {
            Action::Sample
        } else {
            Action::Wait
        }
    }

    /// Phase 4a: one update from the oldest complete groups.
    fn train(&mut self) -> Result<()> {
        let groups: Vec<GroupRow> = self.ready.drain(..self.ctx.groups_per_step).collect();
        let stats_now = self.dispatcher.stats.lock().expect("stats").clone();
        let inputs = StepInputs {
            groups: &groups,
            interval: &self.interval,
            interval_seconds: self.t_interval.elapsed().as_secs_f64(),
            dispatch: (&self.last_stats, &stats_now),
        };
        super::step::train_step(
            &mut *self.learner,
            self.ctx,
            inputs,
            &mut self.prompts,
            &mut self.best,
            &mut self.exports,
        )?;
        self.total_wait += self.interval.wait_seconds;
        self.interval = Interval::default();
        self.t_interval = Instant::now();
        self.last_stats = self.dispatcher.stats.lock().expect("stats").clone();
        Ok(())
    }

    /// Phase 4b: sample one group ahead, store it (with its reference run) and launch its executions.
    fn sample(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let seq = self.next_seq;
        let sampled = self.learner.sample_group(mix(self.ctx.seed, seq))?;
        let sample_seconds = t0.elapsed().as_secs_f64();
        self.interval.sample_seconds += sample_seconds;
        self.interval.sampled_groups += 1;
        let new = NewGroup {
            seq,
            prompt_id: self.prompts.intern(self.ctx.store, self.ctx.run, &sampled)?,
            policy_version: self.learner.version(),
            sample_seconds,
            temperature: sampled.temperature,
            ideas: self.new_ideas(sampled, seq),
        };
        // Stored before any of its ideas is launched.
        let row = self.ctx.store.insert_group(self.ctx.run, &new)?;
        self.next_seq += 1;
        for i in row.executions() {
            self.dispatcher.send(Command::Run(i.clone()));
            self.sent += 1;
        }
        let n = row.executions().count();
        self.executing.insert(row.id, (row, n));
        Ok(())
    }

    /// The group's ideas at its environment seed, plus the reference run when the context asks for one.
    fn new_ideas(&self, sampled: SampledGroup, seq: u64) -> Vec<NewIdea> {
        let ctx = &self.ctx;
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
        ideas
    }

    /// Phase 4c: nothing to do but wait for a result (the learner is idle).
    fn wait_for_result(&mut self) -> Result<()> {
        let t0 = Instant::now();
        match self.dispatcher.events.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => self.handle_event(ev)?,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(RolloutError::Backend("the dispatcher stopped unexpectedly".into()))
            }
        }
        self.interval.wait_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// A finished execution: when it was its group's last, the group joins the ready queue in sampling order.
    fn handle_event(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Done { group, .. } => {
                let Some((_, remaining)) = self.executing.get_mut(&group) else { return Ok(()) };
                *remaining -= 1;
                if *remaining == 0 {
                    self.executing.remove(&group);
                    // Re-read: the group now carries every result.
                    let g = self.ctx.store.group(group)?;
                    let pos = self.ready.iter().position(|r| r.seq > g.seq).unwrap_or(self.ready.len());
                    self.ready.insert(pos, g);
                }
                Ok(())
            }
            Event::Fatal(e) => Err(RolloutError::Backend(e)),
            Event::Stopped => Err(RolloutError::Backend("the dispatcher stopped unexpectedly".into())),
        }
    }

    /// Stops the dispatcher: at the end of training leftover runs are useless; on an interrupt they are
    /// cancelled or awaited (`[pipeline] on_interrupt`); after an error they are cancelled and not recorded.
    pub(crate) fn shut_down(&mut self, interrupted: bool, failed: bool) -> Result<DispatchStats> {
        let cancel = !interrupted || self.ctx.cfg.on_interrupt == OnInterrupt::Cancel || failed;
        self.dispatcher.send(Command::Shutdown { cancel });
        loop {
            match self.dispatcher.events.recv() {
                Ok(Event::Stopped) | Err(_) => break,
                Ok(Event::Fatal(e)) => tracing::error!("dispatcher: {e}"),
                Ok(ev @ Event::Done { .. }) if !failed => self.handle_event(ev)?,
                Ok(Event::Done { .. }) => {}
            }
        }
        self.dispatcher.join();
        Ok(self.dispatcher.stats.lock().expect("stats").clone())
    }

    /// Marks the run done (or interrupted, with a checkpoint of where it stopped) and sums it up.
    pub(crate) fn finish(self, interrupted: bool, stats: DispatchStats) -> Result<PipelineSummary> {
        let (store, run) = (self.ctx.store, self.ctx.run);
        if interrupted {
            let version = self.learner.version();
            if version > self.start_version || !store.checkpoints(run)?.iter().any(|c| c.step == version) {
                if let Some(path) = self.learner.checkpoint(None)? {
                    store.record_checkpoint(run, version, &path, None)?;
                }
            }
            store.set_run_status(run, RunStatus::Interrupted)?;
        } else {
            // Training is done: what is still unfinished will never be needed.
            store.cancel_unfinished(run)?;
            store.set_run_status(run, RunStatus::Done)?;
        }
        let wall = self.t_run.elapsed().as_secs_f64();
        let executions = stats.completed - self.executions_at_start.unwrap_or(0);
        Ok(PipelineSummary {
            steps: self.learner.version(),
            interrupted,
            best_reward: self.best.as_ref().map(|b| b.0),
            best_idea: self.best.map(|b| b.1),
            executions,
            cache_hits: stats.cache_hits,
            dropped_stale_groups: self.dropped_total,
            wall_seconds: wall,
            slot_utilisation: stats.busy_slot_seconds / (stats.slots as f64 * wall).max(1e-9),
            learner_idle_frac: self.total_wait / wall.max(1e-9),
            executions_per_hour: executions as f64 / wall.max(1e-9) * 3600.0,
            staleness_histogram: store.staleness_histogram(run)?,
        })
    }
}

/// `metrics.jsonl` and `ideas.jsonl` (exports; the store is the source of truth), cut back to `version` updates.
fn open_exports(run_dir: &std::path::Path, version: u64) -> Result<Exports> {
    let layout = ideator_trainer::run_dir::RunDir::at(run_dir);
    let (metrics_path, ideas_path) = (layout.metrics_path(), layout.ideas_path());
    truncate_metrics(&metrics_path, version)?;
    truncate_metrics(&ideas_path, version)?;
    let metrics = MetricsWriter::open(&metrics_path)?;
    let ideas = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ideas_path)
        .map_err(|e| RolloutError::Io { path: ideas_path.clone(), message: e.to_string() })?;
    Ok(Exports { metrics, ideas, ideas_path })
}

/// The best successful idea among the groups already trained (a resumed run keeps its best-so-far).
fn best_trained_idea(store: &Store, run: i64) -> Result<Option<(f64, String)>> {
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
    Ok(best)
}
