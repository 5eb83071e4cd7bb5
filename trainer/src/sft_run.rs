//! The supervised warm-up as a run: chat examples from JSONL, epochs of shuffled batches, held-out loss,
//! metrics and checkpoints in a run folder, exact resume.

use std::path::{Path, PathBuf};

use ideator_checkpoints::{BaseModel, Checkpoint, RetentionPolicy};
use ideator_model::{ChatMessage, Tokenizer};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::grpo::LearnerState;
use crate::run_dir::{truncate_metrics, RunDir};
use crate::sft::{SftExample, SftLearner};
use crate::{Result, TrainerError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftRunConfig {
    /// Chat JSONL: one `{"messages": [{"role": ..., "content": ...}, ...]}` per line; the last message is the
    /// assistant turn that is learned.
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub micro_batch: usize,
    /// Share of examples held out to measure the loss (at least one example when > 0).
    pub eval_fraction: f64,
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    pub retention: RetentionPolicy,
}

impl Default for SftRunConfig {
    fn default() -> Self {
        SftRunConfig {
            data: PathBuf::new(),
            epochs: 1,
            batch_size: 8,
            micro_batch: 4,
            eval_fraction: 0.1,
            seed: 0,
            checkpoint_every: 50,
            retention: RetentionPolicy::default(),
        }
    }
}

impl SftRunConfig {
    pub fn validate(&self) -> Result<()> {
        if self.data.as_os_str().is_empty() {
            return Err(TrainerError::Config("sft.data must name a chat JSONL file".into()));
        }
        if self.epochs == 0 || self.batch_size == 0 || self.micro_batch == 0 || self.checkpoint_every == 0 {
            return Err(TrainerError::Config(
                "sft.epochs, sft.batch_size, sft.micro_batch and sft.checkpoint_every must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(TrainerError::Config("sft.eval_fraction must be in [0, 1)".into()));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct ChatLine {
    messages: Vec<ChatMessage>,
}

/// One chat example as read from JSONL and checked: at least one message before a final assistant turn.
pub struct ChatExample {
    messages: Vec<ChatMessage>,
}

/// Reads and checks chat JSONL without a tokenizer, so that bad data is refused before a run folder is created
/// or a model loaded. Errors name the file and line.
pub fn read_chat_jsonl(path: &Path) -> Result<Vec<ChatExample>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainerError::Data(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let where_ = || format!("{}:{}", path.display(), i + 1);
        let chat: ChatLine = serde_json::from_str(line)
            .map_err(|e| TrainerError::Data(format!("{}: not a chat example ({e})", where_())))?;
        let valid =
            chat.messages.split_last().is_some_and(|(last, context)| last.role == "assistant" && !context.is_empty());
        if !valid {
            return Err(TrainerError::Data(format!(
                "{}: the last message must be an assistant turn after at least one other message",
                where_()
            )));
        }
        out.push(ChatExample { messages: chat.messages });
    }
    if out.is_empty() {
        return Err(TrainerError::Data(format!("{} holds no examples", path.display())));
    }
    Ok(out)
}

/// Chat examples as (prompt, completion) token ids: the prompt is every message but the last, rendered with the
/// chat template and a generation prompt; the completion is the last (assistant) message followed by the
/// end-of-turn token, so the model also learns to stop.
pub fn tokenize_chats(chats: &[ChatExample], tokenizer: &Tokenizer) -> Result<Vec<SftExample>> {
    let end = *tokenizer
        .eos_ids()
        .first()
        .ok_or_else(|| TrainerError::Data("the tokenizer has no end-of-sequence token".into()))?;
    let mut out = Vec::with_capacity(chats.len());
    for chat in chats {
        // read_chat_jsonl guarantees a final assistant turn after at least one message.
        let Some((last, context)) = chat.messages.split_last() else { continue };
        let prompt_ids = tokenizer.encode_chat(context, true)?;
        let mut completion_ids = tokenizer.encode(&last.content, false)?;
        completion_ids.push(end);
        out.push(SftExample { prompt_ids, completion_ids });
    }
    Ok(out)
}

/// Reads chat JSONL into (prompt, completion) token ids ([`read_chat_jsonl`], then [`tokenize_chats`]).
pub fn load_chat_jsonl(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<SftExample>> {
    tokenize_chats(&read_chat_jsonl(path)?, tokenizer)
}

/// Deterministic split into (train, held-out).
pub fn split_examples(mut all: Vec<SftExample>, eval_fraction: f64, seed: u64) -> (Vec<SftExample>, Vec<SftExample>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5f7);
    all.shuffle(&mut rng);
    let n_eval = if eval_fraction > 0.0 { ((all.len() as f64 * eval_fraction).round() as usize).max(1) } else { 0 };
    let n_eval = n_eval.min(all.len().saturating_sub(1));
    let eval = all.split_off(all.len() - n_eval);
    (all, eval)
}

/// The batches of one epoch: a seeded permutation, so a resumed run sees the same order.
pub(crate) fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64 * 0x9E37_79B9));
    idx.shuffle(&mut rng);
    idx.chunks(batch_size).map(|c| c.to_vec()).collect()
}

pub fn total_steps(n_train: usize, cfg: &SftRunConfig) -> u64 {
    (n_train.div_ceil(cfg.batch_size) * cfg.epochs) as u64
}

/// What a run needs besides the learner: where to write, and the identity for checkpoints.
pub struct SftRunContext<'a> {
    pub run_dir: &'a RunDir,
    pub base_model: BaseModel,
    pub config_text: String,
    /// Called after each step with (step, total, loss).
    pub on_step: &'a dyn Fn(u64, u64, f64),
}

