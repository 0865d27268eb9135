// Decoding a .nwc container without the encoders: nwc::decompress_tensor and
// nwc::decompress_model over a list of methods' decoding halves (MethodDecoding; by default
// BuiltinDecodings), and the container's model-level entries (the source JSON, the llama2.c RoPE
// corrections, a model directory's files). Codec::decompress* call these with its own methods;
// <nwc/decode.hpp> includes this and no encoder.
//
// Read me first:
// - Every tensor is first made a validated plan (its method's parsed Layout, detail::DecodePlan),
//   plans parsed on `threads`; then every (tensor, segment) pair is one work item
//   (detail::decode_plans), so a file decodes on any thread count into the same values.
// - With several bad tensors the error is the first one's (directory order), on any thread count.
#pragma once

#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/backend.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/container_reader.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/pipeline/builtin_decodings.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"

namespace nwc {

namespace detail {
/// The llama2.c RoPE corrections as a raw U8 tensor: bit-packed (pack_rope_correction_bits) under
/// the first name; files written before it hold varint pairs or I32 pairs under the second.
inline constexpr std::string_view rope_correction_bits_name = "__nwc__.rope_bits";
inline constexpr std::string_view rope_corrections_name = "__nwc__.llama2c.rope_corrections";
inline bool is_rope_corrections(std::string_view name) noexcept { return name == rope_correction_bits_name || name == rope_corrections_name; }

/// A model directory's SourceFile as a raw U8 tensor: this prefix, then the file's name.
inline constexpr std::string_view source_file_prefix = "__nwc__.file.";
inline bool is_source_file(std::string_view name) noexcept { return name.starts_with(source_file_prefix); }

/// The SourceFile of entry `index` (is_source_file(its name)), checked: raw U8 of rank 1, and a
/// name that writes inside the output directory only (a hostile file could name "../x").
inline SourceFile source_file_of(const ContainerReader& reader, std::size_t index) {
    const ContainerEntry& entry = reader.entry(index);
    const std::string name = entry.name.substr(source_file_prefix.size());
    require(entry.method == "raw" && entry.original_dtype == dtype::u8 && entry.shape.rank() == 1, errc::corrupt, reader.context(), ": file '", name,
            "' is not stored as raw bytes");
    require(is_plain_file_name(name) && name != "config.json", errc::corrupt, reader.context(), ": file name '", name,
            "' is not a plain file name (or is config.json, which the source JSON holds)");
    const auto bytes = reader.payload(index);
    return {name, {bytes.begin(), bytes.end()}};
}

/// What a pipeline container says of its source (format and the "source" JSON of its file
/// metadata; no tensors): the first step of every whole-model decode, in memory or streamed.
inline ModelFile model_source_of(const ContainerReader& reader) {
    const nlohmann::json metadata = nlohmann::json::parse(reader.file_metadata(), nullptr, false);
    require(!metadata.is_discarded() && metadata.is_object() && metadata.contains("source") && metadata["source"].is_object(), errc::corrupt,
            reader.context(), ": file metadata is not the JSON the pipeline writes");
    ModelFile model;
    model.source = metadata["source"];
    const auto named = model.source.find("source_format");  // value() would throw JSON's own error for a non-string
    const std::string format = named != model.source.end() && named->is_string() ? named->get<std::string>() : std::string();
    const std::optional<ModelFormat> known = model_format_named(format);
    require(known.has_value(), errc::unsupported, reader.context(), ": source format '", format, "'");
    model.format = *known;
    return model;
}

/// The RoPE corrections of entry `index` (is_rope_corrections(its name)), checked: raw, packed
/// bytes of a llama2c source (bit-packed, or varint pairs under the older name) or, under the
/// older name, (rows, 2) int32 pairs.
inline Tensor<std::int32_t> rope_corrections_of(const ContainerReader& reader, std::size_t index, const ModelFile& source) {
    const ContainerEntry& entry = reader.entry(index);
    const bool packed = entry.original_dtype == dtype::u8 && entry.shape.rank() == 1 && source.source.contains("llama2c");
    const bool bits = entry.name == rope_correction_bits_name;
    require(entry.method == "raw" && (packed || (!bits && entry.original_dtype == dtype::i32 && entry.shape.rank() == 2 && entry.shape[1] == 2)),
            errc::corrupt, reader.context(), ": malformed RoPE corrections");
    const auto bytes = reader.payload(index);
    if (packed) {
        const llm::LlamaConfig config = llama_config_from_json(source.source["llama2c"], reader.context() + ": llama2c source");
        const std::string context = reader.context() + ": RoPE corrections";
        return bits ? unpack_rope_correction_bits(bytes, config, context) : unpack_rope_corrections(bytes, config, context);
    }
    Tensor<std::int32_t> corrections(entry.shape);
    std::memcpy(corrections.data(), bytes.data(), bytes.size());
    return corrections;
}

/// The readable error a decode with a backend tag that has no host kernels gives (as nwc::Codec's).
template <class Backend>
constexpr void require_host_backend() {
    static_assert(!std::is_same_v<Backend, backend::cuda>,
                  "nwc::decompress_model / decompress_tensor<backend::cuda>: the CUDA backend decodes on the device, not into host tensors; "
                  "use nwc::cuda::decompress_to_device() from <nwc/cuda/decompress.cuh> (nvcc translation units)");
    static_assert(std::is_same_v<Backend, backend::cuda> || host_backend<Backend>,
                  "nwc::decompress_model / decompress_tensor<Backend>: no host kernels for this backend tag. Derive the tag from "
                  "nwc::backend::scalar or nwc::backend::simd, and overload the kernels it replaces for it (see docs/ARCHITECTURE.md, \"Backends\")");
}

/// DecodePlan<Ms...> of a MethodList<Ms...>.
template <class Methods>
struct decode_plan_of;
template <class... Ms>
struct decode_plan_of<MethodList<Ms...>> {
    using type = DecodePlan<Ms...>;
};
template <class Methods>
using decode_plan_of_t = typename decode_plan_of<Methods>::type;

/// The validated plans of tensors `indices`, parsed on `threads` (building a tensor's decode
/// tables is a serial share of a whole decode otherwise); with several bad tensors the error is
/// the first one's, on any thread count.
template <class Methods>
std::vector<decode_plan_of_t<Methods>> make_decode_plans(const ContainerReader& reader, const std::vector<std::size_t>& indices, int threads) {
    DecodeResources resources(reader);
    std::vector<decode_plan_of_t<Methods>> plans(indices.size());
    std::vector<std::exception_ptr> errors(indices.size());
    parallel_for(std::int64_t(indices.size()), threads, [&](std::int64_t k) {
        try {
            plans[std::size_t(k)] = make_decode_plan(reader, indices[std::size_t(k)], resources, Methods{});
        } catch (...) {
            errors[std::size_t(k)] = std::current_exception();
        }
    });
    for (const std::exception_ptr& error : errors)
        if (error) std::rethrow_exception(error);
    return plans;
}
}  // namespace detail

/// Decodes tensor `index` of `reader` to float32 (raw F32/F16/BF16 tensors included), with the
/// kernels of `Backend` and the decoders of `Methods`. Decoding needs nothing but the container
/// (codec blobs are in it).
template <class Backend = backend::default_backend, class Methods = BuiltinDecodings>
    requires host_backend<Backend>
Tensor<float> decompress_tensor(const ContainerReader& reader, std::size_t index, int threads = 1) {
    DecodeResources resources(reader);
    std::vector<detail::decode_plan_of_t<Methods>> plans;
    plans.push_back(detail::make_decode_plan(reader, index, resources, Methods{}));
    Tensor<float> output(reader.entry(index).shape);
    detail::decode_plans<Backend>(reader, plans, {&output}, threads, {}, 1);
    return output;
}

/// Decodes a whole container back into a ModelFile (the source's format, names, dtypes, order),
/// with the kernels of `Backend` and the decoders of `Methods`.
template <class Backend = backend::default_backend, class Methods = BuiltinDecodings>
    requires host_backend<Backend>
ModelFile decompress_model(const ContainerReader& reader, int threads = 1, const ProgressCallback& progress = {}) {
    ModelFile model = detail::model_source_of(reader);
    std::vector<std::size_t> model_index;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (detail::is_rope_corrections(entry.name)) {
            model.rope_corrections = detail::rope_corrections_of(reader, index, model);
            continue;
        }
        if (detail::is_source_file(entry.name)) {
            model.files.push_back(detail::source_file_of(reader, index));
            continue;
        }
        model.tensors.push_back({entry.name, entry.original_dtype, entry.shape, {}, {}});
        model_index.push_back(index);
    }
    const auto plans = detail::make_decode_plans<Methods>(reader, model_index, resolve_thread_count(threads));
    std::vector<Tensor<float>*> outputs;
    for (std::size_t k = 0; k < plans.size(); ++k) {
        ModelTensor& tensor = model.tensors[k];
        if (tensor.is_floating()) {
            outputs.push_back(&tensor.values);  // allocated by decode_plans, beside the decoding
        } else {
            const auto bytes = reader.payload(model_index[k]);
            tensor.raw_bytes.assign(bytes.begin(), bytes.end());
            outputs.push_back(nullptr);
        }
    }
    detail::decode_plans<Backend>(reader, plans, outputs, resolve_thread_count(threads), progress, model.tensors.size());
    return model;
}

/// The two entry points for a tag without host kernels: one readable error (nothing else is
/// instantiated) instead of pages of unmatched kernel overloads.
template <class Backend, class Methods = BuiltinDecodings>
    requires(!host_backend<Backend>)
Tensor<float> decompress_tensor(const ContainerReader&, std::size_t, int = 1) {
    detail::require_host_backend<Backend>();
    return {};
}
template <class Backend, class Methods = BuiltinDecodings>
    requires(!host_backend<Backend>)
ModelFile decompress_model(const ContainerReader&, int = 1, const ProgressCallback& = {}) {
    detail::require_host_backend<Backend>();
    return {};
}

}  // namespace nwc
