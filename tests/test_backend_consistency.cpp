// Every kernel on every compiled CPU backend against the scalar reference, same inputs:
// - entropy decoding: symbols identical (exact);
// - fp16 / bf16 <-> fp32 conversion: bits identical (NaN: a NaN of the same sign);
// - chunk de-normalization: bits identical (same IEEE operations in the same order);
// - the ResidualMLP block epilogue, ResidualMLP inference and NeuralDecoder::decode: within
//   1e-5 relative, |simd - scalar| <= 1e-5 (|scalar| + rms(scalar)) (summation order and FMA differ);
// - thread counts: bit-identical results for 1, 2 and 3 threads on each backend;
// - compressed file bytes: identical whichever backend compresses (the encoder side always runs the
//   reference arithmetic), and decoding them on either backend agrees within the tolerance above.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/codec/codec_model.hpp"
#include "nwc/core/half_simd.hpp"
#include "nwc/core/random.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/nn/residual_mlp.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/quant/dechunk_kernels.hpp"

namespace nwc_test_backend_consistency {

using namespace nwc;

namespace {

constexpr double relative_tolerance = 1e-5;

template <class T>
double rms(const std::vector<T>& values) {
    double sum = 0;
    for (T value : values) sum += double(value) * double(value);
    return std::sqrt(sum / double(std::max<std::size_t>(values.size(), 1)));
}

/// Counts the entries where simd and scalar differ by more than the stated tolerance.
template <class T>
std::size_t mismatches(const std::vector<T>& reference, const std::vector<T>& simd) {
    REQUIRE(reference.size() == simd.size());
    const double floor = rms(reference);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < reference.size(); ++i)
        if (!(std::abs(double(simd[i]) - double(reference[i])) <= relative_tolerance * (std::abs(double(reference[i])) + floor))) ++bad;
    return bad;
}

template <class Bits>
bool same_or_both_nan(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b);
    return std::bit_cast<Bits>(a) == std::bit_cast<Bits>(b);
}

std::vector<float> edge_floats() {
    std::vector<float> values{0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, -1e-8f, 5.96e-8f, 2.98e-8f,
                              2.9802322e-8f, 6.1035156e-5f, 6.1e-5f, 1e30f, -1e30f, std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max(), 3.3895314e38f};
    // Exact ties of both formats: a kept bit followed by exactly half an ulp.
    for (std::uint32_t base : {0x3F800000u, 0x3F810000u, 0x40490000u, 0x38800000u, 0x33800000u})
        for (std::uint32_t tail : {0x1000u, 0x3000u, 0x8000u, 0x18000u, 0x7FFFu, 0xFFFFu}) values.push_back(std::bit_cast<float>(base | tail));
    Random random(7);
    for (int i = 0; i < 20000; ++i) values.push_back(std::bit_cast<float>(std::uint32_t(random.below(std::uint64_t(1) << 32))));
    for (int i = 0; i < 20000; ++i) values.push_back(float(random.normal() * std::pow(10.0, random.uniform() * 12 - 8)));
    return values;
}

}  // namespace

TEST_CASE("backend_consistency: rANS symbols agree exactly", "[backend_consistency]") {
    Random random(3);
    std::vector<CdfTable> tables;
    for (int channel = 0; channel < 16; ++channel) {
        std::vector<double> probabilities(std::size_t(3 + channel));
        for (double& p : probabilities) p = 0.05 + random.uniform();
        tables.push_back(CdfTable::from_probabilities(-channel / 2, probabilities, 1e-4, 14));
    }
    const CdfTableSet set(std::move(tables));
    std::vector<std::int32_t> symbols(200003 - 200003 % 16);
    for (auto& symbol : symbols) symbol = std::int32_t(std::lround(random.normal() * 3)) - 2;
    symbols[100] = 100000;  // escapes
    symbols[5001] = -7000;
    RangeCoderOptions options;
    options.segment_size = 4096;
    const auto stream = rans::encode(symbols, set, options);
    CHECK(rans::decode(stream, set, backend::scalar{}) == symbols);
    CHECK(rans::decode(stream, set, backend::simd{}) == symbols);
    CHECK(rans::decode(stream, set, backend::simd{}, 3) == symbols);
}

