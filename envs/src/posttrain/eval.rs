//! The fixed evaluation: greedy decoding of every held-out problem and exact match of the parsed answer.
//! The recipe cannot change it: the problems, the decoding (greedy) and the answer length come from the scale.

use super::task::{is_correct, Task};
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::{AdapterMode, Decoder, Tokenizer};

/// Held-out accuracy in [0, 1].
pub(crate) fn held_out_accuracy(
    decoder: &Decoder,
    tokenizer: &Tokenizer,
    task: &Task,
    mode: AdapterMode,
    batch: usize,
) -> ideator_model::Result<f64> {
    let prompts =
        task.eval.iter().map(|p| tokenizer.encode(&p.prompt(), false)).collect::<ideator_model::Result<Vec<_>>>()?;
    let params = SamplingParams {
        temperature: 0.0,
        // The answer, its end-of-sequence token, and one more: a longer answer is wrong anyway.
        max_new_tokens: task.spec.max_answer_chars() + 2,
        batch_size: batch.max(1),
        ..Default::default()
    };
    let out = sample(decoder, tokenizer, &prompts, 1, &params, mode, None)?;
    let correct = out.iter().filter(|c| is_correct(&c.text, &task.eval[c.prompt_index])).count();
    Ok(correct as f64 / task.eval.len().max(1) as f64)
}
