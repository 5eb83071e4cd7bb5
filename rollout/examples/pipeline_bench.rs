//! Benchmark (not a test): the asynchronous pipeline against a synchronous loop on the same workload, side by side.
//!
//! Executions are real child processes on the local backend that sleep for a heavy-tailed time: log-normal with
//! median `--median` seconds and shape `--sigma` (σ = 1: the mean is 1.65x the median, one run in 20 takes over
//! 5x the median). Each run's duration is a function of its idea's seed, so both modes draw from the same
//! distribution. The learner is a stand-in that spends a fixed time sampling each group and updating (no model):
//! the benchmark measures scheduling, not the GPU.
//!
//! - synchronous: `max_inflight_groups = groups_per_step`, `max_staleness = 0` (sample a step's groups, wait for
//!   all their runs, update);
//! - asynchronous: sampling runs ahead by `--ahead` steps' worth of groups, `max_staleness = --ahead`.
//!
//! Ideal wall time = the larger of (execution seconds the trained groups need / slots) and the learner's own
//! time: no schedule can beat it.
//!
//!     cargo run --release -p ideator-rollout --example pipeline_bench -- --steps 20

use ideator_rollout::pipeline::reward::{RewardMode, SeedScope};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ideator_envs::backend::{LocalBackend, LocalConfig, RunSpec};
use ideator_rollout::pipeline::dispatch::Launcher;
use ideator_rollout::pipeline::{
    run_pipeline, Learner, LearnerStats, PipelineConfig, PipelineContext, PipelineSummary, SampledGroup, SampledIdea,
};
use ideator_rollout::store::{GroupStatus, IdeaRow, Store};
use ideator_trainer::ScoredGroup;

struct Args {
    steps: u64,
    groups_per_step: usize,
    group_size: usize,
    slots: usize,
    median: f64,
    sigma: f64,
    sample_s: f64,
    update_s: f64,
    ahead: usize,
    staleness: Option<u64>,
    only_async: bool,
}

