use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file is missing, its hash differs from the manifest, or it cannot be parsed.
    #[error("checkpoint {path} is corrupt: {message}; delete it or resume from an earlier checkpoint")]
    Corrupt { path: PathBuf, message: String },
    /// The checkpoint belongs to another base model or format.
    #[error("checkpoint {path} does not match: {message}")]
    Mismatch { path: PathBuf, message: String },
    /// A tensor to be saved holds NaN or infinity: such a checkpoint would only spread the divergence.
    #[error(
        "refusing to write checkpoint step {step}: {file} tensor {tensor:?} holds NaN or infinite values (training \
         diverged; lower the learning rate or clip gradients); earlier checkpoints are kept"
    )]
    NonFinite { step: u64, file: &'static str, tensor: String },
    #[error("no checkpoint found in {0}")]
    NotFound(PathBuf),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io { path: path.into(), source }
    }
    pub(crate) fn corrupt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CheckpointError::Corrupt { path: path.into(), message: message.into() }
    }
}

pub type Result<T> = std::result::Result<T, CheckpointError>;
