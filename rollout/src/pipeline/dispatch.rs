//! The dispatcher: a thread of its own (a single-threaded tokio runtime) that owns the execution backend. It
//! launches queued ideas as soon as a slot is free, polls for ended runs, records every transition in the run
//! store (with its own connection) *before* acting on it, retries infrastructure failures with exponential
//! backoff, and tells the learner thread which ideas are done. Keeping it apart from the learner thread means
//! slots are refilled while the learner samples or updates for seconds at a time.
//!
//! Local children are started from this long-lived thread: they are set to die with it (`PR_SET_PDEATHSIG`),
//! which is what makes a SIGKILLed trainer leave no orphaned runs behind.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ideator_envs::backend::{Backend, BackendError, Outcome, RunSpec};
use ideator_envs::{ExecResult, FailureCause};
use tokio::sync::mpsc;

use crate::cache::RecipeKeyer;
use crate::store::{IdeaRow, Store};

/// Turns an idea into a run: writes what the run reads into its folder and says what to start.
pub trait Launcher: Send {
    /// The run of `attempt` (1-based) of `idea`; writes its input files when `prepare` is true (false when
    /// re-attaching to a run that already exists).
    fn spec(&self, idea: &IdeaRow, attempt: u32, prepare: bool) -> std::io::Result<RunSpec>;

    /// The execution cache's key of the idea ([`crate::cache`]); `None` (the default): always run it.
    fn cache_key(&self, _idea: &IdeaRow) -> Option<String> {
        None
    }
}

/// Runs `ideator exec` (the binary at `program`) on the idea written to `idea.md` in the attempt's folder
/// `work_root/<idea key>/attempt-<n>/`.
#[derive(Debug, Clone)]
pub struct ExecLauncher {
    pub program: PathBuf,
    pub env: String,
    pub env_config: Option<PathBuf>,
    pub scale: String,
    pub work_root: PathBuf,
    /// The run's own limit (it reports a clean timeout); the backend kills it a little later.
    pub time_limit: Option<Duration>,
    /// Keys for the execution cache; `None` turns the cache off.
    pub keyer: Option<Arc<RecipeKeyer>>,
}

impl ExecLauncher {
    /// The backend's hard limit: the run's own limit plus more than the grace period of `ideator exec`'s watchdog
    /// (which reports a clean timeout itself at the limit plus max(5 s, 10%)).
    pub(crate) fn hard_limit(limit: Duration) -> Duration {
        limit + Duration::from_secs_f64((limit.as_secs_f64() * 0.2).clamp(15.0, 600.0))
    }
}

impl Launcher for ExecLauncher {
    fn spec(&self, idea: &IdeaRow, attempt: u32, prepare: bool) -> std::io::Result<RunSpec> {
        let work_dir = self.work_root.join(&idea.key).join(format!("attempt-{attempt}"));
        let idea_path = work_dir.join("idea.md");
        if prepare {
            std::fs::create_dir_all(&work_dir)?;
            std::fs::write(&idea_path, &idea.text)?;
        }
        let mut args = vec!["exec".to_string(), "--env".into(), self.env.clone()];
        // A reference run executes the baseline recipe: `ideator exec` without an idea.
        let idea_args: Vec<String> =
            if idea.reference { vec![] } else { vec!["--idea".into(), idea_path.display().to_string()] };
        if let Some(c) = &self.env_config {
            args.extend(["--env-config".into(), c.display().to_string()]);
        }
        args.extend(["--scale".into(), self.scale.clone(), "--seed".into(), idea.seed.to_string()]);
        args.extend(idea_args);
        args.extend(["--work-dir".into(), work_dir.join("run").display().to_string(), "--json".into()]);
        if let Some(l) = self.time_limit {
            args.extend(["--time-limit".into(), format!("{}", l.as_secs_f64())]);
        }
        Ok(RunSpec {
            key: format!("{}-a{attempt}", idea.key),
            program: self.program.clone(),
            args,
            env: vec![],
            work_dir,
            time_limit: self.time_limit.map(Self::hard_limit),
        })
    }

    fn cache_key(&self, idea: &IdeaRow) -> Option<String> {
        self.keyer.as_ref()?.key(idea)
    }
}

/// Retry policy for infrastructure failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Launches per idea at most (the first included).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles for each further one.
    pub backoff: Duration,
}

/// What the learner thread asks of the dispatcher.
#[derive(Debug)]
pub enum Command {
    /// Launch this (pending) idea.
    Run(IdeaRow),
    /// The idea was running when the trainer stopped: take it back, or launch it again.
    Reattach(IdeaRow),
    /// Abandon these ideas (their group was dropped): unqueue them, stop their runs, report nothing.
    Cancel(Vec<i64>),
    /// Stop: cancel running runs (they become pending again, to run after a resume), or wait for them.
    Shutdown { cancel: bool },
}

