//! `ideator bench`: our half of the side-by-side benchmarks in BENCHMARKS.md (the peers' halves are
//! `scripts/peers/*.py`). Each prints one JSON object on its last stdout line, with the settings echoed.

use std::time::Instant;

use ideator_model::device::Precision;
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::AdapterMode;
use serde_json::json;

use super::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand)]
pub enum What {
    /// Batched sampling throughput: B identical P-token prompts, N new tokens each (EOS suppressed).
    Decode {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 200)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// One GRPO step (sample a group, score, reference log-probs, update), as TRL's GRPOTrainer does it in
    /// scripts/peers/trl_grpo_bench.py: one prompt of about P tokens, G completions of exactly N tokens.
    Grpo {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        group: usize,
        #[arg(long, default_value_t = 200)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// 0 = full fine-tuning.
        #[arg(long, default_value_t = 16)]
        lora_rank: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup_steps: usize,
        #[arg(long, default_value_t = 0.04)]
        beta: f64,
        #[arg(long, default_value_t = 1e-6)]
        learning_rate: f64,
    },
    /// Log-probs on `--device` in `--dtype` against the CPU in f32, on B sequences of T tokens: prints the largest
    /// and mean per-token difference (nats) and fails when the largest exceeds the tolerance.
    Logprobs {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        /// Largest per-token difference allowed, in nats. Default: 2e-3 in f32 (summation order only), 0.25 in
        /// bf16 (8-bit mantissas through 30 layers; see BENCHMARKS.md for the measured values).
        #[arg(long)]
        max_abs_diff: Option<f64>,
    },
    /// The pretrain environment's training throughput (its baseline recipe at a scale) for a fixed number of
    /// steps, without evaluation.
    Pretrain {
        /// tiny, small or paper.
        #[arg(long, default_value = "small")]
        scale: String,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps first (kernel loading, allocator growth).
        #[arg(long, default_value_t = 2)]
        warmup_steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Full fine-tuning forward + backward throughput on B random sequences of T tokens.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

/// A fixed English paragraph repeated to `n` tokens (content does not change the cost).
pub fn prompt_of_length(tokenizer: &ideator_model::Tokenizer, n: usize) -> anyhow::Result<Vec<u32>> {
    let paragraph = "Researchers train small language models to test ideas quickly. Each idea changes the \
                     optimiser, the schedule or the architecture, and the validation loss tells whether it helped. ";
    let unit = tokenizer.encode(paragraph, false)?;
    Ok(unit.iter().cycle().take(n).copied().collect())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Decode { model, batch, prompt_tokens, new_tokens, repeats } => {
            anyhow::ensure!(new_tokens >= 2 && repeats >= 1, "need --new-tokens >= 2 and --repeats >= 1");
            let m = model.load()?;
            let prompt = prompt_of_length(&m.tokenizer, prompt_tokens)?;
            let params = |n: usize, seed: u64| SamplingParams {
                max_new_tokens: n,
                min_new_tokens: n,
                seed,
                batch_size: batch,
                ..Default::default()
            };
            let go = |n: usize, seed: u64| -> anyhow::Result<(f64, usize)> {
                let t0 = Instant::now();
                let out = sample(
                    &m.decoder,
                    &m.tokenizer,
                    std::slice::from_ref(&prompt),
                    batch,
                    &params(n, seed),
                    AdapterMode::default(),
                    None,
                )?;
                Ok((t0.elapsed().as_secs_f64(), out.iter().map(|c| c.token_ids.len()).sum()))
            };
            go(4, 999)?; // warm-up
            let (mut totals, mut firsts) = (Vec::new(), Vec::new());
            for r in 0..repeats {
                let (t, produced) = go(new_tokens, r as u64)?;
                anyhow::ensure!(
                    produced == batch * new_tokens,
                    "produced {produced} tokens, expected {}",
                    batch * new_tokens
                );
                totals.push(t);
                firsts.push(go(1, r as u64)?.0);
            }
            let total = median(totals);
            let first = median(firsts);
            let out = json!({
                "bench": "decode", "impl": "ideator", "model": m.spec.to_string(), "batch": batch,
                "device": model.device, "dtype": model.dtype.as_str(),
                "prompt_tokens": prompt.len(), "new_tokens": new_tokens, "repeats": repeats,
                "threads": tensor_threads(),
                "seconds": total,
                "new_tokens_per_s": (batch * new_tokens) as f64 / total,
                "time_to_first_token_s": first,
                "decode_tokens_per_s": (batch * (new_tokens - 1)) as f64 / (total - first).max(1e-9),
            });
            println!("{out}");
        }
        What::Grpo {
            model,
            group,
            prompt_tokens,
            new_tokens,
            lora_rank,
            steps,
            warmup_steps,
            beta,
            learning_rate,
        } => {
            bench_grpo(model, group, prompt_tokens, new_tokens, lora_rank, steps, warmup_steps, beta, learning_rate)?;
        }
        What::Logprobs { model, batch, tokens, max_abs_diff } => bench_logprobs(model, batch, tokens, max_abs_diff)?,
        What::Pretrain { scale, device, steps, warmup_steps, seed } => {
            bench_pretrain(&scale, &device, steps, warmup_steps, seed)?
        }
        What::Train { model, batch, seq, repeats } => {
            let mut m = model.load()?;
            m.decoder.make_trainable()?;
            let vocab = m.decoder.config().vocab_size as u32;
            // Seeded pseudo-random ids (a dense forward's cost does not depend on content).
            let mut state = 12345u64;
            let mut next = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) % vocab as u64) as u32
            };
            let seqs: Vec<Vec<u32>> = (0..batch).map(|_| (0..seq).map(|_| next()).collect()).collect();
            let from = vec![1; batch];
            let step = || -> anyhow::Result<f64> {
                let t0 = Instant::now();
                let (lp, _) = m.decoder.score_tokens(&seqs, &from, 0, AdapterMode::default())?;
                let loss = (lp.mean_all()? * -1.0)?;
                let grads = loss.backward()?;
                drop(grads);
                Ok(t0.elapsed().as_secs_f64())
            };
            step()?; // warm-up
            let times: Vec<f64> = (0..repeats).map(|_| step()).collect::<anyhow::Result<_>>()?;
            let t = median(times);
            let out = json!({
                "bench": "train", "impl": "ideator", "model": m.spec.to_string(), "batch": batch, "seq": seq,
                "device": model.device, "dtype": model.dtype.as_str(),
                "repeats": repeats, "threads": tensor_threads(), "seconds": t, "tokens_per_s": (batch * seq) as f64 / t,
            });
            println!("{out}");
        }
    }
    Ok(())
}

