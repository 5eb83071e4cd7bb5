//! Crash safety of `ideator train`: the trainer is killed with SIGKILL at random moments and resumed with
//! `--resume`; in the end training completes, every update happened once, and the run store together with the
//! runs' folders shows every idea executed exactly once (an execution counts when its process printed a result).
//!
//! The default SmolLM2 ideator with tiny settings (2 ideas of 12 tokens per group) and the instant toy environment
//! keep it to about a minute on two cores. The kill times are random; the seed is printed to reproduce a failure
//! (set IDEATOR_KILL_SEED).

mod common;
use common::ideator;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ideator_envs::backend::parse_exec_output;
use ideator_rollout::store::{GroupStatus, IdeaStatus, Store};

const STEPS: u64 = 6;

fn config() -> String {
    format!(
        r#"
[train]
mode = "lora"
[train.lora]
rank = 4
alpha = 8
[optim]
lr = 1e-3
[grpo]
group_size = 2
micro_batch = 2
beta = 0.0
[sampling]
temperature = 1.0
max_new_tokens = 12
batch_size = 2
[env]
name = "toy"
[rl]
steps = {STEPS}
groups_per_step = 2
checkpoint_every = 2
[pipeline]
max_inflight_groups = 4
max_staleness = 2
[backend]
kind = "local"
slots = 2
threads_per_run = 1
[diagnostics]
embeddings = false
"#
    )
}

/// A small xorshift for kill delays (no RNG crate needed here).
fn next(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn sigkill_at_random_moments_then_resume_runs_every_idea_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, config()).unwrap();
    let run_dir = dir.path().join("run");
    let mut seed: u64 = std::env::var("IDEATOR_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("kill seed {seed} (IDEATOR_KILL_SEED={seed} reproduces the kill times)");
    let mut kills_mid_run = 0;
    for round in 0..4 {
        let mut cmd = ideator();
        cmd.args(["train", "--json", "--config"]).arg(&cfg).arg("--run-dir").arg(&run_dir);
        if round > 0 {
            cmd.arg("--resume");
        }
        let log = std::fs::File::create(dir.path().join(format!("round{round}.log"))).unwrap();
        let mut child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let delay = Duration::from_secs_f64(2.0 + 8.0 * next(&mut seed));
        let t0 = Instant::now();
        while t0.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join(format!("round{round}.log"))).unwrap();
            assert!(status.success(), "round {round} failed: {log}");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills_mid_run += 1;
        eprintln!("round {round}: killed after {:.1} s", delay.as_secs_f64());
    }
    assert!(kills_mid_run >= 1, "the trainer always finished before the kill: the test proved nothing");

    // Finish the run.
    let out = ideator()
        .args(["train", "--json", "--resume", "--config"])
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "final resume failed: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(summary["steps"], STEPS);

    let store = Store::open_in(&run_dir).unwrap();
    let run = store.find_run("train").unwrap().unwrap();
    assert_eq!(run.status, ideator_rollout::store::RunStatus::Done);
    let steps: Vec<u64> = store.steps(run.id).unwrap().iter().map(|s| s.step).collect();
    assert_eq!(steps, (0..STEPS).collect::<Vec<_>>(), "every update recorded once");
    for step in 0..STEPS {
        let groups = store.groups_of_step(run.id, step).unwrap();
        assert_eq!(groups.len(), 2, "step {step} trained on {} groups", groups.len());
        assert!(groups.iter().all(|g| g.ideas.iter().all(|i| i.status == IdeaStatus::Done)));
    }
    // Executions: one complete result per executed idea, in exactly one of its attempt folders.
    let mut finished_runs: BTreeMap<String, usize> = BTreeMap::new();
    for idea in store.ideas(run.id).unwrap() {
        let folder = run_dir.join("work").join(&idea.key);
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for e in entries {
            let text = std::fs::read_to_string(e.unwrap().path().join("stdout.txt")).unwrap_or_default();
            if parse_exec_output(&text).is_some() {
                *finished_runs.entry(idea.key.clone()).or_insert(0) += 1;
            }
        }
        let attempts = store.attempts(idea.id).unwrap();
        let results = attempts.iter().filter(|a| a.outcome.as_deref() == Some("result")).count();
        match idea.status {
            // Copied from an identical idea's execution at the same seed: nothing ran.
            IdeaStatus::Done if idea.cached_from.is_some() => {
                assert_eq!(results, 0, "{}: {attempts:?}", idea.key);
                assert_eq!(finished_runs.get(&idea.key), None, "{} was cached but ran", idea.key);
            }
            IdeaStatus::Done => {
                assert_eq!(results, 1, "{}: {attempts:?}", idea.key);
                assert_eq!(
                    finished_runs.get(&idea.key),
                    Some(&1),
                    "{} finished {:?} times",
                    idea.key,
                    finished_runs.get(&idea.key)
                );
            }
            _ => assert_eq!(results, 0, "{}: {attempts:?}", idea.key),
        }
    }
    assert!(finished_runs.values().all(|&n| n == 1), "an idea ran to the end twice: {finished_runs:?}");
    let trained = store.groups_with_status(run.id, &[GroupStatus::Trained]).unwrap();
    assert_eq!(trained.len() as u64, 2 * STEPS);
    eprintln!(
        "{kills_mid_run} kills; ideas {:?}; groups {:?}",
        store.idea_status_counts(run.id).unwrap(),
        store.group_status_counts(run.id).unwrap()
    );
}

