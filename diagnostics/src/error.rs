//! The diagnostics crate's error type: every variant says what was wrong and, where it can, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    /// A caller passed data a metric cannot be computed from (empty batch, NaN reward, k out of range, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A configuration value is out of range.
    #[error("invalid diagnostics config: {0}")]
    Config(String),
    /// An asset file (the sentence embedder) is missing; the message names the command that fetches it.
    #[error("{0}")]
    MissingAsset(String),
    /// A file exists but could not be read or parsed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Building or running the embedder's tokenizer failed.
    #[error("embedder tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DiagnosticsError {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DiagnosticsError::File { path: path.into(), message: message.into() }
    }
}

pub type Result<T> = std::result::Result<T, DiagnosticsError>;

/// Rejects NaN and infinite values, naming the first offender, so that a metric never silently turns into NaN.
pub(crate) fn check_finite(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(DiagnosticsError::Invalid(format!("{what}[{i}] is {}, expected a finite number", values[i]))),
        None => Ok(()),
    }
}
