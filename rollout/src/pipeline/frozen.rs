//! Learners that learn nothing: a fixed batch pushed through the pipeline, so that evaluations and the baseline
//! run on the same backends and land in the same run store as training (stored, resumable, never re-executed).
//! The batch is one pipeline "step"; its update only summarises the rewards.
//!
//! - [`FrozenSampler`]: `n` ideas sampled from one prompt by a frozen model (`ideator eval`).
//! - `BaselineLearner` with `BaselineLauncher`: the environment's baseline recipe, run once
//!   (`ideator exec` without an idea runs the baseline).

use std::path::PathBuf;

use ideator_envs::backend::RunSpec;
use ideator_trainer::ScoredGroup;

use super::dispatch::{ExecLauncher, Launcher};
use super::{Learner, LearnerStats, SampledGroup, SampledIdea};
use crate::generate::IdeaGenerator;
use crate::store::IdeaRow;
use crate::{Result, RolloutError};

/// Samples `n` ideas from one prompt, `group_size` per group (the last group may be smaller).
pub struct FrozenSampler<'a> {
    generator: &'a mut dyn IdeaGenerator,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    n: usize,
    group_size: usize,
    sampled: usize,
    version: u64,
}

impl<'a> FrozenSampler<'a> {
    /// `already_sampled` ideas (and `done` updates) are in the store from an earlier, interrupted attempt.
    pub fn new(
        generator: &'a mut dyn IdeaGenerator,
        prompt_text: String,
        prompt_ids: Vec<u32>,
        n: usize,
        group_size: usize,
        already_sampled: usize,
        done: bool,
    ) -> Result<Self> {
        if n == 0 || group_size == 0 {
            return Err(RolloutError::Config("an evaluation needs at least one idea per group and in all".into()));
        }
        Ok(FrozenSampler {
            generator,
            prompt_text,
            prompt_ids,
            n,
            group_size,
            sampled: already_sampled,
            version: u64::from(done),
        })
    }

    /// Groups the batch is split into (the pipeline's groups per step).
    pub fn groups(n: usize, group_size: usize) -> usize {
        n.div_ceil(group_size.max(1))
    }
}

impl Learner for FrozenSampler<'_> {
    fn version(&self) -> u64 {
        self.version
    }

    fn sample_group(&mut self, seed: u64) -> Result<SampledGroup> {
        let k = self.group_size.min(self.n.saturating_sub(self.sampled));
        if k == 0 {
            return Err(RolloutError::Config(format!("all {} ideas of the evaluation are sampled already", self.n)));
        }
        let ideas = self.generator.generate(&self.prompt_ids, k, seed)?;
        self.sampled += ideas.len();
        Ok(SampledGroup {
            prompt_text: self.prompt_text.clone(),
            prompt_ids: self.prompt_ids.clone(),
            ideas,
            temperature: self.generator.temperature(),
        })
    }

    /// Nothing learns: the step record's rewards are the pipeline's.
    fn update(&mut self, _groups: &[ScoredGroup]) -> Result<LearnerStats> {
        self.version += 1;
        Ok(LearnerStats::default())
    }

    fn checkpoint(&mut self, _score: Option<f64>) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}

/// The text stored for the baseline "idea" (the launcher runs the baseline recipe, not this text).
pub(crate) const BASELINE_TEXT: &str = "[baseline: the environment's default recipe, unchanged]";

/// One group holding the baseline.
pub(crate) struct BaselineLearner {
    pub version: u64,
}

impl Learner for BaselineLearner {
    fn version(&self) -> u64 {
        self.version
    }

    fn sample_group(&mut self, _seed: u64) -> Result<SampledGroup> {
        Ok(SampledGroup {
            prompt_text: String::new(),
            prompt_ids: vec![],
            ideas: vec![SampledIdea {
                text: BASELINE_TEXT.into(),
                token_ids: vec![],
                logprobs: vec![],
                finish_reason: "baseline".into(),
            }],
            temperature: 1.0,
        })
    }

    /// Nothing learns: the step record's rewards are the pipeline's.
    fn update(&mut self, _groups: &[ScoredGroup]) -> Result<LearnerStats> {
        self.version += 1;
        Ok(LearnerStats::default())
    }

    fn checkpoint(&mut self, _score: Option<f64>) -> Result<Option<PathBuf>> {
        Ok(None)
    }
}

/// Runs `ideator exec` without an idea file: the environment's baseline recipe.
pub(crate) struct BaselineLauncher(pub ExecLauncher);

impl Launcher for BaselineLauncher {
    fn spec(&self, idea: &IdeaRow, attempt: u32, prepare: bool) -> std::io::Result<RunSpec> {
        let mut spec = self.0.spec(idea, attempt, prepare)?;
        if let Some(i) = spec.args.iter().position(|a| a == "--idea") {
            spec.args.drain(i..i + 2);
        }
        Ok(spec)
    }
}
