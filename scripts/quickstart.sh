#!/usr/bin/env bash
# Quickstart on a fresh machine: fetch the embedded default assets, build, and sample research ideas from the
# default ideator (SmolLM2-135M-Instruct). As the project grows this becomes a short real RL run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-assets.sh
cargo build --release --locked --bin ideator
bin=target/release/ideator
[ -x "$bin" ] || bin=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/ideator

echo
echo "== Sampling 4 ideas from the default ideator =="
"$bin" sample --chat \
  --system "You are a machine-learning researcher. Answer with one concrete idea." \
  --prompt "Propose one change to the training recipe of a small GPT that lowers its validation loss under a fixed compute budget." \
  --n 4 --max-new-tokens 96 --temperature 0.8 --top-p 0.95 --seed 1
