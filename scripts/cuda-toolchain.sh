#!/usr/bin/env bash
# The CUDA compiler and headers that `--features cuda` needs, from PyPI wheels, without a GPU, a driver or root.
# Installs into .cuda-toolchain/ (ignored by git; override with IDEATOR_CUDA_TOOLCHAIN) and writes
# .cuda-toolchain/env.sh, which a build sources:
#   eval "$(scripts/cuda-toolchain.sh)"              # install if needed, print the environment, eval it here
#   scripts/cuda-toolchain.sh >/dev/null && . .cuda-toolchain/env.sh   # the same, in two steps
#   scripts/cuda-toolchain.sh --runtime             # also cuBLAS, cuRAND and NVRTC, to RUN on a GPU machine
#                                                   # that has a driver but no CUDA toolkit
#   scripts/cuda-toolchain.sh --check               # exit 1 if the toolchain is missing or incomplete
# Idempotent: a toolchain whose nvcc reports the wanted version is not installed again.
#
# Why these wheels (../DESIGN.md section 7, verified on a CPU-only machine): the CUDA 12 wheels ship ptxas but not
# nvcc; the CUDA 13 ones ship nvcc, cudafe++, ptxas, fatbinary and nvlink. 13.4.92 by default because cudarc
# 0.19.10's build script knows CUDA versions up to 13.4 and panics on 13.5. IDEATOR_CUDA_VERSION picks another
# 13.x release (e.g. `13.0.*`): candle compiles its kernels to PTX, which the driver compiles when a program
# starts, and a driver refuses PTX from a toolkit newer than itself, so on a GPU machine the toolkit must not be
# newer than the driver's "CUDA Version" (nvidia-smi); scripts/gpu-check.sh chooses it that way.
# The wheels carry no `libcuda.so` (it comes with the driver): `cargo check` needs none, a full build links only
# where a driver is installed.
# CUDA_COMPUTE_CAP defaults to 90 (H100/H200) because there is no GPU to ask; set it before calling to override
# (e.g. 80 for A100). On a machine with a GPU, `nvidia-smi --query-gpu=compute_cap` gives the right value.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="${IDEATOR_CUDA_TOOLCHAIN:-$root/.cuda-toolchain}"
CUDA_VERSION="${IDEATOR_CUDA_VERSION:-13.4.92}"
case "$CUDA_VERSION" in
  13.[0-4].*) ;;
  *) echo "cuda-toolchain: error: IDEATOR_CUDA_VERSION=$CUDA_VERSION: write a CUDA 13.0-13.4 release such as 13.4.92 or 13.0.* (older releases ship no nvcc wheel, cudarc 0.19.10 does not know 13.5)" >&2; exit 1 ;;
esac
# "13.4.92" -> "13.4": what `nvcc --version` reports as its release.
CUDA_RELEASE=$(echo "$CUDA_VERSION" | cut -d. -f1,2)
CUDA_MINOR=$(echo "$CUDA_VERSION" | cut -d. -f2)
PACKAGES=(
  "nvidia-cuda-nvcc==$CUDA_VERSION"
  "nvidia-cuda-crt==$CUDA_VERSION"
  "nvidia-nvvm==$CUDA_VERSION"
  "nvidia-cuda-runtime==$CUDA_VERSION"
  # CCCL (cub, thrust, libcu++ headers) is versioned on its own and does not publish a wheel for every CUDA
  # release (PyPI has 13.0.x to 13.3.x; none for 13.4), so take the newest one not newer than the toolkit.
  "nvidia-cuda-cccl>=13.0,<13.$((CUDA_MINOR + 1))"
)
# What candle loads at run time besides the driver. Any CUDA 13 release of these runs on any CUDA 13 driver
# (CUDA's minor-version compatibility, which covers libraries but not PTX).
RUNTIME_PACKAGES=(
  "nvidia-cublas>=13,<14"
  "nvidia-curand>=10.4,<10.5"
  "nvidia-cuda-nvrtc==$CUDA_VERSION"
)

say() { printf 'cuda-toolchain: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# The wheels unpack their CUDA 13 tree at nvidia/cu13 inside the install target.
cuda_root="$dest/site/nvidia/cu13"
installed() {
  [ -x "$cuda_root/bin/nvcc" ] && [ -f "$cuda_root/include/cuda_runtime.h" ] && [ -d "$cuda_root/include/cccl/cub" ] &&
    "$cuda_root/bin/nvcc" --version 2>/dev/null | grep -q "release ${CUDA_RELEASE},"
}
runtime_installed() { compgen -G "$cuda_root/lib/libcublas.so.*" >/dev/null && compgen -G "$cuda_root/lib/libcurand.so.*" >/dev/null; }

pip_install() { # what packages...
  local what=$1
  shift
  command -v python3 >/dev/null 2>&1 || die "python3 is not installed; it is needed to install the CUDA wheels (apt-get install python3)."
  python3 -m pip --version >/dev/null 2>&1 || die "pip is not available for python3; it is needed to install the CUDA wheels (apt-get install python3-pip)."
  say "CUDA $CUDA_VERSION $what: installing $* into $dest"
  mkdir -p "$dest"
  # --target keeps the wheels out of any Python environment; --no-deps because the lists above are the whole set.
  if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --target "$dest/site" "$@" >"$dest/pip.log" 2>&1; then
    cat "$dest/pip.log" >&2
    die "pip could not install the CUDA wheels (offline, or the package index is unreachable). Check the network or PIP_INDEX_URL and run again."
  fi
}

write_env() {
  local cap="${CUDA_COMPUTE_CAP:-90}"
  cat >"$dest/env.sh" <<EOF
# Written by scripts/cuda-toolchain.sh: the environment a \`--features cuda\` build needs. Source it.
export CUDA_ROOT="$cuda_root"
export CUDA_PATH="$cuda_root"
export CUDA_HOME="$cuda_root"
export PATH="$cuda_root/bin:\$PATH"
export CPATH="$cuda_root/include\${CPATH:+:\$CPATH}"
export LIBRARY_PATH="$cuda_root/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$cuda_root/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-$cap}"
EOF
}

runtime=0
case "${1:-}" in
  --check) ;;
  --runtime) runtime=1 ;;
  "") ;;
  *) die "unknown option '$1': use --check, --runtime or nothing" ;;
esac

if [ "${1:-}" = "--check" ]; then
  installed || { say "missing or incomplete: CUDA $CUDA_VERSION toolchain in $dest (run scripts/cuda-toolchain.sh)"; exit 1; }
  say "CUDA $CUDA_VERSION toolchain present in $dest"
  exit 0
fi

if installed; then
  say "CUDA $CUDA_VERSION toolchain: present in $dest"
else
  rm -rf "$dest/site"
  pip_install toolchain "${PACKAGES[@]}"
  installed || die "the wheels installed but $cuda_root/bin/nvcc is missing or not release $CUDA_RELEASE; see $dest/pip.log."
fi
if [ $runtime = 1 ]; then
  if runtime_installed; then
    say "CUDA runtime libraries: present in $cuda_root/lib"
  else
    pip_install "runtime libraries" "${RUNTIME_PACKAGES[@]}"
    runtime_installed || die "the runtime wheels installed but $cuda_root/lib has no libcublas/libcurand; see $dest/pip.log."
  fi
fi
write_env
say "environment written to $dest/env.sh (CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90})"
cat "$dest/env.sh"
