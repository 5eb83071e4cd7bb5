//! Supervised warm-up, evaluation and merging end to end through the binary, on the default SmolLM2 with tiny
//! settings: an SFT run writes metrics and a verified checkpoint, resumes as complete, `merge` writes a folder
//! whose model equals base + adapters, and `eval` executes sampled ideas.

mod common;
use common::run_ideator;

use std::path::Path;

use serde_json::Value;

fn logprobs(model: &str, text: &str) -> Vec<f64> {
    let (ok, out, err) = run_ideator(&["logprobs", "--model", model, "--text", text, "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn sft_then_merge_then_eval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let examples = d.join("examples.jsonl");
    let (ok, _, err) =
        run_ideator(&["env", "examples", "toy", "--n", "6", "--seed", "3", "--out", examples.to_str().unwrap()]);
    assert!(ok, "{err}");
    let config = d.join("sft.toml");
    std::fs::write(
        &config,
        "[train]\nmode = \"lora\"\n[train.lora]\nrank = 4\nalpha = 8\ntargets = [\"q\", \"v\"]\n\
         [optim]\nlr = 1e-3\n[sft]\ndata = \"examples.jsonl\"\nepochs = 1\nbatch_size = 3\nmicro_batch = 3\n\
         eval_fraction = 0.0\ncheckpoint_every = 100\n[run]\ndir = \"run\"\n",
    )
    .unwrap();
    let (ok, out, err) = run_ideator(&["sft", "--config", config.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["steps"], 2);
    let run = d.join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    let ckpt = run.join("checkpoints").join("step-00000002");
    assert!(ckpt.join("manifest.json").is_file());

    // A fresh run in a folder with checkpoints is refused; --resume of a finished run does nothing.
    let (ok, _, err) = run_ideator(&["sft", "--config", config.to_str().unwrap()]);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, out, err) = run_ideator(&["sft", "--config", config.to_str().unwrap(), "--resume"]);
    assert!(ok && out.contains("already complete"), "{out}{err}");
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), metrics);

    // The merged folder is the base model with the adapters folded in: it differs from the base and loads.
    let merged = d.join("merged");
    let (ok, _, err) =
        run_ideator(&["merge", "--checkpoint", run.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(ok, "{err}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(Path::new(&merged).join(f).is_file(), "{f}");
    }
    let text = "[Experiment]\nUse a cosine schedule.\n[Code Changes]\nschedule = \"cosine\"\n[End]";
    let base = logprobs(ideator_model::assets::default_gguf_path().to_str().unwrap(), text);
    let tuned = logprobs(merged.to_str().unwrap(), text);
    assert_eq!(base.len(), tuned.len());
    let moved: f64 = base.iter().zip(&tuned).map(|(a, b)| (a - b).abs()).sum::<f64>() / base.len() as f64;
    assert!(moved > 1e-3, "the warm-up changed nothing (mean |diff| {moved})");
    // The merged model is the trained policy: the format tokens it learned are more likely than under the base.
    assert!(tuned.iter().sum::<f64>() > base.iter().sum::<f64>());

    let (ok, out, err) = run_ideator(&[
        "eval",
        "--env",
        "toy",
        "--checkpoint",
        run.to_str().unwrap(),
        "--n",
        "3",
        "--max-new-tokens",
        "40",
        "--no-embeddings",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(v["n"], 3);
    let rate = v["diagnostics"]["execution_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate));
    assert_eq!(v["diagnostics"]["max_at_k"].as_array().unwrap().last().unwrap()["k"], 3);
}
