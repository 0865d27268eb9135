// nwc::StreamingDecompressor: a .nwc container decoded tensor by tensor straight into its output
// file(s), byte for byte what write_model_file (.safetensors) and write_hf_directory write for
// decompress_model()'s ModelFile, without ever holding the whole model.
//
// Read me first:
// - A safetensors header depends only on names, dtypes and shapes, all in the container's
//   directory: it is written first (detail::safetensors_header_bytes, which SafetensorsWriter
//   uses too), then the tensors in the header's layout order, each decoded to float32, converted
//   to its dtype and appended through AtomicFileWriter.
// - Memory: `threads` workers decode whole tensors (one thread each; a tensor 4x the mean size or
//   larger, the embedding, on all of them) in layout order and convert them to their dtype in
//   place, while the calling thread writes them in that order; at most `threads` decoded tensors
//   wait, so the peak is about (threads + 1) x the largest tensor in float32 plus the compressed
//   bytes of the tensors in flight, instead of the ~3x the model decompress_model() +
//   SafetensorsWriter take. For that a tensor's plan is made (which reads its metadata and checks
//   the CRC of its bytes) only when it is decoded, and its compressed pages leave the process
//   afterwards: the mapped input never becomes resident whole.
// - Speed (docs/bench/scale.md): tensors decode into pooled buffers (BufferPool: no fresh pages to
//   fault in and zero per tensor, trimmed to the largest tensor still to come); a method that can
//   decodes straight into the stored dtype (StoredDecodingMethod: lossless); the finiteness check
//   runs chunk by chunk with the conversion; AtomicFileWriter starts the disk writes as it goes.
// - The same output as the in-memory path because the same functions choose it: the tensors
//   (a llama2.c source: Hugging Face names, q/k rows in HF order, F32, as
//   detail::for_each_safetensors_tensor gives them), the __metadata__, config.json, the source
//   directory's other files (a directory output only), the shard split (detail::hf_shards_of) and
//   the index. tests/test_cli.cpp compares the bytes.
// - Not streamed: a llama2.c .bin output (nwc decompress decodes the whole model for it).
// - Errors as decompress_model() (the same nwc::error naming the tensor), but a tensor's metadata
//   or payload is checked when its turn comes: a failure midway leaves no partial file or
//   directory (AtomicFileWriter, detail::AtomicDirectory), so the result is the same.
#pragma once

#include <cstring>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/buffer_pool.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/half_simd.hpp"
#include "nwc/core/produce_in_order.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/hf_directory.hpp"
#include "nwc/io/safetensors_writer.hpp"
#include "nwc/pipeline/builtin_decodings.hpp"
#include "nwc/pipeline/model_decoding.hpp"

namespace nwc {

namespace detail {

/// One tensor of a safetensors output: its header entry and where its values come from.
struct StreamedTensor {
    SafetensorsEntry entry;
    std::size_t model_index = 0;  ///< into the decompressor's model tensors (container order, RoPE entry left out)
    int rope_heads = 0;  ///< > 0: a llama2.c q/k weight, rows permuted to HF order
};

}  // namespace detail

/// Decodes the container `reader` reads into a .safetensors file or a Hugging Face directory,
/// one tensor at a time (see the header comment). Keeps the codec blobs parsed for the whole run.
/// `Methods` (decoding halves or full methods, as nwc::decompress_model takes them) and `Backend`
/// are a codec's: `StreamingDecompressor<C::backend_type, C::methods>` for a Codec type `C`. Only
/// decoders are compiled: no encoder is included.
template <class Backend = backend::default_backend, class Methods = BuiltinDecodings>
class StreamingDecompressor {
public:
    /// Reads the file metadata and the directory (tensors are checked when they are decoded).
    explicit StreamingDecompressor(const ContainerReader& reader) : m_reader(reader), m_resources(reader), m_source(detail::model_source_of(reader)) {
        detail::require_host_backend<Backend>();
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            if (detail::is_rope_corrections(reader.entry(index).name)) {  // only a .bin needs them: checked as decompress_model() checks them
                (void)detail::rope_corrections_of(reader, index, m_source);
                continue;
            }
            if (detail::is_source_file(reader.entry(index).name)) {  // only a directory gets them: checked as decompress_model() checks them
                m_source_files.push_back(detail::source_file_of(reader, index));
                continue;
            }
            m_model_tensors.push_back(index);
            m_weights += reader.entry(index).shape.numel();
        }
    }
    StreamingDecompressor(const StreamingDecompressor&) = delete;
    StreamingDecompressor& operator=(const StreamingDecompressor&) = delete;

