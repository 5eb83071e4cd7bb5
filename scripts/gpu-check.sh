#!/usr/bin/env bash
# The GPU path, checked on a machine with one NVIDIA GPU (driver installed, Rust installed, network for the first
# build; nothing else set up). Within about 8 minutes on an H200 + 16 cores:
#   1. builds with `--features cuda` (CUDA compiler and runtime libraries from PyPI wheels: cuda-toolchain.sh),
#   2. runs the device-agnostic tests on the GPU (IDEATOR_TEST_DEVICE=cuda),
#   3. checks log-probs on the GPU against the CPU's f32 ones, in f32 and in bf16 (tolerances: `ideator bench
#      logprobs --help`),
#   4. measures decode tokens/s at batch 1/8/32/128 (f32 and bf16), one GRPO step (full and LoRA), and the
#      pretrain environment's training tokens/s at `small` and `paper` for a fixed number of steps.
# Prints one JSON line per figure on stdout (also appended to bench-out/gpu-check.jsonl, and to $OUT/ when set).
# Fails loudly (non-zero exit, the failing step named) on any error: nothing falls back to the CPU, since every
# command names `--device cuda`, which refuses to run without a working GPU.
# Usage: scripts/gpu-check.sh        (IDEATOR_GPU_CHECK_QUICK=1: fewer repeats, for a second look)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
say() { printf 'gpu-check: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
step() { say "== $* ($(($(date +%s) - t_start)) s)"; }
t_start=$(date +%s)
trap 'say "FAILED at line $LINENO after $(($(date +%s) - t_start)) s"' ERR

# --- The GPU and its driver ------------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this script needs a machine with an NVIDIA GPU and its driver."
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) || die "nvidia-smi cannot see a GPU."
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\.[0-9]*\).*/\1/p' | head -1)
[ -n "$gpu" ] && [ -n "$cap" ] && [ -n "$driver_cuda" ] || die "could not read the GPU's name, compute capability or CUDA version from nvidia-smi."
say "GPU: $gpu (compute capability $cap), driver $driver (CUDA $driver_cuda)"
# candle's kernels are PTX that the driver compiles at start-up: the toolkit must not be newer than the driver.
major=${driver_cuda%%.*}
minor=${driver_cuda#*.}
if [ -z "${IDEATOR_CUDA_VERSION:-}" ]; then
  if [ "$major" -gt 13 ] || { [ "$major" = 13 ] && [ "$minor" -ge 4 ]; }; then
    export IDEATOR_CUDA_VERSION=13.4.92
  elif [ "$major" = 13 ]; then
    export IDEATOR_CUDA_VERSION="13.$minor.*"
  else
    die "the driver supports CUDA $driver_cuda; the cuda build needs a CUDA 13 driver (R580 or newer). Update the driver."
  fi
fi
export CUDA_COMPUTE_CAP="$cap"

# --- Build -------------------------------------------------------------------------------------------------------
step "toolchain (CUDA $IDEATOR_CUDA_VERSION, sm_$cap)"
scripts/cuda-toolchain.sh --runtime >/dev/null
# shellcheck source=/dev/null
. "${IDEATOR_CUDA_TOOLCHAIN:-$root/.cuda-toolchain}/env.sh"
# Linking wants `libcuda.so`; a driver-only machine may have only `libcuda.so.1`: link against that.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
  so1=$(ldconfig -p 2>/dev/null | sed -n 's/.*libcuda\.so\.1 .*=> \(.*\)$/\1/p' | head -1)
  [ -n "$so1" ] || die "no libcuda.so.1 in the linker cache: is the NVIDIA driver installed?"
  mkdir -p "$root/.cuda-toolchain/link"
  ln -sf "$so1" "$root/.cuda-toolchain/link/libcuda.so"
  export LIBRARY_PATH="$root/.cuda-toolchain/link:${LIBRARY_PATH:-}"
fi
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) and run again."
scripts/fetch-assets.sh
export IDEATOR_ASSETS="${IDEATOR_ASSETS:-$root/assets}"
step "build (release, --features cuda)"
cargo build --release --locked --features cuda --bin ideator
cargo test --release --locked --features cuda --no-run -p ideator-model -p ideator-trainer -p ideator-envs 2>&1 | tail -3 >&2

# --- Device-agnostic tests on the GPU -----------------------------------------------------------------------------
step "tests on the GPU (IDEATOR_TEST_DEVICE=cuda)"
export IDEATOR_TEST_DEVICE=cuda
cargo test --release --locked --features cuda -p ideator-model --lib --test decoder --test smollm2
cargo test --release --locked --features cuda -p ideator-trainer --test learnability
cargo test --release --locked --features cuda -p ideator-envs --test gradients
unset IDEATOR_TEST_DEVICE

# --- Figures ------------------------------------------------------------------------------------------------------
mkdir -p bench-out
jsonl=bench-out/gpu-check.jsonl
: >"$jsonl"
bin=target/release/ideator
quick=${IDEATOR_GPU_CHECK_QUICK:-0}
repeats=$([ "$quick" = 1 ] && echo 1 || echo 3)
# Runs one bench command; its last stdout line is the figure (JSON), tagged with the GPU.
figure() {
  local line
  line=$("$bin" "$@" | tail -1) || die "'ideator $*' failed"
  case "$line" in "{"*) ;; *) die "'ideator $*' printed no JSON figure (got: $line)" ;; esac
  line="{\"gpu\": \"$gpu\", ${line#\{}"
  echo "$line" | tee -a "$jsonl"
}
echo "{\"gpu\": \"$gpu\", \"check\": \"environment\", \"compute_cap\": \"$cap\", \"driver\": \"$driver\", \"driver_cuda\": \"$driver_cuda\", \"toolkit\": \"$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')\", \"cpu_cores\": $(nproc)}" | tee -a "$jsonl"

step "log-probs: GPU against the CPU (f32 reference)"
for dtype in f32 bf16; do
  figure bench logprobs --device cuda --dtype "$dtype" --batch 4 --tokens 256
done

step "decode tokens/s"
for dtype in f32 bf16; do
  for batch in 1 8 32 128; do
    figure bench decode --device cuda --dtype "$dtype" --batch "$batch" --prompt-tokens 200 --new-tokens 64 --repeats "$repeats"
  done
done

step "one GRPO step, full fine-tuning and LoRA (group 8, 128 new tokens)"
for rank in 0 16; do
  for dtype in f32 bf16; do
    figure bench grpo --device cuda --dtype "$dtype" --lora-rank "$rank" --group 8 --new-tokens 128 --steps "$repeats" --warmup-steps 1
  done
done

step "pretrain environment training tokens/s"
figure bench pretrain --device cuda --scale small --steps $([ "$quick" = 1 ] && echo 10 || echo 30) --warmup-steps 3
figure bench pretrain --device cuda --scale paper --steps $([ "$quick" = 1 ] && echo 5 || echo 15) --warmup-steps 2

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$jsonl" "$OUT/"; fi
step "done: every check passed; figures in $jsonl"
