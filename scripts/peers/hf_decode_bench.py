#!/usr/bin/env python3
"""Decode throughput of Hugging Face transformers' `generate` (the peer of our batched sampler).

Usage: hf_decode_bench.py --model DIR --batch B --prompt-tokens P --new-tokens N --repeats R [--threads 2]

What is timed: `model.generate` on a batch of B identical P-token prompts (no padding), pure sampling at
temperature 1.0 (top-k and top-p disabled), float32, KV cache on, with `min_new_tokens = max_new_tokens = N` so that
EOS is suppressed and every row produces exactly N tokens. One shorter warm-up call runs first; then R timed calls,
each reseeded. A stopping-criteria hook (called by `generate` after every new token) timestamps each step, which
splits a call into
  * time to first token (prefill of B x P tokens plus the first sampled token), and
  * steady decoding of the remaining N-1 tokens per row.

Reported (medians over the R calls):
  new_tokens_per_s         B*N / whole generate call (prefill included): the end-to-end figure
  decode_tokens_per_s      B*(N-1) / (time after the first token): the steady-state decode rate
  time_to_first_token_s    prefill + first token
The last stdout line is one JSON object with the settings and these figures.

On a shared machine (see BENCHMARKS.md): each timed call records cpu_share, the fraction of its threads' cores the
process got; one with cpu_share >= --min-cpu-share (0.9) is clean. Timed calls continue until --repeats clean ones or
--max-attempts in all (default 2 x repeats); medians use the clean ones when there are any (else all, and the
result says "contended": true). --quiet-wait S waits up to S seconds for an idle machine before each timed call.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

TOOL = "hf_decode_bench"


def parse_args():
    p = argparse.ArgumentParser(description="HF generate decode throughput (sampling, float32, KV cache).")
    p.add_argument("--model", required=True, help="Hugging Face model folder (see gguf_to_hf.py)")
    p.add_argument("--batch", type=int, required=True, help="rows decoded together")
    p.add_argument("--prompt-tokens", type=int, required=True, help="prompt length in tokens (same for every row)")
    p.add_argument("--new-tokens", type=int, required=True, help="tokens generated per row (EOS suppressed)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median reported)")
    p.add_argument("--warmup-tokens", type=int, default=8, help="new tokens of the untimed warm-up call")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    pc.add_contention_args(p, unit="call")
    a = p.parse_args()
    for name in ("batch", "prompt_tokens", "new_tokens", "repeats", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return a


class StepClock:
    """A stopping criterion that never stops; it records when each new token was appended."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def run_once(model, ids, mask, n_new, temperature, seed, eos_ids):
    import torch
    from transformers import StoppingCriteriaList

    clock = StepClock()
    torch.manual_seed(seed)
    c0 = pc.cpu_seconds()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            min_new_tokens=n_new,
            max_new_tokens=n_new,
            use_cache=True,
            pad_token_id=eos_ids[0],
            stopping_criteria=StoppingCriteriaList([clock]),
        )
    t1 = time.perf_counter()
    cpu = pc.cpu_seconds() - c0
    new = out[:, ids.shape[1]:]
    rows_with_eos = int(sum(bool(torch.isin(r, torch.tensor(eos_ids)).any()) for r in new))
    return {
        "total_s": t1 - t0,
        "first_token_s": (clock.stamps[0] - t0) if clock.stamps else None,
        "after_first_s": (t1 - clock.stamps[0]) if clock.stamps else None,
        "generated_per_row": int(new.shape[1]),
        "rows_with_eos": rows_with_eos,
        "cpu_share": pc.cpu_share(cpu, t1 - t0, torch.get_num_threads()),
    }


def main():
    a = parse_args()
    threads = pc.set_threads(a.threads)
    pc.require_model_dir(TOOL, a.model)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pc.log(TOOL, f"loading {a.model}")
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    facts = pc.machine_facts()
    pc.log(TOOL, f"load average {facts['loadavg_start']}, cores busy before: {facts['cpu_busy_before']}")
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]

    prompt = pc.prompt_ids(tok, a.prompt_tokens)
    ids = torch.tensor([prompt] * a.batch, dtype=torch.long)
    mask = torch.ones_like(ids)

    pc.log(TOOL, f"warm-up: batch {a.batch}, {a.prompt_tokens} prompt tokens, {a.warmup_tokens} new tokens")
    run_once(model, ids, mask, max(2, a.warmup_tokens), a.temperature, a.seed, eos_ids)

    def timed(i):
        res = run_once(model, ids, mask, a.new_tokens, a.temperature, a.seed + 1 + i, eos_ids)
        if res["generated_per_row"] != a.new_tokens or res["rows_with_eos"]:
            raise SystemExit(
                f"{TOOL}: error: generate produced {res['generated_per_row']} tokens per row "
                f"({res['rows_with_eos']} rows with EOS); expected exactly {a.new_tokens} without EOS"
            )
        res["new_tokens_per_s"] = a.batch * a.new_tokens / res["total_s"]
        if a.new_tokens > 1 and res["after_first_s"]:
            res["decode_tokens_per_s"] = a.batch * (a.new_tokens - 1) / res["after_first_s"]
        pc.log(TOOL, f"call {i + 1}: {res['total_s']:.2f} s, {res['new_tokens_per_s']:.1f} new tok/s, "
                     f"first token {res['first_token_s']:.3f} s, cpu share {res['cpu_share']}")
        return res

    runs = pc.timed_runs(TOOL, timed, a.repeats, a)
    used = pc.runs_for_summary(runs)

    rnd = pc.sig
    pc.emit({
        "tool": TOOL,
        "peer": "transformers.generate",
        "settings": {
            "model": os.path.abspath(a.model),
            "batch": a.batch,
            "prompt_tokens": a.prompt_tokens,
            "new_tokens": a.new_tokens,
            "repeats": a.repeats,
            "warmup_tokens": a.warmup_tokens,
            "threads": threads,
            "dtype": "float32",
            "sampling": {"temperature": a.temperature, "top_k": 0, "top_p": 1.0,
                         "min_new_tokens": a.new_tokens, "max_new_tokens": a.new_tokens},
            "use_cache": True,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "seed": a.seed,
            "min_cpu_share": a.min_cpu_share,
        },
        "new_tokens_per_s": rnd(pc.median([r["new_tokens_per_s"] for r in used])),
        "decode_tokens_per_s": rnd(pc.median([r["decode_tokens_per_s"] for r in used if r.get("decode_tokens_per_s")])),
        "time_to_first_token_s": rnd(pc.median([r["first_token_s"] for r in used])),
        "total_s": rnd(pc.median([r["total_s"] for r in used])),
        "clean_runs": sum(r["clean"] for r in runs),
        "contended": not any(r["clean"] for r in runs),
        "runs": [{k: rnd(v) if isinstance(v, float) else v for k, v in r.items()} for r in runs],
        "machine": facts,
    })


if __name__ == "__main__":
    main()
