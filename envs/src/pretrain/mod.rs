//! The `pretrain` environment: a byte-level GPT trained from scratch on the Brown corpus under a fixed FLOP
//! budget; reward = 1 / validation loss (nats per byte) on a fixed held-out set.
//!
//! The budget fixes compute, not steps: a bigger model or batch buys fewer steps. FLOPs are counted
//! analytically (6 per matmul parameter per token plus attention), so the number of steps, and hence the result,
//! is the same on every machine; on CPU the run is bit-for-bit reproducible for a seed.

pub mod corpus;
mod cross_entropy;
pub mod fused;
pub mod gpt;
mod lanes;
mod mlp;
pub mod optim;
pub mod shards;
pub mod train;

use crate::environment::{CpuParallelism, EnvError, Environment, RunContext, ScaleInfo};
use crate::knobs::{Knob, KnobValue, Schema};
use crate::recipe::Recipe;
use crate::result::{ExecResult, FailureCause};
use crate::scale::Scale;
use gpt::{Activation, GptConfig, NormKind, Positions};
use ideator_trainer::schedule::{Schedule, Shape};
use optim::{OptimConfig, OptimizerKind};
use std::path::PathBuf;
use train::{EvalSpec, TrainPlan};

/// What a pretrain scale allows: its FLOP budget, its evaluation and its guards.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Training FLOPs per run (as counted by `GptConfig::train_flops_per_token`).
    pub budget_flops: f64,
    pub eval: EvalSpec,
    /// Largest model (parameters) and activation memory (bytes, estimated) allowed at this scale.
    pub max_params: usize,
    pub max_activation_bytes: f64,
    /// The lowest validation loss (nats/byte) a model of this scale could plausibly reach; lower is suspect.
    pub min_plausible_loss: f64,
}

/// One scale: its name, doc, baseline and this environment's [`Budget`].
pub(crate) type ScaleSpec = Scale<Budget>;

/// The scales, smallest first.
pub fn scales() -> Vec<ScaleSpec> {
    use KnobValue::{Float as F, Int as I};
    vec![
        Scale {
            name: "tiny",
            doc: "4 layers, width 128, 8 x 128 bytes per step; 6e11 FLOPs (about 100 steps); 10-20 s on one CPU core",
            min_steps: 10,
            baseline: vec![],
            budget: Budget {
                budget_flops: 6e11,
                eval: EvalSpec { ctx: 128, windows: 128, batch: 8 },
                max_params: 20_000_000,
                max_activation_bytes: 2e9,
                min_plausible_loss: 1.0,
            },
        },
        Scale {
            name: "small",
            doc: "6 layers, width 384, 32 x 256 bytes per step; 1e15 FLOPs (about 1700 steps); minutes on a GPU",
            min_steps: 50,
            baseline: vec![
                ("n_layer", I(6)),
                ("d_model", I(384)),
                ("n_head", I(6)),
                ("batch_size", I(32)),
                ("seq_len", I(256)),
                ("lr", F(1e-3)),
            ],
            budget: Budget {
                budget_flops: 1e15,
                eval: EvalSpec { ctx: 256, windows: 512, batch: 64 },
                max_params: 200_000_000,
                max_activation_bytes: 40e9,
                min_plausible_loss: 0.8,
            },
        },
        Scale {
            name: "paper",
            doc: "GPT-2 124M shape (12 layers, width 768, 12 heads) on bytes, 16 x 1024 bytes per step; 2e16 FLOPs (about 2000 steps, 6 passes over the corpus); a large GPU",
            min_steps: 100,
            baseline: vec![
                ("n_layer", I(12)),
                ("d_model", I(768)),
                ("n_head", I(12)),
                ("batch_size", I(16)),
                ("seq_len", I(1024)),
                ("lr", F(6e-4)),
            ],
            budget: Budget {
                budget_flops: 2e16,
                eval: EvalSpec { ctx: 1024, windows: 256, batch: 16 },
                max_params: 1_500_000_000,
                max_activation_bytes: 120e9,
                min_plausible_loss: 0.6,
            },
        },
    ]
}

/// The pretrain environment. Reads the corpus from `ideator_model::assets::brown_dir()` unless told otherwise.
pub struct Pretrain {
    corpus_dir: PathBuf,
}

impl Default for Pretrain {
    fn default() -> Self {
        Pretrain::new()
    }
}

