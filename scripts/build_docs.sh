#!/bin/bash
# Run after editing a page under docs/format/ or docs/bench/; the two merged pages are committed.
# Builds docs/FORMAT.md and docs/BENCHMARKS.md from the per-component pages.
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# A page's headings go one level down (its title becomes a section); lines inside ``` blocks stay.
demote() { awk '/^```/ { code = !code } !code && /^#/ { $0 = "#" $0 } { print }' "$1"; }
{
echo "# nwc file and bitstream formats"
echo
echo "Every format nwc reads or writes, byte by byte. All integers are little-endian. Every nwc file"
echo "(container, codec file) carries a magic, a version and CRC-32Cs (Castagnoli; check value"
echo "crc32c(\"123456789\") = 0xE3069283); method metadata and rANS streams inside a container carry a"
echo "version byte (codec references a magic) and rely on the container's per-region CRC-32Cs."
echo "Readers treat every byte as hostile: sizes are checked against the bytes present before anything"
echo "is allocated, and every violation is an \`nwc::error\` naming the context and byte offset."
echo
echo "Sections (one per component; the sources of this page are in docs/format/):"
for f in container methods rans lossless_float codec quant safetensors llm; do
  [ -f docs/format/$f.md ] && echo "- [$(head -1 docs/format/$f.md | sed 's/^# *//')](#$(head -1 docs/format/$f.md | sed 's/^# *//' | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9 -]//g; s/ /-/g'))"
done
for f in container methods rans lossless_float codec quant safetensors llm; do
  [ -f docs/format/$f.md ] || continue
  echo; echo "---"; echo
  demote docs/format/$f.md
done
} > docs/FORMAT.md
{
echo "# nwc benchmarks"
echo
echo "Measured on this project's machine (2 cores, AMD Zen 5 with AVX-512, 24 GiB), g++ 12, Release"
echo "(-O3 -march=native). While these were measured the machine was shared by several concurrent builds"
echo "(load average 4-19 on 2 cores), so the pages quote CPU time where wall time was distorted; every"
echo "figure comes with its same-run reference (scalar path, Eigen GEMM, memcpy) and the command that"
echo "produced it. GPU figures (docs/bench/decode.md, section GPU) come from an NVIDIA H200 lent for one"
echo "session (2026-12-04); CI has no GPU, so there the CUDA programs are compiled and linked, and skip."
echo
echo 'The commands name one program per component, `build/bench/nwc_bench_<component>`. The default'
echo 'build (NWC_UNITY, what scripts/test.sh and CI build) compiles every benchmark into one program,'
echo '`build/bench/nwc_benchmarks` (`--benchmark_filter` picks rows; names may repeat across'
echo 'components), and builds the per-component ones on request:'
echo '`cmake --build build --target nwc_bench_pipeline`.'
echo
for f in report allocation pipeline scale codec decode range_coder lossless trellis autograd quant finetune llm io headers; do
  [ -f docs/bench/$f.md ] || continue
  echo; echo "---"; echo
  demote docs/bench/$f.md | sed 's|](report.svg)|](bench/report.svg)|'
done
} > docs/BENCHMARKS.md
wc -l docs/FORMAT.md docs/BENCHMARKS.md
