// nwc::Codec: the composed codec users run. A tensor in, a ContainerTensor out (and back);
// a whole ModelFile in, a .nwc container out (and back), threaded over independent work.
//
// Read me first:
// - Policies: Codec<Backend, Selection, Methods...>. Backend picks the decoding kernels (a tag,
//   core/backend.hpp), Selection which tensors are coded, Methods the per-tensor methods
//   (method.hpp's Method concept) MethodOptions::method may name, given one by one or as one
//   MethodList (BuiltinMethods::append<MyMethod>); none means the built-in ones (BuiltinMethods,
//   builtin_methods.hpp). The name dispatch on both sides and the decode variant are generated
//   from the list.
// - Which tensors are coded is a policy (DefaultTensorSelection: floating matrices with both sides
//   >= 16, embeddings included); every other tensor passes through raw in its original dtype.
// - Determinism: each tensor's bytes depend only on the tensor, its Hessian and the options,
//   never on the thread count (the parts guarantee it: LDLQ row blocks, rANS segments and codec
//   tiles are fixed sizes). compress_model() splits threads between tensors (outer) and inside a
//   tensor (inner) and adds tensors to the container in model order, so files are byte-identical
//   for any --threads. decompress_model() runs every (tensor, segment) pair as one work item.
// - A tensor of a method that uses a codec blob (nwc) refers to container codec 0:
//   compress_model() adds the blob first. To assemble a container by hand with compress(), call
//   writer.add_codec(decoder_blob()) first.
// - The container's file metadata is JSON: the ModelFile's `source` and the tool (the methods are
//   the container's method table).
//   It never holds per-pass numbers, so its size is the same in every pass of a rate search. The
//   llama2.c RoPE corrections are the raw tensor detail::rope_correction_bits_name (a fixed name).
// - Memory: compress_model_into() from a ModelReader codes tensors as it reads them, and where a
//   method can (lossless, rtn, gptq, ecsq, tcq, nwc without a Hessian) from the mapped file's bytes,
//   block by block (compress_from_file): the same bytes as from a ModelFile in memory.
#pragma once

#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <limits>
#include <mutex>
#include <optional>
#include <type_traits>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/codec/codec_file.hpp"
#include "nwc/core/backend.hpp"
#include "nwc/core/produce_in_order.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/container.hpp"
#include "nwc/io/model_reader.hpp"
#include "nwc/pipeline/builtin_methods.hpp"
#include "nwc/pipeline/method_encoding.hpp"
#include "nwc/pipeline/model_decoding.hpp"
#include "nwc/pipeline/tensor_decoding.hpp"
#include "nwc/version.hpp"

namespace nwc {

/// Which tensors a method codes: floating-point matrices with both sides >= min_dimension.
/// Vectors (norm scales, biases) of at least min_dimension elements are coded too, by ecsq at a
/// fine step (MethodOptions::vector_step): ~8 bits each instead of 32 raw; by the method itself
/// when it is lossless (is_lossless).
struct DefaultTensorSelection {
    static constexpr std::int64_t min_dimension = 16;
    static bool is_coded(const Shape& shape, dtype type) noexcept {
        return is_floating_dtype(type) && shape.rank() == 2 && shape[0] >= min_dimension && shape[1] >= min_dimension;
    }
    static bool is_vector_coded(const Shape& shape, dtype type) noexcept {
        return is_floating_dtype(type) && shape.rank() == 1 && shape[0] >= min_dimension;
    }
};

/// The Hessian H = X^T X / N of the input of weight `name`, or null (see llm::LinearHessians).
using HessianLookup = std::function<const Tensor<double>*(std::string_view name)>;

/// One tensor's override of the codec's options: what rate allocation chooses per tensor.
struct TensorSetting {
    double knob = std::numeric_limits<double>::quiet_NaN();  ///< the method's knob; NaN: the codec's
    std::optional<NormalizationAxis> axis = {};               ///< empty: the codec's
    /// Predicted rise of the calibration NLL per unit of per-weight squared error (NaN: unknown).
    double sensitivity = std::numeric_limits<double>::quiet_NaN();
};

/// What compressing a model did.
struct ModelReport {
    std::string method;
    std::string setting;  ///< the global knob ("step=0.3", "alpha=1.2", "bits=4" or "bits=3..4")
    std::vector<TensorReport> tensors;
    std::int64_t weight_count = 0;  ///< elements of every tensor of the input
    std::uint64_t file_bytes = 0;   ///< the whole .nwc file
    double squared_error = 0.0, squared_norm = 0.0;
    double seconds = 0.0;
    double target_bits_per_weight = std::numeric_limits<double>::quiet_NaN();  ///< NaN: no target
    bool target_met = true;
    int passes = 1;    ///< full compressions run (rate search)
    std::string note;  ///< why a target was missed, if it was
    double knob = std::numeric_limits<double>::quiet_NaN();  ///< the global knob rate control chose, or (allocation) the common factor on every tensor's (else NaN)
    std::vector<TensorSetting> tensor_settings;  ///< per model tensor when set per tensor (rate control, allocation), else empty

