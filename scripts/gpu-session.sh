#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repo root, with .device/ carried:
#   bash scripts/gpu-session.sh [check] [debug] [bench8b] [bench1b] [train1b] [init1b] [topk] [topk8b]
# Logs go to $OUT (or ./outputs/gpu-session) and a summary is printed last.
# Environment:
#   BENCH_STEPS (20)   steps of bench8b/bench1b/train1b
#   BENCH_OPS (1)      0: no per-op table (bench --ops) after bench8b/bench1b
#   BENCH_ARGS         more arguments for every bench run (e.g. "--fused off")
#   BENCH8B_AC         e.g. "full": bench8b with --ac full from the start
#   TRAIN_AC (full)    activation checkpointing of train1b
# `cargo xtask bench` runs the same bench8b/bench1b commands where a GPU is visible.
set -uo pipefail
OUT=${OUT:-outputs/gpu-session}
mkdir -p "$OUT"
source .device/device-env.sh
BIN=/tmp/titan-bin
mkdir -p $BIN
for f in .device/pack/*.gz; do b=$(basename "$f" .gz); gunzip -c "$f" > $BIN/$b && chmod +x $BIN/$b; done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
steps=${BENCH_STEPS:-20}
ops=""; [ "${BENCH_OPS:-1}" = "1" ] && ops="--ops"
# shellcheck disable=SC2206
extra=(${BENCH_ARGS:-})
# The bench summary and the top of the op table (the whole table is in the log).
show() { sed -n '/--- summary/,$p' "$1" | awk 'NR <= 42 || /^sum of ops|^measured step|^op bench peak/'; }
# bench <log> <args...>: run, show; again with --ac full if it ran out of memory.
bench() {
  local log=$1; shift
  timeout 300 $BIN/bench "$@" $ops "${extra[@]}" > "$OUT/$log.log" 2>&1
  if grep -qi "out of memory" "$OUT/$log.log" && [[ " $* ${extra[*]} " != *" --ac "* ]]; then
    tail -n 3 "$OUT/$log.log"; echo "--- out of memory: again with --ac full"
    timeout 300 $BIN/bench "$@" --ac full $ops "${extra[@]}" > "$OUT/${log}_acfull.log" 2>&1
    log=${log}_acfull
  fi
  grep -m1 "^bench:" "$OUT/$log.log"; show "$OUT/$log.log"
}
for what in "${@:-check debug bench8b bench1b}"; do
for w in $what; do
  echo "=== $w ($(date -u +%FT%TZ))"
  case $w in
    check) timeout 240 $BIN/gpu_check --device cuda 2>&1 | tee "$OUT/gpu_check.log" ;;
    debug)
      for dev in cuda cpu; do
        timeout 200 $BIN/train --training.device $dev --training.steps 50 --metrics.log_freq 1 \
          --validation.enable false --metrics.enable_plot false --job.dump_folder /tmp/dbg_$dev \
          2>&1 | tee "$OUT/debug_$dev.log" | grep -E "step: *(1|10|20|30|40|50) |rror" ; done ;;
    bench8b)
      ac8=(); [ -n "${BENCH8B_AC:-}" ] && ac8=(--ac "$BENCH8B_AC")
      bench bench_8b2l --flavor 8B --n-layers 2 --batch 1 --seq 8192 --steps $steps "${ac8[@]}" ;;
    bench1b) bench bench_1b --flavor 1B --batch 4 --seq 2048 --steps $steps ;;
    init1b)
      # Launch-time breakdown: device open, host draw of the initial weights, upload.
      timeout 200 $BIN/bench --flavor 1B --init-only "${extra[@]}" 2>&1 | tee "$OUT/init_1b.log" | tail -n 6 ;;
    topk) bash scripts/top-kernels.sh 1b "${extra[@]}" ;;
    topk8b) bash scripts/top-kernels.sh 8b-2l "${extra[@]}" ;;
    train1b) timeout 200 $BIN/train --training.device cuda --model.flavor 1B --training.dataset synthetic \
          --training.local_batch_size 4 --training.seq_len 2048 --training.steps $steps --optimizer.lr 3e-4 \
          --lr_scheduler.warmup_steps 5 --metrics.log_freq 1 --validation.enable false --metrics.enable_plot false \
          --activation_checkpoint.mode ${TRAIN_AC:-full} --job.dump_folder /tmp/train1b 2>&1 | tee "$OUT/train_1b.log" | tail -n 8 ;;
    *) echo "unknown part $w (known: check debug bench8b bench1b init1b topk topk8b train1b)" ;;
  esac
done; done
