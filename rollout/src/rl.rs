//! The RL loop: sample groups of ideas from the policy, execute them, update the policy with GRPO, and write
//! metrics, an idea log and checkpoints into the run folder. Every random draw derives from (seed, step, index),
//! so a run resumed from a checkpoint replays exactly what a straight run would have done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ideator_checkpoints::{BaseModel, Checkpoint, RetentionPolicy};
use ideator_envs::{ExecResult, Status};
use ideator_model::sampler::{sample, Completion, SamplingParams};
use ideator_model::Tokenizer;
use ideator_trainer::grpo::LearnerState;
use ideator_trainer::run_dir::{truncate_metrics, RunDir};
use ideator_trainer::{GrpoLearner, ScoredGroup, ScoredSample};
use serde::{Deserialize, Serialize};

use crate::execute::{IdeaExecutor, IdeaJob};
use crate::{Result, RolloutError};

/// `[rl]`: the loop's own settings (the learner's are `[grpo]` and `[optim]`, the sampler's `[sampling]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// Policy updates in the run.
    pub steps: u64,
    /// Groups (of `grpo.group_size` ideas each) per update.
    pub groups_per_step: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    pub retention: RetentionPolicy,
}

impl Default for RlConfig {
    fn default() -> Self {
        RlConfig { steps: 20, groups_per_step: 1, checkpoint_every: 5, retention: RetentionPolicy::default() }
    }
}

impl RlConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.groups_per_step == 0 || self.checkpoint_every == 0 {
            return Err(RolloutError::Config(
                "rl.steps, rl.groups_per_step and rl.checkpoint_every must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One executed idea, as logged in `ideas.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeaRecord {
    pub step: u64,
    pub group: usize,
    pub sample: usize,
    /// Policy version (update count) that sampled the idea.
    pub policy_version: u64,
    pub text: String,
    pub completion_tokens: usize,
    pub finish_reason: String,
    pub status: Status,
    pub reward: f64,
    pub cause: Option<String>,
    pub message: String,
    pub metrics: BTreeMap<String, f64>,
    pub seconds: f64,
    /// The knobs the idea changes (its category); `None` if it could not be implemented.
    pub category: Option<Vec<String>>,
}

/// What the caller sees after each step; it may add metrics (diagnostics) to the step's record.
pub struct StepReport<'a> {
    pub step: u64,
    pub ideas: &'a [IdeaRecord],
    pub record: &'a serde_json::Value,
}

pub struct RlContext<'a> {
    pub run_dir: &'a RunDir,
    pub base_model: BaseModel,
    pub config_text: String,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// The knobs an idea changes (None when it cannot be implemented): its category for diagnostics.
    pub categorize: &'a dyn Fn(&str) -> Option<Vec<String>>,
    /// Called after each step; returns extra fields for the step's metrics record.
    pub on_step: &'a mut dyn FnMut(&StepReport) -> serde_json::Map<String, serde_json::Value>,
}

/// State beyond the learner's that a checkpoint carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LoopState {
    learner: Option<LearnerState>,
    best_reward: Option<f64>,
    best_idea: Option<String>,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ideas_path(run_dir: &RunDir) -> PathBuf {
    run_dir.root.join("ideas.jsonl")
}

