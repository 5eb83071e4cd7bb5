//! The GRPO objective per token, aggregated into one differentiable loss (DESIGN section 5):
//!
//! `-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta k3(ref || theta) - c H`, with
//! `rho = exp(logp_theta - logp_behaviour)` against the *stored* behaviour log-probs, so groups sampled by an older
//! policy train correctly, and `k3 = exp(q) - q - 1`, `q = logp_ref - logp_theta`.
//!
//! The clipped term is built as `coef * rho` with `coef = -A` on tokens where the unclipped branch is active and
//! 0 where clipping holds: the same gradient as the min/clip expression, without relying on the gradient of
//! elementwise min at ties. The objective is computed once: `rho` and k3 are tensors (the gradient flows through
//! them), and the clip sides and every reported statistic are read from those same tensors' values.
//!
//! Rollout correction (`grpo.rollout_is_threshold = C`, for a sampler that is not the trained policy, such as a
//! bf16 sampling copy): on tokens sampled by the weights being trained, the ratio is taken against the trained
//! policy's own detached log-prob (`rho = 1`, the on-policy gradient) and the policy term is weighted by the
//! truncated importance weight `min(pi_train / pi_rollout, C)` (verl's token-level truncated IS; Yao et al. 2025,
//! "Your efficient RL framework secretly brings you off-policy RL training"). A group sampled by older weights
//! has no training-side log-probs of those weights, so its ratio stays against the rollout log-probs, unweighted.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{GrpoConfig, LossAggregation};
use crate::Result;

/// What the loss needs to know about one sequence besides the policy's current log-probs.
#[derive(Debug, Clone)]
pub(crate) struct SequenceTerms {
    pub advantage: f64,
    pub behaviour_logprobs: Vec<f32>,
    pub reference_logprobs: Option<Vec<f32>>,
    /// Weight of each of this sequence's tokens in the step loss (from the aggregation).
    pub token_weight: f64,
    /// Sampled by the weights this update starts from: the policy's log-probs are then the trained policy's own
    /// log-probs of the behaviour weights (rollout correction and the mismatch statistics use them).
    pub on_policy: bool,
}

/// Per-token weights of each aggregation, over the whole step's batch (so micro-batches add up exactly).
pub(crate) fn token_weights(
    lengths: &[usize],
    aggregation: LossAggregation,
    max_completion_tokens: usize,
) -> Vec<f64> {
    let n = lengths.len().max(1) as f64;
    let total: usize = lengths.iter().sum();
    lengths
        .iter()
        .map(|&l| match aggregation {
            LossAggregation::SequenceMean => 1.0 / (n * l.max(1) as f64),
            LossAggregation::TokenMean => 1.0 / total.max(1) as f64,
            LossAggregation::Constant => 1.0 / (n * max_completion_tokens.max(1) as f64),
        })
        .collect()
}

/// Sums over tokens, to be divided by `tokens` for means (kept as sums so micro-batches combine).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct LossStats {
    pub loss: f64,
    pub policy_loss: f64,
    pub kl_loss: f64,
    pub tokens: usize,
    pub clipped_low: usize,
    pub clipped_high: usize,
    pub kl_sum: f64,
    pub entropy_sum: f64,
    pub ratio_sum: f64,
    pub ratio_max: f64,
    /// Sum of |logp_train - logp_rollout| over on-policy tokens, and their count.
    pub mismatch_abs_sum: f64,
    pub mismatch_tokens: usize,
    /// Sum of the truncated IS weights, the tokens weighted, and those whose weight was truncated at C.
    pub is_weight_sum: f64,
    pub is_tokens: usize,
    pub is_truncated: usize,
}

impl LossStats {
    pub fn merge(&mut self, o: &LossStats) {
        self.loss += o.loss;
        self.policy_loss += o.policy_loss;
        self.kl_loss += o.kl_loss;
        self.tokens += o.tokens;
        self.clipped_low += o.clipped_low;
        self.clipped_high += o.clipped_high;
        self.kl_sum += o.kl_sum;
        self.entropy_sum += o.entropy_sum;
        self.ratio_sum += o.ratio_sum;
        self.ratio_max = self.ratio_max.max(o.ratio_max);
        self.mismatch_abs_sum += o.mismatch_abs_sum;
        self.mismatch_tokens += o.mismatch_tokens;
        self.is_weight_sum += o.is_weight_sum;
        self.is_tokens += o.is_tokens;
        self.is_truncated += o.is_truncated;
    }
}

