// The "tcq" pipeline method (pipeline/method_tcq.hpp): through the .nwc container the decoder
// gives exactly the encoder's reconstruction, with the scalar and the SIMD backend alike, for
// shapes that are and are not multiples of the 32-column strips, every normalization axis, with
// and without a Hessian, segments on every SIMD lane count; LDLQ feedback lowers the proxy loss; at 3-4 bits per weight on a unit
// Gaussian it beats ecsq's rate-distortion trade-off; damaged metadata and segments are
// nwc::errors (or harmless finite decodes where the bytes cannot tell); rate control reaches its
// target with it.
// nwc-ctest-labels: slow
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "error_testing.hpp"
#include "matrix_rows_testing.hpp"
#include "nwc/core/random.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/rate_control.hpp"
#include "reliability_support.hpp"

namespace nwc_test_method_tcq {

using namespace nwc;
using nwc::testing::error_of;

namespace {

Tensor<float> gaussian_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed, float scale = 1.0f) {
    Random random(seed);
    Tensor<float> weights(Shape{rows, cols});
    for (float& value : weights.values()) value = scale * float(random.normal());
    // Rows of different size, so per-row and per-column scales differ from the tensor's.
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) weights(r, c) *= 1.0f + 0.5f * float(r % 3) + 0.25f * float(c % 2);
    return weights;
}

/// H_ij = rho^|i - j|: strongly correlated inputs, positive definite.
Tensor<double> correlated_hessian(std::int64_t cols, double rho) {
    Tensor<double> hessian(Shape{cols, cols});
    for (std::int64_t i = 0; i < cols; ++i)
        for (std::int64_t j = 0; j < cols; ++j) hessian(i, j) = std::pow(rho, double(std::abs(i - j)));
    return hessian;
}

MethodOptions tcq_options(float step = 0.2f, NormalizationAxis axis = NormalizationAxis::per_tensor) {
    MethodOptions options;
    options.method = "tcq";
    options.tcq_step = step;
    options.axis = axis;
    options.threads = 1;
    return options;
}

struct Coded {
    std::vector<std::uint8_t> file;
    Tensor<float> reconstruction;
    TensorReport report;
};

Coded code(const MethodOptions& options, const Tensor<float>& weights, const Tensor<double>* hessian = nullptr) {
    Coded coded;
    ContainerWriter writer;
    writer.add_tensor(DefaultCodec(options).compress("w", weights.view(), hessian, &coded.report, dtype::f32, &coded.reconstruction));
    coded.file = writer.serialize();
    return coded;
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
    return a.numel() == b.numel() && std::memcmp(a.data(), b.data(), std::size_t(a.numel()) * sizeof(float)) == 0;
}

/// 8 x (metadata + payload) / weights of the file's one tensor.
double tensor_bits(const Coded& coded) { return coded.report.bits_per_weight(); }

double mse(const Tensor<float>& a, const Tensor<float>& b) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < a.numel(); ++i) sum += double(a[i] - b[i]) * double(a[i] - b[i]);
    return sum / double(a.numel());
}


/// "error" if parsing and decoding every segment throws nwc::error, "finite" if it decodes to finite
/// values; anything else (another exception, a non-finite value) fails the test.
std::string parse_and_decode(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, const std::vector<std::vector<std::uint8_t>>& segments,
                             DecodeResources& resources) {
    try {
        const TcqMethod::Layout layout = TcqMethod::parse(entry, metadata, resources, "t");
        Tensor<float> output(entry.shape);
        for (std::size_t k = 0; k < segments.size(); ++k) TcqMethod::decode_segment(layout, k, segments[k], output.view(), "t", backend::simd{});
        for (const float value : output.values())
            if (!std::isfinite(value)) return "non-finite";
        return "finite";
    } catch (const nwc::error&) {
        return "error";
    }
}

}  // namespace

