//! A run folder you can trust (issue 12), through the binary:
//! - numbers from flags and config keys are validated where parsed, with an error naming them (no panic);
//! - config errors leave nothing behind, and a later error marks the run failed with the error in its store;
//! - one writer per run folder: a second `train`, `evolve`, `sft` or `eval` is refused (after a 3 s grace period) naming the first,
//!   and after a SIGKILL of the first the folder opens again;
//! - an interrupted run exits 130 (SIGINT) or 143 (SIGTERM) after its clean stop;
//! - a run folder trained in one directory is moved, made read-only, and then evaluated, compared and reported
//!   from another directory, without a byte of it changing.
//!
//! The runs use the default SmolLM2 ideator with tiny settings and the instant toy environment.

mod common;
use common::ideator;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use ideator_rollout::store::Store;

fn run(args: &[&str]) -> Output {
    ideator().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}{}", stderr(out), String::from_utf8_lossy(&out.stdout));
}

/// A tiny RL config on the toy environment; `extra` is appended (later keys of a section must not repeat).
fn train_config(steps: u64, extra: &str) -> String {
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
steps = {steps}
groups_per_step = 1
checkpoint_every = 1
[pipeline]
max_inflight_groups = 1
max_staleness = 0
[backend]
kind = "local"
slots = 2
threads_per_run = 1
[diagnostics]
embeddings = false
{extra}
"#
    )
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Waits (up to a generous bound, so a slow machine does not fail the test) until `ready` holds.
fn wait_for(what: &str, child: &mut Child, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the writer ended ({status}) before {what}");
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the store in `run_dir` holds sampled ideas (read-only, as any reader would).
fn has_ideas(run_dir: &Path) -> bool {
    let Ok(store) = Store::open_read_only(&run_dir.join("store.sqlite")) else { return false };
    store.runs().is_ok_and(|runs| runs.iter().any(|r| store.ideas(r.id).is_ok_and(|i| !i.is_empty())))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn time_limits_and_counts_are_usage_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let idea = write(&dir.path().join("idea.md"), "[Experiment] x [Code Changes]\nlr = 0.1\n[End]\n");
    let idea = idea.to_str().unwrap();
    for bad in ["-1", "1e30", "nan", "inf", "0"] {
        for cmd in [
            vec!["exec", "--env", "toy", "--idea", idea],
            vec!["eval", "--env", "toy", "--n", "1", "--max-new-tokens", "8", "--run-dir", "unused"],
        ] {
            let mut args = cmd.clone();
            let flag = format!("--time-limit={bad}");
            args.push(&flag);
            let out = run(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} must be a usage error: {err}");
            assert!(err.contains("--time-limit") && !err.contains("panicked"), "{args:?}: {err}");
        }
    }
    assert!(!dir.path().join("unused").exists() && !Path::new("unused").exists());
    for (args, named) in [
        (vec!["sample", "--prompt", "hello", "--n", "0"], "--n"),
        (vec!["sample", "--prompt", "hello", "--batch-size", "0"], "--batch-size"),
        (vec!["eval", "--env", "toy", "--n", "0"], "--n"),
        (vec!["eval", "--env", "toy", "--slots", "0"], "--slots"),
        (vec!["eval", "--env", "toy", "--top-p", "nan"], "--top-p"),
        (vec!["--threads", "0", "env", "list"], "--threads"),
        (vec!["--activation-memory-gb", "nan", "env", "list"], "--activation-memory-gb"),
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert!(!out.status.success() && !err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: the error must name {named}: {err}");
    }
}

#[test]
fn a_missing_idea_file_is_a_usage_error_and_a_bad_idea_text_a_result() {
    let dir = tempfile::tempdir().unwrap();
    for missing in [dir.path().join("nope.md"), dir.path().to_path_buf()] {
        let out = run(&["exec", "--env", "toy", "--json", "--idea", missing.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&missing.display().to_string()), "the error names the path: {err}");
        assert!(out.stdout.is_empty(), "no result is printed for a usage error");
    }
    let idea = write(&dir.path().join("bad.md"), "no sections at all");
    let out = run(&["exec", "--env", "toy", "--json", "--idea", idea.to_str().unwrap()]);
    assert_ok(&out, "exec of a bad idea text");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["status"].as_str(), v["cause"].as_str()), (Some("failed"), Some("implementation")));
}

