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
        /// Nucleus sampling's top-p (1.0: the whole distribution, as the `generate` peer samples; the shipped
        /// configs sample with 0.95).
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[command(flatten)]
        limit: LimitArgs,
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
        #[command(flatten)]
        limit: LimitArgs,
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
    /// The decode step's matrix products alone, side by side: the few-rows kernel (every instruction-set path this
    /// CPU has) and, with AVX-512, the packed-tiles kernel decoding uses there, against candle's matmul, on
    /// SmolLM2-135M's shapes (30 layers of q, k, v, o, gate, up, down and the 49152-row head; random f32 weights,
    /// 540 MB, so they stream from memory as in decoding), at each batch size.
    Matmul {
        /// Batch sizes (rows), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        rows: Vec<usize>,
        /// Steps timed per kernel and batch size (the median counts).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Also time the portable path (on a CPU with AVX2 it is several times slower than the others).
        #[arg(long)]
        with_portable: bool,
        /// Precision of the weights: f32, or bf16 as `--sampling-dtype bf16` decodes (then only the few-rows kernel
        /// runs, and the streaming limit counts 2 bytes a weight).
        #[arg(long, default_value = "f32")]
        weight_dtype: Precision,
        #[command(flatten)]
        limit: LimitArgs,
    },
    /// Which kernel decoding's products should use on this CPU: times one decode step's products (SmolLM2-135M's
    /// shapes, random f32 weights) with each few-rows path (the avx512 one as decoding runs it, on packed copies of
    /// the weights) and with gemm at each row count, and stores the choice
    /// (the fastest path; the most rows up to which it beats gemm) in the kernel cache for this CPU model
    /// (`$IDEATOR_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ideator/kernels.json` or `~/.cache/ideator/kernels.json`).
    Calibrate {
        /// Row counts to time, comma-separated (each 1 to 64).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,12,16,20,24,28,32")]
        rows: Vec<usize>,
        /// Steps timed per kernel and row count (the median counts).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Print the choice without storing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Full fine-tuning forward + backward throughput on B random sequences of T tokens, run as the GRPO learner
    /// runs its update: micro-batches of `--micro-batch` sequences, side by side on the threads (data parallel),
    /// their gradients summed in f32.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Sequences per forward and backward pass (the learner's `grpo.micro_batch`, 4 by default); the batch's
        /// passes run side by side on the threads.
        #[arg(long, default_value_t = 4)]
        micro_batch: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

/// How the decode benches measure the machine's limit.
#[derive(clap::Args, Clone, Copy)]
pub struct LimitArgs {
    /// Size of the buffer the read-bandwidth probe streams, in MiB (far above the last-level cache; at most 65536);
    /// 0 skips the probe and the limit.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=65536))]
    pub bandwidth_mib: u64,
    /// Size of the square f32 product that measures the machine's FLOP rate (the compute side of the roofline; at
    /// most 8192, two 256 MiB matrices); 0 skips it.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=8192))]
    pub matmul_size: u64,
}

/// The machine's side of a decode figure: the CPU, the read bandwidth measured now (one thread, and the threads the
/// tensor work uses when more), and the weight-streaming limit at that bandwidth for `weight_bytes` per step.
struct MachineLimit {
    cpu: ideator_model::machine::CpuInfo,
    single: Option<ideator_model::machine::Bandwidth>,
    threaded: Option<ideator_model::machine::Bandwidth>,
    weight_bytes: usize,
    /// Weights multiplied per row and step (`weight_bytes` over the bytes of one weight).
    weights: usize,
    /// The f32 matrix-product rate on the tensor threads, GFLOP/s.
    gflop_per_s: Option<f64>,
}

impl MachineLimit {
    fn measure(args: LimitArgs, weight_bytes: usize, bytes_per_weight: usize) -> MachineLimit {
        use ideator_model::machine::{matmul_gflop_per_s, read_bandwidth, CpuInfo};
        let cpu = CpuInfo::detect();
        eprintln!("bench: CPU {}", cpu.summary());
        let active = ideator_model::kernel_choice::active();
        let packed = if active.choice.few_rows_path == ideator_model::few_rows::Path::Avx512 {
            "; on the avx512 path decoding multiplies packed copies of the weights (packed_avx512)"
        } else {
            ""
        };
        eprintln!("bench: decode kernels: {}{packed}", active.summary());
        let threads = tensor_threads();
        let probe = |t: usize| {
            (args.bandwidth_mib > 0).then(|| {
                let bw = read_bandwidth((args.bandwidth_mib as usize) << 20, t, 3);
                eprintln!(
                    "bench: read bandwidth {:.1} GB/s on {t} thread(s), {} MiB buffer",
                    bw.gb_per_s, args.bandwidth_mib
                );
                bw
            })
        };
        let single = probe(1);
        let threaded = if threads > 1 { probe(threads) } else { None };
        let gflop_per_s =
            (args.matmul_size > 0).then(|| matmul_gflop_per_s(args.matmul_size as usize, 3)).and_then(|r| {
                r.inspect(|g| eprintln!("bench: f32 matrix products {g:.1} GFLOP/s on {threads} thread(s)"))
                    .inspect_err(|e| eprintln!("bench: the FLOP-rate probe failed ({e}); no compute limit"))
                    .ok()
            });
        let weights = weight_bytes / bytes_per_weight.max(1);
        MachineLimit { cpu, single, threaded, weight_bytes, weights, gflop_per_s }
    }

    /// The roofline: the streaming limit and the compute limit at the measured FLOP rate.
    fn roofline(&self) -> Option<ideator_model::machine::Roofline> {
        let streaming = self.limit()?;
        self.gflop_per_s.map(|gflop_per_s| ideator_model::machine::Roofline {
            streaming,
            weights: self.weights,
            gflop_per_s,
        })
    }

    /// The limit at the bandwidth of the threads the tensor work runs on.
    fn limit(&self) -> Option<ideator_model::machine::StreamingLimit> {
        self.threaded.or(self.single).map(|bw| ideator_model::machine::StreamingLimit {
            weight_bytes: self.weight_bytes,
            gb_per_s: bw.gb_per_s,
        })
    }

    /// JSON fields for a run that made `tokens_per_s` new tokens per second at `batch` rows (and, for decode, the
    /// steady decoding rate after the first token); prints the limit and the fraction reached.
    fn report(&self, batch: usize, tokens_per_s: f64, decode_tokens_per_s: Option<f64>) -> serde_json::Value {
        let mut out = self.fields();
        if let Some(limit) = self.limit() {
            let max = limit.max_tokens_per_s(batch);
            out["limit_tokens_per_s"] = json!(max);
            out["limit_fraction"] = json!(limit.fraction(tokens_per_s, batch));
            out["effective_gb_per_s"] = json!(limit.effective_gb_per_s(tokens_per_s, batch));
            let mut line = format!(
                "bench: weight-streaming limit {:.1} MB per step at {:.1} GB/s: {:.1} steps/s, {max:.1} new tokens/s \
                 at batch {batch}; reached {tokens_per_s:.1} ({:.0}%)",
                self.weight_bytes as f64 / 1e6,
                limit.gb_per_s,
                limit.max_steps_per_s(),
                100.0 * limit.fraction(tokens_per_s, batch)
            );
            if let Some(d) = decode_tokens_per_s {
                out["limit_fraction_decode"] = json!(limit.fraction(d, batch));
                line.push_str(&format!(", decoding alone {d:.1} ({:.0}%)", 100.0 * limit.fraction(d, batch)));
            }
            eprintln!("{line}");
        }
        if let Some(roof) = self.roofline() {
            let bound = match roof.bound(batch) {
                ideator_model::machine::Bound::Memory => "memory",
                ideator_model::machine::Bound::Compute => "compute",
            };
            out["roofline_tokens_per_s"] = json!(roof.max_tokens_per_s(batch));
            out["roofline_fraction"] = json!(roof.fraction(tokens_per_s, batch));
            out["roofline_bound"] = json!(bound);
            eprintln!(
                "bench: roofline at batch {batch} ({bound}-bound; compute limit {:.1} GFLOP/s over {:.1}M weights per \
                 row): {:.1} new tokens/s; reached {:.0}%",
                roof.gflop_per_s,
                self.weights as f64 / 1e6,
                roof.max_tokens_per_s(batch),
                100.0 * roof.fraction(tokens_per_s, batch)
            );
        }
        out
    }

    /// JSON fields of the machine and the limit (steps per second), without a measured rate.
    fn fields(&self) -> serde_json::Value {
        let mut out = json!({
            "cpu_model_name": self.cpu.model_name, "cpu_family": self.cpu.family, "cpu_model": self.cpu.model,
            "cpu_flags": self.cpu.vector_flags.join(" "), "load_average_1m": load_average(),
            "weight_bytes_per_step": self.weight_bytes,
            "read_gb_per_s_1_thread": self.single.map(|b| b.gb_per_s),
            "read_gb_per_s_threads": self.threaded.map(|b| b.gb_per_s),
            "matmul_gflop_per_s": self.gflop_per_s,
        });
        let kernels = ideator_model::kernel_choice::active();
        out["kernel_few_rows_path"] = json!(kernels.choice.few_rows_path);
        out["kernel_few_rows_min_rows"] = json!(kernels.choice.few_rows_min_rows);
        out["kernel_few_rows_max_rows"] = json!(kernels.choice.few_rows_max_rows);
        out["kernel_choice_source"] = json!(match kernels.source {
            ideator_model::kernel_choice::Source::BuiltIn => "built_in",
            ideator_model::kernel_choice::Source::Calibrated(_) => "calibrated",
        });
        if let Some(limit) = self.limit() {
            out["limit_steps_per_s"] = json!(limit.max_steps_per_s());
        }
        out
    }
}

/// The 1-minute load average (`/proc/loadavg`), when there is one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Adds `extra`'s fields to the object `out`.
fn merge(out: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(o), serde_json::Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
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
        What::Decode { model, batch, prompt_tokens, new_tokens, repeats, top_p, limit } => {
            anyhow::ensure!(new_tokens >= 2 && repeats >= 1, "need --new-tokens >= 2 and --repeats >= 1");
            let m = model.load()?;
            let bytes = m.decoder.decode_weight_bytes(AdapterMode::default());
            let machine = MachineLimit::measure(limit, bytes, m.decoder.decode_bytes_per_weight());
            let prompt = prompt_of_length(&m.tokenizer, prompt_tokens)?;
            let params = |n: usize, seed: u64| SamplingParams {
                max_new_tokens: n,
                min_new_tokens: n,
                seed,
                batch_size: batch,
                top_p,
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
            let decode_rate = (batch * (new_tokens - 1)) as f64 / (total - first).max(1e-9);
            let mut out = json!({
                "bench": "decode", "impl": "ideator", "model": m.spec.to_string(), "batch": batch,
                "device": model.device, "dtype": model.dtype.as_str(), "sampling_dtype": model.sampling_dtype.as_str(),
                "prompt_tokens": prompt.len(), "new_tokens": new_tokens, "repeats": repeats, "top_p": top_p,
                "threads": tensor_threads(),
                "seconds": total,
                "new_tokens_per_s": (batch * new_tokens) as f64 / total,
                "time_to_first_token_s": first,
                "decode_tokens_per_s": decode_rate,
                "decode_kernel": m.decoder.decode_kernel(batch),
            });
            merge(&mut out, machine.report(batch, (batch * new_tokens) as f64 / total, Some(decode_rate)));
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
            limit,
        } => {
            let shape = GrpoShape { group, prompt_tokens, new_tokens, lora_rank, steps, warmup_steps };
            bench_grpo(model, shape, beta, learning_rate, limit)?;
        }
        What::Logprobs { model, batch, tokens, max_abs_diff } => bench_logprobs(model, batch, tokens, max_abs_diff)?,
        What::Pretrain { scale, device, steps, warmup_steps, seed } => {
            bench_pretrain(&scale, &device, steps, warmup_steps, seed)?
        }
        What::Calibrate { rows, repeats, dry_run } => bench_calibrate(&rows, repeats, dry_run)?,
        What::Matmul { rows, repeats, with_portable, weight_dtype, limit } => {
            bench_matmul(&rows, repeats, with_portable, weight_dtype, limit)?
        }
        What::Train { model, batch, seq, micro_batch, repeats } => {
            bench_train(model, batch, seq, micro_batch, repeats)?
        }
    }
    Ok(())
}

/// `bench train`: the median seconds of a full fine-tuning forward and backward pass over `batch` random
/// sequences, in the learner's micro-batches and waves ([`ideator_trainer::micro_batches::in_waves`]), the
/// gradients summed as the learner sums them.
fn bench_train(model: ModelArgs, batch: usize, seq: usize, micro_batch: usize, repeats: usize) -> anyhow::Result<()> {
    use ideator_trainer::micro_batches;
    use ideator_trainer::optim::GradAccumulator;
    anyhow::ensure!(
        batch >= 1 && seq >= 2 && micro_batch >= 1 && repeats >= 1,
        "need --batch, --micro-batch, --repeats >= 1 and --seq >= 2"
    );
    let mut m = model.load()?;
    let params = m.decoder.make_trainable()?;
    let vocab = m.decoder.config().vocab_size as u32;
    // Seeded pseudo-random ids (a dense forward's cost does not depend on content).
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % vocab as u64) as u32
    };
    let seqs: Vec<Vec<u32>> = (0..batch).map(|_| (0..seq).map(|_| next()).collect()).collect();
    let chunks: Vec<&[Vec<u32>]> = seqs.chunks(micro_batch).collect();
    let threads =
        micro_batches::wave_width(m.decoder.device(), micro_batches::gradient_bytes(params.iter().map(|(_, v)| v)));
    let decoder = &m.decoder;
    let step = || -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let mut acc = GradAccumulator::new(params.len());
        micro_batches::in_waves(
            &chunks,
            threads,
            |chunk| {
                let from = vec![1; chunk.len()];
                let (lp, _) = decoder.score_tokens(chunk, &from, 0, AdapterMode::default())?;
                // The mean over the whole batch: each micro-batch weighted by its share.
                let loss = (lp.mean_all()? * (-(chunk.len() as f64) / batch as f64))?;
                Ok(loss.backward()?)
            },
            |grads| acc.add(&params, &grads),
        )?;
        drop(acc.into_grads());
        Ok(t0.elapsed().as_secs_f64())
    };
    step()?; // warm-up
    let times: Vec<f64> = (0..repeats).map(|_| step()).collect::<anyhow::Result<_>>()?;
    let t = median(times);
    let out = json!({
        "bench": "train", "impl": "ideator", "model": m.spec.to_string(), "batch": batch, "seq": seq,
        "micro_batch": micro_batch, "data_parallel_threads": threads.min(chunks.len()),
        "device": model.device, "dtype": model.dtype.as_str(), "sampling_dtype": model.sampling_dtype.as_str(),
        "repeats": repeats, "threads": tensor_threads(), "seconds": t, "tokens_per_s": (batch * seq) as f64 / t,
    });
    println!("{out}");
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

