// Smoke test of the CUDA skeleton: error reporting, device memory, and nwc's half/bfloat16
// conversions compiled as device code against the same functions on the host (bit for bit) and
// against the GPU's own conversion instruction.
//
// Exit codes: 0 passed, 1 failed, 77 skipped (no CUDA device or driver; ctest's SKIP_RETURN_CODE).
// The checks that need no GPU (error messages) run before the skip, so CI still exercises them.
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/random.hpp"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device.cuh"
#include "nwc/cuda/device_buffer.cuh"

namespace {

constexpr int exit_skipped = 77;
int failures = 0;

void expect(bool condition, const std::string& what) {
    if (condition) return;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
}

/// One thread per value: nwc's conversions and the GPU's round-to-nearest instruction.
__global__ void convert_on_device(const float* input, std::uint16_t* nwc_half_bits, std::uint16_t* gpu_half_bits,
                                  std::uint16_t* nwc_bf16_bits, float* half_back, std::size_t count) {
    const std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const nwc::half converted = nwc::to_half(input[i]);
    nwc_half_bits[i] = converted.bits;
    gpu_half_bits[i] = __half_as_ushort(__float2half_rn(input[i]));
    nwc_bf16_bits[i] = nwc::to_bfloat16(input[i]).bits;
    half_back[i] = nwc::to_float(converted);
}

void check_error_reporting() {
    try {
        NWC_CUDA_CHECK(cudaErrorInvalidValue);
        expect(false, "NWC_CUDA_CHECK(cudaErrorInvalidValue) did not throw");
    } catch (const nwc::error& e) {
        expect(e.id() == nwc::errc::cuda, "error id is errc::cuda");
        const std::string message = e.message();
        expect(message.rfind("cudaErrorInvalidValue failed: ", 0) == 0, "message starts with the call: " + message);
        expect(message.find("test_cuda_smoke.cu:") != std::string::npos, "message names the file: " + message);
    }
    try {
        NWC_CUDA_CHECK(cudaSuccess);
    } catch (const nwc::error& e) {
        expect(false, std::string("NWC_CUDA_CHECK(cudaSuccess) threw ") + e.what());
    }
}

std::vector<float> conversion_inputs() {
    const float infinity = std::numeric_limits<float>::infinity();
    std::vector<float> values = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 65504.0f, 65519.0f, 65520.0f, 1e9f, -1e9f,
                                 infinity, -infinity, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                                 2.9802326e-08f, 1e-10f, 1.0009766f, 1.00048828125f, 1.00146484375f,
                                 3.14159265f, -2.71828183f, std::numeric_limits<float>::denorm_min(),
                                 std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()};
    nwc::Random random(20251122);
    for (int i = 0; i < 4096; ++i) values.push_back(float(random.normal()) * 4.0f);
    for (int i = 0; i < 1024; ++i) values.push_back(float(random.normal()) * 1e-5f);  // half subnormals
    return values;
}

void check_conversions_on_device() {
    const std::vector<float> input = conversion_inputs();
    const std::size_t count = input.size();
    nwc::cuda::DeviceBuffer<float> device_input{std::span<const float>(input)};
    nwc::cuda::DeviceBuffer<std::uint16_t> nwc_half(count), gpu_half(count), nwc_bf16(count);
    nwc::cuda::DeviceBuffer<float> half_back(count);

    const unsigned threads = 256;
    const unsigned blocks = unsigned((count + threads - 1) / threads);
    convert_on_device<<<blocks, threads>>>(device_input.data(), nwc_half.data(), gpu_half.data(), nwc_bf16.data(),
                                           half_back.data(), count);
    NWC_CUDA_CHECK_LAUNCH("convert_on_device");
    NWC_CUDA_CHECK(cudaDeviceSynchronize());

    const std::vector<std::uint16_t> device_half = nwc_half.to_host();
    const std::vector<std::uint16_t> hardware_half = gpu_half.to_host();
    const std::vector<std::uint16_t> device_bf16 = nwc_bf16.to_host();
    const std::vector<float> device_back = half_back.to_host();
    int mismatches = 0;
    for (std::size_t i = 0; i < count && mismatches < 10; ++i) {
        const nwc::half host_half = nwc::to_half(input[i]);
        // The GPU instruction returns one canonical NaN; nwc keeps the sign and payload bits.
        const bool hardware_agrees = std::isnan(input[i]) || hardware_half[i] == host_half.bits;
        const bool ok = device_half[i] == host_half.bits && hardware_agrees &&
                        device_bf16[i] == nwc::to_bfloat16(input[i]).bits &&
                        nwc::float_bits(device_back[i]) == nwc::float_bits(nwc::to_float(host_half));
        if (!ok) {
            ++mismatches;
            char line[200];
            std::snprintf(line, sizeof line, "value %.9g: host half %04x, device %04x, GPU instruction %04x", input[i],
                          unsigned(host_half.bits), unsigned(device_half[i]), unsigned(hardware_half[i]));
            expect(false, line);
        }
    }
    std::printf("checked %zu conversions on the device\n", count);
}

void check_device_buffer() {
    std::vector<std::int32_t> values(1000);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = std::int32_t(i * 7919 % 1000003);
    nwc::cuda::DeviceBuffer<std::int32_t> buffer{std::span<const std::int32_t>(values)};
    nwc::cuda::DeviceBuffer<std::int32_t> moved = std::move(buffer);
    expect(buffer.data() == nullptr && buffer.size() == 0, "a moved-from DeviceBuffer is empty");
    expect(moved.to_host() == values, "DeviceBuffer round trip returns the uploaded values");
    try {
        std::vector<std::int32_t> too_small(10);
        moved.download(too_small);
        expect(false, "download into a smaller span did not throw");
    } catch (const nwc::error& e) {
        expect(e.id() == nwc::errc::invalid_argument, "size mismatch is errc::invalid_argument");
    }
}

}  // namespace

int main() {
    try {
        check_error_reporting();
        if (!nwc::cuda::gpu_available()) {
            std::printf("no CUDA device or driver: skipped (error reporting checked on the host)\n");
            return failures == 0 ? exit_skipped : 1;
        }
        const nwc::cuda::DeviceInfo info = nwc::cuda::device_info(0);
        std::printf("device 0: %s, compute %d.%d, %d SMs, %.1f GiB\n", info.name.c_str(), info.compute_major,
                    info.compute_minor, info.multiprocessors, double(info.global_memory_bytes) / (1u << 30));
        check_device_buffer();
        check_conversions_on_device();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAILED: unexpected exception: %s\n", e.what());
        return 1;
    }
    if (failures != 0) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("all CUDA smoke checks passed\n");
    return 0;
}
