//! Keys of the execution cache. An execution is a function of what the environment runs (the canonical recipe,
//! [`Environment::cache_identity`]), the environment and its config, the scale and the seed; on CPU it is
//! bit-exact for those. So the dispatcher runs each key at each seed once per run store and copies its result to
//! every later idea with the same key and seed (`crate::store::Store::cached_result`), and an identical idea
//! arriving while the first still runs waits for it instead of running beside it. A collapsed batch (the seed
//! paper saw 119 of 128 ideas fall onto two) then costs two executions, not 128.

use std::sync::Arc;

use ideator_envs::executor::implement;
use ideator_envs::Environment;
use sha2::{Digest, Sha256};

use crate::pipeline::frozen::BASELINE_TEXT;
use crate::store::IdeaRow;

/// Computes cache keys for one environment at one scale.
pub struct RecipeKeyer {
    env: Arc<dyn Environment>,
    scale: String,
    /// The environment's name and config (a `command` environment with another config is another function).
    context: String,
}

impl std::fmt::Debug for RecipeKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipeKeyer").field("env", &self.env.name()).field("scale", &self.scale).finish()
    }
}

impl RecipeKeyer {
    /// `env_config` is the text of the environment's own config file, if it has one.
    pub fn new(env: Arc<dyn Environment>, scale: &str, env_config: Option<&str>) -> RecipeKeyer {
        let context = format!("{}\n{}", env.name(), env_config.unwrap_or(""));
        RecipeKeyer { env, scale: scale.to_string(), context }
    }

    /// The key of an idea's execution: a hex sha256, or `None` when it cannot be cached (the idea does not
    /// implement, so it fails at once anyway, or the environment opts out). Reference runs and baseline runs
    /// execute the baseline recipe.
    pub fn key(&self, idea: &IdeaRow) -> Option<String> {
        let recipe = if idea.reference || idea.text == BASELINE_TEXT {
            self.env.baseline(&self.scale).ok()?
        } else {
            implement(self.env.as_ref(), &idea.text, &self.scale).ok()?
        };
        let identity = self.env.cache_identity(&recipe)?;
        let mut h = Sha256::new();
        for part in [self.context.as_str(), self.scale.as_str(), identity.as_str()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}
