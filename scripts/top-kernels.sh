#!/usr/bin/env bash
# The top CUDA kernels of Titan's training step, by GPU time, as a markdown table.
#
#   bash scripts/top-kernels.sh [1b|8b-2l] [more bench args, e.g. --fused off]
#
# Runs on the GPU machine from the repository root with .device/ carried (as gpu-session.sh;
# .device/bin/bench is used when present, else .device/pack/bench.gz is unpacked).
# The bench runs 4 steps and opens the CUDA profiler range around steps 3-4 only
# (`bench --profile-steps 3-4`: cuProfilerStart/Stop), so warm-up and init are not profiled.
# Nsight Compute records one metric per kernel with the clocks left alone and caches not
# flushed:
#   ncu --profile-from-start off --clock-control none --cache-control none
#       --metrics gpu__time_duration.sum --csv
# and the kernel times are summed per kernel name (python3). ncu serializes kernels, so this
# is a per-kernel view, not the overlapped step time (bench --ops gives per-op CUDA-event times).
# If ncu is missing or fails (often: no permission for GPU performance counters in a
# container), it says so, tries Nsight Systems (nsys, CUDA trace only, no counters) over the
# same range, and exits 0 either way.
set -uo pipefail
OUT=${OUT:-outputs/gpu-session}
mkdir -p "$OUT"
shape=${1:-1b}
[ $# -gt 0 ] && shift
case $shape in
  1b) args=(--flavor 1B --batch 4 --seq 2048) ;;
  8b-2l) args=(--flavor 8B --n-layers 2 --batch 1 --seq 8192) ;;
  *) echo "top-kernels: unknown shape '$shape' (1b or 8b-2l)"; exit 0 ;;
esac
args+=(--steps 4 --warmup 2 --fwd-probe 0 --profile-steps 3-4 "$@")
NSTEPS=2
[ -f .device/device-env.sh ] && source .device/device-env.sh
BENCH=.device/bin/bench
if [ ! -x "$BENCH" ]; then
  if [ -f .device/pack/bench.gz ]; then
    BENCH=/tmp/titan-bin/bench; mkdir -p /tmp/titan-bin
    gunzip -c .device/pack/bench.gz > "$BENCH" && chmod +x "$BENCH"
  else
    echo "top-kernels: no bench binary (.device/bin/bench or .device/pack/bench.gz)"; exit 0
  fi
fi
find_tool() {
  local t=$1 p
  p=$(command -v "$t" 2>/dev/null) && { echo "$p"; return; }
  for p in /usr/local/cuda/bin/$t /opt/nvidia/nsight-compute/*/$t /opt/nvidia/nsight-systems/*/bin/$t \
           /usr/local/cuda/nsight-compute*/$t /usr/local/cuda/nsight-systems*/bin/$t; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
}
tag=${shape//-/}
ncu_log="$OUT/ncu_$tag.csv"
echo "=== top kernels, $shape: bench ${args[*]}"

# Sum kernel times per name from a tool's CSV output and print the top 20:
#   aggregate <file> <name column[|alternative]> <time column> <unit column|-> <count column|-> <steps>
aggregate() {
  python3 - "$@" <<'PY'
import csv, sys
path, name_col, val_col, unit_col, count_col, steps = sys.argv[1:7]
steps = int(steps)
scale = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}
def pick(head, names):
    for n in names.split("|"):
        if n in head:
            return head.index(n)
    raise ValueError(f"none of {names!r}")
# Tools print other lines around the CSV: start at the header that names the columns.
text = open(path, errors="replace").read().splitlines()
start = next((i for i, l in enumerate(text) if any(n in l for n in name_col.split("|")) and val_col in l), None)
if start is None:
    sys.exit(f"no CSV header with {name_col} and {val_col} in {path}")
rows = list(csv.reader(text[start:]))
head, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]
try:
    ni, vi = pick(head, name_col), pick(head, val_col)
    ui = pick(head, unit_col) if unit_col != "-" else None
    ci = pick(head, count_col) if count_col != "-" else None
except ValueError as e:
    sys.exit(f"unexpected columns in {path}: {e}; header {head}")
