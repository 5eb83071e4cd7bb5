//! GGUF files (llama.cpp): metadata, dequantised tensors, and llama.cpp's q/k row permutation undone.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};

use super::RawWeights;
use crate::config::{Arch, ModelConfig};
use crate::{ModelError, Result};

/// Reads only the header (metadata and tensor directory).
pub fn read_content(path: &Path) -> Result<Content> {
    let file = File::open(path).map_err(|e| ModelError::file(path, format!("cannot open GGUF file: {e}")))?;
    let mut reader = BufReader::new(file);
    Content::read(&mut reader).map_err(|e| ModelError::file(path, format!("not a readable GGUF file: {e}")))
}

/// Loads and dequantises every tensor of a GGUF file to f32, under Hugging Face names.
pub fn load(path: &Path, content: &Content) -> Result<RawWeights> {
    let config = ModelConfig::from_gguf(content).map_err(|e| ModelError::file(path, e.to_string()))?;
    let file = File::open(path).map_err(|e| ModelError::file(path, format!("cannot open GGUF file: {e}")))?;
    let mut reader = BufReader::new(file);
    let mut tensors = HashMap::new();
    let mut rope_freq_factors = None;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for gguf_name in names {
        let q = content.tensor(&mut reader, gguf_name, &Device::Cpu).map_err(|e| {
            ModelError::file(path, format!("tensor '{gguf_name}' is unreadable (truncated or corrupt file?): {e}"))
        })?;
        let t = q.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if gguf_name == "rope_freqs.weight" {
            rope_freq_factors = Some(t.flatten_all()?.to_vec1::<f32>()?);
            continue;
        }
        let Some(hf_name) = hf_name(gguf_name) else {
            tracing::warn!("{}: ignoring unknown GGUF tensor '{gguf_name}'", path.display());
            continue;
        };
        let t = match (config.arch, hf_name.rsplit('.').nth(1)) {
            // llama.cpp's converter permutes q/k rows of the llama architecture for interleaved rotary;
            // qwen2/qwen3 are converted unpermuted (NeoX rotary).
            (Arch::Llama, Some("q_proj")) if hf_name.ends_with(".weight") => unpermute(&t, config.num_heads)?,
            (Arch::Llama, Some("k_proj")) if hf_name.ends_with(".weight") => unpermute(&t, config.num_kv_heads)?,
            _ => t,
        };
        tensors.insert(hf_name, t);
    }
    Ok(RawWeights { config, tensors, rope_freq_factors })
}

/// GGUF tensor name -> Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    let direct = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// Inverse of llama.cpp's `permute(w, n_head)`: rows go from interleaved pairs back to two halves per head.
pub(crate) fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, hd / 2, 2, inp))?.transpose(1, 2)?.reshape((out, inp))?.contiguous()?)
}

/// llama.cpp's `permute(w, n_head)` (HF layout -> GGUF layout); used to write test GGUFs.
pub fn permute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, 2, hd / 2, inp))?.transpose(1, 2)?.reshape((out, inp))?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_roundtrip() {
        let w = Tensor::arange(0f32, 8.0 * 3.0, &Device::Cpu).unwrap().reshape((8, 3)).unwrap();
        let p = permute(&w, 2).unwrap();
        assert_ne!(p.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_eq!(unpermute(&p, 2).unwrap().to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Head 0 rows in GGUF order: 0, 2, 1, 3 (pairs interleave the two halves).
        let rows: Vec<f32> = p.to_vec2::<f32>().unwrap().iter().take(4).map(|r| r[0]).collect();
        assert_eq!(rows, vec![0.0, 6.0, 3.0, 9.0]);
    }

    #[test]
    fn names_map() {
        assert_eq!(hf_name("blk.3.attn_q.weight").unwrap(), "model.layers.3.self_attn.q_proj.weight");
        assert_eq!(hf_name("blk.0.attn_k_norm.weight").unwrap(), "model.layers.0.self_attn.k_norm.weight");
        assert_eq!(hf_name("blk.0.attn_v.bias").unwrap(), "model.layers.0.self_attn.v_proj.bias");
        assert!(hf_name("blk.0.something.weight").is_none());
    }
}
