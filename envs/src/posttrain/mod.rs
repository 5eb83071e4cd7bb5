//! The `posttrain` environment: the project's own GRPO post-trains a small policy on a verifiable task, and the
//! reward is the policy's held-out accuracy afterwards.
//!
//! - Task ([`task`]): integer arithmetic written as text, answers least-significant digit first (`37+45=` ->
//!   `28<eos>`), generated from a fixed seed per scale, with a held-out evaluation set that training never samples.
//! - Base policy ([`base`]): a character-level Llama-style decoder trained once by supervised learning to a middling
//!   accuracy (it learns to carry, then is taught a share of no-carry slips) and cached on disk by its config, so
//!   every recipe starts from the same weights.
//! - Recipe ([`train`]): the knobs configure the project's GRPO learner (`ideator_trainer::GrpoLearner`): advantage
//!   normalisation and baseline, clipping, KL, entropy bonus, aggregation, sampling, optimiser and schedule, LoRA or
//!   full fine-tuning. The budget is a fixed number of sampled completions, so a larger group or batch buys fewer
//!   steps and compute stays comparable across recipes.
//! - Reward ([`eval`]): exact-match accuracy of greedy answers on the held-out problems; the recipe cannot change
//!   the problems, the decoding or the check. On CPU a run is bit-for-bit reproducible for a seed.

pub mod base;
pub mod eval;
pub mod task;
pub mod train;

use crate::environment::{EnvError, Environment, RunContext, ScaleInfo};
use crate::knobs::{Knob, KnobValue, Schema};
use crate::recipe::Recipe;
use crate::result::{ExecResult, FailureCause};
use crate::scale::Scale;
use base::{BaseSpec, PolicyShape};
use ideator_model::sampler::SamplingParams;
use ideator_model::LoraConfig;
use ideator_trainer::config::Baseline;
use ideator_trainer::schedule::{ScheduleConfig, ScheduleKind};
use ideator_trainer::{GrpoConfig, LossAggregation, OptimConfig, TrainMode};
use std::path::PathBuf;
use task::{Op, RewardKind, Task, TaskSpec};
use train::GrpoPlan;

/// What a posttrain scale allows: the task and base policy, the budget of sampled completions and the guards.
#[derive(Debug, Clone)]
pub struct Budget {
    pub base: BaseSpec,
    /// Sampled completions per run (steps = budget / (prompts_per_step x group_size)).
    pub budget_completions: usize,
    /// Most completions in one sampled batch (memory of sampling and of the update).
    pub max_batch_completions: usize,
    pub eval_batch: usize,
}

/// One scale: its name, doc, baseline and this environment's [`Budget`].
pub(crate) type ScaleSpec = Scale<Budget>;