TEST_CASE("backend_consistency: fp16 and bf16 conversions agree bit for bit", "[backend_consistency]") {
    std::vector<half> all_halves(65536);
    std::vector<bfloat16> all_bf16(65536);
    for (std::uint32_t bits = 0; bits < 65536; ++bits) all_halves[bits].bits = all_bf16[bits].bits = std::uint16_t(bits);
    std::vector<float> reference(65536), simd(65536);
    convert_to_float(std::span<const half>(all_halves), std::span<float>(reference), backend::scalar{});
    convert_to_float(std::span<const half>(all_halves), std::span<float>(simd), backend::simd{});
    std::size_t bad = 0;
    for (std::size_t i = 0; i < reference.size(); ++i) bad += !same_or_both_nan<std::uint32_t>(reference[i], simd[i]);
    CHECK(bad == 0);
    convert_to_float(std::span<const bfloat16>(all_bf16), std::span<float>(reference), backend::scalar{});
    convert_to_float(std::span<const bfloat16>(all_bf16), std::span<float>(simd), backend::simd{});
    CHECK(std::memcmp(reference.data(), simd.data(), reference.size() * sizeof(float)) == 0);

    const std::vector<float> values = edge_floats();
    std::vector<half> half_reference(values.size()), half_simd(values.size());
    convert_from_float(std::span<const float>(values), std::span<half>(half_reference), backend::scalar{});
    convert_from_float(std::span<const float>(values), std::span<half>(half_simd), backend::simd{});
    std::vector<bfloat16> bf16_reference(values.size()), bf16_simd(values.size());
    convert_from_float(std::span<const float>(values), std::span<bfloat16>(bf16_reference), backend::scalar{});
    convert_from_float(std::span<const float>(values), std::span<bfloat16>(bf16_simd), backend::simd{});
    std::size_t half_bad = 0, bf16_bad = 0;
    for (std::size_t i = 0; i < values.size(); ++i) {
        half_bad += half_reference[i].bits != half_simd[i].bits;
        bf16_bad += bf16_reference[i].bits != bf16_simd[i].bits;
    }
    CHECK(half_bad == 0);
    CHECK(bf16_bad == 0);
}

TEST_CASE("backend_consistency: de-normalization agrees bit for bit for every output type", "[backend_consistency]") {
    Random random(11);
    for (NormalizationAxis axis : {NormalizationAxis::per_column, NormalizationAxis::per_row}) {
        for (std::int64_t rows : {1, 17, 64, 200}) {
            const std::int64_t cols = 53, d = 16, stride = (rows + d - 1) / d * d;
            std::vector<std::int64_t> columns;  // runs of adjacent columns and gaps, as segments have
            for (std::int64_t c = 0; c < cols; ++c)
                if (c < 40 || c % 3 == 0) columns.push_back(c);
            std::vector<float> chunks(columns.size() * std::size_t(stride));
            for (float& value : chunks) value = float(random.normal() * 2);
            std::vector<half> scales(std::size_t(axis == NormalizationAxis::per_column ? cols : rows));
            for (half& scale : scales) scale = to_half(float(0.001 + random.uniform() * 0.05));
            const DechunkSource source{chunks, columns, stride, 1.37f, scales, axis};
            INFO("rows " << rows << " axis " << int(axis));
            auto run = [&](auto type, auto tag) {
                using T = decltype(type);
                std::vector<T> out(std::size_t(rows * cols));
                dechunk_denormalize(source, TensorView<T>(out.data(), Shape{rows, cols}), tag);
                std::vector<std::uint8_t> bytes(out.size() * sizeof(T));
                std::memcpy(bytes.data(), out.data(), bytes.size());
                return bytes;
            };
            CHECK(run(float{}, backend::scalar{}) == run(float{}, backend::simd{}));
            CHECK(run(half{}, backend::scalar{}) == run(half{}, backend::simd{}));
            CHECK(run(bfloat16{}, backend::scalar{}) == run(bfloat16{}, backend::simd{}));
        }
    }
}

