//! Evolutionary search through the real pipeline and local backend, with a stand-in ideator (no model) and the
//! toy environment's rewards: the paper's exploit/explore split per epoch, prompts that fit the context and end
//! with the epoch's ideas to avoid, and a resume from the middle of an epoch that rebuilds exactly the prompts an
//! uninterrupted run builds.

use ideator_rollout::pipeline::reward::{RewardMode, SeedScope};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ideator_envs::backend::{LocalBackend, LocalConfig, RunSpec};
use ideator_envs::prompt::{examples, task_prompt};
use ideator_envs::toy::Toy;
use ideator_envs::{execute, RunContext};
use ideator_rollout::evolution::{EvolutionAgent, EvolveConfig};
use ideator_rollout::generate::IdeaGenerator;
use ideator_rollout::pipeline::dispatch::Launcher;
use ideator_rollout::pipeline::{
    run_pipeline, EpochStats, OnInterrupt, PipelineConfig, PipelineContext, SampledIdea, StepRecord,
};
use ideator_rollout::store::{GroupStatus, IdeaRow, RunKind, Store};
use ideator_rollout::Result;

const PROMPTS: usize = 5;

/// A stand-in ideator: words are tokens; fresh and explore prompts get a random schema-valid idea (every fifth a
/// broken one), exploit prompts get the first listed idea's changes plus one more.
struct Stub {
    budget: usize,
    calls: Cell<usize>,
    /// Sets `stop` when this many ideas were generated (an interrupt in the middle of an epoch).
    stop_at: Option<(usize, Arc<AtomicBool>)>,
}

fn word_ids(text: &str) -> Vec<u32> {
    text.split_whitespace().map(|w| w.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))).collect()
}

impl IdeaGenerator for Stub {
    fn encode(&self, system: &str, user: &str) -> Result<Vec<u32>> {
        Ok(word_ids(&format!("<system> {system} <user> {user} <assistant>")))
    }
    fn prompt_budget(&self) -> usize {
        self.budget
    }
    fn generate(&mut self, prompt_ids: &[u32], n: usize, seed: u64) -> Result<Vec<SampledIdea>> {
        assert!(prompt_ids.len() <= self.budget, "the agent sent a prompt that does not fit");
        let mut out = Vec::new();
        for i in 0..n {
            let s = seed.wrapping_add(i as u64);
            let text = if s.is_multiple_of(5) {
                "[Experiment]\nSomething vague.\n[Code Changes]\nmagic = 1\n[End]".to_string()
            } else {
                examples(&Toy, "tiny", 1, s).unwrap()[0].idea().to_string()
            };
            out.push(SampledIdea {
                text,
                token_ids: vec![1, 2, 3],
                logprobs: vec![-1.0; 3],
                finish_reason: "stop".into(),
            });
        }
        self.calls.set(self.calls.get() + n);
        if let Some((at, stop)) = &self.stop_at {
            if self.calls.get() >= *at {
                stop.store(true, Ordering::SeqCst);
            }
        }
        Ok(out)
    }
    fn temperature(&self) -> f64 {
        1.0
    }
}

/// Scores the idea with the toy environment in the test process and hands the result to `sh` to print, so the
/// run goes through the real local backend.
struct ToyLauncher {
    root: PathBuf,
}

impl Launcher for ToyLauncher {
    fn spec(&self, idea: &IdeaRow, attempt: u32, prepare: bool) -> std::io::Result<RunSpec> {
        let work_dir = self.root.join(&idea.key).join(format!("attempt-{attempt}"));
        if prepare {
            std::fs::create_dir_all(&work_dir)?;
        }
        let r = execute(&Toy, &idea.text, &RunContext::new("tiny", idea.seed, &work_dir));
        let line = serde_json::json!({"status": r.status, "reward": r.reward, "metrics": {}, "cause": r.cause,
            "message": r.message, "seconds": 0.0});
        Ok(RunSpec {
            key: format!("{}-a{attempt}", idea.key),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), format!("sleep 0.02; printf '%s\\n' '{}'", line.to_string().replace('\'', ""))],
            env: vec![],
            work_dir,
            time_limit: Some(Duration::from_secs(60)),
        })
    }
}

fn baseline() -> f64 {
    Toy::score(&ideator_envs::Recipe::baseline(&ideator_envs::Environment::schema(&Toy, "tiny").unwrap())).0
}

