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
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "seconds": total,
                "new_tokens_per_s": (batch * new_tokens) as f64 / total,
                "time_to_first_token_s": first,
                "decode_tokens_per_s": (batch * (new_tokens - 1)) as f64 / (total - first).max(1e-9),
            });
            println!("{out}");
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
                "repeats": repeats, "seconds": t, "tokens_per_s": (batch * seq) as f64 / t,
            });
            println!("{out}");
        }
    }
    Ok(())
}