    /// 8 x file bytes / weights of the input: the rate of the whole file.
    double bits_per_weight() const noexcept { return weight_count > 0 ? 8.0 * double(file_bytes) / double(weight_count) : 0.0; }
    /// ||W - What||^2 / ||W||^2 over every tensor (NaN when not measured).
    double relative_mse() const noexcept { return squared_norm > 0.0 ? squared_error / squared_norm : 0.0; }
};

/// A compressed model, ready to write.
struct CompressedModel {
    ContainerWriter writer;
    ModelReport report;
};

namespace detail {
template <class... Methods>
struct method_list_of {
    using type = MethodList<Methods...>;
};
template <>
struct method_list_of<> {
    using type = BuiltinMethods;
};
template <class... Methods>
struct method_list_of<MethodList<Methods...>> {
    using type = MethodList<Methods...>;
};
}  // namespace detail

/// The composed codec: per-tensor methods, container assembly and whole-model threading.
template <class Backend = backend::default_backend, class Selection = DefaultTensorSelection, class... Methods>
class Codec {
    static_assert(!std::is_same_v<Backend, backend::cuda>,
                  "nwc::Codec<backend::cuda>: the CUDA backend decodes on the device, not into host tensors; use "
                  "nwc::cuda::decompress_to_device() from <nwc/cuda/decompress.cuh> (nvcc translation units)");
    static_assert(host_backend<Backend>,
                  "nwc::Codec<Backend>: no host kernels for this backend tag. Derive the tag from nwc::backend::scalar or "
                  "nwc::backend::simd, and overload the kernels it replaces for it (see docs/ARCHITECTURE.md, \"Backends\")");

public:
    using backend_type = Backend;
    using selection_type = Selection;
    using methods = typename detail::method_list_of<Methods...>::type;
    static_assert([]<class... Ms>(MethodList<Ms...>) { return (Method<Ms> && ...); }(methods{}),
                  "nwc::Codec: every method of the list must be a full Method (a decoding half such as EcsqDecoding only decodes: "
                  "use nwc::decompress_model from <nwc/decode.hpp>)");

    /// `codec`: the trained codec, for methods that need one (nwc).
    explicit Codec(MethodOptions options = {}, std::shared_ptr<const NeuralCodec> codec = nullptr) : m_options(std::move(options)) {
        m_resources.neural_codec = std::move(codec);
        m_resources.embed_codec = m_options.embed_codec;
        m_options.validate();
        const bool known = methods::visit(m_options.method, [&]<class M>(std::type_identity<M>) {
            if constexpr (uses_codec_blob<M>)
                require(m_resources.neural_codec != nullptr, errc::invalid_argument, "the ", M::name, " method needs a trained codec (--codec FILE)");
        });
        require(known, errc::invalid_argument, "unknown method '", m_options.method, "' (", methods::names(), ")");
    }

    const MethodOptions& options() const noexcept { return m_options; }
    /// A copy with other options and the same codec.
    Codec with_options(const MethodOptions& options) const { return Codec(options, m_resources.neural_codec); }
    const std::shared_ptr<const NeuralCodec>& neural_codec() const noexcept { return m_resources.neural_codec; }

