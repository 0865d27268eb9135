// The Method policy: what a per-tensor coding method provides so that the composed codec
// (nwc::Codec<Backend, Selection, Methods...>, pipeline_codec.hpp) can code a matrix with it,
// record it in the container, choose its rate and decode it again.
//
// Read me first:
// - A method is a struct of static members, no state. Codec generates from its method list the
//   name dispatch (MethodOptions::method -> encode), the decode dispatch (a container entry's
//   method string -> parse -> a std::variant of the methods' Layouts -> decode_segment) and the
//   list of names that tools print. A new method is one header plus one entry in the list
//   (docs/ARCHITECTURE.md walks through tests/test_method_policy.cpp's toy method).
// - Every method has ONE rate knob (MethodKnob): the MethodOptions field it reads ("bits",
//   "step", "alpha"), whether it takes integers only and whether the rate grows with it. Rate
//   control (rate_control.hpp) searches that knob for the whole file or chooses it per tensor.
//   A lossless method has none: it sets `static constexpr bool has_rate_knob = false` (and
//   `is_lossless = true`), and rate control, allocation and the tools refuse to search it.
// - Encoding gets the weights (m x n, float32), the input Hessian or null, the options and the
//   MethodResources (a trained codec for nwc); it returns the container bytes of the tensor and,
//   when options.measure is set, the reconstruction the decoder will produce (a lossless method
//   may leave it empty: the pipeline then measures against the weights themselves).
// - Decoding is two steps: parse() validates the metadata against the entry (shape, segment
//   count, codec reference) BEFORE the caller allocates the output, and returns a Layout;
//   decode_segment() decodes one independently decodable segment into the output, writing every
//   weight of the segment (outputs are not cleared first). Both throw nwc::error (corrupt,
//   unsupported, limit) naming `context`, never assert on file bytes.
// - Methods whose tensors need a codec blob of the container (the decoder half of a trained
//   codec) set `static constexpr bool uses_codec_blob = true` and provide codec_blob(resources);
//   the codec embeds the blob once and decoding gets it parsed and cached through DecodeResources.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/io/container.hpp"
#include "nwc/pipeline/method_common.hpp"

namespace nwc {

class NeuralCodec;

/// A method's rate knob: which option it reads and how it moves the rate.
struct MethodKnob {
    std::string_view option;  ///< the MethodOptions field / CLI option ("bits", "step", "alpha")
    bool integer = false;     ///< only integer values (bits per code)
    bool rate_grows = true;   ///< more bytes as the knob grows (alpha, bits) or fewer (step)
    double lowest = 0.0;      ///< the range rate control searches
    double highest = 0.0;
    /// Rate control's first guess for a file of B bits per weight: log2(knob) = intercept + slope B
    /// (ecsq's high-rate Gaussian model: log2 Δ = 2.047 - B; nwc starts at alpha = 1).
    double guess_intercept = 0.0;
    double guess_slope = 0.0;
};

/// A matrix coded by one method, before the codec adds name, dtype and shape.
struct EncodedMatrix {
    ContainerTensor tensor;        ///< method, metadata, payload, segment sizes
    Tensor<float> reconstruction;  ///< what the decoder will produce (empty when not computed)
    /// The error taken by the method itself: measure_error(weights, reconstruction)'s sums in the
    /// same order (encode_rows, which holds no whole reconstruction), or in the method's own order
    /// (nwc without a Hessian: chunk order, so that its encode() and encode_rows() agree); empty
    /// otherwise, and the pipeline measures the reconstruction.
    std::optional<detail::ErrorMeasure> measured;
    bool used_feedback = false;
    bool used_hessian = false;
    std::string setting;
};

/// What a method may need beyond its options when encoding.
struct MethodResources {
    std::shared_ptr<const NeuralCodec> neural_codec;  ///< the trained codec (nwc)
    bool embed_codec = false;  ///< MethodOptions::embed_codec
};

namespace detail {

/// The codec blobs most recently parsed in this process, keyed by their bytes and parsed type.
/// Why: a decoder that takes a model tensor by tensor (Codec::decompress(reader, index), a fresh
/// DecodeResources per call) would otherwise parse the same blob and build its decode tables every
/// time; for a 786 k-weight nwc model that was 29% of the decode (docs/bench/pipeline.md). A hit
/// compares the whole blob (a memcmp of a few KB), so a different codec with the same size never
/// matches; the parsed object depends on the bytes alone (the context only names errors).
class ParsedCodecCache {
public:
    static constexpr std::size_t capacity = 8;

