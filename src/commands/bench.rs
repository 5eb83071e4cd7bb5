//! `ideator bench`: our half of the side-by-side benchmarks in BENCHMARKS.md (the peers' halves are
//! `scripts/peers/*.py`). Each prints one JSON object on its last stdout line, with the settings echoed.

use std::time::Instant;

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

/// Threads the tensor work runs on: `--threads` (which sets RAYON_NUM_THREADS), else every core.
fn tensor_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
