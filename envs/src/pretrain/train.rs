//! One pretraining run: build the model the recipe describes, train it for as many steps as the FLOP budget
//! buys, and evaluate it on the fixed validation windows.

use super::corpus::Corpus;
use super::gpt::{Gpt, GptConfig};
use super::optim::{clip_grad_norm, Ema, OptimConfig, Optimizer};
use super::shards;
use crate::environment::RunContext;
use crate::result::FailureCause;
use candle_core::{Device, Tensor, Var};
use ideator_model::data_parallel::run_in_order;
use ideator_trainer::schedule::Schedule;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

/// A training loss above this has diverged for good (uniform guessing over bytes is ln 256 = 5.5): the run
/// stops as a non-finite loss instead of spending the rest of its budget on overflow.
const DIVERGED_LOSS: f64 = 1e4;

/// Everything a run needs, resolved from the recipe and the scale.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    pub model: GptConfig,
    pub optim: OptimConfig,
    pub lr: f64,
    pub muon_lr: f64,
    pub schedule: Schedule,
    pub grad_clip: f64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub ema_decay: f64,
    pub z_loss: f64,
    pub eval: EvalSpec,
    pub log_every: usize,
}

/// The fixed evaluation: the first `windows` consecutive windows of `ctx + 1` bytes of the validation text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalSpec {
    pub ctx: usize,
    pub windows: usize,
    pub batch: usize,
}

/// A run's measurements, or why it failed (with whatever was measured before).
pub(crate) struct RunOutcome {
    pub val_loss: Option<f64>,
    pub failure: Option<(FailureCause, String)>,
    pub metrics: BTreeMap<String, f64>,
    pub log: String,
}

/// Trains and evaluates. Errors from candle become runtime errors (out-of-memory ones are recognised).
pub(crate) fn train_and_evaluate(plan: &TrainPlan, corpus: &Corpus, ctx: &RunContext) -> RunOutcome {
    let mut out = RunOutcome { val_loss: None, failure: None, metrics: BTreeMap::new(), log: String::new() };
    if let Err(e) = run(plan, corpus, ctx, &mut out) {
        let msg = e.to_string();
        let cause = if msg.to_lowercase().contains("out of memory") {
            FailureCause::OutOfMemory
        } else {
            FailureCause::RuntimeError
        };
        out.failure = Some((cause, format!("training failed: {}", crate::knobs::clip(&msg, 500))));
    }
    out
}

