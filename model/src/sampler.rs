//! Batched, KV-cached sampling with temperature, top-k, top-p, stop strings and EOS.
//!
//! Every sampled token comes with its *behaviour log-probability*: `log softmax(logits / temperature)` of the
//! full distribution at that step (before top-k/top-p truncation), which is what the GRPO ratio is taken
//! against. Each output row draws from its own RNG seeded by (seed, row index), so results do not depend on
//! how rows are batched: batch = sequential. Rows that share a prompt share its prefill (computed once), which is
//! the common case of a GRPO group; on the CPU they also read its keys and values in place
//! ([`KvCache::into_shared_prompts`](crate::kv_cache::KvCache::into_shared_prompts)), elsewhere each row gets a copy.

use std::collections::HashMap;

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::decoder::Decoder;
use crate::linear::AdapterMode;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 means greedy decoding.
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are masked until this many tokens are generated (benchmarks use it to get
    /// completions of a fixed length, as transformers' `min_new_tokens`).
    pub min_new_tokens: usize,
    /// Generation stops after the first of these appears in the completion (it is kept in the text).
    pub stop: Vec<String>,
    pub seed: u64,
    /// Rows decoded together; more rows use the CPU/GPU better but need more memory.
    pub batch_size: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            min_new_tokens: 0,
            stop: vec![],
            seed: 0,
            batch_size: 16,
        }
    }
}

