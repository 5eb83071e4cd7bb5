//! The report's "Code ideas" section from a real run store: ideas with known diffs are executed in the example
//! codebase environment (examples/codebase_env), their results stored with the store API as two RL steps, and
//! `ideator report` must show the applied and ran rates and the touched code per step and overall.

mod common;
use common::ideator;

use std::path::Path;
use std::process::Command;

use ideator_envs::codebase::CodebaseEnv;
use ideator_envs::executor::execute;
use ideator_envs::{ExecResult, FailureCause, RunContext, Status};
use ideator_rollout::pipeline::record::RewardStats;
use ideator_rollout::pipeline::StepRecord;
use ideator_rollout::store::{NewGroup, NewIdea, RunKind, Store};
use serde_json::{json, Value};

fn python_available() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("!!! python3 is not available: SKIPPING the code-idea report test !!!");
    }
    ok
}

/// An idea whose `[Code Changes]` is `diff`.
fn idea(diff: &str) -> String {
    format!("[Experiment]\nA test change.\n[Code Changes]\n{diff}[End]\n")
}

/// One hunk replacing line `line` of train.py (`old`) by `new`, with the line after it as context.
fn one_line_diff(line: usize, old: &str, new: &str, after: &str) -> String {
    format!("--- a/train.py\n+++ b/train.py\n@@ -{line},2 +{line},2 @@\n-{old}\n+{new}\n {after}\n")
}

fn wider() -> String {
    idea(&one_line_diff(13, "HIDDEN = 8", "HIDDEN = 32", "ACTIVATION = \"tanh\""))
}
fn slower() -> String {
    idea(&one_line_diff(11, "LR = 0.1", "LR = 0.05", "EPOCHS = 30"))
}
/// Applies, then crashes: `range("eight")`.
fn crashing() -> String {
    idea(&one_line_diff(13, "HIDDEN = 8", "HIDDEN = \"eight\"", "ACTIVATION = \"tanh\""))
}
/// Does not apply: train.py has no `HIDDEN = 16`.
fn stale() -> String {
    idea(&one_line_diff(13, "HIDDEN = 16", "HIDDEN = 32", "ACTIVATION = \"tanh\""))
}
/// Not even in the idea format: the executor's parse fails before the environment sees it.
fn garbled() -> String {
    "Make the network wider, with more hidden units.".to_string()
}

/// Stores `ideas` with their real results as the group of RL step `step`.
fn store_step(store: &Store, run: i64, prompt: i64, step: u64, ideas: &[(String, ExecResult)]) {
    let group = store
        .insert_group(
            run,
            &NewGroup {
                seq: step,
                prompt_id: prompt,
                policy_version: step,
                sample_seconds: 1.0,
                temperature: 1.0,
                ideas: ideas
                    .iter()
                    .map(|(text, _)| NewIdea {
                        text: text.clone(),
                        token_ids: vec![1, 2, 3],
                        logprobs: vec![-0.5; 3],
                        finish_reason: "stop".into(),
                        seed: 7,
                        reference: false,
                    })
                    .collect(),
            },
        )
        .unwrap();
    for (row, (_, result)) in group.ideas.iter().zip(ideas) {
        assert!(store.finish_idea(row.id, 1, result).unwrap());
    }
    let rewards: Vec<f64> = ideas.iter().map(|(_, r)| r.reward).collect();
    let ok = ideas.iter().filter(|(_, r)| r.status == Status::Ok).count() as f64;
    store
        .record_step(
            run,
            step,
            &[(group.id, 0)],
            &StepRecord {
                step,
                rewards: RewardStats { execution_rate: ok / rewards.len() as f64, ..RewardStats::of(&rewards) },
                ..Default::default()
            },
        )
        .unwrap();
}

