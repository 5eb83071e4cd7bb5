#!/usr/bin/env python3
"""Turn bench-out/results.jsonl (written by scripts/bench.sh) into the Markdown tables of BENCHMARKS.md.

Each peer result is paired with the next result of ours with the same settings (bench.sh runs them back to back);
the ratio is ours / peer for throughputs and peer / ours for times, so > 1 always means we are faster.
Settings measured in several pairs (bench.sh --rounds K) also get a summary row: the geometric mean of their ratios
with a 95% Student t interval over the pairs (on log ratios: a pair is one observation, since the machine's speed
drifts between pairs but hits both sides of a pair alike), and the issue's target.
Usage: python3 scripts/bench_table.py bench-out/results.jsonl [--since UNIX_TIME]
"""
import argparse
import json
import math
import statistics
import sys

# Two-sided 95% quantiles of Student's t distribution, by degrees of freedom (1..30; more than 30 use 30's).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# The targets (issue 16), ours / peer: decoding's at batch 8 only.
TARGETS = {"decode": 3.0, "train": 1.2, "grpo": 3.0, "pretrain": 1.2}


def target(k):
    if k[0] == "decode" and k[1] != 8:
        return None
    return TARGETS[k[0]]


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def key(r):
    """(kind, settings...) that identify a comparable pair."""
    tool = r.get("tool") or r.get("bench")
    s = r.get("settings", r)
    if tool in ("hf_decode_bench", "decode"):
        return ("decode", s["batch"], s["prompt_tokens"], s["new_tokens"])
    if tool in ("hf_train_bench", "train"):
        # Older records have no micro_batch (one pass over the batch); the peer always runs one pass.
        ours_mb = s.get("micro_batch") if is_ours(r) else None
        return ("train", s["batch"], s["seq"], ours_mb)
    if tool in ("trl_grpo_bench", "grpo"):
        rank = 0 if s.get("fine_tuning", "") == "full" else s.get("lora_rank")
        if rank is None:
            rank = int(s["fine_tuning"].split()[1][1:])
        return ("grpo", rank, s["group"], s["new_tokens"])
    if "framework" in r:  # torch_gpt_bench
        return ("pretrain", r.get("scale", "tiny"), r["threads"])
    if r.get("env") == "pretrain":
        return ("pretrain", r.get("scale", "tiny"), None)
    return None


def is_ours(r):
    return r.get("impl") == "ideator" or r.get("env") == "pretrain"


def interval(ratios):
    """Geometric mean and 95% t interval of ratios (n >= 2), computed on their logarithms."""
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    half = T_975[min(len(logs) - 1, len(T_975)) - 1] * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def ratio(k, peer, ours):
    """ours / peer as speed, > 1 when we are faster."""
    if k[0] == "decode":
        return ours["new_tokens_per_s"] / peer["new_tokens_per_s"]
    if k[0] == "train":
        return ours["tokens_per_s"] / peer["tokens_per_s"]
    if k[0] == "grpo":
        return peer["seconds_per_step"] / ours["seconds_per_step"]
    return ours["metrics"]["tokens_per_second"] / peer["tokens_per_second"]


def sampling_note(ours):
    """'sampling bf16' when our run sampled from a lower-precision copy (decode, grpo), else ''."""
    dtype = ours.get("sampling_dtype", "f32")
    return "" if dtype == "f32" else f"sampling {dtype}"


def summary(pairs):
    """Rows for every setting measured in at least two pairs."""
    by_setting = {}
    for k, peer, ours in pairs:
        threads = ours.get("threads") or peer.get("threads")
        # A lower-precision sampling copy is another setting of ours, never pooled with f32 runs.
        note = sampling_note(ours)
        setting = k + (note,) if note else k
        by_setting.setdefault((setting, threads), []).append(ratio(k, peer, ours))
    rows = [(k, t, r) for (k, t), r in by_setting.items() if len(r) >= 2]
    if not rows:
        return
    print("| setting | threads | pairs | ratios | geometric mean | 95% interval | target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k, threads, ratios in rows:
        mean, lo, hi = interval(ratios)
        goal = target(k)
        if goal is None:
            verdict = "none"
        else:
            verdict = f"{goal}x: " + ("met" if lo >= goal else ("not met" if hi < goal else "undecided"))
        name = " ".join(str(x) for x in k if x is not None)
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| {name} | {threads} | {len(ratios)} | {listed} | **{mean:.2f}x** | {lo:.2f}-{hi:.2f}x | "
              f"{verdict} |")
    print()


