// The Method policy (include/nwc/pipeline/method.hpp): a method written here, outside the library,
// registered in a codec's method list, coded into a container and decoded back, with rate control
// on its knob and clear errors for a reader that does not know it. docs/ARCHITECTURE.md walks
// through this file.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "error_testing.hpp"
#include "matrix_rows_testing.hpp"
#include "reliability_support.hpp"
#include "nwc/core/random.hpp"
#include "nwc/pipeline/builtin_decodings.hpp"
#include "nwc/pipeline/model_decoding.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace nwc_test_method_policy {

using namespace nwc;

namespace {

/// A toy method: uniform rounding with step Δ on the raw weights (no normalization), each code
/// stored as a zigzag LEB128 varint (so smaller steps cost more bytes), one segment per block of
/// rows. Metadata: MethodPrefix + f32 Δ.
struct ToyMethod {
    static constexpr std::string_view name = "toy";
    static constexpr MethodKnob knob{.option = "step", .integer = false, .rate_grows = false, .lowest = 1e-4, .highest = 1.0,
                                     .guess_intercept = -4.0, .guess_slope = 0.0};
    static double knob_value(const MethodOptions& options) { return options.step; }
    static void set_knob(MethodOptions& options, double value) { options.step = float(value); }
    static double stored_knob(std::span<const std::uint8_t> metadata) {
        return detail::stored_after_prefix(metadata, [](ByteReader& in) { return double(in.get_f32()); });
    }

    struct Layout {
        std::int64_t rows = 0, cols = 0, rows_per_segment = 1;
        float step = 1.0f;
        std::size_t segment_count() const { return std::size_t(detail::segment_count(rows, rows_per_segment)); }
        std::int64_t segment_weights(std::size_t segment) const {
            return std::min(rows_per_segment, rows - std::int64_t(segment) * rows_per_segment) * cols;
        }
    };

    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>*, const MethodOptions& options, const Resources&) {
        const std::int64_t rows = weights.rows(), cols = weights.cols();
        // Codes must fit int16: a step too small for the weights is bad input, not a crash.
        const float step = options.step;
        EncodedMatrix result;
        result.reconstruction = Tensor<float>(weights.shape());
        std::vector<std::int32_t> codes(std::size_t(weights.numel()));
        for (std::int64_t i = 0; i < weights.numel(); ++i) {
            const float code = std::nearbyint(weights[i] / step);
            require(std::fabs(code) <= 1e9f, errc::invalid_argument, "toy: step ", step, " is too small for weight ", weights[i]);
            codes[std::size_t(i)] = std::int32_t(code);
            result.reconstruction[i] = float(codes[std::size_t(i)]) * step;
        }
        result.setting = knob_setting<ToyMethod>(step);
        const std::int64_t span = std::min(rows, detail::rows_per_segment(cols, options.weights_per_segment));
        result.tensor.method = std::string(name);
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.span = std::uint32_t(span);
        prefix.write(metadata);
        metadata.put_f32(step);
        result.tensor.metadata = metadata.take();
        for (std::int64_t first = 0; first < rows; first += span) {
            ByteWriter segment;
            for (std::int64_t i = first * cols; i < std::min(rows, first + span) * cols; ++i) {
                const std::int32_t code = codes[std::size_t(i)];
                std::uint32_t zigzag = (std::uint32_t(code) << 1) ^ std::uint32_t(code >> 31);
                for (; zigzag >= 0x80; zigzag >>= 7) segment.put_u8(std::uint8_t(zigzag | 0x80));
                segment.put_u8(std::uint8_t(zigzag));
            }
            result.tensor.add_segment(segment.bytes());
        }
        return result;
    }

    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, DecodeResources&, const std::string& context) {
        detail::require_matrix(entry.shape, context);
        ByteReader in(metadata, context + " metadata");
        const detail::MethodPrefix prefix = detail::MethodPrefix::read(in, 0);
        Layout layout{entry.shape[0], entry.shape[1], std::min<std::int64_t>(prefix.span, entry.shape[0]), in.get_f32()};
        require(std::isfinite(layout.step) && layout.step > 0.0f, errc::corrupt, context, ": step ", layout.step);
        in.expect_end();
        require(entry.segment_count() == layout.segment_count(), errc::corrupt, context, ": ", entry.segment_count(), " segments, ",
                layout.segment_count(), " expected");
        return layout;
    }

    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend) {
        const std::int64_t first = std::int64_t(segment) * layout.rows_per_segment * layout.cols;
        const std::int64_t count = layout.segment_weights(segment);
        std::size_t at = 0;
        for (std::int64_t i = 0; i < count; ++i) {
            std::uint32_t zigzag = 0;
            for (int shift = 0;; shift += 7) {
                require(at < bytes.size() && shift <= 28, errc::corrupt, context, " segment ", segment, ": code ", i, " runs past byte ", at);
                zigzag |= std::uint32_t(bytes[at] & 0x7F) << shift;
                if ((bytes[at++] & 0x80) == 0) break;
            }
            output[first + i] = float(std::int32_t(zigzag >> 1) ^ -std::int32_t(zigzag & 1)) * layout.step;
        }
        require(at == bytes.size(), errc::corrupt, context, " segment ", segment, ": ", bytes.size() - at, " bytes after the last code");
    }
};
static_assert(Method<ToyMethod>);
static_assert(!SizePredictingMethod<ToyMethod>);
static_assert(SizePredictingMethod<RtnMethod> && SizePredictingMethod<GptqMethod> && !SizePredictingMethod<EcsqMethod>);

