//! The command environment with the shipped example program and with small scripted programs for each failure.

use ideator_envs::command::CommandEnv;
use ideator_envs::executor::execute;
use ideator_envs::{FailureCause, RunContext, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn python_available() -> bool {
    let ok = std::process::Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("!!! python3 is not available: SKIPPING the command environment tests !!!");
    }
    ok
}

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/command_env/command.toml")
}

/// A free-form command environment running `script` (Python) with the given extra config lines.
fn scripted(dir: &Path, script: &str, extra: &str) -> CommandEnv {
    std::fs::write(dir.join("prog.py"), script).unwrap();
    let config = format!(
        "description = \"a test task\"\nprogram = \"python3\"\nargs = [\"{{config_dir}}/prog.py\", \"{{idea}}\"]\n\
         example_idea = \"[Experiment] x [Code Changes] y [End]\"\nplausible_reward = [0.0, 1.0]\n{extra}\n"
    );
    std::fs::write(dir.join("env.toml"), config).unwrap();
    CommandEnv::from_file(&dir.join("env.toml")).unwrap()
}

const IDEA: &str = "[Experiment]\nTry it.\n[Code Changes]\nchange the thing\n[End]\n";

#[test]
fn example_program_trains_and_reports_through_files() {
    if !python_available() {
        return;
    }
    let env = CommandEnv::from_file(&example_config()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let ctx = RunContext::new("tiny", 3, work.path().join("run"));
    let idea = "[Experiment]\nWider hidden layer.\n[Code Changes]\nhidden = 16\nlr = 0.3\n[End]";
    let r = execute(&env, idea, &ctx);
    assert_eq!(r.status, Status::Ok, "{} / {}", r.message, r.log);
    assert!((0.0..=1.0).contains(&r.reward) && r.reward > 0.3, "reward {}", r.reward);
    assert_eq!(r.metrics["val_accuracy"], r.reward);
    let run = work.path().join("run");
    assert_eq!(std::fs::read_to_string(run.join("idea.md")).unwrap(), idea);
    assert!(std::fs::read_to_string(run.join("task.md")).unwrap().contains("spirals"));
    let recipe: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("recipe.json")).unwrap()).unwrap();
    assert_eq!(recipe["hidden"], 16);
    assert_eq!(recipe["epochs"], 30);
    assert!(std::fs::read_to_string(run.join("stderr.log")).unwrap().contains("epoch 29"));
    // Same seed, same result.
    let again = execute(&env, idea, &RunContext::new("tiny", 3, work.path().join("run2")));
    assert_eq!(again.reward, r.reward);
    // Invalid knobs never reach the program.
    let bad = execute(&env, "[Experiment] x [Code Changes]\nhiden = 3\n[End]", &ctx);
    assert_eq!(bad.cause, Some(FailureCause::Implementation));
    assert!(bad.message.contains("did you mean `hidden`?"), "{}", bad.message);
}

#[test]
fn the_idea_never_reaches_a_shell() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let env = scripted(
        dir.path(),
        "import json, sys\ntext = open(sys.argv[1]).read()\nprint(json.dumps({'reward': 0.5, 'metrics': {'chars': len(text)}}))\n",
        "",
    );
    let idea = format!(
        "[Experiment]\n$(touch {m}) `touch {m}`; touch {m} && echo {{workdir}}\n[Code Changes]\n'; touch {m}; '\n../../etc/passwd\n[End]",
        m = marker.display()
    );
    let ctx = RunContext::new("default", 0, dir.path().join("run"));
    let r = execute(&env, &idea, &ctx);
    assert_eq!(r.status, Status::Ok, "{}", r.message);
    assert_eq!(r.metrics["chars"], idea.chars().count() as f64);
    assert!(!marker.exists());
    // Placeholders inside the idea are not substituted: the file holds the idea byte for byte.
    assert_eq!(std::fs::read_to_string(dir.path().join("run/idea.md")).unwrap(), idea);
}

#[test]
fn time_limit_kills_the_whole_process_group() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!(
        "import subprocess, time\np = subprocess.Popen(['sleep', '60'])\nopen({:?}, 'w').write(str(p.pid))\ntime.sleep(60)\n",
        pid_file.display().to_string()
    );
    let env = scripted(dir.path(), &script, "");
    let ctx = RunContext::new("default", 0, dir.path().join("run")).with_time_limit(Duration::from_millis(1500));
    let start = Instant::now();
    let r = execute(&env, IDEA, &ctx);
    assert_eq!(r.cause, Some(FailureCause::TimeLimit), "{}", r.message);
    assert!(start.elapsed() < Duration::from_secs(20));
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // The grandchild got SIGKILL with the group; give the kernel a moment to reap it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
            .unwrap_or(false)
    };
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "grandchild {pid} survived the time limit");
}