/// Trains over the epochs, resuming from the newest checkpoint in the run folder if there is one.
pub fn run_sft(
    learner: &mut SftLearner,
    train: &[SftExample],
    eval: &[SftExample],
    cfg: &SftRunConfig,
    ctx: &SftRunContext,
) -> Result<serde_json::Value> {
    let checkpoints = ctx.run_dir.checkpoints();
    if let Some(latest) = ideator_checkpoints::latest(&checkpoints)? {
        let c = ideator_checkpoints::load(&latest.path, Some(&ctx.base_model))?;
        let state: LearnerState = serde_json::from_value(c.trainer_state.clone())
            .map_err(|e| TrainerError::Data(format!("checkpoint trainer state: {e}")))?;
        learner.restore(&c.weights, &c.optimizer, &state)?;
        truncate_metrics(&ctx.run_dir.metrics_path(), state.step)?;
        tracing::info!("resumed from {} (step {})", latest.path.display(), state.step);
    }
    let mut metrics = ctx.run_dir.metrics()?;
    let total = total_steps(train.len(), cfg);
    let resumed_at = learner.step();
    let eval_before = if eval.is_empty() || resumed_at == total { None } else { Some(learner.eval_loss(eval)?) };
    let mut step_in_run = 0u64;
    let mut last_eval = eval_before;
    for epoch in 0..cfg.epochs {
        for batch in epoch_batches(train.len(), cfg.batch_size, cfg.seed, epoch) {
            if step_in_run < learner.step() {
                step_in_run += 1;
                continue; // done before the resume
            }
            let examples: Vec<SftExample> = batch.iter().map(|&i| train[i].clone()).collect();
            let s = learner.train_step(&examples)?;
            step_in_run += 1;
            let mut record = serde_json::to_value(&s).expect("stats serialise");
            record["epoch"] = epoch.into();
            let at_checkpoint = learner.step().is_multiple_of(cfg.checkpoint_every) || learner.step() == total;
            if at_checkpoint && !eval.is_empty() {
                let l = learner.eval_loss(eval)?;
                record["eval_loss"] = l.into();
                last_eval = Some(l);
            }
            metrics.write(&record)?;
            (ctx.on_step)(learner.step(), total, s.loss);
            if at_checkpoint {
                let (weights, optimizer, state) = learner.export();
                ideator_checkpoints::save(
                    &checkpoints,
                    &Checkpoint {
                        step: state.step,
                        weights_kind: learner.policy().weights_kind(),
                        base_model: ctx.base_model.clone(),
                        weights,
                        optimizer,
                        trainer_state: serde_json::to_value(&state).expect("state serialises"),
                        config_text: ctx.config_text.clone(),
                        score: last_eval.map(|l| -l),
                    },
                )?;
                ideator_checkpoints::prune(&checkpoints, &cfg.retention)?;
            }
        }
    }
    Ok(serde_json::json!({
        "steps": learner.step(),
        "resumed_at_step": resumed_at,
        "train_examples": train.len(),
        "eval_examples": eval.len(),
        "eval_loss_before": eval_before,
        "eval_loss_after": last_eval,
    }))
}
