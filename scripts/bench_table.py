#!/usr/bin/env python3
"""Turn bench-out/results.jsonl (written by scripts/bench.sh) into the Markdown tables of BENCHMARKS.md.

Each peer result is paired with the next result of ours with the same settings (bench.sh runs them back to back);
the ratio is ours / peer for throughputs and peer / ours for times, so > 1 always means we are faster.
Usage: python3 scripts/bench_table.py bench-out/results.jsonl
"""
import json
import sys


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def key(r):
    """(kind, settings...) that identify a comparable pair."""
    tool = r.get("tool") or r.get("bench")
    s = r.get("settings", r)
    if tool in ("hf_decode_bench", "decode"):
        return ("decode", s["batch"], s["prompt_tokens"], s["new_tokens"])
    if tool in ("hf_train_bench", "train"):
        return ("train", s["batch"], s["seq"])
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


def main(path):
    rows = load(path)
    pairs = []
    pending = {}
    for r in rows:
        k = key(r)
        if k is None:
            continue
        if not is_ours(r):
            pending[k[0]] = (k, r)
        elif k[0] in pending:
            pk, peer = pending.pop(k[0])
            if (k[0] == "pretrain" and pk[1] == k[1]) or pk == k:
                pairs.append((pk, peer, r))
    decode = [p for p in pairs if p[0][0] == "decode"]
    if decode:
        print("| batch | prompt / new tokens | transformers `generate` tok/s | ours tok/s | ratio | ours decode-only tok/s | ours time to first token |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for k, peer, ours in decode:
            print(f"| {k[1]} | {k[2]} / {k[3]} | {peer['new_tokens_per_s']:.1f} | {ours['new_tokens_per_s']:.1f} | "
                  f"**{ours['new_tokens_per_s'] / peer['new_tokens_per_s']:.2f}x** | {ours['decode_tokens_per_s']:.1f} "
                  f"(peer {peer['decode_tokens_per_s']:.1f}) | {ours['time_to_first_token_s']:.2f} s (peer {peer['time_to_first_token_s']:.2f} s) |")
        print()
    train = [p for p in pairs if p[0][0] == "train"]
    if train:
        print("| batch x seq | PyTorch fwd+bwd tok/s | ours tok/s | ratio |")
        print("| --- | --- | --- | --- |")
        for k, peer, ours in train:
            print(f"| {k[1]} x {k[2]} | {peer['tokens_per_s']:.1f} | {ours['tokens_per_s']:.1f} | "
                  f"**{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x** |")
        print()
    grpo = [p for p in pairs if p[0][0] == "grpo"]
    if grpo:
        print("| fine-tuning | TRL s/step (generation / logprobs / update) | ours s/step (generation / reference / update) | speed-up |")
        print("| --- | --- | --- | --- |")
        for k, peer, ours in grpo:
            sp = peer.get("split_median_s", {})
            trl_split = " / ".join(f"{sp.get(n, float('nan')):.1f}" for n in ("generation_s", "ref_logprobs_s", "update_s"))
            name = "full" if k[1] == 0 else f"LoRA r{k[1]}"
            print(f"| {name} | {peer['seconds_per_step']:.1f} ({trl_split}) | {ours['seconds_per_step']:.1f} "
                  f"({ours['generation_s']:.1f} / {ours['ref_logprobs_s']:.1f} / {ours['update_s']:.1f}) | "
                  f"**{peer['seconds_per_step'] / ours['seconds_per_step']:.2f}x** |")
        print()
    pre = [p for p in pairs if p[0][0] == "pretrain"]
    if pre:
        print("| scale | threads | PyTorch twin tok/s | ours (candle) tok/s | ratio |")
        print("| --- | --- | --- | --- | --- |")
        for k, peer, ours in pre:
            ours_tps = ours["metrics"]["tokens_per_second"]
            print(f"| {k[1]} | {k[2]} | {peer['tokens_per_second']:.0f} | {ours_tps:.0f} | "
                  f"**{ours_tps / peer['tokens_per_second']:.2f}x** |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out/results.jsonl")
