//! The asynchronous pipeline with a stand-in learner (no model) and the real local backend running small shell
//! programs: every idea executed exactly once, staleness bounds, infrastructure retries, interruption and resume.

use ideator_rollout::pipeline::reward::{RewardMode, SeedScope};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ideator_envs::backend::{Backend, LocalBackend, LocalConfig, RunSpec, SlurmBackend, SlurmConfig};
use ideator_rollout::pipeline::dispatch::Launcher;
use ideator_rollout::pipeline::{
    run_pipeline, Learner, LearnerStats, OnInterrupt, PipelineConfig, PipelineContext, PipelineSummary, SampledGroup,
    SampledIdea,
};
use ideator_rollout::store::{GroupStatus, IdeaRow, IdeaStatus, RunKind, Store};
use ideator_rollout::Result;
use ideator_trainer::ScoredGroup;

/// Samples ideas whose text is the reward they will get; "updates" by counting; checkpoints its version to a file.
struct Counter {
    version: u64,
    group_size: usize,
    trained: Vec<Vec<f64>>,
    versions_trained: Vec<u64>,
    ckpt: PathBuf,
}

impl Counter {
    fn new(dir: &Path, group_size: usize) -> Counter {
        let ckpt = dir.join("ckpt.txt");
        let version = std::fs::read_to_string(&ckpt).map(|s| s.trim().parse().unwrap()).unwrap_or(0);
        Counter { version, group_size, trained: vec![], versions_trained: vec![], ckpt }
    }
}

impl Learner for Counter {
    fn version(&self) -> u64 {
        self.version
    }
    fn sample_group(&mut self, seed: u64) -> Result<SampledGroup> {
        Ok(SampledGroup {
            temperature: 1.0,
            prompt_text: "p".into(),
            prompt_ids: vec![1, 2],
            ideas: (0..self.group_size)
                .map(|i| {
                    let reward = ((seed >> (8 * i)) & 0xff) as f64 / 255.0;
                    SampledIdea {
                        text: format!("{reward}"),
                        token_ids: vec![i as u32 + 3],
                        logprobs: vec![-0.5],
                        finish_reason: "stop".into(),
                    }
                })
                .collect(),
        })
    }
    fn update(&mut self, groups: &[ScoredGroup]) -> Result<LearnerStats> {
        self.trained.push(groups.iter().flat_map(|g| g.rewards()).collect());
        self.versions_trained.extend(groups.iter().map(|g| g.policy_version));
        self.version += 1;
        Ok(LearnerStats::default())
    }
    fn checkpoint(&mut self, _score: Option<f64>) -> Result<Option<PathBuf>> {
        std::fs::write(&self.ckpt, self.version.to_string()).unwrap();
        Ok(Some(self.ckpt.clone()))
    }
}

/// Runs `sh`: sleeps, logs the idea's key to `log` (one line per completed execution), prints the reward written
/// in the idea. Ideas whose key is in `flaky` fail with an infrastructure cause on their first attempt.
struct ShLauncher {
    root: PathBuf,
    log: PathBuf,
    sleep: f64,
    flaky: Vec<String>,
    always_broken: bool,
}

impl Launcher for ShLauncher {
    fn spec(&self, idea: &IdeaRow, attempt: u32, prepare: bool) -> std::io::Result<RunSpec> {
        let work_dir = self.root.join(&idea.key).join(format!("attempt-{attempt}"));
        if prepare {
            std::fs::create_dir_all(&work_dir)?;
        }
        let infra = self.always_broken || (attempt == 1 && self.flaky.contains(&idea.key));
        let script = if infra {
            r#"printf '{"status":"failed","cause":"infrastructure","message":"disk full"}\n'"#.to_string()
        } else {
            format!(
                r#"sleep {sleep}; echo {key} >> {log}; printf '{{"status":"ok","reward":{r},"metrics":{{}},"cause":null,"message":"ok","seconds":{sleep}}}\n'"#,
                key = idea.key,
                log = self.log.display(),
                sleep = self.sleep,
                r = idea.text
            )
        };
        Ok(RunSpec {
            key: format!("{}-a{attempt}", idea.key),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            env: vec![],
            work_dir,
            time_limit: Some(Duration::from_secs(60)),
        })
    }
}

