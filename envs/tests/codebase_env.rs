//! The codebase environment on the shipped spirals example: diffs that apply, do not apply, touch protected or
//! unlisted files, loop forever, allocate without bound, tamper with the evaluation at run time; and the sandbox
//! (nothing outlives a run, scrubbed environment, own network namespace when root).

use ideator_envs::codebase::CodebaseEnv;
use ideator_envs::executor::execute;
use ideator_envs::{Environment, FailureCause, RunContext, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn python_available() -> bool {
    let ok = std::process::Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("!!! python3 is not available: SKIPPING the codebase environment tests !!!");
    }
    ok
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/codebase_env")
}

fn baseline_train() -> String {
    std::fs::read_to_string(example_dir().join("baseline/train.py")).unwrap()
}

/// The example environment, with its time and memory limits replaced.
fn env_with(dir: &Path, time_limit: f64, memory_mb: u64) -> CodebaseEnv {
    let text = std::fs::read_to_string(example_dir().join("codebase.toml")).unwrap();
    let baseline = example_dir().join("baseline").canonicalize().unwrap();
    let text = text
        .replace("baseline = \"baseline\"", &format!("baseline = {:?}", baseline.to_str().unwrap()))
        .replace("time_limit_secs = 60", &format!("time_limit_secs = {time_limit}"))
        .replace("memory_limit_mb = 1024", &format!("memory_limit_mb = {memory_mb}"));
    std::fs::write(dir.join("codebase.toml"), text).unwrap();
    CodebaseEnv::from_file(&dir.join("codebase.toml")).unwrap()
}

/// A unified diff of `file` from `old` to `new`, with git-style headers.
fn diff(file: &str, old: &str, new: &str) -> String {
    let patch = diffy::create_patch(old, new).to_string();
    let body: Vec<&str> = patch.lines().skip(2).collect();
    format!("--- a/{file}\n+++ b/{file}\n{}\n", body.join("\n"))
}

fn idea(diff: &str) -> String {
    format!("[Experiment]\nA test change.\n[Code Changes]\n{diff}[End]\n")
}

/// `train.py` with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    let base = baseline_train();
    assert!(base.contains(from), "{from:?} not in train.py");
    base.replacen(from, to, 1)
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

/// Waits (up to 10 s: the kernel finishes a killed process asynchronously) until no process carries `marker`.
fn survivors(marker: &str) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let live = live_with(marker);
        if live.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return live;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_correct_diff_applies_runs_and_beats_the_baseline() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 1024);
    let baseline = ideator_envs::run_recipe(
        &env,
        &env.baseline("tiny").unwrap(),
        &RunContext::new("tiny", 0, dir.path().join("b")),
    );
    assert_eq!(baseline.status, Status::Ok, "{} / {}", baseline.message, baseline.log);
    let wider = idea(&diff("train.py", &baseline_train(), &edited("HIDDEN = 8", "HIDDEN = 32")));
    let r = execute(&env, &wider, &RunContext::new("tiny", 0, dir.path().join("run")));
    assert_eq!(r.status, Status::Ok, "{} / {}", r.message, r.log);
    assert!(r.reward > baseline.reward, "wider {} vs baseline {}", r.reward, baseline.reward);
    assert_eq!(r.metrics["applied"], 1.0);
    assert_eq!(r.metrics["ran"], 1.0);
    assert_eq!(r.metrics["diff_lines_added"], 1.0);
    assert_eq!(r.metrics["diff_lines_removed"], 1.0);
    assert_eq!(r.changed, vec!["train.py:HIDDEN".to_string()]);
    let copy = std::fs::read_to_string(dir.path().join("run/code/train.py")).unwrap();
    assert!(copy.contains("HIDDEN = 32"));
    assert!(baseline_train().contains("HIDDEN = 8"), "the baseline itself never changes");
    assert!(dir.path().join("run/patch.diff").exists());
    // A diff inside a function is categorised by the function; wrong hunk counts are tolerated.
    let in_fit = diff(
        "train.py",
        &baseline_train(),
        &edited("    rng = random.Random(seed)", "    rng = random.Random(seed + 1)"),
    );
    let miscounted = in_fit.replacen(",7 +", ",9 +", 1);
    let r = execute(&env, &idea(&miscounted), &RunContext::new("tiny", 0, dir.path().join("fit")));
    assert_eq!(r.status, Status::Ok, "{} / {}\n{miscounted}", r.message, r.log);
    assert_eq!(r.changed, vec!["train.py:fit".to_string()]);
}

