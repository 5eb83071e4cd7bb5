//! Tiny model configs shared by the model crate's integration tests.
#![allow(dead_code)]

use candle_core::DType;
use ideator_model::device::test_device;
use ideator_model::weights::random::random_weights;
use ideator_model::{Arch, Decoder, ModelConfig};

pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        vocab_size: 97,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 128,
        tie_word_embeddings: arch == Arch::Llama,
        qkv_bias: arch == Arch::Qwen2,
        qk_norm: arch == Arch::Qwen3,
        rope_scaling: None,
    }
}

/// A tiny random decoder in f32 on the test device (`IDEATOR_TEST_DEVICE`).
pub fn tiny_decoder(arch: Arch, seed: u64) -> Decoder {
    tiny_decoder_in(arch, seed, DType::F32)
}

/// The same weights computing in `dtype`.
pub fn tiny_decoder_in(arch: Arch, seed: u64, dtype: DType) -> Decoder {
    // Larger init than usual so a random model's outputs differ clearly between positions.
    let raw = random_weights(&tiny_config(arch), seed, 10.0).unwrap();
    Decoder::from_raw(raw, dtype, &test_device()).unwrap()
}

pub const ARCHS: [Arch; 3] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3];
