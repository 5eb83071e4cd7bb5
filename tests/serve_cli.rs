//! `ideator serve` answers OpenAI chat-completions requests from a real HTTP client on 127.0.0.1, and the codebase
//! environment's implementer loop runs end to end against it with the default SmolLM2 (which mostly fails to write
//! a usable diff: those failures must be recorded, typed, with every attempt).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `ideator serve` on a free port; killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server with the default model, or `None` (with a notice) when the model asset is missing.
fn start() -> Option<Server> {
    let assets = std::env::var_os("IDEATOR_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"));
    if !assets.join("smollm2").is_dir() {
        eprintln!("!!! no model assets in {}: SKIPPING the serve tests !!!", assets.display());
        return None;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ideator"))
        .env("IDEATOR_ASSETS", &assets)
        .args(["serve", "--addr", "127.0.0.1:0", "--served-model-name", "smol"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Some(Server { url: url.to_string(), child })
}

#[test]
fn serves_openai_chat_completions_and_feeds_the_implementer() {
    let Some(server) = start() else { return };
    let body = serde_json::json!({
        "model": "smol",
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}],
        "max_tokens": 8, "temperature": 0.0, "n": 2, "user": "ignored-field",
    });
    let answer: serde_json::Value =
        ureq::post(&format!("{}/chat/completions", server.url)).send_json(&body).unwrap().into_json().unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert!(!choices[0]["message"]["content"].as_str().unwrap().is_empty(), "{answer}");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() <= 16, "{answer}");
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    let models: serde_json::Value = ureq::get(&format!("{}/models", server.url)).call().unwrap().into_json().unwrap();
    assert_eq!(models["data"][0]["id"], "smol");
    // A request the server cannot honour is a 400 with an OpenAI-style error saying what to change.
    match ureq::post(&format!("{}/chat/completions", server.url)).send_json(serde_json::json!({"messages": []})) {
        Err(ureq::Error::Status(400, r)) => {
            let e: serde_json::Value = r.into_json().unwrap();
            assert!(e["error"]["message"].as_str().unwrap().contains("`messages` is empty"), "{e}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }

    // The implementer loop against the served SmolLM2: every attempt is recorded and the failure is typed.
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/codebase_env");
    let mut config = std::fs::read_to_string(example.join("codebase.toml")).unwrap();
    config = config
        .replace("baseline = \"baseline\"", &format!("baseline = {:?}", example.join("baseline").to_str().unwrap()));
    config = config.replace("scales = [\"tiny\"]", "scales = [\"tiny\"]\nimplementation = \"implementer\"");
    config.push_str(&format!(
        "\n[implementer]\nbase_url = \"{}\"\nmodel = \"smol\"\nmax_repairs = 1\nmax_tokens = 96\ntimeout_secs = 300\n",
        server.url
    ));
    let config_path = dir.path().join("codebase.toml");
    std::fs::write(&config_path, config).unwrap();
    let idea = dir.path().join("idea.md");
    std::fs::write(&idea, "[Experiment]\nWider.\n[Code Changes]\nSet HIDDEN to 32 in train.py.\n[End]\n").unwrap();
    let work = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_ideator"))
        .args(["exec", "--env", "codebase", "--env-config", config_path.to_str().unwrap(), "--json"])
        .args(["--idea", idea.to_str().unwrap(), "--work-dir", work.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let attempts = v["metrics"]["implementer_attempts"].as_f64().unwrap();
    assert!((1.0..=2.0).contains(&attempts), "{v}");
    for i in 0..attempts as usize {
        let a: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(work.join(format!("implementer/attempt-{i}.json"))).unwrap(),
        )
        .unwrap();
        assert!(!a["answer"].as_str().unwrap().is_empty() || a["outcome"].as_str().is_some(), "{a}");
        assert_eq!(a["messages"][0]["role"], "system");
    }
    if v["status"] == "failed" {
        let cause = v["cause"].as_str().unwrap();
        assert!(["implementation", "runtime_error", "implausible"].contains(&cause), "{v}");
        assert_eq!(attempts, 2.0, "a failure uses every repair: {v}");
    } else {
        eprintln!("SmolLM2 wrote a diff that applied and ran: {v}");
    }
}