fn run(plan: &TrainPlan, corpus: &Corpus, ctx: &RunContext, out: &mut RunOutcome) -> candle_core::Result<()> {
    let device = &ctx.device;
    let model = Gpt::new(plan.model.clone(), ctx.seed, device)?;
    let vars: Vec<_> = model.params().iter().map(|(_, v, _)| v.clone()).collect();
    let mut opt = Optimizer::new(plan.optim, model.params().iter().map(|(_, v, role)| (v.clone(), *role)).collect())?;
    let mut ema = if plan.ema_decay > 0.0 { Some(Ema::new(plan.ema_decay, &vars)?) } else { None };
    // Data order depends on the seed but not on the model, so recipes are compared on the same batches.
    let mut data_rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x5eed_da7a);
    let (b, t) = (plan.batch_size, plan.seq_len);
    let steps = plan.schedule.total_steps as usize;
    let parts = shards::split(b, t, device);
    let start = Instant::now();
    let mut recent = Vec::new();
    for step in 0..steps {
        if ctx.expired() {
            out.failure =
                Some((FailureCause::TimeLimit, format!("time limit reached after {step} of {steps} training steps")));
            // Partial progress still tells how fast this recipe trains here (a throughput probe at large scales).
            let seconds = start.elapsed().as_secs_f64();
            out.metrics.insert("steps_completed".into(), step as f64);
            out.metrics.insert("steps".into(), steps as f64);
            out.metrics.insert("tokens_per_second".into(), (step * b * t) as f64 / seconds.max(1e-9));
            return Ok(());
        }
        let (inputs, targets) = sample_batch(&corpus.train, b, t, &mut data_rng, device)?;
        let step_out = micro_batch_step(&model, &vars, plan, &inputs, &targets, &parts, ctx.threads)?;
        let ce_value = step_out.ce;
        if !ce_value.is_finite() || !step_out.loss.is_finite() || ce_value > DIVERGED_LOSS {
            out.failure =
                Some((FailureCause::NonFiniteLoss, format!("the training loss became {ce_value} at step {step}")));
            return Ok(());
        }
        let mut grads = step_out.grads;
        let grad_norm = clip_grad_norm(&mut grads, plan.grad_clip)?;
        if !grad_norm.is_finite() {
            out.failure =
                Some((FailureCause::NonFiniteLoss, format!("the gradient norm became {grad_norm} at step {step}")));
            return Ok(());
        }
        let mult = plan.schedule.multiplier(step as u64);
        opt.step(&grads, plan.lr * mult, plan.muon_lr * mult)?;
        if let Some(ema) = &mut ema {
            ema.update(&vars)?;
        }
        recent.push(ce_value);
        if recent.len() > 10 {
            recent.remove(0);
        }
        if step % plan.log_every == 0 || step + 1 == steps {
            let _ = writeln!(
                out.log,
                "step {step:>5}/{steps}  loss {ce_value:.4}  grad_norm {grad_norm:.3}  lr_mult {mult:.3}  {:.1}s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let train_seconds = start.elapsed().as_secs_f64();
    if let Some(ema) = &ema {
        ema.copy_to(&vars)?;
    }
    let eval_start = Instant::now();
    let val_loss = evaluate(&model, &corpus.val, plan.eval, device, ctx.threads)?;
    let eval_seconds = eval_start.elapsed().as_secs_f64();
    let tokens = (steps * b * t) as f64;
    let m = &mut out.metrics;
    m.insert("val_loss".into(), val_loss);
    m.insert("train_loss".into(), recent.iter().sum::<f64>() / recent.len().max(1) as f64);
    m.insert("steps".into(), steps as f64);
    m.insert("tokens".into(), tokens);
    m.insert("params".into(), plan.model.total_params() as f64);
    let optimizer_flops = super::optimizer_flops_per_step(plan.optim.kind, &plan.model) * steps as f64;
    m.insert("flops".into(), plan.model.train_flops_per_token(t) * tokens + optimizer_flops);
    m.insert("optimizer_flops".into(), optimizer_flops);
    m.insert("train_seconds".into(), train_seconds);
    m.insert("eval_seconds".into(), eval_seconds);
    m.insert("tokens_per_second".into(), tokens / train_seconds.max(1e-9));
    let _ = writeln!(out.log, "val_loss {val_loss:.4} ({} windows of {} bytes)", plan.eval.windows, plan.eval.ctx);
    if !val_loss.is_finite() {
        out.failure = Some((FailureCause::NonFiniteLoss, format!("the validation loss is {val_loss}")));
    } else {
        out.val_loss = Some(val_loss);
    }
    Ok(())
}

/// Training speed of a plan, without evaluation: `ideator bench pretrain`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Timed steps (after the untimed warm-up ones).
    pub steps: usize,
    pub seconds: f64,
    /// Training tokens (bytes) per second over the timed steps: `steps * batch * seq_len / seconds`.
    pub tokens_per_second: f64,
    /// Cross-entropy of the last step (nats per byte), a check that the steps trained something.
    pub last_loss: f64,
}

/// Runs `warmup` untimed then `steps` timed training steps of `plan` (forward, backward, clipping, optimiser
/// update, as in a run), on `ctx.device`. The warm-up absorbs one-off costs (a GPU's kernel loading, allocator
/// growth). Each step reads its loss back to the host, so the timing covers finished work on any device.
///
/// # Errors
/// A candle error (out of memory, an op the device lacks), or a non-finite loss.
pub(crate) fn training_throughput(
    plan: &TrainPlan,
    corpus: &Corpus,
    ctx: &RunContext,
    warmup: usize,
    steps: usize,
) -> candle_core::Result<Throughput> {
    let device = &ctx.device;
    let model = Gpt::new(plan.model.clone(), ctx.seed, device)?;
    let vars: Vec<_> = model.params().iter().map(|(_, v, _)| v.clone()).collect();
    let mut opt = Optimizer::new(plan.optim, model.params().iter().map(|(_, v, role)| (v.clone(), *role)).collect())?;
    let mut data_rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x5eed_da7a);
    let (b, t) = (plan.batch_size, plan.seq_len);
    let parts = shards::split(b, t, device);
    let mut start = Instant::now();
    let mut last_loss = f64::NAN;
    for step in 0..warmup + steps {
        if step == warmup {
            start = Instant::now();
        }
        let (inputs, targets) = sample_batch(&corpus.train, b, t, &mut data_rng, device)?;
        let mut out = micro_batch_step(&model, &vars, plan, &inputs, &targets, &parts, ctx.threads)?;
        if !out.ce.is_finite() {
            candle_core::bail!("the training loss became {} at step {step}", out.ce);
        }
        clip_grad_norm(&mut out.grads, plan.grad_clip)?;
        opt.step(&out.grads, plan.lr, plan.muon_lr)?;
        last_loss = out.ce;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Throughput { steps, seconds, tokens_per_second: (steps * b * t) as f64 / seconds.max(1e-9), last_loss })
}