TEST_CASE("tcq: the container decodes to the encoder's reconstruction, scalar and SIMD alike", "[tcq]") {
    const std::int64_t shapes[][2] = {{16, 16}, {40, 70}, {33, 100}, {64, 96}, {100, 33}, {20, 200}};
    for (const auto& shape : shapes) {
        const Tensor<float> weights = gaussian_matrix(shape[0], shape[1], std::uint64_t(shape[0] * 1000 + shape[1]), 0.05f);
        const Tensor<double> hessian = correlated_hessian(shape[1], 0.8);
        for (const NormalizationAxis axis : {NormalizationAxis::per_tensor, NormalizationAxis::per_row, NormalizationAxis::per_column}) {
            for (const bool with_hessian : {false, true}) {
                INFO(shape[0] << " x " << shape[1] << ", axis " << int(axis) << (with_hessian ? ", Hessian" : ", no Hessian"));
                MethodOptions options = tcq_options(0.15f, axis);
                options.weights_per_segment = 32 * shape[0];  // one strip per segment
                const Coded coded = code(options, weights, with_hessian ? &hessian : nullptr);
                CHECK(coded.report.used_feedback == with_hessian);
                const ContainerReader reader = ContainerReader::from_bytes(coded.file);
                REQUIRE(reader.entry(0).method == "tcq");
                CHECK(reader.entry(0).segment_count() == std::size_t((shape[1] + 31) / 32));
                const Tensor<float> scalar = Codec<backend::scalar>::decompress(reader, 0);
                const Tensor<float> simd = Codec<backend::simd>::decompress(reader, 0, 2);
                CHECK(same_bits(scalar, coded.reconstruction));
                CHECK(same_bits(simd, coded.reconstruction));
                CHECK(mse(weights, scalar) < 0.05 * mse(weights, Tensor<float>(weights.shape())));
            }
        }
    }
}

TEST_CASE("tcq: a strip longer than the coder's 2^20-value segments restarts its lanes there, with and without LDLQ", "[tcq]") {
    // 33 columns: a full strip of 32 x 40000 = 1.28M values (its lanes restart at value 2^20) and a
    // one-column strip stored column by column.
    const Tensor<float> weights = gaussian_matrix(40000, 33, 77, 0.05f);
    const Tensor<double> hessian = correlated_hessian(33, 0.9);
    for (const bool with_hessian : {false, true}) {
        INFO((with_hessian ? "Hessian" : "no Hessian"));
        MethodOptions options = tcq_options(0.3f);
        options.threads = 2;
        const Coded coded = code(options, weights, with_hessian ? &hessian : nullptr);
        CHECK(coded.report.used_feedback == with_hessian);
        const ContainerReader reader = ContainerReader::from_bytes(coded.file);
        CHECK(reader.entry(0).segment_count() == 2);
        CHECK(same_bits(Codec<backend::simd>::decompress(reader, 0, 2), coded.reconstruction));
        CHECK(mse(weights, coded.reconstruction) < 0.05 * mse(weights, Tensor<float>(weights.shape())));
    }
}

TEST_CASE("tcq: encode_rows, block by block, gives encode()'s entry and its error", "[tcq]") {
    // A streamed compress codes a matrix from blocks of rows without a whole copy of it: the same
    // scales, the same fit() sample (40000 x 33 has two 2^20-value blocks and a sampling stride of
    // 2), the same searches, symbols kept as int8 / int16 / int32 (steps 0.2 / 1e-3 / 6.2e-5, the smallest fp16 normal step), the
    // same tables; the error the pipeline measures from the reconstruction, summed alike.
    struct Case {
        std::int64_t rows, cols;
        float step;
        NormalizationAxis axis;
    };
    for (const Case& test : {Case{40000, 33, 0.3f, NormalizationAxis::per_tensor}, Case{300, 270, 0.2f, NormalizationAxis::per_row},
                             Case{300, 270, 0.2f, NormalizationAxis::per_column}, Case{64, 100, 1e-3f, NormalizationAxis::per_tensor},
                             Case{64, 40, 6.2e-5f, NormalizationAxis::per_row}, Case{20, 17, 0.5f, NormalizationAxis::per_column}}) {
        INFO(test.rows << " x " << test.cols << ", step " << test.step << ", axis " << int(test.axis));
        const Tensor<float> weights = gaussian_matrix(test.rows, test.cols, 5, 0.05f);
        MethodOptions options = tcq_options(test.step, test.axis);
        options.weights_per_segment = 20000;
        // Weights read: scales (2 passes), sample, strips, error; passes, not a copy.
        CHECK(testing::check_encode_rows<TcqMethod>(weights, options) >= 4 * weights.numel());
        options.measure = false;
        CHECK(!TcqMethod::encode_rows(testing::rows_of(weights).rows, options).measured.has_value());
    }
}