#[test]
fn diffs_that_do_not_apply_or_leave_the_whitelist_fail_with_their_cause() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 1024);
    let run = |name: &str, text: &str| execute(&env, &idea(text), &RunContext::new("tiny", 0, dir.path().join(name)));
    let stale = "--- a/train.py\n+++ b/train.py\n@@ -13,1 +13,1 @@\n-HIDDEN = 16\n+HIDDEN = 64\n";
    let r = run("stale", stale);
    assert_eq!(r.cause, Some(FailureCause::Implementation), "{}", r.message);
    assert!(r.message.contains("does not apply to train.py"), "{}", r.message);
    assert_eq!(r.metrics["applied"], 0.0);
    let evaluate = std::fs::read_to_string(example_dir().join("baseline/evaluate.py")).unwrap();
    let hacked = evaluate.replace("accuracy = correct / len(val_points)", "accuracy = 1.0");
    let r = run("protected", &diff("evaluate.py", &evaluate, &hacked));
    assert_eq!(r.cause, Some(FailureCause::Implausible), "{}", r.message);
    assert!(r.message.contains("evaluate.py is protected"), "{}", r.message);
    let r = run("unlisted", "--- /dev/null\n+++ b/helper.py\n@@ -0,0 +1,1 @@\n+x = 1\n");
    assert_eq!(r.cause, Some(FailureCause::Implementation));
    assert!(r.message.contains("helper.py is not one of the editable files"), "{}", r.message);
    let r = run("escape", "--- a/../train.py\n+++ b/../train.py\n@@ -1,1 +1,1 @@\n-a\n+b\n");
    assert_eq!(r.cause, Some(FailureCause::Implementation));
    assert!(r.message.contains("leaves the codebase"), "{}", r.message);
    let r = run("prose", "make the network wider\n");
    assert_eq!(r.cause, Some(FailureCause::Implementation));
    assert!(r.message.contains("no unified diff"), "{}", r.message);
}

#[test]
fn a_run_that_changes_a_protected_file_is_implausible() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 1024);
    let tamper = edited(
        "def fit(points, seed):\n",
        "def fit(points, seed):\n    open(\"evaluate.py\", \"a\").write(\"# tampered\\n\")\n",
    );
    let r = execute(
        &env,
        &idea(&diff("train.py", &baseline_train(), &tamper)),
        &RunContext::new("tiny", 0, dir.path().join("t")),
    );
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.cause, Some(FailureCause::Implausible), "{} / {}", r.message, r.log);
    assert!(r.message.contains("changed protected files (evaluate.py)"), "{}", r.message);
    assert_eq!(r.reward, 0.0);
}

#[test]
fn an_endless_loop_hits_the_time_limit_and_leaves_no_process_behind() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 1024);
    // The run starts a grandchild in its group, then spins: both must be gone afterwards.
    let marker = format!("{}.{}", 3000 + std::process::id() % 1000, 4242);
    let looping = edited(
        "def fit(points, seed):\n",
        &format!(
            "def fit(points, seed):\n    import subprocess\n    subprocess.Popen([\"sleep\", \"{marker}\"])\n    while True:\n        pass\n"
        ),
    );
    let ctx = RunContext::new("tiny", 0, dir.path().join("loop")).with_time_limit(Duration::from_secs(3));
    let r = execute(&env, &idea(&diff("train.py", &baseline_train(), &looping)), &ctx);
    assert_eq!(r.cause, Some(FailureCause::TimeLimit), "{} / {}", r.message, r.log);
    assert_eq!(r.metrics["applied"], 1.0);
    assert_eq!(r.metrics["ran"], 0.0);
    assert_eq!(survivors(&marker), Vec::<u32>::new(), "processes outlived the run");
}

