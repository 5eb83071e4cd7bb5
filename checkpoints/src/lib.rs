//! # ideator-checkpoints
//!
//! The checkpoint format: a folder per step holding weights or adapters (safetensors), optimiser state
//! (safetensors), trainer state (JSON), the run's config, and a manifest with each file's sha256 and the base
//! model's identity. `save` is atomic (a temporary folder renamed into place), `verify` re-hashes every file,
//! and `load` refuses a corrupt or mismatched checkpoint with an error that says which file and why.
//! Retention keeps the last K checkpoints and the best one.

mod error;
mod hashing;
mod manifest;
mod retention;
mod store;

pub use error::{CheckpointError, Result};
pub use hashing::{sha256_bytes, sha256_file};
pub use manifest::{BaseModel, FileEntry, Manifest, WeightsKind, FORMAT_VERSION};
pub use retention::{prune, RetentionPolicy};
pub use store::{latest, list, load, save, verify, Checkpoint, CheckpointDir};
