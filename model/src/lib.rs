//! # ideator-model
//!
//! The ideator language model: a decoder covering the Llama family (SmolLM2, Llama 3.x), Qwen2 (q/k/v bias) and
//! Qwen3 (q/k RMS norm); loading from GGUF (dequantised), from a safetensors folder or from the Hugging Face hub;
//! the tokenizer and chat template; a trainable forward that returns per-token log-probabilities; a detached,
//! KV-cached, batched decode path; LoRA adapters; and the batched sampler that records behaviour log-probs.

pub mod assets;
pub mod chat_template;
pub mod error;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{ModelError, Result};
pub use tokenizer::Tokenizer;