/// The shape of `bench grpo`'s steps.
struct GrpoShape {
    group: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    lora_rank: usize,
    steps: usize,
    warmup_steps: usize,
}

fn bench_grpo(
    model: ModelArgs,
    shape: GrpoShape,
    beta: f64,
    learning_rate: f64,
    limit: LimitArgs,
) -> anyhow::Result<()> {
    let GrpoShape { group, prompt_tokens, new_tokens, lora_rank, steps, warmup_steps } = shape;
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
    let decode_kernel = m.decoder.decode_kernel(group);
    let policy = TrainablePolicy::new(m.decoder, &mode, beta > 0.0, 0, pad)?;
    let cfg = GrpoConfig {
        group_size: group,
        beta,
        micro_batch: group,
        loss_aggregation: LossAggregation::SequenceMean,
        // A sampling copy is run as a user would: with truncated importance sampling (Yao et al.'s C = 2).
        rollout_is_threshold: (model.sampling_dtype != Precision::F32).then_some(2.0),
        ..Default::default()
    };
    let optim = OptimConfig { lr: learning_rate, grad_clip: Some(1.0), ..Default::default() };
    let total = (warmup_steps + steps) as u64;
    let mut learner = GrpoLearner::new(policy, cfg, optim, total, new_tokens, 0)?;
    let p = learner.policy();
    let bytes = p.decoder().decode_weight_bytes(p.sampling_mode());
    let machine = MachineLimit::measure(limit, bytes, p.decoder().decode_bytes_per_weight());
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
    let mut out = json!({
        "bench": "grpo", "impl": "ideator", "model": m.spec.to_string(), "group": group,
        "device": device, "dtype": dtype, "sampling_dtype": model.sampling_dtype.as_str(),
        "prompt_tokens": prompt.len(), "prompt_tokens_target": prompt_tokens, "new_tokens": new_tokens,
        "lora_rank": lora_rank, "beta": beta, "learning_rate": learning_rate, "steps": steps,
        "warmup_steps": warmup_steps,
        "threads": tensor_threads(),
        "seconds_per_step": col(|r| r.0), "generation_s": col(|r| r.1), "ref_logprobs_s": col(|r| r.2),
        "update_s": col(|r| r.3),
        "decode_kernel": decode_kernel,
    });
    // Generation's rate includes the shared prompt's prefill, as TRL's generation section does.
    merge(&mut out, machine.report(group, (group * new_tokens) as f64 / col(|r| r.1), None));
    println!("{out}");
    Ok(())
}

