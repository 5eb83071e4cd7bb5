//! # ideator-rollout
//!
//! From policy to scored ideas and back: the ideator prompt of an environment, sampling groups of ideas,
//! executing them, and the RL loop that turns scored groups into GRPO updates with metrics, an idea log and
//! checkpoints in a run folder. (The asynchronous pipeline, the SQLite run store and evolutionary search build on
//! the same pieces.)

pub mod error;
pub mod execute;
pub mod prompt;
pub mod rl;
pub mod store;

pub use error::{Result, RolloutError};