fn train(cfg: &Path, run_dir: &Path, resume: bool, crash_after: Option<u64>) -> std::process::Output {
    let mut cmd = ideator();
    cmd.args(["train", "--config"]).arg(cfg).arg("--run-dir").arg(run_dir);
    if resume {
        cmd.arg("--resume");
    }
    if let Some(step) = crash_after {
        cmd.env("IDEATOR_TEST_CRASH_AFTER_STEP", step.to_string());
    }
    cmd.output().unwrap()
}

fn assert_every_step_trained_once(run_dir: &Path) {
    let store = Store::open_in(run_dir).unwrap();
    let run = store.find_run("train").unwrap().unwrap();
    let steps: Vec<u64> = store.steps(run.id).unwrap().iter().map(|s| s.step).collect();
    assert_eq!(steps, (0..STEPS).collect::<Vec<_>>());
    for step in 0..STEPS {
        assert_eq!(store.groups_of_step(run.id, step).unwrap().len(), 2, "step {step}");
    }
    assert_eq!(store.groups_with_status(run.id, &[GroupStatus::Trained]).unwrap().len() as u64, 2 * STEPS);
}

/// A crash between a step's record and its checkpoint loses the step (it is trained again from the previous
/// checkpoint), and a checkpoint whose step record was lost (an OS crash losing the last commits) is passed over
/// on resume: no group is ever trained on twice by one lineage of weights.
#[test]
fn a_crash_between_step_record_and_checkpoint_loses_the_step_and_never_trains_it_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, config()).unwrap();
    let run_dir = dir.path().join("run");
    // Step 3 makes version 4, whose checkpoint is due (checkpoint_every = 2): the crash comes before it.
    let out = train(&cfg, &run_dir, false, Some(3));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("aborting between the step record and its checkpoint"));
    {
        let store = Store::open_in(&run_dir).unwrap();
        let run = store.find_run("train").unwrap().unwrap();
        assert_eq!(store.steps(run.id).unwrap().len(), 4, "the step record was committed before the crash");
    }
    assert!(!run_dir.join("checkpoints/step-00000004").exists());
    let out = train(&cfg, &run_dir, true, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("at step 2"), "resumes from the last checkpoint, step 2: {err}");
    assert_every_step_trained_once(&run_dir);

    // An OS crash that loses the store's last commits but not the checkpoints written after them leaves the
    // store at version 4 with step-6 on disk.
    {
        let store = Store::open_in(&run_dir).unwrap();
        let run = store.find_run("train").unwrap().unwrap();
        store.rewind_to(run.id, 4).unwrap();
    }
    assert!(run_dir.join("checkpoints/step-00000006").exists());
    let out = train(&cfg, &run_dir, true, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("at step 4"), "resumes from the newest checkpoint the store agrees with: {err}");
    assert_every_step_trained_once(&run_dir);
}