fn task() -> String {
    task_prompt(&Toy, "tiny").unwrap()
}

fn budget() -> usize {
    // Room for the instructions and about six listed ideas: fitting must drop some.
    word_ids(&task()).len() + 260
}

fn evolve_cfg(epochs: u64) -> EvolveConfig {
    EvolveConfig { epochs, prompts_per_epoch: PROMPTS, ideas_per_prompt: 1, ..Default::default() }
}

/// Runs (or resumes) the search in `dir` until `epochs` or until the stub trips the stop flag.
fn go(dir: &Path, epochs: u64, stop_after_ideas: Option<usize>) -> (u64, usize, Vec<StepRecord>) {
    let store = Store::open_in(dir).unwrap();
    let run = store.open_run("evolve", RunKind::Evolve, "toy", "tiny", 3).unwrap().id;
    let stop = Arc::new(AtomicBool::new(false));
    let mut stub =
        Stub { budget: budget(), calls: Cell::new(0), stop_at: stop_after_ideas.map(|n| (n, stop.clone())) };
    let mut agent =
        EvolutionAgent::new(&mut stub, evolve_cfg(epochs), task(), baseline(), Some(dir.join("database.json")))
            .unwrap();
    let restored = agent.restore(&store, run, 3).unwrap();
    let mismatches = restored.mismatched_prompts;
    let mut records = Vec::new();
    let mut on_step = |r: &ideator_rollout::pipeline::StepReport| {
        records.push(r.record.clone());
        serde_json::Map::new()
    };
    let categorize = |_: &str| None;
    let mut ctx = PipelineContext {
        store: &store,
        run,
        run_dir: dir,
        cfg: PipelineConfig {
            max_inflight_groups: PROMPTS,
            max_staleness: 0,
            on_interrupt: OnInterrupt::Cancel,
            ..Default::default()
        },
        steps: epochs,
        groups_per_step: PROMPTS,
        checkpoint_every: 1,
        seed: 3,
        seed_scope: SeedScope::Step,
        reference: true,
        reward: RewardMode::Raw,
        noise_std: None,
        stop,
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let backend =
        LocalBackend::new(&LocalConfig { slots: 2, threads_per_run: Some(1), ..Default::default() }).unwrap();
    let summary =
        run_pipeline(&mut agent, &mut ctx, Box::new(backend), Box::new(ToyLauncher { root: dir.join("work") }))
            .unwrap();
    (summary.steps, mismatches, records)
}

fn epoch(r: &StepRecord) -> &EpochStats {
    r.learner.evolution.as_ref().expect("an evolution record has the evolution part")
}

/// (group seq, prompt text, idea text, reward) of every trained idea, in order.
fn history(dir: &Path) -> Vec<(u64, String, String, f64)> {
    let store = Store::open_in(dir).unwrap();
    let run = store.find_run("evolve").unwrap().unwrap().id;
    let mut out = Vec::new();
    for g in store.groups_with_status(run, &[GroupStatus::Trained]).unwrap() {
        let prompt = prompt_text(&store, g.prompt_id);
        for i in &g.ideas {
            out.push((g.seq, prompt.clone(), i.text.clone(), i.result.as_ref().unwrap().reward));
        }
    }
    out
}

fn prompt_text(store: &Store, prompt_id: i64) -> String {
    store.prompt_text(prompt_id).unwrap()
}

#[test]
fn epochs_follow_the_paper_split_and_prompts_fit_and_end_with_the_ideas_to_avoid() {
    let dir = tempfile::tempdir().unwrap();
    let (epochs, _, records) = go(dir.path(), 4, None);
    assert_eq!(epochs, 4);
    assert_eq!(records.len(), 4);
    for (e, r) in records.iter().enumerate() {
        assert_eq!(r.epoch, Some(e as u64), "records carry their epoch");
        assert_eq!(r.step, e as u64);
        let exploit = epoch(r).exploit_prompts;
        let explore = epoch(r).explore_prompts;
        let fresh = epoch(r).fresh_prompts;
        assert_eq!(exploit + explore + fresh, PROMPTS);
        if e == 0 {
            assert_eq!(fresh, PROMPTS);
        } else {
            // floor(5 * share): 0.5 -> 2, 0.6 -> 3, 0.6 -> 3, unless nothing has beaten the baseline yet.
            let planned = [0, 2, 3, 3][e];
            assert_eq!(epoch(r).exploit_prompts_planned, planned);
            let winners = epoch(r).winners_before as u64;
            assert_eq!(exploit, if winners > 0 { planned } else { 0 }, "epoch {e}: {r:?}");
        }
        assert!(epoch(r).prompt_tokens_max <= budget() as f64);
        assert!((epoch(r).baseline_reward - baseline()).abs() < 1e-12);
    }
    assert!(records.iter().any(|r| epoch(r).exploit_prompts > 0), "the toy ideas beat the baseline");
    assert!(records.iter().map(|r| epoch(r).ideas_dropped_to_fit).sum::<usize>() > 0);

    // The prompts as stored: each lists the ideas sampled before it in its epoch (the newest at least).
    let store = Store::open_in(dir.path()).unwrap();
    let run = store.find_run("evolve").unwrap().unwrap().id;
    let groups = store.groups_with_status(run, &[GroupStatus::Trained]).unwrap();
    assert_eq!(groups.len(), 4 * PROMPTS);
    for (i, g) in groups.iter().enumerate() {
        assert!(store.prompt_ids(g.prompt_id).unwrap().len() <= budget());
        assert_eq!(g.trained_step, Some(g.policy_version), "synchronous: trained in the epoch that sampled it");
        let text = prompt_text(&store, g.prompt_id);
        assert!(text.starts_with(task().trim()), "the instructions always stay");
        if i % PROMPTS == 0 {
            assert!(!text.contains("Avoid ideas similar"), "the first prompt of an epoch has nothing to avoid");
        } else {
            let previous = groups[i - 1].ideas[0].text.trim();
            assert!(text.contains("Avoid ideas similar"));
            assert!(text.trim_end().ends_with(previous), "prompt {i} ends with the idea sampled just before it");
        }
        if text.contains("beat it; each is shown with its score") {
            // Exploit prompts list only ideas above the baseline.
            for line in text.lines().filter(|l| l.starts_with("Idea ") && l.contains("(score ")) {
                let score: f64 = line.split("(score ").nth(1).unwrap().trim_end_matches("):").parse().unwrap();
                assert!(score > baseline(), "{line}");
            }
        }
    }
    let db: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("database.json")).unwrap()).unwrap();
    assert_eq!(db["entries"].as_array().unwrap().len(), 4 * PROMPTS);
    assert_eq!(db["epochs"].as_u64(), Some(4));
}

