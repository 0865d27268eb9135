// nwc::cuda::decompress_to_device: one tensor of a .nwc container decoded into GPU memory as
// float, half or bfloat16 (backend tag nwc::backend::cuda); decompress_tensors_to_device: many
// (a model's), its ecsq and tcq tensors decoded together.
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
// - One tensor keeps few warps busy (one per rANS segment: an MT3 matrix has 4), so a model is
//   decoded with decompress_tensors_to_device: GridBatch puts the rANS segments of many ecsq and
//   tcq tensors into one launch (each job names its tensor's table set), 8.6x one call per tensor
//   on MT3 (docs/bench/decode.md, section GPU).
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
#include "nwc/cuda/context_rans_decode.cuh"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device_buffer.cuh"
#include "nwc/cuda/mlp_decode.cuh"
#include "nwc/cuda/rans_decode.cuh"
#include "nwc/pipeline/builtin_decodings.hpp"
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

/// Whether a plan's tensor is ecsq or tcq (decoded by GridBatch).
template <class Plan>
bool on_grid(const Plan& plan) noexcept {
    return std::holds_alternative<nwc::detail::MethodLayout<EcsqDecoding>>(plan.layout) ||
           std::holds_alternative<nwc::detail::MethodLayout<TcqDecoding>>(plan.layout);
}

/// ecsq and tcq tensors decoded together: every rANS segment of every tensor in one launch per
/// method (each job with its tensor's tables; one launch keeps the GPU busy where one tensor's few
/// segments would leave it idle), then one dequantization kernel per tensor, then one wait.
/// add() parses and validates on the host (as the CPU decoder does); run() does the device work.
template <class T, class Plan>
class GridBatch {
public:
    /// Adds `plan` (an ecsq or tcq tensor of `reader`) to be decoded into outputs[slot] by run().
    void add(const ContainerReader& reader, Plan plan, std::size_t slot) {
        Entry entry;
        entry.plan = std::move(plan);
        entry.slot = slot;
        const Plan& kept = entry.plan;
        entry.payload = reader.payload(kept.index);
        entry.trellis = std::holds_alternative<nwc::detail::MethodLayout<TcqDecoding>>(kept.layout);
        std::vector<RansSegmentJob>& jobs = m_jobs[entry.trellis];
        entry.set = m_set_count[entry.trellis]++;
        entry.first_value = m_values;
        entry.payload_offset = m_bytes;
        auto add_segments = [&](const auto& layout, auto read_index, auto first_of) {
            for (std::size_t s = 0; s < layout.segment_count(); ++s) {
                const auto bytes = reader.segment(kept.index, s);
                const std::string where = kept.context + " segment " + std::to_string(s);
                const RansStreamIndex index = read_index(layout, bytes, where);
                require(index.symbol_count == std::uint64_t(layout.segment_weights(s)), errc::corrupt, where, ": ", index.symbol_count, " symbols for ",
                        layout.segment_weights(s), " weights");
                const std::uint64_t stream_offset = m_bytes + std::uint64_t(bytes.data() - entry.payload.data());
                for (std::size_t k = 0; k < index.segments.size(); ++k) {
                    jobs.push_back(make_rans_job(bytes, index, k, stream_offset, m_values + first_of(layout, s) + index.segments[k].first_symbol));
                    jobs.back().table_set = entry.set;
                }
            }
        };
        if (entry.trellis) {
            const auto& layout = std::get<nwc::detail::MethodLayout<TcqDecoding>>(kept.layout).layout;
            entry.rows = layout.strips.rows, entry.cols = layout.strips.cols;
            add_segments(layout, [](const auto& l, auto bytes, const std::string& where) { return TcqDecoding::read_index(l, bytes, where); },
                         [](const auto& l, std::size_t s) { return std::uint64_t(l.strips.segment_begin(s)); });
        } else {
            const auto& layout = std::get<nwc::detail::MethodLayout<EcsqDecoding>>(kept.layout).layout;
            entry.rows = layout.rows, entry.cols = layout.cols;  // a vector is one row
            add_segments(layout, [](const auto& l, auto bytes, const std::string&) { return rans::read_index(bytes, l.tables); },
                         [](const auto& l, std::size_t s) { return std::uint64_t(std::int64_t(s) * l.rows_per_segment * l.cols); });
        }
        m_values += std::uint64_t(entry.rows * entry.cols);
        m_bytes += entry.payload.size();
        m_entries.push_back(std::move(entry));
    }