#[test]
fn config_errors_leave_no_run_folder_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = write(&dir.path().join("bad.jsonl"), "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    let sft = |extra: &str| format!("[sft]\ndata = \"{}\"\nepochs = 1\n{extra}", data.display());
    let evolve = "[env]\nname = \"toy\"\n[init]\ncheckpoint = \"no-such-sft\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        ("train", train_config(1, "[init]\ncheckpoint = \"no-such-sft\""), "no-such-sft"),
        ("train", train_config(1, "").replace("rank = 4", "rank = 0"), "lora.rank"),
        ("train", train_config(1, "").replace("lr = 1e-3", "lr = 1e-3\neps = nan"), "optim.eps = NaN"),
        ("train", train_config(1, "").replace("temperature = 1.0", "temperature = 0.0"), "sampling.temperature = 0"),
        (
            "train",
            train_config(1, "").replace("name = \"toy\"", "name = \"toy\"\ntime_limit_s = 1e30"),
            "env.time_limit_s",
        ),
        ("sft", sft(""), "bad.jsonl:1"),
        ("sft", sft("[optim]\nbeta1 = inf\n"), "optim.beta1 = inf"),
        ("evolve", evolve.to_string(), "no-such-sft"),
    ];
    for (i, (cmd, config, key)) in cases.iter().enumerate() {
        let cfg = write(&dir.path().join(format!("c{i}.toml")), config);
        let run_dir = dir.path().join(format!("run{i}"));
        let out = run(&[cmd, "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{cmd} case {i} was accepted");
        assert!(err.contains(key), "{cmd} case {i}: the error must name {key:?}: {err}");
        assert!(!run_dir.exists(), "{cmd} case {i} left {} behind", run_dir.display());
    }
}

#[test]
fn a_run_stopped_by_a_later_error_is_marked_failed_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // The model is loaded after the run folder exists (its spec cannot be checked without loading it).
    let missing = dir.path().join("missing.gguf");
    let cfg = write(
        &dir.path().join("train.toml"),
        &train_config(1, &format!("[model]\nspec = \"{}\"", missing.display())),
    );
    let run_dir = dir.path().join("run");
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let store = Store::open_read_only(&run_dir.join("store.sqlite")).unwrap();
    let info = store.find_run("train").unwrap().unwrap();
    assert_eq!(info.status, ideator_rollout::store::RunStatus::Failed);
    let error = info.error.unwrap();
    assert!(error.contains("missing.gguf"), "{error}");
    assert!(stderr(&out).contains(&error), "the store holds the error the user saw");
}