/// The scales, smallest first. Only `tiny` has been run end to end here (2 CPU cores); the others' times are
/// estimates.
pub fn scales() -> Vec<ScaleSpec> {
    use KnobValue::Int as I;
    vec![
        Scale {
            name: "tiny",
            doc: "2-digit addition; 2 layers x width 64 (0.1M parameters); 4096 sampled completions; \
                  a few seconds on one CPU core (plus 15-30 s, once, to train and cache the base)",
            min_steps: 4,
            baseline: vec![],
            budget: Budget {
                base: BaseSpec {
                    task: TaskSpec { digits: 2, ops: vec![Op::Add], eval_problems: 1000, seed: 11 },
                    shape: PolicyShape { hidden: 64, layers: 2, heads: 4, intermediate: 192 },
                    init_seed: 1,
                    data_seed: 2,
                    sft_steps: 800,
                    sft_batch: 64,
                    sft_lr: 3e-3,
                    sft_warmup: 20,
                    clean_steps: 500,
                    slip_rate: 0.6,
                },
                budget_completions: 4096,
                max_batch_completions: 2048,
                eval_batch: 1000,
            },
        },
        Scale {
            name: "small",
            doc: "3-digit addition and subtraction; 4 layers x width 256 (3M parameters); 65536 sampled \
                  completions; estimated minutes on a GPU (not measured)",
            min_steps: 16,
            baseline: vec![("prompts_per_step", I(32)), ("max_new_tokens", I(6))],
            budget: Budget {
                base: BaseSpec {
                    task: TaskSpec { digits: 3, ops: vec![Op::Add, Op::Sub], eval_problems: 2000, seed: 12 },
                    shape: PolicyShape { hidden: 256, layers: 4, heads: 8, intermediate: 768 },
                    init_seed: 1,
                    data_seed: 2,
                    sft_steps: 2000,
                    sft_batch: 256,
                    sft_lr: 1e-3,
                    sft_warmup: 100,
                    clean_steps: 1250,
                    slip_rate: 0.6,
                },
                budget_completions: 65536,
                max_batch_completions: 8192,
                eval_batch: 2000,
            },
        },
        Scale {
            name: "medium",
            doc: "4-digit addition, subtraction and multiplication; 8 layers x width 512 (25M parameters); 524288 \
                  sampled completions; estimated an hour on a GPU (not measured)",
            min_steps: 32,
            baseline: vec![("prompts_per_step", I(64)), ("max_new_tokens", I(10)), ("lr", KnobValue::Float(2e-4))],
            budget: Budget {
                base: BaseSpec {
                    task: TaskSpec { digits: 4, ops: vec![Op::Add, Op::Sub, Op::Mul], eval_problems: 4000, seed: 13 },
                    shape: PolicyShape { hidden: 512, layers: 8, heads: 8, intermediate: 1536 },
                    init_seed: 1,
                    data_seed: 2,
                    sft_steps: 6000,
                    sft_batch: 256,
                    sft_lr: 5e-4,
                    sft_warmup: 300,
                    clean_steps: 4000,
                    slip_rate: 0.6,
                },
                budget_completions: 524_288,
                max_batch_completions: 16384,
                eval_batch: 4000,
            },
        },
    ]
}

const SCHEDULES: [&str; 4] = ["constant", "linear", "cosine", "wsd"];