TEST_CASE("tcq: PackedSymbols keep every int32 in the narrowest width", "[tcq]") {
    const std::vector<std::vector<std::int32_t>> cases = {{},
                                                          {0, -128, 127, 5},
                                                          {-129, 3, 127},
                                                          {128, -32768, 32767},
                                                          {-32769, 0},
                                                          {32768, std::numeric_limits<std::int32_t>::min(), std::numeric_limits<std::int32_t>::max()}};
    const int widths[] = {1, 1, 2, 2, 4, 4};
    for (std::size_t k = 0; k < cases.size(); ++k) {
        const std::vector<std::int32_t>& symbols = cases[k];
        const detail::PackedSymbols packed(symbols);
        CHECK(packed.width() == widths[k]);
        CHECK(packed.unpack() == symbols);
        for (std::size_t i = 0; i < symbols.size(); ++i) CHECK(packed[i] == symbols[i]);
    }
}

TEST_CASE("tcq: SIMD decoding equals the scalar reference on segments of 8, 16 and 32 rANS lanes", "[tcq]") {
    // One 32-column strip per segment: 32 x rows values, coded on rans::lane_count_for(32 rows) lanes.
    for (const std::int64_t rows : {512, 1024, 2048}) {
        for (const int states : {8, 256}) {
            INFO(rows << " rows, " << states << " states");
            Tensor<float> weights = gaussian_matrix(rows, 64, std::uint64_t(rows + states), 0.05f);
            for (std::int64_t r = 0; r < rows; r += 97) weights(r, r % 64) = 4.0f;  // far outliers: escapes
            MethodOptions options = tcq_options(0.15f);
            options.tcq_states = states;
            options.weights_per_segment = 32 * rows;
            const Coded coded = code(options, weights);
            const ContainerReader reader = ContainerReader::from_bytes(coded.file);
            REQUIRE(reader.entry(0).segment_count() == 2);
            const Tensor<float> scalar = Codec<backend::scalar>::decompress(reader, 0);
            CHECK(same_bits(scalar, coded.reconstruction));
            CHECK(same_bits(Codec<backend::simd>::decompress(reader, 0), scalar));
            CHECK(same_bits(Codec<backend::simd>::decompress(reader, 0, 2), scalar));
        }
    }
}

TEST_CASE("tcq: every state count 4..256 round-trips; other counts are refused", "[tcq]") {
    const Tensor<float> weights = gaussian_matrix(48, 80, 5);
    for (const int states : {4, 8, 16, 32, 64, 128, 256}) {
        INFO(states << " states");
        MethodOptions options = tcq_options();
        options.tcq_states = states;
        const Coded coded = code(options, weights);
        CHECK(same_bits(Codec<backend::simd>::decompress(ContainerReader::from_bytes(coded.file), 0), coded.reconstruction));
    }
    for (const int states : {2, 6, 512}) {
        MethodOptions options = tcq_options();
        options.tcq_states = states;
        CHECK(error_of([&] { code(options, weights); }) == errc::invalid_argument);
    }
}

TEST_CASE("tcq: LDLQ feedback lowers the proxy loss on a correlated Hessian", "[tcq]") {
    const Tensor<float> weights = gaussian_matrix(64, 128, 9);
    const Tensor<double> hessian = correlated_hessian(128, 0.95);
    MethodOptions options = tcq_options(0.3f);
    const Coded with_feedback = code(options, weights, &hessian);
    options.ldlq = false;
    const Coded without = code(options, weights, &hessian);
    CHECK(with_feedback.report.used_feedback);
    CHECK(!without.report.used_feedback);
    const double loss_with = detail::measure_error(weights.view(), with_feedback.reconstruction.view(), &hessian).proxy_loss();
    const double loss_without = detail::measure_error(weights.view(), without.reconstruction.view(), &hessian).proxy_loss();
    INFO("proxy loss with feedback " << loss_with << ", without " << loss_without);
    CHECK(loss_with < 0.7 * loss_without);
}