impl Pretrain {
    pub fn new() -> Pretrain {
        Pretrain { corpus_dir: ideator_model::assets::brown_dir() }
    }

    pub fn with_corpus_dir(dir: impl Into<PathBuf>) -> Pretrain {
        Pretrain { corpus_dir: dir.into() }
    }

    fn scale_spec(&self, scale: &str) -> Result<ScaleSpec, EnvError> {
        crate::scale::find(self, scales(), scale)
    }

    /// Training throughput of the scale's baseline recipe for a fixed number of steps (`ideator bench pretrain`);
    /// see `train::training_throughput`. The error says what failed.
    pub fn baseline_throughput(
        &self,
        ctx: &RunContext,
        warmup: usize,
        steps: usize,
    ) -> Result<(TrainPlan, train::Throughput), String> {
        let spec = self.scale_spec(&ctx.scale).map_err(|e| e.to_string())?;
        let recipe = self.baseline(&ctx.scale).map_err(|e| e.to_string())?;
        let plan = self.plan(&recipe, &spec).map_err(|(cause, msg)| format!("{cause}: {msg}"))?;
        let corpus = corpus::load(&self.corpus_dir)?;
        let throughput = train::training_throughput(&plan, &corpus, ctx, warmup, steps)
            .map_err(|e| format!("training at scale {} failed: {e}", ctx.scale))?;
        Ok((plan, throughput))
    }

    /// Resolves a recipe into a training plan at a scale, or an out-of-budget / out-of-memory failure.
    pub fn plan(&self, recipe: &Recipe, spec: &ScaleSpec) -> Result<TrainPlan, (FailureCause, String)> {
        let d = recipe.i("d_model") as usize;
        let activation = match recipe.s("activation") {
            "relu2" => Activation::ReluSquared,
            "swiglu" => Activation::SwiGlu,
            _ => Activation::Gelu,
        };
        // SwiGLU has three matrices instead of two: 2/3 of the hidden width keeps parameters and FLOPs equal.
        let ratio = recipe.f("mlp_ratio") * if activation == Activation::SwiGlu { 2.0 / 3.0 } else { 1.0 };
        let mlp_hidden = ((d as f64 * ratio).round() as usize).max(1);
        let seq_len = recipe.i("seq_len") as usize;
        let batch_size = recipe.i("batch_size") as usize;
        let model = GptConfig {
            n_layer: recipe.i("n_layer") as usize,
            d_model: d,
            n_head: recipe.i("n_head") as usize,
            mlp_hidden,
            max_len: seq_len.max(spec.budget.eval.ctx),
            norm: if recipe.s("norm") == "rmsnorm" { NormKind::RmsNorm } else { NormKind::LayerNorm },
            post_norm: recipe.s("norm_position") == "post",
            qk_norm: recipe.b("qk_norm"),
            activation,
            positions: match recipe.s("pos_encoding") {
                "rope" => Positions::Rope { base: recipe.f("rope_base") },
                _ => Positions::Learned,
            },
            tied_embeddings: recipe.b("tied_embeddings"),
            logit_softcap: Some(recipe.f("logit_softcap")).filter(|c| *c > 0.0),
            init_std: recipe.f("init_std"),
            zero_init_head: recipe.b("zero_init_head"),
        };
        let params = model.total_params();
        if params > spec.budget.max_params {
            return Err((
                FailureCause::OutOfBudget,
                format!(
                    "the model has {params} parameters; scale {} allows at most {}",
                    spec.name, spec.budget.max_params
                ),
            ));
        }
        let activation_bytes = activation_bytes(&model, batch_size, seq_len);
        if activation_bytes > spec.budget.max_activation_bytes {
            return Err((
                FailureCause::OutOfMemory,
                format!(
                    "training activations need about {:.1} GB; scale {} allows {:.1} GB (reduce batch_size, seq_len or the model)",
                    activation_bytes / 1e9,
                    spec.name,
                    spec.budget.max_activation_bytes / 1e9
                ),
            ));
        }
        let kind = match recipe.s("optimizer") {
            "lion" => OptimizerKind::Lion,
            "sgd" => OptimizerKind::Sgd,
            "muon" => OptimizerKind::Muon,
            _ => OptimizerKind::AdamW,
        };
        let flops_per_step = model.train_flops_per_token(seq_len) * (batch_size * seq_len) as f64
            + optimizer_flops_per_step(kind, &model);
        let steps = (spec.budget.budget_flops / flops_per_step).floor() as usize;
        if steps < spec.min_steps {
            return Err((
                FailureCause::OutOfBudget,
                format!(
                    "the budget of {:.2e} FLOPs buys only {steps} steps of {:.2e} FLOPs each; at least {} are needed (use a smaller model or batch)",
                    spec.budget.budget_flops, flops_per_step, spec.min_steps
                ),
            ));
        }
        let warmup_steps = (recipe.f("warmup_frac") * steps as f64).round() as usize;
        let shape = match recipe.s("schedule") {
            "constant" => Shape::Constant,
            "linear" => Shape::Linear,
            "wsd" => Shape::Wsd { cooldown_frac: recipe.f("cooldown_frac") },
            _ => Shape::Cosine,
        };
        let optim = OptimConfig {
            kind,
            beta1: recipe.f("beta1"),
            beta2: recipe.f("beta2"),
            weight_decay: recipe.f("weight_decay"),
            momentum: recipe.f("momentum"),
            eps: 1e-8,
        };
        Ok(TrainPlan {
            model,
            optim,
            lr: recipe.f("lr"),
            muon_lr: recipe.f("muon_lr"),
            schedule: Schedule {
                shape,
                total_steps: steps as u64,
                warmup_steps: warmup_steps.min(steps.saturating_sub(1)) as u64,
                min_frac: recipe.f("min_lr_frac"),
            },
            grad_clip: recipe.f("grad_clip"),
            batch_size,
            seq_len,
            ema_decay: recipe.f("ema_decay"),
            z_loss: recipe.f("z_loss"),
            eval: spec.budget.eval,
            log_every: (steps / 20).max(1),
        })
    }
}