struct Setup {
    dir: tempfile::TempDir,
    store: Store,
    run: i64,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let run = store.open_run("test", RunKind::Rl, "sh", "tiny", 7).unwrap().id;
    Setup { dir, store, run }
}

fn launcher(s: &Setup, sleep: f64) -> ShLauncher {
    ShLauncher {
        root: s.dir.path().join("work"),
        log: s.dir.path().join("executions.log"),
        sleep,
        flaky: vec![],
        always_broken: false,
    }
}

/// How long a test pipeline runs: its steps, the groups each trains, and the step after which it is stopped.
#[derive(Clone, Copy)]
struct Steps {
    steps: u64,
    groups_per_step: usize,
    stop_after: Option<u64>,
}

fn go(
    s: &Setup,
    learner: &mut Counter,
    cfg: PipelineConfig,
    run: Steps,
    slots: usize,
    l: ShLauncher,
) -> PipelineSummary {
    let backend = LocalBackend::new(&LocalConfig { slots, threads_per_run: Some(1), ..Default::default() }).unwrap();
    go_on(s, learner, cfg, run, Box::new(backend), l)
}

fn go_on(
    s: &Setup,
    learner: &mut Counter,
    cfg: PipelineConfig,
    run: Steps,
    backend: Box<dyn Backend>,
    l: ShLauncher,
) -> PipelineSummary {
    let Steps { steps, groups_per_step, stop_after } = run;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let mut on_step = move |r: &ideator_rollout::pipeline::StepReport| {
        if stop_after.is_some_and(|n| r.step + 1 >= n) {
            stop2.store(true, Ordering::SeqCst);
        }
        serde_json::Map::new()
    };
    let categorize = |_: &str| None;
    let mut ctx = PipelineContext {
        store: &s.store,
        run: s.run,
        run_dir: s.dir.path(),
        cfg,
        steps,
        groups_per_step,
        checkpoint_every: 1000,
        seed: 11,
        seed_scope: SeedScope::Group,
        reference: false,
        reward: RewardMode::Raw,
        noise_std: None,
        stop,
        categorize: &categorize,
        on_step: &mut on_step,
    };
    run_pipeline(learner, &mut ctx, backend, Box::new(l)).unwrap()
}

