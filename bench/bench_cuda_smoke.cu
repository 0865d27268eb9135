// Throughput of float -> half conversion: nwc::to_half as a CUDA kernel against the same function
// on one CPU core, measured in the same run (bytes/s of float input). It exists to prove that the
// CUDA build, Google Benchmark and nwc's host/device headers work together; without a GPU the
// device benchmark reports "no CUDA device" and only the CPU reference runs.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "nwc/core/half.hpp"
#include "nwc/core/random.hpp"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device.cuh"
#include "nwc/cuda/device_buffer.cuh"

namespace {

std::vector<float> random_floats(std::size_t count) {
    nwc::Random random(7);
    std::vector<float> values(count);
    for (float& value : values) value = random.normal();
    return values;
}

__global__ void to_half_kernel(const float* input, std::uint16_t* output, std::size_t count) {
    const std::size_t stride = std::size_t(gridDim.x) * blockDim.x;
    for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
        output[i] = nwc::to_half(input[i]).bits;
}

void BM_to_half_cpu(benchmark::State& state) {
    const std::vector<float> input = random_floats(std::size_t(state.range(0)));
    std::vector<std::uint16_t> output(input.size());
    for (auto _ : state) {
        for (std::size_t i = 0; i < input.size(); ++i) output[i] = nwc::to_half(input[i]).bits;
        benchmark::DoNotOptimize(output.data());
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(input.size() * sizeof(float)));
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(input.size()));
}

void BM_to_half_cuda(benchmark::State& state) {
    if (!nwc::cuda::gpu_available()) {
        state.SkipWithError("no CUDA device");
        return;
    }
    const std::vector<float> host_input = random_floats(std::size_t(state.range(0)));
    nwc::cuda::DeviceBuffer<float> input{std::span<const float>(host_input)};
    nwc::cuda::DeviceBuffer<std::uint16_t> output(host_input.size());
    const nwc::cuda::DeviceInfo info = nwc::cuda::device_info();
    const unsigned threads = 256;
    const unsigned blocks = unsigned(info.multiprocessors) * 8u;
    cudaEvent_t start{}, stop{};
    NWC_CUDA_CHECK(cudaEventCreate(&start));
    NWC_CUDA_CHECK(cudaEventCreate(&stop));
    for (auto _ : state) {
        NWC_CUDA_CHECK(cudaEventRecord(start));
        to_half_kernel<<<blocks, threads>>>(input.data(), output.data(), input.size());
        NWC_CUDA_CHECK_LAUNCH("to_half_kernel");
        NWC_CUDA_CHECK(cudaEventRecord(stop));
        NWC_CUDA_CHECK(cudaEventSynchronize(stop));
        float milliseconds = 0.0f;
        NWC_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, start, stop));
        state.SetIterationTime(double(milliseconds) * 1e-3);
    }
    NWC_CUDA_CHECK(cudaEventDestroy(start));
    NWC_CUDA_CHECK(cudaEventDestroy(stop));
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(host_input.size() * sizeof(float)));
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(host_input.size()));
    state.SetLabel(info.name);
}

BENCHMARK(BM_to_half_cpu)->Arg(1 << 20);
BENCHMARK(BM_to_half_cuda)->Arg(1 << 20)->Arg(1 << 26)->UseManualTime();

}  // namespace

BENCHMARK_MAIN();