fn posttrain_schema() -> Schema {
    use KnobValue::{Choice as C, Float as F, Int as I};
    let c = |s: &str| C(s.into());
    Schema::new(vec![
        Knob::float("lr", 1e-7, 1.0, true, 1e-5, "peak learning rate of the GRPO updates (AdamW)")
            .why("the step size decides how far each update moves the policy from what it sampled")
            .suggest(vec![F(3e-6), F(2e-5), F(3e-5), F(1e-4)]),
        Knob::choice("schedule", &SCHEDULES, "constant", "learning-rate shape after warm-up")
            .why("decaying the rate late in the run trades exploration early for stability at the end"),
        Knob::float("warmup_frac", 0.0, 0.9, false, 0.0, "fraction of updates warming up linearly from 0")
            .why("a warm-up keeps the first updates small while the optimiser statistics are poor")
            .suggest(vec![F(0.05), F(0.1), F(0.2)]),
        Knob::float("min_lr_frac", 0.0, 1.0, false, 0.0, "final learning rate as a fraction of the peak")
            .why("the floor decides how much the end of the run still learns")
            .suggest(vec![F(0.1), F(0.3)])
            .applies_when("schedule", vec![c("linear"), c("cosine"), c("wsd")]),
        Knob::float("decay_frac", 0.0, 1.0, false, 0.2, "share of the updates in the final linear decay (wsd)")
            .why("a longer decay anneals more of the run")
            .suggest(vec![F(0.1), F(0.4)])
            .applies_when("schedule", vec![c("wsd")]),
        Knob::int("group_size", 2, 64, 8, "completions sampled per prompt (the group advantages are computed over)")
            .why("bigger groups estimate the baseline better and see more rare successes, but buy fewer steps")
            .suggest(vec![I(4), I(16), I(32)]),
        Knob::int("prompts_per_step", 1, 64, 8, "prompts (groups) per sampled batch")
            .why("more prompts per update lower gradient noise but buy fewer updates under the fixed budget")
            .suggest(vec![I(2), I(4), I(16)]),
        Knob::int(
            "updates_per_batch",
            1,
            4,
            1,
            "optimiser updates on each sampled batch (PPO epochs); with one, the ratio is 1 and never clipped (it is taken at the sampling temperature)",
        )
            .why("reusing samples gets more updates from the budget; the ratio clip then limits how far they go")
            .suggest(vec![I(2), I(4)]),
        Knob::float("temperature", 0.05, 2.0, false, 1.0, "sampling temperature of the training rollouts")
            .why("temperature sets exploration; the ratio is taken against the tempered sampling distribution")
            .suggest(vec![F(0.7), F(0.8), F(1.2)]),
        Knob::float("top_p", 0.05, 1.0, false, 1.0, "nucleus sampling threshold of the rollouts (1 = off)")
            .why("truncating the tail avoids sampling junk but explores less")
            .suggest(vec![F(0.9), F(0.95)]),
        Knob::int("max_new_tokens", 1, 16, 5, "most tokens per sampled completion, the end token included (an answer needs its characters plus one)")
            .why("a short limit cuts long answers, a long one lets wrong completions ramble")
            .suggest(vec![I(3), I(4), I(8)]),
        Knob::choice(
            "loss_aggregation",
            &["sequence_mean", "token_mean", "constant"],
            "sequence_mean",
            "how token losses are averaged: per sequence then over sequences (GRPO), over all tokens (DAPO), or summed over a constant (Dr.GRPO)",
        )
        .why("the aggregation decides how much long and short completions weigh"),
        Knob::bool("scale_rewards", true, "divide advantages by the group's reward std (false = Dr.GRPO)")
            .why("std scaling up-weights groups that are almost all right or all wrong"),
        Knob::choice(
            "baseline",
            &["group_mean", "leave_one_out"],
            "group_mean",
            "what is subtracted from a reward: the group mean or the mean of the other samples (RLOO)",
        )
        .why("a leave-one-out baseline is unbiased and gives larger advantages in small groups"),
        Knob::float("clip_low", 0.0, 0.99, false, 0.2, "lower ratio clip: rho is clipped below at 1 - clip_low")
            .why("clipping bounds how far reused samples can push a token's probability down")
            .suggest(vec![F(0.1), F(0.3)])
            .applies_when("updates_per_batch", vec![I(2), I(3), I(4)]),
        Knob::float("clip_high", 0.01, 10.0, false, 0.2, "upper ratio clip: rho is clipped above at 1 + clip_high")
            .why("a higher upper clip (DAPO's clip-higher) lets rare good tokens grow faster")
            .suggest(vec![F(0.28), F(0.5)])
            .applies_when("updates_per_batch", vec![I(2), I(3), I(4)]),
        Knob::float("beta", 0.0, 1.0, false, 0.04, "coefficient of the KL penalty to the base policy (0 = none)")
            .why("the KL term keeps the policy near the base, trading reward for stability")
            .suggest(vec![F(0.0), F(0.01), F(0.1)]),
        Knob::float("entropy_coef", 0.0, 0.1, false, 0.0, "coefficient of the entropy bonus (0 = off)")
            .why("an entropy bonus keeps the policy exploring instead of collapsing early")
            .suggest(vec![F(1e-3), F(0.01)]),
        Knob::choice(
            "reward",
            &["exact", "digits"],
            "exact",
            "training reward: exact match (1/0), or the share of answer characters right (partial credit); evaluation is always exact match",
        )
        .why("partial credit gives a signal on near misses when whole answers are rarely right"),
        Knob::float("grad_clip", 0.0, 100.0, false, 1.0, "clip the global gradient norm to this value (0 = off)")
            .why("clipping protects against a few large advantages blowing up one update")
            .suggest(vec![F(0.0), F(0.5), F(5.0)]),
        Knob::float("weight_decay", 0.0, 1.0, false, 0.0, "decoupled AdamW weight decay")
            .why("decay pulls weights toward zero, a crude regulariser in fine-tuning")
            .suggest(vec![F(0.01), F(0.1)]),
        Knob::float("adam_beta2", 0.5, 0.9999, false, 0.999, "second-moment decay of AdamW")
            .why("a shorter second-moment memory adapts faster to the changing RL gradients")
            .suggest(vec![F(0.95), F(0.99)]),
        Knob::choice("train_mode", &["full", "lora"], "full", "fine-tune every weight, or LoRA adapters on every projection")
            .why("LoRA changes fewer parameters, a built-in regulariser that usually wants a higher learning rate"),
        Knob::int("lora_rank", 1, 64, 8, "rank of the LoRA adapters (alpha = 2 x rank)")
            .why("the rank bounds how much the adapters can change")
            .suggest(vec![I(4), I(16), I(32)])
            .applies_when("train_mode", vec![c("lora")]),
        Knob::int("micro_batch", 1, 256, 16, "completions per forward/backward pass (memory; the update is the same up to rounding)")
            .why("larger micro-batches use the hardware better at the cost of memory")
            .suggest(vec![I(4), I(64)]),
    ])
}

