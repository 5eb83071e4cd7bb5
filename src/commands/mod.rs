//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<()>`.

pub mod env;
pub mod exec;
pub mod tokenize;
