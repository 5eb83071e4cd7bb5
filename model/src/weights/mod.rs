//! Reading model weights into plain tensors named as in Hugging Face checkpoints, from a GGUF file, a
//! safetensors folder, or the Hugging Face hub cache. The decoder is then built from those tensors.

pub mod export;
pub mod gguf;
pub mod hub;
pub mod random;
pub mod safetensors_dir;
pub mod spec;

use std::collections::HashMap;

use candle_core::Tensor;

use crate::config::ModelConfig;

/// Weights and shape of a model, before a decoder is built from them.
pub struct RawWeights {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
    /// Llama 3.1 GGUFs store rescaled rotary frequencies as factors.
    pub rope_freq_factors: Option<Vec<f32>>,
}
