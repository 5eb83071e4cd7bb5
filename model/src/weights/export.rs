//! Writing a model as a Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`): what `ideator merge` produces, readable by this crate and by transformers.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::Arch;
use crate::{Decoder, ModelError, Result, Tokenizer};

/// Writes `decoder` (adapters must be merged first) and `tokenizer` into `dir` (created if needed).
pub fn write_hf_folder(decoder: &Decoder, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    if decoder.has_lora() {
        return Err(ModelError::Invalid("merge the LoRA adapters before exporting".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::file(dir, format!("cannot create: {e}")))?;
    let cfg = decoder.config();
    let architecture = match cfg.arch {
        Arch::Llama => "LlamaForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Qwen3 => "Qwen3ForCausalLM",
    };
    let model_type = match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
    };
    let mut config = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.qkv_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_ids().first(),
    });
    if let Some(s) = cfg.rope_scaling {
        config["rope_scaling"] = serde_json::json!({
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    write_json(&dir.join("config.json"), &config)?;
    let tensors: HashMap<String, Tensor> = decoder
        .named_tensors()
        .into_iter()
        .map(|(k, v)| Ok((k, v.detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st).map_err(|e| ModelError::file(&st, format!("cannot write: {e}")))?;
    let tj = dir.join("tokenizer.json");
    tokenizer.inner().save(&tj, false).map_err(|e| ModelError::file(&tj, format!("cannot write: {e}")))?;
    let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut tc = serde_json::json!({
        "bos_token": name(tokenizer.bos_id()),
        "eos_token": name(tokenizer.eos_ids().first().copied()),
        "pad_token": name(tokenizer.pad_id()),
        "add_bos_token": tokenizer.add_bos(),
    });
    if let Some(t) = tokenizer.chat_template() {
        tc["chat_template"] = t.source().into();
    }
    write_json(&dir.join("tokenizer_config.json"), &tc)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("JSON serialises"))
        .map_err(|e| ModelError::file(path, format!("cannot write: {e}")))
}
