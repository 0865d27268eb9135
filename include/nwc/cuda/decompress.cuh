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
// - ecsq and tcq tensors are decoded on the device too: their rANS streams (the plain kernel for
//   ecsq, the context-coded one of cuda/context_rans_decode.cuh for tcq's trellis), then one
//   thread per weight multiplies its grid index by its step (float(k) * (Δ s), the CPU's float
//   product, rounded once): bit-identical to the CPU decoder, in every output type.
// - Tensors of the other methods (raw, rtn, gptq, lossless) are decoded on the CPU (simd backend)
//   and uploaded: correct, not accelerated.
// - Translation units that include this header also include Eigen through the pipeline; nvcc must
//   see EIGEN_NO_CUDA (defined here if Eigen was not included yet) or Eigen marks host-only code
//   __host__ __device__ and nvcc warns on every LDLT instantiation.
#pragma once

#if !defined(EIGEN_NO_CUDA) && !defined(EIGEN_CORE_H)
#define EIGEN_NO_CUDA
#endif

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <string>
#include <variant>
#include <vector>

#include "nwc/core/half.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/cuda/context_rans_decode.cuh"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device_buffer.cuh"
#include "nwc/cuda/mlp_decode.cuh"
#include "nwc/cuda/rans_decode.cuh"
#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"

namespace nwc::cuda {

/// What a series of decompress_to_device calls can share: the stream, the cuBLAS handle, and the
/// memory pool each call's temporaries come from (freed in stream order, so decoders on several
/// streams do not wait for one another as cudaFree would make them).
class GpuDecodeContext {
public:
    explicit GpuDecodeContext(cudaStream_t stream = nullptr) : m_stream(stream), m_cublas(stream) {}
    GpuDecodeContext(const GpuDecodeContext&) = delete;
    GpuDecodeContext& operator=(const GpuDecodeContext&) = delete;
    ~GpuDecodeContext() { (void)cudaStreamSynchronize(m_stream); }  // the pool's frees are queued on it