impl SamplingParams {
    /// The temperature of the distribution that behaviour log-probs are taken from (greedy decoding reports
    /// log-probs of the untempered distribution).
    pub fn logprob_temperature(&self) -> f64 {
        if self.temperature > 0.0 {
            self.temperature
        } else {
            1.0
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if !(self.temperature == 0.0 || (self.temperature >= MIN_TEMPERATURE && self.temperature <= MAX_TEMPERATURE))
        {
            return bad(format!(
                "temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {}; below \
                 {MIN_TEMPERATURE} sampling is greedy in all but name, so use 0",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }

    /// [`SamplingParams::validate`] plus what a policy-gradient trainer needs: the trainer rescores completions
    /// under the plain tempered distribution, so EOS masking (`min_new_tokens > 0`) would bias the importance
    /// ratio by `1 - p(eos)` at the masked steps.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] naming the setting.
    pub fn validate_for_training(&self) -> Result<()> {
        self.validate()?;
        if self.min_new_tokens > 0 {
            return Err(ModelError::Invalid(format!(
                "sampling.min_new_tokens = {} cannot be used in training: the sampler masks end-of-sequence tokens \
                 that the trainer's rescoring does not, which biases the importance ratio; set it to 0",
                self.min_new_tokens
            )));
        }
        Ok(())
    }
}

/// The lowest accepted non-zero temperature. Log-probs are computed in f64, so they stay finite and <= 0 down to
/// here; below it a temperature only imitates greedy decoding (use 0).
pub(crate) const MIN_TEMPERATURE: f64 = 1e-4;
/// The highest accepted temperature (above it the distribution is uniform to f32 precision).
pub(crate) const MAX_TEMPERATURE: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token (kept in `token_ids`, not in `text`).
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Which prompt this continues.
    pub prompt_index: usize,
    /// Which of that prompt's samples this is.
    pub sample_index: usize,
    pub text: String,
    pub token_ids: Vec<u32>,
    /// Behaviour log-probability of each token in `token_ids`.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// One row being generated.
struct Row {
    prompt_index: usize,
    sample_index: usize,
    rng: ChaCha8Rng,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
    /// Length of the (left-padded) prompt region and which keys are real, grown as tokens are appended.
    key_valid: Vec<bool>,
    next_position: u32,
}

/// Samples `n` completions for each prompt (given as token ids). Output order: prompt-major.
/// `progress`, if given, is called with the number of completions finished after each batch.
pub fn sample(
    decoder: &Decoder,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    n: usize,
    params: &SamplingParams,
    mode: AdapterMode,
    progress: Option<&dyn Fn(usize)>,
) -> Result<Vec<Completion>> {
    params.validate()?;
    if prompts.iter().any(Vec::is_empty) {
        return Err(ModelError::Invalid("every prompt needs at least one token".into()));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + params.max_new_tokens > decoder.max_positions() {
        return Err(ModelError::Invalid(format!(
            "prompt of {longest} tokens plus {} new tokens exceeds the model's {} positions",
            params.max_new_tokens,
            decoder.max_positions()
        )));
    }
    let jobs: Vec<(usize, usize)> = (0..prompts.len()).flat_map(|p| (0..n).map(move |j| (p, j))).collect();
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(params.batch_size) {
        out.extend(sample_chunk(decoder, tokenizer, prompts, n, chunk, params, mode)?);
        if let Some(report) = progress {
            report(out.len());
        }
    }
    Ok(out)
}

/// Whether rows continuing the same prompt read its keys and values in place instead of copies of them: where the
/// decode step's fused kernel runs (CPU, f32). Elsewhere the composed ops would copy the prompt in front of every
/// row at every step, so the prefill's cache is copied once per row instead.
fn reads_shared_prompts_in_place(decoder: &Decoder) -> bool {
    decoder.device().is_cpu() && decoder.dtype() == candle_core::DType::F32
}

/// Distinct, well-mixed streams per row.
fn row_seed(seed: u64, row: usize) -> u64 {
    crate::seed::mix(seed, row as u64)
}

fn sample_chunk(
    decoder: &Decoder,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    n: usize,
    jobs: &[(usize, usize)],
    params: &SamplingParams,
    mode: AdapterMode,
) -> Result<Vec<Completion>> {
    let device = decoder.device().clone();
    // Prefill each distinct prompt once, left-padded to a common length.
    let mut unique: Vec<usize> = jobs.iter().map(|&(p, _)| p).collect();
    unique.dedup();
    let width = unique.iter().map(|&p| prompts[p].len()).max().unwrap();
    let capacity = width + params.max_new_tokens;
    let mut ids = Vec::with_capacity(unique.len() * width);
    let mut positions = Vec::with_capacity(unique.len() * width);
    let mut valid = Vec::with_capacity(unique.len());
    for &p in &unique {
        let pad = width - prompts[p].len();
        ids.extend(std::iter::repeat_n(prompts[p][0], pad));
        ids.extend_from_slice(&prompts[p]);
        positions.extend(std::iter::repeat_n(0u32, pad));
        positions.extend(0..prompts[p].len() as u32);
        let mut v = vec![false; pad];
        v.resize(width, true);
        valid.push(v);
    }
    let share = unique.len() < jobs.len() && reads_shared_prompts_in_place(decoder);
    let mut cache = decoder.new_cache(unique.len(), if share { width } else { capacity })?;
    let ids_t = Tensor::from_vec(ids, (unique.len(), width), &device)?;
    let pos_t = Tensor::from_vec(positions, (unique.len(), width), &device)?;
    let logits = decoder.decode(&ids_t, &pos_t, &valid, &mut cache, mode)?;
    // Expand to one row per job.
    let slot_of: HashMap<usize, usize> = unique.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    let job_slots: Vec<usize> = jobs.iter().map(|(p, _)| slot_of[p]).collect();
    let mut logits = if unique.len() == jobs.len() {
        logits
    } else {
        if share {
            cache = cache.into_shared_prompts(&job_slots, params.max_new_tokens)?;
        } else {
            cache.select_rows(&job_slots)?;
        }
        let slots: Vec<u32> = job_slots.iter().map(|&s| s as u32).collect();
        logits.index_select(&Tensor::new(slots.as_slice(), &device)?, 0)?
    };
    let mut rows: Vec<Row> = jobs
        .iter()
        .map(|&(p, j)| Row {
            prompt_index: p,
            sample_index: j,
            rng: ChaCha8Rng::seed_from_u64(row_seed(params.seed, p * n + j)),
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finish: None,
            key_valid: valid[slot_of[&p]].clone(),
            next_position: prompts[p].len() as u32,
        })
        .collect();
    let max_stop_len = params.stop.iter().map(String::len).max().unwrap_or(0);
    // `live[i]` is the row index of batch position i; finished rows are dropped from the batch.
    let mut live: Vec<usize> = (0..rows.len()).collect();
    for step in 0..params.max_new_tokens {
        let mut host = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        for (b, &r) in live.iter().enumerate() {
            let row = &mut rows[r];
            if step < params.min_new_tokens {
                for &eos in tokenizer.eos_ids() {
                    if let Some(z) = host[b].get_mut(eos as usize) {
                        *z = f32::NEG_INFINITY;
                    }
                }
            }
            if let Some(bad) = host[b].iter().find(|z| z.is_nan() || **z == f32::INFINITY) {
                return Err(ModelError::Invalid(format!(
                    "the model produced a non-finite logit ({bad}) at generated token {step}: its weights are \
                     broken (NaN or overflow); sampling stopped"
                )));
            }
            let (token, logprob) = pick_token(&host[b], params, &mut row.rng);
            row.tokens.push(token);
            row.logprobs.push(logprob);
            if tokenizer.is_eos(token) {
                row.finish = Some(FinishReason::Eos);
            } else if max_stop_len > 0 && ends_with_stop(tokenizer, &row.tokens, &params.stop, max_stop_len)? {
                row.finish = Some(FinishReason::Stop);
            } else if step + 1 == params.max_new_tokens {
                row.finish = Some(FinishReason::Length);
            }
        }
        let still: Vec<usize> = (0..live.len()).filter(|&b| rows[live[b]].finish.is_none()).collect();
        if still.is_empty() {
            break;
        }
        if still.len() < live.len() {
            // Drop finished rows from the cache so the remaining steps do no wasted work.
            cache.select_rows(&still)?;
            live = still.iter().map(|&b| live[b]).collect();
        }
        let mut next_ids = Vec::with_capacity(live.len());
        let mut next_pos = Vec::with_capacity(live.len());
        let mut key_valid = Vec::with_capacity(live.len());
        for &r in &live {
            let row = &mut rows[r];
            next_ids.push(*row.tokens.last().unwrap());
            next_pos.push(row.next_position);
            row.next_position += 1;
            row.key_valid.push(true);
            key_valid.push(row.key_valid.clone());
        }
        let ids_t = Tensor::from_vec(next_ids, (live.len(), 1), &device)?;
        let pos_t = Tensor::from_vec(next_pos, (live.len(), 1), &device)?;
        logits = decoder.decode(&ids_t, &pos_t, &key_valid, &mut cache, mode)?;
    }
    rows.into_iter()
        .map(|row| {
            let finish = row.finish.unwrap_or(FinishReason::Length);
            let mut text = tokenizer.decode(&row.tokens, true)?;
            if finish == FinishReason::Stop {
                if let Some(end) = first_stop_end(&text, &params.stop) {
                    text.truncate(end);
                }
            }
            Ok(Completion {
                prompt_index: row.prompt_index,
                sample_index: row.sample_index,
                text,
                token_ids: row.tokens,
                logprobs: row.logprobs,
                finish_reason: finish,
            })
        })
        .collect()
}

/// Whether the completion's tail contains a stop string. Only the last few tokens are decoded: a stop string
/// of L bytes spans at most L tokens, so the tail covers it without re-decoding the whole completion.
fn ends_with_stop(tokenizer: &Tokenizer, tokens: &[u32], stop: &[String], max_stop_len: usize) -> Result<bool> {
    let tail = &tokens[tokens.len().saturating_sub(max_stop_len + 2)..];
    let text = tokenizer.decode(tail, true)?;
    Ok(stop.iter().any(|s| text.contains(s.as_str())))
}

/// Byte offset just past the earliest stop string in `text`.
fn first_stop_end(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str()).map(|i| i + s.len())).min()
}

/// Draws one token from a row of logits; returns it with its behaviour log-probability
/// `log softmax(logits / T)[token]`, computed in f64 so that it is finite and <= 0 for every temperature in
/// [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`] (in f32, `z / T` at T = 1e-7 loses ~20 nats and yields positive
/// "log-probs"). Logits must be finite or -inf (masked); the caller checks.
pub(crate) fn pick_token(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> (u32, f32) {
    let temperature = if params.temperature > 0.0 { params.temperature } else { 1.0 };
    // The largest z / T is the largest z over T (rounding is monotone): one division instead of one per token.
    let scaled_max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / temperature;
    let log_z = scaled_max + normaliser(logits, temperature, scaled_max).ln();
    let logprob_of = |t: usize| ((logits[t] as f64 / temperature - log_z).min(0.0)) as f32;
    if params.temperature == 0.0 {
        let best = argmax(logits);
        return (best as u32, logprob_of(best));
    }
    if params.top_k == 0 && params.top_p >= 1.0 {
        let t = draw(probabilities(logits, temperature, log_z).iter().copied().enumerate(), rng);
        return (t as u32, logprob_of(t));
    }
    let candidates = truncated_candidates(logits, temperature, log_z, params.top_k, params.top_p);
    let t = draw(candidates.iter().copied(), rng);
    (t as u32, logprob_of(t))
}

/// A token drawn in proportion to its weight, from (token, weight) pairs (the weights need not sum to 1): the
/// first token whose cumulative weight passes a uniform draw over the total.
fn draw(candidates: impl Iterator<Item = (usize, f64)> + Clone, rng: &mut ChaCha8Rng) -> usize {
    let total: f64 = candidates.clone().map(|(_, p)| p).sum();
    let mut u = rng.random::<f64>() * total;
    let mut last = None;
    for (t, p) in candidates {
        if u < p {
            return t;
        }
        u -= p;
        last = Some(t);
    }
    last.expect("at least one candidate token")
}

/// The softmax's normaliser `sum_i exp(z_i / T - scaled_max)`, `scaled_max` being the largest `z_i / T`.
///
/// With AVX-512 (or AVX2 + FMA), each `z_i / T - scaled_max` is taken in f64, rounded to f32 and exponentiated 16
/// (8) at a time ([`crate::vector_exp::exp`], [`crate::vector_exp::exp8`], which give the same bits), and the sum is
/// kept in f64: relative error about 1e-7 (tested), so a log-prob moves by about 1e-7 nats, below the f32 forward's
/// own rounding; libm's f64 `exp`, twice per token and row (here and in [`probabilities`]), was about 6% of a
/// batch-8 decode step on Zen 4 and on Zen 3. Elsewhere the sum is exact f64.
fn normaliser(logits: &[f32], temperature: f64, scaled_max: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked on the line above).
        return unsafe { x86::normaliser(logits, temperature, scaled_max) };
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
        return unsafe { x86::normaliser_avx2(logits, temperature, scaled_max) };
    }
    logits.iter().map(|&z| shifted_exp(z, temperature, scaled_max)).sum()
}

/// `exp(z / T - shift)` in f64: what the vector paths approximate, and what they use for a tail of under 16 (8).
fn shifted_exp(z: f32, temperature: f64, shift: f64) -> f64 {
    (z as f64 / temperature - shift).exp()
}

/// `exp(z_i / T - log_z)` for every token `i`: the whole tempered distribution. With AVX-512 or AVX2 as in
/// [`normaliser`]: relative error about `1e-7 (3 + |log p|)` (tested), which only the vanishingly unlikely tokens
/// notice.
fn probabilities(logits: &[f32], temperature: f64, log_z: f64) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let mut p = vec![0f32; logits.len()];
        // SAFETY: the CPU has AVX-512F (checked on the line above).
        unsafe { x86::exps(logits, temperature, log_z, &mut p) };
        return p.into_iter().map(f64::from).collect();
    }
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        let mut p = vec![0f32; logits.len()];
        // SAFETY: the CPU has AVX2 and FMA (checked on the line above).
        unsafe { x86::exps_avx2(logits, temperature, log_z, &mut p) };
        return p.into_iter().map(f64::from).collect();
    }
    logits.iter().map(|&z| shifted_exp(z, temperature, log_z)).collect()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `exp(z / T - shift)` for the 16 logits at `z`: the argument in f64, rounded to f32, then the f32 exp.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16(z: *const f32, t: __m512d, shift: __m512d) -> __m512 {
        let arg = |z: __m256| _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_div_pd(_mm512_cvtps_pd(z), t), shift));
        let (lo, hi) = (arg(_mm256_loadu_ps(z)), arg(_mm256_loadu_ps(z.add(8))));
        let both = _mm512_insertf64x4::<1>(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi));
        crate::vector_exp::exp(_mm512_castpd_ps(both))
    }

    /// [`super::normaliser`] with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn normaliser(logits: &[f32], temperature: f64, shift: f64) -> f64 {
        let (t, m) = (_mm512_set1_pd(temperature), _mm512_set1_pd(shift));
        let body = logits.len() - logits.len() % 16;
        let mut sum = _mm512_setzero_pd();
        for c in (0..body).step_by(16) {
            let e = exp16(logits.as_ptr().add(c), t, m);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
            sum = _mm512_add_pd(sum, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            sum = _mm512_add_pd(sum, _mm512_cvtps_pd(hi));
        }
        let tail: f64 = logits[body..].iter().map(|&z| super::shifted_exp(z, temperature, shift)).sum();
        _mm512_reduce_add_pd(sum) + tail
    }

    /// `out[i] = exp(z_i / T - shift)` with AVX-512F (`out` as long as `logits`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exps(logits: &[f32], temperature: f64, shift: f64, out: &mut [f32]) {
        assert_eq!(logits.len(), out.len());
        let (t, m) = (_mm512_set1_pd(temperature), _mm512_set1_pd(shift));
        let body = logits.len() - logits.len() % 16;
        for c in (0..body).step_by(16) {
            _mm512_storeu_ps(out.as_mut_ptr().add(c), exp16(logits.as_ptr().add(c), t, m));
        }
        for (o, &z) in out[body..].iter_mut().zip(&logits[body..]) {
            *o = super::shifted_exp(z, temperature, shift) as f32;
        }
    }

    /// Whether the AVX2 paths run: AVX2 and FMA, and no AVX-512F (which the 16-lane paths take).
    pub(super) fn has_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// [`exp16`] for 8 logits with AVX2 + FMA: the same argument and the same f32 exp, so the same bits.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp8(z: *const f32, t: __m256d, shift: __m256d) -> __m256 {
        let arg = |z: __m128| _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_div_pd(_mm256_cvtps_pd(z), t), shift));
        let (lo, hi) = (arg(_mm_loadu_ps(z)), arg(_mm_loadu_ps(z.add(4))));
        crate::vector_exp::exp8(_mm256_set_m128(hi, lo))
    }

    /// [`super::normaliser`] with AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn normaliser_avx2(logits: &[f32], temperature: f64, shift: f64) -> f64 {
        let (t, m) = (_mm256_set1_pd(temperature), _mm256_set1_pd(shift));
        let body = logits.len() - logits.len() % 8;
        let mut sum = _mm256_setzero_pd();
        for c in (0..body).step_by(8) {
            let e = exp8(logits.as_ptr().add(c), t, m);
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            sum = _mm256_add_pd(sum, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
        let tail: f64 = logits[body..].iter().map(|&z| super::shifted_exp(z, temperature, shift)).sum();
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), sum);
        lanes.iter().sum::<f64>() + tail
    }

    /// `out[i] = exp(z_i / T - shift)` with AVX2 + FMA (`out` as long as `logits`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exps_avx2(logits: &[f32], temperature: f64, shift: f64, out: &mut [f32]) {
        assert_eq!(logits.len(), out.len());
        let (t, m) = (_mm256_set1_pd(temperature), _mm256_set1_pd(shift));
        let body = logits.len() - logits.len() % 8;
        for c in (0..body).step_by(8) {
            _mm256_storeu_ps(out.as_mut_ptr().add(c), exp8(logits.as_ptr().add(c), t, m));
        }
        for (o, &z) in out[body..].iter_mut().zip(&logits[body..]) {
            *o = super::shifted_exp(z, temperature, shift) as f32;
        }
    }
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// (token, probability) pairs left after top-k and top-p, most likely first when truncation applies, in
/// vocabulary order otherwise (sampling from the full distribution needs no sort).
///
/// The order is HF transformers' and vLLM's: top-k first, then the kept probabilities are renormalised, then
/// top-p keeps the smallest prefix whose renormalised mass reaches `top_p`. (Probabilities [0.5, 0.3, 0.2] with
/// top_k 2 and top_p 0.6 keep one token: 0.5 / 0.8 = 0.625 >= 0.6.)
fn truncated_candidates(logits: &[f32], temperature: f64, log_z: f64, top_k: usize, top_p: f64) -> Vec<(usize, f64)> {
    let prob = |z: f32| shifted_exp(z, temperature, log_z);
    if top_k == 0 && top_p >= 1.0 {
        return probabilities(logits, temperature, log_z).into_iter().enumerate().collect();
    }
    let by_logit_desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if top_k == 0 {
        if let Some(nucleus) = nucleus_above_cut(logits, temperature, log_z, top_p, by_logit_desc) {
            return nucleus;
        }
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Partial sort: the nucleus is almost always within the top few hundred tokens; fall back to a full sort.
    let mut keep = if top_k > 0 { top_k.min(order.len()) } else { 256.min(order.len()) };
    loop {
        if keep < order.len() {
            order.select_nth_unstable_by(keep - 1, by_logit_desc);
        }
        let mut head: Vec<usize> = order[..keep].to_vec();
        head.sort_by(by_logit_desc);
        let with_p: Vec<(usize, f64)> = head.into_iter().map(|t| (t, prob(logits[t]))).collect();
        // Mass the nucleus is measured against: the top-k survivors (renormalised), or the whole distribution.
        let mass = if top_k > 0 { with_p.iter().map(|&(_, p)| p).sum::<f64>() } else { 1.0 };
        let mut out = Vec::with_capacity(with_p.len());
        let mut cum = 0.0;
        for (t, p) in with_p {
            out.push((t, p));
            cum += p;
            if top_p < 1.0 && cum >= top_p * mass {
                return out;
            }
        }
        if top_k > 0 || keep == order.len() || top_p >= 1.0 {
            return out;
        }
        keep = order.len();
    }
}

/// Top-p alone without sorting the vocabulary: the `n` tokens with `p < (1 - top_p) / (2 n)` together carry under
/// `(1 - top_p) / 2`, so the tokens at or above that cut (which come first in the descending order) already reach
/// `top_p`: only they are sorted. A 135M model at temperature 1 often spreads 0.95 of its mass
/// over more than the 256 tokens the partial sort below tries first, and then sorted all 49,152 (perf, Zen 4: top-p
/// 0.95 decoded 15% slower than the whole distribution). The same tokens and probabilities as the sort; `None`
/// (sort instead) if rounding leaves the kept mass short of `top_p`.
fn nucleus_above_cut(
    logits: &[f32],
    temperature: f64,
    log_z: f64,
    top_p: f64,
    by_logit_desc: impl Fn(&usize, &usize) -> std::cmp::Ordering,
) -> Option<Vec<(usize, f64)>> {
    let cut = temperature * (log_z + ((1.0 - top_p) / (2.0 * logits.len() as f64)).ln());
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] as f64 >= cut).collect();
    order.sort_unstable_by(by_logit_desc);
    let mut out = Vec::new();
    let mut cum = 0.0;
    for t in order {
        let p = shifted_exp(logits[t], temperature, log_z);
        out.push((t, p));
        cum += p;
        if cum >= top_p {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(top_k: usize, top_p: f64) -> SamplingParams {
        SamplingParams { top_k, top_p, ..Default::default() }
    }

    #[test]
    fn top_k_and_top_p_keep_the_right_tokens() {
        let logits = vec![0.0f32, 3.0, 1.0, 2.0, -1.0];
        let log_z = {
            let s: f64 = logits.iter().map(|&z| (z as f64).exp()).sum();
            s.ln()
        };
        let k2: Vec<usize> = truncated_candidates(&logits, 1.0, log_z, 2, 1.0).iter().map(|c| c.0).collect();
        assert_eq!(k2, vec![1, 3]);
        // p(1) ~ 0.64, p(3) ~ 0.24: 0.7 needs two tokens, 0.5 one.
        let p7: Vec<usize> = truncated_candidates(&logits, 1.0, log_z, 0, 0.7).iter().map(|c| c.0).collect();
        assert_eq!(p7, vec![1, 3]);
        let p5: Vec<usize> = truncated_candidates(&logits, 1.0, log_z, 0, 0.5).iter().map(|c| c.0).collect();
        assert_eq!(p5, vec![1]);
    }

    #[test]
    fn behaviour_logprob_is_of_the_tempered_full_distribution() {
        let logits = vec![0.0f32, 1.0, 2.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = SamplingParams { temperature: 0.5, top_k: 1, ..params(0, 1.0) };
        let (tok, lp) = pick_token(&logits, &p, &mut rng);
        assert_eq!(tok, 2);
        let z: f64 = logits.iter().map(|&x| (x as f64 / 0.5).exp()).sum();
        assert!((lp as f64 - (4.0 - z.ln())).abs() < 1e-5);
    }

    #[test]
    fn top_p_keeps_the_same_tokens_and_probabilities_as_a_full_sort_for_wide_and_narrow_nuclei() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // Flat logits (a nucleus of tens of thousands of tokens), peaked ones (a handful), and ties.
        for (spread, top_p) in [(2.0f32, 0.95), (2.0, 0.5), (40.0, 0.95), (40.0, 0.999), (0.0, 0.9)] {
            let logits: Vec<f32> = (0..49_152).map(|_| (rng.random::<f32>() * spread).round() / 4.0).collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_z = max + normaliser(&logits, 1.0, max).ln();
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b)));
            let mut want = Vec::new();
            let mut cum = 0.0;
            for t in order {
                let p = shifted_exp(logits[t], 1.0, log_z);
                want.push((t, p));
                cum += p;
                if cum >= top_p {
                    break;
                }
            }
            let by_logit_desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
            let cut = nucleus_above_cut(&logits, 1.0, log_z, top_p, by_logit_desc);
            assert_eq!(cut.as_ref(), Some(&want), "spread {spread} top_p {top_p}: the cut found no nucleus");
            let got = truncated_candidates(&logits, 1.0, log_z, 0, top_p);
            assert_eq!(got, want, "spread {spread} top_p {top_p}: {} against {} tokens", got.len(), want.len());
        }
    }

    #[test]
    fn the_normaliser_and_the_probabilities_are_within_float_rounding_of_exact_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (n, temperature) in [(49_152, 1.0), (49_157, 0.7), (3, 1.0), (17, 1e-4), (1000, 100.0)] {
            let mut logits: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 30.0 - 15.0).collect();
            logits[n / 2] = f32::NEG_INFINITY;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 / temperature;
            let exact: Vec<f64> = logits.iter().map(|&z| (z as f64 / temperature - max).exp()).collect();
            let sum = exact.iter().sum::<f64>();
            let log_z = max + sum.ln();
            // The path this CPU takes, and the AVX2 one also where AVX-512 would be taken.
            let mut paths: Vec<(f64, Vec<f64>)> =
                vec![(normaliser(&logits, temperature, max), probabilities(&logits, temperature, log_z))];
            #[cfg(target_arch = "x86_64")]
            if x86::has_avx2() {
                let mut p = vec![0f32; n];
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                let z = unsafe {
                    x86::exps_avx2(&logits, temperature, log_z, &mut p);
                    x86::normaliser_avx2(&logits, temperature, max)
                };
                paths.push((z, p.into_iter().map(f64::from).collect()));
            }
            for (fast, probs) in paths {
                assert!(((fast - sum) / sum).abs() < 1e-6, "n {n} T {temperature}: {fast} against {sum}");
                for (i, (p, e)) in probs.into_iter().zip(&exact).enumerate() {
                    // The f32 rounding of the exponent's argument costs a relative 6e-8 per unit of |log p|.
                    let want = e / sum;
                    let tolerance = if want > 0.0 { want * (3e-7 + 1e-7 * want.ln().abs()) } else { 0.0 } + 1e-37;
                    assert!((p - want).abs() <= tolerance, "n {n} T {temperature} token {i}: {p} against {want}");
                }
            }
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let logits = vec![0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // probabilities 1/8, 2/8, 5/8
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        for _ in 0..8000 {
            counts[pick_token(&logits, &params(0, 1.0), &mut rng).0 as usize] += 1;
        }
        let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / 8000.0).collect();
        for (f, want) in freq.iter().zip([0.125, 0.25, 0.625]) {
            assert!((f - want).abs() < 0.02, "{freq:?}");
        }
    }

    #[test]
    fn top_p_applies_to_the_renormalised_top_k() {
        // Probabilities [0.5, 0.3, 0.2]: top-k 2 leaves [0.625, 0.375] after renormalising; top-p 0.6 keeps one.
        let logits: Vec<f32> = [0.5f64, 0.3, 0.2].iter().map(|p| p.ln() as f32).collect();
        let kept: Vec<usize> = truncated_candidates(&logits, 1.0, 0.0, 2, 0.6).iter().map(|c| c.0).collect();
        assert_eq!(kept, vec![0]);
        // Without top-k the same top-p needs two tokens (0.5 < 0.6 <= 0.8).
        let kept: Vec<usize> = truncated_candidates(&logits, 1.0, 0.0, 0, 0.6).iter().map(|c| c.0).collect();
        assert_eq!(kept, vec![0, 1]);
        // top-p 0.7 over the renormalised pair needs both (0.625 < 0.7).
        let kept: Vec<usize> = truncated_candidates(&logits, 1.0, 0.0, 2, 0.7).iter().map(|c| c.0).collect();
        assert_eq!(kept, vec![0, 1]);
    }

    #[test]
    fn logprobs_are_finite_and_not_positive_at_every_accepted_temperature() {
        // Large, close logits are where an f32 computation of z / T - log Z goes wrong.
        let logits: Vec<f32> = (0..500).map(|i| 20.0 - (i as f32) * 1e-3 + ((i * 7919) % 13) as f32 * 0.37).collect();
        for t in [MIN_TEMPERATURE, 1e-3, 0.01, 0.1, 0.7, 1.0, 3.0, 10.0, MAX_TEMPERATURE] {
            let p = SamplingParams { temperature: t, top_k: 40, top_p: 0.9, ..Default::default() };
            p.validate().unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            for _ in 0..50 {
                let (tok, lp) = pick_token(&logits, &p, &mut rng);
                assert!(lp.is_finite() && lp <= 0.0, "T = {t}: token {tok} has log-prob {lp}");
            }
        }
    }

    #[test]
    fn temperatures_outside_the_range_are_refused() {
        for t in [1e-50, 1e-7, MIN_TEMPERATURE / 2.0, MAX_TEMPERATURE * 2.0, f64::NAN, f64::INFINITY, -0.5] {
            let err = SamplingParams { temperature: t, ..Default::default() }.validate().unwrap_err().to_string();
            assert!(err.contains("temperature"), "{t}: {err}");
        }
        assert!(SamplingParams { temperature: 0.0, ..Default::default() }.validate().is_ok());
    }

    #[test]
    fn min_new_tokens_is_refused_for_training_only() {
        let p = SamplingParams { min_new_tokens: 4, ..Default::default() };
        assert!(p.validate().is_ok());
        assert!(p.validate_for_training().unwrap_err().to_string().contains("min_new_tokens"));
        assert!(SamplingParams::default().validate_for_training().is_ok());
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { temperature: -1.0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { max_new_tokens: 0, ..Default::default() }.validate().is_err());
        assert!(SamplingParams { stop: vec![String::new()], ..Default::default() }.validate().is_err());
    }
}