/// The optimiser's own matrix work per step, charged to the FLOP budget so that no optimiser buys compute: Muon's
/// Newton-Schulz iterations on every hidden matrix (about 40% on top of the model's FLOPs at `tiny`, and more
/// with small batches, since it does not shrink with the batch). Element-wise updates (AdamW, Lion, SGD) are a few
/// FLOPs per parameter, below the model count's precision, and are not charged.
pub(crate) fn optimizer_flops_per_step(kind: OptimizerKind, model: &GptConfig) -> f64 {
    match kind {
        OptimizerKind::Muon => {
            model.hidden_matrix_shapes().iter().map(|&(r, c)| optim::newton_schulz_flops(r, c)).sum()
        }
        OptimizerKind::AdamW | OptimizerKind::Lion | OptimizerKind::Sgd => 0.0,
    }
}

/// A rough upper estimate of training activation memory (f32): per layer, the saved inputs of every projection and
/// nonlinearity (about 16 values per token and width, plus the MLP hidden) and the attention matrices
/// (3 saved tensors of batch x heads x t x t).
fn activation_bytes(m: &GptConfig, b: usize, t: usize) -> f64 {
    let tokens = (b * t) as f64;
    let per_layer = tokens * (16 * m.d_model + 4 * m.mlp_hidden) as f64 + 3.0 * (b * m.n_head * t * t) as f64;
    4.0 * (m.n_layer as f64 * per_layer + tokens * 3.0 * gpt::VOCAB as f64)
}