/// What the dispatcher tells the learner thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The idea's result is in the store.
    Done { idea: i64, group: i64 },
    /// The dispatcher cannot go on (the store failed).
    Fatal(String),
    /// Shutdown finished; no further events.
    Stopped,
}

/// Counters shared with the learner thread (for metrics).
#[derive(Debug, Clone, Default)]
pub struct DispatchStats {
    pub slots: usize,
    /// New ideas taken in (`Run` commands).
    pub received: u64,
    /// Integral of busy slots over time.
    pub busy_slot_seconds: f64,
    pub queued: usize,
    pub running: usize,
    pub launched: u64,
    pub completed: u64,
    pub infrastructure_failures: u64,
    pub gave_up: u64,
    /// Ideas whose result was copied from an execution of the same recipe at the same seed (counted in neither
    /// `launched` nor `completed`).
    pub cache_hits: u64,
}

struct Queued {
    idea: IdeaRow,
    attempt: u32,
    not_before: Instant,
}

struct InFlight {
    idea: IdeaRow,
    attempt: u32,
}

struct Dispatcher {
    store: Store,
    backend: Box<dyn Backend>,
    launcher: Box<dyn Launcher>,
    retry: RetryPolicy,
    queue: VecDeque<Queued>,
    inflight: HashMap<String, InFlight>,
    events: std::sync::mpsc::Sender<Event>,
    stats: Arc<Mutex<DispatchStats>>,
    last_tick: Instant,
    /// Cache keys being executed now (queued or running), each with the ideas waiting for its result.
    leaders: HashMap<String, Leader>,
}

/// The idea that executes a cache key, and the identical ideas (same key, same seed) waiting for its result.
struct Leader {
    idea: i64,
    followers: Vec<IdeaRow>,
}