    static ParsedCodecCache& instance() {
        static ParsedCodecCache cache;
        return cache;
    }

    std::shared_ptr<const void> find(std::span<const std::uint8_t> bytes, std::type_index type) {
        std::lock_guard lock(m_mutex);
        for (std::size_t i = m_entries.size(); i-- > 0;) {
            Entry& entry = m_entries[i];
            if (entry.type == type && entry.bytes.size() == bytes.size() && std::equal(bytes.begin(), bytes.end(), entry.bytes.begin())) {
                std::rotate(m_entries.begin() + std::ptrdiff_t(i), m_entries.begin() + std::ptrdiff_t(i) + 1, m_entries.end());  // most recent last
                return m_entries.back().value;
            }
        }
        return nullptr;
    }

    void insert(std::span<const std::uint8_t> bytes, std::type_index type, std::shared_ptr<const void> value) {
        std::lock_guard lock(m_mutex);
        if (m_entries.size() == capacity) m_entries.erase(m_entries.begin());  // the least recently used
        m_entries.push_back({type, std::vector<std::uint8_t>(bytes.begin(), bytes.end()), std::move(value)});
    }

    /// Forgets every entry (tests).
    void clear() {
        std::lock_guard lock(m_mutex);
        m_entries.clear();
    }
    std::size_t size() {
        std::lock_guard lock(m_mutex);
        return m_entries.size();
    }

private:
    struct Entry {
        std::type_index type;
        std::vector<std::uint8_t> bytes;
        std::shared_ptr<const void> value;
    };
    std::mutex m_mutex;
    std::vector<Entry> m_entries;
};

}  // namespace detail

/// Codec blobs of one container, parsed once per decode and shared by its tensors (and across
/// decodes of the same blob through detail::ParsedCodecCache).
class DecodeResources {
public:
    explicit DecodeResources(const ContainerReader& reader) : m_reader(&reader) {}

    const ContainerReader& reader() const noexcept { return *m_reader; }

