//! Checkpoint save/load round trips bit-exactly; corruption, truncation and a different base model are refused.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ideator_checkpoints::*;

fn base(spec: &str) -> BaseModel {
    BaseModel {
        spec: spec.into(),
        weights_sha256: vec![format!("sha-of-{spec}")],
        config: serde_json::json!({"h": 8}),
    }
}

fn ckpt(step: u64, score: Option<f64>) -> Checkpoint {
    let dev = Device::Cpu;
    let mut weights = HashMap::new();
    weights.insert("a.lora_A.weight".to_string(), Tensor::randn(0f32, 1.0, (4, 8), &dev).unwrap());
    weights.insert("a.lora_B.weight".to_string(), Tensor::new(&[[1e-38f32, -0.0, f32::MIN_POSITIVE]], &dev).unwrap());
    let mut optimizer = HashMap::new();
    optimizer.insert("m.a.lora_A.weight".to_string(), Tensor::randn(0f32, 1.0, (4, 8), &dev).unwrap());
    Checkpoint {
        step,
        weights_kind: WeightsKind::Lora,
        base_model: base("m.gguf"),
        weights,
        optimizer,
        trainer_state: serde_json::json!({"step": step, "rng": [1, 2, 3]}),
        config_text: "[trainer]\nlr = 1e-5\n".into(),
        score,
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn round_trip_is_bit_exact() {
    let root = tempfile::tempdir().unwrap();
    let c = ckpt(7, Some(0.5));
    let saved = save(root.path(), &c).unwrap();
    assert!(saved.path.ends_with("step-00000007"));
    let loaded = load(&saved.path, Some(&base("m.gguf"))).unwrap();
    assert_eq!(loaded.step, 7);
    assert_eq!(loaded.trainer_state, c.trainer_state);
    assert_eq!(loaded.config_text, c.config_text);
    for (k, v) in &c.weights {
        assert_eq!(bits(&loaded.weights[k]), bits(v), "{k}");
    }
    for (k, v) in &c.optimizer {
        assert_eq!(bits(&loaded.optimizer[k]), bits(v), "{k}");
    }
    // No temporary folders are left behind.
    let names: Vec<String> =
        std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names, vec!["step-00000007".to_string()]);
}

#[test]
fn corrupted_or_truncated_files_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let saved = save(root.path(), &ckpt(1, None)).unwrap();
    let w = saved.path.join("weights.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one flipped bit
    std::fs::write(&w, &bytes).unwrap();
    let e = load(&saved.path, None).unwrap_err().to_string();
    assert!(e.contains("weights.safetensors") && e.contains("sha256"), "{e}");

    let saved = save(root.path(), &ckpt(2, None)).unwrap();
    let o = saved.path.join("optimizer.safetensors");
    let bytes = std::fs::read(&o).unwrap();
    std::fs::write(&o, &bytes[..bytes.len() - 3]).unwrap();
    let e = verify(&saved.path).unwrap_err().to_string();
    assert!(e.contains("optimizer.safetensors") && e.contains("bytes"), "{e}");

    let saved = save(root.path(), &ckpt(3, None)).unwrap();
    std::fs::remove_file(saved.path.join("trainer_state.json")).unwrap();
    let e = verify(&saved.path).unwrap_err().to_string();
    assert!(e.contains("trainer_state.json") && e.contains("missing"), "{e}");

    let saved = save(root.path(), &ckpt(4, None)).unwrap();
    std::fs::write(saved.path.join("manifest.json"), "{not json").unwrap();
    assert!(verify(&saved.path).unwrap_err().to_string().contains("manifest.json"));
}

#[test]
fn another_base_model_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let saved = save(root.path(), &ckpt(1, None)).unwrap();
    let e = load(&saved.path, Some(&base("other.gguf"))).unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("other.gguf"), "{e}");
}

#[test]
fn resaving_a_step_replaces_it_and_latest_is_newest() {
    let root = tempfile::tempdir().unwrap();
    save(root.path(), &ckpt(1, None)).unwrap();
    save(root.path(), &ckpt(2, None)).unwrap();
    let mut again = ckpt(2, None);
    again.trainer_state = serde_json::json!({"again": true});
    save(root.path(), &again).unwrap();
    let l = latest(root.path()).unwrap().unwrap();
    assert_eq!(l.manifest.step, 2);
    assert_eq!(load(&l.path, None).unwrap().trainer_state, serde_json::json!({"again": true}));
    assert_eq!(list(root.path()).unwrap().len(), 2);
    // An interrupted save (temporary folder) is not a checkpoint.
    std::fs::create_dir(root.path().join(".tmp-step-00000003-1")).unwrap();
    assert_eq!(latest(root.path()).unwrap().unwrap().manifest.step, 2);
}

#[test]
fn retention_keeps_the_last_k_and_the_best() {
    let root = tempfile::tempdir().unwrap();
    for (step, score) in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.3), (5, 0.1)] {
        save(root.path(), &ckpt(step, Some(score))).unwrap();
    }
    let deleted = prune(root.path(), &RetentionPolicy { keep_last: 2, keep_best: true }).unwrap();
    assert_eq!(deleted, vec![1, 3]);
    let steps: Vec<u64> = list(root.path()).unwrap().iter().map(|c| c.manifest.step).collect();
    assert_eq!(steps, vec![2, 4, 5]);
}

#[test]
fn non_finite_weights_or_optimizer_state_are_never_written() {
    let dev = Device::Cpu;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for in_optimizer in [false, true] {
            let root = tempfile::tempdir().unwrap();
            let mut c = ckpt(3, None);
            let t = Tensor::new(&[[0.5f32, bad, 1.0]], &dev).unwrap();
            let name = if in_optimizer { "m.a.lora_A.weight" } else { "a.lora_B.weight" };
            if in_optimizer {
                c.optimizer.insert(name.into(), t);
            } else {
                c.weights.insert(name.into(), t);
            }
            let err = save(root.path().join("checkpoints").as_path(), &c).expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, CheckpointError::NonFinite { step: 3, .. }), "{text}");
            assert!(text.contains(name), "{bad} in {name}: {text}");
            assert!(!root.path().join("checkpoints").exists(), "nothing written for {bad} in {name}");
        }
    }
    // Finite extremes are fine.
    let root = tempfile::tempdir().unwrap();
    let mut c = ckpt(4, None);
    c.weights.insert("x".into(), Tensor::new(&[f32::MAX, f32::MIN, -0.0, f32::MIN_POSITIVE / 2.0], &dev).unwrap());
    save(root.path(), &c).unwrap();
}
