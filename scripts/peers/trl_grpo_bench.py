#!/usr/bin/env python3
"""Seconds per GRPO step of TRL's `GRPOTrainer` on CPU (the peer of our GRPO trainer).

Usage: trl_grpo_bench.py --model DIR [--group 8] [--prompt-tokens 200] [--new-tokens 128] [--lora-rank 0|16]
                         [--steps 3] [--warmup-steps 1] [--beta 0.04] [--threads 2]

Setting (echoed in the JSON): one prompt per step (a chat-formatted request padded to about --prompt-tokens tokens
after the chat template), --group completions of it sampled with transformers `generate` (no vLLM; temperature 1.0,
top-k/top-p off, float32), `min_new_tokens = max_completion_length = --new-tokens` so every completion has exactly
that many tokens (EOS suppressed, as in our side's benchmark; --allow-eos turns this off), a cheap text reward
(keyword coverage plus distinct-word ratio, so rewards differ within a group), beta = 0.04 (so TRL computes
reference log-probs: a frozen copy of the model for full fine-tuning, the base with adapters disabled for LoRA),
num_iterations = 1 (TRL then skips the "old" log-prob pass and uses the detached current ones), one optimizer step
per generation batch, AdamW, grad-norm clipping 1.0. --lora-rank 0 is full fine-tuning; > 0 is LoRA (peft) with
alpha = 2 * rank on q, k, v, o, gate, up, down.

How the time is split. TRL times its own phases with `trl.extras.profiling` contexts but only reports them to
wandb/mlflow/trackio. This script patches `ProfilingContext.__enter__/__exit__` to record every timed section (with
its nesting) in memory, and adds a `TrainerCallback` that timestamps step begin/end and the optimizer step. Per
optimizer step (step_s = on_step_begin -> on_step_end, i.e. everything TRL does for one update except logging):
  generation_s      TRL section `transformers.generate` (sampling the group, prefill included)
  ref_logprobs_s    `_get_per_token_logps_and_entropies` calls made while preparing inputs (reference forward;
                    also the "old" log-probs when TRL needs them, which it does not with num_iterations = 1)
  rewards_s         `_calculate_rewards`
  prepare_other_s   rest of `_prepare_inputs` (chat template, tokenisation, padding, advantages, metrics)
  update_s          from the end of `_prepare_inputs` to the step end: policy forward with grad (`compute_loss`,
                    reported as policy_forward_s), backward + grad clipping (backward_s), optimizer step
                    (optimizer_s), zero_grad and scheduler.
The first --warmup-steps steps are run and reported but left out of the medians.
The last stdout line is one JSON object with the settings, the per-step records and their medians.

On a shared machine (see BENCHMARKS.md): each step records cpu_share, the fraction of its threads' cores the process
got; a step with cpu_share >= --min-cpu-share (0.9) is clean. Training stops once --steps clean steps (after the
warm-up) were measured, or after --max-attempts steps (default 2 x --steps); medians use the clean steps when there
are any. --quiet-wait S waits up to S seconds for an idle machine before each step (outside the step's clock).
"""

import argparse
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

TOOL = "trl_grpo_bench"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
REQUEST = "Propose one research idea that improves the validation loss of the recipe below. "
KEYWORDS = ["learning", "rate", "warmup", "schedule", "batch", "decay", "optimizer", "loss", "layer", "norm"]


