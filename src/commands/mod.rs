//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<()>`.

pub mod bench;
pub mod logprobs;
pub mod model_args;
pub mod sample;
pub mod sft;
pub mod env;
pub mod exec;
pub mod tokenize;
