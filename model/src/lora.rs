//! LoRA configuration and adapter creation.

use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::linear::LoraAdapter;
use crate::{ModelError, Result};

/// The projections LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The Hugging Face module name (`q_proj`, ...).
    pub(crate) fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(default = "default_rank")]
    pub rank: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f32,
    #[serde(default = "default_targets")]
    pub targets: Vec<LoraTarget>,
}

fn default_rank() -> usize {
    16
}
fn default_alpha() -> f64 {
    32.0
}
fn default_targets() -> Vec<LoraTarget> {
    LoraTarget::ALL.to_vec()
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: default_rank(), alpha: default_alpha(), dropout: 0.0, targets: default_targets() }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(ModelError::Invalid("lora.rank must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(ModelError::Invalid(format!("lora.alpha must be a positive number, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Invalid(format!("lora.dropout must be in [0, 1), got {}", self.dropout)));
        }
        if self.targets.is_empty() {
            return Err(ModelError::Invalid(
                "lora.targets is empty: name at least one of q, k, v, o, gate, up, down".into(),
            ));
        }
        Ok(())
    }

    /// A fresh adapter for a (out, in) weight: A uniform in +-1/sqrt(in) (as PEFT's Kaiming init), B zero.
    pub(crate) fn new_adapter(
        &self,
        out_dim: usize,
        in_dim: usize,
        rng: &mut ChaCha8Rng,
        like: &Tensor,
    ) -> Result<LoraAdapter> {
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = (0..self.rank * in_dim).map(|_| rng.random_range(-bound..bound)).collect();
        let a = Tensor::from_vec(a, (self.rank, in_dim), like.device())?.to_dtype(like.dtype())?;
        let b = Tensor::zeros((out_dim, self.rank), like.dtype(), like.device())?;
        Ok(LoraAdapter {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: self.alpha / self.rank as f64,
            dropout: self.dropout,
        })
    }
}

/// The RNG used for adapter initialisation, derived from a seed so runs are reproducible.
pub(crate) fn init_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}
