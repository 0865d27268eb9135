#!/usr/bin/env bash
# The rate-distortion table of docs/bench/pipeline.md: for each method and target bits per weight,
# `nwc compress --target-bpw` (whole file, every byte counted), then `nwc decompress`, with wall
# times. Prints one markdown row per run.
#
# usage: bench/pipeline_table.sh NWC MODEL CODECS THREADS "TARGETS" "METHODS"
#   NWC      the nwc program (build-*/tools/nwc)
#   MODEL    the model file (e.g. $NWC_DATA_DIR/mt3.safetensors)
#   CODECS   comma-separated codec files for --method nwc (--target-bpw picks the nearest)
#   THREADS  --threads for both commands
set -euo pipefail
nwc=$1; model=$2; codecs=$3; threads=${4:-2}; targets=${5:-"3 4 5 6"}; methods=${6:-"rtn gptq ecsq nwc"}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo "| method | target | bits/weight (file) | relative MSE | setting | passes | compress s (search) | compress s (one pass) | decompress s |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for method in $methods; do
  for target in $targets; do
    extra=""
    if [ "$method" = nwc ]; then extra="--codec $codecs"; fi
    start=$(date +%s.%N)
    "$nwc" compress "$model" -o "$work/m.nwc" --method "$method" --target-bpw "$target" --threads "$threads" --json $extra > "$work/c.json" 2> "$work/c.err" || true
    middle=$(date +%s.%N)
    "$nwc" decompress "$work/m.nwc" -o "$work/m.safetensors" --threads "$threads" > /dev/null
    end=$(date +%s.%N)
    python3 - "$work/c.json" "$method" "$target" "$start" "$middle" "$end" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
method, target, start, middle, end = sys.argv[2], sys.argv[3], *map(float, sys.argv[4:7])
codec = report.get("codec")
setting = report["setting"] + (" (" + codec.split("/")[-1] + ")" if codec else "")
print(f"| {method} | {target} | {report['bits_per_weight']:.4f} | {report['relative_mse']:.4e} | {setting} | {report['passes']} "
      f"| {middle - start:.1f} | {report['final_pass_seconds']:.1f} | {end - middle:.1f} |")
PY
  done
done
