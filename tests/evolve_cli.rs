//! `ideator evolve`, `eval`, `compare` and `report` through the binary, on the default SmolLM2 with tiny settings
//! and the instant toy environment:
//! - an evolution killed (SIGKILL) in the middle of an epoch resumes at that epoch and builds exactly the prompts,
//!   ideas and rewards of an uninterrupted run;
//! - a second identical evaluation is read from the run store and executes nothing;
//! - one store holding an RL run and an evolution compares and reports both; inputs on another environment are
//!   refused.

mod common;
use common::ideator;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ideator_rollout::pipeline::StepRecord;
use ideator_rollout::store::{GroupStatus, RunKind, Store};
use serde_json::Value;

/// Runs the binary; panics with its stderr if it fails; returns the last line of stdout as JSON.
fn run_json(args: &[&str]) -> Value {
    let out = ideator().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ideator {args:?} failed:\n{}{stdout}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

const PROMPTS: usize = 3;

fn evolve_config(dir: &Path, epochs: u64) -> PathBuf {
    let path = dir.join("evolve.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[sampling]
temperature = 1.0
max_new_tokens = 12
batch_size = 2
[env]
name = "toy"
[evolve]
epochs = {epochs}
prompts_per_epoch = {PROMPTS}
ideas_per_prompt = 2
exploit_ideas = 2
explore_ideas = 4
max_idea_chars = 200
[backend]
kind = "local"
slots = 2
threads_per_run = 1
[diagnostics]
embeddings = false
[run]
seed = 5
"#
        ),
    )
    .unwrap();
    path
}

/// (group seq, prompt text, idea text, reward) of every trained idea of the evolution, in order.
fn history(run_dir: &Path) -> Vec<(u64, String, String, f64)> {
    let store = Store::open_in(run_dir).unwrap();
    let run = store.find_run("evolve").unwrap().unwrap().id;
    let mut out = Vec::new();
    for g in store.groups_with_status(run, &[GroupStatus::Trained]).unwrap() {
        let prompt = store.prompt_text(g.prompt_id).unwrap();
        for i in &g.ideas {
            out.push((g.seq, prompt.clone(), i.text.clone(), i.result.as_ref().unwrap().reward));
        }
    }
    out
}

