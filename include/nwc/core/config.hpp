// Compiler and platform switches every nwc header relies on.
//
// NWC_HOST_DEVICE marks functions that must also compile as CUDA device code (the half-float
// conversions, the rANS step); it is empty when no GPU compiler is in use.
//
// NWC_ASSERT guards preconditions that only a programming error can break (a shape mismatch between
// two tensors the caller built). Untrusted input never reaches an assertion: parsers throw
// nwc::error instead. Define NWC_ASSERT before including any nwc header to route it elsewhere
// (for example to a throwing handler in a test harness).
#pragma once

#include <cstdio>
#include <cstdlib>

#if defined(__CUDACC__)
#define NWC_HOST_DEVICE __host__ __device__
#else
#define NWC_HOST_DEVICE
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NWC_LIKELY(x) __builtin_expect(!!(x), 1)
#define NWC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NWC_FORCE_INLINE inline __attribute__((always_inline))
#else
#define NWC_LIKELY(x) (x)
#define NWC_UNLIKELY(x) (x)
#define NWC_FORCE_INLINE inline
#endif

namespace nwc::detail {
[[noreturn]] inline void assertion_failed(const char* condition, const char* file, int line) {
    std::fprintf(stderr, "nwc: assertion failed: %s (%s:%d)\n", condition, file, line);
    std::abort();
}
}  // namespace nwc::detail

#ifndef NWC_ASSERT
#define NWC_ASSERT(condition) \
    (NWC_LIKELY(condition) ? (void)0 : ::nwc::detail::assertion_failed(#condition, __FILE__, __LINE__))
#endif
