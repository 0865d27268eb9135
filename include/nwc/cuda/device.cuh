// Is there a GPU, and which one: the questions a program asks before using the CUDA backend.
//
// device_count() never throws: "no driver" and "no device" both mean zero devices, so a program
// can fall back to the CPU backends (and a test can report itself skipped) on machines without a
// GPU, which is every CI machine. Everything else goes through NWC_CUDA_CHECK.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "nwc/cuda/cuda_check.cuh"

namespace nwc::cuda {

/// Number of usable CUDA devices; 0 when there is no device or no (recent enough) driver.
inline int device_count() noexcept {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        // The failed query leaves its error as the "last error"; clear it so that a later
        // NWC_CUDA_CHECK_LAUNCH does not report it against an unrelated kernel.
        (void)cudaGetLastError();
        return 0;
    }
    return count;
}

/// True when at least one CUDA device can be used.
inline bool gpu_available() noexcept { return device_count() > 0; }

/// What nwc needs to know about a device to size its launches.
struct DeviceInfo {
    int index = 0;
    std::string name;
    int compute_major = 0;  ///< compute capability, e.g. 9.0 for an H100
    int compute_minor = 0;
    int multiprocessors = 0;
    std::size_t global_memory_bytes = 0;
    std::size_t shared_memory_per_block_bytes = 0;
};

/// Properties of device `index`; throws nwc::error(errc::cuda, ...) if it does not exist.
inline DeviceInfo device_info(int index = 0) {
    cudaDeviceProp properties{};
    NWC_CUDA_CHECK(cudaGetDeviceProperties(&properties, index));
    DeviceInfo info;
    info.index = index;
    info.name = properties.name;
    info.compute_major = properties.major;
    info.compute_minor = properties.minor;
    info.multiprocessors = properties.multiProcessorCount;
    info.global_memory_bytes = properties.totalGlobalMem;
    info.shared_memory_per_block_bytes = properties.sharedMemPerBlock;
    return info;
}

}  // namespace nwc::cuda
