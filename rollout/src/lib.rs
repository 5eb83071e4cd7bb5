//! # ideator-rollout
//!
//! From policy to scored ideas and back: the ideator prompt of an environment as token ids ([`prompt`]; the
//! text is `ideator_envs::prompt`'s), sampling groups of ideas, executing them on a backend's slots through the
//! asynchronous [`pipeline`], and feeding complete groups to a pluggable learner: GRPO, evolutionary search
//! ([`evolution`]: a frozen ideator, a changing prompt database), or a frozen sampler for evaluations. The
//! [`store`] (SQLite) records every idea, execution, update and checkpoint and is what a resumed run starts from;
//! `metrics.jsonl` and `ideas.jsonl` are human-readable exports. [`baseline`] runs an environment's baseline recipe
//! once per run folder; [`generate`] is a frozen ideator.

pub mod baseline;
pub mod cache;
pub mod error;
pub mod evolution;
pub mod generate;
pub mod pipeline;
pub mod prompt;
pub mod rl;
pub mod store;

pub use error::{Result, RolloutError};
