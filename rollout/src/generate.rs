//! A frozen ideator as the learners that do not train it see it: render a conversation into token ids, say how
//! many prompt tokens the context allows, and sample completions. Evolutionary search and evaluations use it;
//! tests put a stand-in behind the same trait.

use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::{AdapterMode, ChatMessage, Decoder, Tokenizer};

use crate::pipeline::SampledIdea;
use crate::{Result, RolloutError};

pub trait IdeaGenerator {
    /// The conversation (system and user turns, then the generation prompt) as token ids.
    fn encode(&self, system: &str, user: &str) -> Result<Vec<u32>>;
    /// Most tokens a prompt may have: the model's context minus the tokens sampled after it.
    fn prompt_budget(&self) -> usize;
    /// `n` completions of one prompt, deterministic in `seed`.
    fn generate(&mut self, prompt_ids: &[u32], n: usize, seed: u64) -> Result<Vec<SampledIdea>>;
    /// Temperature of the distribution the completions' log-probs come from.
    fn temperature(&self) -> f64;
}

/// A language model with its tokenizer and sampling settings.
pub struct ModelGenerator<'a> {
    pub decoder: &'a Decoder,
    pub tokenizer: &'a Tokenizer,
    pub params: SamplingParams,
    pub mode: AdapterMode,
}

impl IdeaGenerator for ModelGenerator<'_> {
    fn encode(&self, system: &str, user: &str) -> Result<Vec<u32>> {
        let messages = [ChatMessage::system(system), ChatMessage::user(user)];
        Ok(self.tokenizer.encode_chat(&messages, true)?)
    }

    fn prompt_budget(&self) -> usize {
        self.decoder.max_positions().saturating_sub(self.params.max_new_tokens)
    }

    fn generate(&mut self, prompt_ids: &[u32], n: usize, seed: u64) -> Result<Vec<SampledIdea>> {
        if prompt_ids.len() > self.prompt_budget() {
            return Err(RolloutError::Config(format!(
                "a prompt of {} tokens with {} new tokens exceeds the model's context of {}",
                prompt_ids.len(),
                self.params.max_new_tokens,
                self.decoder.max_positions()
            )));
        }
        let params = SamplingParams { seed, ..self.params.clone() };
        let completions = sample(self.decoder, self.tokenizer, &[prompt_ids.to_vec()], n, &params, self.mode, None)?;
        Ok(completions.into_iter().map(SampledIdea::from).collect())
    }

    fn temperature(&self) -> f64 {
        self.params.logprob_temperature()
    }
}
