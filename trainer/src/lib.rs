//! # ideator-trainer
//!
//! Learners that consume scored groups and change the weights: GRPO and SFT updates. Also the pieces they share:
//! group advantages, the clipped policy loss with its aggregation variants, AdamW with exportable state,
//! global-norm gradient clipping, learning-rate schedules, and the trainable policy (LoRA or full fine-tuning)
//! with its KL reference. (Evolutionary search, which changes prompts instead, is `ideator_rollout::evolution`.)

pub mod advantages;
pub mod config;
pub mod data;
pub mod error;
pub mod grpo;
pub mod loss;
pub mod micro_batches;
pub mod optim;
pub mod policy;
pub mod run_dir;
pub mod schedule;
pub mod sft;
pub mod sft_run;
pub mod state;

pub use config::{AdvantageEstimator, GrpoConfig, LossAggregation, OptimConfig, TrainMode};
pub use data::{ScoredGroup, ScoredSample};
pub use error::{Result, TrainerError};
pub use grpo::{GrpoLearner, GrpoStepStats};
pub use policy::TrainablePolicy;