fn pretrain_schema() -> Schema {
    use KnobValue::{Choice as C, Float as F, Int as I};
    let c = |s: &str| C(s.into());
    Schema::new(vec![
        Knob::choice(
            "optimizer",
            &["adamw", "lion", "muon", "sgd"],
            "adamw",
            "update rule; muon orthogonalises hidden matrix updates (AdamW for embeddings and norms)",
        )
        .why("the update rule decides how much progress each step of a fixed budget makes"),
        Knob::float("lr", 1e-5, 1.0, true, 1e-3, "peak learning rate (embeddings, norms and head under muon)")
            .why("under a fixed budget the step size is the first thing to tune")
            .suggest(vec![F(3e-4), F(2e-3), F(3e-3), F(5e-3), F(1e-2)]),
        Knob::float("muon_lr", 1e-4, 1.0, true, 0.02, "peak learning rate of muon's hidden matrices")
            .why("muon's orthogonalised updates have a fixed size, so their rate is tuned separately")
            .suggest(vec![F(0.01), F(0.03), F(0.05)])
            .applies_when("optimizer", vec![c("muon")]),
        Knob::float("momentum", 0.0, 0.999, false, 0.9, "momentum of sgd and muon")
            .why("momentum averages noisy gradients across steps")
            .suggest(vec![F(0.8), F(0.95)])
            .applies_when("optimizer", vec![c("sgd"), c("muon")]),
        Knob::float("beta1", 0.0, 0.999, false, 0.9, "first-moment decay of adamw and lion")
            .why("the gradient memory trades noise averaging against reaction speed in a short run")
            .suggest(vec![F(0.8), F(0.95)])
            .applies_when("optimizer", vec![c("adamw"), c("lion"), c("muon")]),
        Knob::float("beta2", 0.0, 0.9999, false, 0.95, "second-moment decay of adamw (lion: momentum decay)")
            .why("the second-moment horizon trades stability against adaptivity")
            .suggest(vec![F(0.9), F(0.99), F(0.999)])
            .applies_when("optimizer", vec![c("adamw"), c("lion"), c("muon")]),
        Knob::float("weight_decay", 0.0, 1.0, false, 0.1, "decoupled weight decay on matrices (not on norms)")
            .why("weight decay trades regularisation against learning speed in a short run")
            .suggest(vec![F(0.0), F(0.01), F(0.05), F(0.2)]),
        Knob::float("grad_clip", 0.0, 100.0, false, 1.0, "clip the global gradient norm to this value (0: off)")
            .why("clipping protects against loss spikes at high learning rates")
            .suggest(vec![F(0.0), F(0.5), F(2.0)]),
        Knob::choice(
            "schedule",
            &["constant", "cosine", "linear", "wsd"],
            "cosine",
            "learning-rate shape after warm-up; wsd = stable then linear cool-down",
        )
        .why("the decay shape decides how much of the budget runs at the peak rate"),
        Knob::float("warmup_frac", 0.0, 1.0, false, 0.0, "fraction of steps spent warming up linearly from 0")
            .why("a warm-up avoids large early updates while the optimiser statistics are still poor")
            .suggest(vec![F(0.02), F(0.05), F(0.1)]),
        Knob::float("cooldown_frac", 0.0, 1.0, false, 0.2, "fraction of steps of the final linear cool-down")
            .why("a longer cool-down anneals more of the run")
            .suggest(vec![F(0.1), F(0.3), F(0.5)])
            .applies_when("schedule", vec![c("wsd")]),
        Knob::float("min_lr_frac", 0.0, 1.0, false, 0.1, "final learning rate as a fraction of the peak")
            .why("the final learning rate decides how far the end of the run anneals")
            .suggest(vec![F(0.0), F(0.05), F(0.2)])
            .applies_when("schedule", vec![c("cosine"), c("linear"), c("wsd")]),
        Knob::int("batch_size", 1, 1024, 8, "sequences per step (a bigger batch buys fewer steps)")
            .why("the budget is fixed, so batch size trades gradient noise against the number of steps")
            .suggest(vec![I(4), I(12), I(16), I(32)]),
        Knob::int("seq_len", 8, 2048, 128, "training sequence length in bytes (evaluation length is fixed)")
            .why("sequence length trades cheaper tokens against the full context the evaluation uses")
            .suggest(vec![I(64), I(96), I(192)]),
        Knob::int("n_layer", 1, 48, 4, "number of transformer blocks")
            .why("depth against steps: the budget is fixed, so a deeper model trains for fewer steps")
            .suggest(vec![I(2), I(3), I(6)]),
        Knob::int("d_model", 16, 2048, 128, "model width (must be divisible by n_head)")
            .why("width against steps under the fixed budget")
            .suggest(vec![I(64), I(96), I(160), I(192)]),
        Knob::int("n_head", 1, 64, 4, "attention heads")
            .why("more, smaller heads or fewer, larger ones at the same cost")
            .suggest(vec![I(2), I(8)]),
        Knob::float(
            "mlp_ratio",
            0.5,
            8.0,
            false,
            4.0,
            "MLP hidden width as a multiple of d_model (swiglu uses 2/3 of it per branch)",
        )
        .why("the MLP holds most parameters, so its width trades capacity against steps under the budget")
        .suggest(vec![F(2.0), F(3.0), F(6.0)]),
        Knob::choice("norm", &["layernorm", "rmsnorm"], "layernorm", "normalisation layer")
            .why("RMSNorm drops the mean and bias and is cheaper and often as good"),
        Knob::choice(
            "norm_position",
            &["pre", "post"],
            "pre",
            "norm before each sub-layer (pre) or after the residual add (post)",
        )
        .why("the norm's position changes how gradients flow through depth"),
        Knob::bool("qk_norm", false, "RMS-normalise queries and keys per head before attention")
            .why("normalised queries and keys keep attention logits bounded at high learning rates"),
        Knob::choice("activation", &["gelu", "relu2", "swiglu"], "gelu", "MLP nonlinearity (relu2 = squared ReLU)")
            .why("the nonlinearity changes what the MLP can express per parameter"),
        Knob::choice(
            "pos_encoding",
            &["learned", "rope"],
            "learned",
            "learned absolute positions or rotary embeddings",
        )
        .why("rotary embeddings encode relative positions without parameters"),
        Knob::float("rope_base", 10.0, 1e7, true, 10000.0, "RoPE frequency base")
            .why("the base sets which distances the rotary frequencies resolve")
            .suggest(vec![F(500.0), F(1000.0), F(100000.0)])
            .applies_when("pos_encoding", vec![c("rope")]),
        Knob::bool("tied_embeddings", true, "share the input embedding with the output head")
            .why("an untied head adds parameters but decouples input and output representations"),
        Knob::bool("zero_init_head", false, "initialise the (untied) output head to zero")
            .why("a zero head starts from uniform predictions, a trick of the nanoGPT speedrun"),
        Knob::float("init_std", 1e-4, 1.0, true, 0.02, "standard deviation of the initial weights")
            .why("initial scale changes early training speed and stability")
            .suggest(vec![F(0.01), F(0.03), F(0.05)]),
        Knob::float(
            "ema_decay",
            0.0,
            0.9999,
            false,
            0.0,
            "evaluate an exponential moving average of the weights (0: off)",
        )
        .why("averaging recent weights removes part of the optimisation noise")
        .suggest(vec![F(0.9), F(0.95), F(0.99)]),
        Knob::float(
            "z_loss",
            0.0,
            0.1,
            false,
            0.0,
            "coefficient of the z-loss (mean squared log-partition) in training",
        )
        .why("a small z-loss keeps the output logits from drifting")
        .suggest(vec![F(1e-4), F(1e-3)]),
        Knob::float(
            "logit_softcap",
            0.0,
            1000.0,
            false,
            0.0,
            "cap logits smoothly as cap * tanh(logits / cap) (0: off)",
        )
        .why("soft-capping bounds logits without cutting gradients")
        .suggest(vec![F(15.0), F(30.0), F(50.0)]),
    ])
}

