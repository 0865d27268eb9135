// Turning CUDA runtime status codes into nwc::error.
//
// Every CUDA runtime call in nwc goes through NWC_CUDA_CHECK, so a failure surfaces as an
// nwc::error with id errc::cuda and a message naming the call, the reason and the place:
//     cudaMalloc(&data, bytes) failed: out of memory (cudaErrorMemoryAllocation at weights.cu:61)
// Kernel launches return nothing; check them with NWC_CUDA_CHECK_LAUNCH("kernel name") right after
// the launch (it reads cudaGetLastError, which also clears the sticky launch error).
//
// Host code only: include it from .cu files, or from .cpp files linked with CUDA::cudart.
#pragma once

#include <cuda_runtime.h>

#include <string_view>

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"

namespace nwc::cuda {

namespace detail {
/// The file name without its folders, to keep messages short.
constexpr std::string_view base_name(std::string_view path) noexcept {
    const auto slash = path.find_last_of("/\\");
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}
}  // namespace detail

/// Throws nwc::error(errc::cuda, "<call> failed: <reason> (<error name> at <file>:<line>)")
/// unless `status` is cudaSuccess.
inline void check(cudaError_t status, const char* call, const char* file, int line) {
    if (NWC_LIKELY(status == cudaSuccess)) return;
    fail(errc::cuda, call, " failed: ", cudaGetErrorString(status), " (", cudaGetErrorName(status), " at ",
         detail::base_name(file), ":", line, ")");
}

}  // namespace nwc::cuda

/// Evaluates a CUDA runtime call and throws nwc::error(errc::cuda, ...) if it does not succeed.
#define NWC_CUDA_CHECK(call) ::nwc::cuda::check((call), #call, __FILE__, __LINE__)

/// Throws nwc::error(errc::cuda, ...) if the last kernel launch failed (bad configuration, no
/// kernel image for this GPU). Does not wait for the kernel to finish.
#define NWC_CUDA_CHECK_LAUNCH(kernel_name) \
    ::nwc::cuda::check(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
