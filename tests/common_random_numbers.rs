//! Rewards that mean what they say, through the real pipeline and real `ideator exec` processes: ideas of a group
//! run at one environment seed (common random numbers), identical recipes get bit-identical rewards and zero
//! advantages, the execution cache runs each recipe once per seed, a no-op idea ties the baseline run at its seed
//! exactly, and infrastructure failures are left out of the update.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ideator_envs::backend::{LocalBackend, LocalConfig};
use ideator_rollout::cache::RecipeKeyer;
use ideator_rollout::pipeline::dispatch::ExecLauncher;
use ideator_rollout::pipeline::reward::{RewardMode, SeedScope};
use ideator_rollout::pipeline::{
    run_pipeline, Learner, LearnerStats, PipelineConfig, PipelineContext, PipelineSummary, SampledGroup, SampledIdea,
    StepRecord, StepReport,
};
use ideator_rollout::store::{IdeaRow, RunKind, Store};
use ideator_trainer::ScoredGroup;

/// Samples the same idea texts every time; keeps what it was trained on.
struct Copies {
    texts: Vec<String>,
    version: u64,
    trained: Vec<Vec<f64>>,
}

impl Learner for Copies {
    fn version(&self) -> u64 {
        self.version
    }
    fn sample_group(&mut self, _seed: u64) -> ideator_rollout::Result<SampledGroup> {
        let ideas = self
            .texts
            .iter()
            .enumerate()
            .map(|(i, t)| SampledIdea {
                text: t.clone(),
                token_ids: vec![10 + i as u32],
                logprobs: vec![-1.0],
                finish_reason: "eos".into(),
            })
            .collect();
        Ok(SampledGroup { prompt_text: "p".into(), prompt_ids: vec![1], ideas, temperature: 1.0 })
    }
    fn update(&mut self, groups: &[ScoredGroup]) -> ideator_rollout::Result<LearnerStats> {
        self.trained.extend(groups.iter().map(|g| g.rewards()));
        self.version += 1;
        Ok(LearnerStats::default())
    }
    fn checkpoint(&mut self, _score: Option<f64>) -> ideator_rollout::Result<Option<PathBuf>> {
        Ok(None)
    }
}

fn idea(changes: &str) -> String {
    format!("[Experiment]\nA change.\n[Code Changes]\n{changes}\n[End]")
}