impl Environment for Pretrain {
    fn name(&self) -> &str {
        "pretrain"
    }

    fn description(&self) -> String {
        "Task: pre-train a small GPT language model from scratch on English text (the Brown corpus, read as bytes: \
         the vocabulary is the 256 byte values). Training is limited by a fixed compute budget counted in FLOPs \
         (about 6 x parameters x tokens plus attention): a larger model or batch gets fewer steps. The reward is \
         1 / validation loss (cross-entropy in nats per byte) on fixed held-out text; the evaluation cannot be \
         changed. Propose changes to the training recipe that lower the validation loss within the budget."
            .into()
    }

    fn cpu_parallelism(&self) -> CpuParallelism {
        // Its models are small (width 128 at `tiny`): whole micro-batches per thread beat split operations.
        CpuParallelism::AcrossMicroBatches
    }

    fn scales(&self) -> Vec<ScaleInfo> {
        scales().iter().map(Scale::info).collect()
    }

    fn schema(&self, scale: &str) -> Result<Schema, EnvError> {
        let spec = self.scale_spec(scale)?;
        Ok(pretrain_schema().with_defaults(&spec.baseline))
    }

    fn plausible_reward(&self, scale: &str) -> (f64, f64) {
        let min_loss = self.scale_spec(scale).map(|s| s.budget.min_plausible_loss).unwrap_or(0.5);
        (0.0, 1.0 / min_loss)
    }

