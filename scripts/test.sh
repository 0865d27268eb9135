#!/usr/bin/env bash
# Builds nwc twice and runs every test in both trees; the README's test command, and what CI runs.
#
#   1. installs missing Debian packages (scripts/install_deps.sh)
#   2. build/       Release, everything: tests, benchmarks, examples, tools, CUDA programs when nvcc
#                   is found; warnings are errors (NWC_WERROR); runs all of ctest
#   3. build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer (NWC_SANITIZE), tests only (no
#                   benchmarks, examples, tool or CUDA: nothing ctest runs there needs them);
#                   runs ctest except the tests labelled no_asan
#   4. prints a summary; exits 0 only if every step passed
#
# A test file opts out of the sanitizer run with a line "// nwc-ctest-labels: no_asan" (see
# tests/CMakeLists.txt): for tests too slow under ASan, never to hide a sanitizer report.
# A GPU test with no GPU exits 77 and ctest counts it as skipped, not failed.
#
# Options: --release-only, --asan-only. Environment: see scripts/common.sh, plus
#   NWC_ASAN_BUILD_DIR  the sanitizer tree (default: build-asan)
#   CI=true             set by .ci/run; prints ccache statistics at the end
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$nwc_root" || exit 1

run_release=1
run_asan=1
for argument in "$@"; do
    case "$argument" in
        --release-only) run_asan=0 ;;
        --asan-only) run_release=0 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "test.sh: unknown option '$argument' (try --help)" >&2; exit 2 ;;
    esac
done
asan_build_dir=${NWC_ASAN_BUILD_DIR:-build-asan}

summary=()
failed=0
# Runs one step, timing it; a failed step is recorded and the script goes on with what does not
# depend on it, so one CI run reports as much as it can.
step() {
    local name=$1
    shift
    echo
    echo "=== test.sh: $name"
    local start=$SECONDS
    "$@"
    local status=$?
    local elapsed=$((SECONDS - start))
    if ((status == 0)); then
        summary+=("$(printf '  ok      %4d s  %s' "$elapsed" "$name")")
    else
        summary+=("$(printf '  FAILED  %4d s  %s (exit %d)' "$elapsed" "$name" "$status")")
        failed=1
    fi
    return $status
}

configure_asan() {
    local output arguments
    output=$(nwc_common_cmake_arguments "$asan_build_dir" OFF) || return 1
    mapfile -t arguments <<<"$output"
    # -O1 keeps sanitizer runs fast enough and compiles faster than -O2/-O3; no NDEBUG, so Eigen's
    # own assertions (index and size checks) stay on. Warnings are not errors here: GCC 12 reports
    # false positives in code instrumented by the sanitizers (the Release tree enforces -Werror).
    cmake -S "$nwc_root" -B "$asan_build_dir" "${arguments[@]}" -DNWC_SANITIZE=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
        -DNWC_BUILD_TESTS=ON -DNWC_BUILD_BENCH=OFF -DNWC_BUILD_EXAMPLES=OFF -DNWC_BUILD_TOOLS=OFF \
        -DNWC_INSTALL=OFF -DNWC_WERROR=OFF
}

start_all=$SECONDS
echo "test.sh: $nwc_root, $nwc_jobs jobs, data in $(nwc_data_dir)"
[[ -d "$(nwc_data_dir)" ]] || echo "test.sh: warning: $(nwc_data_dir) does not exist; tests that read the real models will fail"

step "install dependencies" "$nwc_root/scripts/install_deps.sh" || {
    echo "test.sh: cannot continue without the dependencies" >&2
    printf '%s\n' "${summary[@]}"
    exit 1
}

if ((run_release)); then
    step "configure Release ($nwc_build_dir)" nwc_configure_release &&
        step "build Release" cmake --build "$nwc_build_dir" -j "$nwc_jobs" &&
        step "ctest Release" ctest --test-dir "$nwc_build_dir" --output-on-failure --no-tests=error -j "$nwc_jobs"
fi

if ((run_asan)); then
    step "configure ASan+UBSan ($asan_build_dir)" configure_asan &&
        step "build ASan+UBSan" cmake --build "$asan_build_dir" -j "$nwc_jobs" &&
        step "ctest ASan+UBSan (-LE no_asan)" ctest --test-dir "$asan_build_dir" --output-on-failure --no-tests=error \
            -j "$nwc_jobs" -LE no_asan
fi

if [[ "${CI:-}" == true ]] && command -v ccache >/dev/null 2>&1; then
    echo
    ccache --show-stats 2>/dev/null | head -n 12 || true
fi

echo
echo "=== test.sh summary ($((SECONDS - start_all)) s in all)"
printf '%s\n' "${summary[@]}"
if ((failed)); then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all passed"
