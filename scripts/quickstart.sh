#!/usr/bin/env bash
# Quickstart on a fresh machine: fetch the default assets, build, then a real (short) RL run of the default ideator
# (SmolLM2-135M-Instruct) on the `toy` environment:
#   1. write schema-valid example ideas for the environment,
#   2. a supervised warm-up (LoRA) on them, and the executable share of sampled ideas before and after it,
#   3. GRPO from the warm-up checkpoint, printing a summary per step,
#   4. the run's HTML report (runs/quickstart/rl/report.html).
# Results land in runs/quickstart/. Takes about 10 minutes on two CPU cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo build --release --locked --bin ideator
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/ideator"
out=runs/quickstart
mkdir -p "$out"

echo; echo "== 1. example ideas for the toy environment =="
"$bin" env examples toy --n 96 --seed 1 --out "$out/toy-examples.jsonl"
echo "wrote $out/toy-examples.jsonl"

echo; echo "== 2. supervised warm-up =="
echo "-- before the warm-up:"
"$bin" eval --env toy --n 16 --max-new-tokens 96 --temperature 0.9 --top-p 0.95 --no-embeddings
resume=""
[ -d "$out/sft/checkpoints" ] && resume="--resume"
"$bin" sft --config configs/quickstart-sft.toml $resume
echo "-- after the warm-up:"
"$bin" eval --env toy --checkpoint "$out/sft" --n 16 --max-new-tokens 96 --temperature 0.9 --top-p 0.95 --no-embeddings

echo; echo "== 3. GRPO on the toy environment =="
resume=""
[ -d "$out/rl/checkpoints" ] && resume="--resume"
"$bin" train --config configs/quickstart.toml $resume
echo
echo "metrics per step: $out/rl/metrics.jsonl; every idea with its result: $out/rl/ideas.jsonl"

echo; echo "== 4. report =="
"$bin" report "$out/rl"