    /// Codec blob `index` parsed by `parse(bytes, context)` into a T, cached per (index, T).
    template <class T, class Parse>
    std::shared_ptr<const T> codec_blob(std::int32_t index, Parse&& parse) {
        std::lock_guard lock(m_mutex);
        auto& slot = m_parsed[{index, std::type_index(typeid(T))}];
        if (!slot) {
            const std::span<const std::uint8_t> bytes = m_reader->codec(std::size_t(index));
            detail::ParsedCodecCache& cache = detail::ParsedCodecCache::instance();
            slot = cache.find(bytes, std::type_index(typeid(T)));
            if (!slot) {
                const std::string context = m_reader->context() + ": codec " + std::to_string(index);
                slot = std::make_shared<const T>(parse(bytes, context));
                cache.insert(bytes, std::type_index(typeid(T)), slot);
            }
        }
        return std::static_pointer_cast<const T>(slot);
    }

private:
    const ContainerReader* m_reader;
    std::mutex m_mutex;
    std::map<std::pair<std::int32_t, std::type_index>, std::shared_ptr<const void>> m_parsed;
};

/// A method's decoding half (see the header comment): its name, parse() and decode_segment()
/// (checked for backend::scalar, the reference every backend must also provide), and
/// stored_knob(). Every Method is one; decoding-only code (<nwc/decode.hpp>) lists the decoding
/// halves (BuiltinDecodings), whose headers leave out the encoders.
template <class M>
concept MethodDecoding = requires(const ContainerEntry& entry, std::span<const std::uint8_t> bytes, DecodeResources& decode_resources,
                                  const std::string& context, const typename M::Layout& layout, std::size_t segment, TensorView<float> output) {
    { M::name } -> std::convertible_to<std::string_view>;
    { M::stored_knob(bytes) } -> std::convertible_to<double>;
    { M::parse(entry, bytes, decode_resources, context) } -> std::same_as<typename M::Layout>;
    { layout.segment_count() } -> std::convertible_to<std::size_t>;
    { layout.segment_weights(segment) } -> std::convertible_to<std::int64_t>;
    M::decode_segment(layout, segment, bytes, output, context, backend::scalar{});
};

/// The Method policy (see the header comment): a MethodDecoding that also encodes and has a rate
/// knob.
template <class M>
concept Method = MethodDecoding<M> && requires(const MethodOptions& options, MethodOptions& mutable_options, TensorView<const float> weights,
                                                const Tensor<double>* hessian, const MethodResources& resources) {
    { M::knob } -> std::convertible_to<MethodKnob>;
    { M::knob_value(options) } -> std::convertible_to<double>;
    M::set_knob(mutable_options, 1.0);
    { M::encode(weights, hessian, options, resources) } -> std::same_as<EncodedMatrix>;
};

/// Whether M's tensors refer to a codec blob of the container (M::uses_codec_blob, false when absent);
/// such a method also provides `static std::vector<std::uint8_t> codec_blob(const MethodResources&)`.
template <class M>
inline constexpr bool uses_codec_blob = [] {
    if constexpr (requires { M::uses_codec_blob; }) return bool(M::uses_codec_blob);
    else return false;
}();

/// Whether M normalizes by MethodOptions::axis (M::uses_normalization_axis, false when absent):
/// allocation then also chooses the axis per tensor.
template <class M>
inline constexpr bool uses_normalization_axis = [] {
    if constexpr (requires { M::uses_normalization_axis; }) return bool(M::uses_normalization_axis);
    else return false;
}();

/// Whether M has a rate knob to search (M::has_rate_knob, true when absent). Without one, M::knob
/// is a placeholder whose option is empty: rate control, allocation and the tools refuse the
/// method (errc::invalid_argument) rather than search a knob that changes nothing.
template <class M>
inline constexpr bool has_rate_knob = [] {
    if constexpr (requires { M::has_rate_knob; }) return bool(M::has_rate_knob);
    else return true;
}();

/// Whether M reproduces its input bit for bit (M::is_lossless, false when absent): the codec then
/// codes vectors with M too (not with ecsq), and decoded values may be infinite or NaN as the
/// source's were.
template <class M>
inline constexpr bool is_lossless = [] {
    if constexpr (requires { M::is_lossless; }) return bool(M::is_lossless);
    else return false;
}();

/// A method that splits its bytes into ByteAccount categories (else its metadata counts as
/// "metadata" and its payload as "payload").
template <class M>
concept AccountingMethod = MethodDecoding<M> && requires(const typename M::Layout& layout, std::size_t size, std::span<const std::uint8_t> bytes,
                                                         ByteAccount& account) {
    M::account_metadata(layout, size, account);
    M::account_segment(layout, size, bytes, account);
};

/// A method that can also decode a segment straight into the tensor's stored bytes (the whole
/// tensor row-major as stored_dtype(layout), the source's dtype): a streamed decompress writing
/// that dtype then skips float32 altogether (the lossless method). Checked for backend::scalar.
template <class M>
concept StoredDecodingMethod = MethodDecoding<M> && requires(const typename M::Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes,
                                                             std::span<std::uint8_t> output, const std::string& context) {
    { M::stored_dtype(layout) } -> std::same_as<dtype>;
    M::decode_segment_stored(layout, segment, bytes, output, context, backend::scalar{});
};

/// An m x n matrix read in blocks, on demand: a streamed compress widens them from the mapped
/// file, so that no float32 copy of a large tensor exists. read(first_row, row_count, first_col,
/// col_count) returns that block as a row_count x col_count view, valid until the next call.
struct MatrixRows {
    std::int64_t rows = 0, cols = 0;
    std::function<TensorView<const float>(std::int64_t first_row, std::int64_t row_count, std::int64_t first_col, std::int64_t col_count)> read;

