//! The executor on good and bad ideas: every implementation failure has a readable reason, hostile text is
//! harmless, and every run failure becomes a recorded cause with reward 0 (never a panic in the caller).

use ideator_envs::executor::{execute, execute_bytes, implement, run_recipe};
use ideator_envs::pretrain::Pretrain;
use ideator_envs::{EnvError, Knob};
use ideator_envs::{Environment, ExecResult, FailureCause, Recipe, RunContext, ScaleInfo, Schema, Status};
use std::collections::BTreeMap;

fn idea(changes: &str) -> String {
    format!("[Experiment]\nA test idea.\n[Code Changes]\n{changes}\n[End]")
}

fn reason(env: &dyn Environment, text: &str) -> String {
    match implement(env, text, "tiny") {
        Ok(r) => panic!("expected an implementation failure, got a recipe changing {:?}", r.changed),
        Err(e) => e.reason,
    }
}

#[test]
fn a_good_idea_becomes_a_complete_recipe_with_its_category() {
    let env = Pretrain::new();
    let text = idea("lr = 3e-3\nwarmup_frac = 0.05\npos_encoding = \"rope\"\nnorm = \"layernorm\"");
    let recipe = implement(&env, &text, "tiny").unwrap();
    assert_eq!(recipe.f("lr"), 3e-3);
    assert_eq!(recipe.s("pos_encoding"), "rope");
    // All knobs are present, defaults filled in.
    let schema = env.schema("tiny").unwrap();
    assert_eq!(recipe.values.len(), schema.knobs.len());
    assert_eq!(recipe.i("n_layer"), 4);
    // `norm` was set to its default: set, but not a change (not part of the category).
    assert!(recipe.is_set("norm"));
    let category: Vec<&str> = recipe.changed.iter().map(String::as_str).collect();
    assert_eq!(category, ["lr", "pos_encoding", "warmup_frac"]);
    assert_eq!(recipe.idea, text);
}

#[test]
fn lenient_about_case_fences_comments_and_int_for_float() {
    let env = Pretrain::new();
    let text = "Some preamble the model wrote.\n[EXPERIMENT]\nWhy.\n[code changes]\n```toml\n# a comment\nlr = 1\n```\n[end]\ntrailing";
    let recipe = implement(&env, text, "tiny").unwrap();
    assert_eq!(recipe.f("lr"), 1.0);
}

#[test]
fn unknown_knob_names_the_closest_known_one() {
    let env = Pretrain::new();
    let r = reason(&env, &idea("learning_rat = 3e-3"));
    assert!(r.contains("unknown knob `learning_rat`"), "{r}");
    let r = reason(&env, &idea("warmup_fraction = 0.1"));
    assert!(r.contains("did you mean `warmup_frac`?"), "{r}");
    let r = reason(&env, &idea("pos_encodng = \"rope\""));
    assert!(r.contains("did you mean `pos_encoding`?"), "{r}");
}

#[test]
fn out_of_range_and_wrong_types_are_explained() {
    let env = Pretrain::new();
    let r = reason(&env, &idea("lr = 5.0"));
    assert!(r.contains("out of range") && r.contains("lr"), "{r}");
    let r = reason(&env, &idea("n_layer = 2.5"));
    assert!(r.contains("`n_layer` must be int in [1, 48]"), "{r}");
    let r = reason(&env, &idea("qk_norm = \"yes\""));
    assert!(r.contains("`qk_norm` must be true or false"), "{r}");
    let r = reason(&env, &idea("activation = \"swiglo\""));
    assert!(r.contains("did you mean \"swiglu\"?"), "{r}");
    let r = reason(&env, &idea("lr = [1, 2]"));
    assert!(r.contains("only numbers, true/false and quoted strings"), "{r}");
    let r = reason(&env, &idea("lr = nan"));
    assert!(r.contains("out of range"), "{r}");
    // Several problems are listed together.
    let r = reason(&env, &idea("lr = 5.0\nfoo = 1"));
    assert!(r.contains("lr") && r.contains("foo"), "{r}");
}

#[test]
fn missing_sections_and_empty_changes() {
    let env = Pretrain::new();
    assert!(reason(&env, "lr = 3e-3").contains("[Experiment]"));
    assert!(reason(&env, "[Experiment] x\nlr = 3e-3\n[End]").contains("[Code Changes]"));
    assert!(reason(&env, "[Experiment] x [Code Changes]\nlr = 3e-3").contains("[End]"));
    // Markers in the wrong order.
    assert!(reason(&env, "[Code Changes]\nlr = 1e-3\n[Experiment]\nx\n[End]").contains("[Code Changes]"));
    assert!(reason(&env, &idea("")).contains("empty"));
    assert!(reason(&env, &idea("# only a comment\n```\n```")).contains("empty"));
    let r = reason(&env, &idea("lr: 3e-3"));
    assert!(r.contains("not valid `key = value` TOML"), "{r}");
    let r = reason(&env, &idea("lr = 1e-3\nlr = 2e-3"));
    assert!(r.contains("not valid"), "{r}");
}