    ModelFormat source_format() const noexcept { return m_source.format; }
    /// decompress_model()'s ModelFile::tensors.size() and weight_count().
    std::size_t tensor_count() const noexcept { return m_model_tensors.size(); }
    std::int64_t weight_count() const noexcept { return m_weights; }

    /// What write_model_file(decompress_model(reader), path) writes for a .safetensors `path`.
    void write_safetensors(const std::filesystem::path& path, int threads = 1, const ProgressCallback& progress = {},
                           std::uint64_t max_bytes = UINT64_MAX) {
        const std::string context = "writing '" + path.string() + "'";
        const std::vector<detail::StreamedTensor> tensors = output_tensors(context);
        Progress state{progress, {"decompress", 0, tensors.size(), 0, m_weights}};
        write_file(path, tensors, detail::safetensors_metadata_of(m_source), resolve_thread_count(threads), state, max_bytes);
    }

    /// What write_hf_directory(decompress_model(reader), directory, shard_bytes) writes.
    HfDirectoryReport write_hf_directory(const std::filesystem::path& directory, std::uint64_t shard_bytes = default_hf_shard_bytes, int threads = 1,
                                         const ProgressCallback& progress = {}) {
        const std::string context = "writing '" + directory.string() + "'";
        require(shard_bytes > 0, errc::invalid_argument, context, ": shards of 0 bytes");
        detail::AtomicDirectory output(directory, context);
        const std::map<std::string, std::string> metadata = detail::safetensors_metadata_of(m_source);
        const nlohmann::json config = detail::hf_config_of(m_source, context);
        const std::vector<detail::StreamedTensor> tensors = output_tensors(context);

        HfDirectoryReport report;
        std::vector<std::uint64_t> sizes;
        for (const auto& tensor : tensors) sizes.push_back(tensor.entry.bytes());
        const std::vector<std::size_t> shard_of = detail::hf_shards_of(sizes, shard_bytes);
        const std::size_t shards = tensors.empty() ? 1 : shard_of.back() + 1;  // no tensor: one empty model.safetensors
        std::vector<std::vector<detail::StreamedTensor>> shard_tensors(shards);
        std::vector<std::vector<std::string>> shard_names(shards);
        for (std::size_t k = 0; k < tensors.size(); ++k) {
            shard_tensors[shard_of[k]].push_back(tensors[k]);
            shard_names[shard_of[k]].push_back(tensors[k].entry.name);
            report.tensor_bytes += sizes[k];
        }
        Progress state{progress, {"decompress", 0, tensors.size(), 0, m_weights}};
        std::vector<std::size_t> need_after(shards, 0);  // the largest float32 tensor of the shards after shard k
        for (std::size_t k = shards - 1; k-- > 0;) {
            need_after[k] = need_after[k + 1];
            for (const auto& tensor : shard_tensors[k + 1]) need_after[k] = std::max(need_after[k], float32_bytes(tensor));
        }
        for (std::size_t k = 0; k < shards; ++k)
            write_file(output.path() / detail::hf_shard_name(k, shards), shard_tensors[k], metadata, resolve_thread_count(threads), state, UINT64_MAX,
                       need_after[k]);
        detail::finish_hf_directory(output, config, m_source_files, shard_names, report);
        output.commit();
        return report;
    }

private:
    using Plan = detail::decode_plan_of_t<Methods>;

    struct Progress {
        const ProgressCallback& callback;
        PipelineProgress state;
    };