TEMPLATE_TEST_CASE("backend_consistency: block epilogue within 1e-5", "[backend_consistency]", float, double) {
    Random random(5);
    for (int width : {1, 7, 16, 33, 100, 512}) {
        for (bool with_bias : {false, true}) {
            const std::size_t n = std::size_t(width);
            std::vector<TestType> t(n), bias(n), gamma(n), beta(n), scale(n), h(n);
            for (std::size_t i = 0; i < t.size(); ++i) {
                t[i] = TestType(random.normal() * 3 + 5);  // |mean| >> std: the two-pass variance matters
                bias[i] = TestType(random.normal());
                gamma[i] = TestType(1 + random.normal() * 0.2);
                beta[i] = TestType(random.normal() * 0.3);
                scale[i] = TestType(0.5 + random.uniform());
                h[i] = TestType(random.normal());
            }
            std::vector<TestType> reference = h, simd = h;
            const TestType* b = with_bias ? bias.data() : nullptr;
            detail::block_epilogue_row(t.data(), b, gamma.data(), beta.data(), scale.data(), reference.data(), width, backend::scalar{});
            detail::block_epilogue_row(t.data(), b, gamma.data(), beta.data(), scale.data(), simd.data(), width, backend::simd{});
            INFO("width " << width << " bias " << with_bias);
            CHECK(mismatches(reference, simd) == 0);
        }
    }
}

TEST_CASE("backend_consistency: ResidualMLP inference within 1e-5 and identical for any thread count", "[backend_consistency]") {
    for (const ResidualMLPShape shape : {ResidualMLPShape{16, 512, 4, 16, 4}, ResidualMLPShape{16, 40, 2, 16, 4}, ResidualMLPShape{5, 24, 0, 3, 2}}) {
        Random random(9);
        ResidualMLP<float> network(shape);
        network.initialize(random);
        for (auto* parameter : network.parameters())  // non-trivial LayerNorm and level embedding
            if (parameter->name.find("norm") != std::string::npos || parameter->name == "level_embedding")
                for (Eigen::Index i = 0; i < parameter->value.size(); ++i) parameter->value.data()[i] += float(random.normal() * 0.1);
        const std::int64_t rows = 1000 + 3 * ResidualMLP<float>::tile_rows_for(shape.width);
        std::vector<float> input(std::size_t(rows * shape.input));
        for (float& value : input) value = float(random.normal());
        std::vector<std::uint8_t> levels(static_cast<std::size_t>(rows));
        for (auto& level : levels) level = std::uint8_t(random.below(std::uint64_t(shape.levels)));
        auto run = [&](auto tag, int threads) {
            std::vector<float> out(std::size_t(rows * shape.output));
            network.infer(TensorView<const float>(input.data(), {rows, shape.input}), levels, TensorView<float>(out.data(), {rows, shape.output}),
                          threads, tag);
            return out;
        };
        INFO("width " << shape.width << " blocks " << shape.blocks);
        const auto reference = run(backend::scalar{}, 1);
        const auto simd = run(backend::simd{}, 1);
        CHECK(mismatches(reference, simd) == 0);
        CHECK(run(backend::scalar{}, 2) == reference);
        CHECK(run(backend::simd{}, 2) == simd);
        CHECK(run(backend::simd{}, 3) == simd);
    }
}

TEST_CASE("backend_consistency: file bytes do not depend on the backend; decoding agrees", "[backend_consistency]") {
    CodecModel model(CodecArchitecture{16, 48, 2, 16, 4});
    model.initialize(Random(21));
    const auto codec = std::make_shared<const NeuralCodec>(model.freeze(dtype::f16, 14));
    Random random(22);
    Tensor<float> weights(Shape{512, 256});
    for (float& value : weights.values()) value = float(random.normal() * 0.02);
    Tensor<double> hessian(Shape{256, 256});
    {
        Eigen::MatrixXd x = Eigen::MatrixXd::Random(256, 600);
        hessian.matrix() = x * x.transpose() / 600.0;
    }
    for (const Tensor<double>* h : {static_cast<const Tensor<double>*>(nullptr), static_cast<const Tensor<double>*>(&hessian)}) {
        INFO((h ? "with" : "without") << " a Hessian");
        MethodOptions options;
        options.method = "nwc";
        options.alpha = 1.5f;
        options.weights_per_segment = 8192;
        auto compress = [&](auto codec_type) {
            using CodecType = decltype(codec_type);
            const CodecType composed(options, codec);
            ContainerWriter writer;
            writer.add_codec(composed.decoder_blob());
            writer.add_tensor(composed.compress("w", weights.view(), h));
            return writer.serialize();
        };
        const auto bytes = compress(Codec<backend::scalar>(options, codec));
        CHECK(compress(Codec<backend::simd>(options, codec)) == bytes);
        const ContainerReader reader = ContainerReader::from_bytes(bytes);
        const Tensor<float> reference = Codec<backend::scalar>::decompress(reader, 0, 1);
        const Tensor<float> simd = Codec<backend::simd>::decompress(reader, 0, 1);
        CHECK(mismatches(reference.values(), simd.values()) == 0);
        CHECK(Codec<backend::simd>::decompress(reader, 0, 3).values() == simd.values());
        CHECK(Codec<backend::scalar>::decompress(reader, 0, 2).values() == reference.values());
    }
}