/// SmolLM2-135M's widths: hidden, intermediate (MLP), key-value, layers, vocabulary.
const SMOLLM2_SHAPE: (usize, usize, usize, usize, usize) = (576, 1536, 192, 30, 49152);

/// Random weights in SmolLM2-135M's shapes (30 layers of q, k, v, o, gate, up, down, then the head), `(n, k)` each,
/// in `dtype`: 540 MB in f32, far above any cache, so they stream from memory as in decoding.
fn decode_step_weights(dtype: candle_core::DType) -> anyhow::Result<Vec<candle_core::Tensor>> {
    use candle_core::{Device, Tensor};
    let (hidden, inter, kv, layers, vocab) = SMOLLM2_SHAPE;
    let per_layer = [
        (hidden, hidden),
        (kv, hidden),
        (kv, hidden),
        (hidden, hidden),
        (inter, hidden),
        (inter, hidden),
        (hidden, inter),
    ];
    let shapes = (0..layers).flat_map(|_| per_layer).chain([(vocab, hidden)]);
    Ok(shapes.map(|s| Tensor::randn(0f32, 0.02, s, &Device::Cpu)?.to_dtype(dtype)).collect::<Result<_, _>>()?)
}

type ProductKernel =
    Box<dyn Fn(&candle_core::Tensor, &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>>;

/// The few-rows paths to time: every one this CPU has, the portable one only when asked or when it is the only one
/// (on a CPU with AVX2 it is several times slower than the others).
fn few_rows_paths(with_portable: bool) -> Vec<ideator_model::few_rows::Path> {
    use ideator_model::few_rows::Path;
    let paths = Path::available();
    let only_portable = paths.len() == 1;
    paths.into_iter().filter(|&p| with_portable || only_portable || p != Path::Portable).collect()
}

/// The few-rows kernel with `path`.
fn few_rows_kernel(path: ideator_model::few_rows::Path) -> ProductKernel {
    Box::new(move |x, w| ideator_model::few_rows::matmul_t_with(x, w, path))
}

/// The packed-tiles kernel (packed_tiles.rs, what decoding runs on AVX-512) on copies of `weights` packed up front
/// in their own dtype, looked up by tensor.
fn packed_tiles_kernel(weights: &[candle_core::Tensor]) -> anyhow::Result<ProductKernel> {
    use ideator_model::packed_tiles::PackedWeight;
    let mut packed = std::collections::HashMap::new();
    for w in weights {
        packed.insert(w.id(), PackedWeight::pack(&w.to_dtype(candle_core::DType::F32)?, w.dtype())?);
    }
    Ok(Box::new(move |x, w| {
        let copy =
            packed.get(&w.id()).ok_or_else(|| candle_core::Error::Msg("no packed copy of this weight".into()))?;
        copy.matmul_t(x, ideator_model::few_rows::Path::Avx512)
    }))
}

/// candle's product as decoding calls it past the few-rows limit (`W x^T`, linear.rs).
fn gemm_w_xt_kernel() -> ProductKernel {
    Box::new(|x, w| w.matmul(&x.t()?)?.t()?.contiguous())
}

/// Median seconds of one decode step's products (every weight times `rows` random rows) per kernel, over `repeats`
/// interleaved steps (each repeat runs every kernel once, so a change in the machine's load hits them alike), after
/// one untimed step that pages the weights in.
fn time_decode_products(
    weights: &[candle_core::Tensor],
    rows: usize,
    kernels: &[ProductKernel],
    repeats: usize,
) -> anyhow::Result<Vec<f64>> {
    use candle_core::{Device, Tensor};
    let (hidden, inter, ..) = SMOLLM2_SHAPE;
    let x_hidden = Tensor::randn(0f32, 1.0, (rows, hidden), &Device::Cpu)?;
    let x_inter = Tensor::randn(0f32, 1.0, (rows, inter), &Device::Cpu)?;
    let step = |kernel: &ProductKernel| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        for w in weights {
            let x = if w.dims()[1] == hidden { &x_hidden } else { &x_inter };
            std::hint::black_box(kernel(x, w)?);
        }
        Ok(t0.elapsed().as_secs_f64())
    };
    let mut times = vec![Vec::new(); kernels.len()];
    step(&kernels[0])?;
    for _ in 0..repeats {
        for (i, kernel) in kernels.iter().enumerate() {
            times[i].push(step(kernel)?);
        }
    }
    Ok(times.into_iter().map(median).collect())
}

