#!/usr/bin/env bash
# Run the standard set of peer measurements and collect each one's JSON result line into one JSONL file.
# A driver that also runs our side can call the same scripts with the same flags; this is the peer half on its own.
# Usage: scripts/peers/run_peers.sh [--model DIR] [--out FILE] [--only decode|train|grpo] [--quiet-wait S]
# Environment: PY  the Python to use (default: .venv-peers/bin/python, created by scripts/peers/setup.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py="${PY:-$root/.venv-peers/bin/python}"
model=/tmp/smollm2-hf
out="$root/bench-out/peers.jsonl"
only=all
quiet=600
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --quiet-wait) quiet=$2; shift 2 ;;
    *) echo "run_peers: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -x "$py" ] || { echo "run_peers: no Python at $py; run scripts/peers/setup.sh or set PY" >&2; exit 1; }
[ -f "$model/config.json" ] || {
  echo "run_peers: $model has no config.json; convert first: $py $here/gguf_to_hf.py assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $model" >&2
  exit 1
}
mkdir -p "$(dirname "$out")"

# Runs one peer, shows its progress, appends its last stdout line (the JSON result) to $out.
measure() {
  local tmp
  tmp=$(mktemp)
  echo "run_peers: $*" >&2
  if "$py" "$@" --quiet-wait "$quiet" >"$tmp"; then
    tail -n 1 "$tmp" >>"$out"
  else
    echo "run_peers: failed: $*" >&2
  fi
  rm -f "$tmp"
}

if [ "$only" = all ] || [ "$only" = decode ]; then
  for b in 1 8 32; do
    measure "$here/hf_decode_bench.py" --model "$model" --batch $b --prompt-tokens 200 --new-tokens 128 --repeats 3
  done
fi
if [ "$only" = all ] || [ "$only" = train ]; then
  measure "$here/hf_train_bench.py" --model "$model" --batch 8 --seq 256 --repeats 3
fi
if [ "$only" = all ] || [ "$only" = grpo ]; then
  for r in 0 16; do
    measure "$here/trl_grpo_bench.py" --model "$model" --group 8 --prompt-tokens 200 --new-tokens 128 \
      --lora-rank $r --steps 3 --warmup-steps 1
  done
fi
echo "run_peers: results in $out" >&2
