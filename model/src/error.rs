//! The model crate's error type: every variant says what was wrong and, where it can, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing, unreadable, truncated or not what it claims to be.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The model, tokenizer or tensor layout is one this crate does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template is missing or failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A caller passed an invalid argument (bad sampling parameters, empty batch, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The Hugging Face hub could not provide a file.
    #[error("hugging face hub: {0}")]
    Hub(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::File { path: path.into(), message: message.into() }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;