    fn check_conflicts(&self, r: &Recipe, _scale: &str) -> Result<(), String> {
        let (d, h) = (r.i("d_model"), r.i("n_head"));
        if d % h != 0 {
            return Err(format!("d_model = {d} is not divisible by n_head = {h}"));
        }
        if r.s("pos_encoding") == "rope" && (d / h) % 2 != 0 {
            return Err(format!("rope needs an even head dimension, but d_model / n_head = {}", d / h));
        }
        let warmup = r.f("warmup_frac");
        if warmup >= 1.0 {
            return Err(format!("warmup_frac = {warmup} means the warm-up is as long as the whole run"));
        }
        if r.s("schedule") == "wsd" && warmup + r.f("cooldown_frac") > 1.0 {
            return Err(format!(
                "warmup_frac + cooldown_frac = {} exceeds 1: warm-up and cool-down overlap",
                warmup + r.f("cooldown_frac")
            ));
        }
        if r.b("zero_init_head") && r.b("tied_embeddings") {
            return Err("zero_init_head with tied_embeddings = true would zero the input embeddings too; \
                        set tied_embeddings = false"
                .into());
        }
        Ok(())
    }

    fn example_idea(&self) -> String {
        "[Experiment]\nReplace learned absolute positions with rotary embeddings, which encode relative positions \
         without parameters, and warm up for the first 5% of steps so early updates stay small.\n\
         [Code Changes]\npos_encoding = \"rope\"\nwarmup_frac = 0.05\n[End]"
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
        let corpus = match corpus::load(&self.corpus_dir) {
            Ok(c) => c,
            Err(e) => return ExecResult::failed(FailureCause::Infrastructure, e),
        };
        let out = train::train_and_evaluate(&plan, &corpus, ctx);
        let result = match (out.failure, out.val_loss) {
            (Some((cause, msg)), _) => ExecResult::failed(cause, msg),
            (None, Some(loss)) => {
                ExecResult::ok(1.0 / loss, Default::default(), format!("val_loss {loss:.4} at scale {}", spec.name))
            }
            (None, None) => ExecResult::failed(FailureCause::RuntimeError, "the run produced no validation loss"),
        };
        result.with_metrics(out.metrics).with_log(out.log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::implement;

    fn plan_of(changes: &str, scale: &str) -> TrainPlan {
        let env = Pretrain::new();
        let recipe = implement(&env, &format!("[Experiment]\nx\n[Code Changes]\n{changes}\n[End]"), scale)
            .expect("valid idea");
        let spec = scales().into_iter().find(|s| s.name == scale).unwrap();
        env.plan(&recipe, &spec).expect("within budget")
    }

    /// Newton-Schulz of a 2 x 3 matrix by hand: m = 2, n = 3; per iteration 2*2*2*3 (Gram) + 2*2*2*2 (its square)
    /// + 2*2*2*3 (times x) = 24 + 16 + 24 = 64 FLOPs, five iterations.
    #[test]
    fn newton_schulz_flops_match_a_hand_count() {
        assert_eq!(optim::newton_schulz_flops(2, 3), 320.0);
        assert_eq!(optim::newton_schulz_flops(3, 2), 320.0);
    }

    #[test]
    fn muon_pays_for_its_iterations_out_of_the_same_budget() {
        for scale in ["tiny", "small"] {
            let adamw = plan_of("optimizer = \"adamw\"", scale);
            let muon = plan_of("optimizer = \"muon\"", scale);
            let spec = scales().into_iter().find(|s| s.name == scale).unwrap();
            let tokens_per_step = (adamw.batch_size * adamw.seq_len) as f64;
            let model_flops = adamw.model.train_flops_per_token(adamw.seq_len) * tokens_per_step;
            let ns_flops = optimizer_flops_per_step(OptimizerKind::Muon, &muon.model);
            assert!(ns_flops > 0.1 * model_flops, "{scale}: Newton-Schulz {ns_flops:.3e} vs model {model_flops:.3e}");
            let (sa, sm) = (adamw.schedule.total_steps, muon.schedule.total_steps);
            assert!(sm < sa, "{scale}: muon {sm} steps, adamw {sa}");
            // Both spend the budget and no more.
            assert!(sa as f64 * model_flops <= spec.budget.budget_flops);
            assert!(sm as f64 * (model_flops + ns_flops) <= spec.budget.budget_flops);
            assert!((sm + 1) as f64 * (model_flops + ns_flops) > spec.budget.budget_flops);
            assert_eq!(optimizer_flops_per_step(OptimizerKind::AdamW, &adamw.model), 0.0);
        }
    }
}
