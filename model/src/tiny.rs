//! A tiny character-level model and tokenizer, randomly initialised: for tests and learnability checks of the
//! trainer and the loops, where the real ideator would be too slow and its behaviour too rich to assert on.

use candle_core::{DType, Device};

use crate::weights::random::random_weights;
use crate::{Arch, Decoder, ModelConfig, Result, Tokenizer};

/// The characters of the tiny vocabulary (id = position + 1; id 0 is `<eos>`).
pub const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz .,:=[]0123456789";

/// A character-level tokenizer over [`ALPHABET`] with `<eos>` (id 0) as end of sequence and padding.
pub fn char_tokenizer() -> Result<Tokenizer> {
    char_tokenizer_for(ALPHABET)
}

/// A character-level tokenizer over `alphabet` (id = position + 1; id 0 is `<eos>`, also the padding), for
/// task-specific tiny models (e.g. arithmetic over `0123456789+-=`). Characters must be distinct.
pub fn char_tokenizer_for(alphabet: &str) -> Result<Tokenizer> {
    let mut seen = std::collections::BTreeSet::new();
    if alphabet.is_empty() || !alphabet.chars().all(|c| seen.insert(c)) {
        return Err(crate::ModelError::Invalid(format!(
            "alphabet {alphabet:?} must be non-empty with distinct characters"
        )));
    }
    let mut vocab = serde_json::Map::new();
    vocab.insert("<eos>".into(), 0.into());
    for (i, c) in alphabet.chars().enumerate() {
        vocab.insert(c.to_string(), (i + 1).into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    let config = serde_json::json!({"eos_token": "<eos>", "pad_token": "<eos>", "add_bos_token": false});
    // A fresh folder per call: concurrent callers (parallel tests) never read a half-written file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ideator-char-tokenizer-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| crate::ModelError::file(&dir, e.to_string()))?;
    let write = |name: &str, v: &serde_json::Value| {
        let p = dir.join(name);
        std::fs::write(&p, v.to_string()).map_err(|e| crate::ModelError::file(&p, e.to_string()))
    };
    write("tokenizer.json", &tokenizer)?;
    write("tokenizer_config.json", &config)?;
    let tokenizer = Tokenizer::from_folder(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    tokenizer
}

/// A 2-layer Llama-style config over the character vocabulary.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size: ALPHABET.chars().count() + 1,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        qkv_bias: false,
        qk_norm: false,
        rope_scaling: None,
    }
}

/// The tiny decoder with weights drawn from `seed`, std 0.1: next-token distributions start close to uniform,
/// yet the (frozen, tied) embedding is large enough for LoRA alone to move logits by several nats.
pub fn tiny_decoder(seed: u64) -> Result<Decoder> {
    tiny_decoder_on(seed, DType::F32, &Device::Cpu)
}

/// The same model computing in `dtype` on `device` (the device-agnostic tests pass
/// [`crate::device::test_device`]); the weights are drawn on the CPU, so a seed gives the same model everywhere.
pub fn tiny_decoder_on(seed: u64, dtype: DType, device: &Device) -> Result<Decoder> {
    Decoder::from_raw(random_weights(&tiny_config(), seed, 5.0)?, dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_alphabets_round_trip_and_end_with_eos() {
        let tok = char_tokenizer_for("0123456789+-=").unwrap();
        let ids = tok.encode("37+45=", false).unwrap();
        assert_eq!(ids, vec![4, 8, 11, 5, 6, 13]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "37+45=");
        assert!(tok.is_eos(0) && tok.vocab_size() == 14);
        assert!(char_tokenizer_for("0120").is_err() && char_tokenizer_for("").is_err());
    }
}