fn rate(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn the_report_shows_applied_and_ran_rates_and_touched_code_per_step() {
    if !python_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/codebase_env/codebase.toml");
    let env = CodebaseEnv::from_file(&example).unwrap();
    let exec = |name: &str, text: String| {
        let r = execute(&env, &text, &RunContext::new("tiny", 7, tmp.path().join("work").join(name)));
        (text, r)
    };
    let step0 = vec![exec("wider", wider()), exec("stale", stale()), exec("garbled", garbled())];
    let step1 = vec![exec("slower", slower()), exec("crashing", crashing()), exec("stale-again", stale())];
    // The executions themselves, so that a failure below is the report's, not the environment's.
    let status = |r: &ExecResult| (r.status, r.cause);
    assert_eq!(status(&step0[0].1), (Status::Ok, None), "{}", step0[0].1.message);
    assert_eq!(status(&step0[1].1), (Status::Failed, Some(FailureCause::Implementation)));
    assert_eq!(status(&step0[2].1), (Status::Failed, Some(FailureCause::Implementation)));
    assert_eq!(step0[2].1.metrics.get("applied"), Some(&0.0), "an idea that did not parse did not apply either");
    assert_eq!(status(&step1[0].1), (Status::Ok, None), "{}", step1[0].1.message);
    assert_eq!(status(&step1[1].1), (Status::Failed, Some(FailureCause::RuntimeError)), "{}", step1[1].1.message);

    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    {
        let store = Store::open_in(&run_dir).unwrap();
        let run = store.open_run("train", RunKind::Rl, "codebase", "tiny", 7).unwrap().id;
        let prompt = store.intern_prompt(run, "propose a diff", &[1, 2]).unwrap();
        store_step(&store, run, prompt, 0, &step0);
        store_step(&store, run, prompt, 1, &step1);
    }

    let out = ideator().args(["report", "--json"]).arg(&run_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let code = &summary["code_ideas"];
    assert_eq!(code.as_array().map(Vec::len), Some(1), "one RL series of code ideas: {code}");
    let overall = &code[0]["overall"];
    assert_eq!(overall["n_ideas"], 6);
    assert_eq!(rate(overall, "applied_rate"), 0.5, "wider, slower and crashing applied");
    assert_eq!(rate(overall, "ran_rate"), 2.0 / 6.0, "wider and slower ran");
    assert_eq!(rate(overall, "mean_diff_lines"), 2.0, "each applied diff changes one line (1 added + 1 removed)");
    assert!(overall["mean_repair_attempts"].is_null(), "direct diffs have no implementer");
    // Categories: the code units each applied diff touched, kept by the store with the result.
    let shares: Vec<(String, u64)> = overall["categories"]["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["label"].as_str().unwrap().to_string(), s["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(shares, [("train.py:HIDDEN".to_string(), 2), ("train.py:LR".to_string(), 1)]);
    assert_eq!(overall["categories"]["n_uncategorised"], 3, "the ideas whose diff did not apply");

    let points = code[0]["points"].as_array().unwrap();
    let per_step: Vec<(u64, f64, f64)> = points
        .iter()
        .map(|p| (p["index"].as_u64().unwrap(), rate(&p["stats"], "applied_rate"), rate(&p["stats"], "ran_rate")))
        .collect();
    assert_eq!(per_step, [(0, 1.0 / 3.0, 1.0 / 3.0), (1, 2.0 / 3.0, 1.0 / 3.0)]);

    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    let section = &html[html.find("<section id=\"code-ideas\">").expect("a Code ideas section")..];
    let section = &section[..section.find("</section>").unwrap()];
    for chart in ["code-rates-rl", "code-categories-rl"] {
        assert!(section.contains(&format!("data-chart=\"{chart}\"")), "chart {chart} missing");
    }
    assert!(section.contains("<td class=\"num\">3 of 6 (50%)</td>"), "overall applied rate");
    assert!(section.contains("<td class=\"num\">2 of 6 (33%)</td>"), "overall ran rate");
    assert!(section.contains("train.py:HIDDEN ×2, train.py:LR ×1"), "most touched code");
    assert!(section.contains("<td class=\"num\">step 1</td>"), "a row per step");
}

#[test]
fn a_run_without_code_ideas_has_no_code_section() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    {
        let store = Store::open_in(&run_dir).unwrap();
        let run = store.open_run("train", RunKind::Rl, "toy", "tiny", 7).unwrap().id;
        let prompt = store.intern_prompt(run, "propose knobs", &[1, 2]).unwrap();
        let result = ExecResult::ok(0.5, [("val_loss".to_string(), 2.0)].into(), "fine");
        store_step(&store, run, prompt, 0, &[("[Experiment]\nx\n[Code Changes]\nlr = 1e-3\n[End]".into(), result)]);
    }
    let out = ideator().args(["report", "--json"]).arg(&run_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["code_ideas"], json!([]));
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(!html.contains("<section id=\"code-ideas\">"));
}