    /// Rows a pass reads at once: about 2^16 weights (256 KiB of floats), at least one row.
    std::int64_t block_rows() const noexcept { return std::max<std::int64_t>(1, (std::int64_t(1) << 16) / std::max<std::int64_t>(cols, 1)); }
    /// read() of whole rows, as (first_row, row_count) -> view.
    auto all_columns() const {
        return [this](std::int64_t first_row, std::int64_t row_count) { return read(first_row, row_count, 0, cols); };
    }
};

/// A method that also codes a matrix without a Hessian from MatrixRows (encode_rows), reading it
/// in passes and holding one block of rows (or a strip of columns) at a time: the same entry as
/// encode() of the whole matrix, and `measured` set when options.measure is (the error the
/// pipeline would measure from encode()).
template <class M>
concept RowEncodingMethod = Method<M> && requires(const MatrixRows& rows, const MethodOptions& options, const MethodResources& resources) {
    { M::encode_rows(rows, options, resources) } -> std::same_as<EncodedMatrix>;
};

/// A lossless method that also codes a tensor from the bytes its file stores (encode_stored: the
/// same entry as encode() of the widened floats, with no float32 copy). A streamed compress hands
/// it the mapped bytes; `range_done` receives each range once read, to hand its pages back.
template <class M>
concept StoredEncodingMethod = Method<M> && is_lossless<M> &&
                               requires(std::span<const std::uint8_t> bytes, const MethodOptions& options,
                                        const std::function<void(std::span<const std::uint8_t>)>& range_done) {
                                   { M::encode_stored(bytes, dtype::bf16, options, range_done) } -> std::same_as<EncodedMatrix>;
                               };

/// A method whose sizes may follow from the shape and options alone (rtn and gptq with fp16 group
/// scales): predicted_sizes gives them (metadata, then each segment), or nullopt for options whose
/// sizes depend on the values (grid scales); rate control then codes each tensor alone to size it.
template <class M>
concept SizePredictingMethod = Method<M> && requires(const Shape& shape, const MethodOptions& options) {
    { M::predicted_sizes(shape, options) } -> std::same_as<std::optional<std::vector<std::uint64_t>>>;
};

/// "step=0.4675": a method's knob as reports print it (integers without decimals); "" for a
/// method without a rate knob.
template <Method M>
std::string knob_setting(double value) {
    if constexpr (!has_rate_knob<M>) {
        static_cast<void>(value);
        return {};
    } else {
        return M::knob.integer ? std::string(M::knob.option) + "=" + std::to_string(static_cast<long long>(value))
                               : detail::knob_text(std::string(M::knob.option).c_str(), value);
    }
}

/// An ordered list of methods (or of their decoding halves: every entry is a MethodDecoding; a
/// Codec requires each to be a Method): the name dispatch every codec generates from it.
template <MethodDecoding... Methods>
struct MethodList {
    static_assert(sizeof...(Methods) > 0, "nwc::MethodList needs at least one method");
    static constexpr std::size_t size = sizeof...(Methods);
    using first = std::tuple_element_t<0, std::tuple<Methods...>>;

    /// Calls f(std::type_identity<M>{}) for the method named `name`; false if none is.
    template <class F>
    static bool visit(std::string_view name, F&& f) {
        return ((name == Methods::name ? (f(std::type_identity<Methods>{}), true) : false) || ...);
    }
    static bool contains(std::string_view name) noexcept { return ((name == Methods::name) || ...); }
    template <class M>
    static constexpr bool holds = (std::is_same_v<M, Methods> || ...);
    /// This list with more methods after its own: Codec<Backend, Selection, BuiltinMethods::append<MyMethod>>.
    template <MethodDecoding... Extra>
    using append = MethodList<Methods..., Extra...>;
    /// "nwc, ecsq, gptq, rtn": for messages and help texts.
    static std::string names() {
        std::string joined;
        ((joined += (joined.empty() ? "" : ", ") + std::string(Methods::name)), ...);
        return joined;
    }
};

}  // namespace nwc
