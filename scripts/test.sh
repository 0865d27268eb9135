#!/usr/bin/env bash
# Builds nwc twice and runs every test in both trees; the README's test command, and what CI runs.
#
#   1. installs missing Debian packages (scripts/install_deps.sh; with --clang when the ASan or
#      fuzzing step runs: both are built with clang++)
#   2. build/       Release, everything: tests, benchmarks, examples, tools, CUDA programs when nvcc
#                   is found; warnings are errors (NWC_WERROR); runs all of ctest
#   3. build-asan/  AddressSanitizer + UndefinedBehaviorSanitizer (NWC_SANITIZE), tests only (no
#                   benchmarks, examples, tool or CUDA: nothing ctest runs there needs them),
#                   compiled by clang++ (NWC_ASAN_CXX): the same instrumented test units compile in
#                   ~30% less time than with g++ (docs/bench/headers.md), and the project gets a
#                   second compiler's warnings; the Release and ThreadSanitizer trees use g++;
#                   runs ctest except the tests labelled no_asan
#   4. build-tsan/  ThreadSanitizer (NWC_SANITIZE_THREAD), only the tests labelled tsan
#                   (tests/test_concurrency.cpp) as programs of their own (NWC_UNITY=OFF: not the
#                   whole unity test program), built in the background beside the fuzzers (one
#                   file would leave a core idle); runs ctest -L tsan
#   5. build-fuzz/  the libFuzzer targets (fuzz/, clang++, NWC_BUILD_FUZZ): each runs once over its
#                   checked-in corpus (ctest -L fuzz: the regression test), then fuzzes for
#                   NWC_FUZZ_SECONDS from that corpus (targets in parallel, nwc_jobs at a time)
#   6. prints a summary; exits 0 only if every step passed
#
# A test file opts out of the sanitizer run with a line "// nwc-ctest-labels: no_asan" (see
# tests/CMakeLists.txt): for tests too slow under ASan, never to hide a sanitizer report.
# A test that cannot run (no GPU; test cases tagged [data] without the data, [tool] in build-asan/
# where the nwc program is not built) exits 77 and ctest counts it as skipped, not failed or
# passed (tests/CMakeLists.txt). Every sanitizer report fails its step: ASan/UBSan and TSan halt
# the test (exit != 0), libFuzzer exits non-zero on a crash, leak, timeout or out-of-memory and
# saves the input under build-fuzz/artifacts/.
#
# Options: --release-only, --asan-only, --tsan-only, --fuzz-only (one step), --no-fuzz.
# Environment: see scripts/common.sh, plus
#   NWC_ASAN_BUILD_DIR  the sanitizer tree (default: build-asan)
#   NWC_ASAN_CXX        its compiler (default: clang++)
#   NWC_TSAN_BUILD_DIR  the ThreadSanitizer tree (default: build-tsan)
#   NWC_FUZZ_BUILD_DIR  the fuzzing tree (default: build-fuzz)
#   NWC_FUZZ_SECONDS    seconds each fuzz target runs after its corpus (default: 20; 0: corpus only)
#   CI=true             set by .ci/run; prints ccache statistics at the end
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$nwc_root" || exit 1

run_release=1
run_asan=1
run_tsan=1
run_fuzz=1
for argument in "$@"; do
    case "$argument" in
        --release-only) run_asan=0 run_tsan=0 run_fuzz=0 ;;
        --asan-only) run_release=0 run_tsan=0 run_fuzz=0 ;;
        --tsan-only) run_release=0 run_asan=0 run_fuzz=0 ;;
        --fuzz-only) run_release=0 run_asan=0 run_tsan=0 ;;
        --no-fuzz) run_fuzz=0 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "test.sh: unknown option '$argument' (try --help)" >&2; exit 2 ;;
    esac
done
asan_build_dir=${NWC_ASAN_BUILD_DIR:-build-asan}
asan_cxx=${NWC_ASAN_CXX:-clang++}
tsan_build_dir=${NWC_TSAN_BUILD_DIR:-build-tsan}
fuzz_build_dir=${NWC_FUZZ_BUILD_DIR:-build-fuzz}
fuzz_seconds=${NWC_FUZZ_SECONDS:-20}

summary=()
late_report=()  # what a failed step wants read after the summary (a fuzz finding)
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

