//! # ideator-rollout
//!
//! From policy to scored ideas and back: prompts, sampling, the asynchronous execution pipeline, staleness
//! control, the run store (SQLite) and the RL and evolution loops that feed the learners.