/// The built-in methods and the toy one: all it takes to use a new method.
using ToyCodec = Codec<backend::scalar, DefaultTensorSelection, BuiltinMethods::append<ToyMethod>>;

ModelFile toy_model() {
    ModelFile model;
    Random random(11);
    for (const auto& [name, shape] : std::vector<std::pair<std::string, Shape>>{{"a.weight", Shape{40, 24}}, {"b.weight", Shape{64, 32}}, {"norm", Shape{24}}}) {
        ModelTensor tensor{name, dtype::f32, shape, Tensor<float>(shape), {}};
        for (float& value : tensor.values.values()) value = 0.05f * float(random.normal());
        model.tensors.push_back(std::move(tensor));
    }
    return model;
}

MethodOptions toy_options(float step) {
    MethodOptions options;
    options.method = "toy";
    options.step = step;
    options.weights_per_segment = 300;  // several segments per matrix
    return options;
}

}  // namespace

TEST_CASE("a method defined outside the library round-trips through the container", "[method_policy]") {
    const ModelFile model = toy_model();
    const ToyCodec codec(toy_options(1e-3f));
    const CompressedModel compressed = codec.compress_model(model);
    CHECK(compressed.report.method == "toy");
    CHECK(compressed.report.setting == "step=0.001");
    const std::vector<std::uint8_t> bytes = compressed.writer.serialize();
    CHECK(bytes.size() == compressed.report.file_bytes);
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    CHECK(reader.entry(0).method == "toy");
    CHECK(reader.entry(0).segment_count() > 1);
    CHECK(reader.entry(2).method == "ecsq");  // vectors go to the built-in ecsq at the fine vector_step
    CHECK(ToyCodec::stored_setting(reader.entry(0), reader.metadata(0)) == "step=0.001");
    const ModelFile decoded = ToyCodec::decompress_model(reader, 2);
    REQUIRE(decoded.tensors.size() == model.tensors.size());
    for (std::size_t t = 0; t < 2; ++t) {
        const auto& original = model.tensors[t].values.values();
        const auto& back = decoded.tensors[t].values.values();
        REQUIRE(back.size() == original.size());
        for (std::size_t i = 0; i < back.size(); ++i) {
            CHECK(back[i] == std::nearbyint(original[i] / 1e-3f) * 1e-3f);
        }
        // The report's measurement is of exactly what decodes.
        CHECK(compressed.report.tensors[t].relative_mse > 0.0);
        CHECK(compressed.report.tensors[t].relative_mse < 1e-2);
    }
    CHECK(compressed.report.tensors[2].relative_mse < 1e-3);
    REQUIRE(decoded.tensors[2].values.numel() == model.tensors[2].values.numel());
    // One tensor alone, and the same bytes however many threads code it.
    CHECK(ToyCodec::decompress(reader, 1).values() == decoded.tensors[1].values.values());
    MethodOptions threaded = toy_options(1e-3f);
    threaded.threads = 3;
    CHECK(ToyCodec(threaded).compress_model(model).writer.serialize() == bytes);
}