    std::uint64_t weights() const noexcept { return m_values; }

    /// Decodes every tensor added into outputs[slot] (row-major T), waits, and starts over empty.
    void run(GpuDecodeContext& context, std::vector<DeviceBuffer<T>>& outputs) {
        if (m_entries.empty()) return;
        const cudaStream_t stream = context.stream();
        const TemporaryMemory temporaries = context.temporaries();
        DeviceBuffer<std::uint8_t> bytes(m_bytes, temporaries);
        for (const Entry& entry : m_entries)
            if (!entry.payload.empty())
                NWC_CUDA_CHECK(cudaMemcpyAsync(bytes.data() + entry.payload_offset, entry.payload.data(), entry.payload.size(), cudaMemcpyHostToDevice, stream));
        DeviceBuffer<std::int32_t> indices(m_values, temporaries);
        // Per method: each tensor's tables (and machine), in the order of its set index.
        std::vector<DeviceRansTables> tables[2];
        std::vector<DeviceLaneMachine> machines;
        std::vector<CyclicChannels> cyclic;
        std::vector<MachineChannels> by_machine;
        std::vector<std::string> contexts[2];
        for (int kind = 0; kind < 2; ++kind) tables[kind].reserve(m_set_count[kind]);  // stable addresses for the launch
        machines.reserve(m_set_count[1]);
        for (const Entry& entry : m_entries) {
            contexts[entry.trellis].push_back(entry.plan.context);
            if (entry.trellis) {
                const auto& layout = std::get<nwc::detail::MethodLayout<TcqDecoding>>(entry.plan.layout).layout;
                tables[1].emplace_back(layout.tables, temporaries);
                machines.emplace_back(nwc::detail::ContextDecodeTables(layout.tables, layout.machine), temporaries);
                by_machine.push_back(machines.back().policy());
            } else {
                const auto& layout = std::get<nwc::detail::MethodLayout<EcsqDecoding>>(entry.plan.layout).layout;
                tables[0].emplace_back(layout.tables, temporaries);
                cyclic.push_back({tables[0].back().channel_count()});
            }
        }
        for (int kind = 0; kind < 2; ++kind) {
            std::vector<const DeviceRansTables*> sets;
            for (const DeviceRansTables& set : tables[kind]) sets.push_back(&set);
            if (kind == 0)
                launch_rans_decode<CyclicChannels>(bytes.data(), m_jobs[0], sets, cyclic, indices.data(), temporaries, contexts[0]);
            else
                launch_rans_decode<MachineChannels>(bytes.data(), m_jobs[1], sets, by_machine, indices.data(), temporaries, contexts[1]);
        }
        std::vector<DeviceBuffer<float>> steps;
        steps.reserve(m_entries.size());
        constexpr int threads = 256;
        for (const Entry& entry : m_entries) {
            const std::int64_t count = entry.rows * entry.cols;
            DeviceBuffer<T>& output = outputs[entry.slot];
            output = DeviceBuffer<T>(std::size_t(count));
            if (count == 0) continue;
            const std::int32_t* values = indices.data() + entry.first_value;
            if (entry.trellis) {
                const auto& layout = std::get<nwc::detail::MethodLayout<TcqDecoding>>(entry.plan.layout).layout;
                steps.emplace_back(std::span<const float>(layout.steps), temporaries);
                dequantize_strips_kernel<T><<<blocks_for(count, threads), threads, 0, stream>>>(values, entry.rows, entry.cols, steps.back().data(),
                                                                                                  layout.axis, output.data());
            } else {
                const auto& layout = std::get<nwc::detail::MethodLayout<EcsqDecoding>>(entry.plan.layout).layout;
                steps.emplace_back(std::span<const float>(layout.steps), temporaries);
                dequantize_rows_kernel<T><<<blocks_for(count, threads), threads, 0, stream>>>(values, entry.rows, entry.cols, steps.back().data(),
                                                                                                layout.axis, output.data());
            }
            NWC_CUDA_CHECK_LAUNCH("dequantize kernel");
        }
        NWC_CUDA_CHECK(cudaStreamSynchronize(stream));  // the temporaries are freed on return
        *this = GridBatch();
    }

private:
    struct Entry {
        Plan plan;
        std::size_t slot = 0;
        std::span<const std::uint8_t> payload;
        bool trellis = false;
        std::uint32_t set = 0;  ///< its table set among its method's
        std::int64_t rows = 0, cols = 0;
        std::uint64_t first_value = 0, payload_offset = 0;  ///< in the batch's index and byte buffers
    };
    std::vector<Entry> m_entries;
    std::vector<RansSegmentJob> m_jobs[2];  ///< ecsq, tcq
    std::uint32_t m_set_count[2] = {};
    std::uint64_t m_values = 0, m_bytes = 0;
};

