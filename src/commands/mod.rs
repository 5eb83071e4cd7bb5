//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<()>`.

pub mod bench;
pub mod compare;
pub mod env;
pub mod eval;
pub mod evolve;
pub mod exec;
pub mod logprobs;
pub mod merge;
pub mod model_args;
pub mod report;
pub mod sample;
pub mod serve;
pub mod sft;
pub mod tokenize;
pub mod train;