    /// "nwc, ecsq, gptq, rtn": the methods this codec knows, in list order.
    static std::string method_names() { return methods::names(); }
    /// The rate knob of `method` (errc::invalid_argument for a method the list does not hold).
    static MethodKnob knob_of(std::string_view method) {
        MethodKnob knob;
        require(methods::visit(method, [&]<class M>(std::type_identity<M>) { knob = M::knob; }), errc::invalid_argument, "unknown method '", method,
                "' (", methods::names(), ")");
        return knob;
    }
    /// `options` with its method's knob set to `value`.
    static MethodOptions options_with_knob(MethodOptions options, double value) {
        methods::visit(options.method, [&]<class M>(std::type_identity<M>) { M::set_knob(options, value); });
        return options;
    }
    /// Stores `setting`'s sensitivity in a coded tensor's diagnostics (for nwc inspect).
    static void record_sensitivity(ContainerTensor& tensor, const TensorSetting& setting) {
        if (tensor.method != "raw" && !std::isnan(setting.sensitivity)) detail::patch_diagnostics(tensor.metadata, NAN, setting.sensitivity);
    }
    /// `options` with a tensor's setting applied (what is not set stays).
    static MethodOptions options_with(MethodOptions options, const TensorSetting& setting) {
        if (!std::isnan(setting.knob)) options = options_with_knob(std::move(options), setting.knob);
        if (setting.axis) options.axis = *setting.axis;
        return options;
    }
    /// The knob of the configured method, its value, and a copy of this codec with another value.
    MethodKnob knob() const { return knob_of(m_options.method); }
    double knob_value() const { return dispatch([&]<class M>(std::type_identity<M>) { return M::knob_value(m_options); }); }
    Codec with_knob(double value) const { return with_options(options_with_knob(m_options, value)); }
    /// "step=0.5", "bits=4", "alpha=1.2": the knob as reports print it.
    std::string setting() const { return dispatch([&]<class M>(std::type_identity<M>) { return knob_setting<M>(M::knob_value(m_options)); }); }

    /// The sizes coding a `shape` matrix with `options` gives (metadata, then each segment), when
    /// they do not depend on the values (rtn, gptq with fp16 group scales); nullopt otherwise.
    std::optional<std::vector<std::uint64_t>> predicted_sizes(const Shape& shape, const MethodOptions& options) const {
        return dispatch([&]<class M>(std::type_identity<M>) -> std::optional<std::vector<std::uint64_t>> {
            if constexpr (SizePredictingMethod<M>) return M::predicted_sizes(shape, options);
            else return std::nullopt;
        });
    }

    /// Whether the configured method normalizes by MethodOptions::axis.
    bool uses_normalization_axis() const {
        return dispatch([&]<class M>(std::type_identity<M>) { return nwc::uses_normalization_axis<M>; });
    }
    /// Whether the configured method has a rate knob (method.hpp's has_rate_knob; not lossless).
    bool has_rate_knob() const {
        return dispatch([&]<class M>(std::type_identity<M>) { return nwc::has_rate_knob<M>; });
    }
    /// Whether the configured method reproduces its input bit for bit (it then codes vectors too).
    bool is_lossless() const {
        return dispatch([&]<class M>(std::type_identity<M>) { return nwc::is_lossless<M>; });
    }
    /// errc::invalid_argument naming `what` (a rate search, allocation) when the configured method
    /// has no rate knob to choose.
    void require_rate_knob(std::string_view what) const {
        require(has_rate_knob(), errc::invalid_argument, what, ": method '", m_options.method,
                "' has no rate knob to choose (it is lossless: its size is what the weights give); drop the rate target");
    }

    /// The codec blob the container embeds for the configured method (empty unless it uses one).
    std::vector<std::uint8_t> decoder_blob() const {
        return dispatch([&]<class M>(std::type_identity<M>) -> std::vector<std::uint8_t> {
            if constexpr (uses_codec_blob<M>) return M::codec_blob(m_resources);
            else return {};
        });
    }

    /// The knob a coded tensor's metadata holds, as "bits=4" / "step=0.41"; "" for raw tensors,
    /// methods this codec does not know and metadata too short to hold one.
    static std::string stored_setting(const ContainerEntry& entry, std::span<const std::uint8_t> metadata) {
        std::string setting;
        methods::visit(entry.method, [&]<class M>(std::type_identity<M>) {
            const double value = M::stored_knob(metadata);
            if (!std::isnan(value)) setting = knob_setting<M>(value);
        });
        return setting;
    }

    /// Every byte of a container by category (ByteAccount; the categories sum to the file size),
    /// and each tensor's own metadata and payload bytes. Parses every coded tensor's metadata and
    /// stream indexes (errors as decoding gives them), decodes nothing.
    struct FileAccount {
        ByteAccount total;
        std::vector<ByteAccount> tensors;  ///< directory order
    };
    static FileAccount account(const ContainerReader& reader) {
        const ContainerAccounting parts = reader.accounting();
        FileAccount result;
        result.total.add("header", parts.header_footer);
        result.total.add("directory", parts.directory);
        result.total.add("padding", parts.padding);
        result.total.add("codecs", parts.codec_blobs);
        DecodeResources resources(reader);
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            const ContainerEntry& entry = reader.entry(index);
            ByteAccount tensor;
            if (entry.method == "raw") {
                tensor.add(detail::is_source_file(entry.name) ? "files" : "passthrough", entry.metadata_size + entry.payload_size);
            } else {
                const Plan plan = detail::make_decode_plan(reader, index, resources, methods{});
                std::visit(
                    [&]<class Parsed>(const Parsed& parsed) {
                        if constexpr (!std::is_same_v<Parsed, detail::RawPlan>) {
                            using M = detail::method_of_t<Parsed>;
                            if constexpr (AccountingMethod<M>) {
                                M::account_metadata(parsed.layout, entry.metadata_size, tensor);
                                for (std::size_t segment = 0; segment < plan.segments; ++segment)
                                    M::account_segment(parsed.layout, segment, reader.segment(index, segment), tensor);
                            } else {
                                tensor.add("metadata", entry.metadata_size);
                                tensor.add("payload", entry.payload_size);
                            }
                        }
                    },
                    plan.layout);
            }
            for (const auto& [category, count] : tensor.bytes) result.total.add(category, count);
            result.tensors.push_back(std::move(tensor));
        }
        return result;
    }