fn parse() -> Args {
    let mut a = Args {
        steps: 20,
        groups_per_step: 2,
        group_size: 4,
        slots: 8,
        median: 1.0,
        sigma: 1.0,
        sample_s: 0.1,
        update_s: 0.5,
        ahead: 2,
        staleness: None,
        only_async: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--steps" => a.steps = v.parse().expect("--steps N"),
            "--groups-per-step" => a.groups_per_step = v.parse().expect("--groups-per-step N"),
            "--group-size" => a.group_size = v.parse().expect("--group-size N"),
            "--slots" => a.slots = v.parse().expect("--slots N"),
            "--median" => a.median = v.parse().expect("--median SECONDS"),
            "--sigma" => a.sigma = v.parse().expect("--sigma X"),
            "--sample-s" => a.sample_s = v.parse().expect("--sample-s SECONDS"),
            "--update-s" => a.update_s = v.parse().expect("--update-s SECONDS"),
            "--ahead" => a.ahead = v.parse().expect("--ahead STEPS"),
            "--staleness" => a.staleness = Some(v.parse().expect("--staleness VERSIONS")),
            "--only-async" => a.only_async = v == "1",
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The run time of an idea: log-normal(ln median, sigma) from its seed (Box-Muller on two hashed uniforms).
fn duration(seed: u64, median: f64, sigma: f64) -> f64 {
    let u1 = ((mix(seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((mix(seed ^ 0xA5A5) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}

struct StandIn {
    version: u64,
    group_size: usize,
    sample_s: f64,
    update_s: f64,
    busy: f64,
}

impl Learner for StandIn {
    fn version(&self) -> u64 {
        self.version
    }
    fn sample_group(&mut self, _seed: u64) -> ideator_rollout::Result<SampledGroup> {
        std::thread::sleep(Duration::from_secs_f64(self.sample_s));
        self.busy += self.sample_s;
        let ideas = (0..self.group_size)
            .map(|i| SampledIdea {
                text: format!("idea {i}"),
                token_ids: vec![1],
                logprobs: vec![-1.0],
                finish_reason: "stop".into(),
            })
            .collect();
        Ok(SampledGroup { temperature: 1.0, prompt_text: "p".into(), prompt_ids: vec![1], ideas })
    }
    fn update(&mut self, _groups: &[ScoredGroup]) -> ideator_rollout::Result<LearnerStats> {
        std::thread::sleep(Duration::from_secs_f64(self.update_s));
        self.busy += self.update_s;
        self.version += 1;
        Ok(LearnerStats::default())
    }
    fn checkpoint(&mut self, _: Option<f64>) -> ideator_rollout::Result<Option<PathBuf>> {
        Ok(None)
    }
}

struct Sleeper {
    root: PathBuf,
    median: f64,
    sigma: f64,
}

impl Launcher for Sleeper {
    fn spec(&self, idea: &IdeaRow, attempt: u32, _prepare: bool) -> std::io::Result<RunSpec> {
        let secs = duration(idea.seed, self.median, self.sigma);
        let script = format!(
            r#"sleep {secs:.3}; printf '{{"status":"ok","reward":0.5,"metrics":{{}},"cause":null,"message":"slept","seconds":{secs:.3}}}\n'"#
        );
        Ok(RunSpec {
            key: format!("{}-a{attempt}", idea.key),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script],
            env: vec![],
            work_dir: self.root.join(&idea.key),
            time_limit: None,
        })
    }
}

struct Measured {
    summary: PipelineSummary,
    wall: f64,
    trained_exec_seconds: f64,
    all_exec_seconds: f64,
    learner_busy: f64,
}

fn run_mode(a: &Args, inflight_groups: usize, staleness: u64) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_in(dir.path()).expect("store");
    let run = store.open_run("bench", ideator_rollout::store::RunKind::Rl, "sleep", "lognormal", 1).expect("run").id;
    let mut learner =
        StandIn { version: 0, group_size: a.group_size, sample_s: a.sample_s, update_s: a.update_s, busy: 0.0 };
    let categorize = |_: &str| None;
    let mut on_step = |_: &ideator_rollout::pipeline::StepReport| serde_json::Map::new();
    let mut ctx = PipelineContext {
        store: &store,
        run,
        run_dir: dir.path(),
        cfg: PipelineConfig { max_inflight_groups: inflight_groups, max_staleness: staleness, ..Default::default() },
        steps: a.steps,
        groups_per_step: a.groups_per_step,
        checkpoint_every: u64::MAX,
        seed: 42,
        seed_scope: SeedScope::Group,
        reference: false,
        reward: RewardMode::Raw,
        noise_std: None,
        stop: Arc::new(AtomicBool::new(false)),
        categorize: &categorize,
        on_step: &mut on_step,
    };
    let backend = LocalBackend::new(&LocalConfig { slots: a.slots, threads_per_run: Some(1), ..Default::default() })
        .expect("backend");
    let launcher = Sleeper { root: dir.path().join("work"), median: a.median, sigma: a.sigma };
    let t0 = Instant::now();
    let summary = run_pipeline(&mut learner, &mut ctx, Box::new(backend), Box::new(launcher)).expect("pipeline");
    let wall = t0.elapsed().as_secs_f64();
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for st in store.steps(run).expect("steps") {
            let m = st.record.to_json();
            eprintln!(
                "step {:>3} busy {:.2} idle {:.2} wait {:.2} sample {:.2} queued {} running {} stale {}",
                st.step,
                m["slot_utilisation"],
                m["learner_idle_frac"],
                m["wait_seconds"],
                m["sample_seconds"],
                m["queued_ideas"],
                m["running_ideas"],
                m["staleness"]
            );
        }
    }
    let seconds = |statuses: &[GroupStatus]| -> f64 {
        store
            .groups_with_status(run, statuses)
            .expect("groups")
            .iter()
            .flat_map(|g| g.ideas.iter())
            .filter_map(|i| i.result.as_ref().map(|r| r.seconds))
            .sum()
    };
    Measured {
        wall,
        trained_exec_seconds: seconds(&[GroupStatus::Trained]),
        all_exec_seconds: seconds(&[GroupStatus::Trained, GroupStatus::Dropped, GroupStatus::Cancelled]),
        learner_busy: learner.busy,
        summary,
    }
}

fn main() {
    let a = parse();
    let staleness = a.staleness.unwrap_or(a.ahead as u64 + 1);
    eprintln!("running the asynchronous pipeline ...");
    let asyn = run_mode(&a, a.groups_per_step * (1 + a.ahead), staleness);
    let sync = if a.only_async {
        None
    } else {
        eprintln!("running the synchronous loop ...");
        Some(run_mode(&a, a.groups_per_step, 0))
    };
    let ideal = |m: &Measured| (m.trained_exec_seconds / a.slots as f64).max(m.learner_busy);
    println!(
        "workload: {} steps x {} groups x {} ideas on {} slots; run time log-normal, median {} s, sigma {}; \
         learner {} s per group sampled, {} s per update",
        a.steps, a.groups_per_step, a.group_size, a.slots, a.median, a.sigma, a.sample_s, a.update_s
    );
    println!();
    println!(
        "| mode | wall s | ideal s | wall / ideal | slots busy | learner idle | executions | trained | stale dropped |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let async_name = format!("asynchronous (ahead {} steps, staleness <= {staleness})", a.ahead);
    let rows = sync.iter().map(|m| ("synchronous", m)).chain([(async_name.as_str(), &asyn)]);
    for (name, m) in rows {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} | {:.1}% | {:.1}% | {} | {} | {} |",
            m.wall,
            ideal(m),
            m.wall / ideal(m),
            100.0 * m.summary.slot_utilisation,
            100.0 * m.summary.learner_idle_frac,
            m.summary.executions,
            a.steps as usize * a.groups_per_step * a.group_size,
            m.summary.dropped_stale_groups,
        );
    }
    println!();
    if let Some(sync) = &sync {
        println!("speed-up of the asynchronous pipeline: {:.2}x", sync.wall / asyn.wall);
    }
    println!(
        "async: {:.0} execution seconds trained on, {:.0} spent on groups dropped as stale or cancelled at the end",
        asyn.trained_exec_seconds,
        asyn.all_exec_seconds - asyn.trained_exec_seconds
    );
    println!("staleness of trained groups (async): {:?}", asyn.summary.staleness_histogram);
}