/// The nwc path: everything on the device.
template <class T, class Plan>
DeviceBuffer<T> decompress_nwc(const ContainerReader& reader, const Plan& plan, const NwcDecoding::Layout& layout, GpuDecodeContext& context) {
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
    auto plan = nwc::detail::make_decode_plan(reader, index, resources, BuiltinDecodings{});
    if (const auto* parsed = std::get_if<nwc::detail::MethodLayout<NwcDecoding>>(&plan.layout))
        return detail::decompress_nwc<T>(reader, plan, parsed->layout, context);
    if (detail::on_grid(plan)) {  // a batch of one
        detail::GridBatch<T, decltype(plan)> batch;
        std::vector<DeviceBuffer<T>> outputs(1);
        batch.add(reader, std::move(plan), 0);
        batch.run(context, outputs);
        return std::move(outputs[0]);
    }
    // Other methods: the CPU decoder, then one upload.
    Tensor<float> decoded(reader.entry(index).shape);
    nwc::detail::decode_plans<backend::simd>(reader, std::vector{plan}, {&decoded}, 1, {}, 1);
    std::vector<T> converted(decoded.values().size());
    for (std::size_t k = 0; k < converted.size(); ++k) converted[k] = from_float<T>(decoded.values()[k]);
    return DeviceBuffer<T>(std::span<const T>(converted));
}

/// Decodes tensors `indices` of `reader` into device memory as T: out[k] is tensor indices[k], as
/// decompress_to_device would give it (bit-identical for ecsq and tcq). The ecsq and tcq tensors
/// are decoded together, up to `batch_weights` weights at a time (their int32 grid indices are
/// held on the device meanwhile): a single tensor has only a few rANS segments, one warp each, so
/// one launch for many tensors is what fills the GPU. Other tensors are decoded one by one. Waits
/// for the GPU; throws what decompress_to_device throws.
template <class T>
std::vector<DeviceBuffer<T>> decompress_tensors_to_device(const ContainerReader& reader, std::span<const std::size_t> indices, GpuDecodeContext& context,
                                                          std::uint64_t batch_weights = std::uint64_t(1) << 27) {
    std::vector<DeviceBuffer<T>> out(indices.size());
    DecodeResources resources(reader);
    using Plan = decltype(nwc::detail::make_decode_plan(reader, 0, resources, BuiltinDecodings{}));
    detail::GridBatch<T, Plan> batch;
    for (std::size_t k = 0; k < indices.size(); ++k) {
        Plan plan = nwc::detail::make_decode_plan(reader, indices[k], resources, BuiltinDecodings{});
        if (!detail::on_grid(plan)) {
            out[k] = decompress_to_device<T>(reader, indices[k], context);
            continue;
        }
        batch.add(reader, std::move(plan), k);
        if (batch.weights() >= batch_weights) batch.run(context, out);
    }
    batch.run(context, out);
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