    /// Compresses one tensor (any shape; matrices the selection accepts are coded, the rest stored
    /// raw as `original_dtype`). Tensors of a method with a codec blob refer to container codec 0.
    /// `reconstruction`, when given, receives what the decoder will produce (needs
    /// options().measure for coded tensors; left empty otherwise) -- sequential compression
    /// fine-tunes against it.
    ContainerTensor compress(std::string name, TensorView<const float> weights, const Tensor<double>* hessian = nullptr, TensorReport* report = nullptr,
                             dtype original_dtype = dtype::f32, Tensor<float>* reconstruction = nullptr) const {
        return compress_with(std::move(name), weights, hessian, original_dtype, m_options, report, reconstruction);
    }

    /// Compresses one tensor of a ModelFile as compress_model() does: non-floating tensors (token
    /// ids, ...) are stored as their raw bytes, the others through compress().
    ContainerTensor compress(const ModelTensor& tensor, const Tensor<double>* hessian, TensorReport& report) const {
        return compress_model_tensor(tensor, hessian, m_options, report);
    }

    /// Decodes tensor `index` of `reader` to float32 (raw F32/F16/BF16 tensors included). Decoding
    /// needs nothing but the container (codec blobs are in it): nwc::decompress_tensor with this
    /// codec's backend and methods.
    static Tensor<float> decompress(const ContainerReader& reader, std::size_t index, int threads = 1) {
        return nwc::decompress_tensor<Backend, methods>(reader, index, threads);
    }

    /// Compresses every tensor of `model`; `settings` (model tensor order), when not empty, override
    /// the method's knob and normalization per tensor (rate control's bits, allocated steps).
    CompressedModel compress_model(const ModelFile& model, const HessianLookup& hessians = {}, const ProgressCallback& progress = {},
                                   std::span<const TensorSetting> settings = {}) const {
        CompressedModel result;
        result.report = compress_model_into(model, result.writer, hessians, progress, settings);
        return result;
    }

    /// compress_model_into() from a ModelReader: coded tensors that wait for the writer hold at most
    /// this many bytes (a worker starts no new tensor while they do).
    static constexpr std::size_t waiting_bytes_limit = std::size_t(64) << 20;

