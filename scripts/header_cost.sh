#!/usr/bin/env bash
# Prints the CPU seconds `g++ -fsyntax-only` spends on one translation unit that includes only
# <Eigen/Dense> (the reference, measured in the same run), only <nwc/nwc.hpp> (everything), and
# only what decoding a .nwc file needs (<nwc/decode.hpp>),
# each as the best of N runs (default 3), with the ratios to Eigen. Issue 12's goals: nwc.hpp at
# most 3x, decoding at most 1.5x. Two more rows give the floors under those goals: the
# third-party and standard headers <nwc/decode.hpp> needs, and every one the library includes
# (the standard ones listed from include/ by this script).
#   scripts/header_cost.sh [runs]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=${1:-3}
compiler=${CXX:-g++}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
measure() {  # $1: the include line; prints the best user+sys CPU seconds
    printf '%s\nint main() {}\n' "$1" >"$scratch/tu.cpp"
    local best=""
    for ((run = 0; run < runs; ++run)); do
        local seconds
        /usr/bin/time -f '%U %S' -o "$scratch/time" "$compiler" -std=c++20 -fsyntax-only -Iinclude -isystem /usr/include/eigen3 \
            "$scratch/tu.cpp" >/dev/null 2>&1 || { echo "header_cost.sh: $1 does not compile" >&2; exit 1; }
        seconds=$(tail -n 1 "$scratch/time" | awk '{print $1 + $2}')
        if [[ -z "$best" ]] || awk -v a="$seconds" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$seconds; fi
    done
    echo "$best"
}
eigen=$(measure '#include <Eigen/Dense>')
everything=$(measure '#include <nwc/nwc.hpp>')
decoding=$(measure '#include <nwc/decode.hpp>')
decoding_needs=$(measure "$(printf '#include <%s>\n' Eigen/Core xsimd/xsimd.hpp nlohmann/json.hpp filesystem thread)")
standard_headers=$(grep -rhoE '^#include <[a-z_]+>' include | sort -u)
all_needs=$(measure "$(printf '%s\n#include <Eigen/Dense>\n#include <xsimd/xsimd.hpp>\n#include <nlohmann/json.hpp>' "$standard_headers")")
dependency_count=$(($(printf '%s\n' "$standard_headers" | wc -l) + 3))
ratio() { awk -v a="$1" -v b="$eigen" 'BEGIN { print a / b }'; }
printf '%-40s %8s %8s\n' "translation unit includes" "CPU s" "x Eigen"
printf '%-40s %8.2f %8.2f\n' "<Eigen/Dense>" "$eigen" 1
printf '%-40s %8.2f %8.2f\n' "<nwc/nwc.hpp>" "$everything" "$(ratio "$everything")"
printf '%-40s %8.2f %8.2f\n' "<nwc/decode.hpp>" "$decoding" "$(ratio "$decoding")"
printf '%-40s %8.2f %8.2f\n' "what decode.hpp needs of others" "$decoding_needs" "$(ratio "$decoding_needs")"
printf '%-40s %8.2f %8.2f\n' "all $dependency_count headers nwc needs of others" "$all_needs" "$(ratio "$all_needs")"