namespace user_backend {

// A user's backend: a tag derived from simd that replaces two kernels and inherits the rest. Its
// overloads live in the user's namespace and are found by argument-dependent lookup on the tag.
struct counted : nwc::backend::simd {
    static constexpr std::string_view name = "counted";
};
inline std::atomic<int> rans_calls{0}, dechunk_calls{0};

inline void rans_decode_segment(const nwc::detail::RansDecodeTables& tables, const nwc::detail::RansSegmentBytes& segment, std::span<std::int32_t> out,
                                counted) {
    ++rans_calls;
    nwc::detail::rans_decode_segment(tables, segment, out, nwc::backend::scalar{});
}

template <class T>
void dechunk_denormalize(const nwc::DechunkSource& source, nwc::TensorView<T> output, counted) {
    ++dechunk_calls;
    nwc::dechunk_denormalize(source, output, nwc::backend::scalar{});
}

}  // namespace user_backend

TEST_CASE("backend_consistency: a user's backend tag supplies its own kernels and inherits the rest", "[backend_consistency]") {
    static_assert(host_backend<user_backend::counted>);
    CodecModel model(CodecArchitecture{16, 48, 2, 16, 4});
    model.initialize(Random(23));
    const auto codec = std::make_shared<const NeuralCodec>(model.freeze(dtype::f16, 14));
    Random random(24);
    Tensor<float> weights(Shape{96, 64});
    for (float& value : weights.values()) value = float(random.normal() * 0.02);
    for (const char* method : {"ecsq", "nwc"}) {
        INFO(method);
        MethodOptions options;
        options.method = method;
        const Codec<backend::scalar> reference_codec(options, codec);
        ContainerWriter writer;
        if (std::string(method) == "nwc") writer.add_codec(reference_codec.decoder_blob());
        writer.add_tensor(reference_codec.compress("w", weights.view()));
        const ContainerReader reader = ContainerReader::from_bytes(writer.serialize());
        const int rans_before = user_backend::rans_calls, dechunk_before = user_backend::dechunk_calls;
        const Tensor<float> decoded = Codec<user_backend::counted>::decompress(reader, 0, 2);
        // Identical to simd (whose MLP kernel it inherits; rANS symbols and de-normalization agree bit for bit).
        CHECK(decoded.values() == Codec<backend::simd>::decompress(reader, 0, 1).values());
        CHECK(user_backend::rans_calls > rans_before);  // every segment's symbols went through the user's kernel
        if (std::string(method) == "nwc") CHECK(user_backend::dechunk_calls > dechunk_before);
    }
}

TEST_CASE("backend_consistency: NeuralDecoder::decode within 1e-5, identical for any thread count", "[backend_consistency]") {
    CodecModel model(CodecArchitecture{16, 64, 2, 16, 4});
    model.initialize(Random(31));
    const NeuralCodec codec = model.freeze(dtype::bf16, 14);
    Random random(32);
    const std::int64_t chunks = 5000;
    std::vector<std::int32_t> symbols(std::size_t(chunks * 16));
    for (auto& symbol : symbols) symbol = std::int32_t(std::lround(random.normal() * 2));
    std::vector<std::uint8_t> levels(static_cast<std::size_t>(chunks));
    for (auto& level : levels) level = std::uint8_t(random.below(4));
    auto run = [&](auto tag, int threads) {
        std::vector<float> out(std::size_t(chunks * 16));
        codec.decoder().decode(symbols, levels, TensorView<float>(out.data(), {chunks, 16}), threads, tag);
        return out;
    };
    const auto reference = run(backend::scalar{}, 1), simd = run(backend::simd{}, 1);
    CHECK(mismatches(reference, simd) == 0);
    CHECK(run(backend::simd{}, 2) == simd);
    CHECK(run(backend::scalar{}, 3) == reference);
}

}  // namespace nwc_test_backend_consistency
