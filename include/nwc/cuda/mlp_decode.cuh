// The codec's decoder g_s on the GPU (backend tag nwc::backend::cuda): cuBLAS SGEMMs plus small
// fused elementwise kernels, the same arithmetic as ResidualMLP::infer (nn/residual_mlp.hpp).
//
// Read me first:
// - Layout: activations are row-major rows x W, as on the CPU. A layer y = x W^T + b with W
//   row-major [out, in] is, in cuBLAS's column-major terms, Y^T (out x rows) = op_T(W^T) X^T:
//   cublasSgemm(OP_T, OP_N, out, rows, in, W, lda = in, X, ldb = in, Y, ldc = out).
// - Per block: T = H W^T (GEMM), then one warp per row computes bias + LayerNorm (two-pass mean
//   and variance, as the reference) + ReLU + residual + level scale and writes H in place.
// - cuBLAS runs in its default math mode (FP32, no TF32), so results differ from the CPU only by
//   summation order: tests/test_cuda_decode.cu allows 1e-4 relative.
// - CUTLASS habit: can_implement() says whether a decoder fits these kernels, workspace_bytes()
//   what run() needs for a given number of rows, and run() only enqueues work on the stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/core/error.hpp"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device_buffer.cuh"

namespace nwc::cuda {

/// Throws nwc::error(errc::cuda, "<call> failed: cuBLAS status <n> (<file>:<line>)") unless success.
inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
    if (NWC_LIKELY(status == CUBLAS_STATUS_SUCCESS)) return;
    fail(errc::cuda, call, " failed: cuBLAS status ", int(status), " (", detail::base_name(file), ":", line, ")");
}
#define NWC_CUBLAS_CHECK(call) ::nwc::cuda::check_cublas((call), #call, __FILE__, __LINE__)

/// An owned cuBLAS handle bound to a stream.
class CublasHandle {
public:
    explicit CublasHandle(cudaStream_t stream = nullptr) {
        NWC_CUBLAS_CHECK(cublasCreate(&m_handle));
        NWC_CUBLAS_CHECK(cublasSetStream(m_handle, stream));
    }
    CublasHandle(const CublasHandle&) = delete;
    CublasHandle& operator=(const CublasHandle&) = delete;
    ~CublasHandle() { (void)cublasDestroy(m_handle); }
    cublasHandle_t get() const noexcept { return m_handle; }
    void set_stream(cudaStream_t stream) { NWC_CUBLAS_CHECK(cublasSetStream(m_handle, stream)); }

private:
    cublasHandle_t m_handle = nullptr;
};

/// Whether an operation can run, and why not (CUTLASS's Status, with a reason).
struct CanImplement {
    bool ok = true;
    std::string reason;
    explicit operator bool() const noexcept { return ok; }
};

namespace detail {

__global__ void latents_kernel(const std::int32_t* symbols, const std::uint8_t* levels, const float* medians, const std::uint8_t* group_of_level,
                               std::int64_t rows, int latents, float* out) {
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * latents) return;
    const std::int64_t row = i / latents;
    const int channel = int(i % latents);
    out[i] = float(symbols[i]) + medians[group_of_level[levels[row]] * latents + channel];
}

__global__ void add_bias_kernel(float* matrix, const float* bias, std::int64_t rows, int cols) {
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < rows * cols) matrix[i] += bias[i % cols];
}

__device__ inline float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
    return value;
}

/// One warp per row: h = (h + relu(gamma * normalize(t + bias) + beta)) * embedding[level].
__global__ void block_epilogue_kernel(const float* t, const float* bias, const float* gamma, const float* beta, const float* embedding,
                                      const std::uint8_t* levels, float* h, std::int64_t rows, int width, float epsilon) {
    const std::int64_t row = std::int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = int(threadIdx.x % 32);
    if (row >= rows) return;  // whole warps leave together: row is uniform across a warp
    const float* t_row = t + row * width;
    float* h_row = h + row * width;
    const float* scale = embedding + std::int64_t(levels[row]) * width;
    float sum = 0.0f;
    for (int i = lane; i < width; i += 32) sum += t_row[i] + bias[i];
    const float mean = warp_sum(sum) / float(width);
    float squares = 0.0f;
    for (int i = lane; i < width; i += 32) {
        const float centered = t_row[i] + bias[i] - mean;
        squares += centered * centered;
    }
    const float inverse_std = 1.0f / sqrtf(warp_sum(squares) / float(width) + epsilon);
    for (int i = lane; i < width; i += 32) {
        const float normalized = (t_row[i] + bias[i] - mean) * inverse_std;
        const float activated = fmaxf(normalized * gamma[i] + beta[i], 0.0f);
        h_row[i] = (h_row[i] + activated) * scale[i];
    }
}

inline unsigned blocks_for(std::int64_t count, int threads) { return unsigned((count + threads - 1) / threads); }

}  // namespace detail

/// g_s of a NeuralDecoder in device memory, with its medians.
class DeviceNeuralDecoder {
public:
    /// Rows per run() tile: bounds the workspace (two rows x W float matrices).
    static constexpr std::int64_t tile_rows = 32768;

    /// Whether `architecture` fits these kernels (everything NeuralDecoder accepts does; the check
    /// is the CUTLASS habit and guards int overflow in cuBLAS's 32-bit sizes).
    static CanImplement can_implement(const CodecArchitecture& architecture) {
        if (std::int64_t(architecture.width) * tile_rows > INT32_MAX) return {false, "width too large for 32-bit cuBLAS sizes"};
        if (architecture.levels > 256) return {false, "more than 256 levels"};
        return {};
    }