/// The posttrain environment. Caches base policies in `base::cache_dir` unless told otherwise.
pub struct Posttrain {
    cache_dir: PathBuf,
}

impl Default for Posttrain {
    fn default() -> Self {
        Posttrain::new()
    }
}

impl Posttrain {
    pub fn new() -> Posttrain {
        Posttrain { cache_dir: base::cache_dir() }
    }

    /// Caches base policies in `dir` (tests use a fresh folder).
    pub fn with_cache_dir(dir: impl Into<PathBuf>) -> Posttrain {
        Posttrain { cache_dir: dir.into() }
    }

    pub(crate) fn scale_spec(&self, scale: &str) -> Result<ScaleSpec, EnvError> {
        crate::scale::find(self, scales(), scale)
    }

    /// Resolves a recipe into a run plan at a scale, or an out-of-budget / out-of-memory failure.
    pub fn plan(&self, r: &Recipe, spec: &ScaleSpec) -> Result<GrpoPlan, (FailureCause, String)> {
        let group = r.i("group_size") as usize;
        let prompts = r.i("prompts_per_step") as usize;
        let per_step = group * prompts;
        if per_step > spec.budget.max_batch_completions {
            return Err((
                FailureCause::OutOfMemory,
                format!(
                    "group_size x prompts_per_step = {per_step} completions per batch; scale {} allows at most {}",
                    spec.name, spec.budget.max_batch_completions
                ),
            ));
        }
        let steps = spec.budget.budget_completions / per_step;
        if steps < spec.min_steps {
            return Err((
                FailureCause::OutOfBudget,
                format!(
                    "the budget of {} completions buys only {steps} batches of {per_step}; at least {} are needed \
                     (use a smaller group_size or prompts_per_step)",
                    spec.budget.budget_completions, spec.min_steps
                ),
            ));
        }
        let updates = steps * r.i("updates_per_batch") as usize;
        let kind = match r.s("schedule") {
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            "wsd" => ScheduleKind::Wsd,
            _ => ScheduleKind::Constant,
        };
        let grad_clip = r.f("grad_clip");
        let rank = r.i("lora_rank") as usize;
        Ok(GrpoPlan {
            grpo: GrpoConfig {
                group_size: group,
                scale_rewards: r.b("scale_rewards"),
                baseline: if r.s("baseline") == "leave_one_out" {
                    Baseline::LeaveOneOut
                } else {
                    Baseline::GroupMean
                },
                clip_low: r.f("clip_low"),
                clip_high: r.f("clip_high"),
                beta: r.f("beta"),
                entropy_coef: r.f("entropy_coef"),
                loss_aggregation: match r.s("loss_aggregation") {
                    "token_mean" => LossAggregation::TokenMean,
                    "constant" => LossAggregation::Constant,
                    _ => LossAggregation::SequenceMean,
                },
                micro_batch: r.i("micro_batch") as usize,
                ..Default::default()
            },
            optim: OptimConfig {
                lr: r.f("lr"),
                weight_decay: r.f("weight_decay"),
                beta1: 0.9,
                beta2: r.f("adam_beta2"),
                eps: 1e-8,
                grad_clip: (grad_clip > 0.0).then_some(grad_clip),
                schedule: ScheduleConfig {
                    kind,
                    warmup_steps: (r.f("warmup_frac") * updates as f64).round() as u64,
                    min_lr_ratio: r.f("min_lr_frac"),
                    decay_fraction: r.f("decay_frac"),
                },
            },
            mode: if r.s("train_mode") == "lora" {
                TrainMode::Lora { lora: LoraConfig { rank, alpha: 2.0 * rank as f64, ..Default::default() } }
            } else {
                TrainMode::Full
            },
            steps,
            prompts_per_step: prompts,
            updates_per_batch: r.i("updates_per_batch") as usize,
            sampling: SamplingParams {
                temperature: r.f("temperature"),
                top_p: r.f("top_p"),
                max_new_tokens: r.i("max_new_tokens") as usize,
                batch_size: per_step,
                ..Default::default()
            },
            reward: if r.s("reward") == "digits" { RewardKind::Digits } else { RewardKind::Exact },
            eval_batch: spec.budget.eval_batch,
        })
    }
}