#[test]
fn bad_programs_are_runtime_errors_with_reasons() {
    if !python_available() {
        return;
    }
    let run = |script: &str, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let env = scripted(dir.path(), script, extra);
        execute(&env, IDEA, &RunContext::new("default", 0, dir.path().join("run")))
    };
    let r = run("print('no json here')\n", "");
    assert_eq!(r.cause, Some(FailureCause::RuntimeError));
    assert!(r.message.contains("not a JSON result"), "{}", r.message);

    let r = run("import sys\nprint('{\"reward\": 0.5}')\nsys.exit(3)\n", "");
    assert_eq!(r.cause, Some(FailureCause::RuntimeError));
    assert!(r.message.contains("exit code 3"), "{}", r.message);

    let r = run("import sys\nsys.stderr.write('Traceback: boom\\n')\nsys.exit(1)\n", "");
    assert_eq!(r.cause, Some(FailureCause::RuntimeError));
    assert!(r.message.contains("boom"), "{}", r.message);

    let r = run(
        "print('{\"status\": \"failed\", \"cause\": \"non_finite_loss\", \"message\": \"nan at step 3\"}')\n",
        "",
    );
    assert_eq!((r.cause, r.message.as_str()), (Some(FailureCause::NonFiniteLoss), "nan at step 3"));

    let r = run("print('{\"reward\": 7.0}')\n", "");
    assert_eq!((r.cause, r.reward), (Some(FailureCause::Implausible), 0.0));

    let r = run("import sys\nwhile True: sys.stdout.write('x' * 65536)\n", "max_output_bytes = 200000");
    assert_eq!(r.cause, Some(FailureCause::RuntimeError));
    assert!(r.message.contains("more than 200000 bytes"), "{}", r.message);
    assert!(r.log.len() < 100_000);
}

#[test]
fn bad_configs_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    std::fs::write(&path, "description = \"x\"\nprogram = \"python3\"\nexample_idea = \"x\"\nunknown_field = 1\n")
        .unwrap();
    let err = CommandEnv::from_file(&path).err().unwrap().to_string();
    assert!(err.contains("unknown_field"), "{err}");
    std::fs::write(
        &path,
        "description = \"x\"\nprogram = \"p\"\nexample_idea = \"x\"\n[[knobs]]\nname = \"a\"\nkind = { type = \"int\", min = 0, max = 3 }\ndefault = 9\ndoc = \"a\"\n",
    )
    .unwrap();
    let err = CommandEnv::from_file(&path).err().unwrap().to_string();
    assert!(err.contains("out of range"), "{err}");
}

/// `max_output_bytes` bounds the log files on disk, not only what the result keeps: whether the program floods
/// stdout, stderr or both, the two files together hold at most the cap, and a quiet program's output is whole.
#[test]
fn logs_on_disk_stay_within_max_output_bytes() {
    if !python_available() {
        return;
    }
    let floods = [
        "import sys\nwhile True: sys.stdout.write('x' * 65536)\n",
        "import sys\nwhile True: sys.stderr.write('y' * 65536)\n",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)\n",
    ];
    for script in floods {
        let dir = tempfile::tempdir().unwrap();
        let env = scripted(dir.path(), script, "max_output_bytes = 1000");
        let r = execute(&env, IDEA, &RunContext::new("default", 0, dir.path().join("run")));
        assert_eq!(r.cause, Some(FailureCause::RuntimeError), "{script}: {}", r.message);
        let len = |name: &str| std::fs::metadata(dir.path().join("run").join(name)).unwrap().len();
        let on_disk = len("stdout.log") + len("stderr.log");
        assert!(on_disk <= 1000, "{script}: {on_disk} bytes of logs on disk with a cap of 1000");
        assert!(on_disk > 0, "{script}: the first bytes are kept");
    }
    let dir = tempfile::tempdir().unwrap();
    let env = scripted(dir.path(), "import sys\nsys.stderr.write('note\\n')\nprint('{\"reward\": 0.5}')\n", "");
    let r = execute(&env, IDEA, &RunContext::new("default", 0, dir.path().join("run")));
    assert_eq!(r.reward, 0.5, "{}", r.message);
    assert_eq!(std::fs::read_to_string(dir.path().join("run/stdout.log")).unwrap(), "{\"reward\": 0.5}\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("run/stderr.log")).unwrap(), "note\n");
}
