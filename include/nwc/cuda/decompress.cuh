// nwc::cuda::decompress_to_device: one tensor of a .nwc container decoded into GPU memory as
// float, half or bfloat16 (backend tag nwc::backend::cuda).
//
// Read me first:
// - The host parses and validates everything first, exactly as the CPU decoder does
//   (detail::make_decode_plan, rans::read_index with the CRC of every stream), then copies the
//   tensor's payload to the device once. The GPU then runs: rANS (one warp per rANS segment, one
//   launch per prior group, cuda/rans_decode.cuh), g_s over all chunks (cuda/mlp_decode.cuh), and
//   de-normalization straight into the output type (one thread per weight).
// - De-normalization is bit-identical to the CPU's for the same chunk values: (value / alpha) *
//   scale, IEEE division and multiplication (no FMA can form), then nwc::from_float<T>, the same
//   host/device function the CPU uses. The chunk values themselves differ from the CPU's by the
//   GEMMs' summation order only.
// - Tensors of the other methods (raw, rtn, gptq, ecsq) are decoded on the CPU (simd backend) and
//   uploaded: correct, not accelerated.
// - Translation units that include this header also include Eigen through the pipeline; nvcc must
//   see EIGEN_NO_CUDA (defined here if Eigen was not included yet) or Eigen marks host-only code
//   __host__ __device__ and nvcc warns on every LDLT instantiation.
#pragma once

#if !defined(EIGEN_NO_CUDA) && !defined(EIGEN_CORE_H)
#define EIGEN_NO_CUDA
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <string>
#include <variant>
#include <vector>

#include "nwc/core/half.hpp"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device_buffer.cuh"
#include "nwc/cuda/mlp_decode.cuh"
#include "nwc/cuda/rans_decode.cuh"
#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"