impl Environment for Posttrain {
    fn name(&self) -> &str {
        "posttrain"
    }

    fn description(&self) -> String {
        "Task: post-train a small language model with reinforcement learning (GRPO) so that it answers arithmetic \
         problems correctly. The model reads a problem such as `37+45=` character by character and writes the \
         answer least-significant digit first (`28` states 82). It starts from a fixed base model that was trained \
         by supervised learning and is right on part of the problems. The recipe controls the GRPO training: group size, advantage normalisation and \
         baseline, ratio clipping, KL penalty, entropy bonus, loss aggregation, sampling temperature, learning rate \
         and schedule, LoRA or full fine-tuning. The budget is a fixed number of sampled completions, so larger \
         groups or batches buy fewer updates. The reward is the accuracy (exact match, greedy decoding) on held-out \
         problems never used in training; the evaluation cannot be changed. Propose changes to the GRPO recipe that \
         raise the held-out accuracy within the budget."
            .into()
    }

    fn scales(&self) -> Vec<ScaleInfo> {
        scales().iter().map(Scale::info).collect()
    }

    fn schema(&self, scale: &str) -> Result<Schema, EnvError> {
        let spec = self.scale_spec(scale)?;
        Ok(posttrain_schema().with_defaults(&spec.baseline))
    }

    fn plausible_reward(&self, _scale: &str) -> (f64, f64) {
        (0.0, 1.0)
    }

    fn check_conflicts(&self, r: &Recipe, _scale: &str) -> Result<(), String> {
        let warmup = r.f("warmup_frac");
        if r.s("schedule") == "wsd" && warmup + r.f("decay_frac") > 1.0 {
            return Err(format!(
                "warmup_frac + decay_frac = {} exceeds 1: warm-up and decay overlap",
                warmup + r.f("decay_frac")
            ));
        }
        Ok(())
    }

