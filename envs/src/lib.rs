//! # ideator-envs
//!
//! Execution environments for ideas, and the executor that turns an idea into a run.
//!
//! - [`knobs`]: typed, documented knob schemas (plain data) rendered into tables and prompts.
//! - [`idea`] and [`executor`]: find `[Experiment]` / `[Code Changes]` / `[End]`, parse the `key = value` lines as
//!   TOML, validate them into a [`Recipe`] or a readable implementation failure, run it, and turn every failure
//!   (crash, NaN, timeout, budget, implausible reward) into an [`ExecResult`] with reward 0.
//! - [`environment`]: the [`Environment`] trait and the [`RunContext`] of one run.
//! - [`pretrain`]: a GPT trained from scratch in candle on the Brown corpus under a fixed FLOP budget;
//!   reward = 1 / validation loss.
//! - [`posttrain`]: the project's GRPO post-trains a small character-level policy (cached supervised base) on
//!   arithmetic problems for a fixed budget of sampled completions; reward = held-out accuracy.
//! - [`command`]: an external program implements and runs the idea (the idea travels as a file, never through a
//!   shell).
//! - [`codebase`]: an idea is a unified diff to a real program (a baseline folder, editable and protected files),
//!   applied to a fresh copy and run inside the [`sandbox`] (process group, rlimits, scrubbed environment, no
//!   network when root).
//! - [`backend`]: where executions run as separate processes: local slots (CPU shares or GPUs) or Slurm jobs.
//! - [`scale`]: what every scale of a knob environment declares, around its own budget.
//! - [`toy`] and [`peaks`]: instant synthetic environments for tests, demos and many-seed experiments.
//! - [`prompt`]: every prompt text: the system turn, an environment's ideator and task prompts, evolutionary
//!   search's exploit / explore / fresh prompts ([`prompt::evolution`]), and schema-valid example ideas for a
//!   supervised warm-up.

pub mod backend;
pub mod codebase;
pub mod command;
pub mod environment;
pub mod executor;
pub mod idea;
pub mod knobs;
pub mod peaks;
pub mod posttrain;
pub mod pretrain;
pub mod prompt;
pub mod recipe;
pub mod result;
pub mod sandbox;
pub mod scale;
pub mod toy;

pub use environment::{default_device, CpuParallelism, EnvError, Environment, RunContext, ScaleInfo};
pub use executor::{execute, execute_bytes, implement, run_recipe, ImplementationError};
pub use knobs::{Knob, KnobKind, KnobValue, Schema};
pub use recipe::Recipe;
pub use result::{ExecResult, FailureCause, Status};

use std::path::Path;

/// The built-in environments with a one-line summary each.
pub fn list() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "pretrain",
            "train a byte-level GPT from scratch on the Brown corpus under a fixed FLOP budget; reward = 1/val_loss",
        ),
        (
            "command",
            "an external program implements and runs the idea (needs --env-config FILE, see examples/command_env)",
        ),
        (
            "codebase",
            "an idea is a unified diff to a real program, run in a sandbox (needs --env-config FILE, see examples/codebase_env)",
        ),
        ("toy", "synthetic: reward computed instantly from the knobs (closeness to a hidden best recipe); for tests and quick RL runs"),
        ("peaks", "synthetic: a common recipe scores 0.5, two rare knob combinations score up to 0.8 and 1.0; for best-of-N objectives"),
        (
            "posttrain",
            "post-train a small policy with the project's GRPO on arithmetic problems for a fixed budget of samples; reward = held-out accuracy",
        ),
    ]
}

/// Loads an environment by name. `command` and `codebase` need a config file; the others ignore it.
pub fn load(name: &str, config: Option<&Path>) -> Result<Box<dyn Environment>, EnvError> {
    match name {
        "pretrain" => Ok(Box::new(pretrain::Pretrain::new())),
        "toy" => Ok(Box::new(toy::Toy)),
        "peaks" => Ok(Box::new(peaks::Peaks)),
        "command" => {
            let path = config.ok_or_else(|| {
                EnvError::Config(
                    "the command environment needs a config file (--env-config FILE); see examples/command_env/"
                        .into(),
                )
            })?;
            Ok(Box::new(command::CommandEnv::from_file(path)?))
        }
        "codebase" => {
            let path = config.ok_or_else(|| {
                EnvError::Config(
                    "the codebase environment needs a config file (--env-config FILE); see examples/codebase_env/"
                        .into(),
                )
            })?;
            Ok(Box::new(codebase::CodebaseEnv::from_file(path)?))
        }
        "posttrain" => Ok(Box::new(posttrain::Posttrain::new())),
        other => Err(EnvError::UnknownEnvironment {
            name: knobs::clip(other, 40),
            known: list().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}
