//! # ideator-checkpoints
//!
//! The checkpoint format: weights or adapters (safetensors), optimiser state, trainer state and a manifest with
//! each file's sha256 and the base model's identity; atomic save, verification, loading and exact resume.
