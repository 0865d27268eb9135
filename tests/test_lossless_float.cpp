// Lossless float codec: bit-exact round trips of every bf16 / f16 pattern, random and special f32
// values and the real GPT-Neo (bf16) and MT3 (f16) weights; scalar == SIMD (every xsimd
// architecture this build has) and identical bytes for any thread count; every plane mode; and
// hostile metadata and segments (truncated, corrupt, forged with valid CRCs) failing with
// nwc::error naming what and where. Missing real data: the [data] case is left out and the program exits 77 (tests/requirements.hpp).
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <string>

#include "nwc/core/half.hpp"
#include "nwc/core/random.hpp"
#include "nwc/entropy/lossless_float.hpp"
#include "nwc/io/safetensors.hpp"
#include "requirements.hpp"

namespace nwc_test_lossless_float {

using namespace nwc;

namespace {

template <class T>
std::vector<std::uint8_t> bytes_of(const std::vector<T>& values) {
    std::vector<std::uint8_t> bytes(values.size() * sizeof(T));
    if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
}

errc error_id(const std::function<void()>& body, const std::string& expected_text = "") {
    try {
        body();
    } catch (const error& failure) {
        if (!expected_text.empty()) {
            INFO(failure.what());
            CHECK(failure.message().find(expected_text) != std::string::npos);
        }
        return failure.id();
    }
    FAIL("no nwc::error thrown");
    return errc::io;
}

/// Encodes, checks the bytes do not depend on the thread count, decodes on both backends and
/// thread counts (and segment by segment, last first) and requires the original bytes back.
LosslessFloatEncoding check_round_trip(std::span<const std::uint8_t> original, dtype type, LosslessFloatOptions options = {}) {
    options.threads = 1;
    LosslessFloatEncoding coded = lossless_float::encode(original, type, options);
    options.threads = 3;
    const LosslessFloatEncoding threaded = lossless_float::encode(original, type, options);
    REQUIRE(threaded.metadata == coded.metadata);
    REQUIRE(threaded.segments == coded.segments);
    std::uint64_t plane_total = 0;
    for (std::uint64_t bytes : coded.plane_bytes) plane_total += bytes;
    CHECK(coded.payload_bytes() == plane_total + coded.segments.size() * detail::lossless_segment_header_bytes(coded.layout.coded_plane_count()));
    const std::vector<std::uint8_t> expected(original.begin(), original.end());
    for (int threads : {1, 2, 3}) {
        REQUIRE(lossless_float::decode(coded, backend::scalar{}, threads) == expected);
        REQUIRE(lossless_float::decode(coded, backend::simd{}, threads) == expected);
    }
    const LosslessFloatLayout layout = LosslessFloatLayout::parse(coded.metadata, coded.payload_bytes(), "test");
    std::vector<std::uint8_t> out(original.size(), 0xAB);
    for (std::size_t s = layout.segment_count; s-- > 0;) {
        const std::size_t at = std::size_t(layout.first_element(s)) * layout.element_size();
        lossless_float::decode_segment(layout, s, coded.segments[s], std::span<std::uint8_t>(out).subspan(at, layout.segment_output_bytes(s)),
                                       backend::simd{}, "test", s % 2 == 0);
    }
    REQUIRE(out == expected);
    return coded;
}

std::vector<std::uint16_t> every_16_bit_pattern(Random& random) {
    std::vector<std::uint16_t> values(65536);
    for (std::uint32_t i = 0; i < 65536; ++i) values[i] = std::uint16_t(i);
    for (std::size_t i = values.size() - 1; i > 0; --i) std::swap(values[i], values[random.below(i + 1)]);
    return values;
}

/// Weight-like values (normal, std 0.02) with the special patterns of `type` sprinkled in.
std::vector<std::uint8_t> weights_with_specials(dtype type, std::size_t count, Random& random) {
    std::vector<std::uint8_t> bytes(count * dtype_size(type));
    const std::uint32_t specials32[] = {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x7FBFFFFFu, 0x80000000u, 0u, 1u,
                                        0x807FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu};
    const std::uint16_t specials16[] = {0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF, 0x8000, 0x0000, 0x0001, 0x83FF, 0x7F80, 0xFF80, 0x7FC1, 0x807F};
    for (std::size_t i = 0; i < count; ++i) {
        const float value = 0.02f * random.normal();
        if (type == dtype::f32) {
            const std::uint32_t bits = random.below(50) == 0 ? specials32[random.below(std::size(specials32))] : float_bits(value);
            std::memcpy(bytes.data() + 4 * i, &bits, 4);
        } else {
            const std::uint16_t bits = random.below(50) == 0 ? specials16[random.below(std::size(specials16))]
                                       : type == dtype::f16 ? to_half(value).bits
                                                            : to_bfloat16(value).bits;
            std::memcpy(bytes.data() + 2 * i, &bits, 2);
        }
    }
    return bytes;
}

}  // namespace

TEST_CASE("lossless_float: every bf16 and f16 pattern round-trips bit-exactly", "[lossless_float]") {
    Random random(1);
    const std::vector<std::uint8_t> shuffled = bytes_of(every_16_bit_pattern(random));
    std::vector<std::uint16_t> ordered(65536);
    for (std::uint32_t i = 0; i < 65536; ++i) ordered[i] = std::uint16_t(i);
    for (dtype type : {dtype::bf16, dtype::f16}) {
        INFO(dtype_name(type));
        for (std::uint32_t segment : {65536u, 4096u, 1000u, 33u}) {
            INFO("segment " << segment);
            LosslessFloatOptions options;
            options.elements_per_segment = segment;
            check_round_trip(shuffled, type, options);
            check_round_trip(bytes_of(ordered), type, options);
            options.max_precision = 16;  // the SIMD decoder's u16-bin table layout (257 bins)
            check_round_trip(shuffled, type, options);
        }
    }
}

TEST_CASE("lossless_float: weight-like tensors with escapes, specials and tails of every length", "[lossless_float]") {
    Random random(2);
    for (dtype type : {dtype::bf16, dtype::f16, dtype::f32}) {
        INFO(dtype_name(type));
        for (std::size_t count : {std::size_t(0), std::size_t(1), std::size_t(7), std::size_t(31), std::size_t(33), std::size_t(100003)}) {
            INFO(count << " elements");
            const std::vector<std::uint8_t> bytes = weights_with_specials(type, count, random);
            for (int precision : {12, 16}) {
                LosslessFloatOptions options;
                options.max_precision = precision;
                options.elements_per_segment = 1 + std::uint32_t(random.below(40000));
                const LosslessFloatEncoding coded = check_round_trip(bytes, type, options);
                CHECK(coded.layout.modes[0] == FloatPlaneMode::coded);
                if (count > 1000) CHECK(coded.stored_bytes() < bytes.size() * (type == dtype::f32 ? 0.87 : type == dtype::f16 ? 0.9 : 0.72));
            }
        }
    }
}

TEST_CASE("lossless_float: f32 random bit patterns, special values and every plane mode", "[lossless_float]") {
    Random random(3);
    std::vector<std::uint32_t> patterns(70001);
    for (auto& bits : patterns) bits = random.next_u32();
    const std::uint32_t specials[] = {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFC00001u, 0x7FFFFFFFu, 0x80000000u, 0u,
                                      1u,          0x807FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x3F800000u, 0xBF800000u};
    for (std::size_t i = 0; i < std::size(specials); ++i) patterns[i * 997] = specials[i];
    const LosslessFloatEncoding uniform = check_round_trip(bytes_of(patterns), dtype::f32);
    for (std::size_t p = 1; p < 4; ++p) CHECK(uniform.layout.modes[p] == FloatPlaneMode::raw);

    // f32 widened from f16: bits 0..12 are zero (plane 2 constant), plane 3 holds 3 varying bits (coded).
    std::vector<float> widened(50000);
    for (auto& value : widened) value = to_float(to_half(0.05f * random.normal()));
    const LosslessFloatEncoding modes = check_round_trip(bytes_of(widened), dtype::f32);
    CHECK(modes.layout.modes[1] == FloatPlaneMode::raw);
    CHECK(modes.layout.modes[2] == FloatPlaneMode::constant);
    CHECK(modes.layout.modes[3] == FloatPlaneMode::coded);
    CHECK(modes.plane_bytes[2] == 0);

    // f32 widened from bf16: both low planes constant; one value everywhere: plane 0 still coded.
    std::vector<float> from_bf16(40000), ones(40000, 1.0f);
    for (auto& value : from_bf16) value = to_float(to_bfloat16(random.normal()));
    const LosslessFloatEncoding halves = check_round_trip(bytes_of(from_bf16), dtype::f32);
    CHECK((halves.layout.modes[2] == FloatPlaneMode::constant && halves.layout.modes[3] == FloatPlaneMode::constant));
    const LosslessFloatEncoding constant = check_round_trip(bytes_of(ones), dtype::f32);
    CHECK(constant.layout.modes[0] == FloatPlaneMode::coded);
    CHECK(constant.layout.modes[1] == FloatPlaneMode::constant);
    CHECK(constant.stored_bytes() < 1000);
}

TEST_CASE("lossless_float: SIMD merge and narrowing equal the scalar reference on every architecture", "[lossless_float]") {
    Random random(4);
    for (std::size_t count : {std::size_t(0), std::size_t(5), std::size_t(16), std::size_t(63), std::size_t(64), std::size_t(1000)}) {
        std::vector<std::int32_t> exponents(count), narrow_in(count);
        std::vector<std::uint8_t> planes(3 * count);
        for (auto& e : exponents) e = std::int32_t(random.below(256));
        for (auto& v : narrow_in) v = std::int32_t(random.below(256));
        for (auto& b : planes) b = std::uint8_t(random.next_u32());
        detail::FloatPlaneSources in;
        in.plane0 = exponents.data();
        for (std::size_t p = 1; p < 4; ++p) in.bytes[p] = planes.data() + (p - 1) * count;
        for (dtype type : {dtype::bf16, dtype::f16, dtype::f32}) {
            INFO(dtype_name(type) << ", " << count << " elements");
            std::vector<std::uint8_t> reference(count * dtype_size(type)), out(reference.size());
            std::vector<std::uint8_t> narrow_reference(count), narrow_out(count);
            REQUIRE(detail::merge_float_planes(type, in, count, reference.data(), backend::scalar{}));
            REQUIRE(detail::narrow_plane(narrow_in.data(), count, narrow_reference.data(), backend::scalar{}));
            auto check_arch = [&](auto arch) {
                using Arch = decltype(arch);
                std::fill(out.begin(), out.end(), 0);
                REQUIRE(detail::merge_float_planes_on<Arch>(type, in, count, out.data()));
                REQUIRE(out == reference);
                REQUIRE(detail::narrow_plane_on<Arch>(narrow_in.data(), count, narrow_out.data()));
                REQUIRE(narrow_out == narrow_reference);
                // A plane-0 value that is not a byte is reported wherever it sits, by every kernel.
                for (std::int32_t bad : {256, -1, 65536, std::numeric_limits<std::int32_t>::min()}) {
                    if (count == 0) break;
                    const std::size_t at = random.below(count);
                    std::swap(exponents[at], bad);
                    CHECK_FALSE(detail::merge_float_planes_on<Arch>(type, in, count, out.data()));
                    CHECK_FALSE(detail::merge_float_planes(type, in, count, out.data(), backend::scalar{}));
                    std::swap(exponents[at], bad);
                    std::swap(narrow_in[at], bad);
                    CHECK_FALSE(detail::narrow_plane_on<Arch>(narrow_in.data(), count, narrow_out.data()));
                    std::swap(narrow_in[at], bad);
                }
            };
            check_arch(xsimd::default_arch{});
#if XSIMD_WITH_AVX2
            check_arch(xsimd::avx2{});
#endif
#if XSIMD_WITH_SSE4_2
            check_arch(xsimd::sse4_2{});
#endif
        }
    }
}

TEST_CASE("lossless_float: real GPT-Neo (bf16) and MT3 (f16) weights round-trip within their entropy", "[lossless_float][data]") {
    for (const char* name : {"gptneo125m_attn.safetensors", "mt3.safetensors"}) {
        const std::filesystem::path path = nwc::testing::data_path(name);
        INFO(name);
        const SafetensorsFile file = SafetensorsFile::open(path);
        std::uint64_t original = 0, stored = 0;
        for (const auto& info : file.tensors()) {
            INFO(info.name);
            const auto bytes = file.raw_bytes(info.name);
            LosslessFloatOptions options;
            options.threads = 0;
            const LosslessFloatEncoding coded = lossless_float::encode(bytes, info.type, options);
            REQUIRE(lossless_float::decode(coded, backend::simd{}, 2) == std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
            REQUIRE(lossless_float::decode(coded, backend::scalar{}, 2) == std::vector<std::uint8_t>(bytes.begin(), bytes.end()));
            // Plane 0 within 1% of its order-0 entropy, plus ~180 bytes of rANS framing per segment.
            std::vector<double> counts(256, 0.0);
            const std::size_t count = bytes.size() / 2;
            for (std::size_t i = 0; i < count; ++i) counts[(std::uint32_t(bytes[2 * i]) >> 7 | std::uint32_t(bytes[2 * i + 1]) << 1) & 0xFF] += 1;
            double entropy_bits = 0;
            for (double c : counts)
                if (c > 0) entropy_bits -= c * std::log2(c / double(count));
            CHECK(double(coded.plane_bytes[0]) <= 1.01 * entropy_bits / 8 + 180.0 * double(coded.segments.size()));
            CHECK(coded.layout.modes[1] == FloatPlaneMode::raw);
            original += bytes.size();
            stored += coded.stored_bytes();
        }
        // GPT-Neo's goal (DFloat11 stores 0.678 of bf16); MT3's f16 keeps 3 more mantissa bits per plane 0.
        CHECK(double(stored) / double(original) <= (std::string(name).starts_with("gptneo") ? 0.68 : 0.85));
    }
}

TEST_CASE("lossless_float: misuse gives the right error ids", "[lossless_float]") {
    const std::vector<std::uint8_t> three(3, 0);
    CHECK(error_id([&] { lossless_float::encode(three, dtype::bf16); }, "not whole") == errc::invalid_argument);
    CHECK(error_id([&] { lossless_float::encode(three, dtype::u8); }, "dtype U8") == errc::unsupported);
    CHECK(error_id([&] { lossless_float::encode(three, dtype::i32); }) == errc::unsupported);
    LosslessFloatOptions options;
    options.elements_per_segment = 0;
    CHECK(error_id([&] { lossless_float::encode({}, dtype::f32, options); }, "elements per segment") == errc::invalid_argument);
    options = {};
    options.max_precision = 17;
    CHECK(error_id([&] { lossless_float::encode({}, dtype::f32, options); }, "precision") == errc::invalid_argument);

    Random random(5);
    const std::vector<std::uint8_t> bytes = weights_with_specials(dtype::bf16, 1000, random);
    options = {};
    options.elements_per_segment = 300;
    const LosslessFloatEncoding coded = lossless_float::encode(bytes, dtype::bf16, options);
    const LosslessFloatLayout layout = LosslessFloatLayout::parse(coded.metadata, coded.payload_bytes(), "t");
    std::vector<std::uint8_t> out(600);
    CHECK(error_id([&] { lossless_float::decode_segment(layout, 0, coded.segments[0], std::span<std::uint8_t>(out).first(598), backend::simd{}); },
                   "room for 598") == errc::invalid_argument);
    CHECK(error_id([&] { lossless_float::decode_segment(layout, 4, coded.segments[0], out, backend::simd{}); }, "segment 4 of 4") ==
          errc::invalid_argument);
    // The last segment holds 100 elements: segment 0's bytes (300) do not fit it.
    CHECK(error_id([&] { lossless_float::decode_segment(layout, 3, coded.segments[0], std::span<std::uint8_t>(out).first(200), backend::scalar{}); },
                   "segment 3") == errc::corrupt);
}

namespace {

/// The metadata with its body edited and its CRC-32C recomputed: what a forger would write.
std::vector<std::uint8_t> forge_metadata(const std::vector<std::uint8_t>& metadata, const std::function<void(std::vector<std::uint8_t>&)>& edit) {
    std::vector<std::uint8_t> body(metadata.begin(), metadata.end() - 4);
    edit(body);
    ByteWriter out;
    out.put_bytes(body);
    out.put_u32(crc32c(body));
    return out.take();
}

template <class T>
void poke(std::vector<std::uint8_t>& bytes, std::size_t at, T value) {
    std::memcpy(bytes.data() + at, &value, sizeof value);
}

/// A segment rebuilt from its parts with plane `plane`'s bytes replaced, sizes and CRC-32C consistent.
std::vector<std::uint8_t> forge_segment(const LosslessFloatLayout& layout, std::span<const std::uint8_t> segment, std::size_t plane,
                                        std::span<const std::uint8_t> replacement) {
    std::vector<std::vector<std::uint8_t>> parts;
    std::size_t at = detail::lossless_segment_header_bytes(layout.coded_plane_count()), field = 4;
    for (std::size_t p = 0; p < layout.plane_count(); ++p) {
        std::size_t size = 0;
        if (layout.modes[p] == FloatPlaneMode::coded) {
            std::uint32_t stream_size;
            std::memcpy(&stream_size, segment.data() + field, 4);
            size = stream_size, field += 4;
        } else if (layout.modes[p] == FloatPlaneMode::raw) {
            size = layout.segment_elements(0);
        }
        parts.emplace_back(segment.begin() + std::ptrdiff_t(at), segment.begin() + std::ptrdiff_t(at + size));
        at += size;
    }
    parts[plane].assign(replacement.begin(), replacement.end());
    ByteWriter out;
    out.put_u32(0);
    for (std::size_t p = 0; p < layout.plane_count(); ++p)
        if (layout.modes[p] == FloatPlaneMode::coded) out.put_u32(std::uint32_t(parts[p].size()));
    for (const auto& part : parts) out.put_bytes(part);
    std::vector<std::uint8_t> bytes = out.take();
    poke(bytes, 0, crc32c(std::span<const std::uint8_t>(bytes).subspan(4)));
    return bytes;
}

/// Decodes segment 0 on both backends: both must throw the same error id, or both give the same bytes.
std::optional<errc> decode_both(const LosslessFloatLayout& layout, std::span<const std::uint8_t> segment, bool verify) {
    std::vector<std::uint8_t> scalar_out(layout.segment_output_bytes(0)), simd_out(scalar_out.size());
    std::optional<errc> scalar_error, simd_error;
    try {
        lossless_float::decode_segment(layout, 0, segment, scalar_out, backend::scalar{}, "t", verify);
    } catch (const error& failure) {
        scalar_error = failure.id();
    }
    try {
        lossless_float::decode_segment(layout, 0, segment, simd_out, backend::simd{}, "t", verify);
    } catch (const error& failure) {
        simd_error = failure.id();
    }
    REQUIRE(scalar_error == simd_error);
    if (!scalar_error) REQUIRE(scalar_out == simd_out);
    return scalar_error;
}

}  // namespace

TEST_CASE("lossless_float: hostile metadata fails with the right error before any allocation", "[lossless_float]") {
    Random random(6);
    const std::vector<std::uint8_t> bytes = weights_with_specials(dtype::bf16, 5000, random);
    LosslessFloatOptions options;
    options.elements_per_segment = 2000;
    const LosslessFloatEncoding coded = lossless_float::encode(bytes, dtype::bf16, options);
    const std::uint64_t payload = coded.payload_bytes();
    auto parse_error = [&](const std::vector<std::uint8_t>& metadata, const std::string& text) {
        return error_id([&] { LosslessFloatLayout::parse(metadata, payload, "tensor 'w'"); }, text);
    };
    for (std::size_t size = 0; size < coded.metadata.size(); ++size) {
        const std::vector<std::uint8_t> cut(coded.metadata.begin(), coded.metadata.begin() + std::ptrdiff_t(size));
        const errc id = parse_error(cut, "tensor 'w' metadata");
        CHECK((id == errc::truncated || id == errc::corrupt));
    }
    for (int trial = 0; trial < 200; ++trial) {
        std::vector<std::uint8_t> flipped = coded.metadata;
        flipped[random.below(flipped.size())] ^= std::uint8_t(1 + random.below(255));
        CHECK(parse_error(flipped, "CRC-32C") == errc::corrupt);
    }
    using Edit = std::function<void(std::vector<std::uint8_t>&)>;
    const struct {
        Edit edit;
        errc id;
        const char* text;
    } forgeries[] = {
        {[](auto& m) { m[0] ^= 1; }, errc::corrupt, "magic"},
        {[](auto& m) { poke<std::uint16_t>(m, 4, 2); }, errc::unsupported, "version 2"},
        {[](auto& m) { m[6] = 3; }, errc::unsupported, "dtype code 3"},
        {[](auto& m) { m[6] = 200; }, errc::unsupported, "dtype code 200"},
        {[](auto& m) { m[7] = 1; }, errc::corrupt, "reserved byte 7"},
        {[](auto& m) { poke<std::uint32_t>(m, 16, 0); }, errc::corrupt, "elements per segment"},
        {[](auto& m) { poke<std::uint32_t>(m, 16, (1u << 20) + 1); }, errc::corrupt, "elements per segment"},
        {[](auto& m) { poke<std::uint32_t>(m, 20, 4); }, errc::corrupt, "4 segments announced"},
        {[](auto& m) { poke<std::uint64_t>(m, 8, std::uint64_t(1) << 40); }, errc::corrupt, "segments announced"},
        // 2^30 elements in 1024 segments of 2^20, but only a few KB of payload: refused before allocating.
        {[](auto& m) { poke<std::uint64_t>(m, 8, std::uint64_t(1) << 30), poke<std::uint32_t>(m, 16, 1u << 20), poke<std::uint32_t>(m, 20, 1024); },
         errc::limit, "payload bytes"},
        {[](auto& m) { m[24] = 3; }, errc::corrupt, "plane 0 has mode 3"},
        {[](auto& m) { m[24] = 0; }, errc::corrupt, "plane 0 is not coded"},
        {[](auto& m) { m[27] = 9; }, errc::corrupt, "plane 1 is not constant"},
        {[](auto& m) { m.push_back(0); }, errc::corrupt, "trailing"},
        {[](auto& m) { m[28] ^= 1; }, errc::corrupt, "CDF table set"},
    };
    for (const auto& forgery : forgeries) {
        INFO(forgery.text);
        CHECK(parse_error(forge_metadata(coded.metadata, forgery.edit), forgery.text) == forgery.id);
    }
    // Plane 1 announced as coded: its table is missing, the reader runs out of bytes.
    const errc missing = parse_error(forge_metadata(coded.metadata, [](auto& m) { m[26] = 1; }), "");
    CHECK((missing == errc::truncated || missing == errc::corrupt));
    // Tables that are well-formed but cannot code bytes.
    for (const CdfTableSet& tables : {CdfTableSet({CdfTable::uniform(250, 10, 12)}), CdfTableSet({CdfTable::uniform(-1, 3, 12)}),
                                      CdfTableSet({CdfTable::uniform(0, 4, 12), CdfTable::uniform(0, 4, 12)})}) {
        LosslessFloatLayout layout = coded.layout;
        layout.tables[0] = tables;
        ByteWriter metadata;
        layout.write(metadata);
        CHECK(parse_error(metadata.bytes(), "table of plane 0") == errc::corrupt);
    }
}

TEST_CASE("lossless_float: truncated, corrupt and forged segments fail safely and alike on both backends", "[lossless_float]") {
    Random random(7);
    const std::vector<std::uint8_t> bytes = weights_with_specials(dtype::bf16, 3000, random);
    const LosslessFloatEncoding coded = lossless_float::encode(bytes, dtype::bf16);
    const LosslessFloatLayout& layout = coded.layout;
    const std::vector<std::uint8_t>& segment = coded.segments[0];
    REQUIRE(!decode_both(layout, segment, true));

    for (bool verify : {true, false})
        for (std::size_t size = 0; size < segment.size(); ++size) {
            const auto id = decode_both(layout, std::span<const std::uint8_t>(segment).first(size), verify);
            REQUIRE(id);
            CHECK((*id == errc::truncated || *id == errc::corrupt));
        }
    int rejected = 0, decoded = 0;
    for (int trial = 0; trial < 1000; ++trial) {
        std::vector<std::uint8_t> corrupt = segment;
        for (int flips = 1 + int(random.below(3)); flips > 0; --flips) corrupt[random.below(corrupt.size())] ^= std::uint8_t(1 + random.below(255));
        CHECK(decode_both(layout, corrupt, true) == errc::corrupt);
        // Without the CRC, the structural checks must still stop everything else from crashing.
        const auto id = decode_both(layout, corrupt, false);
        (id ? rejected : decoded) += 1;
    }
    WARN("without CRC: " << rejected << " corrupt segments rejected, " << decoded << " decoded to other bytes (raw plane hits)");

    // Forged with valid CRCs. Plane 0's rANS stream: cut, too few symbols, and a plane-0 value
    // outside 0..255 (only an escape code can carry it).
    std::uint32_t stream_size;
    std::memcpy(&stream_size, segment.data() + 4, 4);
    const std::span<const std::uint8_t> stream = std::span<const std::uint8_t>(segment).subspan(8, stream_size);
    std::vector<std::int32_t> exponents(3000);
    rans::decode(stream, layout.tables[0], std::span<std::int32_t>(exponents), backend::scalar{});
    const CdfTableSet other({CdfTable::uniform(0, 256, 12)});
    std::vector<std::int32_t> short_symbols(exponents.begin(), exponents.end() - 1), bad_value = exponents;
    bad_value[1234] = 300;
    RangeCoderOptions one_segment;
    one_segment.segment_size = 3000;
    const struct {
        std::vector<std::uint8_t> stream;
        errc id;
        const char* text;
    } streams[] = {
        {std::vector<std::uint8_t>(stream.begin(), stream.end() - 4), errc::truncated, "plane 0 (bytes 8.."},
        {rans::encode(short_symbols, layout.tables[0], one_segment), errc::corrupt, "2999 symbols"},
        {rans::encode(bad_value, layout.tables[0], one_segment), errc::corrupt, "plane 0 decodes a value outside 0..255"},
    };
    for (const auto& forged : streams) {
        INFO(forged.text);
        const std::vector<std::uint8_t> bad = forge_segment(layout, segment, 0, forged.stream);
        REQUIRE(decode_both(layout, bad, true) == forged.id);
        std::vector<std::uint8_t> out(layout.segment_output_bytes(0));
        error_id([&] { lossless_float::decode_segment(layout, 0, bad, out, backend::simd{}, "tensor 'w'"); }, forged.text);
        error_id([&] { lossless_float::decode_segment(layout, 0, bad, out, backend::simd{}, "tensor 'w'"); }, "tensor 'w': segment 0");
    }
    // A stream coded with other tables. CdfTableSet::checksum() is at present the same for every
    // table set (a CRC-32C over bytes that end in their own CRC-32C), so the stream's table check
    // cannot fire: this only requires that both backends agree and nothing crashes.
    const auto foreign = decode_both(layout, forge_segment(layout, segment, 0, rans::encode(exponents, other, one_segment)), true);
    CHECK((!foreign || *foreign == errc::corrupt || *foreign == errc::truncated));

    // Sizes that do not add up: a raw plane one byte short, one trailing byte.
    const std::vector<std::uint8_t> raw_plane(segment.end() - 3000, segment.end());
    CHECK(decode_both(layout, forge_segment(layout, segment, 1, std::span(raw_plane).first(2999)), true) == errc::truncated);
    std::vector<std::uint8_t> longer = segment;
    longer.push_back(0);
    poke(longer, 0, crc32c(std::span<const std::uint8_t>(longer).subspan(4)));
    CHECK(error_id([&] {
              std::vector<std::uint8_t> out(layout.segment_output_bytes(0));
              lossless_float::decode_segment(layout, 0, longer, out, backend::simd{});
          }, "1 trailing bytes") == errc::corrupt);

    // A coded plane other than 0 (f32 widened from f16: plane 3) carrying a value that is not a byte.
    std::vector<float> widened(2000);
    for (auto& value : widened) value = to_float(to_half(0.05f * random.normal()));
    const LosslessFloatEncoding f32 = lossless_float::encode(bytes_of(widened), dtype::f32);
    REQUIRE(f32.layout.modes[3] == FloatPlaneMode::coded);
    std::vector<std::int32_t> plane3(2000);
    for (std::size_t i = 0; i < plane3.size(); ++i) plane3[i] = std::int32_t((float_bits(widened[i]) >> 8) & 0xFF);
    plane3[17] = -5;
    one_segment.segment_size = 2000;
    const std::vector<std::uint8_t> bad_plane3 = forge_segment(f32.layout, f32.segments[0], 3, rans::encode(plane3, f32.layout.tables[3], one_segment));
    REQUIRE(decode_both(f32.layout, bad_plane3, true) == errc::corrupt);
    std::vector<std::uint8_t> out(f32.layout.segment_output_bytes(0));
    error_id([&] { lossless_float::decode_segment(f32.layout, 0, bad_plane3, out, backend::simd{}); }, "plane 3 decodes a value outside 0..255");
}

}  // namespace nwc_test_lossless_float