/// The step's per-token inputs besides the policy's log-probs, flattened in token order.
struct TokenInputs {
    behaviour: Vec<f32>,
    on_policy: Vec<bool>,
    advantage: Vec<f64>,
    weight: Vec<f64>,
    /// `None` when no sequence has reference log-probs (beta = 0 loads no reference model).
    reference: Option<Vec<f32>>,
}

impl TokenInputs {
    /// Flattens `seqs`; a sequence without reference log-probs among others that have them takes the policy's own
    /// log-probs `logp` as its reference, so its KL is exactly 0.
    fn gather(seqs: &[SequenceTerms], logp: &[f32]) -> TokenInputs {
        let mut t = TokenInputs {
            behaviour: Vec::new(),
            on_policy: Vec::new(),
            advantage: Vec::new(),
            weight: Vec::new(),
            reference: None,
        };
        let mut reference = Vec::new();
        for s in seqs {
            let (start, len) = (t.behaviour.len(), s.behaviour_logprobs.len());
            t.behaviour.extend_from_slice(&s.behaviour_logprobs);
            t.on_policy.extend(std::iter::repeat_n(s.on_policy, len));
            t.advantage.extend(std::iter::repeat_n(s.advantage, len));
            t.weight.extend(std::iter::repeat_n(s.token_weight, len));
            match &s.reference_logprobs {
                Some(r) => reference.extend_from_slice(&r[..len]),
                None => reference.extend_from_slice(&logp[start..start + len]),
            }
        }
        t.reference = seqs.iter().any(|s| s.reference_logprobs.is_some()).then_some(reference);
        t
    }
}

/// Per token: the log-prob the PPO ratio is taken against, and the importance weight of its policy term.
struct Correction {
    old: Vec<f32>,
    is_weight: Vec<f64>,
}

/// Without a threshold, the ratio is against the rollout log-probs with weight 1. With threshold `C`, an
/// on-policy token's ratio is against the trained policy's own log-prob `logp` (detached) and its weight is
/// `min(exp(logp - logp_rollout), C)`; other tokens are as without.
fn rollout_correction(inputs: &TokenInputs, logp: &[f32], threshold: Option<f64>) -> Correction {
    let mut c = Correction { old: inputs.behaviour.clone(), is_weight: vec![1.0; logp.len()] };
    let Some(cap) = threshold else { return c };
    for t in (0..logp.len()).filter(|&t| inputs.on_policy[t]) {
        c.old[t] = logp[t];
        c.is_weight[t] = ((logp[t] - inputs.behaviour[t]) as f64).exp().min(cap);
    }
    c
}

/// Which side of the PPO clip range a token's ratio is on, given its advantage; a clipped token has no policy
/// gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Clip {
    Inside,
    Low,
    High,
}

fn clip_side(ratio: f64, advantage: f64, cfg: &GrpoConfig) -> Clip {
    if advantage < 0.0 && ratio < 1.0 - cfg.clip_low {
        Clip::Low
    } else if advantage > 0.0 && ratio > 1.0 + cfg.clip_high {
        Clip::High
    } else {
        Clip::Inside
    }
}

