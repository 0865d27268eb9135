// What every nwc fuzz target shares: the one acceptable failure is nwc::error; anything else (a
// sanitizer report, another exception escaping, a broken invariant) is a finding. NWC_FUZZ_CHECK
// aborts, so libFuzzer saves the input as a crash (see docs/fuzzing.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"

#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#error "fuzz targets are built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION (see fuzz/CMakeLists.txt)"
#endif

#define NWC_FUZZ_CHECK(condition)                                                                  \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #condition); \
            std::abort();                                                                          \
        }                                                                                          \
    } while (0)

namespace nwc::fuzz {

/// Runs `body`; an nwc::error is the expected outcome of bad input, so it is swallowed (after
/// checking that it says what went wrong). Returns whether body finished without one.
template <class Body>
bool rejects_cleanly(Body&& body) {
    try {
        body();
        return true;
    } catch (const nwc::error& error) {
        NWC_FUZZ_CHECK(!error.message().empty());
        return false;
    }
}

/// True when every value is finite.
inline bool all_finite(std::span<const float> values) {
    for (float value : values)
        if (!std::isfinite(value)) return false;
    return true;
}

}  // namespace nwc::fuzz
