#!/usr/bin/env python3
"""Training throughput of a PyTorch/transformers forward+backward (the peer of our trainable forward).

Usage: hf_train_bench.py --model DIR --batch B --seq T --repeats R [--threads 2] [--optimizer-step]

What is timed, per iteration: the full model in float32, training mode, all parameters trainable (full fine-tuning);
`loss = model(input_ids, labels=input_ids).loss` (mean next-token NLL over the B*(T-1) predicted positions, the
vocabulary-sized logits materialised as transformers does), `loss.backward()`, and clearing the gradients. With
`--optimizer-step` an AdamW step is included too (off by default: the issue compares forward+backward).
Inputs are B x T token ids drawn uniformly with a fixed seed (content does not change a dense forward's cost); no
padding. One untimed warm-up iteration, then R timed ones.

Reported: tokens_per_s = B*T / median iteration time (input tokens processed per second), plus each iteration.
The last stdout line is one JSON object with the settings and these figures.

On a shared machine (see BENCHMARKS.md): each timed iteration records cpu_share, the fraction of its threads' cores the
process got; one with cpu_share >= --min-cpu-share (0.9) is clean. Timed iterations continue until --repeats clean ones or
--max-attempts in all (default 2 x repeats); medians use the clean ones when there are any (else all, and the
result says "contended": true). --quiet-wait S waits up to S seconds for an idle machine before each timed iteration.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

TOOL = "hf_train_bench"


def parse_args():
    p = argparse.ArgumentParser(description="forward+backward tokens/s, full fine-tuning, float32.")
    p.add_argument("--model", required=True, help="Hugging Face model folder (see gguf_to_hf.py)")
    p.add_argument("--batch", type=int, required=True, help="sequences per iteration")
    p.add_argument("--seq", type=int, required=True, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations after the warm-up (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--optimizer-step", action="store_true", help="include an AdamW step in each iteration")
    p.add_argument("--seed", type=int, default=0)
    pc.add_contention_args(p, unit="iteration")
    a = p.parse_args()
    for name in ("batch", "seq", "repeats", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.seq < 2:
        p.error("--seq must be at least 2 (a next-token loss needs two positions)")
    return a


def main():
    a = parse_args()
    threads = pc.set_threads(a.threads)
    pc.require_model_dir(TOOL, a.model)
    import torch
    from transformers import AutoModelForCausalLM

    pc.log(TOOL, f"loading {a.model}")
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5) if a.optimizer_step else None

    gen = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), generator=gen)
    mask = torch.ones_like(ids)

    def iteration():
        c0 = pc.cpu_seconds()
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
        t_fwd = time.perf_counter()
        out.loss.backward()
        t_bwd = time.perf_counter()
        if opt is not None:
            opt.step()
        model.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        return {"total_s": t1 - t0, "forward_s": t_fwd - t0, "backward_s": t_bwd - t_fwd,
                "loss": float(out.loss.detach()),
                "cpu_share": pc.cpu_share(pc.cpu_seconds() - c0, t1 - t0, torch.get_num_threads())}

    facts = pc.machine_facts()
    pc.log(TOOL, f"load average {facts['loadavg_start']}, cores busy before: {facts['cpu_busy_before']}")
    pc.log(TOOL, f"warm-up: batch {a.batch} x seq {a.seq}")
    warm = iteration()
    def timed(i):
        res = iteration()
        res["tokens_per_s"] = a.batch * a.seq / res["total_s"]
        pc.log(TOOL, f"iteration {i + 1}: {res['total_s']:.2f} s "
                     f"(forward {res['forward_s']:.2f}, backward {res['backward_s']:.2f}), "
                     f"{res['tokens_per_s']:.0f} tok/s, loss {res['loss']:.3f}, cpu share {res['cpu_share']}")
        return res

    runs = pc.timed_runs(TOOL, timed, a.repeats, a)
    used = pc.runs_for_summary(runs)

    rnd = pc.sig
    med_total = pc.median([r["total_s"] for r in used])
    pc.emit({
        "tool": TOOL,
        "peer": "pytorch+transformers forward/backward",
        "settings": {
            "model": os.path.abspath(a.model),
            "batch": a.batch,
            "seq": a.seq,
            "repeats": a.repeats,
            "threads": threads,
            "dtype": "float32",
            "trainable_params": n_params,
            "loss": "mean next-token NLL over B*(T-1) positions",
            "optimizer_step": bool(a.optimizer_step),
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "inputs": f"uniform random ids, seed {a.seed}",
            "min_cpu_share": a.min_cpu_share,
        },
        "tokens_per_s": rnd(a.batch * a.seq / med_total),
        "iteration_s": rnd(med_total),
        "forward_s": rnd(pc.median([r["forward_s"] for r in used])),
        "backward_s": rnd(pc.median([r["backward_s"] for r in used])),
        "warmup_s": rnd(warm["total_s"]),
        "clean_runs": sum(r["clean"] for r in runs),
        "contended": not any(r["clean"] for r in runs),
        "runs": [{k: rnd(v) for k, v in r.items()} for r in runs],
        "machine": facts,
    })


if __name__ == "__main__":
    main()
