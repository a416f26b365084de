#!/usr/bin/env bash
# Reproducible CUDA build of Titan's binaries on a machine with no GPU (and no CUDA toolkit).
#
#   bash scripts/build-cuda.sh                 # trainer + gpu_check + bench
#   TITAN_CUDA_BINS="gpu_check" bash scripts/build-cuda.sh
#   TITAN_CUDA_FEATURES=cuda,nccl TITAN_CUDA_BINS="train nccl_check" bash scripts/build-cuda.sh   # multi-GPU
#
# What it does, and why:
#  1. Installs nvcc 13.0 from NVIDIA's PyPI wheels (scripts/cuda-env.sh, or
#     ../shared/scripts/cuda-env.sh) and exports CUDA_ROOT, CUDA_COMPUTE_CAP=90, ...
#  2. Copies the registry's candle-core 0.11.1 to target-cuda/patched/candle-core and switches
#     its cudarc feature `dynamic-linking` to `dynamic-loading`: the published crate needs
#     libcuda/libcublas/... at link time, which a GPU-less machine lacks; with dynamic loading the
#     binary dlopens them at run time (cudarc refuses both features at once, so feature
#     unification cannot do this). The patch is applied only to this build, through
#     `--config patch.crates-io.candle-core.path=...`, so CPU builds and Cargo.lock are untouched.
#  3. Builds release binaries with `--features cuda` into target-cuda/ (its own target dir, so it
#     neither locks nor thrashes the CPU builds), strips them and copies them to .device/bin/
#     (git-ignored) and gzips them into .device/pack/ for the device tool:
#     `carry: [".device/pack", ".device/device-env.sh"]`, then `bash scripts/gpu-session.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { echo "[build-cuda] $*" >&2; }

# 1. nvcc
CUDA_ENV_SCRIPT=""
for s in scripts/cuda-env.sh ../shared/scripts/cuda-env.sh /work/shared/scripts/cuda-env.sh; do
  if [[ -f "$s" ]]; then CUDA_ENV_SCRIPT="$s"; break; fi
done
[[ -n "$CUDA_ENV_SCRIPT" ]] || { log "no cuda-env.sh found (looked in scripts/, ../shared/scripts/)"; exit 1; }
eval "$(bash "$CUDA_ENV_SCRIPT")"

# 2. patched candle-core
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-cuda}"
CANDLE_VERSION=0.11.1
REGISTRY_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-$CANDLE_VERSION 2>/dev/null | head -n 1 || true)
if [[ -z "$REGISTRY_SRC" ]]; then
  log "candle-core $CANDLE_VERSION not in cargo's registry cache; fetching"
  cargo fetch --quiet
  REGISTRY_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-$CANDLE_VERSION | head -n 1)
fi
PATCHED="$CARGO_TARGET_DIR/patched/candle-core"
if [[ ! -f "$PATCHED/.titan-patched" ]]; then
  log "patching $REGISTRY_SRC -> $PATCHED (cudarc dynamic-linking -> dynamic-loading)"
  rm -rf "$PATCHED"; mkdir -p "$(dirname "$PATCHED")"
  cp -r "$REGISTRY_SRC" "$PATCHED"
  grep -q '"dynamic-linking",' "$PATCHED/Cargo.toml" || { log "candle-core Cargo.toml has no \"dynamic-linking\" feature line: the patch no longer applies"; exit 1; }
  sed -i 's/"dynamic-linking",/"dynamic-loading",/' "$PATCHED/Cargo.toml"
  touch "$PATCHED/.titan-patched"
fi

# 3. build, from a mirror of the workspace: the patch rewrites Cargo.lock's candle-core entry,
# and the real Cargo.lock must stay as CPU builds and CI expect it.
WS="$CARGO_TARGET_DIR/ws"
mkdir -p "$WS"
# tar keeps modification times, so cargo rebuilds only what changed.
tar -C "$ROOT" --exclude=./target --exclude=./target-cuda --exclude=./.git --exclude=./.device \
  --exclude=./outputs -cf - . | tar -C "$WS" -xf -
cd "$WS"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$CUDART_STATIC_DIR"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
PATCH_ARG="patch.crates-io.candle-core.path=\"$PATCHED\""
BINS=${TITAN_CUDA_BINS:-"train gpu_check bench"}
# `cuda,nccl` adds the NCCL process-group backend (multi-GPU training, nccl_check).
FEATURES=${TITAN_CUDA_FEATURES:-cuda}
OUTDIR="$ROOT/.device/bin"
mkdir -p "$OUTDIR"
for bin in $BINS; do
  case "$bin" in
    train)     pkg=titan-trainer;   args=(--example train); src=examples/train ;;
    bench)     pkg=titan-gpu-tests; args=(--bin bench); src=bench ;;
    gpu_check) pkg=titan-gpu-tests; args=(--bin gpu_check); src=gpu_check ;;
    nccl_check) pkg=titan-gpu-tests; args=(--bin nccl_check); src=nccl_check ;;
    *) log "unknown binary '$bin' (known: train bench gpu_check nccl_check)"; exit 1 ;;
  esac
  log "cargo build --release -p $pkg ${args[*]} --features $FEATURES"
  cargo build --release --config "$PATCH_ARG" -p "$pkg" "${args[@]}" --features "$FEATURES"
  src="$CARGO_TARGET_DIR/release/$src"
  strip -o "$OUTDIR/$bin" "$src"
  # Each binary embeds candle's kernels (about 50 MB): gzip for the device tool's 64 MiB
  # carry limit (carry .device/pack and .device/device-env.sh; scripts/gpu-session.sh unpacks).
  mkdir -p "$ROOT/.device/pack"
  gzip -6 -c "$OUTDIR/$bin" > "$ROOT/.device/pack/$bin.gz"
  log "$OUTDIR/$bin: $(du -h "$OUTDIR/$bin" | cut -f1), packed $(du -h "$ROOT/.device/pack/$bin.gz" | cut -f1)"
done
cp "$ROOT/scripts/device-env.sh" "$ROOT/.device/device-env.sh"
du -sh "$ROOT/.device/pack" >&2