/// Runs the loop from the run folder's newest checkpoint (or from scratch) to `cfg.steps`.
pub fn run_rl(
    learner: &mut GrpoLearner,
    tokenizer: &Tokenizer,
    executor: &mut dyn IdeaExecutor,
    cfg: &RlConfig,
    ctx: &mut RlContext,
) -> Result<serde_json::Value> {
    cfg.validate()?;
    let group_size = learner.config().group_size;
    let checkpoints = ctx.run_dir.checkpoints();
    let mut state = LoopState::default();
    if let Some(latest) = ideator_checkpoints::latest(&checkpoints)? {
        let c = ideator_checkpoints::load(&latest.path, Some(&ctx.base_model))?;
        state = serde_json::from_value(c.trainer_state.clone()).map_err(|e| {
            RolloutError::Config(format!("checkpoint {}: bad trainer state: {e}", latest.path.display()))
        })?;
        let learner_state = state.learner.clone().ok_or_else(|| {
            RolloutError::Config(format!("checkpoint {} has no learner state", latest.path.display()))
        })?;
        learner.restore(&c.weights, &c.optimizer, &learner_state)?;
        // Steps after the checkpoint are redone exactly; drop what they logged before the interruption.
        truncate_metrics(&ctx.run_dir.metrics_path(), learner.step())?;
        truncate_metrics(&ideas_path(ctx.run_dir), learner.step())?;
        tracing::info!("resumed from {} at step {}", latest.path.display(), learner.step());
    }
    let mut metrics = ctx.run_dir.metrics()?;
    let mut ideas_log = open_append(&ideas_path(ctx.run_dir))?;
    while learner.step() < cfg.steps {
        let step = learner.step();
        let t_step = Instant::now();
        // Sample.
        let prompts = vec![ctx.prompt_ids.clone(); cfg.groups_per_step];
        let params = SamplingParams { seed: mix(ctx.seed, step), ..ctx.sampling.clone() };
        let t0 = Instant::now();
        let policy = learner.policy();
        let completions =
            sample(policy.decoder(), tokenizer, &prompts, group_size, &params, policy.sampling_mode(), None)?;
        let sample_seconds = t0.elapsed().as_secs_f64();
        let sampled_tokens: usize = completions.iter().map(|c| c.token_ids.len()).sum();
        // Execute.
        let jobs: Vec<IdeaJob> = completions
            .iter()
            .map(|c| IdeaJob {
                id: format!("s{step:05}-g{}-i{}", c.prompt_index, c.sample_index),
                text: c.text.clone(),
                seed: mix(mix(ctx.seed, step), (c.prompt_index * group_size + c.sample_index) as u64 + 1),
            })
            .collect();
        let t0 = Instant::now();
        let results = executor.run_batch(&jobs);
        let execute_seconds = t0.elapsed().as_secs_f64();
        if results.len() != jobs.len() {
            return Err(RolloutError::Config(format!(
                "executor returned {} results for {} ideas",
                results.len(),
                jobs.len()
            )));
        }
        let records: Vec<IdeaRecord> = completions
            .iter()
            .zip(&results)
            .map(|(c, r)| idea_record(step, c, r, (ctx.categorize)(&c.text)))
            .collect();
        for r in &records {
            writeln!(ideas_log, "{}", serde_json::to_string(r).expect("records serialise"))
                .and_then(|_| ideas_log.flush())
                .map_err(|e| RolloutError::Io { path: ideas_path(ctx.run_dir), message: e.to_string() })?;
            if state.best_reward.is_none_or(|b| r.reward > b) && r.status == Status::Ok {
                state.best_reward = Some(r.reward);
                state.best_idea = Some(r.text.clone());
            }
        }
        // Update.
        let groups = to_groups(
            &ctx.prompt_ids,
            &completions,
            &results,
            cfg.groups_per_step,
            step,
            params.logprob_temperature(),
        );
        let stats = learner.train_step(&groups)?;
        let mut record = serde_json::to_value(&stats).expect("stats serialise");
        let executed = results.iter().filter(|r| r.is_ok()).count();
        record["execution_rate"] = (executed as f64 / results.len() as f64).into();
        record["best_reward_so_far"] = state.best_reward.into();
        record["sample_seconds"] = sample_seconds.into();
        record["execute_seconds"] = execute_seconds.into();
        record["step_seconds"] = t_step.elapsed().as_secs_f64().into();
        record["sampled_tokens_per_s"] = (sampled_tokens as f64 / sample_seconds.max(1e-9)).into();
        record["idea_chars_mean"] =
            (records.iter().map(|r| r.text.chars().count()).sum::<usize>() as f64 / records.len() as f64).into();
        let mut causes = BTreeMap::new();
        for r in &records {
            if let Some(c) = &r.cause {
                *causes.entry(c.clone()).or_insert(0usize) += 1;
            }
        }
        record["failures"] = serde_json::to_value(&causes).expect("map serialises");
        let extra = (ctx.on_step)(&StepReport { step, ideas: &records, record: &record });
        for (k, v) in extra {
            record[k] = v;
        }
        metrics.write(&record)?;
        if learner.step().is_multiple_of(cfg.checkpoint_every) || learner.step() == cfg.steps {
            save_checkpoint(learner, &checkpoints, ctx, &mut state, stats.reward_mean, &cfg.retention)?;
        }
    }
    Ok(serde_json::json!({
        "steps": learner.step(),
        "best_reward": state.best_reward,
        "best_idea": state.best_idea,
        "run_dir": ctx.run_dir.root.display().to_string(),
    }))
}

fn save_checkpoint(
    learner: &GrpoLearner,
    checkpoints: &Path,
    ctx: &RlContext,
    state: &mut LoopState,
    score: f64,
    retention: &RetentionPolicy,
) -> Result<()> {
    let (weights, optimizer, learner_state) = learner.export();
    state.learner = Some(learner_state.clone());
    ideator_checkpoints::save(
        checkpoints,
        &Checkpoint {
            step: learner_state.step,
            weights_kind: learner.policy().weights_kind(),
            base_model: ctx.base_model.clone(),
            weights,
            optimizer,
            trainer_state: serde_json::to_value(&*state).expect("state serialises"),
            config_text: ctx.config_text.clone(),
            score: Some(score),
        },
    )?;
    ideator_checkpoints::prune(checkpoints, retention)?;
    Ok(())
}

fn idea_record(step: u64, c: &Completion, r: &ExecResult, category: Option<Vec<String>>) -> IdeaRecord {
    IdeaRecord {
        step,
        group: c.prompt_index,
        sample: c.sample_index,
        policy_version: step,
        text: c.text.clone(),
        completion_tokens: c.token_ids.len(),
        finish_reason: format!("{:?}", c.finish_reason).to_lowercase(),
        status: r.status,
        reward: r.reward,
        cause: r.cause.map(|c| c.as_str().to_string()),
        message: r.message.clone(),
        metrics: r.metrics.clone(),
        seconds: r.seconds,
        category,
    }
}

fn to_groups(
    prompt: &[u32],
    completions: &[Completion],
    results: &[ExecResult],
    groups: usize,
    version: u64,
    temperature: f64,
) -> Vec<ScoredGroup> {
    (0..groups)
        .map(|g| ScoredGroup {
            prompt_ids: prompt.to_vec(),
            policy_version: version,
            temperature,
            samples: completions
                .iter()
                .zip(results)
                .filter(|(c, _)| c.prompt_index == g)
                .map(|(c, r)| ScoredSample {
                    completion_ids: c.token_ids.clone(),
                    behaviour_logprobs: c.logprobs.clone(),
                    reward: r.reward,
                })
                .collect(),
        })
        .collect()
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| RolloutError::Io { path: path.to_path_buf(), message: e.to_string() })
}