/// One step's loss values and (detached) gradients, summed over its micro-batches.
struct StepOutput {
    ce: f64,
    loss: f64,
    grads: Vec<Option<Tensor>>,
}

/// Forward and backward passes of the batch's micro-batches `parts` (on up to `threads` threads). Each
/// micro-batch's loss is weighted by its share of the batch, so the sum of their gradients is the gradient of the
/// whole batch's mean loss; the sum runs in micro-batch order, whatever thread computed each.
fn micro_batch_step(
    model: &Gpt,
    vars: &[Var],
    plan: &TrainPlan,
    inputs: &Tensor,
    targets: &Tensor,
    parts: &[(usize, usize)],
    threads: usize,
) -> candle_core::Result<StepOutput> {
    let batch = plan.batch_size as f64;
    let outputs = run_in_order(parts, threads, |&(start, len)| -> candle_core::Result<_> {
        let (x, y) = (inputs.narrow(0, start, len)?, targets.narrow(0, start, len)?);
        let (ce, z_sq) = model.loss(&x, &y)?;
        let loss = if plan.z_loss > 0.0 { (&ce + (z_sq * plan.z_loss)?)? } else { ce.clone() };
        let weight = len as f64 / batch;
        let grad_store = (&loss * weight)?.backward()?;
        // Detached: a parameter's gradient still references the step's graph, and optimiser state built from it
        // would keep every step's activations alive.
        let grads: Vec<Option<Tensor>> = vars.iter().map(|v| grad_store.get(v).map(Tensor::detach)).collect();
        Ok((ce.to_scalar::<f32>()? as f64 * weight, loss.to_scalar::<f32>()? as f64 * weight, grads))
    })?;
    let mut total = StepOutput { ce: 0.0, loss: 0.0, grads: vec![None; vars.len()] };
    for (ce, loss, grads) in outputs {
        total.ce += ce;
        total.loss += loss;
        for (sum, g) in total.grads.iter_mut().zip(grads) {
            *sum = match (sum.take(), g) {
                (Some(s), Some(g)) => Some((s + g)?),
                (s, g) => s.or(g),
            };
        }
    }
    Ok(total)
}

/// `b` random windows of `t + 1` bytes: inputs are the first `t`, targets the last `t`.
fn sample_batch(
    data: &[u8],
    b: usize,
    t: usize,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut inputs = Vec::with_capacity(b * t);
    let mut targets = Vec::with_capacity(b * t);
    for _ in 0..b {
        let start = rng.random_range(0..data.len() - t - 1);
        inputs.extend(data[start..start + t].iter().map(|&x| x as u32));
        targets.extend(data[start + 1..start + t + 1].iter().map(|&x| x as u32));
    }
    Ok((Tensor::from_vec(inputs, (b, t), device)?, Tensor::from_vec(targets, (b, t), device)?))
}

/// Mean next-byte cross-entropy (nats) over the fixed validation windows, on up to `threads` threads. The recipe
/// cannot change this: the windows, their count and their length come from the scale, and the loss has no z-loss
/// term. Batches are summed in order, so the result does not depend on `threads`.
pub fn evaluate(
    model: &Gpt,
    val: &[u8],
    spec: EvalSpec,
    device: &Device,
    threads: usize,
) -> candle_core::Result<f64> {
    let needed = spec.windows * (spec.ctx + 1);
    if val.len() < needed {
        candle_core::bail!("validation text has {} bytes; the evaluation needs {needed}", val.len());
    }
    let batches: Vec<(usize, usize)> =
        (0..spec.windows).step_by(spec.batch).map(|w| (w, spec.batch.min(spec.windows - w))).collect();
    let losses = run_in_order(&batches, threads, |&(w, n)| -> candle_core::Result<_> {
        let mut inputs = Vec::with_capacity(n * spec.ctx);
        let mut targets = Vec::with_capacity(n * spec.ctx);
        for i in w..w + n {
            let s = i * (spec.ctx + 1);
            inputs.extend(val[s..s + spec.ctx].iter().map(|&x| x as u32));
            targets.extend(val[s + 1..s + spec.ctx + 1].iter().map(|&x| x as u32));
        }
        let inputs = Tensor::from_vec(inputs, (n, spec.ctx), device)?;
        let targets = Tensor::from_vec(targets, (n, spec.ctx), device)?;
        let (ce, _) = model.loss(&inputs, &targets)?;
        Ok(ce.to_scalar::<f32>()? as f64 * n as f64)
    })?;
    Ok(losses.iter().sum::<f64>() / spec.windows as f64)
}
