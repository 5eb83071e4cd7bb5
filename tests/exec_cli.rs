//! End-to-end tests of `ideator env` and `ideator exec` as a backend launches them: a separate process, the idea in
//! a file, one JSON line on stdout.

mod common;
use common::ideator;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = ideator().args(args).output().unwrap();
    assert!(out.status.success(), "ideator {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output from {args:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn env_list_show_prompt_and_examples() {
    let out = ideator().args(["env", "list"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("pretrain") && text.contains("command"));

    let out = ideator().args(["env", "show", "pretrain"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("| `optimizer` |") && text.contains("`tiny`") && text.contains("`paper`"));

    let out = ideator().args(["env", "prompt", "pretrain", "--scale", "small"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("[Code Changes]"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warmup.jsonl");
    let status = ideator()
        .args(["env", "examples", "pretrain", "--n", "5", "--seed", "3", "--out"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 5);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["messages"][0]["role"], "system");
        assert!(v["messages"][2]["content"].as_str().unwrap().starts_with("[Experiment]"));
    }

    let out = ideator().args(["env", "show", "nonsense"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown environment"));
}

#[test]
fn exec_reports_implementation_failures_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let idea = dir.path().join("idea.md");
    std::fs::write(&idea, "[Experiment]\nx\n[Code Changes]\nlearning_rate = 3e-3\n[End]\n").unwrap();
    let v = run_json(&["exec", "--env", "pretrain", "--idea", idea.to_str().unwrap(), "--json"]);
    assert_eq!(v["status"], "failed");
    assert_eq!(v["cause"], "implementation");
    assert_eq!(v["reward"], 0.0);
    assert!(v["message"].as_str().unwrap().contains("did you mean `lr`?"));
    assert!(v["seconds"].as_f64().unwrap() >= 0.0);

    std::fs::write(&idea, b"[Experiment]\n\xff\xfe[Code Changes]\nlr = 1e-3\n[End]\n").unwrap();
    let v = run_json(&["exec", "--env", "pretrain", "--idea", idea.to_str().unwrap(), "--json"]);
    assert_eq!(v["cause"], "implementation");
    assert!(v["message"].as_str().unwrap().contains("UTF-8"));
}

#[test]
fn exec_runs_a_pretrain_idea_and_honours_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let idea = dir.path().join("idea.md");
    std::fs::write(&idea, "[Experiment]\nRotary positions.\n[Code Changes]\npos_encoding = \"rope\"\n[End]\n")
        .unwrap();
    let path = idea.to_str().unwrap();
    let v = run_json(&["exec", "--env", "pretrain", "--scale", "tiny", "--seed", "1", "--idea", path, "--json"]);
    assert_eq!(v["status"], "ok", "{v}");
    let reward = v["reward"].as_f64().unwrap();
    let loss = v["metrics"]["val_loss"].as_f64().unwrap();
    assert!((reward - 1.0 / loss).abs() < 1e-9);
    assert!(loss < 3.5, "val_loss {loss}");
    assert_eq!(v["changed"], serde_json::json!(["pos_encoding"]));
    assert_eq!(
        (v["env"].as_str(), v["scale"].as_str(), v["seed"].as_u64()),
        (Some("pretrain"), Some("tiny"), Some(1))
    );

    let v = run_json(&["exec", "--env", "pretrain", "--idea", path, "--time-limit", "1", "--json"]);
    assert_eq!(v["cause"], "time_limit", "{v}");

    // At `small` one CPU step outlasts the limit and its grace period: the watchdog reports the time limit, once.
    let start = std::time::Instant::now();
    let out = ideator()
        .args(["exec", "--env", "pretrain", "--scale", "small", "--time-limit", "1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["cause"], "time_limit", "{v}");
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

#[test]
fn exec_runs_the_example_command_environment() {
    let python = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !python {
        eprintln!("!!! python3 is not available: SKIPPING the command environment end-to-end test !!!");
        return;
    }
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/command_env/command.toml");
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("run");
    let v = run_json(&[
        "exec",
        "--env",
        "command",
        "--env-config",
        config.to_str().unwrap(),
        "--work-dir",
        work.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["status"], "ok", "{v}");
    assert!(v["metrics"]["val_accuracy"].as_f64().unwrap() > 0.3);
    assert!(work.join("stdout.log").exists());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("result.json")).unwrap()).unwrap();
    assert_eq!(saved["reward"], v["reward"]);
    assert!(std::fs::read_to_string(work.join("run.log")).unwrap().contains("--- stdout ---"));
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
fn live_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// Polls `cond` every 50 ms for up to `secs` seconds (process start and exit are asynchronous); its last value.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed().as_secs() >= secs {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn command_programs_die_with_their_executor_on_every_signal() {
    let dir = tempfile::tempdir().unwrap();
    // `sleep` as the program itself (killed by PR_SET_PDEATHSIG), and `sleep` as a grandchild under `sh` (killed
    // with its process group by the executor's watcher).
    let cases = [("kill", "-KILL", false), ("int", "-INT", false), ("term", "-TERM", false), ("sh", "-KILL", true)];
    for (i, (name, signal, via_shell)) in cases.into_iter().enumerate() {
        let marker = format!("600.{}{i}", std::process::id());
        let (program, args) = if via_shell {
            ("sh", format!("[\"-c\", \"sleep {marker}; echo done\"]"))
        } else {
            ("sleep", format!("[\"{marker}\"]"))
        };
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "description = \"sleeps\"\nprogram = \"{program}\"\nargs = {args}\n\
                 example_idea = \"[Experiment] x [Code Changes] y [End]\"\n"
            ),
        )
        .unwrap();
        let mut exec = ideator();
        // A shell without job control starts background commands with SIGINT ignored (POSIX), and an ignored
        // signal stays ignored across exec: a suite started with `cmd &` would otherwise never deliver `kill -INT`
        // and wait out the program. A terminal's Ctrl-C, which this case stands for, finds the default action.
        // SAFETY: signal() is async-signal-safe, as pre_exec requires.
        unsafe {
            exec.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut exec = exec
            .args(["exec", "--env", "command", "--env-config", config.to_str().unwrap(), "--json"])
            .args(["--work-dir", dir.path().join(name).to_str().unwrap(), "--time-limit", "900"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(eventually(30, || !live_with(&marker).is_empty()), "{name}: the program never started");
        let status = Command::new("kill").args([signal, &exec.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = exec.wait().unwrap();
        assert!(!exit.success(), "{name}: the executor should have died of the signal");
        assert!(
            eventually(10, || live_with(&marker).is_empty()),
            "{name}: {:?} outlived the executor",
            live_with(&marker)
        );
    }
}