#[test]
fn conflicting_knobs_are_rejected_with_the_reason() {
    let env = Pretrain::new();
    let cases = [
        ("muon_lr = 0.05", "only has an effect with optimizer = \"muon\""),
        ("optimizer = \"adamw\"\nmomentum = 0.8", "only has an effect with optimizer"),
        ("rope_base = 500.0", "pos_encoding = \"rope\""),
        ("cooldown_frac = 0.3", "schedule = \"wsd\""),
        ("schedule = \"constant\"\nmin_lr_frac = 0.0", "schedule = \"cosine\""),
        ("d_model = 100\nn_head = 3", "not divisible by n_head"),
        ("pos_encoding = \"rope\"\nd_model = 96\nn_head = 32", "even head dimension"),
        ("warmup_frac = 1.0", "as long as the whole run"),
        ("schedule = \"wsd\"\nwarmup_frac = 0.6\ncooldown_frac = 0.5", "overlap"),
        ("zero_init_head = true", "tied_embeddings"),
    ];
    for (changes, expected) in cases {
        let r = reason(&env, &idea(changes));
        assert!(r.contains("conflicting knobs") && r.contains(expected), "{changes:?} -> {r}");
    }
    // The same knobs are fine together with what they need.
    for ok in [
        "optimizer = \"muon\"\nmuon_lr = 0.05",
        "pos_encoding = \"rope\"\nrope_base = 500.0",
        "schedule = \"wsd\"\ncooldown_frac = 0.3\nwarmup_frac = 0.1",
        "zero_init_head = true\ntied_embeddings = false",
    ] {
        implement(&env, &idea(ok), "tiny").unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

#[test]
fn hostile_text_is_only_ever_data() {
    let env = Pretrain::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let shell = format!("activation = \"$(touch {m}); `touch {m}`; rm -rf /\"", m = marker.display());
    let r = reason(&env, &idea(&shell));
    assert!(r.contains("activation") && r.contains("is not allowed"), "{r}");
    let r = reason(&env, &idea("norm = \"../../../../etc/passwd\""));
    assert!(r.contains("is not allowed"), "{r}");
    assert!(!marker.exists());
    // Long values and keys are clipped in the reason, so a hostile idea cannot flood logs.
    let long = "x".repeat(3000);
    let r = reason(&env, &idea(&format!("norm = \"{long}\"")));
    assert!(r.len() < 400, "reason is {} bytes", r.len());
    let r = reason(&env, &idea(&format!("{} = 1", "k".repeat(1000))));
    assert!(r.len() < 400, "reason is {} bytes", r.len());
    // Huge ideas and huge sections are refused before parsing.
    let r = reason(&env, &idea(&format!("# {}\nlr = 1e-3", "y".repeat(100_000))));
    assert!(r.contains("at most"), "{r}");
    let many: String = (0..3000).map(|i| format!("k{i} = {i}\n")).collect();
    assert!(reason(&env, &idea(&many)).contains("at most"));
    let lines: String = (0..100).map(|i| format!("k{i} = 1\n")).collect();
    assert!(reason(&env, &idea(&lines)).contains("at most 64"));
}

#[test]
fn invalid_utf8_and_oversized_files_are_implementation_failures() {
    let env = Pretrain::new();
    let ctx = RunContext::new("tiny", 0, std::env::temp_dir());
    let mut bytes = idea("lr = 1e-3").into_bytes();
    bytes.insert(20, 0xff);
    let r = execute_bytes(&env, &bytes, &ctx);
    assert_eq!(r.cause, Some(FailureCause::Implementation));
    assert!(r.message.contains("not valid UTF-8") && r.message.contains("offset 20"), "{}", r.message);
    assert_eq!(r.reward, 0.0);
    let big = vec![b'a'; 200_000];
    let r = execute_bytes(&env, &big, &ctx);
    assert_eq!(r.cause, Some(FailureCause::Implementation));
    assert!(r.message.contains("at most"));
}

/// An environment whose run does whatever the test says (to reach every failure path quickly).
struct Scripted {
    behaviour: fn(&Recipe) -> ExecResult,
}

impl Environment for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn description(&self) -> String {
        "test".into()
    }
    fn scales(&self) -> Vec<ScaleInfo> {
        vec![ScaleInfo { name: "tiny".into(), doc: "test".into() }]
    }
    fn schema(&self, scale: &str) -> Result<Schema, EnvError> {
        self.check_scale(scale)?;
        Ok(Schema::new(vec![Knob::float("x", 0.0, 10.0, false, 1.0, "a number")]))
    }
    fn plausible_reward(&self, _scale: &str) -> (f64, f64) {
        (0.0, 1.0)
    }
    fn example_idea(&self) -> String {
        idea("x = 2.0")
    }
    fn run(&self, recipe: &Recipe, _ctx: &RunContext) -> ExecResult {
        (self.behaviour)(recipe)
    }
}

#[test]
fn panics_become_runtime_errors_and_implausible_rewards_score_zero() {
    let ctx = RunContext::new("tiny", 0, std::env::temp_dir());
    let panicking = Scripted { behaviour: |_| panic!("boom in the training loop") };
    let r = execute(&panicking, &idea("x = 2.0"), &ctx);
    assert_eq!((r.status, r.cause, r.reward), (Status::Failed, Some(FailureCause::RuntimeError), 0.0));
    assert!(r.message.contains("boom in the training loop"));

    let hacked = Scripted { behaviour: |r| ExecResult::ok(r.f("x"), BTreeMap::new(), "") };
    let r = execute(&hacked, &idea("x = 5.0"), &ctx);
    assert_eq!((r.cause, r.reward), (Some(FailureCause::Implausible), 0.0));
    assert_eq!(r.metrics["implausible_reward"], 5.0);
    let r = execute(&hacked, &idea("x = 0.5"), &ctx);
    assert_eq!((r.status, r.reward), (Status::Ok, 0.5));
    assert_eq!(r.changed, ["x"]);

    let nan = Scripted { behaviour: |_| ExecResult::ok(f64::NAN, BTreeMap::new(), "") };
    assert_eq!(execute(&nan, &idea("x = 1.0"), &ctx).cause, Some(FailureCause::Implausible));

    // A failure that claims a reward still scores 0.
    let sloppy = Scripted {
        behaviour: |_| {
            let mut r = ExecResult::failed(FailureCause::NonFiniteLoss, "nan");
            r.reward = 0.9;
            r
        },
    };
    let r = run_recipe(&sloppy, &Recipe::baseline(&sloppy.schema("tiny").unwrap()), &ctx);
    assert_eq!((r.cause, r.reward), (Some(FailureCause::NonFiniteLoss), 0.0));
}

#[test]
fn result_json_has_the_documented_shape() {
    let r = ExecResult::failed(FailureCause::OutOfBudget, "too big");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["cause"], "out_of_budget");
    assert_eq!(v["reward"], 0.0);
    for cause in [
        FailureCause::Implementation,
        FailureCause::RuntimeError,
        FailureCause::NonFiniteLoss,
        FailureCause::TimeLimit,
        FailureCause::OutOfBudget,
        FailureCause::OutOfMemory,
        FailureCause::Implausible,
        FailureCause::Infrastructure,
    ] {
        assert_eq!(FailureCause::parse(cause.as_str()), Some(cause));
    }
}