TEST_CASE("tcq: 8 states beat ecsq's rate-distortion trade-off on a unit Gaussian at 3-4 bits", "[tcq]") {
    Random random(21);
    Tensor<float> weights(Shape{256, 256});
    for (float& value : weights.values()) value = float(random.normal());
    // At high rate D ~ c 2^(-2R): compare D 2^(2R) at the tensor's own bytes (side information included).
    const auto merit = [&](const std::string& method, float step) {
        MethodOptions options = tcq_options(step);
        options.method = method;
        const Coded coded = code(options, weights);
        const double bits = tensor_bits(coded), distortion = mse(weights, coded.reconstruction);
        INFO(method << " step " << step << ": " << bits << " bits per weight, MSE " << distortion);
        CHECK(bits > 3.0);
        CHECK(bits < 4.0);
        return distortion * std::exp2(2.0 * bits);
    };
    const double ecsq = merit("ecsq", 0.36f), tcq = merit("tcq", 0.18f);
    // ECSQ sits 1.53 dB (a factor 1.42) above the bound, 8-state ECTCQ about 0.5 dB: a factor 0.79 between.
    INFO("D 2^2R: ecsq " << ecsq << ", tcq " << tcq << " (bound 1)");
    CHECK(tcq < 0.85 * ecsq);
}

TEST_CASE("tcq: the byte account covers the file", "[tcq]") {
    const Coded coded = code(tcq_options(0.2f, NormalizationAxis::per_row), gaussian_matrix(40, 70, 3));
    const auto account = DefaultCodec::account(ContainerReader::from_bytes(coded.file));
    CHECK(account.total.total() == coded.file.size());
    for (const char* category : {"payload", "tables", "framing", "metadata", "scales"}) {
        INFO(category);
        CHECK(account.total.of(category) > 0);
    }
    CHECK(account.total.of("payload") > account.total.side_information());
    const ContainerReader reader = ContainerReader::from_bytes(coded.file);
    CHECK(DefaultCodec::stored_setting(reader.entry(0), reader.metadata(0)) == "step=0.2");
}