    /// compress_model() from a model in memory (ModelFile) or read tensor by tensor (ModelReader),
    /// into any container sink: ContainerWriter (in memory), ContainerStreamWriter (straight to the
    /// file) or ContainerSizer (only the size: rate control's passes). The same bytes in every
    /// case. Workers read and code tensors while the calling thread adds them in model order; from
    /// a reader coded tensors wait up to waiting_bytes_limit, so memory holds the tensors in flight
    /// (at most `threads` of them), never the model. From a mapped reader without a Hessian, a
    /// lossless method (StoredEncodingMethod) codes a tensor's stored bytes and a RowEncodingMethod
    /// (rtn, gptq, ecsq, tcq, nwc) reads it in blocks (compress_from_file): no float32 copy of
    /// the tensor exists, only the method's coded bytes and what it keeps between its passes.
    template <class Model, class Sink>
    ModelReport compress_model_into(const Model& model, Sink& sink, const HessianLookup& hessians = {}, const ProgressCallback& progress = {},
                                    std::span<const TensorSetting> settings = {}) const {
        const auto start = std::chrono::steady_clock::now();
        const ModelFile& outline = outline_of(model);
        const std::size_t count = outline.tensors.size();
        require(settings.empty() || settings.size() == count, errc::invalid_argument, "compress_model: ", settings.size(), " tensor settings for ",
                count, " tensors");
        const int threads = resolve_thread_count(m_options.threads);
        const int outer = int(std::max<std::int64_t>(1, std::min<std::int64_t>(threads, std::int64_t(count))));
        MethodOptions inner = m_options;
        inner.threads = std::max(1, threads / outer);
        begin_container(outline, sink);
        std::vector<TensorReport> reports(count);
        PipelineProgress state{"compress", 0, count, 0, outline.weight_count()};
        // In memory nothing is saved by making workers wait for the writer. From a reader, coded
        // tensors wait for the ones before them up to waiting_bytes_limit: enough to keep workers
        // busy while one large tensor (an embedding, first in most models) is coded.
        const auto weigh = [](const ContainerTensor& tensor) { return tensor.metadata.size() + tensor.payload.size(); };
        const WaitingLimit<decltype(weigh)> limit{SIZE_MAX, std::is_same_v<Model, ModelFile> ? SIZE_MAX : waiting_bytes_limit, weigh};
        produce_in_order<ContainerTensor>(
            count, outer, limit,
            [&](std::size_t i) {
                const ModelTensor& source = outline.tensors[i];
                const MethodOptions options = settings.empty() ? inner : options_with(inner, settings[i]);
                const Tensor<double>* hessian = hessians ? hessians(source.name) : nullptr;
                ContainerTensor coded = [&] {
                    if constexpr (std::is_same_v<Model, ModelReader>)
                        if (hessian == nullptr && model.maps_tensors() && codes_from_file(source, options))
                            return model.with_stored_bytes(i, [&](std::span<const std::uint8_t> bytes) {
                                return compress_from_file(source, bytes, options, reports[i]);
                            });
                    return with_model_tensor(model, i, [&](const ModelTensor& tensor) { return compress_model_tensor(tensor, hessian, options, reports[i]); });
                }();
                if (!settings.empty()) record_sensitivity(coded, settings[i]);
                return coded;
            },
            [&](std::size_t i, ContainerTensor& coded) {
                sink.add_tensor(std::move(coded));
                if (!progress) return;
                ++state.tensors_done;
                state.weights_done += outline.tensors[i].shape.numel();
                progress(state);
            });
        end_container(outline, sink);
        return model_report(outline, std::move(reports), sink.layout().file_size(), start, settings);
    }

    /// The last step of compress_model(), public for drivers that code the tensors themselves
    /// (sequential_pipeline.hpp): a container of `tensors` (model order, one per model tensor,
    /// from compress() of this codec) with the file metadata, the codec blob and the llama2.c
    /// RoPE corrections, and the model report.
    CompressedModel assemble_model(const ModelFile& model, std::vector<ContainerTensor> tensors, std::vector<TensorReport> reports,
                                   std::chrono::steady_clock::time_point start, std::span<const TensorSetting> settings = {}) const {
        require(tensors.size() == model.tensors.size() && reports.size() == tensors.size(), errc::invalid_argument, "assemble_model: ",
                tensors.size(), " tensors and ", reports.size(), " reports for a model of ", model.tensors.size());
        CompressedModel result;
        begin_container(model, result.writer);
        for (auto& tensor : tensors) result.writer.add_tensor(std::move(tensor));
        end_container(model, result.writer);
        result.report = model_report(model, std::move(reports), result.writer.serialized_size(), start, settings);
        return result;
    }

    /// Decodes a whole container back into a ModelFile (the source's format, names, dtypes, order):
    /// nwc::decompress_model with this codec's backend and methods.
    static ModelFile decompress_model(const ContainerReader& reader, int threads = 1, const ProgressCallback& progress = {}) {
        return nwc::decompress_model<Backend, methods>(reader, threads, progress);
    }

private:
    using Plan = detail::decode_plan_of_t<methods>;

    /// f(std::type_identity<M>{}) for the configured method (validated by the constructor).
    template <class F>
    auto dispatch(F&& f) const {
        using Result = decltype(f(std::type_identity<typename methods::first>{}));
        if constexpr (std::is_void_v<Result>) {
            methods::visit(m_options.method, f);
        } else {
            std::optional<Result> result;
            methods::visit(m_options.method, [&](auto method) { result.emplace(f(method)); });
            return Result(std::move(*result));
        }
    }