#[test]
fn pretrain_budget_and_memory_guards_fail_before_training() {
    let env = Pretrain::new();
    let ctx = RunContext::new("tiny", 0, std::env::temp_dir());
    let r = execute(&env, &idea("n_layer = 24\nd_model = 1024\nn_head = 16"), &ctx);
    assert_eq!(r.cause, Some(FailureCause::OutOfBudget), "{}", r.message);
    let r = execute(&env, &idea("n_layer = 8\nd_model = 384\nn_head = 8"), &ctx);
    assert_eq!(r.cause, Some(FailureCause::OutOfBudget), "{}", r.message);
    assert!(r.message.contains("steps"), "{}", r.message);
    let r = execute(&env, &idea("batch_size = 1024\nseq_len = 2048"), &ctx);
    assert_eq!(r.cause, Some(FailureCause::OutOfMemory), "{}", r.message);
    assert!(r.seconds < 5.0, "guards must not train (took {} s)", r.seconds);
}

#[test]
fn pretrain_schema_is_coherent_at_every_scale() {
    let env = Pretrain::new();
    for s in env.scales() {
        let schema = env.schema(&s.name).unwrap();
        schema.validate().unwrap();
        env.check_conflicts(&env.baseline(&s.name).unwrap(), &s.name).unwrap();
        implement(&env, &env.example_idea(), &s.name).unwrap();
    }
    assert!(matches!(env.schema("huge"), Err(EnvError::UnknownScale { .. })));
}