    fn example_idea(&self) -> String {
        "[Experiment]\nUse Dr.GRPO's unbiased objective: do not divide advantages by the group's reward std, and \
         sum token losses over a constant instead of averaging per sequence, so no group or length is over-weighted.\n\
         [Code Changes]\nscale_rewards = false\nloss_aggregation = \"constant\"\n[End]"
            .into()
    }

    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> ExecResult {
        let spec = match self.scale_spec(&ctx.scale) {
            Ok(s) => s,
            Err(e) => return ExecResult::failed(FailureCause::Infrastructure, e.to_string()),
        };
        let plan = match self.plan(recipe, &spec) {
            Ok(p) => p,
            Err((cause, msg)) => return ExecResult::failed(cause, msg),
        };
        let task = match Task::new(spec.budget.base.task.clone()) {
            Ok(t) => t,
            Err(e) => {
                return ExecResult::failed(
                    FailureCause::Infrastructure,
                    format!("bad task of scale {}: {e}", spec.name),
                )
            }
        };
        let tokenizer = match ideator_model::tiny::char_tokenizer_for(task::ALPHABET) {
            Ok(t) => t,
            Err(e) => {
                return ExecResult::failed(FailureCause::Infrastructure, format!("cannot build the tokenizer: {e}"))
            }
        };
        let mut log = String::new();
        let base = match base::load_or_train(
            &spec.budget.base,
            &self.cache_dir,
            &task,
            &tokenizer,
            spec.budget.eval_batch,
            ctx,
            &mut log,
        ) {
            Ok(b) => b,
            Err((cause, msg)) => return ExecResult::failed(cause, msg).with_log(log),
        };
        let from_cache = base.from_cache;
        let base_seconds = base.info.train_seconds;
        let out = train::train_and_evaluate(&plan, base, &task, &tokenizer, ctx);
        let mut metrics = out.metrics;
        metrics.insert("base_from_cache".into(), f64::from(u8::from(from_cache)));
        if !from_cache {
            metrics.insert("base_train_seconds".into(), base_seconds);
        }
        log.push_str(&out.log);
        let result = match (out.failure, out.accuracy) {
            (Some((cause, msg)), _) => ExecResult::failed(cause, msg),
            (None, Some(acc)) => ExecResult::ok(
                acc,
                Default::default(),
                format!(
                    "held-out accuracy {acc:.4} (base {:.4}) at scale {}",
                    metrics.get("base_accuracy").copied().unwrap_or(f64::NAN),
                    spec.name
                ),
            ),
            (None, None) => ExecResult::failed(FailureCause::RuntimeError, "the run produced no accuracy"),
        };
        result.with_metrics(metrics).with_log(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::implement;

    fn recipe(changes: &str) -> Result<Recipe, String> {
        implement(&Posttrain::new(), &format!("[Experiment]\nx\n[Code Changes]\n{changes}\n[End]"), "tiny")
            .map_err(|e| e.reason)
    }

    #[test]
    fn schemas_are_coherent_at_every_scale_and_the_example_implements() {
        let env = Posttrain::new();
        for s in env.scales() {
            env.schema(&s.name).unwrap().validate().unwrap();
            let spec = env.scale_spec(&s.name).unwrap();
            Task::new(spec.budget.base.task.clone()).unwrap();
            // The baseline fits the budget, and its completions can hold every answer and its end token.
            let plan = env.plan(&env.baseline(&s.name).unwrap(), &spec).unwrap();
            assert!(plan.steps >= spec.min_steps);
            assert!(plan.sampling.max_new_tokens > spec.budget.base.task.max_answer_chars(), "{}", s.name);
        }
        implement(&env, &env.example_idea(), "tiny").unwrap();
    }

    #[test]
    fn the_budget_fixes_completions_so_bigger_groups_buy_fewer_steps() {
        let env = Posttrain::new();
        let spec = env.scale_spec("tiny").unwrap();
        let steps = |changes: &str| env.plan(&recipe(changes).unwrap(), &spec).map(|p| p.steps);
        assert_eq!(steps("lr = 1e-5"), Ok(spec.budget.budget_completions / 64));
        assert_eq!(steps("group_size = 16"), Ok(spec.budget.budget_completions / 128));
        assert_eq!(steps("group_size = 64\nprompts_per_step = 32").unwrap_err().0, FailureCause::OutOfBudget);
        assert_eq!(steps("group_size = 64\nprompts_per_step = 64").unwrap_err().0, FailureCause::OutOfMemory);
        let plan = env.plan(&recipe("updates_per_batch = 2\nwarmup_frac = 0.25").unwrap(), &spec).unwrap();
        assert_eq!(plan.optim.schedule.warmup_steps, (plan.steps * 2 / 4) as u64);
    }

    #[test]
    fn conflicts_are_explained() {
        let clip = recipe("clip_high = 0.28").unwrap_err();
        assert!(clip.contains("only has an effect with updates_per_batch"), "{clip}");
        recipe("clip_high = 0.28\nupdates_per_batch = 2").unwrap();
        let rank = recipe("lora_rank = 16").unwrap_err();
        assert!(rank.contains("train_mode"), "{rank}");
        recipe("train_mode = \"lora\"\nlora_rank = 16").unwrap();
        let wsd = recipe("schedule = \"wsd\"\nwarmup_frac = 0.5\ndecay_frac = 0.6").unwrap_err();
        assert!(wsd.contains("overlap"), "{wsd}");
        let typo = recipe("learning_rate = 1e-4").unwrap_err();
        assert!(typo.contains("did you mean `lr`"), "{typo}");
    }

    #[test]
    fn warm_up_examples_are_varied_and_cover_the_recipe() {
        let env = Posttrain::new();
        let ex = crate::prompt::examples(&env, "tiny", 40, 3).unwrap();
        let mut knobs = std::collections::BTreeSet::new();
        for e in &ex {
            knobs.extend(implement(&env, e.idea(), "tiny").unwrap().changed);
        }
        assert!(knobs.len() >= 18, "only {} knobs used: {knobs:?}", knobs.len());
        let prompt = crate::prompt::ideator_prompt(&env, "tiny").unwrap();
        for knob in env.schema("tiny").unwrap().knobs {
            assert!(prompt.contains(&format!("`{}`", knob.name)), "prompt lacks {}", knob.name);
        }
    }
}