    /// What a container holds before its tensors: the file metadata and the codec blob.
    template <class Sink>
    void begin_container(const ModelFile& model, Sink& sink) const {
        sink.set_file_metadata(file_metadata(model));
        if (std::vector<std::uint8_t> blob = decoder_blob(); !blob.empty()) sink.add_codec(std::move(blob));
    }
    /// What follows the model's tensors: the llama2.c RoPE corrections and the source files.
    template <class Sink>
    static void end_container(const ModelFile& model, Sink& sink) {
        if (!model.rope_corrections.values().empty()) {  // bit-packed against the recomputed tables (older files: varint or i32 pairs)
            const llm::LlamaConfig config = detail::llama2c_config_of(model.source, "assemble_model: llama2c source");
            const std::vector<std::uint8_t> packed = detail::pack_rope_correction_bits(model.rope_corrections, config);
            sink.add_tensor(make_raw_tensor(std::string(detail::rope_correction_bits_name), dtype::u8, Shape{std::int64_t(packed.size())}, packed));
        }
        for (const SourceFile& file : model.files)  // every byte counts: part of the whole file's rate, like the directory
            sink.add_tensor(
                make_raw_tensor(std::string(detail::source_file_prefix) + file.name, dtype::u8, Shape{std::int64_t(file.bytes.size())}, file.bytes));
    }
    ModelReport model_report(const ModelFile& model, std::vector<TensorReport> reports, std::uint64_t file_bytes,
                             std::chrono::steady_clock::time_point start, std::span<const TensorSetting> settings) const {
        ModelReport report;
        report.tensors = std::move(reports);
        report.method = m_options.method;
        report.setting = setting();
        report.weight_count = model.weight_count();
        report.file_bytes = file_bytes;
        report.tensor_settings.assign(settings.begin(), settings.end());
        for (const TensorReport& tensor : report.tensors) {
            report.squared_error += tensor.squared_error;
            report.squared_norm += tensor.squared_norm;
        }
        report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return report;
    }

    static TensorReport raw_report(const ContainerTensor& tensor) {
        TensorReport report;
        report.name = tensor.name;
        report.shape = tensor.shape;
        report.original_dtype = tensor.original_dtype;
        report.method = "raw";
        report.stored_bytes = tensor.payload.size();
        report.relative_mse = 0.0;
        return report;
    }

    ContainerTensor compress_model_tensor(const ModelTensor& tensor, const Tensor<double>* hessian, const MethodOptions& options,
                                          TensorReport& report) const {
        if (tensor.is_floating()) return compress_with(tensor.name, tensor.values.view(), hessian, tensor.original_dtype, options, &report);
        ContainerTensor raw = make_raw_tensor(tensor.name, tensor.original_dtype, tensor.shape, tensor.raw_bytes);
        report = raw_report(raw);
        return raw;
    }

    /// Whether compress_from_file() codes `tensor` with `options`' method: a StoredEncodingMethod
    /// (lossless) for any tensor it codes itself (a matrix or a vector), a RowEncodingMethod (rtn,
    /// gptq, ecsq, tcq, nwc) for a matrix (vectors take the usual path: they are small).
    bool codes_from_file(const ModelTensor& tensor, const MethodOptions& options) const {
        bool stored = false, rows = false;
        methods::visit(options.method, [&]<class M>(std::type_identity<M>) { stored = StoredEncodingMethod<M>, rows = RowEncodingMethod<M>; });
        if (!tensor.is_floating()) return false;
        if constexpr (requires { Selection::is_vector_coded(tensor.shape, tensor.original_dtype); })
            if (stored && Selection::is_vector_coded(tensor.shape, tensor.original_dtype)) return true;
        return (stored || rows) && Selection::is_coded(tensor.shape, tensor.original_dtype);
    }

