//! Evolutionary search, the seed paper's baseline: the ideator stays frozen; what changes from epoch to epoch is
//! the prompt database its prompts are built from. This module owns all of it: the `[evolve]` settings
//! ([`EvolveConfig`]), the exploit/explore schedule of each epoch (`schedule`), the database of every executed
//! idea with its score or failure (`database`), and the pipeline learner that samples an epoch's prompts and adds
//! their results ([`EvolutionAgent`]). The prompt text is `ideator_envs::prompt::evolution`'s.
//!
//! The method (Si et al., 2026; `agent/evolutionary_search.py` of their code):
//! - epoch 0 samples a batch of fresh ideas from the environment's plain prompt;
//! - epoch e >= 1 builds `floor(B * exploit_share(e))` of its B prompts as *exploit* prompts (a random draw of the
//!   ideas that beat the baseline, with their scores; "refine or combine these") and the rest as *explore*
//!   prompts (a random draw of all earlier ideas, failures included; "a new direction, unlike these");
//!   `exploit_share(e) = min(0.5 + 0.1 * floor(e / 2), 0.8)`;
//! - every prompt ends with the ideas already proposed in this epoch, to avoid.
//!
//! Differences, on purpose: the paper asks for ten ideas per prompt, we ask for one (small ideators write one
//! idea at a time well; `ideas_per_prompt` samples several completions of the same prompt); and while no idea has
//! beaten the baseline yet, exploit prompts would list nothing, so they are built as explore prompts and counted
//! as such.
//!
//! Resume needs no checkpoint: the run store holds every trained group (the database) and the groups sampled for
//! the current epoch (the ideas to avoid); [`EvolutionAgent::restore`] rebuilds both.

mod agent;
mod config;
mod database;
#[cfg(test)]
mod reference_prompts;
mod schedule;

pub use agent::{EvolutionAgent, Restored};
pub use config::EvolveConfig;