    cudaStream_t stream() const noexcept { return m_stream; }
    const CublasHandle& cublas() const noexcept { return m_cublas; }
    /// Temporaries: the pool, in the order of the stream.
    TemporaryMemory temporaries() const noexcept { return {m_stream, m_pool.get()}; }

private:
    cudaStream_t m_stream;
    CublasHandle m_cublas;
    DeviceMemoryPool m_pool;
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

/// ecsq: grid index i of the row-major tensor times its step.
template <class T>
__global__ void dequantize_rows_kernel(const std::int32_t* indices, std::int64_t rows, std::int64_t cols, const float* steps, NormalizationAxis axis,
                                       T* out) {
    const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    const std::int64_t row = i / cols, column = i % cols;
    out[i] = from_float<T>(__fmul_rn(float(indices[i]), steps[scale_index(axis, row, column)]));
}

/// tcq: value p of the tensor's trellis stream (TrellisStripLayout: strips of 32 columns, full
/// strips row by row, a narrower last strip column by column) times its step.
template <class T>
__global__ void dequantize_strips_kernel(const std::int32_t* indices, std::int64_t rows, std::int64_t cols, const float* steps, NormalizationAxis axis,
                                         T* out) {
    constexpr std::int64_t width = TrellisStripLayout::strip_width;
    const std::int64_t p = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p >= rows * cols) return;
    const std::int64_t strip = p / (width * rows), within = p % (width * rows);
    const bool full = cols - strip * width >= width;
    const std::int64_t row = full ? within / width : within % rows;
    const std::int64_t column = strip * width + (full ? within % width : within / rows);
    out[row * cols + column] = from_float<T>(__fmul_rn(float(indices[p]), steps[scale_index(axis, row, column)]));
}

/// The ecsq and tcq paths: every rANS segment of every tensor segment on the device, then the
/// dequantization kernel. `Method` is EcsqMethod or TcqMethod.
template <class T, class Method, class Plan>
DeviceBuffer<T> decompress_grid(const ContainerReader& reader, const Plan& plan, const typename Method::Layout& layout, GpuDecodeContext& context) {
    constexpr bool trellis = std::is_same_v<Method, TcqMethod>;
    std::int64_t rows = 0, cols = 0;  // an ecsq vector is one row
    if constexpr (trellis)
        rows = layout.strips.rows, cols = layout.strips.cols;
    else
        rows = layout.rows, cols = layout.cols;
    const auto payload = reader.payload(plan.index);
    std::vector<RansSegmentJob> jobs;
    for (std::size_t s = 0; s < layout.segment_count(); ++s) {
        const auto bytes = reader.segment(plan.index, s);
        const std::string where = plan.context + " segment " + std::to_string(s);
        std::uint64_t first = 0;
        RansStreamIndex index;
        if constexpr (trellis) {
            index = Method::read_index(layout, bytes, where);
            first = std::uint64_t(layout.strips.segment_begin(s));
        } else {
            index = rans::read_index(bytes, layout.tables);
            first = std::uint64_t(std::int64_t(s) * layout.rows_per_segment * cols);
        }
        require(index.symbol_count == std::uint64_t(layout.segment_weights(s)), errc::corrupt, where, ": ", index.symbol_count, " symbols for ",
                layout.segment_weights(s), " weights");
        const std::uint64_t stream_offset = std::uint64_t(bytes.data() - payload.data());
        for (std::size_t k = 0; k < index.segments.size(); ++k)
            jobs.push_back(make_rans_job(bytes, index, k, stream_offset, first + index.segments[k].first_symbol));
    }

    const cudaStream_t stream = context.stream();
    const TemporaryMemory temporaries = context.temporaries();
    DeviceBuffer<T> output(std::size_t(rows * cols));
    if (rows * cols == 0) return output;
    const DeviceBuffer<std::uint8_t> device_payload(payload, temporaries);
    DeviceBuffer<std::int32_t> indices(std::size_t(rows * cols), temporaries);
    const DeviceRansTables tables(layout.tables, temporaries);
    if constexpr (trellis) {
        const DeviceLaneMachine machine(nwc::detail::ContextDecodeTables(layout.tables, layout.machine), temporaries);
        context_rans_decode_segments(device_payload.data(), jobs, tables, machine, indices.data(), temporaries, plan.context);
    } else {
        rans_decode_segments(device_payload.data(), jobs, tables, indices.data(), temporaries, plan.context);
    }
    const DeviceBuffer<float> steps(std::span<const float>(layout.steps), temporaries);
    constexpr int threads = 256;
    if constexpr (trellis)
        dequantize_strips_kernel<T><<<blocks_for(rows * cols, threads), threads, 0, stream>>>(indices.data(), rows, cols, steps.data(), layout.axis,
                                                                                              output.data());
    else
        dequantize_rows_kernel<T><<<blocks_for(rows * cols, threads), threads, 0, stream>>>(indices.data(), rows, cols, steps.data(), layout.axis,
                                                                                            output.data());
    NWC_CUDA_CHECK_LAUNCH("dequantize kernel");
    NWC_CUDA_CHECK(cudaStreamSynchronize(stream));  // the temporaries are freed on return
    return output;
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
    const TemporaryMemory temporaries = context.temporaries();
    const DeviceBuffer<std::uint8_t> device_payload(payload, temporaries);
    DeviceBuffer<std::int32_t> symbols(std::size_t(chunk_count * latents), temporaries);
    for (int group = 0; group < arch.prior_groups(); ++group) {
        if (jobs[std::size_t(group)].empty()) continue;
        const DeviceRansTables tables(decoder.all_tables()[std::size_t(group)], temporaries);
        rans_decode_segments(device_payload.data(), jobs[std::size_t(group)], tables, symbols.data(), temporaries, plan.context);
    }
    const DeviceBuffer<std::uint8_t> device_levels(std::span<const std::uint8_t>(levels), temporaries);
    const DeviceBuffer<std::int32_t> device_columns(std::span<const std::int32_t>(chunk_columns), temporaries);
    const DeviceBuffer<std::int32_t> device_in_column(std::span<const std::int32_t>(chunk_in_column), temporaries);
    const DeviceBuffer<float> device_scales(std::span<const float>(scales), temporaries);
    const DeviceNeuralDecoder network(decoder, temporaries);
    DeviceBuffer<float> workspace((network.workspace_bytes(chunk_count) + sizeof(float) - 1) / sizeof(float), temporaries);
    DeviceBuffer<float> chunks(std::size_t(chunk_count * d), temporaries);
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
    if (const auto* parsed = std::get_if<nwc::detail::MethodLayout<EcsqMethod>>(&plan.layout))
        return detail::decompress_grid<T, EcsqMethod>(reader, plan, parsed->layout, context);
    if (const auto* parsed = std::get_if<nwc::detail::MethodLayout<TcqMethod>>(&plan.layout))
        return detail::decompress_grid<T, TcqMethod>(reader, plan, parsed->layout, context);
    // Other methods: the CPU decoder, then one upload.
    Tensor<float> decoded(reader.entry(index).shape);
    nwc::detail::decode_plans<backend::simd>(reader, std::vector{plan}, {&decoded}, 1, {}, 1);
    std::vector<T> converted(decoded.values().size());
    for (std::size_t k = 0; k < converted.size(); ++k) converted[k] = from_float<T>(decoded.values()[k]);
    return DeviceBuffer<T>(std::span<const T>(converted));
}

/// Decodes tensors `indices` of `reader` into device memory as T, on `streams` streams at once
/// (one host thread, stream, cuBLAS handle and memory pool each; 0 = one per core): a single
/// tensor's decode keeps only a few warps busy (one per rANS segment), so a model's tensors are
/// decoded side by side. out[k] is tensor indices[k], as decompress_to_device would give it
/// (bit-identical for ecsq and tcq). Runs on the calling thread's current device; waits for the
/// GPU. Throws the first error any tensor gives (the others stop being started).
template <class T>
std::vector<DeviceBuffer<T>> decompress_tensors_to_device(const ContainerReader& reader, std::span<const std::size_t> indices, int streams = 8) {
    std::vector<DeviceBuffer<T>> out(indices.size());
    int device = 0;
    NWC_CUDA_CHECK(cudaGetDevice(&device));
    const int workers = int(std::min<std::size_t>(std::size_t(resolve_thread_count(streams)), std::max<std::size_t>(indices.size(), 1)));
    std::atomic<std::size_t> next{0};
    parallel_for(workers, workers, [&](std::int64_t) {
        NWC_CUDA_CHECK(cudaSetDevice(device));
        cudaStream_t stream = nullptr;
        NWC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        const std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> owned(stream, &cudaStreamDestroy);
        GpuDecodeContext context(stream);
        try {
            for (std::size_t k = next++; k < indices.size(); k = next++) out[k] = decompress_to_device<T>(reader, indices[k], context);
        } catch (...) {
            next = indices.size();  // no new tensors anywhere
            throw;
        }
    });
    return out;
}

/// Same, with a context of its own (a cuBLAS handle per call costs milliseconds: keep a context
/// for many tensors).
template <class T>
DeviceBuffer<T> decompress_to_device(const ContainerReader& reader, std::size_t index) {
    GpuDecodeContext context;
    return decompress_to_device<T>(reader, index, context);
}

}  // namespace nwc::cuda