tot, cnt = {}, {}
for r in body:
    if len(r) <= max(ni, vi):
        continue
    try:
        v = float(r[vi].replace(",", ""))
    except ValueError:
        continue
    unit = r[ui] if ui is not None else "nsecond"
    ms = v * scale.get(unit, 1e-6)
    n = int(float(r[ci].replace(",", ""))) if ci is not None else 1
    tot[r[ni]] = tot.get(r[ni], 0.0) + ms
    cnt[r[ni]] = cnt.get(r[ni], 0) + n
if not tot:
    sys.exit("no kernel times in " + path)
total = sum(tot.values())
print(f"kernel time per step {total / steps:.1f} ms over {sum(cnt.values()) / steps:.0f} launches ({len(tot)} kernel names, {steps} steps profiled)\n")
print("| # | kernel | calls/step | ms/step | % of kernel time | us/call |")
print("|---|---|---|---|---|---|")
for i, (name, ms) in enumerate(sorted(tot.items(), key=lambda kv: -kv[1])[:20], 1):
    short = name if len(name) <= 90 else name[:87] + "..."
    short = short.replace("|", "\\|")
    print(f"| {i} | `{short}` | {cnt[name] / steps:g} | {ms / steps:.3f} | {100 * ms / total:.1f}% | {1e3 * ms / cnt[name]:.1f} |")
PY
}

NCU=$(find_tool ncu)
if [ -n "$NCU" ]; then
  echo "ncu: $NCU ($("$NCU" --version 2>/dev/null | tail -n 1))"
  timeout "${TOPK_TIMEOUT:-540}" "$NCU" --profile-from-start off --clock-control none --cache-control none \
    --metrics gpu__time_duration.sum --csv --print-units base --print-kernel-base function \
    --log-file "$ncu_log" "$BENCH" "${args[@]}" > "$OUT/topk_bench_$tag.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && aggregate "$ncu_log" "Kernel Name|Function Name" "Metric Value" "Metric Unit" - $NSTEPS > "$OUT/top_kernels_$tag.md" 2> "$OUT/topk_err.txt"; then
    cat "$OUT/top_kernels_$tag.md"
    exit 0
  fi
  echo "ncu failed (exit $rc): $(grep -hE 'ERR|==ERROR==|rror' "$ncu_log" "$OUT/topk_bench_$tag.log" "$OUT/topk_err.txt" 2>/dev/null | head -n 3)"
else
  echo "ncu not found (PATH, /usr/local/cuda/bin, /opt/nvidia/nsight-compute)"
fi

NSYS=$(find_tool nsys)
if [ -z "$NSYS" ]; then
  echo "nsys not found either: no kernel table. bench --ops gives per-op CUDA-event times."
  exit 0
fi
echo "trying nsys: $NSYS"
rep="$OUT/topk_$tag"
timeout "${TOPK_TIMEOUT:-540}" "$NSYS" profile --capture-range=cudaProfilerApi --capture-range-end=stop \
  --trace=cuda --sample=none --cpuctxsw=none --force-overwrite=true -o "$rep" \
  "$BENCH" "${args[@]}" > "$OUT/topk_bench_$tag.log" 2>&1
"$NSYS" stats --report cuda_gpu_kern_sum --format csv --output "$rep" --force-export=true "$rep.nsys-rep" \
  > /dev/null 2>> "$OUT/topk_err.txt"
csvf=$(ls "${rep}"*cuda_gpu_kern_sum*.csv 2>/dev/null | head -n 1)
if [ -n "$csvf" ] && aggregate "$csvf" "Name" "Total Time (ns)" - "Instances" $NSTEPS > "$OUT/top_kernels_$tag.md" 2>> "$OUT/topk_err.txt"; then
  echo "(from nsys: kernel durations from the CUDA trace)"
  cat "$OUT/top_kernels_$tag.md"
else
  echo "nsys failed too: $(tail -n 3 "$OUT/topk_err.txt" "$OUT/topk_bench_$tag.log" 2>/dev/null | tr '\n' ' ')"
fi
exit 0