/// The differentiable loss of a micro-batch and its statistics, both from the same per-token quantities: the
/// ratio `rho` and the k3 KL are computed once as tensors (differentiable), and the clip sides, the reported
/// losses and the sums of [`LossStats`] are read from those tensors' values. `logp` and `entropy` (shape
/// `(tokens,)`) are the policy's values for every token of `seqs`, concatenated in order.
///
/// # Errors
/// [`crate::TrainerError::Data`] when the token counts of `logp` and `seqs` differ; tensor errors.
pub(crate) fn grpo_loss(
    logp: &Tensor,
    entropy: &Tensor,
    seqs: &[SequenceTerms],
    cfg: &GrpoConfig,
) -> Result<(Tensor, LossStats)> {
    let logp_host = logp.to_vec1::<f32>()?;
    let n: usize = seqs.iter().map(|s| s.behaviour_logprobs.len()).sum();
    if n != logp_host.len() {
        return Err(crate::TrainerError::Data(format!(
            "{} policy log-probs for {n} behaviour log-probs",
            logp_host.len()
        )));
    }
    let inputs = TokenInputs::gather(seqs, &logp_host);
    let correction = rollout_correction(&inputs, &logp_host, cfg.rollout_is_threshold);
    let dev: &Device = logp.device();
    let ratio = (logp - Tensor::from_slice(&correction.old, n, dev)?)?.exp()?;
    let kl = match &inputs.reference {
        Some(reference) => {
            let q = (Tensor::from_slice(reference, n, dev)? - logp)?;
            Some(((q.exp()? - &q)? - 1.0)?)
        }
        None => None,
    };
    let ratio_host = ratio.to_vec1::<f32>()?;
    let kl_host = kl.as_ref().map(|k| k.to_vec1::<f32>()).transpose()?;
    let entropy_host = entropy.to_vec1::<f32>()?;
    let clips: Vec<Clip> =
        ratio_host.iter().zip(&inputs.advantage).map(|(&r, &a)| clip_side(r as f64, a, cfg)).collect();
    let mut stats = loss_stats(&inputs, &correction, &ratio_host, &clips, kl_host.as_deref(), &entropy_host, cfg);
    mismatch_stats(&mut stats, &inputs, &logp_host, &correction, cfg);

    // -min(rho A, clip(rho) A) as coef * rho: coef = -A w where the unclipped branch is active, 0 where clipped
    // (w: the token's aggregation weight times its importance weight).
    let pg_coef: Vec<f32> = (0..n)
        .map(|t| {
            let w = inputs.weight[t] * correction.is_weight[t];
            if clips[t] == Clip::Inside {
                (-inputs.advantage[t] * w) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut loss = (ratio * Tensor::from_vec(pg_coef, n, dev)?)?.sum_all()?;
    let weight = Tensor::from_vec(inputs.weight.iter().map(|&w| w as f32).collect::<Vec<_>>(), n, dev)?;
    if let (Some(kl), true) = (kl, cfg.beta > 0.0) {
        loss = (loss + ((kl * &weight)?.sum_all()? * cfg.beta)?)?;
    }
    if cfg.entropy_coef > 0.0 {
        loss = (loss - ((entropy * &weight)?.sum_all()? * cfg.entropy_coef)?)?;
    }
    Ok((loss, stats))
}

/// The mismatch between the trained policy and the sampler on on-policy tokens, and the importance weights that
/// [`rollout_correction`] gave them (a weight at the threshold was truncated).
fn mismatch_stats(
    stats: &mut LossStats,
    inputs: &TokenInputs,
    logp: &[f32],
    correction: &Correction,
    cfg: &GrpoConfig,
) {
    for t in (0..logp.len()).filter(|&t| inputs.on_policy[t]) {
        stats.mismatch_abs_sum += ((logp[t] - inputs.behaviour[t]) as f64).abs();
        stats.mismatch_tokens += 1;
        if let Some(cap) = cfg.rollout_is_threshold {
            stats.is_weight_sum += correction.is_weight[t];
            stats.is_tokens += 1;
            stats.is_truncated += usize::from(correction.is_weight[t] >= cap);
        }
    }
}

/// The step's sums of [`LossStats`] from the per-token ratio, clip side, KL and entropy values.
fn loss_stats(
    inputs: &TokenInputs,
    correction: &Correction,
    ratio: &[f32],
    clips: &[Clip],
    kl: Option<&[f32]>,
    entropy: &[f32],
    cfg: &GrpoConfig,
) -> LossStats {
    let mut stats = LossStats { tokens: ratio.len(), ..Default::default() };
    for t in 0..ratio.len() {
        let (rho, a, w) = (ratio[t] as f64, inputs.advantage[t], inputs.weight[t]);
        let clipped = rho.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high);
        let pg = -(rho * a).min(clipped * a) * correction.is_weight[t];
        let k3 = kl.map_or(0.0, |k| k[t] as f64);
        stats.clipped_low += usize::from(clips[t] == Clip::Low);
        stats.clipped_high += usize::from(clips[t] == Clip::High);
        stats.policy_loss += w * pg;
        stats.ratio_sum += rho;
        stats.ratio_max = stats.ratio_max.max(rho);
        stats.entropy_sum += entropy[t] as f64;
        stats.kl_sum += k3;
        stats.kl_loss += w * cfg.beta * k3;
        stats.loss += w * (pg + cfg.beta * k3 - cfg.entropy_coef * entropy[t] as f64);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn one_token(adv: f64, logp: f32, behaviour: f32, reference: Option<f32>, cfg: &GrpoConfig) -> (f64, f32) {
        let v = Var::new(&[logp], &Device::Cpu).unwrap();
        let ent = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let seqs = vec![SequenceTerms {
            advantage: adv,
            behaviour_logprobs: vec![behaviour],
            reference_logprobs: reference.map(|r| vec![r]),
            token_weight: 1.0,
            on_policy: false,
        }];
        let (loss, stats) = grpo_loss(v.as_tensor(), &ent, &seqs, cfg).unwrap();
        let g = loss.backward().unwrap().get(v.as_tensor()).map(|g| g.to_vec1::<f32>().unwrap()[0]).unwrap_or(0.0);
        (stats.loss, g)
    }

    fn no_kl() -> GrpoConfig {
        GrpoConfig { beta: 0.0, ..Default::default() }
    }

    #[test]
    fn both_clip_sides() {
        let cfg = no_kl();
        let ln = |x: f32| x.ln();
        // A > 0: ratio 1.5 is clipped at 1.2 (no gradient), ratio 0.5 is not (grad = -A * ratio).
        let (l, g) = one_token(1.0, ln(1.5), 0.0, None, &cfg);
        assert!((l + 1.2).abs() < 1e-6 && g == 0.0, "loss {l} grad {g}");
        let (l, g) = one_token(1.0, ln(0.5), 0.0, None, &cfg);
        assert!((l + 0.5).abs() < 1e-6 && (g + 0.5).abs() < 1e-6, "loss {l} grad {g}");
        // A < 0: ratio 0.5 is clipped at 0.8 (no gradient), ratio 1.5 is not (grad = -A * ratio = 1.5).
        let (l, g) = one_token(-1.0, ln(0.5), 0.0, None, &cfg);
        assert!((l - 0.8).abs() < 1e-6 && g == 0.0, "loss {l} grad {g}");
        let (l, g) = one_token(-1.0, ln(1.5), 0.0, None, &cfg);
        assert!((l - 1.5).abs() < 1e-6 && (g - 1.5).abs() < 1e-5, "loss {l} grad {g}");
        // Clip-higher: with clip_high 0.6, ratio 1.5 is inside the range again.
        let cfg = GrpoConfig { clip_high: 0.6, ..no_kl() };
        let (_, g) = one_token(1.0, ln(1.5), 0.0, None, &cfg);
        assert!((g + 1.5).abs() < 1e-5);
    }

    #[test]
    fn k3_kl_value_and_gradient() {
        let cfg = GrpoConfig { beta: 1.0, ..Default::default() };
        // q = ln(0.25) - ln(0.5) = ln(0.5): k3 = 0.5 - ln 0.5 - 1; d/dlogp = 1 - exp(q) = 0.5. Advantage 0.
        let (l, g) = one_token(0.0, 0.5f32.ln(), 0.5f32.ln(), Some(0.25f32.ln()), &cfg);
        let want = 0.5 - 0.5f64.ln() - 1.0;
        assert!((l - want).abs() < 1e-6 && (g - 0.5).abs() < 1e-6, "loss {l} grad {g}");
    }

    /// One token's loss, gradient and statistics, sampled by the current weights (`on_policy`) or older ones.
    fn corrected(adv: f64, logp: f32, rollout: f32, on_policy: bool, cfg: &GrpoConfig) -> (f64, f32, LossStats) {
        let v = Var::new(&[logp], &Device::Cpu).unwrap();
        let ent = Tensor::new(&[0.0f32], &Device::Cpu).unwrap();
        let seqs = vec![SequenceTerms {
            advantage: adv,
            behaviour_logprobs: vec![rollout],
            reference_logprobs: None,
            token_weight: 1.0,
            on_policy,
        }];
        let (loss, stats) = grpo_loss(v.as_tensor(), &ent, &seqs, cfg).unwrap();
        let g = loss.backward().unwrap().get(v.as_tensor()).map(|g| g.to_vec1::<f32>().unwrap()[0]).unwrap_or(0.0);
        (stats.loss, g, stats)
    }

    #[test]
    fn truncated_importance_sampling_weights_on_policy_tokens_by_the_capped_ratio() {
        let cfg = GrpoConfig { rollout_is_threshold: Some(2.0), ..no_kl() };
        // pi_train / pi_rollout = e^0.3 ~ 1.35: the PPO ratio is 1 (against the trained policy itself), so no clip,
        // and the policy term is weighted by 1.35: gradient -A * 1.35.
        let (loss, g, s) = corrected(1.0, -1.0, -1.3, true, &cfg);
        let w = 0.3f64.exp();
        assert!((loss + w).abs() < 1e-5 && (g as f64 + w).abs() < 1e-5, "loss {loss} grad {g}");
        assert_eq!((s.is_tokens, s.is_truncated, s.mismatch_tokens), (1, 0, 1));
        assert!((s.is_weight_sum - w).abs() < 1e-5 && (s.mismatch_abs_sum - 0.3).abs() < 1e-5);
        // e^1.5 ~ 4.5 is truncated at 2, even with a negative advantage (no clip either: the ratio is 1).
        let (_, g, s) = corrected(-1.0, -1.0, -2.5, true, &cfg);
        assert!((g - 2.0).abs() < 1e-5, "grad {g}");
        assert_eq!((s.is_truncated, s.is_weight_sum), (1, 2.0));
        // Without the threshold the same token's ratio 4.5 is clipped: no gradient. The mismatch is still reported.
        let (_, g, s) = corrected(1.0, -1.0, -2.5, true, &no_kl());
        assert_eq!((g, s.is_tokens, s.mismatch_tokens), (0.0, 0, 1));
    }

    #[test]
    fn a_stale_token_keeps_its_ratio_against_the_rollout_and_no_weight() {
        let with = GrpoConfig { rollout_is_threshold: Some(2.0), ..no_kl() };
        for adv in [1.0, -1.0] {
            let (l1, g1, s) = corrected(adv, -1.0, -1.1, false, &with);
            let (l0, g0, _) = corrected(adv, -1.0, -1.1, false, &no_kl());
            assert_eq!((l1, g1), (l0, g0));
            assert_eq!((s.is_tokens, s.mismatch_tokens), (0, 0), "no training-side log-prob of older weights");
        }
    }

    #[test]
    fn zero_advantage_gives_zero_policy_gradient() {
        let (l, g) = one_token(0.0, -1.0, -1.3, None, &no_kl());
        assert_eq!((l, g), (0.0, 0.0));
    }

    #[test]
    fn stale_samples_use_the_behaviour_ratio() {
        // Sampled by an older policy whose log-prob was 0.5 lower: ratio e^0.5 ~ 1.65.
        let (_, g) = one_token(1.0, -1.0, -1.5, None, &no_kl());
        assert_eq!(g, 0.0, "positive advantage beyond 1 + eps is clipped");
        let (_, g) = one_token(-1.0, -1.0, -1.5, None, &no_kl());
        assert!((g - 0.5f32.exp()).abs() < 1e-5, "negative advantage keeps the full ratio gradient: {g}");
    }

    #[test]
    fn aggregation_normalisers() {
        let lens = [1, 3];
        assert_eq!(token_weights(&lens, LossAggregation::SequenceMean, 10), vec![0.5, 1.0 / 6.0]);
        assert_eq!(token_weights(&lens, LossAggregation::TokenMean, 10), vec![0.25, 0.25]);
        assert_eq!(token_weights(&lens, LossAggregation::Constant, 10), vec![0.05, 0.05]);
        // With ratio 1 and A = 1 every token's gradient is -weight.
        let v = Var::new(&[0.0f32; 4], &Device::Cpu).unwrap();
        let ent = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = token_weights(&lens, LossAggregation::SequenceMean, 10);
        let seqs = vec![
            SequenceTerms {
                advantage: 1.0,
                behaviour_logprobs: vec![0.0],
                reference_logprobs: None,
                token_weight: w[0],
                on_policy: false,
            },
            SequenceTerms {
                advantage: 1.0,
                behaviour_logprobs: vec![0.0; 3],
                reference_logprobs: None,
                token_weight: w[1],
                on_policy: false,
            },
        ];
        let (loss, _) = grpo_loss(v.as_tensor(), &ent, &seqs, &no_kl()).unwrap();
        let g = loss.backward().unwrap().get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let want = [-0.5f32, -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn entropy_bonus_pushes_entropy_up() {
        let cfg = GrpoConfig { beta: 0.0, entropy_coef: 0.1, ..Default::default() };
        let lp = Var::new(&[-1.0f32], &Device::Cpu).unwrap();
        let ent = Var::new(&[2.0f32], &Device::Cpu).unwrap();
        let seqs = vec![SequenceTerms {
            advantage: 0.0,
            behaviour_logprobs: vec![-1.0],
            reference_logprobs: None,
            token_weight: 1.0,
            on_policy: false,
        }];
        let (loss, stats) = grpo_loss(lp.as_tensor(), ent.as_tensor(), &seqs, &cfg).unwrap();
        assert!((stats.loss + 0.2).abs() < 1e-6);
        let g = loss.backward().unwrap().get(ent.as_tensor()).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((g + 0.1).abs() < 1e-6);
    }
}
