#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error("invalid trainer config: {0}")]
    Config(String),
    #[error("invalid training data: {0}")]
    Data(String),
    /// Loss or gradients became NaN/inf: the step is not applied.
    #[error("non-finite {0}: the update was skipped; lower the learning rate or enable gradient clipping")]
    NonFinite(String),
    #[error(transparent)]
    Model(#[from] ideator_model::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] ideator_checkpoints::CheckpointError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainerError>;