def parse_args():
    p = argparse.ArgumentParser(description="TRL GRPOTrainer seconds per step on CPU, with a time split.")
    p.add_argument("--model", required=True, help="Hugging Face model folder (see gguf_to_hf.py)")
    p.add_argument("--group", type=int, default=8, help="completions per prompt = per-step batch (default 8)")
    p.add_argument("--prompt-tokens", type=int, default=200, help="target prompt length after the chat template")
    p.add_argument("--new-tokens", type=int, default=128, help="completion length (max_completion_length)")
    p.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning, > 0 = LoRA rank")
    p.add_argument("--steps", type=int, default=3, help="measured optimizer steps")
    p.add_argument("--warmup-steps", type=int, default=1, help="steps run first and left out of the medians")
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (0 = no reference model)")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--loss-type", default="grpo", help="TRL loss_type (grpo, dapo, dr_grpo, bnpo, ...)")
    p.add_argument("--allow-eos", action="store_true", help="let completions stop at EOS (no min_new_tokens)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    pc.add_contention_args(p, unit="step")
    a = p.parse_args()
    for name in ("group", "prompt_tokens", "new_tokens", "steps", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.group < 2:
        p.error("--group must be at least 2 (GRPO compares completions within a group)")
    if a.lora_rank < 0 or a.warmup_steps < 0:
        p.error("--lora-rank and --warmup-steps must not be negative")
    return a


def build_prompt(tokenizer, target_tokens):
    """A chat prompt whose templated length (generation prompt included) is as close to target as possible, <= it."""
    filler = tokenizer(pc.PROMPT_TEXT * (target_tokens // 40 + 2), add_special_tokens=False)["input_ids"]

    def templated_len(content):
        msgs = [{"role": "user", "content": content}]
        return len(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))

    lo, hi = 0, len(filler)  # binary search on the number of filler tokens kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if templated_len(REQUEST + tokenizer.decode(filler[:mid])) <= target_tokens:
            lo = mid
        else:
            hi = mid - 1
    content = REQUEST + tokenizer.decode(filler[:lo])
    return [{"role": "user", "content": content}], templated_len(content)


def text_reward(completions, **kwargs):
    """Cheap and varied: keyword coverage plus a small distinct-word bonus (no model, no network)."""
    out = []
    for c in completions:
        text = c[0]["content"] if isinstance(c, list) else str(c)
        words = re.findall(r"[a-z]+", text.lower())
        coverage = sum(k in words for k in KEYWORDS) / len(KEYWORDS)
        distinct = len(set(words)) / len(words) if words else 0.0
        out.append(coverage + 0.1 * distinct)
    return out


class SectionRecorder:
    """Collects TRL's profiling sections (name, seconds, enclosing sections) by patching ProfilingContext."""

    def __init__(self):
        self.stack = []
        self.events = []  # (name, seconds, parents tuple, end time)

    def install(self):
        from trl.extras import profiling

        rec = self
        orig_enter = profiling.ProfilingContext.__enter__
        orig_exit = profiling.ProfilingContext.__exit__

        def enter(ctx):
            rec.stack.append(ctx.name)
            return orig_enter(ctx)

        def exit_(ctx, exc_type, exc, tb):
            end = time.perf_counter()
            start = getattr(ctx, "_start_time", None)
            if rec.stack and rec.stack[-1] == ctx.name:
                rec.stack.pop()
            if start is not None:
                rec.events.append((ctx.name.split(".", 1)[-1], end - start, tuple(rec.stack), end))
            return orig_exit(ctx, exc_type, exc, tb)

        profiling.ProfilingContext.__enter__ = enter
        profiling.ProfilingContext.__exit__ = exit_

    def take(self):
        ev, self.events = self.events, []
        return ev


def make_callback(recorder, steps_out, a):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if a.quiet_wait > 0:  # before the clock starts: waiting is not part of the step
                pc.wait_for_quiet(TOOL, a.quiet_wait)
            recorder.take()  # drop anything from before this step
            self.c_begin = pc.cpu_seconds()
            self.t_begin = time.perf_counter()
            self.t_pre_opt = self.t_opt = None

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.t_pre_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            self.t_opt = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t_end = time.perf_counter()
            ev = recorder.take()

            def total(name, under=None):
                return sum(s for n, s, parents, _ in ev if n == name and (under is None or
                           any(p.endswith(under) for p in parents)))

            prepare_end = max((e for n, _, _, e in ev if n == "_prepare_inputs"), default=self.t_begin)
            loss_end = max((e for n, _, _, e in ev if n == "compute_loss"), default=prepare_end)
            rec = {
                "step": state.global_step,
                "step_s": t_end - self.t_begin,
                "generation_s": total("transformers.generate"),
                "ref_logprobs_s": total("_get_per_token_logps_and_entropies", under="_prepare_inputs"),
                "rewards_s": total("_calculate_rewards"),
                "prepare_s": total("_prepare_inputs"),
                "update_s": t_end - prepare_end,
                "policy_forward_s": total("compute_loss"),
                "backward_s": (self.t_pre_opt - loss_end) if self.t_pre_opt else None,
                "optimizer_s": (self.t_opt - self.t_pre_opt) if self.t_opt and self.t_pre_opt else None,
                "cpu_share": pc.cpu_share(pc.cpu_seconds() - self.c_begin, t_end - self.t_begin, a.threads),
            }
            rec["prepare_other_s"] = rec["prepare_s"] - rec["generation_s"] - rec["ref_logprobs_s"] - rec["rewards_s"]
            rec["warmup"] = len(steps_out) < a.warmup_steps
            rec["clean"] = rec["cpu_share"] is not None and rec["cpu_share"] >= a.min_cpu_share
            steps_out.append(rec)
            # Enough clean measured steps: stop early (max_steps leaves room for retrying contended ones).
            if sum(r["clean"] for r in steps_out if not r["warmup"]) >= a.steps:
                control.should_training_stop = True
            pc.log(TOOL, f"step {state.global_step}: {rec['step_s']:.1f} s (generation {rec['generation_s']:.1f}, "
                         f"ref log-probs {rec['ref_logprobs_s']:.1f}, update {rec['update_s']:.1f}; "
                         f"cpu share {rec['cpu_share']})")

        def on_log(self, args, state, control, logs=None, **kw):
            # The per-step log (it has "loss"); the end-of-training summary is not a step's.
            if logs and "loss" in logs and steps_out:
                steps_out[-1]["trl_logs"] = {k: v for k, v in logs.items() if isinstance(v, (int, float))}

    return StepTimer()


def main():
    a = parse_args()
    threads = pc.set_threads(a.threads)
    pc.require_model_dir(TOOL, a.model)
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    extra_versions = {"trl": trl.__version__}
    tok = AutoTokenizer.from_pretrained(a.model)
    messages, prompt_len = build_prompt(tok, a.prompt_tokens)
    total_steps = a.warmup_steps + (a.max_attempts or 2 * a.steps)
    dataset = Dataset.from_list([{"prompt": messages} for _ in range(total_steps)])

    peft_config = None
    if a.lora_rank > 0:
        try:
            import peft
            from peft import LoraConfig
        except ImportError:
            raise SystemExit(f"{TOOL}: error: --lora-rank > 0 needs the `peft` package; run scripts/peers/setup.sh")
        extra_versions["peft"] = peft.__version__
        peft_config = LoraConfig(r=a.lora_rank, lora_alpha=2 * a.lora_rank, lora_dropout=0.0,
                                 target_modules=LORA_TARGETS, task_type="CAUSAL_LM")

    recorder = SectionRecorder()
    recorder.install()
    steps = []
    with tempfile.TemporaryDirectory(prefix="trl-grpo-bench-") as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=a.group,
            gradient_accumulation_steps=1,
            num_generations=a.group,
            max_completion_length=a.new_tokens,
            generation_kwargs=None if a.allow_eos else {"min_new_tokens": a.new_tokens},
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            beta=a.beta,
            num_iterations=1,
            loss_type=a.loss_type,
            learning_rate=a.learning_rate,
            max_steps=total_steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            log_completions=False,
            shuffle_dataset=False,
            model_init_kwargs={"dtype": "float32"},
            seed=a.seed,
        )
        t_init = time.perf_counter()
        trainer = GRPOTrainer(
            model=os.path.abspath(a.model),
            reward_funcs=text_reward,
            args=config,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[make_callback(recorder, steps, a)],
        )
        init_s = time.perf_counter() - t_init
        torch.set_num_threads(a.threads)  # in case a library changed it while building the trainer
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        pc.log(TOOL, f"trainer ready in {init_s:.1f} s; {trainable} trainable parameters; "
                     f"prompt {prompt_len} tokens; {a.warmup_steps} warm-up + {a.steps} clean steps wanted, at most {total_steps} steps")
        facts = pc.machine_facts()
        facts.update(extra_versions)
        pc.log(TOOL, f"load average {facts['loadavg_start']}, cores busy before: {facts['cpu_busy_before']}")
        t_train = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t_train
        optim = str(trainer.args.optim)
        has_ref = trainer.ref_model is not None

    measured = pc.runs_for_summary([s for s in steps if not s["warmup"]])
    keys = ["step_s", "generation_s", "ref_logprobs_s", "rewards_s", "prepare_other_s", "update_s",
            "policy_forward_s", "backward_s", "optimizer_s"]
    med = {k: pc.median([s[k] for s in measured if s.get(k) is not None]) for k in keys}
    rnd = pc.sig
    completion_len = [s.get("trl_logs", {}).get("completions/mean_length") for s in steps]
    pc.emit({
        "tool": TOOL,
        "peer": "trl.GRPOTrainer",
        "settings": {
            "model": os.path.abspath(a.model),
            "group": a.group,
            "prompts_per_step": 1,
            "prompt_tokens": prompt_len,
            "prompt_tokens_target": a.prompt_tokens,
            "new_tokens": a.new_tokens,
            "min_new_tokens": None if a.allow_eos else a.new_tokens,
            "fine_tuning": "full" if a.lora_rank == 0 else f"lora r{a.lora_rank} alpha {2 * a.lora_rank}",
            "lora_targets": LORA_TARGETS if a.lora_rank else None,
            "trainable_params": trainable,
            "beta": a.beta,
            "reference": ("frozen model copy" if has_ref else "base with adapters disabled") if a.beta else None,
            "loss_type": a.loss_type,
            "num_iterations": 1,
            "learning_rate": a.learning_rate,
            "optimizer": optim,
            "max_grad_norm": config.max_grad_norm,
            "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
            "dtype": "float32",
            "use_vllm": False,
            "reward": "keyword coverage + 0.1 * distinct-word ratio",
            "steps": a.steps,
            "warmup_steps": a.warmup_steps,
            "threads": threads,
            "seed": a.seed,
            "min_cpu_share": a.min_cpu_share,
        },
        "seconds_per_step": rnd(med["step_s"]),
        "split_median_s": {k: rnd(v) for k, v in med.items() if k != "step_s"},
        "completion_mean_length": completion_len,
        "clean_steps": sum(s["clean"] for s in steps if not s["warmup"]),
        "contended": not any(s["clean"] for s in steps if not s["warmup"]),
        "trainer_init_s": rnd(init_s),
        "train_total_s": rnd(train_s),
        "steps": [{k: (rnd(v) if not isinstance(v, dict) else {kk: rnd(vv) for kk, vv in v.items()})
                   for k, v in s.items()} for s in steps],
        "machine": facts,
    })


if __name__ == "__main__":
    main()
