//! Weight loading from GGUF and safetensors folders: the same weights give the same model whatever the format,
//! and broken files give errors that name the file and the problem.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::tiny_config;
use ideator_model::weights::random::random_weights;
use ideator_model::weights::{gguf, safetensors_dir};
use ideator_model::{AdapterMode, Arch, Decoder, ModelConfig};

fn logprobs(dec: &Decoder) -> Vec<f32> {
    let seqs = vec![vec![1u32, 5, 9, 33, 70, 2, 8]];
    dec.score_tokens(&seqs, &[1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap()
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (module, kind) = rest.rsplit_once('.').unwrap();
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("unmapped {other}"),
    };
    format!("blk.{layer}.{g}.{kind}")
}

/// Writes a GGUF the way llama.cpp's converter does (q/k rows permuted for the llama architecture).
fn write_gguf(path: &Path, cfg: &ModelConfig, tensors: &HashMap<String, Tensor>) {
    let arch = match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
    };
    let mut q = Vec::new();
    for (name, t) in tensors {
        let t = match (cfg.arch, name) {
            (Arch::Llama, n) if n.ends_with("q_proj.weight") => gguf::permute(t, cfg.num_heads).unwrap(),
            (Arch::Llama, n) if n.ends_with("k_proj.weight") => gguf::permute(t, cfg.num_kv_heads).unwrap(),
            _ => t.clone(),
        };
        q.push((gguf_name(name), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let md = vec![
        ("general.architecture".to_string(), Value::String(arch.into())),
        (format!("{arch}.block_count"), Value::U32(cfg.num_layers as u32)),
        (format!("{arch}.embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(cfg.intermediate_size as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(cfg.num_heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(cfg.num_kv_heads as u32)),
        (format!("{arch}.attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (format!("{arch}.rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_norm_eps as f32)),
        (format!("{arch}.context_length"), Value::U32(cfg.max_position_embeddings as u32)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn write_folder(dir: &Path, cfg: &ModelConfig, tensors: &HashMap<String, Tensor>, shards: usize) {
    let arch = match cfg.arch {
        Arch::Llama => "LlamaForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Qwen3 => "Qwen3ForCausalLM",
    };
    let config = serde_json::json!({
        "architectures": [arch], "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings, "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.qkv_bias, "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    // Stored as bf16, as most hub checkpoints are: the loader must convert.
    let bf: HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap())).collect();
    if shards == 1 {
        candle_core::safetensors::save(&bf, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut names: Vec<&String> = bf.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (s, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: HashMap<String, Tensor> = chunk.iter().map(|n| ((*n).clone(), bf[*n].clone())).collect();
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn gguf_and_folder_loads_equal_the_source_weights() {
    for arch in common::ARCHS {
        let cfg = tiny_config(arch);
        let raw = random_weights(&cfg, 11, 10.0).unwrap();
        let tensors = raw.tensors.clone();
        let want = logprobs(&Decoder::from_raw(raw, DType::F32, &Device::Cpu).unwrap());
        let dir = tempfile::tempdir().unwrap();

        let gguf_path = dir.path().join("m.gguf");
        write_gguf(&gguf_path, &cfg, &tensors);
        let content = gguf::read_content(&gguf_path).unwrap();
        let loaded = gguf::load(&gguf_path, &content).unwrap();
        assert_eq!(loaded.config, cfg, "{arch:?}: config from GGUF metadata");
        let got = logprobs(&Decoder::from_raw(loaded, DType::F32, &Device::Cpu).unwrap());
        assert_eq!(got, want, "{arch:?}: GGUF load must undo the q/k permutation exactly");

        // Folders hold bf16 weights, so compare against the bf16-rounded source.
        let rounded: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()))
            .collect();
        let want_bf16 =
            logprobs(&Decoder::from_tensors(cfg.clone(), rounded, None, DType::F32, &Device::Cpu).unwrap());
        for shards in [1, 3] {
            let folder = dir.path().join(format!("hf{shards}"));
            std::fs::create_dir(&folder).unwrap();
            write_folder(&folder, &cfg, &tensors, shards);
            let files = safetensors_dir::weight_files(&folder).unwrap();
            assert_eq!(files.len(), shards);
            let loaded = safetensors_dir::load(&folder.join("config.json"), &files).unwrap();
            assert_eq!(loaded.config, cfg);
            let got = logprobs(&Decoder::from_raw(loaded, DType::F32, &Device::Cpu).unwrap());
            assert_eq!(got, want_bf16, "{arch:?}: folder with {shards} shard(s)");
        }
    }
}

#[test]
fn broken_files_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let raw = random_weights(&cfg, 1, 1.0).unwrap();

    let not_gguf = dir.path().join("junk.gguf");
    std::fs::write(&not_gguf, b"definitely not a gguf file, just some bytes").unwrap();
    let e = gguf::read_content(&not_gguf).unwrap_err().to_string();
    assert!(e.contains("junk.gguf") && e.contains("GGUF"), "{e}");

    let good = dir.path().join("good.gguf");
    write_gguf(&good, &cfg, &raw.tensors);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let content = gguf::read_content(&truncated).unwrap();
    let e = gguf::load(&truncated, &content).err().unwrap().to_string();
    assert!(e.contains("truncated.gguf") && e.contains("truncated"), "{e}");

    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    write_folder(&folder, &cfg, &raw.tensors, 1);
    let st = folder.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = safetensors_dir::load(&folder.join("config.json"), std::slice::from_ref(&st)).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("corrupt"), "{e}");

    std::fs::remove_file(&st).unwrap();
    let e = safetensors_dir::weight_files(&folder).unwrap_err().to_string();
    assert!(e.contains("no model.safetensors"), "{e}");

    let e = ModelConfig::from_hf_json(&dir.path().join("missing.json")).unwrap_err().to_string();
    assert!(e.contains("missing.json") && e.contains("cannot read"), "{e}");
}

#[test]
fn a_missing_tensor_is_named() {
    let cfg = tiny_config(Arch::Qwen3);
    let mut raw = random_weights(&cfg, 1, 1.0).unwrap();
    raw.tensors.remove("model.layers.1.self_attn.k_norm.weight");
    let e = Decoder::from_raw(raw, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.self_attn.k_norm.weight"), "{e}");
}
