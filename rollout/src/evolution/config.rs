//! `[evolve]`: the search's own settings.

use serde::{Deserialize, Serialize};

use crate::{Result, RolloutError};

/// `[evolve]`: the search's own settings (sampling is `[sampling]`, execution `[backend]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvolveConfig {
    /// Epochs in the run (epoch 0 included). The paper ran 10.
    pub epochs: u64,
    /// Prompts per epoch; each yields `ideas_per_prompt` ideas. The paper's batches held 50-80 ideas.
    pub prompts_per_epoch: usize,
    /// Completions sampled from each prompt.
    pub ideas_per_prompt: usize,
    /// Ideas that beat the baseline listed in an exploit prompt, at most (a random draw; the paper: 10).
    pub exploit_ideas: usize,
    /// Earlier ideas listed in an explore prompt, at most (a random draw; the paper: 100).
    pub explore_ideas: usize,
    /// Each listed idea is clipped to this many characters (a runaway completion must not fill the prompt).
    pub max_idea_chars: usize,
}

impl Default for EvolveConfig {
    fn default() -> Self {
        EvolveConfig {
            epochs: 10,
            prompts_per_epoch: 16,
            ideas_per_prompt: 1,
            exploit_ideas: 10,
            explore_ideas: 100,
            max_idea_chars: 1500,
        }
    }
}

impl EvolveConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.prompts_per_epoch == 0 || self.ideas_per_prompt == 0 {
            return Err(RolloutError::Config(
                "evolve.epochs, evolve.prompts_per_epoch and evolve.ideas_per_prompt must be at least 1".into(),
            ));
        }
        if self.max_idea_chars < 40 {
            return Err(RolloutError::Config(
                "evolve.max_idea_chars must be at least 40 (a listed idea must stay readable)".into(),
            ));
        }
        Ok(())
    }

    /// Ideas sampled per epoch.
    pub fn ideas_per_epoch(&self) -> usize {
        self.prompts_per_epoch * self.ideas_per_prompt
    }
}