TEST_CASE("rate control drives a new method's knob", "[method_policy]") {
    const ModelFile model = toy_model();
    RateTarget target;
    target.bits_per_weight = 12.0;
    const CompressedModel result = compress_to_target(ToyCodec(toy_options(1e-3f)), model, {}, target);
    INFO(result.report.note);
    CHECK(result.report.target_met);
    CHECK(std::fabs(result.report.bits_per_weight() / 12.0 - 1.0) <= 0.01);
    CHECK(result.report.passes > 1);
    CHECK(ToyCodec::knob_of("toy").option == "step");
    CHECK(ToyCodec::method_names() == BuiltinMethods::names() + ", toy");  // the built-in ones first, in list order
    // The built-in methods still work in the extended codec, with the same bytes as DefaultCodec.
    MethodOptions ecsq = toy_options(0.5f);
    ecsq.method = "ecsq";
    CHECK(ToyCodec(ecsq).compress_model(model).writer.serialize() == Codec<backend::scalar>(ecsq).compress_model(model).writer.serialize());
}

TEST_CASE("a reader without the method refuses its tensors clearly", "[method_policy]") {
    const std::vector<std::uint8_t> bytes = ToyCodec(toy_options(1e-3f)).compress_model(toy_model()).writer.serialize();
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    try {
        DefaultCodec::decompress(reader, 0);
        FAIL("decoded a tensor of an unknown method");
    } catch (const error& problem) {
        CHECK(problem.id() == errc::unsupported);
        CHECK_THAT(problem.what(), Catch::Contains("unknown method 'toy'"));
    }
    // The raw tensor of the same file still decodes.
    CHECK(DefaultCodec::decompress(reader, 2).numel() == 24);
    CHECK_THROWS_AS(DefaultCodec(toy_options(1e-3f)), error);  // and the default codec cannot code it
    CHECK(DefaultCodec::stored_setting(reader.entry(0), reader.metadata(0)).empty());
}

TEST_CASE("corrupt toy metadata and segments give errors naming the tensor", "[method_policy]") {
    const ToyCodec codec(toy_options(1e-3f));
    ContainerTensor tensor = codec.compress("w", toy_model().tensors[0].values.view());
    tensor.metadata[tensor.metadata.size() - 1] = 0xFF;  // the step's sign and exponent (its last byte): a NaN
    ContainerWriter writer;
    writer.add_tensor(std::move(tensor));
    const ContainerReader reader = ContainerReader::from_bytes(writer.serialize());
    try {
        ToyCodec::decompress(reader, 0);
        FAIL("decoded a NaN step");
    } catch (const error& problem) {
        CHECK(problem.id() == errc::corrupt);
        CHECK_THAT(problem.what(), Catch::Contains("tensor 'w' (toy)"));
    }
}

namespace {
struct ParsedBlob {  // what a test "parses" a codec blob into: its bytes and a serial number
    std::vector<std::uint8_t> bytes;
    int serial = 0;
};
ContainerReader reader_with_codec(std::vector<std::uint8_t> blob) {
    ContainerWriter writer;
    writer.add_codec(std::move(blob));
    return ContainerReader::from_bytes(writer.serialize());
}
}  // namespace

