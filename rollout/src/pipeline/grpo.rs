//! GRPO as a pipeline [`Learner`]: samples groups from the trainable policy for the environment's prompt, updates
//! it with [`GrpoLearner::train_step`], and saves checkpoints (adapters or weights, optimiser state, counters).

use std::path::PathBuf;

use ideator_checkpoints::{BaseModel, Checkpoint, RetentionPolicy};
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::Tokenizer;
use ideator_trainer::grpo::LearnerState;
use ideator_trainer::{GrpoLearner, ScoredGroup};
use serde::{Deserialize, Serialize};

use super::{Learner, LearnerStats, SampledGroup, SampledIdea};
use crate::{Result, RolloutError};

/// The trainer state a checkpoint carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CheckpointState {
    pub learner: Option<LearnerState>,
}

pub struct GrpoAgent<'a> {
    pub learner: GrpoLearner,
    pub tokenizer: &'a Tokenizer,
    pub prompt_text: String,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    /// The run's `checkpoints/` folder.
    pub checkpoints: PathBuf,
    pub base_model: BaseModel,
    pub config_text: String,
    pub retention: RetentionPolicy,
}

impl GrpoAgent<'_> {
    /// Restores the newest checkpoint in the folder whose step is at most `at_most` (the newest policy version the
    /// run store recorded), if any; returns its step. A checkpoint newer than the store is one whose step record an
    /// OS crash lost (the step's groups are complete again in the store): resuming from it would train those
    /// groups twice, so it is passed over.
    pub fn restore_latest(&mut self, at_most: Option<u64>) -> Result<Option<u64>> {
        let mut all = ideator_checkpoints::list(&self.checkpoints)?;
        all.retain(|c| at_most.is_none_or(|m| c.manifest.step <= m));
        let Some(latest) = all.pop() else { return Ok(None) };
        let c = ideator_checkpoints::load(&latest.path, Some(&self.base_model))?;
        let state: CheckpointState = serde_json::from_value(c.trainer_state.clone()).map_err(|e| {
            RolloutError::Config(format!("checkpoint {}: bad trainer state: {e}", latest.path.display()))
        })?;
        let learner_state = state.learner.ok_or_else(|| {
            RolloutError::Config(format!("checkpoint {} has no learner state", latest.path.display()))
        })?;
        self.learner.restore(&c.weights, &c.optimizer, &learner_state)?;
        Ok(Some(self.learner.step()))
    }
}

impl Learner for GrpoAgent<'_> {
    fn version(&self) -> u64 {
        self.learner.step()
    }

    fn sample_group(&mut self, seed: u64) -> Result<SampledGroup> {
        let params = SamplingParams { seed, ..self.sampling.clone() };
        let policy = self.learner.policy();
        let n = self.learner.config().group_size;
        let completions = sample(
            policy.decoder(),
            self.tokenizer,
            std::slice::from_ref(&self.prompt_ids),
            n,
            &params,
            policy.sampling_mode(),
            None,
        )?;
        Ok(SampledGroup {
            temperature: params.logprob_temperature(),
            prompt_text: self.prompt_text.clone(),
            prompt_ids: self.prompt_ids.clone(),
            ideas: completions.into_iter().map(SampledIdea::from).collect(),
        })
    }

    fn update(&mut self, groups: &[ScoredGroup]) -> Result<LearnerStats> {
        // Groups whose every sample was excluded (infrastructure failures) carry nothing to learn from.
        let groups: Vec<ScoredGroup> = groups.iter().filter(|g| !g.samples.is_empty()).cloned().collect();
        let stats = if groups.is_empty() {
            tracing::warn!("every sample of step {} was excluded; the step makes no update", self.learner.step());
            self.learner.skip_step()
        } else {
            self.learner.train_step(&groups)?
        };
        Ok(LearnerStats { grpo: Some(stats), evolution: None })
    }

    fn checkpoint(&mut self, score: Option<f64>) -> Result<Option<PathBuf>> {
        let (weights, optimizer, learner_state) = self.learner.export();
        let step = learner_state.step;
        let dir = ideator_checkpoints::save(
            &self.checkpoints,
            &Checkpoint {
                step,
                weights_kind: self.learner.policy().weights_kind(),
                base_model: self.base_model.clone(),
                weights,
                optimizer,
                trainer_state: serde_json::to_value(CheckpointState { learner: Some(learner_state) })
                    .expect("state serialises"),
                config_text: self.config_text.clone(),
                score,
            },
        )?;
        ideator_checkpoints::prune(&self.checkpoints, &self.retention)?;
        Ok(Some(dir.path))
    }
}
