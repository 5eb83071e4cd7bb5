//! The binary's model commands end to end: `tokenize`, `logprobs` and `sample` with `--json`, checked against the
//! transformers reference fixture, and the error messages for bad `--model` values.

mod common;
use common::run_ideator;

use serde_json::Value;

fn fixture_case(name: &str) -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/model/tests/fixtures/smollm2_reference.json"))
            .unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
}

#[test]
fn tokenize_and_logprobs_agree_with_the_fixture() {
    let case = fixture_case("python_code");
    let text = case["text"].as_str().unwrap();
    let (ok, out, err) = run_ideator(&["tokenize", "--text", text, "--json"]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["ids"], case["ids"]);

    let (ok, out, err) = run_ideator(&["logprobs", "--text", text, "--json"]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["ids"], case["ids"]);
    let ours = got["logprobs"].as_array().unwrap();
    let want = case["logprobs"].as_array().unwrap();
    assert_eq!(ours.len(), want.len());
    for (a, b) in ours.iter().zip(want) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 2e-3);
    }
}

#[test]
fn sample_json_has_ids_logprobs_and_respects_the_seed() {
    let args = [
        "sample",
        "--prompt",
        "Give one tip for training a GPT.",
        "--chat",
        "--n",
        "2",
        "--max-new-tokens",
        "8",
        "--seed",
        "5",
        "--json",
    ];
    let (ok, out, err) = run_ideator(&args);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let completions = v["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 2);
    for c in completions {
        let ids = c["token_ids"].as_array().unwrap();
        assert!(!ids.is_empty() && ids.len() <= 8);
        assert_eq!(ids.len(), c["logprobs"].as_array().unwrap().len());
        assert!(c["logprobs"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() <= 0.0));
    }
    let (_, again, _) = run_ideator(&args);
    let w: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["completions"], w["completions"], "same seed, same output");
}

#[test]
fn bad_model_arguments_say_what_is_wrong() {
    let (ok, _, err) = run_ideator(&["tokenize", "--model", "/no/such/model.gguf", "--text", "x"]);
    assert!(!ok && err.contains("/no/such/model.gguf") && err.contains("does not exist"), "{err}");
    let (ok, _, err) = run_ideator(&["logprobs", "--model", "hf:not-a-valid-id", "--text", "x y"]);
    assert!(!ok && err.contains("hf:ORG/NAME"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run_ideator(&["logprobs", "--model", dir.path().to_str().unwrap(), "--text", "x y"]);
    assert!(!ok && err.contains("config.json"), "{err}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a gguf").unwrap();
    let (ok, _, err) = run_ideator(&["logprobs", "--model", junk.to_str().unwrap(), "--text", "x y"]);
    assert!(!ok && err.contains("junk.gguf") && err.contains("GGUF"), "{err}");
    let (ok, _, err) = run_ideator(&["sample", "--prompt", "x", "--top-p", "0"]);
    assert!(!ok && err.contains("top_p"), "{err}");
    // The bench probes' sizes are bounded before anything is allocated.
    let (ok, _, err) = run_ideator(&["bench", "matmul", "--matmul-size", "100000"]);
    assert!(!ok && err.contains("--matmul-size"), "{err}");
    let (ok, _, err) = run_ideator(&["bench", "matmul", "--bandwidth-mib=-1"]);
    assert!(!ok && err.contains("--bandwidth-mib"), "{err}");
    let (ok, _, err) = run_ideator(&["bench", "matmul", "--bandwidth-mib", "1000000"]);
    assert!(!ok && err.contains("--bandwidth-mib"), "{err}");
}

#[test]
fn bench_calibrate_stores_a_choice_that_later_benches_report() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("kernels.json");
    let run = |args: &[&str]| {
        let out = common::ideator().env("IDEATOR_KERNEL_CACHE", &cache).args(args).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        (last, stderr.to_string())
    };
    let (calibrated, err) = run(&["bench", "calibrate", "--rows", "1,2", "--repeats", "1"]);
    assert_eq!(calibrated["timings"].as_array().unwrap().len(), 2, "{err}");
    let max_rows = calibrated["choice"]["few_rows_max_rows"].as_u64().unwrap();
    assert!(max_rows <= 2, "only 1 and 2 rows were measured: {calibrated}");
    assert_eq!(calibrated["stored_in"].as_str().unwrap(), cache.to_str().unwrap());
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!(stored["calibrations"][0]["cpu"], calibrated["cpu"]);

    // A later bench on this CPU decodes with the stored choice and says so.
    let (matmul, err) =
        run(&["bench", "matmul", "--rows", "1", "--repeats", "1", "--bandwidth-mib", "0", "--matmul-size", "0"]);
    assert_eq!(matmul["kernel_choice_source"], "calibrated", "{err}");
    assert_eq!(matmul["kernel_few_rows_max_rows"].as_u64().unwrap(), max_rows);
    assert_eq!(matmul["kernel_few_rows_min_rows"], calibrated["choice"]["few_rows_min_rows"]);
    assert_eq!(matmul["kernel_few_rows_path"], calibrated["choice"]["few_rows_path"]);
    assert!(err.contains("calibrated for this CPU"), "{err}");

    let (ok, _, err) = run_ideator(&["bench", "calibrate", "--rows", "0,8"]);
    assert!(!ok && err.contains("1..=64"), "{err}");
}