TEST_CASE("tcq: union 1's table derived from union 0's: geometric means between the even indices, one byte in the file", "[tcq]") {
    SECTION("the derived table") {
        // Union 0 codes j = k / 2 for even k: frequencies 64, 1024, 6015, 1024, 64 at j = -2..2, escape 1.
        const CdfTable union0 = CdfTable::from_frequencies(-2, {64, 1024, 6015, 1024, 64, 1}, 13);
        const CdfTable derived = TcqMethod::derived_union_table(union0);
        CHECK(derived.precision() == 13);
        CHECK(derived.offset() == -3);  // j = -3 .. 2: k = -5 .. 5, between and around the even ones
        REQUIRE(derived.support() == 6);
        const auto f = derived.frequencies();
        for (std::uint32_t j = 0; j < 3; ++j) CHECK(std::abs(int(f[j]) - int(f[5 - j])) <= 1);  // symmetric about k = 0 as union 0 is (to rounding)
        CHECK(f[2] > f[1]);
        CHECK(f[1] > f[0]);
        // Ratios are those of the geometric means: sqrt(6015 * 1024) / sqrt(1024 * 64) = 9.69.
        CHECK(std::fabs(double(f[2]) / double(f[1]) - std::sqrt(6015.0 / 64.0)) < 0.1);
        CHECK(f[6] <= 2);  // the escape stays as rare as union 0's (1 in 8192)
        // No room below INT32_MIN for union 1's offset: refused, never wrapped.
        const CdfTable lowest = CdfTable::from_frequencies(std::numeric_limits<std::int32_t>::min(), {4000, 96}, 12);
        CHECK(error_of([&] { (void)TcqMethod::derived_union_table(lowest); }) == errc::invalid_argument);
    }
    SECTION("the encoder writes it where it costs less, and the file decodes exactly") {
        // Small tensors: a fitted union 1 table (~6 bytes) costs more than the derived table's
        // modelling loss; the marker byte ends the metadata.
        for (const std::int64_t cols : {32, 64, 96}) {
            INFO(cols << " columns");
            const Tensor<float> weights = gaussian_matrix(48, cols, std::uint64_t(cols), 0.05f);
            const Coded coded = code(tcq_options(0.15f, NormalizationAxis::per_row), weights);
            const ContainerReader reader = ContainerReader::from_bytes(coded.file);
            REQUIRE(!reader.metadata(0).empty());
            CHECK(reader.metadata(0).back() == TcqMethod::derived_table_marker);
            CHECK(same_bits(Codec<backend::scalar>::decompress(reader, 0), coded.reconstruction));
            CHECK(same_bits(Codec<backend::simd>::decompress(reader, 0), coded.reconstruction));
            std::vector<std::uint8_t> metadata(reader.metadata(0).begin(), reader.metadata(0).end());
            DecodeResources resources(reader);
            const TcqMethod::Layout layout = TcqMethod::parse(reader.entry(0), metadata, resources, "t");
            CHECK(layout.tables[1].offset() == layout.tables[0].offset() - 1);
            // Any other byte of kind 3, or a byte after the marker, is corrupt.
            metadata.back() = TcqMethod::derived_table_marker | 1;
            CHECK(error_of([&] { (void)TcqMethod::parse(reader.entry(0), metadata, resources, "t"); }) == errc::corrupt);
            metadata.back() = TcqMethod::derived_table_marker;
            metadata.push_back(0);
            CHECK(error_of([&] { (void)TcqMethod::parse(reader.entry(0), metadata, resources, "t"); }) == errc::corrupt);
        }
    }
}