#[test]
fn one_writer_per_run_folder_and_a_killed_writer_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let rd = run_dir.to_str().unwrap();
    let cfg = write(&dir.path().join("train.toml"), &train_config(50, ""));
    let mut first = ideator()
        .args(["train", "--json", "--config", cfg.to_str().unwrap(), "--run-dir", rd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first writer sampled ideas", &mut first, || has_ideas(&run_dir));
    let holder = format!("pid {}", first.id());
    let data = write(
        &dir.path().join("sft.jsonl"),
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n",
    );
    let sft = write(&dir.path().join("sft.toml"), &format!("[sft]\ndata = \"{}\"\n", data.display()));
    let evolve = write(&dir.path().join("evolve.toml"), "[env]\nname = \"toy\"\n");
    let writers: [Vec<&str>; 4] = [
        vec!["train", "--config", cfg.to_str().unwrap(), "--run-dir", rd, "--resume"],
        vec!["evolve", "--config", evolve.to_str().unwrap(), "--run-dir", rd],
        vec!["sft", "--config", sft.to_str().unwrap(), "--run-dir", rd],
        vec!["eval", "--env", "toy", "--n", "2", "--max-new-tokens", "8", "--no-embeddings", "--run-dir", rd],
    ];
    for args in &writers {
        let out = run(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was let in");
        assert!(err.contains("in use by") && err.contains(&holder), "{args:?}: the error names the holder: {err}");
    }
    // Readers are not writers: they read the live store.
    assert_ok(&run(&["compare", rd, "--json"]), "compare during training");
    first.kill().unwrap();
    first.wait().unwrap();
    // The kernel dropped the lock with the process: the next writer gets past it (and stops at the run's own
    // check, which needs --resume; the lock file still names the dead process, which does not matter).
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--run-dir", rd]);
    let err = stderr(&out);
    assert!(!err.contains("in use by") && err.contains("--resume"), "{err}");
}

#[test]
fn an_interrupted_run_exits_with_the_shells_code_for_the_signal() {
    let help = run(&["train", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("130") && text.contains("143"), "--help documents the exit codes: {text}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir.path().join("train.toml"), &train_config(50, ""));
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let run_dir = dir.path().join(format!("run-{sig}"));
        let mut child = ideator()
            .args(["train", "--json", "--config", cfg.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the run sampled ideas", &mut child, || has_ideas(&run_dir));
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "signal {sig}");
        let summary: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(summary["interrupted"], true, "the clean stop ran: {summary}");
        let store = Store::open_read_only(&run_dir.join("store.sqlite")).unwrap();
        assert_eq!(store.find_run("train").unwrap().unwrap().status, ideator_rollout::store::RunStatus::Interrupted);
    }
}

/// Every file under `dir` with its size and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

fn set_read_only(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let is_dir = e.metadata().unwrap().is_dir();
            if is_dir {
                stack.push(e.path());
            }
            let mode = match (is_dir, read_only) {
                (true, true) => 0o555,
                (true, false) => 0o755,
                (false, true) => 0o444,
                (false, false) => 0o644,
            };
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let mode = if read_only { 0o555 } else { 0o755 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_moved_read_only_run_folder_is_evaluated_compared_and_reported_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    // A warm-up run, then RL starting from it through a relative [init] path, both started from `project`.
    write(&project.join("configs/warmup.toml"), &train_config(1, "[run]\ndir = \"../runs/warmup\""));
    write(
        &project.join("configs/rl.toml"),
        &train_config(1, "[init]\ncheckpoint = \"../runs/warmup\"\n[run]\ndir = \"../runs/rl\""),
    );
    for name in ["warmup", "rl"] {
        let out = ideator()
            .current_dir(&project)
            .args(["train", "--json", "--config", &format!("configs/{name}.toml")])
            .output()
            .unwrap();
        assert_ok(&out, name);
    }
    // Move the RL run folder out of the project, archive it read-only, and work from an unrelated directory.
    let archive = dir.path().join("archive/rl");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    std::fs::rename(project.join("runs/rl"), &archive).unwrap();
    set_read_only(&archive, true);
    let before = snapshot(&archive);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let in_elsewhere = |args: &[&str]| ideator().current_dir(&elsewhere).args(args).output().unwrap();

    let ckpt = archive.join("checkpoints/step-00000001");
    let evals = elsewhere.join("evals");
    let out = in_elsewhere(&[
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--env",
        "toy",
        "--n",
        "2",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "8",
        "--no-embeddings",
        "--json",
        "--run-dir",
        evals.to_str().unwrap(),
    ]);
    assert_ok(&out, "eval of the moved checkpoint");
    let out = in_elsewhere(&["compare", archive.to_str().unwrap(), evals.to_str().unwrap(), "--json"]);
    assert_ok(&out, "compare of the moved run");
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = c["rows"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["RL", "eval"]);
    let report = elsewhere.join("rl.html");
    let out = in_elsewhere(&["report", archive.to_str().unwrap(), "--out", report.to_str().unwrap()]);
    assert_ok(&out, "report of the moved run");
    assert!(std::fs::read_to_string(&report).unwrap().contains("</html>"));
    let after = snapshot(&archive);
    set_read_only(&archive, false);
    assert_eq!(before, after, "reading the archived run changed it");
}

#[test]
fn errors_print_no_backtrace_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir.path().join("bad.gguf"), "GGUF but not really a model file");
    for var in ["1", "full"] {
        let out = ideator()
            .env("RUST_BACKTRACE", var)
            .env_remove("RUST_LIB_BACKTRACE")
            .args(["sample", "--prompt", "x", "--model", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(err.starts_with("error: ") && err.contains("bad.gguf"), "{err}");
        assert!(err.lines().count() <= 3 && !err.contains("backtrace"), "RUST_BACKTRACE={var}: {err}");
    }
}
