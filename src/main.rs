//! # ideator (the CLI)
//!
//! The user's entry point: sample ideas, score text, and (as the project grows) train, evolve, evaluate, compare
//! and report. Each subcommand lives in its own module under `commands/`; this file only parses arguments,
//! sets up logging and dispatches.

mod commands;
#[cfg(test)]
mod config_reference;
mod execution;
mod policy_init;
mod progress;
mod run_config;
mod run_lock;
mod store_data;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ideator", version, about = "Train ideator LMs with reinforcement learning from execution")]
struct Cli {
    /// CPU threads for tensor work (default: all physical cores). Use 1 when several runs share the cores:
    /// candle's thread pool spin-waits, and oversubscribed cores make it several times slower.
    #[arg(long, global = true, env = "IDEATOR_THREADS")]
    threads: Option<usize>,
    /// Memory in GB the training passes alive at once may keep for their backward passes (passes side by side on
    /// the threads share it) before they switch to activation checkpointing (recomputing each layer: about a third
    /// more compute, a fraction of the memory); it also caps how many passes run side by side by the gradients
    /// they hold. Default 8.
    #[arg(long, global = true, env = "IDEATOR_ACTIVATION_MEMORY_GB")]
    activation_memory_gb: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample completions of a prompt from an ideator model.
    Sample(commands::sample::Args),
    /// Log-probability of every token of a text under a model.
    Logprobs(commands::logprobs::Args),
    /// Tokenize text with a model's tokenizer.
    Tokenize(commands::tokenize::Args),
    /// Supervised warm-up of an ideator on chat examples.
    Sft(commands::sft::Args),
    /// RL (GRPO) on an ideator, rewarded by executing its ideas in an environment.
    #[command(after_help = commands::EXIT_STATUS_HELP)]
    Train(commands::train::Args),
    /// Evolutionary search with a frozen ideator (the seed paper's method), on the same executor and run store.
    #[command(after_help = commands::EXIT_STATUS_HELP)]
    Evolve(commands::evolve::Args),
    /// Sample ideas from a model or checkpoint, execute them, and report reward, max@k and diversity (stored:
    /// the same evaluation is never executed twice).
    Eval(commands::eval::Args),
    /// Arms (best-of-N, evolution, GRPO objectives) x seeds at equal budgets, resumable; writes their comparison.
    Experiment(commands::experiment::Args),
    /// Average vs best-of-N across RL steps, evolution epochs and checkpoints, with the executions each used.
    Compare(commands::compare::Args),
    /// Write a run's report: one self-contained HTML file with its charts (default RUN/report.html).
    Report(commands::report::Args),
    /// Fold a checkpoint's adapters into its base model and write a Hugging Face model folder.
    Merge(commands::merge::Args),
    /// Our half of the side-by-side benchmarks (see BENCHMARKS.md).
    Bench(commands::bench::Args),
    /// Inspect environments: list, show knobs, print the ideator prompt, write example ideas.
    Env(commands::env::Args),
    /// Implement and run one idea in an environment; prints the result.
    Exec(commands::exec::Args),
    /// Serve a model or checkpoint over the OpenAI chat-completions API (localhost by default).
    Serve(commands::serve::Args),
}

fn main() -> std::process::ExitCode {
    // Errors are printed as a chain of causes (`{:#}`), without a backtrace: they are meant for users. candle
    // captures a backtrace into its errors' text whenever RUST_BACKTRACE is set; RUST_LIB_BACKTRACE=0 stops that
    // for errors while panics keep their backtraces (the documented split), unless the user chose otherwise.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    match run() {
        // A run stopped cleanly by SIGINT/SIGTERM is not a success: the shells' 128 + signal (see `train --help`).
        Ok(()) => match ideator_rollout::pipeline::interrupt::exit_code() {
            Some(code) => std::process::ExitCode::from(code),
            None => std::process::ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            match ideator_rollout::pipeline::interrupt::exit_code() {
                Some(code) => std::process::ExitCode::from(code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// Sets rayon's thread count. It is read once, by thread pools that start on the first tensor operation, so this
/// must run before it (`exec` may set it again, still before any tensor operation).
pub(crate) fn set_tensor_threads(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

/// Leaves candle's own element-wise pool off (`CANDLE_NUM_THREADS=1`) unless the user set it. candle 0.11 splits
/// element-wise ops of 64K+ elements over a process-wide pool behind one call lock, so the learners' micro-batches
/// side by side serialise on it and share its spinning worker: 1.12x tokens/s without it on Zen 4, and no loss for
/// one pass or decoding (BENCHMARKS.md, "candle's element-wise pool against side-by-side micro-batches").
fn leave_candle_elementwise_pool_off() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn run() -> anyhow::Result<()> {
    ideator_model::allocator::keep_freed_tensor_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("IDEATOR_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    leave_candle_elementwise_pool_off();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n >= 1, "--threads must be at least 1");
        set_tensor_threads(n);
    }
    if let Some(gb) = cli.activation_memory_gb {
        anyhow::ensure!(
            gb >= 0.0 && gb.is_finite(),
            "--activation-memory-gb must be a non-negative number, got {gb}"
        );
        ideator_model::scored::set_activation_memory((gb * (1u64 << 30) as f64) as usize);
    }
    match cli.command {
        Command::Sample(args) => commands::sample::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Logprobs(args) => commands::logprobs::run(args),
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Sft(args) => commands::sft::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Evolve(args) => commands::evolve::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Experiment(args) => commands::experiment::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Env(args) => commands::env::run(args),
        Command::Exec(args) => commands::exec::run(args),
    }
}