/// The peer's reward: keyword coverage plus 0.1 * distinct-word ratio (scripts/peers/trl_grpo_bench.py).
fn text_reward(text: &str) -> f64 {
    const KEYWORDS: [&str; 10] =
        ["learning", "rate", "warmup", "schedule", "batch", "decay", "optimizer", "loss", "layer", "norm"];
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_lowercase()).filter(|w| !w.is_empty()).collect();
    let coverage = KEYWORDS.iter().filter(|k| words.contains(k)).count() as f64 / KEYWORDS.len() as f64;
    let distinct = if words.is_empty() {
        0.0
    } else {
        words.iter().collect::<std::collections::HashSet<_>>().len() as f64 / words.len() as f64
    };
    coverage + 0.1 * distinct
}

/// The peer's prompt: a request followed by filler text, as long as fits `target` tokens after templating.
fn grpo_prompt(tokenizer: &ideator_model::Tokenizer, target: usize) -> anyhow::Result<Vec<u32>> {
    const REQUEST: &str = "Propose one research idea that improves the validation loss of the recipe below. ";
    const FILLER: &str = "Researchers who train language models on a fixed compute budget compare recipes by their \
        validation loss. A recipe fixes the optimiser, the learning rate and its schedule, the warm-up, the weight \
        decay, the batch size, the depth and width of the network, the normalisation and the activation function. \
        Small changes to any of these can move the final loss, and the best recipe for one budget is not always the \
        best for another. ";
    let filler_ids = tokenizer.encode(&FILLER.repeat(target / 40 + 2), false)?;
    let templated = |n: usize| -> anyhow::Result<Vec<u32>> {
        let content = format!("{REQUEST}{}", tokenizer.decode(&filler_ids[..n], false)?);
        Ok(tokenizer.encode_chat(&[ideator_model::ChatMessage { role: "user".into(), content }], true)?)
    };
    let (mut lo, mut hi) = (0, filler_ids.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if templated(mid)?.len() <= target {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    templated(lo)
}

#[allow(clippy::too_many_arguments)]
fn bench_grpo(
    model: ModelArgs,
    group: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    lora_rank: usize,
    steps: usize,
    warmup_steps: usize,
    beta: f64,
    learning_rate: f64,
) -> anyhow::Result<()> {
    use ideator_trainer::config::{LossAggregation, OptimConfig, TrainMode};
    use ideator_trainer::{GrpoConfig, GrpoLearner, ScoredGroup, ScoredSample, TrainablePolicy};
    let m = model.load()?;
    let (device, dtype) = (model.device.clone(), model.dtype.as_str());
    let prompt = grpo_prompt(&m.tokenizer, prompt_tokens)?;
    let mode = if lora_rank == 0 {
        TrainMode::Full
    } else {
        TrainMode::Lora {
            lora: ideator_model::LoraConfig { rank: lora_rank, alpha: 2.0 * lora_rank as f64, ..Default::default() },
        }
    };
    let pad = m.tokenizer.pad_id().unwrap_or(0);
    let policy = TrainablePolicy::new(m.decoder, &mode, beta > 0.0, 0, pad)?;
    let cfg = GrpoConfig {
        group_size: group,
        beta,
        micro_batch: group,
        loss_aggregation: LossAggregation::SequenceMean,
        ..Default::default()
    };
    let optim = OptimConfig { lr: learning_rate, grad_clip: Some(1.0), ..Default::default() };
    let total = (warmup_steps + steps) as u64;
    let mut learner = GrpoLearner::new(policy, cfg, optim, total, new_tokens, 0)?;
    let mut records = Vec::new();
    for step in 0..warmup_steps + steps {
        let t0 = Instant::now();
        let params = SamplingParams {
            max_new_tokens: new_tokens,
            min_new_tokens: new_tokens,
            seed: step as u64,
            batch_size: group,
            ..Default::default()
        };
        let p = learner.policy();
        let out = sample(
            p.decoder(),
            &m.tokenizer,
            std::slice::from_ref(&prompt),
            group,
            &params,
            p.sampling_mode(),
            None,
        )?;
        let generation = t0.elapsed().as_secs_f64();
        let groups = vec![ScoredGroup {
            prompt_ids: prompt.clone(),
            policy_version: step as u64,
            temperature: params.logprob_temperature(),
            samples: out
                .iter()
                .map(|c| ScoredSample {
                    completion_ids: c.token_ids.clone(),
                    behaviour_logprobs: c.logprobs.clone(),
                    reward: text_reward(&c.text),
                    cluster: None,
                })
                .collect(),
        }];
        let s = learner.train_step(&groups)?;
        let total_s = t0.elapsed().as_secs_f64();
        eprintln!(
            "bench grpo: step {step}{}: {total_s:.1}s (generation {generation:.1}s, reference {:.1}s, update {:.1}s)",
            if step < warmup_steps { " (warm-up)" } else { "" },
            s.reference_seconds,
            s.update_seconds
        );
        if step >= warmup_steps {
            records.push((total_s, generation, s.reference_seconds, s.update_seconds));
        }
    }
    let col = |f: fn(&(f64, f64, f64, f64)) -> f64| median(records.iter().map(f).collect());
    let out = json!({
        "bench": "grpo", "impl": "ideator", "model": m.spec.to_string(), "group": group,
        "device": device, "dtype": dtype,
        "prompt_tokens": prompt.len(), "prompt_tokens_target": prompt_tokens, "new_tokens": new_tokens,
        "lora_rank": lora_rank, "beta": beta, "learning_rate": learning_rate, "steps": steps,
        "warmup_steps": warmup_steps,
        "threads": tensor_threads(),
        "seconds_per_step": col(|r| r.0), "generation_s": col(|r| r.1), "ref_logprobs_s": col(|r| r.2),
        "update_s": col(|r| r.3),
    });
    println!("{out}");
    Ok(())
}

/// Tolerance of the log-prob check by precision (per-token nats), when `--max-abs-diff` is not given.
fn default_logprob_tolerance(dtype: Precision) -> f64 {
    match dtype {
        Precision::F32 => 2e-3,
        Precision::Bf16 => 0.25,
    }
}

/// B sequences of T tokens (the same paragraph from different offsets), scored on the CPU in f32 and on the
/// asked device and dtype; one JSON line with the differences; an error when the largest exceeds the tolerance.
fn bench_logprobs(model: ModelArgs, batch: usize, tokens: usize, max_abs_diff: Option<f64>) -> anyhow::Result<()> {
    anyhow::ensure!(batch >= 1 && tokens >= 2, "need --batch >= 1 and --tokens >= 2");
    let tolerance = max_abs_diff.unwrap_or_else(|| default_logprob_tolerance(model.dtype));
    let reference_args = ModelArgs { device: "cpu".into(), dtype: Precision::F32, ..model.clone() };
    let reference = reference_args.load()?;
    let text = prompt_of_length(&reference.tokenizer, tokens + 7 * batch)?;
    let seqs: Vec<Vec<u32>> = (0..batch).map(|r| text[7 * r..7 * r + tokens].to_vec()).collect();
    let pad = reference.tokenizer.pad_id().unwrap_or(0);
    let score = |m: &ideator_model::Model| -> anyhow::Result<(Vec<f32>, f64)> {
        let t0 = Instant::now();
        let (lp, _) = m.decoder.score_tokens(&seqs, &vec![1; batch], pad, AdapterMode::default())?;
        let values = lp.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        Ok((values, t0.elapsed().as_secs_f64()))
    };
    let (expected, _) = score(&reference)?;
    drop(reference);
    let m = model.load()?;
    score(&m)?; // warm-up: the first call on a GPU loads its kernels
    let (got, seconds) = score(&m)?;
    anyhow::ensure!(
        got.len() == expected.len(),
        "{} log-probs on the device, {} on the CPU",
        got.len(),
        expected.len()
    );
    let diffs: Vec<f64> = got.iter().zip(&expected).map(|(a, b)| (a - b).abs() as f64).collect();
    let max = diffs.iter().copied().fold(0.0, f64::max);
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let finite = got.iter().all(|x| x.is_finite());
    let pass = finite && max <= tolerance;
    let out = json!({
        "bench": "logprobs", "impl": "ideator", "model": m.spec.to_string(), "device": model.device,
        "dtype": model.dtype.as_str(), "reference": "cpu f32", "batch": batch, "tokens": tokens,
        "scored_tokens": got.len(), "max_abs_diff": max, "mean_abs_diff": mean, "tolerance": tolerance,
        "seconds": seconds, "pass": pass,
    });
    println!("{out}");
    anyhow::ensure!(
        pass,
        "log-probs on {} in {} differ from the CPU's f32 ones by up to {max:.4} nats (tolerance {tolerance}){}: \
         the device's kernels or the {} path are wrong",
        model.device,
        model.dtype,
        if finite { "" } else { ", some are not finite" },
        model.dtype
    );
    Ok(())
}

/// `ideator bench pretrain`: the pretrain environment's baseline at `scale`, `steps` timed steps on `device`.
fn bench_pretrain(scale: &str, device: &str, steps: usize, warmup: usize, seed: u64) -> anyhow::Result<()> {
    use ideator_envs::pretrain::Pretrain;
    anyhow::ensure!(steps >= 1, "need --steps >= 1");
    let dev = ideator_model::device::parse_device(device)?;
    let env = Pretrain::new();
    ideator_envs::Environment::check_scale(&env, scale)?;
    let threads = tensor_threads();
    let work = std::env::temp_dir().join(format!("ideator-bench-pretrain-{}", std::process::id()));
    let ctx = ideator_envs::RunContext::new(scale, seed, &work).with_device(dev).with_threads(threads);
    let (plan, t) = env.baseline_throughput(&ctx, warmup, steps).map_err(anyhow::Error::msg)?;
    let out = json!({
        "bench": "pretrain", "impl": "ideator", "scale": scale, "device": device, "dtype": "f32",
        "params": plan.model.total_params(), "batch": plan.batch_size, "seq": plan.seq_len,
        "warmup_steps": warmup, "steps": t.steps, "threads": threads, "seconds": t.seconds,
        "tokens_per_s": t.tokens_per_second, "last_loss": t.last_loss,
    });
    println!("{out}");
    Ok(())
}

/// Threads the tensor work runs on: `--threads` (which sets RAYON_NUM_THREADS), else every core.
fn tensor_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
