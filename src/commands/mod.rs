//! One module per subcommand. Each exposes `Args` (clap) and `run(Args) -> anyhow::Result<()>`.

pub mod bench;
pub mod compare;
pub mod env;
pub mod eval;
pub mod evolve;
pub mod exec;
pub mod experiment;
pub mod logprobs;
pub mod merge;
pub mod model_args;
pub mod report;
pub mod sample;
pub mod serve;
pub mod sft;
pub mod tokenize;
pub mod train;

/// The exit statuses of commands that run the pipeline (`--help` shows them).
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 when the run finished; 130 after a clean stop on SIGINT \
(Ctrl-C) and 143 on SIGTERM, as shells report signals (continue with --resume); 1 on any error (the run is then \
marked failed, with the error, in its store).";