namespace nwc::cuda {

/// What a series of decompress_to_device calls can share: the stream and the cuBLAS handle.
class GpuDecodeContext {
public:
    explicit GpuDecodeContext(cudaStream_t stream = nullptr) : m_stream(stream), m_cublas(stream) {}
    cudaStream_t stream() const noexcept { return m_stream; }
    const CublasHandle& cublas() const noexcept { return m_cublas; }

private:
    cudaStream_t m_stream;
    CublasHandle m_cublas;
};

namespace detail {

template <class T>
__global__ void denormalize_kernel(const float* chunks, const std::int32_t* chunk_columns, const std::int32_t* chunk_in_column,
                                   std::int64_t chunk_count, int chunk_size, std::int64_t rows, std::int64_t cols, float alpha,
                                   const float* scales, NormalizationAxis axis, T* out) {
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= chunk_count * chunk_size) return;
    const std::int64_t chunk = i / chunk_size;
    const std::int64_t row = std::int64_t(chunk_in_column[chunk]) * chunk_size + i % chunk_size;
    if (row >= rows) return;  // the tail padding of a column's last chunk
    const std::int64_t column = chunk_columns[chunk];
    const float scale = scales[scale_index(axis, row, column)];
    out[row * cols + column] = from_float<T>((chunks[i] / alpha) * scale);
}

/// The nwc path: everything on the device.
template <class T, class Plan>
DeviceBuffer<T> decompress_nwc(const ContainerReader& reader, const Plan& plan, const NwcMethod::Layout& layout, GpuDecodeContext& context) {
    const NeuralDecoder& decoder = *layout.decoder;
    const CodecArchitecture& arch = decoder.architecture();
    const std::int64_t d = layout.chunk_size, latents = layout.latents;
    // Host side: per chunk its level, column and index in the column; per prior group the rANS jobs.
    std::vector<std::uint8_t> levels;
    std::vector<std::int32_t> chunk_columns, chunk_in_column;
    std::vector<std::vector<RansSegmentJob>> jobs(std::size_t(arch.prior_groups()));
    const auto payload = reader.payload(plan.index);
    for (std::size_t s = 0; s < layout.segment_count(); ++s) {
        const auto& where = layout.segments[s];
        const std::int64_t first_chunk = std::int64_t(levels.size());
        const std::int64_t first = where.span * layout.columns_per_segment;
        for (std::int64_t c = first; c < std::min(layout.cols, first + layout.columns_per_segment); ++c)
            if (arch.prior_group(layout.levels[std::size_t(c)]) == where.group)
                for (std::int64_t k = 0; k < layout.chunks_per_column; ++k) {
                    levels.push_back(layout.levels[std::size_t(c)]);
                    chunk_columns.push_back(std::int32_t(c));
                    chunk_in_column.push_back(std::int32_t(k));
                }
        const auto bytes = reader.segment(plan.index, s);
        const RansStreamIndex index = rans::read_index(bytes, decoder.all_tables()[std::size_t(where.group)]);
        const std::int64_t chunk_count = std::int64_t(levels.size()) - first_chunk;
        require(index.symbol_count == std::uint64_t(chunk_count * latents), errc::corrupt, plan.context, " segment ", s, ": ", index.symbol_count,
                " symbols for ", chunk_count, " chunks of ", latents, " latents");
        const std::uint64_t stream_offset = std::uint64_t(bytes.data() - payload.data());
        for (std::size_t k = 0; k < index.segments.size(); ++k)
            jobs[std::size_t(where.group)].push_back(
                make_rans_job(bytes, index, k, stream_offset, std::uint64_t(first_chunk * latents) + index.segments[k].first_symbol));
    }
    const std::int64_t chunk_count = std::int64_t(levels.size());
    std::vector<float> scales(layout.scales.size());
    for (std::size_t k = 0; k < scales.size(); ++k) scales[k] = to_float(layout.scales[k]);

    // Device side.
    const cudaStream_t stream = context.stream();
    DeviceBuffer<std::uint8_t> device_payload(payload);
    DeviceBuffer<std::int32_t> symbols(std::size_t(chunk_count * latents));
    for (int group = 0; group < arch.prior_groups(); ++group) {
        if (jobs[std::size_t(group)].empty()) continue;
        const DeviceRansTables tables(decoder.all_tables()[std::size_t(group)]);
        rans_decode_segments(device_payload.data(), jobs[std::size_t(group)], tables, symbols.data(), stream, plan.context);
    }
    const DeviceBuffer<std::uint8_t> device_levels{std::span<const std::uint8_t>(levels)};
    const DeviceBuffer<std::int32_t> device_columns{std::span<const std::int32_t>(chunk_columns)};
    const DeviceBuffer<std::int32_t> device_in_column{std::span<const std::int32_t>(chunk_in_column)};
    const DeviceBuffer<float> device_scales{std::span<const float>(scales)};
    const DeviceNeuralDecoder network(decoder);
    DeviceBuffer<float> workspace((network.workspace_bytes(chunk_count) + sizeof(float) - 1) / sizeof(float));
    DeviceBuffer<float> chunks(std::size_t(chunk_count * d));
    network.run(symbols.data(), device_levels.data(), chunk_count, chunks.data(), workspace.data(), workspace.bytes(), context.cublas(), stream);
    DeviceBuffer<T> output(std::size_t(layout.rows * layout.cols));
    if (chunk_count == 0) return output;  // no columns: nothing to launch (a zero grid is an error)
    constexpr int threads = 256;
    denormalize_kernel<T><<<blocks_for(chunk_count * d, threads), threads, 0, stream>>>(
        chunks.data(), device_columns.data(), device_in_column.data(), chunk_count, int(d), layout.rows, layout.cols, layout.alpha,
        device_scales.data(), layout.axis, output.data());
    NWC_CUDA_CHECK_LAUNCH("denormalize_kernel");
    // The temporaries above are freed when this returns: wait for the work that uses them.
    NWC_CUDA_CHECK(cudaStreamSynchronize(stream));
    return output;
}

}  // namespace detail

/// Decodes tensor `index` of `reader` into device memory as T (float, nwc::half or nwc::bfloat16),
/// row-major, shape reader.entry(index).shape. Waits for the GPU before returning. Throws
/// nwc::error: the CPU decoder's errors for bad files (corrupt, truncated, unsupported, limit)
/// and errc::cuda for CUDA failures.
template <class T>
DeviceBuffer<T> decompress_to_device(const ContainerReader& reader, std::size_t index, GpuDecodeContext& context) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>, "decompress_to_device: float, half or bfloat16");
    DecodeResources resources(reader);
    const auto plan = nwc::detail::make_decode_plan(reader, index, resources, BuiltinMethods{});
    if (const auto* parsed = std::get_if<nwc::detail::MethodLayout<NwcMethod>>(&plan.layout))
        return detail::decompress_nwc<T>(reader, plan, parsed->layout, context);
    // Other methods: the CPU decoder, then one upload.
    Tensor<float> decoded(reader.entry(index).shape);
    nwc::detail::decode_plans<backend::simd>(reader, std::vector{plan}, {&decoded}, 1, {}, 1);
    std::vector<T> converted(decoded.values().size());
    for (std::size_t k = 0; k < converted.size(); ++k) converted[k] = from_float<T>(decoded.values()[k]);
    return DeviceBuffer<T>(std::span<const T>(converted));
}

/// Same, with a context of its own (a cuBLAS handle per call costs milliseconds: keep a context
/// for many tensors).
template <class T>
DeviceBuffer<T> decompress_to_device(const ContainerReader& reader, std::size_t index) {
    GpuDecodeContext context;
    return decompress_to_device<T>(reader, index, context);
}

}  // namespace nwc::cuda