TEST_CASE("codec blobs are parsed once per process, keyed by their bytes", "[method_policy]") {
    detail::ParsedCodecCache::instance().clear();
    int parses = 0;
    auto parse = [&](std::span<const std::uint8_t> bytes, const std::string&) {
        return ParsedBlob{std::vector<std::uint8_t>(bytes.begin(), bytes.end()), ++parses};
    };
    const std::vector<std::uint8_t> blob_a(3000, 0xA5);
    std::vector<std::uint8_t> blob_b = blob_a;
    blob_b.back() = 0x5A;  // same size, one byte apart
    const ContainerReader first = reader_with_codec(blob_a), second = reader_with_codec(blob_a), other = reader_with_codec(blob_b);

    DecodeResources resources_1(first);
    const auto parsed_1 = resources_1.codec_blob<ParsedBlob>(0, parse);
    CHECK(resources_1.codec_blob<ParsedBlob>(0, parse) == parsed_1);  // per container
    DecodeResources resources_2(second);                                // a new decode of the same blob
    CHECK(resources_2.codec_blob<ParsedBlob>(0, parse) == parsed_1);
    CHECK(parses == 1);
    DecodeResources resources_3(other);
    const auto parsed_3 = resources_3.codec_blob<ParsedBlob>(0, parse);
    CHECK(parses == 2);
    CHECK(parsed_3->bytes == blob_b);
    CHECK(parsed_1->bytes == blob_a);

    // The least recently used entry goes once the cache is full; what it parsed stays valid.
    std::vector<ContainerReader> readers;
    for (std::size_t k = 0; k < detail::ParsedCodecCache::capacity; ++k)
        readers.push_back(reader_with_codec(std::vector<std::uint8_t>(100 + k, std::uint8_t(k))));
    for (const ContainerReader& reader : readers) {
        DecodeResources resources(reader);
        resources.codec_blob<ParsedBlob>(0, parse);
    }
    CHECK(parses == 2 + int(detail::ParsedCodecCache::capacity));
    CHECK(detail::ParsedCodecCache::instance().size() == detail::ParsedCodecCache::capacity);
    DecodeResources again(first);
    const auto reparsed = again.codec_blob<ParsedBlob>(0, parse);
    CHECK(parses == 3 + int(detail::ParsedCodecCache::capacity));
    CHECK(reparsed != parsed_1);
    CHECK(reparsed->bytes == parsed_1->bytes);
    detail::ParsedCodecCache::instance().clear();
}

TEST_CASE("method policy: every RowEncodingMethod's encode_rows gives encode()'s entry and error, block by block", "[method_policy]") {
    // What a streamed compress relies on (Codec::compress_from_file): the built-in methods that code
    // a matrix from blocks of rows, every shape class (segments of one row and of many, a last
    // group or strip cut short), with each method's own layouts.
    // nwc's: tests/test_method_nwc.cpp (it needs a codec).
    static_assert(RowEncodingMethod<RtnMethod> && RowEncodingMethod<GptqMethod> && RowEncodingMethod<EcsqMethod> && RowEncodingMethod<TcqMethod> &&
                  RowEncodingMethod<NwcMethod>);
    static_assert(!RowEncodingMethod<LosslessMethod> && StoredEncodingMethod<LosslessMethod> && !StoredEncodingMethod<NwcMethod>);
    Random random(3);
    const auto check = [&]<class M>(std::type_identity<M>, const MethodOptions& options, std::int64_t rows, std::int64_t cols) {
        Tensor<float> weights(Shape{rows, cols});
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) weights(r, c) = 0.03f * float(random.normal()) * (1.0f + float(r % 4));
        (void)testing::check_encode_rows<M>(weights, options);
    };
    for (const auto& [rows, cols] : {std::pair<std::int64_t, std::int64_t>{300, 200}, {1000, 70}, {17, 9000}, {64, 33}}) {
        INFO(rows << " x " << cols);
        MethodOptions options;
        options.weights_per_segment = 4096;
        for (const bool fp16 : {false, true}) {
            for (const int bits : {3, 4, 8}) {
                INFO("rtn/gptq, fp16 scales " << fp16 << ", " << bits << " bits");
                options.fp16_group_scales = fp16;
                options.bits = bits;
                check(std::type_identity<RtnMethod>{}, options, rows, cols);
                check(std::type_identity<GptqMethod>{}, options, rows, cols);
            }
        }
        for (const NormalizationAxis axis : {NormalizationAxis::per_tensor, NormalizationAxis::per_row, NormalizationAxis::per_column}) {
            INFO("ecsq, tcq, axis " << int(axis));
            options.axis = axis;
            check(std::type_identity<EcsqMethod>{}, options, rows, cols);
            check(std::type_identity<TcqMethod>{}, options, rows, cols);
        }
    }
}

