//! One post-training run: the project's GRPO learner, started from the cached base policy, trained on sampled
//! training problems for a fixed budget of sampled completions, then evaluated on the held-out problems.

use super::base::{BasePolicy, PAD_ID};
use super::eval::held_out_accuracy;
use super::task::{reward, RewardKind, Task};
use crate::environment::RunContext;
use crate::result::FailureCause;
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::Tokenizer;
use ideator_trainer::TrainerError;
use ideator_trainer::{GrpoConfig, GrpoLearner, OptimConfig, ScoredGroup, ScoredSample, TrainMode, TrainablePolicy};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// A recipe resolved against a scale: everything the loop needs.
#[derive(Debug, Clone)]
pub struct GrpoPlan {
    pub grpo: GrpoConfig,
    pub optim: OptimConfig,
    pub mode: TrainMode,
    /// Sampled batches (each of `prompts_per_step` groups of `grpo.group_size` completions).
    pub steps: usize,
    pub prompts_per_step: usize,
    /// Optimiser updates on each sampled batch (more than one makes the policy ratio and its clipping act).
    pub updates_per_batch: usize,
    pub sampling: SamplingParams,
    pub reward: RewardKind,
    pub eval_batch: usize,
}

/// What a run measured, or why it failed (with what was measured before).
pub(crate) struct RunOutcome {
    pub accuracy: Option<f64>,
    pub failure: Option<(FailureCause, String)>,
    pub metrics: BTreeMap<String, f64>,
    pub log: String,
}

use ideator_model::seed::mix;

/// Running means of per-step statistics.
#[derive(Default)]
struct Means {
    sums: BTreeMap<&'static str, (f64, usize)>,
}

impl Means {
    fn add(&mut self, key: &'static str, v: f64) {
        let e = self.sums.entry(key).or_default();
        e.0 += v;
        e.1 += 1;
    }

    fn into_metrics(self, prefix: &str, out: &mut BTreeMap<String, f64>) {
        for (k, (s, n)) in self.sums {
            out.insert(format!("{prefix}{k}"), s / n.max(1) as f64);
        }
    }
}

/// Runs GRPO from `base` and evaluates. Trainer and model errors become failures with their causes.
pub(crate) fn train_and_evaluate(
    plan: &GrpoPlan,
    base: BasePolicy,
    task: &Task,
    tokenizer: &Tokenizer,
    ctx: &RunContext,
) -> RunOutcome {
    let mut out = RunOutcome { accuracy: None, failure: None, metrics: BTreeMap::new(), log: String::new() };
    out.metrics.insert("base_accuracy".into(), base.info.accuracy);
    if let Err((cause, msg)) = run(plan, base, task, tokenizer, ctx, &mut out) {
        out.failure = Some((cause, msg));
    }
    out
}

fn trainer_failure(e: TrainerError, step: usize) -> (FailureCause, String) {
    match e {
        TrainerError::NonFinite(what) => {
            (FailureCause::NonFiniteLoss, format!("the GRPO {what} became non-finite at step {step}"))
        }
        other => {
            let msg = other.to_string();
            let cause = if msg.to_lowercase().contains("out of memory") {
                FailureCause::OutOfMemory
            } else {
                FailureCause::RuntimeError
            };
            (cause, format!("GRPO step {step} failed: {}", crate::knobs::clip(&msg, 500)))
        }
    }
}

