// Backend tags. Kernels are overloaded on the last parameter, a tag, the way xsimd dispatches on
// arch tags: `simd` derives from `scalar`, so a kernel without a SIMD overload falls back to the
// scalar reference by ordinary overload resolution. The scalar backend is the reference every other
// backend is tested against, op by op (tests/test_backend_consistency.cpp).
#pragma once

#include <concepts>
#include <string_view>

namespace nwc::backend {

/// Plain C++ loops: the reference implementation of every kernel.
struct scalar {
    static constexpr std::string_view name = "scalar";
};

/// CPU SIMD kernels on xsimd (the instruction set chosen at compile time, -march).
struct simd : scalar {
    static constexpr std::string_view name = "simd";
};

/// NVIDIA GPUs (only when compiled with nvcc; see include/nwc/cuda/).
struct cuda {
    static constexpr std::string_view name = "cuda";
};

/// The backend used when a component is instantiated without naming one.
using default_backend = simd;

}  // namespace nwc::backend

namespace nwc {
/// A backend whose kernels run on the host: the scalar reference, simd, or a user's tag derived
/// from either (it inherits their kernels and overloads the ones it replaces).
template <class Backend>
concept host_backend = std::derived_from<Backend, backend::scalar>;
}  // namespace nwc
