//! # ideator (the CLI)
//!
//! The user's entry point: sample ideas, score text, and (as the project grows) train, evolve, evaluate, compare
//! and report. Each subcommand lives in its own module under `commands/`; this file only parses arguments,
//! sets up logging and dispatches.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ideator", version, about = "Train ideator LMs with reinforcement learning from execution")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize text with a model's tokenizer.
    Tokenize(commands::tokenize::Args),
    /// Inspect environments: list, show knobs, print the ideator prompt, write example ideas.
    Env(commands::env::Args),
    /// Implement and run one idea in an environment; prints the result.
    Exec(commands::exec::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("IDEATOR_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Tokenize(args) => commands::tokenize::run(args),
        Command::Env(args) => commands::env::run(args),
        Command::Exec(args) => commands::exec::run(args),
    }
}