#[test]
fn an_evolution_killed_mid_epoch_resumes_at_that_epoch_with_the_same_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = evolve_config(dir.path(), 3);
    let cfg = cfg.to_str().unwrap();

    let straight = dir.path().join("straight");
    let summary = run_json(&["evolve", "--json", "--config", cfg, "--run-dir", straight.to_str().unwrap()]);
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["resumed_at_epoch"], 0);

    // Kill the second run as soon as a prompt of epoch 1 is stored (the epoch is then cut short).
    let killed = dir.path().join("killed");
    let log = std::fs::File::create(dir.path().join("killed.log")).unwrap();
    let mut child = ideator()
        .args(["evolve", "--json", "--config", cfg, "--run-dir", killed.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let epoch_at_kill = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("killed.log")).unwrap_or_default();
            panic!("the evolution ended ({status}) before a prompt of epoch 1 was stored; its stderr:\n{log}");
        }
        // Only once the evolution has created its store: opening creates a missing one.
        if !killed.join("store.sqlite").exists() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if let Ok(store) = Store::open_in(&killed) {
            if let Some(run) = store.find_run("evolve").unwrap() {
                if store.next_group_seq(run.id).unwrap() > PROMPTS as u64 {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    break store.steps(run.id).unwrap().len() as u64;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(epoch_at_kill >= 1);

    let summary = run_json(&["evolve", "--json", "--resume", "--config", cfg, "--run-dir", killed.to_str().unwrap()]);
    assert_eq!(summary["resumed_at_epoch"], epoch_at_kill, "{summary}");
    assert!(summary["resumed_prompts"].as_u64().unwrap() >= 1, "the kill did not cut an epoch short: {summary}");
    assert_eq!(summary["mismatched_prompts"], 0, "{summary}");
    assert_eq!(summary["steps"], 3);
    let (a, b) = (history(&straight), history(&killed));
    assert_eq!(a.len(), 3 * PROMPTS * 2);
    assert_eq!(a, b, "the resumed search built other prompts or ideas than the uninterrupted one");
    // Epoch 1 prompts list earlier ideas; the second one ends with the two ideas of the first to avoid.
    let (_, first, _, _) = &a[PROMPTS * 2];
    assert!(first.contains("These ideas were tried") && !first.contains("Avoid ideas"), "{first}");
    let (_, second, _, _) = &a[(PROMPTS + 1) * 2];
    let tail = &second[second.find("Avoid ideas similar to these").expect(second)..];
    assert!(tail.contains("Proposed idea 2:") && !tail.contains("Proposed idea 3:"), "{second}");
    // A finished search resumed again does nothing.
    let again = run_json(&["evolve", "--json", "--resume", "--config", cfg, "--run-dir", killed.to_str().unwrap()]);
    assert_eq!(again["executions"], 0);
    assert_eq!(history(&killed), b);
    // Starting over in a folder that holds a search is refused.
    let out = ideator().args(["evolve", "--config", cfg, "--run-dir", killed.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--resume"));
}

fn attempts(run_dir: &Path) -> usize {
    let store = Store::open_in(run_dir).unwrap();
    store.runs().unwrap().iter().map(|r| store.attempts_of_run(r.id).unwrap().len()).sum()
}

#[test]
fn a_second_identical_eval_executes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("evals");
    let args = |seed: &'static str| -> Vec<String> {
        ["eval", "--env", "toy", "--n", "5", "--batch-size", "2", "--max-new-tokens", "12", "--seed", seed]
            .iter()
            .map(|s| s.to_string())
            .chain(["--no-embeddings".into(), "--json".into(), "--run-dir".into(), run_dir.display().to_string()])
            .collect()
    };
    let first_args = args("7");
    let first = run_json(&first_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(first["reused"], false);
    assert_eq!(first["executed_now"], 5);
    assert_eq!(attempts(&run_dir), 5);

    let second = run_json(&first_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(second["reused"], true);
    assert_eq!(second["executed_now"], 0);
    assert_eq!(second["run"], first["run"]);
    assert_eq!(second["diagnostics"], first["diagnostics"]);
    assert_eq!(attempts(&run_dir), 5, "the second evaluation launched executions");

    // Another seed is another evaluation, in the same store.
    let other_args = args("8");
    let other = run_json(&other_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(other["reused"], false);
    assert_ne!(other["run"], first["run"]);
    assert_eq!(attempts(&run_dir), 10);
}

const TRAIN: &str = r#"
[train]
mode = "lora"
[train.lora]
rank = 4
alpha = 8
[optim]
lr = 1e-3
[grpo]
group_size = 3
micro_batch = 3
beta = 0.0
[sampling]
temperature = 1.0
max_new_tokens = 12
batch_size = 3
[env]
name = "toy"
[rl]
steps = 2
groups_per_step = 2
checkpoint_every = 2
[pipeline]
max_inflight_groups = 2
max_staleness = 0
[backend]
kind = "local"
slots = 2
threads_per_run = 1
[diagnostics]
embeddings = false
[run]
seed = 5
"#;

#[test]
fn compare_and_report_show_an_rl_run_and_an_evolution_of_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let rd = run_dir.to_str().unwrap();
    let train_cfg = dir.path().join("train.toml");
    std::fs::write(&train_cfg, TRAIN).unwrap();
    // RL: 2 steps x 2 groups x 3 ideas = 12 executions; evolution: 2 epochs x 3 prompts x 2 ideas = 12.
    run_json(&["train", "--json", "--config", train_cfg.to_str().unwrap(), "--run-dir", rd]);
    let evolve_cfg = evolve_config(dir.path(), 2);
    run_json(&["evolve", "--json", "--config", evolve_cfg.to_str().unwrap(), "--run-dir", rd]);
    let ckpt = run_dir.join("checkpoints").join("step-00000002");
    let ckpt = ckpt.to_str().unwrap();
    let eval = run_json(&[
        "eval",
        "--env",
        "toy",
        "--checkpoint",
        ckpt,
        "--n",
        "4",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "12",
        "--no-embeddings",
        "--json",
    ]);
    assert_eq!(eval["run_dir"], rd, "the evaluation of a checkpoint goes to its run's store");

    let c = run_json(&["compare", rd, "--json"]);
    let rows = c["rows"].as_array().unwrap();
    let at = |kind: &str| -> Vec<String> {
        rows.iter().filter(|r| r["kind"] == kind).map(|r| r["at"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(at("RL"), ["step 0", "step 1"]);
    assert_eq!(at("evolution"), ["epoch 0", "epoch 1"]);
    assert_eq!(at("eval"), ["checkpoint run step 2"]);
    for r in rows {
        assert!(r["best_of_n"].as_f64().unwrap() >= r["mean"].as_f64().unwrap() - 1e-12, "{r}");
    }
    let last = |kind: &str| rows.iter().rfind(|r| r["kind"] == kind).unwrap()["executions"].as_u64().unwrap();
    assert_eq!((last("RL"), last("evolution"), last("eval")), (12, 12, 4));
    let totals = c["totals"].as_array().unwrap();
    assert_eq!(totals.len(), 3);
    assert_eq!(c["budget"], 4);
    assert!(c["baseline"].as_f64().is_some(), "the evolution's baseline is in the store");
    // Naming the checkpoint selects its evaluation alone.
    let c = run_json(&["compare", ckpt, "--json"]);
    assert_eq!(c["rows"].as_array().unwrap().len(), 1);

    // The report reads the store: both series, and the evaluation's max@k curve.
    let out = dir.path().join("report.html");
    let r = run_json(&["report", rd, "--out", out.to_str().unwrap(), "--json"]);
    let kinds: Vec<&str> = r["series"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rl", "evolution"]);
    assert_eq!(r["evaluations"].as_array().unwrap().len(), 1);
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("<svg") && html.contains("evolution") && html.contains("maxk-evaluations"));

    // A store with a run on another environment is refused unless asked for.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let store = Store::open_in(&other).unwrap();
    let run = store.open_run("train", RunKind::Rl, "pretrain", "tiny", 0).unwrap();
    store
        .record_step(
            run.id,
            0,
            &[],
            &StepRecord::from_json(&serde_json::json!({"step": 0, "reward_mean": 0.3, "reward_max": 0.4})),
        )
        .unwrap();
    let out = ideator().args(["compare", rd, other.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("different environments") && err.contains("--allow-mixed"),
        "{err}"
    );
    let c = run_json(&["compare", rd, other.to_str().unwrap(), "--allow-mixed", "--json"]);
    assert!(c["warnings"][0].as_str().unwrap().contains("different environments"));
}