    // The tensors of a safetensors output, in model order (see detail::for_each_safetensors_tensor).
    std::vector<detail::StreamedTensor> output_tensors(const std::string& context) const {
        std::vector<detail::StreamedTensor> tensors;
        if (m_source.format != ModelFormat::llama2c) {
            for (std::size_t k = 0; k < m_model_tensors.size(); ++k) {
                const ContainerEntry& entry = m_reader.entry(m_model_tensors[k]);
                tensors.push_back({{entry.name, entry.original_dtype, entry.shape}, k, 0});
            }
            return tensors;
        }
        // LlamaWeights' names and shapes without allocating its tensors.
        llm::LlamaWeights names;
        names.config = detail::llama2c_config_of(m_source.source, context);
        names.layers.resize(std::size_t(names.config.n_layers));
        names.for_each_tensor([&](const std::string& name, const Tensor<float>&, const Shape& shape) {
            std::size_t found = m_model_tensors.size();
            for (std::size_t k = 0; k < m_model_tensors.size() && found == m_model_tensors.size(); ++k)
                if (m_reader.entry(m_model_tensors[k]).name == name) found = k;
            require(found < m_model_tensors.size(), errc::corrupt, context, ": llama2.c tensor '", name, "' is missing");
            const ContainerEntry& entry = m_reader.entry(m_model_tensors[found]);
            require(entry.shape == shape && is_floating_dtype(entry.original_dtype), errc::corrupt, context, ": tensor '", name,
                    "' has the wrong shape or dtype");
            tensors.push_back({{name, dtype::f32, shape}, found, llm::detail::rope_heads_of(names.config, name)});
        });
        return tensors;
    }

    // The bytes decode() decodes `tensor` into.
    static std::size_t float32_bytes(const detail::StreamedTensor& tensor) {
        return is_floating_dtype(tensor.entry.type) ? std::size_t(tensor.entry.shape.numel()) * sizeof(float) : 0;
    }

    // A decoded tensor's stored bytes: the first `size` bytes of `storage`.
    struct StoredTensor {
        BufferPool::Lease storage;
        std::size_t size = 0;
        std::span<const std::uint8_t> bytes() const { return {reinterpret_cast<const std::uint8_t*>(storage.data()), size}; }
    };

    // The tensor decoded, in the output's row order, as its dtype; nothing for an I32 or U8 tensor
    // (its bytes are written as stored) once its plan validated it, as decompress_model() does.
    // Decoded as float32 into a pooled buffer (m_buffers: the pages of the previous tensors', not
    // fresh memory), its segments on all m_split_threads workers when it is a large tensor (the
    // others wait for it: items are handed on in order), then checked and converted (finish).
    StoredTensor decode(const detail::StreamedTensor& tensor) {
        const std::size_t index = m_model_tensors[tensor.model_index];
        const Plan plan = detail::make_decode_plan(m_reader, index, m_resources, Methods{});
        if (!is_floating_dtype(tensor.entry.type)) return {};
        const Shape& shape = m_reader.entry(index).shape;
        // Straight into the stored bytes where the method can (lossless into its own dtype), else as float32.
        const bool stored_directly = tensor.rope_heads == 0 && detail::decodes_stored(plan, tensor.entry.type);
        StoredTensor stored{m_buffers.take(stored_directly ? std::size_t(tensor.entry.bytes()) : std::size_t(shape.numel()) * sizeof(float)),
                            std::size_t(tensor.entry.bytes())};
        const TensorView<float> values(reinterpret_cast<float*>(stored.storage.data()), shape);
        const std::span<std::uint8_t> stored_bytes(reinterpret_cast<std::uint8_t*>(stored.storage.data()), stored.size);
        const auto decode_segment = [&](std::int64_t segment) {
            if (stored_directly) detail::decode_plan_segment_stored<Backend>(m_reader, plan, std::size_t(segment), stored_bytes);
            else detail::decode_plan_segment<Backend>(m_reader, plan, std::size_t(segment), values);
        };
        if (m_split_threads > 1 && plan.segments > 1 && shape.numel() >= m_large_tensor_weights)
            parallel_for(std::int64_t(plan.segments), m_split_threads, decode_segment);
        else
            for (std::size_t segment = 0; segment < plan.segments; ++segment) decode_segment(std::int64_t(segment));
        release_pages(m_reader.payload(index));
        if (stored_directly) return stored;  // a lossless method's: nothing to check or convert
        bool check_finite = detail::decodes_lossy(plan);
        if (tensor.rope_heads > 0) {  // checked before the rows move, so an error names the weight as decode_plans would
            if (check_finite) detail::require_finite_range(values.span(), 0, values.span().size(), plan.context);
            check_finite = false;
            const Tensor<float> permuted = llm::permute_rows_to_hf(values, tensor.rope_heads);
            std::copy(permuted.data(), permuted.data() + permuted.numel(), values.data());
        }
        finish(values.span(), tensor.entry.type, check_finite, plan.context);
        return stored;
    }