fn run(
    plan: &GrpoPlan,
    base: BasePolicy,
    task: &Task,
    tokenizer: &Tokenizer,
    ctx: &RunContext,
    out: &mut RunOutcome,
) -> Result<(), (FailureCause, String)> {
    let runtime = |e: &dyn std::fmt::Display| (FailureCause::RuntimeError, format!("{e}"));
    let base_accuracy = base.info.accuracy;
    let policy = TrainablePolicy::new(base.decoder, &plan.mode, plan.grpo.beta > 0.0, mix(ctx.seed, 1), PAD_ID)
        .map_err(|e| runtime(&e))?;
    let total_updates = (plan.steps * plan.updates_per_batch) as u64;
    let max_tokens = plan.sampling.max_new_tokens;
    let mut learner =
        GrpoLearner::new(policy, plan.grpo.clone(), plan.optim.clone(), total_updates, max_tokens, ctx.seed)
            .map_err(|e| (FailureCause::Implementation, format!("the GRPO settings are invalid: {e}")))?;
    // Problems depend on the seed only, so recipes with the same batch shape see the same problems.
    let mut problem_rng = ChaCha8Rng::seed_from_u64(mix(ctx.seed, 0x9b0b));
    let group = plan.grpo.group_size;
    let start = Instant::now();
    let mut sample_seconds = 0.0;
    let mut means = Means::default();
    let mut rewards_by_step = Vec::with_capacity(plan.steps);
    let log_every = (plan.steps / 20).max(1);
    for step in 0..plan.steps {
        if ctx.expired() {
            out.metrics.insert("steps_completed".into(), step as f64);
            out.metrics.insert("steps".into(), plan.steps as f64);
            return Err((
                FailureCause::TimeLimit,
                format!("time limit reached after {step} of {} GRPO steps", plan.steps),
            ));
        }
        let problems: Vec<_> = (0..plan.prompts_per_step).map(|_| task.train_problem(&mut problem_rng)).collect();
        let prompts = problems
            .iter()
            .map(|p| tokenizer.encode(&p.prompt(), false))
            .collect::<ideator_model::Result<Vec<_>>>()
            .map_err(|e| runtime(&e))?;
        let t0 = Instant::now();
        let params = SamplingParams { seed: mix(ctx.seed, 1000 + step as u64), ..plan.sampling.clone() };
        let p = learner.policy();
        let completions = sample(p.decoder(), tokenizer, &prompts, group, &params, p.sampling_mode(), None)
            .map_err(|e| (FailureCause::RuntimeError, format!("sampling at GRPO step {step} failed: {e}")))?;
        sample_seconds += t0.elapsed().as_secs_f64();
        let mut groups: Vec<ScoredGroup> = prompts
            .iter()
            .map(|ids| ScoredGroup {
                prompt_ids: ids.clone(),
                samples: Vec::with_capacity(group),
                policy_version: step as u64,
                temperature: params.logprob_temperature(),
            })
            .collect();
        let mut correct = 0usize;
        for c in completions {
            let problem = &problems[c.prompt_index];
            correct += usize::from(super::task::is_correct(&c.text, problem));
            groups[c.prompt_index].samples.push(ScoredSample {
                reward: reward(plan.reward, &c.text, problem),
                completion_ids: c.token_ids,
                behaviour_logprobs: c.logprobs,
                cluster: None,
            });
        }
        let train_accuracy = correct as f64 / (plan.prompts_per_step * group) as f64;
        rewards_by_step.push(train_accuracy);
        for update in 0..plan.updates_per_batch {
            let stats = learner.train_step(&groups).map_err(|e| trainer_failure(e, step))?;
            if !stats.loss.is_finite() || !stats.grad_norm.is_finite() {
                return Err((
                    FailureCause::NonFiniteLoss,
                    format!("the GRPO loss became {} at step {step}", stats.loss),
                ));
            }
            if update == 0 {
                means.add("frac_reward_zero_std", stats.frac_reward_zero_std);
                means.add("entropy", stats.entropy);
                means.add("completion_len", stats.completion_len_mean);
                means.add("train_reward", stats.reward_mean);
            }
            means.add("kl", stats.kl);
            means.add("grad_norm", stats.grad_norm);
            means.add("clip_low_frac", stats.clip_low_frac);
            means.add("clip_high_frac", stats.clip_high_frac);
            if update == 0 && (step % log_every == 0 || step + 1 == plan.steps) {
                let _ = writeln!(
                    out.log,
                    "step {step:>4}/{}  train_acc {train_accuracy:.3}  reward {:.3}  zero_std {:.2}  loss {:+.4}  kl {:.4}  entropy {:.3}  grad_norm {:.3}  lr {:.2e}  {:.1}s",
                    plan.steps,
                    stats.reward_mean,
                    stats.frac_reward_zero_std,
                    stats.loss,
                    stats.kl,
                    stats.entropy,
                    stats.grad_norm,
                    stats.lr,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let t_eval = Instant::now();
    let p = learner.policy();
    let accuracy = held_out_accuracy(p.decoder(), tokenizer, task, p.sampling_mode(), plan.eval_batch)
        .map_err(|e| (FailureCause::RuntimeError, format!("the evaluation failed: {e}")))?;
    let eval_seconds = t_eval.elapsed().as_secs_f64();
    let _ =
        writeln!(out.log, "held-out accuracy {accuracy:.4} (base {base_accuracy:.4}, {} problems)", task.eval.len());
    let tenth = (rewards_by_step.len() / 10).max(1);
    let avg = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let m = &mut out.metrics;
    means.into_metrics("mean_", m);
    m.insert("accuracy".into(), accuracy);
    m.insert("accuracy_gain".into(), accuracy - base_accuracy);
    m.insert("train_accuracy_first".into(), avg(&rewards_by_step[..tenth.min(rewards_by_step.len())]));
    m.insert("train_accuracy_last".into(), avg(&rewards_by_step[rewards_by_step.len().saturating_sub(tenth)..]));
    m.insert("steps".into(), plan.steps as f64);
    m.insert("updates".into(), total_updates as f64);
    m.insert("completions".into(), (plan.steps * plan.prompts_per_step * group) as f64);
    m.insert("train_seconds".into(), train_seconds);
    m.insert("sample_seconds".into(), sample_seconds);
    m.insert("eval_seconds".into(), eval_seconds);
    out.accuracy = Some(accuracy);
    Ok(())
}