/// `ideator bench matmul`: one decode step's products on SmolLM2-135M's shapes, per kernel and batch size, with
/// the weight-streaming limit of those bytes.
fn bench_matmul(
    rows: &[usize],
    repeats: usize,
    with_portable: bool,
    weight_dtype: Precision,
    limit: LimitArgs,
) -> anyhow::Result<()> {
    anyhow::ensure!(repeats >= 1 && rows.iter().all(|&r| r >= 1), "need --repeats >= 1 and rows >= 1");
    let weights = decode_step_weights(weight_dtype.dtype())?;
    let bytes_per_weight = weight_dtype.dtype().size_in_bytes();
    let bytes: usize = weights.iter().map(|w| w.elem_count() * bytes_per_weight).sum();
    let machine = MachineLimit::measure(limit, bytes, bytes_per_weight);
    let limit = machine.limit();
    let roofline = machine.roofline();
    let mut kernels: Vec<(String, ProductKernel)> = few_rows_paths(with_portable)
        .into_iter()
        .map(|p| (format!("few_rows_{}", p.as_str()), few_rows_kernel(p)))
        .collect();
    if ideator_model::few_rows::Path::available().contains(&ideator_model::few_rows::Path::Avx512) {
        kernels.push(("packed_tiles_avx512".into(), packed_tiles_kernel(&weights)?));
    }
    if weight_dtype == Precision::F32 {
        // What decoding uses past the few-rows limit (W x^T, linear.rs), and the plain product.
        kernels.push(("candle_w_xt".into(), gemm_w_xt_kernel()));
        kernels.push(("candle_x_wt".into(), Box::new(|x, w| x.matmul(&w.t()?))));
    }
    // Ratios are against candle's skinny product, or, with bf16 weights (which candle's CPU matmul does not take
    // at speed), against the first few-rows path.
    let base_index = kernels.iter().position(|(name, _)| name == "candle_w_xt").unwrap_or(0);
    let base_name = kernels[base_index].0.clone();
    let (names, kernels): (Vec<String>, Vec<ProductKernel>) = kernels.into_iter().unzip();
    let mut results = Vec::new();
    for &b in rows {
        let times = time_decode_products(&weights, b, &kernels, repeats)?;
        let base = times[base_index];
        for (name, &t) in names.iter().zip(&times) {
            let gbs = bytes as f64 / t / 1e9;
            let fraction = limit.map(|l| l.fraction(b as f64 / t, b));
            let roof = roofline.map(|r| r.fraction(b as f64 / t, b));
            eprintln!(
                "bench matmul: rows {b:>2} {name:<20} {:>7.2} ms/step {gbs:>6.1} GB/s  {:>5.2}x {base_name}{}{}",
                t * 1e3,
                base / t,
                fraction.map_or(String::new(), |f| format!("  {:.0}% of the streaming limit", 100.0 * f)),
                roof.map_or(String::new(), |f| format!(", {:.0}% of the roofline", 100.0 * f))
            );
            results.push(json!({"rows": b, "kernel": name, "seconds_per_step": t, "gb_per_s": gbs,
                "speedup_vs": base_name, "speedup": base / t, "limit_fraction": fraction, "roofline_fraction": roof}));
        }
    }
    let mut out = json!({"bench": "matmul", "impl": "ideator", "threads": tensor_threads(), "repeats": repeats,
        "weight_dtype": weight_dtype.as_str(), "results": results});
    merge(&mut out, machine.fields());
    println!("{out}");
    Ok(())
}