    // Checks that a lossy tensor's weights are finite (detail::require_finite_range, as
    // decode_plans does) and converts F16 and BF16 in place, a chunk at a time while the chunk is
    // in cache: a chunk's converted bytes land below the end of its own floats, over floats already
    // converted, so no second copy of the tensor exists. The conversion is the backend's bulk one:
    // the same bits as encode_float32's, NaNs included (half_simd.hpp).
    static void finish(std::span<float> values, dtype type, bool check_finite, const std::string& context) {
        constexpr std::size_t chunk = std::size_t(1) << 14;
        for (std::size_t begin = 0; begin < values.size(); begin += chunk) {
            const std::size_t count = std::min(chunk, values.size() - begin);
            if (check_finite) detail::require_finite_range(values, begin, begin + count, context);
            if (type == dtype::bf16) convert_chunk<bfloat16>(values, begin, count);
            else if (type == dtype::f16) convert_chunk<half>(values, begin, count);
        }
    }

    template <class T>
    static void convert_chunk(std::span<float> values, std::size_t begin, std::size_t count) {
        thread_local std::vector<T> converted;
        converted.resize(count);
        convert_from_float(std::span<const float>(values.subspan(begin, count)), std::span<T>(converted), Backend{});
        std::memcpy(reinterpret_cast<std::uint8_t*>(values.data()) + begin * sizeof(T), converted.data(), count * sizeof(T));
    }

    void write_file(const std::filesystem::path& path, const std::vector<detail::StreamedTensor>& tensors,
                    const std::map<std::string, std::string>& metadata, int threads, Progress& progress, std::uint64_t max_bytes,
                    std::size_t later_need = 0) {
        std::vector<detail::SafetensorsEntry> entries;
        for (const auto& tensor : tensors) entries.push_back(tensor.entry);
        const std::vector<std::uint8_t> header = detail::safetensors_header_bytes(entries, metadata);
        const std::vector<std::size_t> order = detail::safetensors_layout_order(entries);
        // need_from[k]: the largest float32 tensor from layout position k on (this file's, then
        // `later_need`, the files after it), which the pool keeps pages for once item k starts
        // (items start in order).
        std::vector<std::size_t> need_from(order.size() + 1, later_need);
        for (std::size_t k = order.size(); k-- > 0;) need_from[k] = std::max(need_from[k + 1], float32_bytes(tensors[order[k]]));
        AtomicFileWriter file(path, max_bytes);
        file.write(header);
        const int workers = int(std::max<std::size_t>(1, std::min<std::size_t>(std::size_t(threads), order.size())));
        // A tensor 4x the mean or larger stalls the workers behind it (items are handed on in
        // order, `workers` at most in flight), so its segments are split among all of them.
        std::int64_t weights = 0;
        for (const auto& tensor : tensors) weights += tensor.entry.shape.numel();
        m_split_threads = threads;
        m_large_tensor_weights = std::max<std::int64_t>(std::int64_t(1) << 20, 4 * weights / std::int64_t(std::max<std::size_t>(1, tensors.size())));
        produce_in_order<StoredTensor>(
            order.size(), workers, std::size_t(workers),
            [&](std::size_t k) {
                m_buffers.lower_need(need_from[k]);
                return decode(tensors[order[k]]);
            },
            [&](std::size_t k, const StoredTensor& stored) {
                const detail::StreamedTensor& tensor = tensors[order[k]];
                // I32, U8: the stored bytes as they are in the container.
                file.write(is_floating_dtype(tensor.entry.type) ? stored.bytes() : m_reader.payload(m_model_tensors[tensor.model_index]));
                progress.state.tensors_done += 1;
                progress.state.weights_done += tensor.entry.shape.numel();
                if (progress.callback) progress.callback(progress.state);
            });
        file.commit();
    }

    const ContainerReader& m_reader;
    DecodeResources m_resources;
    BufferPool m_buffers;  // the float32 scratch of decode(), reused from tensor to tensor
    int m_split_threads = 1;                  // write_file's: the workers a large tensor's segments are split among
    std::int64_t m_large_tensor_weights = 0;  // write_file's: what makes a tensor large
    ModelFile m_source;  // format and source only: what the metadata and config.json come from
    std::vector<std::size_t> m_model_tensors;   // model tensor -> container index
    std::vector<SourceFile> m_source_files;     // the source directory's files (small: at most 64 MiB each)
    std::int64_t m_weights = 0;
};

}  // namespace nwc