#[test]
fn a_search_interrupted_mid_epoch_resumes_with_the_same_prompts_and_ideas() {
    let straight = tempfile::tempdir().unwrap();
    go(straight.path(), 4, None);
    let resumed = tempfile::tempdir().unwrap();
    // Stop after 7 ideas (epoch 1, second prompt), then after 6 more (epoch 2, third prompt), then finish.
    let (e1, m1, _) = go(resumed.path(), 4, Some(7));
    assert!(e1 < 4);
    // A changed task would build other prompts: restoring says so.
    {
        let store = Store::open_in(resumed.path()).unwrap();
        let run = store.find_run("evolve").unwrap().unwrap().id;
        let mut stub = Stub { budget: budget(), calls: Cell::new(0), stop_at: None };
        let mut agent =
            EvolutionAgent::new(&mut stub, evolve_cfg(4), "another task".into(), baseline(), None).unwrap();
        let r = agent.restore(&store, run, 3).unwrap();
        assert_eq!((r.epoch, r.database), (1, PROMPTS));
        assert!(r.sampled_prompts > 0 && r.sampled_prompts < PROMPTS, "{r:?}");
        assert_eq!(r.mismatched_prompts, r.sampled_prompts);
    }
    let (e2, m2, _) = go(resumed.path(), 4, Some(6));
    assert!(e2 < 4 && e2 >= e1);
    let (e3, m3, _) = go(resumed.path(), 4, None);
    assert_eq!(e3, 4);
    assert_eq!((m1, m2, m3), (0, 0, 0), "every resumed epoch rebuilt the prompts it had stored");
    let a = history(straight.path());
    let b = history(resumed.path());
    assert_eq!(a.len(), 4 * PROMPTS);
    assert_eq!(a, b, "the interrupted search sampled and scored exactly what the straight one did");
}
