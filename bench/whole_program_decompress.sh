#!/usr/bin/env bash
# Issue 15's whole-program figure: `nwc decompress` of a whole model (process start to the renamed
# output file, fsync included) in weights per second, beside bench_pipeline's in-situ decompress
# rate for the same method and thread count measured in the same run; the goal is a ratio of at
# least 0.5. Prints one markdown row per method and thread count (docs/bench/scale.md).
#
# usage: bench/whole_program_decompress.sh BUILD MODEL [METHODS] [RUNS]
#   BUILD    a build tree with tools/nwc and bench/nwc_bench_pipeline (build-release, build)
#   MODEL    the model to compress once per method: the synthetic 111M-weight directory of
#            `BUILD/bench/nwc_make_synthetic_llama /tmp/synth111`
#   METHODS  default "ecsq tcq lossless rtn"; nwc uses codecs/nwc-32x1-l300.nwcc for both
#   RUNS     decompress runs per row, the median and the fastest are shown (default 9): on a
#            virtual machine the kernel's copy into the page cache is sometimes several times
#            slower (docs/bench/scale.md), so single runs are bimodal
# Needs NWC_DATA_DIR (bench_pipeline reads mt3.safetensors) and python3.
set -euo pipefail
build=$1; model=$2; methods=${3:-"ecsq tcq lossless rtn"}; runs=${4:-9}
root=$(cd "$(dirname "$0")/.." && pwd)
codec="$root/codecs/nwc-32x1-l300.nwcc"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
index_of() {  # bench_pipeline's method index (method_names in bench/bench_pipeline.cpp)
  case $1 in raw) echo 0;; rtn) echo 1;; gptq) echo 2;; ecsq) echo 3;; nwc) echo 4;; tcq) echo 5;; lossless) echo 6;; esac
}
echo "| method | threads | whole program: median wall (s) | fastest (s) | whole program, median (M weights/s) | in situ (M weights/s) | ratio (median) | ratio (fastest) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for method in $methods; do
  extra=()
  if [ "$method" = nwc ]; then extra=(--codec "$codec"); fi
  "$build/tools/nwc" compress "$model" -o "$work/m.nwc" --method "$method" --threads 2 --json "${extra[@]}" > "$work/c.json"
  weights=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["weights"])' "$work/c.json")
  for threads in 1 2; do
    : > "$work/walls"
    for _ in $(seq "$runs"); do
      rm -f "$work/out.safetensors"
      sync
      /usr/bin/time -f "%e" -a -o "$work/walls" "$build/tools/nwc" decompress "$work/m.nwc" -o "$work/out.safetensors" --threads "$threads" > /dev/null
    done
    NWC_BENCH_CODEC="$codec" "$build/bench/nwc_bench_pipeline" --benchmark_filter="^decompress/method:$(index_of "$method")/threads:$threads/" \
      --benchmark_format=json > "$work/b.json" 2> /dev/null
    python3 - "$method" "$threads" "$weights" "$work/walls" "$work/b.json" <<'PY'
import json, statistics, sys
method, threads, weights = sys.argv[1], sys.argv[2], int(sys.argv[3])
walls = [float(line) for line in open(sys.argv[4]) if line.strip()]
wall, fastest = statistics.median(walls), min(walls)
in_situ = json.load(open(sys.argv[5]))["benchmarks"][0]["items_per_second"]
whole = weights / wall
print(f"| {method} | {threads} | {wall:.2f} | {fastest:.2f} | {whole / 1e6:.0f} | {in_situ / 1e6:.0f} | {whole / in_situ:.2f} | {weights / fastest / in_situ:.2f} |")
PY
  done
done