    /// Uploads the decoder (from `memory`: a decoder's pool when it lives for one tensor).
    explicit DeviceNeuralDecoder(const NeuralDecoder& decoder, TemporaryMemory memory = {}) : m_architecture(decoder.architecture()) {
        const CanImplement check = can_implement(m_architecture);
        require(check.ok, errc::unsupported, "DeviceNeuralDecoder: ", check.reason);
        std::vector<float> packed;
        for (const auto* parameter : decoder.network().parameters()) {
            m_offsets.push_back(packed.size());
            packed.insert(packed.end(), parameter->value.data(), parameter->value.data() + parameter->value.size());
        }
        m_parameters = DeviceBuffer<float>(std::span<const float>(packed), memory);
        m_medians = DeviceBuffer<float>(decoder.all_medians(), memory);
        std::vector<std::uint8_t> groups(std::size_t(m_architecture.levels));
        for (int level = 0; level < m_architecture.levels; ++level) groups[std::size_t(level)] = std::uint8_t(m_architecture.prior_group(level));
        m_group_of_level = DeviceBuffer<std::uint8_t>(std::span<const std::uint8_t>(groups), memory);
        // The uploads above are queued on memory.stream; `packed` and `groups` are staged already.
    }

    const CodecArchitecture& architecture() const noexcept { return m_architecture; }

    /// Workspace run() needs for `rows` chunks, in bytes.
    std::size_t workspace_bytes(std::int64_t rows) const noexcept {
        const std::int64_t tile = std::min(rows, tile_rows);
        return std::size_t(tile) * std::size_t(m_architecture.latents + 2 * m_architecture.width) * sizeof(float);
    }

    /// chunks (rows x chunk_size, device) = g_s(symbols + medians, levels); symbols rows x latents
    /// and levels (< levels, checked by the caller) in device memory. Enqueues on `cublas`'s stream.
    void run(const std::int32_t* symbols, const std::uint8_t* levels, std::int64_t rows, float* chunks, float* workspace,
             std::size_t workspace_size, const CublasHandle& cublas, cudaStream_t stream) const {
        require(workspace_size >= workspace_bytes(rows), errc::invalid_argument, "DeviceNeuralDecoder::run: workspace of ", workspace_size,
                " bytes, ", workspace_bytes(rows), " needed");
        const int width = m_architecture.width, latents = m_architecture.latents, out = m_architecture.chunk_size;
        const std::int64_t tile = std::min(rows, tile_rows);
        float* x = workspace;
        float* hidden = x + tile * latents;
        float* product = hidden + tile * width;
        constexpr int threads = 256;
        for (std::int64_t begin = 0; begin < rows; begin += tile_rows) {
            const std::int64_t count = std::min(tile_rows, rows - begin);
            const std::uint8_t* tile_levels = levels + begin;
            detail::latents_kernel<<<detail::blocks_for(count * latents, threads), threads, 0, stream>>>(
                symbols + begin * latents, tile_levels, m_medians.data(), m_group_of_level.data(), count, latents, x);
            NWC_CUDA_CHECK_LAUNCH("latents_kernel");
            gemm(cublas, x, parameter(0), count, latents, width, hidden);
            detail::add_bias_kernel<<<detail::blocks_for(count * width, threads), threads, 0, stream>>>(hidden, parameter(1), count, width);
            NWC_CUDA_CHECK_LAUNCH("add_bias_kernel");
            for (int block = 0; block < m_architecture.blocks; ++block) {
                const std::size_t base = 2 + 4 * std::size_t(block);
                gemm(cublas, hidden, parameter(base), count, width, width, product);
                detail::block_epilogue_kernel<<<detail::blocks_for(count * 32, threads), threads, 0, stream>>>(
                    product, parameter(base + 1), parameter(base + 2), parameter(base + 3), parameter(m_offsets.size() - 3), tile_levels,
                    hidden, count, width, float(nwc::detail::layer_norm_epsilon));
                NWC_CUDA_CHECK_LAUNCH("block_epilogue_kernel");
            }
            float* y = chunks + begin * out;
            gemm(cublas, hidden, parameter(m_offsets.size() - 2), count, width, out, y);
            detail::add_bias_kernel<<<detail::blocks_for(count * out, threads), threads, 0, stream>>>(y, parameter(m_offsets.size() - 1), count, out);
            NWC_CUDA_CHECK_LAUNCH("add_bias_kernel");
        }
    }

private:
    const float* parameter(std::size_t index) const noexcept { return m_parameters.data() + m_offsets[index]; }

    /// y (rows x out) = x (rows x in) W^T, W row-major [out, in].
    static void gemm(const CublasHandle& cublas, const float* x, const float* weight, std::int64_t rows, int in, int out, float* y) {
        const float one = 1.0f, zero = 0.0f;
        NWC_CUBLAS_CHECK(cublasSgemm(cublas.get(), CUBLAS_OP_T, CUBLAS_OP_N, out, int(rows), in, &one, weight, in, x, in, &zero, y, out));
    }

    CodecArchitecture m_architecture;
    std::vector<std::size_t> m_offsets;  ///< start of each parameter (ResidualMLP::parameters() order)
    DeviceBuffer<float> m_parameters, m_medians;
    DeviceBuffer<std::uint8_t> m_group_of_level;
};

}  // namespace nwc::cuda