/// A running dispatcher.
pub struct DispatcherHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub events: std::sync::mpsc::Receiver<Event>,
    pub stats: Arc<Mutex<DispatchStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DispatcherHandle {
    pub fn send(&self, c: Command) {
        // The dispatcher only goes away after Shutdown or a fatal error, which the events report.
        let _ = self.commands.send(c);
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the dispatcher thread with its own connection to the store at `store_path`.
pub fn start(
    store_path: &Path,
    backend: Box<dyn Backend>,
    launcher: Box<dyn Launcher>,
    retry: RetryPolicy,
) -> crate::Result<DispatcherHandle> {
    let store = Store::open(store_path)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = std::sync::mpsc::channel();
    let stats = Arc::new(Mutex::new(DispatchStats { slots: backend.slots(), ..Default::default() }));
    let d = Dispatcher {
        store,
        backend,
        launcher,
        retry,
        queue: VecDeque::new(),
        inflight: HashMap::new(),
        events: ev_tx,
        stats: stats.clone(),
        last_tick: Instant::now(),
        leaders: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("ideator-dispatch".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
            rt.block_on(d.run(cmd_rx));
        })
        .map_err(|e| crate::RolloutError::Backend(format!("cannot start the dispatcher thread: {e}")))?;
    Ok(DispatcherHandle { commands: cmd_tx, events: ev_rx, stats, thread: Some(thread) })
}

impl Dispatcher {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let interval = self.backend.poll_interval();
        let mut shutdown: Option<bool> = None;
        loop {
            let mut got = Vec::new();
            if shutdown.is_none() {
                tokio::select! {
                    c = commands.recv() => match c {
                        Some(c) => got.push(c),
                        None => shutdown = Some(true),
                    },
                    _ = tokio::time::sleep(interval) => {}
                }
                while let Ok(c) = commands.try_recv() {
                    got.push(c);
                }
            } else {
                tokio::time::sleep(interval).await;
            }
            let step = self.step(got, &mut shutdown);
            if let Err(e) = step {
                self.backend.cancel_all();
                let _ = self.events.send(Event::Fatal(e.to_string()));
                return;
            }
            if let Some(cancel) = shutdown {
                if cancel || self.inflight.is_empty() {
                    if let Err(e) = self.stop(cancel) {
                        let _ = self.events.send(Event::Fatal(e.to_string()));
                    }
                    let _ = self.events.send(Event::Stopped);
                    return;
                }
            }
        }
    }

    fn step(&mut self, commands: Vec<Command>, shutdown: &mut Option<bool>) -> crate::Result<()> {
        for c in commands {
            match c {
                Command::Run(idea) => {
                    self.stats.lock().expect("stats lock").received += 1;
                    self.take_in(idea)?;
                }
                Command::Reattach(idea) => {
                    if let Some(key) = &idea.recipe_key {
                        self.leaders.insert(key_at(key, idea.seed), Leader { idea: idea.id, followers: vec![] });
                    }
                    self.reattach(idea)?
                }
                Command::Cancel(ids) => {
                    self.release_cancelled(&ids)?;
                    self.queue.retain(|q| !ids.contains(&q.idea.id));
                    let keys: Vec<String> = self
                        .inflight
                        .iter()
                        .filter(|(_, r)| ids.contains(&r.idea.id))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        self.backend.cancel(&k);
                        self.inflight.remove(&k);
                    }
                }
                Command::Shutdown { cancel } => *shutdown = Some(cancel),
            }
        }
        self.account();
        for f in self.backend.poll() {
            let Some(run) = self.inflight.remove(&f.key) else {
                tracing::warn!("the backend reported an unknown run {}", f.key);
                continue;
            };
            match f.outcome {
                Outcome::Result(r) if r.cause == Some(FailureCause::Infrastructure) => {
                    self.infrastructure_failure(run.idea, run.attempt, &r.message)?
                }
                Outcome::Result(r) => self.finish(&run.idea, run.attempt, &r)?,
                Outcome::Infrastructure(msg) => self.infrastructure_failure(run.idea, run.attempt, &msg)?,
            }
        }
        if shutdown.is_none() {
            self.launch()?;
        }
        let mut s = self.stats.lock().expect("stats lock");
        s.queued = self.queue.len();
        s.running = self.inflight.len();
        Ok(())
    }

    /// Adds the time since the last tick times the busy slots to the busy integral.
    fn account(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_tick).as_secs_f64();
        self.last_tick = now;
        self.stats.lock().expect("stats lock").busy_slot_seconds += dt * self.inflight.len() as f64;
    }

    fn launch(&mut self) -> crate::Result<()> {
        let now = Instant::now();
        while self.backend.running() < self.backend.slots() {
            // The oldest idea whose backoff has passed.
            let Some(pos) = self.queue.iter().position(|q| q.not_before <= now) else { break };
            let q = self.queue.remove(pos).expect("position is valid");
            let spec = match self.launcher.spec(&q.idea, q.attempt, true) {
                Ok(s) => s,
                Err(e) => {
                    self.store.mark_launching(
                        q.idea.id,
                        q.attempt,
                        self.backend.name(),
                        Path::new(""),
                        Path::new(""),
                    )?;
                    self.infrastructure_failure(q.idea, q.attempt, &format!("cannot prepare the run: {e}"))?;
                    continue;
                }
            };
            // Committed before the launch: after a crash the store says this attempt may be running.
            self.store.mark_launching(
                q.idea.id,
                q.attempt,
                self.backend.name(),
                &spec.work_dir,
                &spec.stderr_path(),
            )?;
            match self.backend.submit(&spec) {
                Ok(job_id) => {
                    self.store.set_job_id(q.idea.id, q.attempt, &job_id)?;
                    self.stats.lock().expect("stats lock").launched += 1;
                    self.inflight.insert(spec.key, InFlight { idea: q.idea, attempt: q.attempt });
                }
                Err(BackendError::NoFreeSlot) => {
                    self.store.mark_pending(q.idea.id)?;
                    self.queue.push_front(q);
                    break;
                }
                Err(e) => self.infrastructure_failure(q.idea, q.attempt, &format!("submission failed: {e}"))?,
            }
        }
        Ok(())
    }

    fn reattach(&mut self, idea: IdeaRow) -> crate::Result<()> {
        let attempt = idea.attempts.max(1);
        let spec = self.launcher.spec(&idea, attempt, false).ok();
        let taken = match &spec {
            Some(spec) => match self.backend.reattach(spec, idea.job_id.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("cannot re-attach {}: {e}", idea.key);
                    false
                }
            },
            None => false,
        };
        match (taken, spec) {
            (true, Some(spec)) => {
                self.inflight.insert(spec.key, InFlight { idea, attempt });
            }
            _ => {
                // Its process died with the trainer before it printed a result: run it again.
                self.store.end_attempt(idea.id, attempt, "orphaned", "the trainer stopped while it ran")?;
                self.store.mark_pending(idea.id)?;
                let next = attempt + 1;
                self.queue.push_back(Queued { idea, attempt: next, not_before: Instant::now() });
            }
        }
        Ok(())
    }

    fn finish(&mut self, idea: &IdeaRow, attempt: u32, r: &ExecResult) -> crate::Result<()> {
        if self.store.finish_idea(idea.id, attempt, r)? {
            self.stats.lock().expect("stats lock").completed += 1;
            let _ = self.events.send(Event::Done { idea: idea.id, group: idea.group_id });
        }
        let Some(key) = idea.recipe_key.as_ref().map(|k| key_at(k, idea.seed)) else { return Ok(()) };
        let Some(leader) = self.leaders.remove(&key) else { return Ok(()) };
        if cacheable(r) {
            for f in leader.followers {
                self.finish_from_cache(&f, idea.id, r)?;
            }
        } else {
            // The result says nothing about the recipe (the machine failed, or the time ran out): the next
            // identical idea runs it itself.
            self.promote(key, leader.followers);
        }
        Ok(())
    }

    /// The first of `followers` becomes the key's leader and is queued; the rest wait for it.
    fn promote(&mut self, key: String, mut followers: Vec<IdeaRow>) {
        if followers.is_empty() {
            return;
        }
        let first = followers.remove(0);
        self.leaders.insert(key, Leader { idea: first.id, followers });
        let attempt = first.attempts + 1;
        self.queue.push_back(Queued { idea: first, attempt, not_before: Instant::now() });
    }

    /// Takes in a new idea: answered from the cache, attached to an identical idea that is executing, or queued.
    fn take_in(&mut self, mut idea: IdeaRow) -> crate::Result<()> {
        if idea.recipe_key.is_none() {
            if let Some(key) = self.launcher.cache_key(&idea) {
                self.store.set_recipe_key(idea.id, &key)?;
                idea.recipe_key = Some(key);
            }
        }
        if let Some(key) = idea.recipe_key.clone() {
            if let Some((source, stored)) = self.store.cached_result(&key, idea.seed)? {
                return self.finish_from_cache(&idea, source, &stored.into());
            }
            let key = key_at(&key, idea.seed);
            if let Some(leader) = self.leaders.get_mut(&key) {
                leader.followers.push(idea);
                return Ok(());
            }
            self.leaders.insert(key, Leader { idea: idea.id, followers: vec![] });
        }
        let attempt = idea.attempts + 1;
        self.queue.push_back(Queued { idea, attempt, not_before: Instant::now() });
        Ok(())
    }

    fn finish_from_cache(&mut self, idea: &IdeaRow, source: i64, r: &ExecResult) -> crate::Result<()> {
        if self.store.finish_idea_cached(idea.id, source, r)? {
            self.stats.lock().expect("stats lock").cache_hits += 1;
            let _ = self.events.send(Event::Done { idea: idea.id, group: idea.group_id });
        }
        Ok(())
    }

    /// Cancelled ideas leave the leaders' tables; a cancelled leader hands its key to its first follower that
    /// is not cancelled too.
    fn release_cancelled(&mut self, ids: &[i64]) -> crate::Result<()> {
        let keys: Vec<String> = self.leaders.keys().cloned().collect();
        for key in keys {
            let mut leader = self.leaders.remove(&key).expect("listed above");
            leader.followers.retain(|f| !ids.contains(&f.id));
            if !ids.contains(&leader.idea) {
                self.leaders.insert(key, leader);
            } else {
                self.promote(key, leader.followers);
            }
        }
        Ok(())
    }

    fn infrastructure_failure(&mut self, idea: IdeaRow, attempt: u32, msg: &str) -> crate::Result<()> {
        tracing::warn!("{} attempt {attempt}: infrastructure failure: {msg}", idea.key);
        self.stats.lock().expect("stats lock").infrastructure_failures += 1;
        self.store.end_attempt(idea.id, attempt, "infrastructure", msg)?;
        if attempt < self.retry.max_attempts {
            self.store.mark_pending(idea.id)?;
            let wait = self.retry.backoff.mul_f64(2f64.powi(attempt as i32 - 1));
            self.queue.push_back(Queued { idea, attempt: attempt + 1, not_before: Instant::now() + wait });
            Ok(())
        } else {
            self.stats.lock().expect("stats lock").gave_up += 1;
            let r = ExecResult::failed(
                FailureCause::Infrastructure,
                format!("gave up after {attempt} attempts; last failure: {msg}"),
            );
            self.finish(&idea, attempt, &r)
        }
    }

    fn stop(&mut self, cancel: bool) -> crate::Result<()> {
        // Followers are still pending in the store: a resume takes them in again.
        self.leaders.clear();
        if cancel {
            self.backend.cancel_all();
            for (_, run) in std::mem::take(&mut self.inflight) {
                // Not this idea's fault: it runs again after a resume.
                self.store.end_attempt(run.idea.id, run.attempt, "cancelled", "the trainer stopped")?;
                self.store.mark_pending(run.idea.id)?;
            }
        }
        self.account();
        Ok(())
    }
}

/// A leader's table key: the recipe key at one seed.
fn key_at(recipe_key: &str, seed: u64) -> String {
    format!("{recipe_key}@{seed}")
}

/// Whether a result may stand for every execution of its recipe at its seed: not when the machine failed or the
/// time limit cut it (another attempt, machine or limit could finish it).
fn cacheable(r: &ExecResult) -> bool {
    !matches!(r.cause, Some(FailureCause::Infrastructure | FailureCause::TimeLimit))
}
