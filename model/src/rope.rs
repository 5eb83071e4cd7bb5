//! Rotary position embeddings in the Hugging Face ("half rotation") layout.
//!
//! Two ways to apply them: `apply_differentiable` composes narrow/mul/cat so gradients flow (the trainable
//! forward), `apply_fast` uses candle's fused kernel, which has no backward (the decode path). Both take
//! per-row cos/sin of shape (batch, time, head_dim / 2), so left-padded rows keep their true positions.

use candle_core::{DType, Device, Tensor, D};

use crate::config::ModelConfig;
use crate::Result;

/// Longest position table we build; configs that claim more (Llama 3.1: 131072) are capped to this.
const MAX_TABLE: usize = 1 << 15;

#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl Rope {
    /// `freq_factors` (from a Llama 3.1 GGUF's `rope_freqs.weight`) divide the frequencies when present.
    pub fn new(cfg: &ModelConfig, freq_factors: Option<&[f32]>, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let mut inv_freq: Vec<f64> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / cfg.head_dim as f64)).collect();
        if let Some(s) = cfg.rope_scaling {
            // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
            let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (s.original_max_position_embeddings as f64 / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        if let Some(factors) = freq_factors {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= *d as f64;
            }
        }
        let max_positions = cfg.max_position_embeddings.clamp(1, MAX_TABLE);
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (max_positions, half), device)?,
            sin: Tensor::from_vec(sin, (max_positions, half), device)?,
            max_positions,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos and sin for the given positions, each (batch, time, head_dim / 2).
    pub fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dim(1)?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
        Ok((cos, sin))
    }

    /// x: (batch, heads, time, head_dim). Differentiable.
    pub(crate) fn apply_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let cos = cos.unsqueeze(1)?.to_dtype(x.dtype())?;
        let sin = sin.unsqueeze(1)?.to_dtype(x.dtype())?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Ok(Tensor::cat(&[r1, r2], D::Minus1)?)
    }

    /// x: (batch, heads, time, head_dim). Fused kernel, no backward: only for detached decoding.
    pub(crate) fn apply_fast(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let dtype = x.dtype();
        let (cos, sin) = if dtype == DType::F32 {
            (cos.contiguous()?, sin.contiguous()?)
        } else {
            (cos.to_dtype(dtype)?.contiguous()?, sin.to_dtype(dtype)?.contiguous()?)
        };
        Ok(candle_nn::rotary_emb::rope(&x, &cos, &sin)?)
    }
}
