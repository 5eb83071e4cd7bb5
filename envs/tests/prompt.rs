//! The ideator prompt and the warm-up examples come from the schema, and every example is an executable idea.

use ideator_envs::executor::implement;
use ideator_envs::pretrain::Pretrain;
use ideator_envs::prompt::{examples, ideator_prompt, to_jsonl};
use ideator_envs::Environment;
use std::collections::BTreeSet;

#[test]
fn prompt_holds_task_every_knob_format_and_example() {
    let env = Pretrain::new();
    let prompt = ideator_prompt(&env, "tiny").unwrap();
    for knob in env.schema("tiny").unwrap().knobs {
        assert!(prompt.contains(&format!("`{}`", knob.name)), "prompt lacks {}", knob.name);
    }
    for marker in ["[Experiment]", "[Code Changes]", "[End]", "1 / validation loss", "pos_encoding = \"rope\""] {
        assert!(prompt.contains(marker), "prompt lacks {marker}");
    }
    // The defaults shown are the scale's baseline.
    let paper = ideator_prompt(&env, "paper").unwrap();
    assert!(paper.contains("| `d_model` | int in [16, 2048] | `768` |"));
}

#[test]
fn examples_are_valid_varied_and_reproducible() {
    let env = Pretrain::new();
    let n = 60;
    let ex = examples(&env, "tiny", n, 7).unwrap();
    assert_eq!(ex.len(), n);
    let mut categories = BTreeSet::new();
    let mut knobs_used = BTreeSet::new();
    let mut distinct = BTreeSet::new();
    for e in &ex {
        assert_eq!(e.messages.len(), 3);
        assert_eq!(e.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant"]);
        let recipe = implement(&env, e.idea(), "tiny").unwrap_or_else(|err| panic!("{}\n-> {err}", e.idea()));
        assert!(!recipe.changed.is_empty());
        let experiment = e.idea().split("[Code Changes]").next().unwrap();
        assert!(experiment.len() > "[Experiment]\n".len() + 20, "no rationale in {}", e.idea());
        knobs_used.extend(recipe.changed.iter().cloned());
        categories.insert(recipe.changed.clone());
        distinct.insert(recipe.changes_toml());
    }
    assert_eq!(distinct.len(), n, "examples repeat");
    assert!(categories.len() >= n / 2, "only {} categories", categories.len());
    assert!(knobs_used.len() >= 20, "only {} knobs used", knobs_used.len());
    assert_eq!(ex, examples(&env, "tiny", n, 7).unwrap());
    assert_ne!(ex, examples(&env, "tiny", n, 8).unwrap());

    let jsonl = to_jsonl(&ex[..3]);
    let lines: Vec<&str> = jsonl.lines().collect();
    assert_eq!(lines.len(), 3);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["messages"][2]["role"], "assistant");
    assert_eq!(v["messages"][1]["content"], ideator_prompt(&env, "tiny").unwrap());
}