fn assets() -> PathBuf {
    std::env::var_os("IDEATOR_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

fn launcher(env: &str, root: &Path) -> ExecLauncher {
    std::env::set_var("IDEATOR_ASSETS", assets());
    let environment = ideator_envs::load(env, None).unwrap();
    ExecLauncher {
        program: env!("CARGO_BIN_EXE_ideator").into(),
        env: env.into(),
        env_config: None,
        scale: "tiny".into(),
        work_root: root.join("work"),
        time_limit: Some(std::time::Duration::from_secs(300)),
        keyer: Some(Arc::new(RecipeKeyer::new(Arc::from(environment), "tiny", None))),
    }
}

struct Run {
    name: &'static str,
    env: &'static str,
    texts: Vec<String>,
    steps: u64,
    reward: RewardMode,
}

/// Runs `run` in the store of `dir` with two local slots; returns the learner, the summary and the step records.
fn go(dir: &Path, run: &Run) -> (Copies, PipelineSummary, Vec<StepRecord>) {
    let store = Store::open_in(dir).unwrap();
    let id = store.open_run(run.name, RunKind::Rl, run.env, "tiny", 5).unwrap().id;
    let mut learner = Copies { texts: run.texts.clone(), version: 0, trained: vec![] };
    let backend =
        LocalBackend::new(&LocalConfig { slots: 2, threads_per_run: Some(1), ..Default::default() }).unwrap();
    let categorize = |_: &str| None;
    let mut on_step = |_: &StepReport| serde_json::Map::new();
    let run_dir = dir.join(run.name);
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut ctx = PipelineContext {
        store: &store,
        run: id,
        run_dir: &run_dir,
        cfg: PipelineConfig { max_inflight_groups: 1, max_staleness: 0, ..Default::default() },
        steps: run.steps,
        groups_per_step: 1,
        checkpoint_every: 100,
        seed: 5,
        seed_scope: SeedScope::Group,
        reference: run.reward.needs_reference(),
        reward: run.reward,
        noise_std: Some(1e-3),
        stop: Arc::new(AtomicBool::new(false)),
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let summary = run_pipeline(&mut learner, &mut ctx, Box::new(backend), Box::new(launcher(run.env, dir))).unwrap();
    let steps = store.steps(id).unwrap().into_iter().map(|s| s.record).collect();
    (learner, summary, steps)
}

fn ideas_of(dir: &Path, name: &str) -> Vec<IdeaRow> {
    let store = Store::open_in(dir).unwrap();
    store.ideas(store.find_run(name).unwrap().unwrap().id).unwrap()
}

#[test]
fn identical_recipes_share_a_seed_score_bit_for_bit_and_run_once_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    // Eight copies of one recipe, written two ways (the cache key is the canonical recipe, not the text).
    let mut texts = vec![idea("lr = 0.002"); 4];
    texts.extend(vec![idea("lr = 2e-3\n"); 4]);
    let run = Run { name: "first", env: "pretrain", texts, steps: 2, reward: RewardMode::Raw };
    let (learner, summary, steps) = go(dir.path(), &run);

    let ideas = ideas_of(dir.path(), "first");
    assert_eq!(ideas.len(), 16);
    for step in 0..2 {
        let group: Vec<&IdeaRow> = ideas[step * 8..step * 8 + 8].iter().collect();
        let seeds: std::collections::BTreeSet<u64> = group.iter().map(|i| i.seed).collect();
        assert_eq!(seeds.len(), 1, "one environment seed per group: {seeds:?}");
        let rewards: Vec<u64> = group.iter().map(|i| i.result.as_ref().unwrap().reward.to_bits()).collect();
        assert!(rewards.windows(2).all(|w| w[0] == w[1]), "identical rewards: {rewards:?}");
        assert_eq!(group.iter().filter(|i| i.cached_from.is_none()).count(), 1, "one execution per group");
        assert_eq!(steps[step].executions.frac_reward_zero_std, 1.0);
        assert_eq!(steps[step].executions.cache_hits, 7);
        assert_eq!(steps[step].executions.frac_reward_within_noise, Some(1.0));
    }
    assert_ne!(ideas[0].seed, ideas[8].seed, "the seed changes from group to group");
    assert_ne!(ideas[0].result.as_ref().unwrap().reward, ideas[8].result.as_ref().unwrap().reward);
    assert_eq!(summary.executions, 2);
    assert_eq!(summary.cache_hits, 14);
    // Zero advantages: equal rewards within each trained group.
    for g in &learner.trained {
        assert!(g.windows(2).all(|w| w[0] == w[1]));
    }

    // The same recipe proposed again at the same seeds (another run of the store) executes nothing.
    let again = Run { name: "again", ..run };
    let (_, summary, _) = go(dir.path(), &again);
    assert_eq!(summary.executions, 0);
    assert_eq!(summary.cache_hits, 16);
    let repeated = ideas_of(dir.path(), "again");
    for (a, b) in ideas.iter().zip(&repeated) {
        assert_eq!(a.seed, b.seed);
        assert_eq!(a.result.as_ref().unwrap().reward.to_bits(), b.result.as_ref().unwrap().reward.to_bits());
    }
}

#[test]
fn a_no_op_idea_ties_the_baseline_at_its_seed_and_a_collapsed_batch_of_sixteen_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    // lr = 1e-3 is pretrain's default: the idea is the baseline recipe, so its improvement is exactly 0.
    let mut texts = vec![idea("lr = 0.001"); 15];
    texts.push(idea("lr = 0.003"));
    let run = Run { name: "relative", env: "pretrain", texts, steps: 1, reward: RewardMode::Improvement };
    let (learner, summary, steps) = go(dir.path(), &run);
    // Two recipes: the no-op (shared with the reference run) and lr = 3e-3.
    assert_eq!(summary.executions, 2, "{summary:?}");
    let trained = &learner.trained[0];
    assert!(trained[..15].iter().all(|&r| r == 0.0), "{trained:?}");
    assert!(trained[15] != 0.0);
    assert_eq!(steps[0].executions.reference_runs, 1);
    let ideas = ideas_of(dir.path(), "relative");
    let store = Store::open_in(dir.path()).unwrap();
    let refs = store.reference_ideas(store.find_run("relative").unwrap().unwrap().id).unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].seed, ideas[0].seed, "the reference runs at the group's seed");
    assert_eq!(refs[0].result.as_ref().unwrap().reward.to_bits(), ideas[0].result.as_ref().unwrap().reward.to_bits());
}

#[test]
fn sixteen_identical_toy_ideas_execute_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = Run { name: "toy", env: "toy", texts: vec![idea("lr = 0.003"); 16], steps: 1, reward: RewardMode::Raw };
    let (_, summary, steps) = go(dir.path(), &run);
    assert_eq!(summary.executions, 1);
    assert_eq!(summary.cache_hits, 15);
    assert_eq!(steps[0].executions.frac_reward_zero_std, 1.0);
    let work: Vec<_> = std::fs::read_dir(dir.path().join("work")).unwrap().collect();
    assert_eq!(work.len(), 1, "one execution folder");
}