#[test]
fn an_unbounded_allocation_fails_as_out_of_memory() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 256);
    let hog = edited(
        "def fit(points, seed):\n",
        "def fit(points, seed):\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 24))\n",
    );
    let r = execute(
        &env,
        &idea(&diff("train.py", &baseline_train(), &hog)),
        &RunContext::new("tiny", 0, dir.path().join("m")),
    );
    assert_eq!(r.cause, Some(FailureCause::OutOfMemory), "{} / {}", r.message, r.log);
    assert!(r.message.contains("limit 256 MiB"), "{}", r.message);
}

#[test]
fn the_program_sees_a_scrubbed_environment_and_no_network_when_root() {
    if !python_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 1024);
    let spy = edited(
        "def fit(points, seed):\n",
        "def fit(points, seed):\n    import os\n    print(\"ENV \" + \" \".join(sorted(os.environ)), file=sys.stderr)\n    \
         print(\"NETNS \" + os.readlink(\"/proc/self/ns/net\"), file=sys.stderr)\n",
    );
    let r = execute(
        &env,
        &idea(&diff("train.py", &baseline_train(), &spy)),
        &RunContext::new("tiny", 5, dir.path().join("s")),
    );
    assert_eq!(r.status, Status::Ok, "{} / {}", r.message, r.log);
    let stderr = std::fs::read_to_string(dir.path().join("s/stderr.log")).unwrap();
    let line = |tag: &str| stderr.lines().find_map(|l| l.strip_prefix(tag)).unwrap_or_default().to_string();
    let names: Vec<String> = line("ENV ").split(' ').map(String::from).collect();
    assert!(names.contains(&"IDEATOR_SEED".to_string()), "{names:?}");
    // cargo sets CARGO_PKG_NAME for the test process; the program must not inherit it.
    if std::env::var_os("CARGO_PKG_NAME").is_some() {
        assert!(!names.contains(&"CARGO_PKG_NAME".to_string()), "{names:?}");
    }
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();
    let theirs = line("NETNS ");
    if ideator_envs::sandbox::Policy::network_isolation_available() {
        assert_ne!(theirs, ours, "the program shares the executor's network namespace");
    } else {
        eprintln!("not root: network isolation is not available, only checked that the run works");
    }
}

/// A scripted OpenAI-compatible endpoint on 127.0.0.1: answers the n-th chat-completions request with
/// `answers[n]` (the last one again when they run out) and records each request body.
struct ScriptedEndpoint {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl ScriptedEndpoint {
    fn start(answers: Vec<String>) -> ScriptedEndpoint {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(request);
                    seen.len() - 1
                };
                let content = answers[n.min(answers.len() - 1)].clone();
                let reply = serde_json::json!({
                    "id": "x", "object": "chat.completion", "model": "scripted",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                })
                .to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        ScriptedEndpoint { url, requests }
    }
}

/// The example environment with an `[implementer]` at `url`.
fn implementer_env(dir: &Path, url: &str, repairs: usize) -> CodebaseEnv {
    env_with(dir, 60.0, 1024);
    let mut text = std::fs::read_to_string(dir.join("codebase.toml")).unwrap();
    text = text.replace("scales = [\"tiny\"]", "scales = [\"tiny\"]\nimplementation = \"implementer\"");
    text.push_str(&format!(
        "\n[implementer]\nbase_url = \"{url}\"\nmodel = \"scripted\"\nmax_repairs = {repairs}\ntimeout_secs = 30\n"
    ));
    std::fs::write(dir.join("codebase.toml"), text).unwrap();
    CodebaseEnv::from_file(&dir.join("codebase.toml")).unwrap()
}

const DESCRIBED: &str = "[Experiment]\nWider hidden layer.\n[Code Changes]\nSet HIDDEN to 32 in train.py.\n[End]\n";

