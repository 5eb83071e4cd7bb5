//! Randomly initialised weights for a config: tiny models for tests and for learnability checks.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::RawWeights;
use crate::config::ModelConfig;
use crate::Result;

/// Weights drawn uniformly with std ~ 0.02 * `scale` (norm weights 1, biases small), deterministic in `seed`.
pub fn random_weights(config: &ModelConfig, seed: u64, scale: f32) -> Result<RawWeights> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bound = 0.02 * scale * 3f32.sqrt();
    let mut tensors = HashMap::new();
    let mat =
        |tensors: &mut HashMap<String, Tensor>, name: String, shape: &[usize], rng: &mut ChaCha8Rng| -> Result<()> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
            Ok(())
        };
    let h = config.hidden_size;
    let q = config.num_heads * config.head_dim;
    let kv = config.num_kv_heads * config.head_dim;
    mat(&mut tensors, "model.embed_tokens.weight".into(), &[config.vocab_size, h], &mut rng)?;
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        mat(&mut tensors, format!("{p}.self_attn.q_proj.weight"), &[q, h], &mut rng)?;
        mat(&mut tensors, format!("{p}.self_attn.k_proj.weight"), &[kv, h], &mut rng)?;
        mat(&mut tensors, format!("{p}.self_attn.v_proj.weight"), &[kv, h], &mut rng)?;
        mat(&mut tensors, format!("{p}.self_attn.o_proj.weight"), &[h, q], &mut rng)?;
        mat(&mut tensors, format!("{p}.mlp.gate_proj.weight"), &[config.intermediate_size, h], &mut rng)?;
        mat(&mut tensors, format!("{p}.mlp.up_proj.weight"), &[config.intermediate_size, h], &mut rng)?;
        mat(&mut tensors, format!("{p}.mlp.down_proj.weight"), &[h, config.intermediate_size], &mut rng)?;
        if config.qkv_bias {
            mat(&mut tensors, format!("{p}.self_attn.q_proj.bias"), &[q], &mut rng)?;
            mat(&mut tensors, format!("{p}.self_attn.k_proj.bias"), &[kv], &mut rng)?;
            mat(&mut tensors, format!("{p}.self_attn.v_proj.bias"), &[kv], &mut rng)?;
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.insert(format!("{p}.{norm}.weight"), Tensor::ones(h, candle_core::DType::F32, &Device::Cpu)?);
        }
        if config.qk_norm {
            for norm in ["q_norm", "k_norm"] {
                tensors.insert(
                    format!("{p}.self_attn.{norm}.weight"),
                    Tensor::ones(config.head_dim, candle_core::DType::F32, &Device::Cpu)?,
                );
            }
        }
    }
    tensors.insert("model.norm.weight".into(), Tensor::ones(h, candle_core::DType::F32, &Device::Cpu)?);
    if !config.tie_word_embeddings {
        mat(&mut tensors, "lm_head.weight".into(), &[config.vocab_size, h], &mut rng)?;
    }
    Ok(RawWeights { config: config.clone(), tensors, rope_freq_factors: None })
}