fn executions(s: &Setup) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in std::fs::read_to_string(s.dir.path().join("executions.log")).unwrap_or_default().lines() {
        *m.entry(line.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn every_idea_runs_once_and_every_step_trains_fresh_enough_groups() {
    let s = setup();
    let mut learner = Counter::new(s.dir.path(), 3);
    let cfg = PipelineConfig { max_inflight_groups: 4, max_staleness: 2, ..Default::default() };
    let summary =
        go(&s, &mut learner, cfg, Steps { steps: 4, groups_per_step: 2, stop_after: None }, 3, launcher(&s, 0.05));
    assert_eq!(summary.steps, 4);
    assert!(!summary.interrupted);
    assert_eq!(learner.trained.len(), 4);
    assert!(learner.trained.iter().all(|r| r.len() == 6), "two groups of three per step");
    let steps = s.store.steps(s.run).unwrap();
    assert_eq!(steps.len(), 4);
    for st in &steps {
        let t = &st.record.timing;
        assert!(t.sample_seconds >= 0.0 && t.wait_seconds >= 0.0 && t.update_seconds >= 0.0, "{t:?}");
        assert!(t.step_seconds >= t.update_seconds && (0.0..=1.0).contains(&t.learner_idle_frac), "{t:?}");
        assert!(st.record.executions.executions_per_hour >= 0.0);
        // None only when the step followed the previous one too closely to measure.
        assert!(t.slot_utilisation.is_none_or(|u| (0.0..=1.0).contains(&u)), "{t:?}");
    }
    // Trained ideas carry the rewards their text promised, and each ran exactly once.
    let runs = executions(&s);
    for step in 0..4 {
        let ideas = s.store.ideas_of_step(s.run, step).unwrap();
        assert_eq!(ideas.len(), 6);
        let rewards: Vec<f64> = ideas.iter().map(|i| i.result.as_ref().unwrap().reward).collect();
        let promised: Vec<f64> = ideas.iter().map(|i| i.text.parse().unwrap()).collect();
        // (serde_json's float parsing may differ from Rust's in the last bit.)
        assert!(rewards.iter().zip(&promised).all(|(a, b)| (a - b).abs() < 1e-12), "{rewards:?} vs {promised:?}");
        assert_eq!(rewards, learner.trained[step as usize]);
        for i in &ideas {
            assert_eq!(runs.get(&i.key), Some(&1), "{} ran {:?} times", i.key, runs.get(&i.key));
        }
    }
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    for &staleness in s.store.staleness_histogram(s.run).unwrap().keys() {
        assert!(staleness <= 2);
    }
    assert!(learner.versions_trained.iter().enumerate().all(|(i, &v)| (i / 2) as u64 <= v + 2));
    // Sampling ran ahead: more groups were sampled than trained, and the leftovers are cancelled at the end.
    let counts = s.store.group_status_counts(s.run).unwrap();
    assert_eq!(counts.get("trained"), Some(&8));
    assert_eq!(s.store.idea_status_counts(s.run).unwrap().get("running"), None, "nothing left running");
    let metrics = std::fs::read_to_string(s.dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
    assert_eq!(std::fs::read_to_string(s.dir.path().join("ideas.jsonl")).unwrap().lines().count(), 24);
}

#[test]
fn groups_older_than_the_staleness_bound_are_dropped_and_counted() {
    let s = setup();
    let mut learner = Counter::new(s.dir.path(), 2);
    // Two groups are sampled at version 0 before any result is back; after the first update the second is one
    // version old, over the bound of 0.
    let cfg = PipelineConfig { max_inflight_groups: 2, max_staleness: 0, ..Default::default() };
    let summary =
        go(&s, &mut learner, cfg, Steps { steps: 3, groups_per_step: 1, stop_after: None }, 4, launcher(&s, 0.05));
    assert_eq!(summary.steps, 3);
    assert!(summary.dropped_stale_groups >= 1, "{summary:?}");
    assert_eq!(
        s.store.group_status_counts(s.run).unwrap().get("dropped").copied().unwrap_or(0),
        summary.dropped_stale_groups
    );
    assert!(learner.versions_trained.iter().enumerate().all(|(step, &v)| v == step as u64), "on-policy only");
    assert_eq!(s.store.staleness_histogram(s.run).unwrap(), BTreeMap::from([(0, 3)]));
}

#[test]
fn infrastructure_failures_are_retried_and_idea_results_are_not() {
    let s = setup();
    let mut learner = Counter::new(s.dir.path(), 2);
    let mut l = launcher(&s, 0.01);
    l.flaky = vec!["g000000-i1".into()];
    let cfg = PipelineConfig { max_inflight_groups: 1, retry_backoff_s: 0.05, max_attempts: 3, ..Default::default() };
    go(&s, &mut learner, cfg, Steps { steps: 1, groups_per_step: 1, stop_after: None }, 2, l);
    let ideas = s.store.ideas_of_step(s.run, 0).unwrap();
    let flaky = ideas.iter().find(|i| i.key == "g000000-i1").unwrap();
    assert_eq!(flaky.attempts, 2);
    assert!(flaky.result.as_ref().unwrap().status == ideator_envs::Status::Ok);
    let attempts = s.store.attempts(flaky.id).unwrap();
    assert_eq!(attempts[0].outcome.as_deref(), Some("infrastructure"));
    assert_eq!(attempts[1].outcome.as_deref(), Some("result"));
    assert_eq!(ideas.iter().find(|i| i.key == "g000000-i0").unwrap().attempts, 1);

    // Past the limit the idea fails for good, with the infrastructure as its cause.
    let s = setup();
    let mut learner = Counter::new(s.dir.path(), 1);
    let mut l = launcher(&s, 0.01);
    l.always_broken = true;
    let cfg = PipelineConfig { max_inflight_groups: 1, retry_backoff_s: 0.01, max_attempts: 2, ..Default::default() };
    go(&s, &mut learner, cfg, Steps { steps: 1, groups_per_step: 1, stop_after: None }, 1, l);
    let idea = &s.store.ideas_of_step(s.run, 0).unwrap()[0];
    assert_eq!(idea.attempts, 2);
    let r = idea.result.as_ref().unwrap();
    assert_eq!(r.cause, Some(ideator_envs::FailureCause::Infrastructure));
    assert_eq!(r.reward, 0.0);
    // ... and is left out of the update: a dead node is no signal about the idea.
    assert_eq!(learner.trained, vec![Vec::<f64>::new()], "the learner saw no sample of the failed idea");
    let step = &s.store.steps(s.run).unwrap()[0].record;
    assert_eq!(step.executions.excluded_ideas, 1);
}

#[test]
fn only_the_infrastructure_failures_of_a_group_are_left_out() {
    let s = setup();
    let mut learner = Counter::new(s.dir.path(), 3);
    let mut l = launcher(&s, 0.01);
    // Idea 1 fails on the infrastructure on its only attempt; ideas 0 and 2 run.
    l.flaky = vec!["g000000-i1".into()];
    let cfg = PipelineConfig { max_inflight_groups: 1, retry_backoff_s: 0.01, max_attempts: 1, ..Default::default() };
    go(&s, &mut learner, cfg, Steps { steps: 1, groups_per_step: 1, stop_after: None }, 2, l);
    let ideas = s.store.ideas_of_step(s.run, 0).unwrap();
    let kept: Vec<f64> = [0, 2].iter().map(|&i| ideas[i].result.as_ref().unwrap().reward).collect();
    assert_eq!(learner.trained, vec![kept]);
    assert_eq!(s.store.steps(s.run).unwrap()[0].record.executions.excluded_ideas, 1);
}

#[test]
fn an_interrupted_run_resumes_without_running_anything_twice() {
    let s = setup();
    let cfg = PipelineConfig {
        max_inflight_groups: 4,
        max_staleness: 3,
        on_interrupt: OnInterrupt::Cancel,
        ..Default::default()
    };
    let mut first = Counter::new(s.dir.path(), 3);
    let summary = go(
        &s,
        &mut first,
        cfg.clone(),
        Steps { steps: 6, groups_per_step: 1, stop_after: Some(2) },
        2,
        launcher(&s, 0.2),
    );
    assert!(summary.interrupted);
    assert_eq!(summary.steps, 2);
    assert_eq!(s.store.find_run("test").unwrap().unwrap().status, ideator_rollout::store::RunStatus::Interrupted);
    assert!(s.store.checkpoints(s.run).unwrap().iter().any(|c| c.step == 2));
    // Ideas in flight at the interrupt went back to pending.
    assert_eq!(s.store.idea_status_counts(s.run).unwrap().get("running"), None);

    let mut second = Counter::new(s.dir.path(), 3);
    assert_eq!(second.version(), 2, "restored from its checkpoint");
    let summary =
        go(&s, &mut second, cfg, Steps { steps: 6, groups_per_step: 1, stop_after: None }, 2, launcher(&s, 0.05));
    assert_eq!(summary.steps, 6);
    let runs = executions(&s);
    let trained: Vec<IdeaRow> = (0..6).flat_map(|st| s.store.ideas_of_step(s.run, st).unwrap()).collect();
    assert_eq!(trained.len(), 18);
    for i in &trained {
        assert_eq!(i.status, IdeaStatus::Done);
        assert_eq!(runs.get(&i.key), Some(&1), "{} ran {:?} times", i.key, runs.get(&i.key));
    }
    assert!(runs.values().all(|&n| n == 1), "no execution ran twice: {runs:?}");
    assert_eq!(s.store.steps(s.run).unwrap().len(), 6);
    let trained_groups = s.store.groups_with_status(s.run, &[GroupStatus::Trained]).unwrap();
    assert_eq!(trained_groups.len(), 6, "each group trained once");
}

fn slurm_cluster() -> bool {
    match SlurmBackend::available() {
        Ok(()) => true,
        Err(e) => {
            let msg = format!(
                "\n\n!!!! SLURM PIPELINE TEST NOT RUN: no Slurm cluster is reachable ({e}).\n!!!! Start one with \
                 `scripts/slurm-test-cluster.sh start` (needs root and Debian's slurm-wlm + munge).\n\n"
            );
            if std::env::var("IDEATOR_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("{msg}");
            false
        }
    }
}

#[test]
fn on_slurm_runs_left_by_a_dead_trainer_are_reattached_not_run_again() {
    if !slurm_cluster() {
        return;
    }
    let s = setup();
    let slurm = SlurmConfig { max_jobs: 4, poll_interval_s: 0.2, ..Default::default() };
    // A trainer sampled a group, submitted its ideas to Slurm, recorded the job ids and died.
    let mut learner = Counter::new(s.dir.path(), 2);
    let l = launcher(&s, 1.0);
    let prompt = s.store.intern_prompt(s.run, "p", &[1, 2]).unwrap();
    let sampled = learner.sample_group(ideator_rollout::pipeline::mix_seed(11, 0)).unwrap();
    let new = ideator_rollout::store::NewGroup {
        seq: 0,
        prompt_id: prompt,
        policy_version: 0,
        sample_seconds: 0.0,
        temperature: sampled.temperature,
        ideas: sampled
            .ideas
            .into_iter()
            .map(|i| ideator_rollout::store::NewIdea {
                text: i.text,
                token_ids: i.token_ids,
                logprobs: i.logprobs,
                finish_reason: i.finish_reason,
                seed: 1,
                reference: false,
            })
            .collect(),
    };
    let group = s.store.insert_group(s.run, &new).unwrap();
    {
        let mut dead = SlurmBackend::new(&slurm).unwrap();
        for idea in &group.ideas {
            let spec = l.spec(idea, 1, true).unwrap();
            s.store.mark_launching(idea.id, 1, "slurm", &spec.work_dir, &spec.stderr_path()).unwrap();
            let id = dead.submit(&spec).unwrap();
            s.store.set_job_id(idea.id, 1, &id).unwrap();
        }
        std::mem::forget(dead); // died: its jobs keep running
    }
    let cfg = PipelineConfig { max_inflight_groups: 2, max_staleness: 2, ..Default::default() };
    let backend = SlurmBackend::new(&slurm).unwrap();
    let summary = go_on(
        &s,
        &mut learner,
        cfg,
        Steps { steps: 2, groups_per_step: 1, stop_after: None },
        Box::new(backend),
        launcher(&s, 0.3),
    );
    assert_eq!(summary.steps, 2);
    for idea in s.store.ideas_of_step(s.run, 0).unwrap() {
        assert_eq!(idea.attempts, 1, "{} was launched again", idea.key);
        assert!(idea.job_id.as_deref().is_some_and(|j| j.chars().all(|c| c.is_ascii_digit())));
    }
    let runs = executions(&s);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    assert_eq!(s.store.ideas_of_step(s.run, 1).unwrap().len(), 2);
}
