//! # ideator-trainer
//!
//! Learners that consume scored groups: GRPO and SFT updates (the weights change) and evolutionary search (the
//! prompt database changes); optimisers, learning-rate schedules and LoRA training.