    /// compress_model_tensor() of `tensor` (its outline) without a Hessian from `bytes`, its elements
    /// as its mapped file stores them (codes_from_file()): the same entry and report, with no
    /// float32 copy of the tensor (a lossless method codes the bytes, a RowEncodingMethod reads
    /// widened blocks of rows), and the mapped pages handed back as they are read.
    ContainerTensor compress_from_file(const ModelTensor& tensor, std::span<const std::uint8_t> bytes, const MethodOptions& options,
                                       TensorReport& report) const {
        const auto start = std::chrono::steady_clock::now();
        const auto range_done = [](std::span<const std::uint8_t> range) { release_pages(range); };
        const std::size_t size = dtype_size(tensor.original_dtype);
        EncodedMatrix encoded;
        std::int32_t codec_index = -1;
        bool lossless = false;
        methods::visit(options.method, [&]<class M>(std::type_identity<M>) {
            if constexpr (StoredEncodingMethod<M>) {
                encoded = M::encode_stored(bytes, tensor.original_dtype, options, range_done);
            } else if constexpr (RowEncodingMethod<M>) {
                const std::int64_t cols = tensor.shape[1];
                std::vector<float> block;
                const auto read = [&](std::int64_t first_row, std::int64_t row_count, std::int64_t first_col, std::int64_t col_count) {
                    NWC_ASSERT(first_col >= 0 && col_count >= 0 && first_col + col_count <= cols);
                    block.resize(std::size_t(row_count * col_count));
                    if (col_count == cols) {  // whole rows: one run of bytes
                        decode_float32_into(tensor.original_dtype, Shape{row_count, cols},
                                            bytes.subspan(std::size_t(first_row * cols) * size, std::size_t(row_count * cols) * size), block, tensor.name);
                    } else {
                        // A strip of columns: each row's run. It touches every page of its rows (a narrow
                        // strip of short rows is all of them), so they are handed back every MiB, not at the end.
                        const std::uint8_t* unreleased = bytes.data() + std::size_t(first_row * cols) * size;
                        for (std::int64_t r = 0; r < row_count; ++r) {
                            decode_float32_into(tensor.original_dtype, Shape{col_count},
                                                bytes.subspan(std::size_t((first_row + r) * cols + first_col) * size, std::size_t(col_count) * size),
                                                std::span<float>(block).subspan(std::size_t(r * col_count), std::size_t(col_count)), tensor.name);
                            const std::uint8_t* read_end = bytes.data() + std::size_t((first_row + r + 1) * cols) * size;
                            if (read_end - unreleased >= std::ptrdiff_t(1) << 20) unreleased = release_pages_until(unreleased, read_end);
                        }
                    }
                    release_pages(bytes.subspan(std::size_t(first_row * cols) * size, std::size_t(row_count * cols) * size));
                    return TensorView<const float>(block.data(), Shape{row_count, col_count});
                };
                const MatrixRows rows{tensor.shape[0], cols, read};
                encoded = M::encode_rows(rows, options, m_resources);
            }
            if constexpr (uses_codec_blob<M>) codec_index = 0;
            lossless = nwc::is_lossless<M>;
        });
        ContainerTensor coded = std::move(encoded.tensor);
        coded.name = tensor.name;
        coded.original_dtype = tensor.original_dtype;
        coded.shape = tensor.shape;
        coded.codec_index = codec_index;
        TensorReport local;
        if (options.measure) {
            detail::ErrorMeasure measure;
            if (lossless) {  // as measure_error(weights, weights): the same sums, in the same order (NaN and inf give NaN)
                std::size_t done = 0;
                for_each_float32_block(tensor.original_dtype, bytes, [&](std::span<const float> values) {
                    for (const float element : values) {
                        const double value = element, difference = value - value;
                        measure.squared_error += difference * difference;
                        measure.squared_norm += value * value;
                    }
                    range_done(bytes.subspan(done * size, values.size() * size));
                    done += values.size();
                }, tensor.name);
            } else {
                require(encoded.measured.has_value(), errc::invalid_argument, "method '", options.method, "': encode_rows measured no error for tensor '",
                        tensor.name, "' (RowEncodingMethod sets `measured` when options.measure is set)");
                measure = *encoded.measured;
            }
            local.relative_mse = measure.relative_mse();
            local.proxy_loss = measure.proxy_loss();
            local.squared_error = measure.squared_error;
            local.squared_norm = measure.squared_norm;
            detail::patch_diagnostics(coded.metadata, local.relative_mse, NAN);
        }
        fill_report(local, coded, encoded, start);
        report = std::move(local);
        return coded;
    }

    /// A coded tensor's report: what `local` measured, and what `coded` and `encoded` say.
    static void fill_report(TensorReport& local, const ContainerTensor& coded, const EncodedMatrix& encoded,
                            std::chrono::steady_clock::time_point start) {
        local.name = coded.name;
        local.shape = coded.shape;
        local.original_dtype = coded.original_dtype;
        local.method = coded.method;
        local.stored_bytes = coded.metadata.size() + coded.payload.size();
        local.segments = coded.segment_sizes.size();
        local.used_hessian = encoded.used_hessian;
        local.used_feedback = encoded.used_feedback;
        local.setting = encoded.setting;
        local.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }

