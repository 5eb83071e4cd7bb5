//! Scores of the trainable forward and their backward pass, with optional activation checkpointing.
//!
//! candle keeps every intermediate tensor of a forward alive until the loss is dropped. For a 1,600-token
//! ideator prompt that is several GB per update of a 135M model. With [`Backprop::Checkpointed`] the forward
//! keeps only each layer's input; [`Scored::backward`] then walks the layers from the top, recomputing one
//! layer at a time with its graph and back-propagating the incoming gradient through it (the classic
//! "gradient checkpointing" trade: one more forward for memory that no longer grows with depth).

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{backprop::GradStore, Tensor, TensorId, Var};

use crate::decoder::Decoder;
use crate::linear::AdapterMode;
use crate::{ModelError, Result};

/// How gradients of a scoring forward are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backprop {
    /// No gradients: every layer's graph is dropped as soon as it has run (evaluation, reference scores).
    None,
    /// The whole graph is kept (fastest backward, memory grows with tokens x layers).
    Full,
    /// Only layer inputs are kept; the backward recomputes each layer (about a third more compute).
    Checkpointed,
    /// `Checkpointed` when the full graph would take more than the activation memory (default 8 GiB; see
    /// [`set_activation_memory`]), else `Full`.
    Auto,
}

/// Graph size above which [`Backprop::Auto`] checkpoints. Measured for SmolLM2 with LoRA: a GRPO micro-batch
/// of 8 x 128 tokens after a 200-token prompt peaks at 7.2 GB with the full graph (update 7.2 s) and at 1.2 GB
/// checkpointed (10.8 s), so the default keeps that case on the faster path and checkpoints longer prompts.
static AUTO_CHECKPOINT_BYTES: AtomicUsize = AtomicUsize::new(8 << 30);

/// Sets the memory [`Backprop::Auto`] lets the scoring graphs alive at once take before they checkpoint
/// (process-wide, like a thread count: it describes the machine, not the experiment). Passes that run side by
/// side share it ([`with_activation_share`]).
pub fn set_activation_memory(bytes: usize) {
    AUTO_CHECKPOINT_BYTES.store(bytes, Ordering::Relaxed);
}

/// The whole activation memory (bytes) that [`set_activation_memory`] set, for all passes alive at once.
pub fn activation_memory_total() -> usize {
    AUTO_CHECKPOINT_BYTES.load(Ordering::Relaxed)
}

thread_local! {
    /// How many passes share the activation memory with the one running on this thread.
    static SHARING_PASSES: Cell<usize> = const { Cell::new(1) };
}

/// Runs `f` on this thread as one of `passes` scoring passes alive at once (data parallelism): a
/// [`Backprop::Auto`] forward inside it may keep `1/passes` of the activation memory, so the passes together stay
/// within it. The previous share is restored afterwards, also when `f` panics.
pub fn with_activation_share<R>(passes: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            SHARING_PASSES.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SHARING_PASSES.with(|s| s.replace(passes.max(1))));
    f()
}

/// Bytes one [`Backprop::Auto`] graph on this thread may keep: the activation memory divided by the passes
/// sharing it ([`with_activation_share`]).
pub fn activation_memory() -> usize {
    activation_memory_total() / SHARING_PASSES.with(Cell::get)
}

/// Inputs of a shared-prefix forward that the recomputation needs again.
pub(crate) struct PairInput {
    pub p: usize,
    pub b: usize,
    pub c: usize,
    /// Rotary (cos, sin) tables of the prefix's and the continuations' positions.
    pub rope_p: (Tensor, Tensor),
    pub rope_c: (Tensor, Tensor),
    pub prefix_ids: Tensor,
    pub cont_ids: Tensor,
    pub mode: AdapterMode,
}

/// What a checkpointed backward needs: the detached input of every layer and the leaves the head starts from.
pub(crate) struct Tape<'a> {
    pub decoder: &'a Decoder,
    pub pair: PairInput,
    pub layer_inputs: Vec<(Tensor, Tensor)>,
    pub top: (Var, Var),
}

/// Per-token log-probabilities and entropies (flat, continuation by continuation), and how to differentiate
/// a loss built from them.
pub struct Scored<'a> {
    pub logprobs: Tensor,
    pub entropies: Tensor,
    pub(crate) backprop: Backprop,
    pub(crate) tape: Option<Tape<'a>>,
}

impl Scored<'_> {
    /// How these scores' gradients are obtained: never [`Backprop::Auto`], which resolves to `Full` or
    /// `Checkpointed` by the activation memory.
    pub fn backprop(&self) -> Backprop {
        self.backprop
    }

    /// Gradients of `loss` (built from `logprobs`/`entropies`) for every trainable tensor of the decoder. Use
    /// this instead of `loss.backward()`, which stops at the top layer of a checkpointed forward.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        if self.backprop == Backprop::None {
            return Err(ModelError::Invalid("these scores were computed without gradients (Backprop::None)".into()));
        }
        let mut grads = loss.backward()?;
        let Some(tape) = &self.tape else { return Ok(grads) };
        let (dec, pair) = (tape.decoder, &tape.pair);
        // candle's backward also returns gradients of every frozen operand it met (base weights, layer inputs):
        // keep only the trainable ones, or 30 layers' worth of those pile up.
        let trainable = dec.variable_ids();
        let seed = |grads: &mut GradStore, v: &Var| -> Result<Tensor> {
            Ok(match grads.remove(v.as_tensor()) {
                Some(g) => g,
                None => v.as_tensor().zeros_like()?,
            })
        };
        let mut gp = seed(&mut grads, &tape.top.0)?;
        let mut gc = seed(&mut grads, &tape.top.1)?;
        for (i, (xp, xc)) in tape.layer_inputs.iter().enumerate().rev() {
            let (vp, vc) = (Var::from_tensor(xp)?, Var::from_tensor(xc)?);
            let (yp, yc) = dec.shared_prefix_block(i, vp.as_tensor(), vc.as_tensor(), pair)?;
            // d/dx of sum(y * g) with g fixed is exactly the vector-Jacobian product the chain rule needs.
            let surrogate = ((yp * &gp)?.sum_all()? + (yc * &gc)?.sum_all()?)?;
            let mut layer_grads = surrogate.backward()?;
            gp = seed(&mut layer_grads, &vp)?;
            gc = seed(&mut layer_grads, &vc)?;
            grads.extend(only(layer_grads, &trainable))?;
        }
        // The embedding is trainable in full fine-tuning (and tied to the output head in SmolLM2).
        let (xp, xc) = dec.embed_pair(pair)?;
        if xp.track_op() {
            let surrogate = ((xp * &gp)?.sum_all()? + (xc * &gc)?.sum_all()?)?;
            grads.extend(only(surrogate.backward()?, &trainable))?;
        }
        Ok(grads)
    }
}

/// The entries of `grads` for the tensors in `keep`.
fn only(grads: GradStore, keep: &HashSet<TensorId>) -> GradStore {
    let mut out = GradStore::default();
    for id in keep {
        if let Some(g) = grads.get_id(*id) {
            out.insert_id(*id, g.clone());
        }
    }
    out
}
