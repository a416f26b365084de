#!/usr/bin/env bash
# Runs on the GPU machine (device tool), from the repo root, with .device/ carried:
#   bash scripts/gpu-session.sh [check] [debug] [bench8b] [bench1b] [train1b]
# Logs go to $OUT (or ./outputs/gpu-session) and a summary is printed last.
set -uo pipefail
OUT=${OUT:-outputs/gpu-session}
mkdir -p "$OUT"
source .device/device-env.sh
BIN=/tmp/titan-bin
mkdir -p $BIN
for f in .device/pack/*.gz; do b=$(basename "$f" .gz); gunzip -c "$f" > $BIN/$b && chmod +x $BIN/$b; done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
steps=${BENCH_STEPS:-20}
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
    bench8b) timeout 200 $BIN/bench --flavor 8B --n-layers 2 --batch 1 --seq 8192 --steps $steps 2>&1 | tee "$OUT/bench_8b2l.log" | tail -n 16 ;;
    bench1b)
      timeout 200 $BIN/bench --flavor 1B --batch 4 --seq 2048 --steps $steps 2>&1 | tee "$OUT/bench_1b.log" | tail -n 16
      if grep -qi "out of memory" "$OUT/bench_1b.log"; then
        timeout 200 $BIN/bench --flavor 1B --batch 4 --seq 2048 --steps $steps --ac full 2>&1 | tee "$OUT/bench_1b_acfull.log" | tail -n 16
      fi ;;
    train1b) timeout 200 $BIN/train --training.device cuda --model.flavor 1B --training.dataset synthetic \
          --training.local_batch_size 4 --training.seq_len 2048 --training.steps $steps --optimizer.lr 3e-4 \
          --lr_scheduler.warmup_steps 5 --metrics.log_freq 1 --validation.enable false --metrics.enable_plot false \
          --activation_checkpoint.mode ${TRAIN_AC:-full} --job.dump_folder /tmp/train1b 2>&1 | tee "$OUT/train_1b.log" | tail -n 8 ;;
    *) echo "unknown part $w" ;;
  esac
done; done
