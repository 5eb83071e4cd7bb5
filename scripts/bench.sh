#!/usr/bin/env bash
# Side-by-side benchmarks against the peers (BENCHMARKS.md): for every setting the peer (PyTorch: transformers, TRL,
# or the pretrain twin) and ours run back to back, on the same machine, weights and settings. Each appends one JSON
# line to bench-out/results.jsonl; scripts/bench_table.py turns the file into the tables of BENCHMARKS.md.
#
# Usage: scripts/bench.sh [decode|train|grpo|pretrain|all] [--repeats R] [--quiet-wait S] [--threads N] [--rounds K]
#                         [--sampling-dtype f32|bf16]
# --threads N gives both sides the same N CPU threads (default 2); on a shared machine 1 keeps each side on one
# core and the ratio meaningful. --rounds K runs every (peer, ours) pair K times in a row, alternating, so that a
# noisy machine shows as a spread of ratios instead of one lucky or unlucky pair (default 1); bench_table.py then
# gives each such setting its geometric-mean ratio with a 95% interval over the pairs. --sampling-dtype bf16 makes
# our decode and GRPO runs sample from a bf16 copy of the weights (the peers stay f32; bench_table.py labels these
# rows and never pools them with f32 ones).
# `train` runs ours as the GRPO and SFT learners do: micro-batches of 4 sequences side by side on the threads, their
# gradients summed; the PyTorch peer runs the batch of 8 in one pass.
# Needs: scripts/peers/setup.sh (the peers' venv; PY=... to use another Python), a release build.
# The machine should be otherwise idle: ratios measured while other jobs run mean little (see the Method section).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
shift || true
repeats=3
quiet=120
threads=2
rounds=1
sampling=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --repeats) repeats=$2; shift 2 ;;
    --quiet-wait) quiet=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --sampling-dtype) sampling=$2; shift 2 ;;
    *) echo "bench: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "bench: --rounds wants a positive integer, not '$rounds'" >&2; exit 2; }
[[ "$sampling" =~ ^(f32|bf16)$ ]] || { echo "bench: --sampling-dtype is f32 or bf16, not '$sampling'" >&2; exit 2; }
py="${PY:-$root/.venv-peers/bin/python}"
[ -x "$py" ] || { echo "bench: no Python at $py; run scripts/peers/setup.sh or set PY" >&2; exit 1; }
scripts/fetch-assets.sh
cargo build --release --locked --bin ideator
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/ideator"
out="$root/bench-out"
mkdir -p "$out"
results="$out/results.jsonl"
hf="$out/smollm2-hf"
if [ ! -f "$hf/model.safetensors" ]; then
  echo "bench: converting the GGUF into a Hugging Face folder for the peers (and for us: same weights)" >&2
  "$py" scripts/peers/gguf_to_hf.py assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$hf"
fi

# Appends the last stdout line of a command (its JSON result) to $results, tagged with the run time.
record() {
  local tmp
  tmp=$(mktemp)
  echo "bench: $*" >&2
  if "$@" >"$tmp"; then
    python3 -c 'import json,sys,time; d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); d["recorded_unix"]=time.time(); d["load_avg_1m"]=__import__("os").getloadavg()[0]; print(json.dumps(d))' "$tmp" >>"$results"
  else
    echo "bench: failed: $*" >&2
  fi
  rm -f "$tmp"
}

if [ "$what" = all ] || [ "$what" = decode ]; then
  for b in 1 8 32; do for _ in $(seq "$rounds"); do
    record "$py" scripts/peers/hf_decode_bench.py --model "$hf" --batch $b --prompt-tokens 200 --new-tokens 128 \
      --repeats "$repeats" --quiet-wait "$quiet" --threads "$threads"
    record "$bin" --threads "$threads" bench decode --model "$hf" --batch $b --prompt-tokens 200 --new-tokens 128 --repeats "$repeats" \
      --sampling-dtype "$sampling"
  done; done
fi
if [ "$what" = all ] || [ "$what" = train ]; then
  for _ in $(seq "$rounds"); do
    record "$py" scripts/peers/hf_train_bench.py --model "$hf" --batch 8 --seq 256 --repeats "$repeats" --quiet-wait "$quiet" \
      --threads "$threads"
    record "$bin" --threads "$threads" bench train --model "$hf" --batch 8 --seq 256 --micro-batch 4 --repeats "$repeats"
  done
fi
if [ "$what" = all ] || [ "$what" = grpo ]; then
  for r in 16 0; do for _ in $(seq "$rounds"); do
    record "$py" scripts/peers/trl_grpo_bench.py --model "$hf" --group 8 --prompt-tokens 200 --new-tokens 128 \
      --lora-rank $r --steps 2 --warmup-steps 1 --quiet-wait "$quiet" --threads "$threads"
    record "$bin" --threads "$threads" bench grpo --model "$hf" --group 8 --prompt-tokens 200 --new-tokens 128 --lora-rank $r \
      --steps 2 --warmup-steps 1 --sampling-dtype "$sampling"
  done; done
fi
if [ "$what" = all ] || [ "$what" = pretrain ]; then
  # `small` would train 1,700 steps: our side stops at a time limit and reports the throughput of the steps it
  # completed (metrics.tokens_per_second), the twin runs 12 steps.
  for scale in tiny small; do
    limit=()
    [ "$scale" = small ] && limit=(--time-limit 60)
    for t in 1 2; do for _ in $(seq "$rounds"); do
      record "$py" scripts/peers/torch_gpt_bench.py --scale $scale --threads $t
      record "$bin" --threads $t exec --env pretrain --scale $scale "${limit[@]}" --json # no --idea: the baseline
    done; done
  done
fi
