//! `ideator experiment` through the binary, on the default SmolLM2 with tiny settings (2 ideas of 12 tokens per
//! step) and the instant `peaks` environment: three arms (best-of-N, evolution, GRPO with max@k) x two seeds.
//! The experiment is aborted in the middle by the pipeline's crash hook (the process dies as from SIGKILL: no
//! cleanup), resumed by running the same command again, and must then
//! - finish every arm at every seed with exactly the planned ideas, each executed at most once (no attempt
//!   produced a second result, cache copies ran nothing);
//! - write the comparison (comparison.md with every arm and the command), which `compare` prints;
//! - be drawn by `report` with every arm on one chart;
//! - refuse a changed config in the same folder.

mod common;
use common::ideator;

use std::path::Path;

use ideator_rollout::store::{IdeaStatus, Store};

const ARMS: [&str; 3] = ["frozen", "evolution", "max_k"];
const SEEDS: [u64; 2] = [1, 2];
/// Ideas per arm and seed: 3 steps of 2.
const BUDGET: usize = 6;

fn config(budget: usize) -> String {
    format!(
        r#"
env = "peaks"
executions = {budget}
seeds = [1, 2]
max_k = 2
noise_floor_seeds = 2
[train]
mode = "lora"
[train.lora]
rank = 4
alpha = 8
[optim]
lr = 1e-3
[sampling]
temperature = 1.0
max_new_tokens = 12
batch_size = 2
[backend]
kind = "local"
slots = 2
threads_per_run = 1
[diagnostics]
embeddings = false

[[arms]]
kind = "best_of_n"
name = "frozen"
batch = 2

[[arms]]
kind = "evolve"
name = "evolution"
ideas_per_epoch = 2
exploit_ideas = 2
explore_ideas = 4
max_idea_chars = 200

[[arms]]
kind = "grpo"
name = "max_k"
[arms.grpo]
group_size = 2
micro_batch = 2
beta = 0.0
advantage_estimator = "max_k"
max_k = {{ k = 2 }}
"#
    )
}

/// Every idea of every run executed at most once: a done idea has exactly one attempt with a result, or none
/// when its result came from the cache; no other idea has a result. Returns (ideas, executions).
fn check_executed_once(run_dir: &Path) -> (usize, usize) {
    let store = Store::open_in(run_dir).unwrap();
    let (mut ideas, mut executions) = (0, 0);
    for run in store.runs().unwrap() {
        for idea in store.ideas(run.id).unwrap() {
            let results =
                store.attempts(idea.id).unwrap().iter().filter(|a| a.outcome.as_deref() == Some("result")).count();
            let expected = usize::from(idea.status == IdeaStatus::Done && idea.cached_from.is_none());
            assert_eq!(results, expected, "{} {}: {results} results", run_dir.display(), idea.key);
            if run.name != "baseline" && !idea.reference {
                ideas += 1;
                executions += results;
            }
        }
    }
    (ideas, executions)
}

#[test]
fn an_aborted_experiment_resumes_executes_nothing_twice_and_compares_every_arm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("experiment.toml");
    std::fs::write(&cfg, config(BUDGET)).unwrap();
    let root = dir.path().join("exp");
    let run = |crash: Option<&str>| {
        let mut cmd = ideator();
        cmd.args(["experiment", "--config"]).arg(&cfg).arg("--run-dir").arg(&root);
        if let Some(step) = crash {
            cmd.env("IDEATOR_TEST_CRASH_AFTER_STEP", step);
        }
        cmd.output().unwrap()
    };

    // Step 1 is the first run's second step: the frozen arm (an evaluation: one step) finishes, the evolution dies
    // after epoch 1 of 3, and the GRPO arm has not started.
    let out = run(Some("1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the crash hook did not fire: {err}");
    assert!(err.contains("aborting between the step record and its checkpoint"), "{err}");
    assert!(!root.join("comparison.md").exists());

    let out = run(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed: {err}");
    assert!(err.contains("finished earlier: skipped"), "the finished frozen run was not skipped: {err}");
    assert!(err.contains("resuming") && err.contains("at epoch 2"), "the evolution did not resume at epoch 2: {err}");

    for arm in ARMS {
        for seed in SEEDS {
            let (ideas, executions) = check_executed_once(&root.join(arm).join(format!("seed-{seed}")));
            assert_eq!(ideas, BUDGET, "{arm} seed {seed}: {ideas} ideas");
            assert!(executions <= ideas, "{arm} seed {seed}");
        }
    }
    let md = std::fs::read_to_string(root.join("comparison.md")).unwrap();
    for arm in ARMS {
        assert!(md.contains(&format!("| {arm} | ")), "{arm} missing from the table:\n{md}");
    }
    assert!(md.contains("| 2 | 6.0 |"), "every arm has 2 seeds of 6 ideas:\n{md}");
    assert!(md.contains("Made by: `ideator experiment --config"), "{md}");

    // compare shows the experiment; report draws every arm on one chart.
    let out = ideator().arg("compare").arg(&root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| max_k | grpo | 2 |"));
    let out = ideator().arg("report").arg(&root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(root.join("report.html")).unwrap();
    let start = html.find("data-chart=\"experiment-best\"").expect("the best-so-far chart");
    let chart = &html[start..start + html[start..].find("</svg>").unwrap()];
    for arm in ARMS {
        assert!(chart.contains(arm), "{arm} is not on the best-so-far chart");
    }
    assert!(
        html.contains("each arm's own report") && !html.contains("No idea was executed successfully"),
        "an experiment's report must not claim that no idea executed"
    );

    // Running it again executes nothing; a changed config is refused naming the change.
    let before: Vec<(usize, usize)> =
        ARMS.iter().map(|a| check_executed_once(&root.join(a).join("seed-1"))).collect();
    assert!(run(None).status.success());
    let after: Vec<(usize, usize)> = ARMS.iter().map(|a| check_executed_once(&root.join(a).join("seed-1"))).collect();
    assert_eq!(before, after);
    std::fs::write(&cfg, config(2 * BUDGET)).unwrap();
    let out = run(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("different config (first difference: executions)"), "{err}");
}
