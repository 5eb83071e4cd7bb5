//! The ideator's prompt for an environment, as token ids ready for sampling: tokenisation with the model's chat
//! template and the check against its context. The prompt's text is written in `ideator_envs::prompt`.

use ideator_envs::prompt::{ideator_prompt, SYSTEM_PROMPT};
use ideator_envs::Environment;
use ideator_model::{ChatMessage, Tokenizer};

use crate::{Result, RolloutError};

/// System + user turns rendered with the model's chat template (with the generation prompt), tokenised.
/// Fails if the prompt plus `max_new_tokens` does not fit the model's context.
pub fn prompt_ids(
    env: &dyn Environment,
    scale: &str,
    tokenizer: &Tokenizer,
    max_new_tokens: usize,
    context: usize,
) -> Result<Vec<u32>> {
    let user = ideator_prompt(env, scale)?;
    let messages = [
        ChatMessage { role: "system".into(), content: SYSTEM_PROMPT.into() },
        ChatMessage { role: "user".into(), content: user },
    ];
    let ids = tokenizer.encode_chat(&messages, true)?;
    if ids.len() + max_new_tokens > context {
        return Err(RolloutError::Config(format!(
            "the {} prompt has {} tokens; with {max_new_tokens} new tokens it exceeds the model's context of {context}",
            env.name(),
            ids.len()
        )));
    }
    Ok(ids)
}