def main(path, since=0.0):
    rows = [r for r in load(path) if r.get("recorded_unix", 0) >= since]
    pairs = []
    pending = {}
    for r in rows:
        k = key(r)
        if k is None:
            continue
        if not is_ours(r):
            pending[k[0]] = (k, r)
        elif k[0] in pending:
            # A training peer serves every schedule of ours that follows it (one pass and micro-batches side by
            # side); other peers pair once.
            pk, peer = pending[k[0]] if k[0] == "train" else pending.pop(k[0])
            if k[0] == "pretrain" and pk[1] == k[1]:
                pairs.append((pk, peer, r))  # the peer's key carries the thread count
            elif k[0] == "train" and pk[:3] == k[:3]:
                pairs.append((k, peer, r))  # ours carries the micro-batch
            elif pk == k:
                pairs.append((pk, peer, r))
    decode = [p for p in pairs if p[0][0] == "decode"]
    if decode:
        print("| batch | prompt / new tokens | transformers `generate` tok/s | ours tok/s | ratio | ours decode-only tok/s | ours time to first token |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for k, peer, ours in decode:
            note = sampling_note(ours)
            note = f" ({note})" if note else ""
            print(f"| {k[1]}{note} | {k[2]} / {k[3]} | {peer['new_tokens_per_s']:.1f} | {ours['new_tokens_per_s']:.1f} | "
                  f"**{ratio(k, peer, ours):.2f}x** | {ours['decode_tokens_per_s']:.1f} "
                  f"(peer {peer['decode_tokens_per_s']:.1f}) | {ours['time_to_first_token_s']:.2f} s (peer {peer['time_to_first_token_s']:.2f} s) |")
        print()
    train = [p for p in pairs if p[0][0] == "train"]
    if train:
        print("| batch x seq | our micro-batch | PyTorch fwd+bwd tok/s | ours tok/s | ratio |")
        print("| --- | --- | --- | --- | --- |")
        for k, peer, ours in train:
            mb = k[3] if k[3] is not None else k[1]
            print(f"| {k[1]} x {k[2]} | {mb} | {peer['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
                  f"**{ratio(k, peer, ours):.2f}x** |")
        print()
    grpo = [p for p in pairs if p[0][0] == "grpo"]
    if grpo:
        print("| fine-tuning | TRL s/step (generation / logprobs / update) | ours s/step (generation / reference / update) | speed-up |")
        print("| --- | --- | --- | --- |")
        for k, peer, ours in grpo:
            sp = peer.get("split_median_s", {})
            trl_split = " / ".join(f"{sp.get(n, float('nan')):.1f}" for n in ("generation_s", "ref_logprobs_s", "update_s"))
            name = "full" if k[1] == 0 else f"LoRA r{k[1]}"
            note = sampling_note(ours)
            name += f" ({note})" if note else ""
            print(f"| {name} | {peer['seconds_per_step']:.1f} ({trl_split}) | {ours['seconds_per_step']:.1f} "
                  f"({ours['generation_s']:.1f} / {ours['ref_logprobs_s']:.1f} / {ours['update_s']:.1f}) | "
                  f"**{ratio(k, peer, ours):.2f}x** |")
        print()
    pre = [p for p in pairs if p[0][0] == "pretrain"]
    if pre:
        print("| scale | threads | PyTorch twin tok/s | ours (candle) tok/s | ratio |")
        print("| --- | --- | --- | --- | --- |")
        for k, peer, ours in pre:
            ours_tps = ours["metrics"]["tokens_per_second"]
            print(f"| {k[1]} | {k[2]} | {peer['tokens_per_second']:.0f} | {ours_tps:.0f} | "
                  f"**{ratio(k, peer, ours):.2f}x** |")
        print()
    summary(pairs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="BENCHMARKS.md tables from scripts/bench.sh's records")
    parser.add_argument("results", nargs="?", default="bench-out/results.jsonl")
    parser.add_argument("--since", type=float, default=0.0, metavar="UNIX_TIME",
                        help="only records made at or after this time (one campaign)")
    args = parser.parse_args()
    if not math.isfinite(args.since):
        parser.error(f"--since wants a finite Unix time in seconds, not {args.since}")
    main(args.results, args.since)
