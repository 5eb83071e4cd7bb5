//! # ideator-model
//!
//! The ideator language model: a decoder covering the Llama family (SmolLM2, Llama 3.x), Qwen2 (q/k/v bias) and
//! Qwen3 (q/k RMS norm); loading from GGUF (dequantised), from a safetensors folder or from the Hugging Face hub;
//! the tokenizer and chat template; a trainable forward that returns per-token log-probabilities; a detached,
//! KV-cached, batched decode path; LoRA adapters; and the batched sampler that records behaviour log-probs.

pub mod allocator;
pub mod assets;
pub mod attention;
pub mod chat_template;
pub mod config;
mod cpu_op;
pub mod data_parallel;
mod decode_attention;
mod decode_copy;
pub mod decoder;
pub mod device;
pub mod error;
pub mod few_rows;
pub mod kernel_choice;
pub mod kv_cache;
#[cfg(target_arch = "x86_64")]
mod lane_sums;
pub mod linear;
pub mod load;
pub mod logprob;
pub mod lora;
pub mod machine;
pub mod norm;
pub mod packed_tiles;
pub mod rope;
pub mod sampler;
pub mod scored;
pub mod seed;
mod swiglu;
pub mod tiny;
pub mod tokenizer;
#[cfg(target_arch = "x86_64")]
mod vector_exp;
pub mod weights;

/// Borrowing the values of f32 CPU tensors, for element-wise passes in other crates (the trainer's AdamW).
pub use cpu_op::{product as gemm_product, with_f32_slices};

pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{Arch, ModelConfig};
pub use decoder::{Decoder, TokenBatch};
pub use error::{ModelError, Result};
pub use linear::AdapterMode;
pub use load::{load_model, Model};
pub use lora::{LoraConfig, LoraTarget};
pub use scored::{Backprop, Scored};
pub use tokenizer::Tokenizer;
pub use weights::spec::ModelSpec;
