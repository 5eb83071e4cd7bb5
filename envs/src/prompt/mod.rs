//! Every prompt text of the ideator, in one place: the system turn ([`SYSTEM_PROMPT`]), the environment's ideator
//! prompt (task, knob table, format, one example and the request: [`ideator_prompt`]; [`task_prompt`] without
//! the request), the exploit, explore and fresh prompts of evolutionary search ([`evolution`]), and the example
//! ideas of the supervised warm-up ([`examples()`]). The prompts are built from the environment's schema so that
//! what the ideator is told and what the executor accepts cannot drift apart.
//!
//! Turning a prompt into token ids (the model's chat template) is not here: `ideator_rollout::prompt` and the
//! idea generators do it.

pub mod evolution;
mod examples;

pub use examples::{examples, to_jsonl, ChatExample, Message};

use crate::environment::{EnvError, Environment};

/// The system turn of every ideator conversation.
pub const SYSTEM_PROMPT: &str = "You are an AI research scientist. You propose one concrete, testable experiment at \
a time, explain briefly why it should help, and write its settings in the exact format requested.";

/// The exact idea format, as told to the ideator.
pub(crate) const FORMAT_TEXT: &str = "Answer with exactly one idea in this format:\n\
[Experiment]\n\
One or two sentences: what you change and why it should improve the result.\n\
[Code Changes]\n\
knob = value\n\
(one `knob = value` line per change, TOML syntax: numbers as 3e-4 or 0.1, true/false, strings in double quotes; \
only knobs from the table; knobs you do not mention keep their default)\n\
[End]";

/// The ideator prompt for an environment at a scale: task, knob table, format, one example, and the request.
pub fn ideator_prompt(env: &dyn Environment, scale: &str) -> Result<String, EnvError> {
    Ok(format!("{}\n\nPropose one new idea that should beat the baseline.", task_prompt(env, scale)?))
}

/// The ideator prompt without its final request: task, knob table, format and one example. Evolutionary search
/// appends its own request (ideas to refine or to move away from).
pub fn task_prompt(env: &dyn Environment, scale: &str) -> Result<String, EnvError> {
    env.check_scale(scale)?;
    if let Some(format) = env.idea_format() {
        return Ok(format!(
            "{task}\n\n{format}\n\nExample:\n{example}",
            task = env.description().trim(),
            example = env.example_idea().trim(),
        ));
    }
    let schema = env.schema(scale)?;
    Ok(format!(
        "{task}\n\nYou may change these knobs (defaults are the baseline at scale `{scale}`):\n\n{table}\n{format}\n\n\
         Example:\n{example}",
        task = env.description().trim(),
        table = schema.to_markdown(),
        format = FORMAT_TEXT,
        example = env.example_idea().trim(),
    ))
}
