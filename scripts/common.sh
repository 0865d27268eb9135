# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): how nwc's build trees are
# configured, so both scripts produce the same build/ and never rebuild it for each other.
#
# Environment knobs (all optional):
#   NWC_JOBS          parallel compile and test jobs (default: nproc)
#   NWC_BUILD_DIR     the Release tree (default: build)
#   NWC_CUDA          auto (default: build the CUDA programs when nvcc is found), ON or OFF
#   NWC_DATA_DIR      folder with the real models (default: ../shared/data next to the checkout)
#   NWC_WERROR        ON (default) or OFF: warnings are errors in nwc's own programs

nwc_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nwc_jobs=${NWC_JOBS:-$(nproc 2>/dev/null || echo 2)}
nwc_build_dir=${NWC_BUILD_DIR:-build}

# nvcc is usually not on PATH: look where the CUDA toolkit installs it too.
nwc_find_nvcc() {
    local candidate
    for candidate in "${CUDACXX:-}" /usr/local/cuda/bin/nvcc "$(command -v nvcc 2>/dev/null || true)"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Prints (one per line) the cmake arguments every nwc tree shares: generator, compiler launcher,
# CUDA compiler, data folder.
nwc_common_cmake_arguments() {
    local build_dir=$1 want_cuda=${2:-${NWC_CUDA:-auto}}
    # The generator of an existing tree cannot change; only a new tree picks Ninja.
    if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
        printf '%s\n' -G Ninja
    fi
    if command -v ccache >/dev/null 2>&1; then
        printf '%s\n' -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache
    fi
    local nvcc=""
    if [[ "$want_cuda" != OFF ]]; then
        nvcc=$(nwc_find_nvcc || true)
        if [[ -z "$nvcc" && "$want_cuda" == ON ]]; then
            echo "NWC_CUDA=ON but no nvcc found (looked at \$CUDACXX, /usr/local/cuda/bin/nvcc, PATH)" >&2
            return 1
        fi
    fi
    if [[ -n "$nvcc" ]]; then
        printf '%s\n' "-DCMAKE_CUDA_COMPILER=$nvcc" -DNWC_ENABLE_CUDA=ON
    else
        printf '%s\n' -DNWC_ENABLE_CUDA=OFF
    fi
    if [[ -n "${NWC_DATA_DIR:-}" ]]; then
        printf '%s\n' "-DNWC_DATA_DIR=$NWC_DATA_DIR"
    fi
}

# Configures the Release tree: everything (tests, benchmarks, examples, tools, CUDA programs).
nwc_configure_release() {
    local output arguments
    output=$(nwc_common_cmake_arguments "$nwc_build_dir") || return 1
    mapfile -t arguments <<<"$output"
    cmake -S "$nwc_root" -B "$nwc_build_dir" "${arguments[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DNWC_BUILD_TESTS=ON -DNWC_BUILD_BENCH=ON -DNWC_BUILD_EXAMPLES=ON -DNWC_BUILD_TOOLS=ON \
        -DNWC_WERROR="${NWC_WERROR:-ON}"
}

# Where the data the tests and the demo read is expected, for messages.
nwc_data_dir() {
    echo "${NWC_DATA_DIR:-$nwc_root/../shared/data}"
}
