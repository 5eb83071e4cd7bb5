#!/usr/bin/env bash
# Quickstart on a fresh machine: fetch the default assets, build, then a short real RL run of the default ideator
# (SmolLM2-135M-Instruct, LoRA) on the `pretrain` environment at scale `tiny`:
#   1. schema-valid example ideas for the environment,
#   2. a supervised warm-up on them, with the executable share of sampled ideas before and after it,
#   3. GRPO from the warm-up checkpoint: each idea trains a small GPT (one `ideator exec` process per slot),
#      with a summary line per step,
#   4. the HTML report.
# Results land in runs/quickstart/ (rerunning resumes). Measured on two otherwise idle CPU cores with the default
# threads (README has the breakdown, BENCHMARKS.md each machine): 9.1 minutes including the no-op fetch and build on a
# Zen 4 EPYC (family 25 model 17; 2026-12-03, 7.1, 10.3 and 8.5 in earlier runs that day), 7.4 on an Intel Xeon with
# AMX (family 6 model 167, 2026-12-02), 3.2 GB of memory at most.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo build --release --locked --bin ideator
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/ideator"
out=runs/quickstart
mkdir -p "$out"
resume_flag() { [ -d "$1/checkpoints" ] && echo --resume || true; }

echo; echo "== 1. example ideas for the pretrain environment =="
"$bin" env examples pretrain --n 64 --seed 1 --out "$out/pretrain-examples.jsonl"
echo "wrote $out/pretrain-examples.jsonl"

echo; echo "== 2. supervised warm-up =="
# One batch of 16: one prefill of the shared prompt and each decode step's weights read once for all 16 rows
# (24.5 s against 31.0 s for two batches of 8, measured on 2 cores).
eval_args=(--env pretrain --n 16 --batch-size 16 --max-new-tokens 128 --temperature 0.9 --top-p 0.95 --implement-only
  --no-embeddings)
echo "-- before:"
"$bin" eval "${eval_args[@]}"
"$bin" sft --config configs/quickstart-sft.toml $(resume_flag "$out/sft")
echo "-- after:"
"$bin" eval --checkpoint "$out/sft" "${eval_args[@]}"

echo; echo "== 3. GRPO on pretrain (tiny) =="
"$bin" train --config configs/quickstart.toml $(resume_flag "$out/rl")

echo; echo "== 4. report =="
"$bin" report "$out/rl"
echo "metrics per step: $out/rl/metrics.jsonl; every idea: $out/rl/ideas.jsonl; run store: $out/rl/store.sqlite"
echo "next: evolutionary search at the same budget and the comparison (README, worked example):"
echo "  $bin evolve --config configs/evolve-quickstart.toml && $bin compare $out/rl"
echo "report: $out/rl/report.html"
