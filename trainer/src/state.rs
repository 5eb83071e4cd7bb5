//! What a learner's checkpoint holds beyond its config: the trained tensors, the optimiser's moments and the
//! counters. One implementation for every learner that owns a [`TrainablePolicy`] and an [`AdamW`] (GRPO, SFT).

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::optim::AdamW;
use crate::policy::TrainablePolicy;
use crate::Result;

/// Learner counters saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerState {
    /// Updates done (the learner's schedule position).
    pub step: u64,
    /// Optimiser steps taken (AdamW's bias correction); can trail `step` when updates were skipped.
    pub optimizer_steps: u64,
}

/// A learner's state as a checkpoint stores it: (trained tensors by name, optimiser tensors by name, counters).
pub type ExportedState = (HashMap<String, Tensor>, HashMap<String, Tensor>, LearnerState);

/// The trained tensors, optimiser tensors and counters of a learner at update `step`.
pub(crate) fn export(policy: &TrainablePolicy, optimizer: &AdamW, step: u64) -> ExportedState {
    (
        policy.weight_tensors(),
        optimizer.state_tensors(policy.params()),
        LearnerState { step, optimizer_steps: optimizer.steps() },
    )
}

/// Loads what [`export`] produced into `policy` and `optimizer`; returns the update to continue from.
///
/// Errors: a tensor missing or of the wrong shape in `weights` or `moments`.
pub(crate) fn restore(
    policy: &mut TrainablePolicy,
    optimizer: &mut AdamW,
    weights: &HashMap<String, Tensor>,
    moments: &HashMap<String, Tensor>,
    state: &LearnerState,
) -> Result<u64> {
    policy.load_weight_tensors(weights)?;
    optimizer.load_state(policy.params(), moments, state.optimizer_steps)?;
    Ok(state.step)
}