/// `ideator bench calibrate`: times one decode step's products (SmolLM2-135M's shapes, f32) with every few-rows
/// path this CPU has and with gemm at each row count, picks the kernel choice (`kernel_choice::choose`), prints the
/// table and stores the choice in the kernel cache for this CPU model (unless `dry_run`).
fn bench_calibrate(rows: &[usize], repeats: usize, dry_run: bool) -> anyhow::Result<()> {
    use ideator_model::few_rows::Path;
    use ideator_model::kernel_choice::{self, Calibration, Timing, MAX_CALIBRATED_ROWS};
    anyhow::ensure!(
        repeats >= 1 && rows.iter().all(|&r| (1..=MAX_CALIBRATED_ROWS).contains(&r)),
        "need --repeats >= 1 and every row count in 1..={MAX_CALIBRATED_ROWS}"
    );
    let cpu = ideator_model::machine::CpuInfo::detect();
    let threads = kernel_choice::threads();
    eprintln!("bench calibrate: CPU {}; {threads} thread(s)", cpu.summary());
    let cache = if dry_run { None } else { kernel_choice::cache_path() };
    if let Some(path) = &cache {
        kernel_choice::check_storable(path)?; // before measuring, not after
    }
    let weights = decode_step_weights(candle_core::DType::F32)?;
    let paths = few_rows_paths(false);
    // On the AVX-512 path decoding multiplies packed copies of the weights (decode_copy.rs): time what runs.
    let mut kernels = paths
        .iter()
        .map(|&p| if p == Path::Avx512 { packed_tiles_kernel(&weights) } else { Ok(few_rows_kernel(p)) })
        .collect::<anyhow::Result<Vec<ProductKernel>>>()?;
    kernels.push(gemm_w_xt_kernel());
    let visible = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = crate::progress::bar(rows.len() as u64, "calibrate", visible);
    let mut timings = Vec::new();
    for &r in rows {
        let times = time_decode_products(&weights, r, &kernels, repeats)?;
        let gemm = times[paths.len()];
        let few_rows: Vec<(Path, f64)> = paths.iter().copied().zip(times).collect();
        let cells: Vec<String> =
            few_rows.iter().map(|(p, t)| format!("{} {:.1} ms ({:.2}x)", p.as_str(), t * 1e3, gemm / t)).collect();
        crate::progress::say(
            &progress,
            format!("bench calibrate: rows {r:>2}: {}; gemm {:.1} ms", cells.join(", "), gemm * 1e3),
        );
        timings.push(Timing { rows: r, few_rows, gemm });
        progress.inc(1);
    }
    progress.finish_and_clear();
    let choice = kernel_choice::choose(&timings).ok_or_else(|| anyhow::anyhow!("no timings to choose from"))?;
    let built_in = kernel_choice::KernelChoice::built_in_for(&cpu, ideator_model::few_rows::Path::detect());
    eprintln!(
        "bench calibrate: choice: few-rows {} for {} to {} rows, gemm otherwise (built-in: {} for 1 to {})",
        choice.few_rows_path.as_str(),
        choice.few_rows_min_rows,
        choice.few_rows_max_rows,
        built_in.few_rows_path.as_str(),
        built_in.few_rows_max_rows
    );
    let measured_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let calibration = Calibration { cpu: cpu.summary(), choice, threads, measured_unix, timings };
    let stored = match (dry_run, cache) {
        (true, _) => None,
        (false, None) => {
            eprintln!(
                "bench calibrate: no kernel cache ({} is off, or no HOME); nothing stored",
                kernel_choice::CACHE_ENV
            );
            None
        }
        (false, Some(path)) => {
            kernel_choice::store(&path, calibration.clone())?;
            eprintln!(
                "bench calibrate: stored in {}; decoding on this CPU model at {} thread(s) uses it from now on",
                path.display(),
                calibration.threads
            );
            Some(path)
        }
    };
    let out = json!({"bench": "calibrate", "impl": "ideator", "cpu": calibration.cpu, "threads": calibration.threads,
        "repeats": repeats, "choice": choice, "timings": calibration.timings, "stored_in": stored});
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
    let reference_args =
        ModelArgs { device: "cpu".into(), dtype: Precision::F32, sampling_dtype: Precision::F32, ..model.clone() };
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