TEST_CASE("tcq: damaged metadata and segments are nwc::errors or finite decodes", "[tcq][hostile]") {
    MethodOptions options = tcq_options(0.15f, NormalizationAxis::per_column);
    options.weights_per_segment = 32 * 40;
    const Tensor<double> hessian = correlated_hessian(70, 0.8);
    const Coded coded = code(options, gaussian_matrix(40, 70, 17, 0.05f), &hessian);
    const ContainerReader reader = ContainerReader::from_bytes(coded.file);
    DecodeResources resources(reader);
    const ContainerEntry& entry = reader.entry(0);
    REQUIRE(entry.segment_count() == 3);
    const std::vector<std::uint8_t> metadata(reader.metadata(0).begin(), reader.metadata(0).end());
    std::vector<std::vector<std::uint8_t>> segments;
    for (std::size_t k = 0; k < entry.segment_count(); ++k) segments.emplace_back(reader.segment(0, k).begin(), reader.segment(0, k).end());
    REQUIRE(parse_and_decode(entry, metadata, segments, resources) == "finite");
    const auto parse = [&](const ContainerEntry& e, std::span<const std::uint8_t> bytes) { return TcqMethod::parse(e, bytes, resources, "t"); };

    for (std::size_t size = 0; size < metadata.size(); ++size) {
        INFO("metadata cut to " << size << " bytes");
        const errc id = error_of([&] { parse(entry, std::span(metadata).first(size)); });
        CHECK((id == errc::truncated || id == errc::corrupt));
    }
    // Diagnostics, step and scales may take any value (other weights, still finite); damage to the
    // structure (version, flags, span, axis, state bits, tables) must mostly be refused.
    const std::size_t axis_at = detail::diagnostics_offset + detail::diagnostics_bytes + 1;  // after a one-byte span varint
    const std::size_t scales_end = axis_at + 3 + std::size_t(parse(entry, metadata).scale_bytes);
    const auto free_value = [&](std::size_t at) {
        return (at >= detail::diagnostics_offset && at < detail::diagnostics_offset + detail::diagnostics_bytes) || (at > axis_at && at < scales_end);
    };
    std::size_t structural = 0, refused = 0;
    for (std::size_t at = 0; at < metadata.size(); ++at)
        for (const std::uint8_t flip : {0x01, 0x10, 0xFF}) {
            std::vector<std::uint8_t> damaged = metadata;
            damaged[at] ^= flip;
            INFO("metadata byte " << at << " ^ " << int(flip));
            const std::string outcome = parse_and_decode(entry, damaged, segments, resources);
            CHECK(outcome != "non-finite");
            if (free_value(at)) continue;
            ++structural;
            refused += outcome == "error";
        }
    CHECK(structural >= 30);
    CHECK(refused * 4 > structural * 3);  // most damage to the structure is caught, not decoded
    // Field by field: version, axis, state bits; an entry of another shape or segment count.
    const auto patched = [&](std::size_t at, std::uint8_t value) {
        std::vector<std::uint8_t> damaged = metadata;
        damaged[at] = value;
        return error_of([&] { parse(entry, damaged); });
    };
    CHECK(patched(0, 2) == errc::unsupported);
    CHECK(patched(0, detail::method_layout_version + 1) == errc::unsupported);
    std::vector<std::uint8_t> version3 = metadata;  // layout version 3 reads as 4 (4 only adds choices)
    version3[0] = detail::oldest_method_layout_version;
    CHECK_NOTHROW(parse(entry, version3));
    CHECK(patched(axis_at, 3) == errc::corrupt);
    const auto with_entry = [&](auto&& change) {
        ContainerEntry other = entry;
        change(other);
        return error_of([&] { parse(other, metadata); });
    };
    CHECK(with_entry([](ContainerEntry& e) { e.shape = Shape{40 * 70}; }) == errc::corrupt);
    const errc wider = with_entry([](ContainerEntry& e) { e.shape = Shape{40, 100}; });  // 100 scales read from 70's bytes
    CHECK((wider == errc::corrupt || wider == errc::truncated));
    CHECK(with_entry([](ContainerEntry& e) { e.segment_bounds.pop_back(); }) == errc::corrupt);

    const TcqMethod::Layout layout = parse(entry, metadata);
    Tensor<float> output(entry.shape);
    for (std::size_t size = 0; size < segments[0].size(); ++size) {
        INFO("segment cut to " << size << " bytes");
        const errc id = error_of([&] { TcqMethod::decode_segment(layout, 0, std::span(segments[0]).first(size), output.view(), "t", backend::scalar{}); });
        CHECK((id == errc::truncated || id == errc::corrupt));
    }
    for (std::size_t at = 0; at < segments[1].size(); ++at) {
        std::vector<std::vector<std::uint8_t>> damaged = segments;
        damaged[1][at] ^= 0x24;
        INFO("segment byte " << at << " flipped");
        CHECK(parse_and_decode(entry, metadata, damaged, resources) != "non-finite");
    }
    // The last segment (a narrower strip) in the first one's place holds the wrong symbol count.
    CHECK(error_of([&] { TcqMethod::decode_segment(layout, 0, segments[2], output.view(), "t", backend::scalar{}); }) == errc::corrupt);
}

TEST_CASE("tcq: rate control reaches its target on a small model", "[tcq]") {
    const ModelFile model = reliability::small_model();
    MethodOptions options = reliability::small_options("tcq");
    for (const double bits : {4.0, 6.0}) {
        INFO(bits << " bits per weight");
        RateTarget target;
        target.bits_per_weight = bits;
        const CompressedModel compressed = compress_to_target(DefaultCodec(options), model, {}, target);
        INFO(compressed.report.note);
        CHECK(compressed.report.target_met);
        CHECK(std::fabs(compressed.report.bits_per_weight() / bits - 1.0) <= 0.01);
        const ModelFile decoded = DefaultCodec::decompress_model(ContainerReader::from_bytes(compressed.writer.serialize()));
        CHECK(decoded.tensors.size() == model.tensors.size());
    }
}

}  // namespace nwc_test_method_tcq