# A sanitizer tree: tests only (no benchmarks, examples, tool), with the given NWC_SANITIZE* option
# and any further cmake arguments.
# -O1 keeps sanitizer runs fast enough and compiles faster than -O2/-O3; no NDEBUG, so Eigen's own
# assertions (index and size checks) stay on. Warnings are not errors here: GCC 12 reports false
# positives in code instrumented by the sanitizers (the Release tree enforces -Werror).
# A tree built before with another compiler is reconfigured from scratch (CMake drops its cache
# when -DCMAKE_CXX_COMPILER changes).
configure_sanitizer() {
    local build_dir=$1 sanitize_option=$2 output arguments
    shift 2
    output=$(nwc_common_cmake_arguments "$build_dir" OFF) || return 1
    mapfile -t arguments <<<"$output"
    cmake -S "$nwc_root" -B "$build_dir" "${arguments[@]}" "-D$sanitize_option=ON" \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
        -DNWC_BUILD_TESTS=ON -DNWC_BUILD_BENCH=OFF -DNWC_BUILD_EXAMPLES=OFF -DNWC_BUILD_TOOLS=OFF \
        -DNWC_INSTALL=OFF -DNWC_WERROR=OFF "$@"
}

# Only the tests that declare the tsan label: the others are covered by the ASan tree.
build_tsan() {
    local targets=() source name
    for source in "$nwc_root"/tests/test_*.cpp; do
        grep -Eq '^[[:space:]]*//[[:space:]]*nwc-ctest-labels:.*\btsan\b' "$source" || continue
        name=${source##*/test_}
        targets+=("nwc_test_${name%.cpp}")
    done
    ((${#targets[@]} > 0)) || { echo "test.sh: no test is labelled tsan" >&2; return 1; }
    cmake --build "$tsan_build_dir" -j "$nwc_jobs" --target "${targets[@]}"
}

# Waits for the background ThreadSanitizer build and shows its output.
wait_for_tsan_build() {
    local status
    wait "$1"
    status=$?
    cat "$tsan_build_dir/build.log"
    return $status
}

# Fails with a message naming the fix when a compiler is not on PATH.
require_compiler() {
    command -v "$1" >/dev/null 2>&1 || { echo "test.sh: $1 not found (scripts/install_deps.sh --clang)" >&2; return 1; }
}

configure_fuzz() {
    local output arguments
    require_compiler clang++ || return 1
    output=$(nwc_common_cmake_arguments "$fuzz_build_dir" OFF) || return 1
    mapfile -t arguments <<<"$output"
    cmake -S "$nwc_root" -B "$fuzz_build_dir" "${arguments[@]}" -DCMAKE_CXX_COMPILER=clang++ -DNWC_BUILD_FUZZ=ON \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
        -DNWC_BUILD_TESTS=OFF -DNWC_BUILD_BENCH=OFF -DNWC_BUILD_EXAMPLES=OFF -DNWC_BUILD_TOOLS=OFF \
        -DNWC_INSTALL=OFF -DNWC_WERROR=OFF
}

# Fuzzes every target for fuzz_seconds from its checked-in corpus, nwc_jobs targets at a time.
# New inputs go to a scratch folder (the checked-in corpus is never written); a finding is saved
# as build-fuzz/artifacts/<target>-crash-... and fails the step.
run_fuzzers() {
    ((fuzz_seconds > 0)) || return 0
    local scratch binary target failed_targets=() running=0
    scratch=$(mktemp -d) || return 1
    mkdir -p "$fuzz_build_dir/artifacts"
    for binary in "$fuzz_build_dir"/fuzz/nwc_fuzz_*; do
        target=${binary##*/nwc_fuzz_}
        mkdir -p "$scratch/$target"
        (
            ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                "$binary" -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
                -print_final_stats=1 -artifact_prefix="$fuzz_build_dir/artifacts/$target-" \
                "$scratch/$target" "$nwc_root/fuzz/corpus/$target" >"$scratch/$target.log" 2>&1
            echo $? >"$scratch/$target.status"
        ) &
        if ((++running >= nwc_jobs)); then
            wait -n
            ((running--))
        fi
    done
    wait
    for binary in "$fuzz_build_dir"/fuzz/nwc_fuzz_*; do
        target=${binary##*/nwc_fuzz_}
        printf '  %-12s %s executions, %s new inputs, exit %s\n' "$target" \
            "$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")" \
            "$(sed -n 's/^stat::new_units_added: *//p' "$scratch/$target.log")" "$(cat "$scratch/$target.status")"
        if [[ "$(cat "$scratch/$target.status")" != 0 ]]; then
            failed_targets+=("$target")
            tail -n 60 "$scratch/$target.log"
            # Kept, and its last lines repeated after the summary: CI logs are often read from the end.
            cp "$scratch/$target.log" "$fuzz_build_dir/artifacts/$target.log"
            late_report+=("=== fuzz finding in $target (log: $fuzz_build_dir/artifacts/$target.log)" "$(grep -E 'ERROR|SUMMARY|Test unit written|artifact_prefix|==[0-9]+==' "$scratch/$target.log" | tail -n 12)")
        fi
    done
    rm -rf "$scratch"
    ((${#failed_targets[@]} == 0)) || { echo "test.sh: fuzz findings in: ${failed_targets[*]} (inputs in $fuzz_build_dir/artifacts/)" >&2; return 1; }
}

start_all=$SECONDS
echo "test.sh: $nwc_root, $nwc_jobs jobs, data in $(nwc_data_dir)"
[[ -d "$(nwc_data_dir)" ]] || echo "test.sh: warning: $(nwc_data_dir) does not exist; tests that read the real models will fail"

install_arguments=()
((run_asan || run_fuzz)) && install_arguments+=(--clang)
step "install dependencies${install_arguments[*]:+ (${install_arguments[*]})}" "$nwc_root/scripts/install_deps.sh" "${install_arguments[@]}" || {
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
    step "configure ASan+UBSan ($asan_build_dir, $asan_cxx)" require_compiler "$asan_cxx" &&
        configure_sanitizer "$asan_build_dir" NWC_SANITIZE -DCMAKE_CXX_COMPILER="$asan_cxx" &&
        step "build ASan+UBSan" cmake --build "$asan_build_dir" -j "$nwc_jobs" &&
        step "ctest ASan+UBSan (-LE no_asan)" ctest --test-dir "$asan_build_dir" --output-on-failure --no-tests=error \
            -j "$nwc_jobs" -LE no_asan
fi

# The ThreadSanitizer tree is one test file (and Catch2's runner): its build would leave a core idle
# for a minute, so it runs in the background beside the fuzzers' build and is waited for after it.
tsan_build_pid=
if ((run_tsan)); then
    if step "configure ThreadSanitizer ($tsan_build_dir)" configure_sanitizer "$tsan_build_dir" NWC_SANITIZE_THREAD -DNWC_UNITY=OFF; then
        build_tsan >"$tsan_build_dir/build.log" 2>&1 &
        tsan_build_pid=$!
    fi
fi

fuzz_built=1
if ((run_fuzz)); then
    step "configure fuzzers ($fuzz_build_dir)" configure_fuzz &&
        step "build fuzzers${tsan_build_pid:+ (ThreadSanitizer tests building beside them)}" cmake --build "$fuzz_build_dir" -j "$nwc_jobs" ||
        fuzz_built=0
fi

if [[ -n "$tsan_build_pid" ]]; then
    tsan_build_step="build ThreadSanitizer (tests labelled tsan)"
    ((run_fuzz)) && tsan_build_step+="; what remained after the fuzzers' build"
    step "$tsan_build_step" wait_for_tsan_build "$tsan_build_pid" &&
        step "ctest ThreadSanitizer (-L tsan)" ctest --test-dir "$tsan_build_dir" --output-on-failure --no-tests=error -j "$nwc_jobs" -L tsan
fi

if ((run_fuzz && fuzz_built)); then
    step "fuzz corpus regression (-L fuzz)" ctest --test-dir "$fuzz_build_dir" --output-on-failure --no-tests=error -j "$nwc_jobs" -L fuzz &&
        step "fuzz ${fuzz_seconds} s per target" run_fuzzers
fi

if [[ "${CI:-}" == true ]] && command -v ccache >/dev/null 2>&1; then
    echo
    ccache --show-stats 2>/dev/null | head -n 12 || true
fi

echo
echo "=== test.sh summary ($((SECONDS - start_all)) s in all)"
printf '%s\n' "${summary[@]}"
((${#late_report[@]} == 0)) || printf '%s\n' "${late_report[@]}"
if ((failed)); then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all passed"
