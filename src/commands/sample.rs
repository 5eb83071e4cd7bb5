//! `ideator sample`: sample completions of one prompt from an ideator.

use std::time::Instant;

use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::AdapterMode;
use ideator_model::ChatMessage;

use super::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text (the user turn with --chat).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template (user turn, generation prompt).
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Completions to sample.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Stop after this string (repeatable); it is kept in the text.
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows decoded together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Print JSON with token ids and behaviour log-probs.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.n >= 1, "--n must be at least 1 (completions to sample), got 0");
    anyhow::ensure!(args.batch_size >= 1, "--batch-size must be at least 1, got 0");
    anyhow::ensure!(args.max_new_tokens >= 1, "--max-new-tokens must be at least 1, got 0");
    let model = args.model.load()?;
    let prompt_text = if args.chat {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage { role: "system".into(), content: s.clone() });
        }
        messages.push(ChatMessage { role: "user".into(), content: args.prompt.clone() });
        model.tokenizer.apply_chat_template(&messages, true)?
    } else {
        anyhow::ensure!(args.system.is_none(), "--system needs --chat");
        args.prompt.clone()
    };
    let prompt_ids = model.tokenizer.encode(&prompt_text, model.tokenizer.add_bos())?;
    anyhow::ensure!(!prompt_ids.is_empty(), "the prompt is empty");
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: 0,
        stop: args.stop.clone(),
        seed: args.seed,
        batch_size: args.batch_size,
    };
    let bar = crate::progress::bar(args.n as u64, "sampling", !args.json);
    let t0 = Instant::now();
    let completions = sample(
        &model.decoder,
        &model.tokenizer,
        std::slice::from_ref(&prompt_ids),
        args.n,
        &params,
        AdapterMode::default(),
        Some(&|done| bar.set_position(done as u64)),
    )?;
    bar.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    let new_tokens: usize = completions.iter().map(|c| c.token_ids.len()).sum();
    if args.json {
        let out = serde_json::json!({
            "model": model.spec.to_string(),
            "prompt": prompt_text,
            "prompt_tokens": prompt_ids.len(),
            "completions": completions,
            "seconds": seconds,
            "new_tokens": new_tokens,
        });
        println!("{out}");
    } else {
        for c in &completions {
            println!("--- sample {} ({} tokens, {:?})", c.sample_index, c.token_ids.len(), c.finish_reason);
            println!("{}", c.text);
        }
        eprintln!("{new_tokens} tokens in {seconds:.1}s ({:.1} tokens/s)", new_tokens as f64 / seconds);
    }
    Ok(())
}