#[test]
fn the_implementer_repairs_a_broken_diff_and_records_every_attempt() {
    if !python_available() {
        return;
    }
    let broken =
        "Here you go:\n```diff\n--- a/train.py\n+++ b/train.py\n@@ -13,1 +13,1 @@\n-HIDDEN = 80\n+HIDDEN = 32\n```\n";
    let good = format!("```diff\n{}```\n", diff("train.py", &baseline_train(), &edited("HIDDEN = 8", "HIDDEN = 32")));
    let endpoint = ScriptedEndpoint::start(vec![broken.to_string(), good]);
    let dir = tempfile::tempdir().unwrap();
    let env = implementer_env(dir.path(), &endpoint.url, 3);
    let r = execute(&env, DESCRIBED, &RunContext::new("tiny", 0, dir.path().join("run")));
    assert_eq!(r.status, Status::Ok, "{} / {}", r.message, r.log);
    assert_eq!(r.metrics["implementer_attempts"], 2.0);
    assert_eq!(r.metrics["repair_attempts"], 1.0);
    assert_eq!(r.changed, vec!["train.py:HIDDEN".to_string()]);
    let requests = endpoint.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "scripted");
    let first_user = requests[0]["messages"][1]["content"].as_str().unwrap();
    assert!(first_user.contains("Set HIDDEN to 32") && first_user.contains("HIDDEN = 8"), "{first_user}");
    // The repair request carries the apply error back, after the model's own answer.
    let second = requests[1]["messages"].as_array().unwrap();
    assert_eq!(second.len(), 4);
    assert_eq!(second[2]["role"], "assistant");
    assert!(second[3]["content"].as_str().unwrap().contains("does not apply to train.py"), "{}", second[3]);
    let attempt0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/implementer/attempt-0.json")).unwrap())
            .unwrap();
    assert!(attempt0["outcome"].as_str().unwrap().contains("does not apply"), "{attempt0}");
    assert!(attempt0["diff"].as_str().unwrap().contains("HIDDEN = 80"));
    let attempt1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/implementer/attempt-1.json")).unwrap())
            .unwrap();
    assert!(attempt1["outcome"].as_str().unwrap().starts_with("applied and ran"), "{attempt1}");
}

#[test]
fn the_implementer_gives_up_after_its_repairs_and_reports_why() {
    if !python_available() {
        return;
    }
    let endpoint = ScriptedEndpoint::start(vec!["I would make the layer wider.".to_string()]);
    let dir = tempfile::tempdir().unwrap();
    let env = implementer_env(dir.path(), &endpoint.url, 2);
    let r = execute(&env, DESCRIBED, &RunContext::new("tiny", 0, dir.path().join("run")));
    assert_eq!(r.cause, Some(FailureCause::Implementation), "{}", r.message);
    assert!(r.message.contains("in 3 attempts") && r.message.contains("no unified diff"), "{}", r.message);
    assert_eq!(r.metrics["implementer_attempts"], 3.0);
    assert_eq!(r.metrics["applied"], 0.0);
    assert_eq!(endpoint.requests.lock().unwrap().len(), 3);
    // An endpoint that is not there is the machine's fault, not the idea's.
    let gone = implementer_env(dir.path(), "http://127.0.0.1:9/v1", 2);
    let r = execute(&gone, DESCRIBED, &RunContext::new("tiny", 0, dir.path().join("gone")));
    assert_eq!(r.cause, Some(FailureCause::Infrastructure), "{}", r.message);
    assert!(r.message.contains("could not be reached"), "{}", r.message);
}

#[test]
fn a_direct_idea_is_categorised_by_the_code_it_touches_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(dir.path(), 60.0, 1024);
    let two = edited("HIDDEN = 8", "HIDDEN = 16").replacen(
        "    rng = random.Random(seed)",
        "    rng = random.Random(seed + 7)",
        1,
    );
    let units = env.categorize(&idea(&diff("train.py", &baseline_train(), &two)), "tiny");
    assert_eq!(units, Some(vec!["train.py:HIDDEN".to_string(), "train.py:fit".to_string()]));
    assert_eq!(env.categorize(&idea("--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-nope\n+x\n"), "tiny"), None);
    assert!(!dir.path().join("code").exists(), "categorising writes nothing");
}
