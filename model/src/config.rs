//! The decoder's shape and options, read from GGUF metadata or a Hugging Face `config.json`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// The model families we implement. They differ only in a few switches of the same decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama 2/3.x, SmolLM/SmolLM2, Mistral-style dense decoders.
    Llama,
    /// Qwen2/2.5: bias on the q, k and v projections.
    Qwen2,
    /// Qwen3: RMS norm on q and k per head, no q/k/v bias.
    Qwen3,
}

/// Llama 3.1-style frequency rescaling of RoPE (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v projections (Qwen2).
    pub qkv_bias: bool,
    /// RMS norm of q and k per head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub rope_scaling: Option<Llama3RopeScaling>,
}

impl ModelConfig {
    /// Checks the invariants the decoder relies on, so a bad config fails at load time with a clear message.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Unsupported(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 || self.hidden_size == 0 {
            return bad(format!("config has a zero dimension: {self:?}"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} is odd; rotary embeddings need an even one", self.head_dim));
        }
        if self.vocab_size == 0 || self.intermediate_size == 0 {
            return bad("config has an empty vocabulary or FFN".into());
        }
        Ok(())
    }

    /// Number of parameters (weights and norms), counting tied embeddings once.
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.qk_norm {
            layer += 2 * self.head_dim;
        }
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_layers * layer + h + head
    }

    /// Reads the config from GGUF metadata (`general.architecture` and its keys).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch_name = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| ModelError::Unsupported("GGUF has no general.architecture".into()))?
            .clone();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF architecture '{other}' (supported: llama, qwen2, qwen3)"
                )))
            }
        };
        let get = |key: &str| md.get(&format!("{arch_name}.{key}"));
        let get_usize = |key: &str| -> Result<usize> {
            get(key)
                .ok_or_else(|| ModelError::Unsupported(format!("GGUF lacks {arch_name}.{key}")))?
                .to_u64()
                .map(|v| v as usize)
                .or_else(|_| get(key).unwrap().to_u32().map(|v| v as usize))
                .map_err(|e| ModelError::Unsupported(format!("GGUF {arch_name}.{key}: {e}")))
        };
        let get_f64 = |key: &str, default: f64| -> f64 {
            // f32 metadata is widened through its shortest decimal form, so 1e-5 stays 1e-5 (not 9.99999974e-6).
            get(key)
                .and_then(|v| v.to_f32().ok().and_then(|x| x.to_string().parse().ok()).or_else(|| v.to_f64().ok()))
                .unwrap_or(default)
        };
        let hidden_size = get_usize("embedding_length")?;
        let num_heads = get_usize("attention.head_count")?;
        let num_kv_heads = get_usize("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = get_usize("attention.key_length").unwrap_or(hidden_size / num_heads);
        let embd = content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::Unsupported("GGUF has no token_embd.weight tensor".into()))?;
        // GGUF stores shapes innermost-first reversed by candle, so dims are (vocab, hidden).
        let vocab_size = embd.shape.dims()[0];
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: get_usize("feed_forward_length")?,
            num_layers: get_usize("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_theta: get_f64("rope.freq_base", 10_000.0),
            rms_norm_eps: get_f64("attention.layer_norm_rms_epsilon", 1e-5),
            max_position_embeddings: get_usize("context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
            qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            qk_norm: content.tensor_infos.contains_key("blk.0.attn_q_norm.weight"),
            // Llama 3.1 GGUFs carry the rescaled frequencies as a `rope_freqs.weight` tensor instead.
            rope_scaling: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        let raw: HfConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(path, format!("not a valid Hugging Face config.json: {e}")))?;
        let arch_name = raw.architectures.first().cloned().or(raw.model_type.clone()).unwrap_or_default();
        let arch = match arch_name.as_str() {
            "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral" => Arch::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            "Qwen3ForCausalLM" | "qwen3" => Arch::Qwen3,
            other => {
                return Err(ModelError::file(
                    path,
                    format!(
                        "unsupported architecture '{other}' (supported: LlamaForCausalLM, MistralForCausalLM, \
                         Qwen2ForCausalLM, Qwen3ForCausalLM)"
                    ),
                ))
            }
        };
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
        let rope_scaling = match raw.rope_scaling {
            Some(s) if s.rope_type.as_deref() == Some("llama3") => Some(Llama3RopeScaling {
                factor: s.factor.unwrap_or(8.0),
                low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192),
            }),
            Some(s) if s.rope_type.as_deref().is_some_and(|t| t != "default") => {
                return Err(ModelError::file(
                    path,
                    format!("unsupported rope_scaling type {:?} (supported: llama3, default)", s.rope_type),
                ))
            }
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: raw.attention_bias.unwrap_or(arch == Arch::Qwen2),
            qk_norm: arch == Arch::Qwen3,
            rope_scaling,
        };
        cfg.validate().map_err(|e| ModelError::file(path, e.to_string()))?;
        Ok(cfg)
    }
}

/// The subset of a Hugging Face config we read; other keys are ignored on purpose (configs carry many).
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    rope_scaling: Option<HfRopeScaling>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_for_qwen2_turns_on_bias() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":100,"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rope_theta":1000000.0,
               "tie_word_embeddings":true,"torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        let cfg = ModelConfig::from_hf_json(&p).unwrap();
        assert_eq!(cfg.arch, Arch::Qwen2);
        assert!(cfg.qkv_bias && !cfg.qk_norm && cfg.tie_word_embeddings);
        assert_eq!((cfg.head_dim, cfg.num_kv_heads), (16, 2));
    }

    #[test]
    fn unsupported_architecture_names_file_and_arch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"architectures":["GPTNeoXForCausalLM"],"vocab_size":100,"hidden_size":64,"intermediate_size":128,
               "num_hidden_layers":2,"num_attention_heads":4}"#,
        )
        .unwrap();
        let err = ModelConfig::from_hf_json(&p).unwrap_err().to_string();
        assert!(err.contains("GPTNeoXForCausalLM") && err.contains("config.json"), "{err}");
    }

    #[test]
    fn heads_must_divide() {
        let cfg = ModelConfig {
            arch: Arch::Llama,
            vocab_size: 10,
            hidden_size: 12,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 3,
            num_kv_heads: 2,
            head_dim: 4,
            rope_theta: 1e4,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 16,
            tie_word_embeddings: true,
            qkv_bias: false,
            qk_norm: false,
            rope_scaling: None,
        };
        assert!(cfg.validate().is_err());
    }
}
