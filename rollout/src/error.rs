#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Io { path: std::path::PathBuf, message: String },
    #[error("run store {path}: {message}")]
    Store { path: std::path::PathBuf, message: String },
    #[error("backend: {0}")]
    Backend(String),
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Model(#[from] ideator_model::ModelError),
    #[error(transparent)]
    Trainer(#[from] ideator_trainer::TrainerError),
    #[error(transparent)]
    Checkpoint(#[from] ideator_checkpoints::CheckpointError),
    #[error(transparent)]
    Env(#[from] ideator_envs::EnvError),
}

pub type Result<T> = std::result::Result<T, RolloutError>;
