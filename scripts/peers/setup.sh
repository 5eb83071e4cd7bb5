#!/usr/bin/env bash
# Create the Python environment of the peer benchmarks (transformers, TRL, PyTorch) in .venv-peers/ (ignored by git).
# Idempotent: when the venv already holds every pinned version, nothing is installed.
# Usage: scripts/peers/setup.sh [--check]     (--check only verifies the pins; exit 1 if something is missing)
# Environment: PYTHON   interpreter to build the venv with (default python3; 3.10 or newer)
#              VENV     where the venv lives (default <repo>/.venv-peers)
# Packages come from the package index pip is configured for (PIP_INDEX_URL etc. are honoured). On Linux x86-64 the
# default torch wheel is the CUDA build, a download of a few GB; the benchmarks use its CPU path.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="${VENV:-$root/.venv-peers}"
python="${PYTHON:-python3}"
check_only=0
[ "${1:-}" = "--check" ] && check_only=1

# Versions measured together on the reference machine (the versions of /tmp/peers when the peers were written).
PINS=(
  torch==2.15.0
  transformers==5.24.0
  tokenizers==0.23.3
  safetensors==0.8.0
  accelerate==1.15.0
  trl==1.16.0
  peft==0.21.2
  datasets==5.2.0
  gguf==0.19.0
  numpy==2.4.6
  sentence-transformers==6.2.0
)

say() { printf 'peers-setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Prints the pins the venv does not satisfy (empty output = all satisfied).
missing_pins() {
  "$venv/bin/python" - "${PINS[@]}" <<'EOF'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    # torch wheels carry a local build tag (2.15.0+cu132): compare the public version only.
    if have is None or have.split("+")[0] != want:
        print(f"{pin} (installed: {have or 'none'})")
EOF
}

if [ -x "$venv/bin/python" ]; then
  missing=$(missing_pins)
  if [ -z "$missing" ]; then
    say "$venv already has every pinned package; nothing to do"
    exit 0
  fi
  [ $check_only = 1 ] && { say "$venv lacks:"; printf '%s\n' "$missing" | sed 's/^/  /' >&2; exit 1; }
elif [ $check_only = 1 ]; then
  say "no venv at $venv; run scripts/peers/setup.sh"
  exit 1
fi

command -v "$python" >/dev/null 2>&1 ||
  die "'$python' was not found. Install Python 3.10 or newer (e.g. apt-get install python3 python3-venv python3-pip) or set PYTHON=/path/to/python3."
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "$("$python" --version 2>&1) is too old: transformers 5 needs Python 3.10 or newer. Set PYTHON to a newer interpreter."

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv" 2>/dev/null ||
    { rm -rf "$venv"; die "'$python -m venv' failed: the venv module (and its pip) is missing. On Debian/Ubuntu: apt-get install python3-venv."; }
fi
"$venv/bin/python" -m pip --version >/dev/null 2>&1 ||
  die "pip is not available inside $venv. Remove it and install pip for $python (apt-get install python3-pip), then run again."

say "installing ${#PINS[@]} pinned packages into $venv (torch is large; this takes a while)"
log="$venv/pip-install.log"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check "${PINS[@]}" >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  die "pip could not install the pinned packages (offline, or the package index is unreachable?). Full log: $log. Check the network or PIP_INDEX_URL and run again."
fi
missing=$(missing_pins)
[ -z "$missing" ] || die "after installing, these pins are still not satisfied: $missing (see $log)"
say "ready: $venv (run the peers with $venv/bin/python scripts/peers/...)"