// The decoding halves (what <nwc/decode.hpp> compiles instead of the encoders) are MethodDecodings,
// not Methods, and each built-in Method derives from its own.
static_assert(MethodDecoding<EcsqDecoding> && MethodDecoding<TcqDecoding> && MethodDecoding<NwcDecoding> && MethodDecoding<RtnDecoding> &&
              MethodDecoding<GptqDecoding> && MethodDecoding<LosslessDecoding>);
static_assert(!Method<EcsqDecoding> && !Method<NwcDecoding> && !Method<LosslessDecoding>);
static_assert(std::is_same_v<EcsqMethod::Layout, EcsqDecoding::Layout> && std::is_same_v<GptqMethod::Layout, GptqDecoding::Layout>);

TEST_CASE("method policy: the decoding halves alone decode every built-in method as the codec does", "[method_policy]") {
    const std::vector<std::uint8_t> bytes = reliability::mixed_container();
    const ContainerReader reader = ContainerReader::from_bytes(bytes, "mixed");
    std::size_t decoded = 0;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (!is_floating_dtype(entry.original_dtype)) continue;
        INFO(entry.name << " (" << entry.method << ")");
        // Per backend: nwc's networks round differently on simd (within 1e-6), as Codec's do.
        const Tensor<float> expected_scalar = Codec<backend::scalar>::decompress(reader, index);
        const Tensor<float> expected_simd = DefaultCodec::decompress(reader, index);
        const Tensor<float> scalar = decompress_tensor<backend::scalar, BuiltinDecodings>(reader, index);
        const Tensor<float> simd = decompress_tensor<backend::simd>(reader, index, 2);
        REQUIRE(scalar.shape() == expected_scalar.shape());
        REQUIRE(simd.shape() == expected_simd.shape());
        CHECK(std::memcmp(scalar.data(), expected_scalar.data(), sizeof(float) * std::size_t(scalar.numel())) == 0);
        CHECK(std::memcmp(simd.data(), expected_simd.data(), sizeof(float) * std::size_t(simd.numel())) == 0);
        ++decoded;
    }
    CHECK(decoded == 8);  // rtn, gptq, ecsq, tcq, nwc, rtn with fp16 scales, lossless, the raw vector

    // A whole model, its files included, as Codec::decompress_model gives it.
    const std::vector<std::uint8_t> with_files = reliability::container_with_source_files();
    const ContainerReader model_reader = ContainerReader::from_bytes(with_files, "with files");
    const ModelFile expected = DefaultCodec::decompress_model(model_reader);
    const ModelFile model = decompress_model(model_reader, 2);
    CHECK(model.format == expected.format);
    CHECK(model.source == expected.source);
    REQUIRE(model.tensors.size() == expected.tensors.size());
    for (std::size_t k = 0; k < model.tensors.size(); ++k) {
        CHECK(model.tensors[k].name == expected.tensors[k].name);
        CHECK(model.tensors[k].original_dtype == expected.tensors[k].original_dtype);
        CHECK(model.tensors[k].raw_bytes == expected.tensors[k].raw_bytes);
        const std::span<const float> values = model.tensors[k].values.values(), expected_values = expected.tensors[k].values.values();
        REQUIRE(values.size() == expected_values.size());
        if (!values.empty())  // an integer tensor has no float values (and a null data pointer)
            CHECK(std::memcmp(values.data(), expected_values.data(), sizeof(float) * values.size()) == 0);
    }
    CHECK(model.files.size() == 3);
    CHECK(model.files == expected.files);

    // A list without a tensor's method refuses it, naming the methods it reads.
    CHECK(testing::error_of([&] { decompress_tensor<backend::scalar, MethodList<EcsqDecoding>>(reader, 0); }) == errc::unsupported);
}

}  // namespace nwc_test_method_policy