    ContainerTensor compress_with(std::string name, TensorView<const float> weights, const Tensor<double>* hessian, dtype original_dtype,
                                  const MethodOptions& options, TensorReport* report, Tensor<float>* reconstruction = nullptr) const {
        const auto start = std::chrono::steady_clock::now();
        if constexpr (requires { Selection::is_vector_coded(weights.shape(), original_dtype); }) {
            if (Selection::is_vector_coded(weights.shape(), original_dtype)) {
                // A vector is coded as one row: by a lossless method itself (it must come back bit for
                // bit too), else by ecsq at the fine vector step when the list holds ecsq.
                bool lossless = false;
                methods::visit(options.method, [&]<class M>(std::type_identity<M>) { lossless = nwc::is_lossless<M>; });
                if (lossless || methods::template holds<EcsqMethod>) {
                    MethodOptions vector = options;
                    if (!lossless) {
                        vector.method = std::string(EcsqMethod::name);
                        vector.axis = NormalizationAxis::per_tensor;
                        vector.step = options.vector_step;
                    }
                    const TensorView<const float> row(weights.data(), Shape{1, weights.numel()});
                    ContainerTensor tensor = encode_matrix(std::move(name), row, nullptr, original_dtype, vector, report, reconstruction, start);
                    tensor.shape = weights.shape();
                    if (report) report->shape = weights.shape();
                    if (reconstruction && !reconstruction->values().empty())
                        *reconstruction = Tensor<float>(weights.shape(), std::move(reconstruction->values()));
                    return tensor;
                }
            }
        }
        if (!Selection::is_coded(weights.shape(), original_dtype)) {
            ContainerTensor tensor = make_raw_tensor(std::move(name), weights, original_dtype);
            if (reconstruction) *reconstruction = Tensor<float>(weights.shape(), std::vector<float>(weights.data(), weights.data() + weights.numel()));
            if (report) {
                *report = raw_report(tensor);
                for (std::int64_t i = 0; i < weights.numel(); ++i) report->squared_norm += double(weights[i]) * double(weights[i]);
            }
            return tensor;
        }
        return encode_matrix(std::move(name), weights, hessian, original_dtype, options, report, reconstruction, start);
    }

    ContainerTensor encode_matrix(std::string name, TensorView<const float> weights, const Tensor<double>* hessian, dtype original_dtype,
                                  const MethodOptions& options, TensorReport* report, Tensor<float>* reconstruction,
                                  std::chrono::steady_clock::time_point start) const {
        detail::require_hessian_fits(hessian, weights.cols(), name);
        EncodedMatrix encoded;
        std::int32_t codec_index = -1;
        bool lossless = false;
        methods::visit(options.method, [&]<class M>(std::type_identity<M>) {
            encoded = M::encode(weights, hessian, options, m_resources);
            if constexpr (uses_codec_blob<M>) codec_index = 0;
            lossless = nwc::is_lossless<M>;
        });
        // A lossless method's decoder gives the weights back: it need not copy them (a whole
        // tensor of memory while the largest tensor is coded).
        const bool exact = lossless && encoded.reconstruction.values().empty();
        ContainerTensor tensor = std::move(encoded.tensor);
        tensor.name = std::move(name);
        tensor.original_dtype = original_dtype;
        tensor.shape = weights.shape();
        tensor.codec_index = codec_index;
        TensorReport local;
        if (options.measure && (encoded.measured || exact || std::int64_t(encoded.reconstruction.values().size()) == weights.numel())) {
            // A method that measured itself (nwc without a Hessian, in its chunk order) did so as its encode_rows does.
            const detail::ErrorMeasure measure =
                encoded.measured ? *encoded.measured : detail::measure_error(weights, exact ? weights : encoded.reconstruction.view(), hessian);
            local.relative_mse = measure.relative_mse();
            local.proxy_loss = measure.proxy_loss();
            local.squared_error = measure.squared_error;
            local.squared_norm = measure.squared_norm;
            detail::patch_diagnostics(tensor.metadata, local.relative_mse, NAN);
            if (reconstruction)
                *reconstruction = exact ? Tensor<float>(weights.shape(), std::vector<float>(weights.data(), weights.data() + weights.numel()))
                                        : std::move(encoded.reconstruction);
        }
        if (report) {
            fill_report(local, tensor, encoded, start);
            *report = std::move(local);
        }
        return tensor;
    }

    std::string file_metadata(const ModelFile& model) const {
        nlohmann::json root = {{"format", "nwc-pipeline"},
                               {"version", 1},
                               {"source", model.source},
                               {"tool", std::string("nwc ") + version_string}};
        // A model built in memory has no loader's source record: its format is all decoding needs.
        if (!root["source"].is_object()) root["source"] = nlohmann::json::object();
        if (!root["source"].contains("source_format")) root["source"]["source_format"] = std::string(model_format_name(model.format));
        return root.dump();
    }

    MethodOptions m_options;
    MethodResources m_resources;
};

/// The composed codec with default policies.
using DefaultCodec = Codec<>;

/// A HessianLookup over calibration Hessians (see llm::LinearHessians).
template <class Hessians>
HessianLookup hessian_lookup(const Hessians& hessians) {
    return [&hessians](std::string_view name) -> const Tensor<double>* { return hessians.contains(name) ? &hessians.at(name) : nullptr; };
}

}  // namespace nwc
