// rANS range coder: exact round trips of any int32 on every backend and thread count, identical
// scalar/SIMD output, size within 0.5% of the ideal code length, and safe failure on every
// truncation and on random corruption.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>

#include "nwc/core/random.hpp"
#include "nwc/entropy/range_coder.hpp"

using namespace nwc;

namespace {

constexpr std::int32_t int32_min = std::numeric_limits<std::int32_t>::min();
constexpr std::int32_t int32_max = std::numeric_limits<std::int32_t>::max();

/// Random tables of many shapes: one symbol, very skewed, Laplace/Gaussian, flat, wide (> 256 bins).
CdfTable random_table(Random& random, int precision) {
    const int shape = int(random.below(6));
    std::size_t support = 1 + random.below(80);
    if (shape == 0) support = 1;
    if (shape == 5) support = 257 + random.below(3000);
    support = std::min<std::size_t>(support, (std::size_t(1) << precision) - 1);
    std::vector<double> probabilities(support);
    const double scale = 0.2 + 10.0 * random.uniform();
    const std::size_t peak = random.below(support);
    for (std::size_t i = 0; i < support; ++i) {
        const double distance = std::abs(double(i) - double(peak));
        probabilities[i] = shape == 1 ? (i == peak ? 1.0 : 1e-12)           // very skewed
                           : shape == 2 ? std::exp(-0.5 * distance * distance / (scale * scale))
                           : shape == 3 ? 1.0
                                        : std::exp(-distance / scale);
    }
    const double escape = random.below(2) ? 0.0 : 0.05 * random.uniform();
    // Offsets anywhere, the support ends at the int32 limits included.
    std::int64_t offset = std::int64_t(random.next_u32()) + int32_min;
    if (random.below(8) == 0) offset = int32_min;
    if (random.below(8) == 0) offset = std::int64_t(int32_max) - std::int64_t(support) + 1;
    offset = std::min<std::int64_t>(offset, std::int64_t(int32_max) - std::int64_t(support) + 1);
    return CdfTable::from_probabilities(std::int32_t(offset), probabilities, escape, precision);
}

CdfTableSet random_tables(Random& random, std::size_t channels) {
    const int precision = 12 + int(random.below(5));
    std::vector<CdfTable> tables;
    for (std::size_t c = 0; c < channels; ++c) tables.push_back(random_table(random, precision));
    return CdfTableSet(std::move(tables));
}

/// A value drawn from the table (through its slots), or, with probability `outside`, a value
/// outside the support: the int32 limits, the values next to the support, or anything.
std::int32_t draw(const CdfTable& table, Random& random, double outside) {
    if (random.uniform() < outside) {
        switch (random.below(5)) {
            case 0: return int32_min;
            case 1: return int32_max;
            case 2: return std::int32_t(std::max<std::int64_t>(int32_min, std::int64_t(table.offset()) - 1));
            case 3: return std::int32_t(std::min<std::int64_t>(int32_max, std::int64_t(table.offset()) + table.support()));
            default: return std::int32_t(random.next_u32());
        }
    }
    const std::uint32_t bin = table.bin_at_slot(std::uint32_t(random.below(std::uint64_t(1) << table.precision())));
    if (bin == table.escape_bin()) return std::int32_t(random.next_u32());
    return std::int32_t(std::int64_t(table.offset()) + bin);
}

std::vector<std::int32_t> draw_symbols(const CdfTableSet& tables, Random& random, std::size_t count, double outside) {
    std::vector<std::int32_t> symbols(count);
    for (std::size_t i = 0; i < count; ++i) symbols[i] = draw(tables[i % tables.channel_count()], random, outside);
    return symbols;
}

/// Decodes with every decoder this build has: scalar and simd for several thread counts, and the
/// SIMD kernel on narrower xsimd architectures (AVX2, SSE4.2) segment by segment and in pairs.
std::vector<std::pair<std::string, std::vector<std::int32_t>>> decode_every_way(std::span<const std::uint8_t> stream, const CdfTableSet& tables) {
    std::vector<std::pair<std::string, std::vector<std::int32_t>>> results;
    for (int threads : {1, 2, 3}) {
        results.emplace_back("scalar threads " + std::to_string(threads), rans::decode(stream, tables, backend::scalar{}, threads));
        results.emplace_back("simd threads " + std::to_string(threads), rans::decode(stream, tables, backend::simd{}, threads));
    }
    const RansStreamIndex index = rans::read_index(stream, tables);
    const auto& decode_tables = tables.decode_tables();
    auto add_arch = [&](auto arch, const std::string& name) {
        std::vector<std::int32_t> out(index.symbol_count);
        for (std::size_t s = 0; s < index.segments.size(); ++s)
            detail::rans_decode_segment_on<decltype(arch)>(decode_tables, detail::segment_bytes(stream, index, s),
                                                           std::span<std::int32_t>(out).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count));
        results.emplace_back(name, std::move(out));
    };
#if XSIMD_WITH_AVX2
    add_arch(xsimd::avx2{}, "xsimd avx2");
#endif
#if XSIMD_WITH_SSE4_2
    add_arch(xsimd::sse4_2{}, "xsimd sse4.2");
#endif
    (void)add_arch;
    std::vector<std::int32_t> single(index.symbol_count);
    for (std::size_t s = 0; s < index.segments.size(); ++s) {
        auto out = std::span<std::int32_t>(single).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count);
        rans::decode_segment(stream, index, tables, s, out, backend::simd{});
    }
    results.emplace_back("simd decode_segment", std::move(single));
    return results;
}

errc error_id(const std::function<void()>& body) {
    try {
        body();
    } catch (const nwc::error& failure) {
        return failure.id();
    }
    FAIL("expected an nwc::error");
    return errc::io;
}

}  // namespace

TEST_CASE("range_coder: random tables and streams round-trip on every backend and thread count", "[range_coder]") {
    Random random(21);
    const std::size_t channel_choices[] = {1, 2, 3, 5, 16, 32, 48, 100};
    int layouts_seen[3] = {0, 0, 0};  // every SIMD table layout must be exercised
    for (int trial = 0; trial < 120; ++trial) {
        const std::size_t channels = channel_choices[random.below(std::size(channel_choices))];
        const CdfTableSet tables = random_tables(random, channels);
        ++layouts_seen[int(tables.decode_tables().layout)];
        const std::size_t count = random.below(4) == 0 ? random.below(70) : random.below(20000);
        const double outside = random.below(3) == 0 ? 0.0 : random.below(2) ? 0.001 : 0.3;
        const std::vector<std::int32_t> symbols = draw_symbols(tables, random, count, outside);
        RangeCoderOptions options;
        options.segment_size = std::uint32_t(channels * (1 + random.below(random.below(2) ? 40 : 3000)));
        options.threads = 1 + int(random.below(3));
        const std::vector<std::uint8_t> stream = rans::encode(symbols, tables, options);
        INFO("trial " << trial << ": " << channels << " channels, precision " << tables.precision() << ", " << count << " symbols, segment size "
                      << options.segment_size);
        for (const auto& [name, decoded] : decode_every_way(stream, tables)) {
            INFO(name);
            REQUIRE(decoded == symbols);
        }
        // Encoding does not depend on the thread count.
        options.threads = 4;
        REQUIRE(rans::encode(symbols, tables, options) == stream);
    }
    CHECK(layouts_seen[int(detail::RansSlotLayout::packed)] > 5);
    CHECK(layouts_seen[int(detail::RansSlotLayout::byte_bins)] > 5);
    CHECK(layouts_seen[int(detail::RansSlotLayout::word_bins)] > 5);
}

TEST_CASE("range_coder: extreme values and edge-case streams", "[range_coder]") {
    Random random(22);
    const CdfTableSet tables({CdfTable::uniform(-3, 7, 16), CdfTable::from_probabilities(0, std::vector<double>{1.0}, 0.0, 16),
                              CdfTable::uniform(int32_max, 1, 16), CdfTable::uniform(int32_min, 2, 16)});
    SECTION("empty stream") {
        const auto stream = rans::encode({}, tables);
        CHECK(stream.size() == rans::header_bytes);
        for (const auto& [name, decoded] : decode_every_way(stream, tables)) CHECK(decoded.empty());
    }
    SECTION("every symbol escaped, the int32 limits included") {
        std::vector<std::int32_t> symbols;
        for (int i = 0; i < 5000; ++i) symbols.push_back(i % 3 == 0 ? int32_min : i % 3 == 1 ? int32_max : std::int32_t(random.next_u32()));
        for (std::int32_t& value : symbols)
            if (tables[std::size_t(&value - symbols.data()) % 4].in_support(value)) value = 12345;  // keep all outside
        const auto stream = rans::encode(symbols, tables);
        for (const auto& [name, decoded] : decode_every_way(stream, tables)) {
            INFO(name);
            REQUIRE(decoded == symbols);
        }
    }
    SECTION("the most probable symbol only: near-zero bits per symbol, long segments") {
        std::vector<std::int32_t> symbols(200000);
        for (std::size_t i = 0; i < symbols.size(); ++i) symbols[i] = tables[i % 4].offset();
        RangeCoderOptions options;
        options.segment_size = 100000;
        const auto stream = rans::encode(symbols, tables, options);
        for (const auto& [name, decoded] : decode_every_way(stream, tables)) {
            INFO(name);
            REQUIRE(decoded == symbols);
        }
    }
}

TEST_CASE("range_coder: the segment index locates every segment", "[range_coder]") {
    Random random(23);
    const CdfTableSet tables = random_tables(random, 4);
    const auto symbols = draw_symbols(tables, random, 10001, 0.01);
    RangeCoderOptions options;
    options.segment_size = 1000;
    const auto stream = rans::encode(symbols, tables, options);
    const RansStreamIndex index = rans::read_index(stream, tables);
    REQUIRE(index.symbol_count == symbols.size());
    REQUIRE(index.segments.size() == 11);
    CHECK(index.segments.back().symbol_count == 1);
    std::uint64_t offset = rans::header_bytes + 11 * rans::index_entry_bytes;
    for (std::size_t s = 0; s < index.segments.size(); ++s) {
        const RansSegment& segment = index.segments[s];
        CHECK(segment.first_symbol == s * 1000);
        CHECK(segment.byte_offset == offset);
        CHECK(segment.byte_offset % 4 == 0);
        offset += segment.byte_size;
        std::vector<std::int32_t> alone(segment.symbol_count);
        rans::decode_segment(stream, index, tables, s, std::span<std::int32_t>(alone), backend::scalar{});
        CHECK(std::equal(alone.begin(), alone.end(), symbols.begin() + std::ptrdiff_t(segment.first_symbol)));
    }
    CHECK(offset == stream.size());
    // The documented header layout (docs/format/rans.md).
    CHECK(std::string(stream.begin(), stream.begin() + 4) == "NWRC");
    CHECK(stream[4] == 1);
    CHECK(stream[6] == 32);
    CHECK(stream[7] == tables.precision());
    CHECK(stream[8] == 4);
    CHECK(detail::rans_stream_checksum(stream) == (std::uint32_t(stream[32]) | std::uint32_t(stream[33]) << 8 | std::uint32_t(stream[34]) << 16 |
                                                   std::uint32_t(stream[35]) << 24));
}

TEST_CASE("range_coder: size within 0.5% of the ideal code length on 1M symbols", "[range_coder]") {
    // 16 channels of discretized Laplace and Gaussian latents at about 4 bits per symbol.
    std::vector<CdfTable> channel_tables;
    for (int c = 0; c < 16; ++c) {
        std::vector<double> probabilities(121);
        const double scale = 2.0 + 0.2 * c;
        for (int i = 0; i < 121; ++i) {
            const double x = i - 60;
            probabilities[std::size_t(i)] = c % 2 ? std::exp(-0.5 * x * x / (scale * scale)) : std::exp(-std::abs(x) / scale);
        }
        channel_tables.push_back(CdfTable::from_probabilities(-60, probabilities, 1e-6, 16));
    }
    const CdfTableSet tables(channel_tables);
    Random random(24);
    const auto symbols = draw_symbols(tables, random, 1 << 20, 0.0);
    const double ideal_bytes = tables.ideal_bits(symbols) / 8;
    for (std::uint32_t segment_size : {65536u, 1u << 20}) {
        RangeCoderOptions options;
        options.segment_size = segment_size;
        const auto stream = rans::encode(symbols, tables, options);
        const double overhead = double(stream.size()) / ideal_bytes - 1;
        std::printf("range_coder size: %zu symbols, %.4f bits/symbol, segment size %u: %zu bytes, ideal %.0f, overhead %.3f%%\n", symbols.size(),
                    ideal_bytes * 8 / double(symbols.size()), segment_size, stream.size(), ideal_bytes, 100 * overhead);
        CHECK(overhead >= 0.0);
        CHECK(overhead < 0.005);
        REQUIRE(rans::decode(stream, tables, backend::simd{}) == symbols);
    }
}

TEST_CASE("range_coder: every truncation and random corruption fails safely", "[range_coder]") {
    Random random(25);
    const CdfTableSet tables({CdfTable::uniform(-2, 5, 12), CdfTable::from_probabilities(0, std::vector<double>{0.7, 0.2, 0.1}, 0.02, 12),
                              CdfTable::uniform(-100, 300, 12)});
    const auto symbols = draw_symbols(tables, random, 600, 0.05);
    RangeCoderOptions options;
    options.segment_size = 150;
    const auto stream = rans::encode(symbols, tables, options);

    for (std::size_t length = 0; length < stream.size(); ++length) {
        const std::vector<std::uint8_t> cut(stream.begin(), stream.begin() + std::ptrdiff_t(length));
        CHECK_THROWS_AS(rans::decode(cut, tables, backend::scalar{}), nwc::error);
        CHECK_THROWS_AS(rans::decode(cut, tables, backend::simd{}), nwc::error);
        if (length >= rans::header_bytes) {  // past the checksum: the structure alone must reject it
            CHECK_THROWS_AS(rans::read_index(cut, tables, false), nwc::error);
        }
    }

    // Random byte flips: the checksum catches them; with the checksum patched to match, the
    // decoders must still either throw or return a decode of the right length, and agree.
    int rejected = 0, decoded_differently = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        std::vector<std::uint8_t> flipped = stream;
        const int flips = 1 + int(random.below(3));
        for (int f = 0; f < flips; ++f) {
            const std::size_t at = random.below(4) == 0 ? random.below(flipped.size()) : rans::header_bytes + random.below(flipped.size() - rans::header_bytes);
            flipped[at] ^= std::uint8_t(1 + random.below(255));
        }
        if (flipped == stream) continue;
        CHECK_THROWS_AS(rans::decode(flipped, tables, backend::simd{}), nwc::error);
        const std::uint32_t crc = detail::rans_stream_checksum(flipped);
        std::memcpy(flipped.data() + rans::checksum_offset, &crc, 4);
        std::optional<std::vector<std::int32_t>> scalar, simd;
        try {
            scalar = rans::decode(flipped, tables, backend::scalar{});
        } catch (const nwc::error&) {
        }
        try {
            simd = rans::decode(flipped, tables, backend::simd{}, 2);
        } catch (const nwc::error&) {
        }
        REQUIRE(scalar.has_value() == simd.has_value());
        if (scalar) {
            REQUIRE(*scalar == *simd);
            REQUIRE(scalar->size() == symbols.size());
            decoded_differently += *scalar != symbols;
        } else {
            ++rejected;
        }
    }
    std::printf("range_coder corruption: %d of 3000 patched-checksum corruptions rejected by structure, %d decoded to other values\n", rejected,
                decoded_differently);
    CHECK(rejected > 1500);
}

TEST_CASE("range_coder: misuse and foreign streams give the right error ids", "[range_coder]") {
    Random random(26);
    const CdfTableSet tables = random_tables(random, 4);
    const CdfTableSet other = random_tables(random, 4);
    const auto symbols = draw_symbols(tables, random, 1000, 0.01);
    const auto stream = rans::encode(symbols, tables);
    std::vector<std::int32_t> out(999);
    CHECK(error_id([&] { rans::decode(stream, tables, std::span<std::int32_t>(out), backend::simd{}); }) == errc::invalid_argument);
    CHECK(error_id([&] { rans::decode(stream, other, backend::simd{}); }) == errc::invalid_argument);
    RangeCoderOptions options;
    options.segment_size = 6;  // not a multiple of 4 channels
    CHECK(error_id([&] { rans::encode(symbols, tables, options); }) == errc::invalid_argument);
    options.segment_size = 0;
    CHECK(error_id([&] { rans::encode(symbols, tables, options); }) == errc::invalid_argument);
    CHECK(error_id([&] { rans::encode(symbols, CdfTableSet{}); }) == errc::invalid_argument);

    auto patched = [&](std::size_t at, std::uint8_t value) {
        std::vector<std::uint8_t> bytes = stream;
        bytes[at] = value;
        const std::uint32_t crc = detail::rans_stream_checksum(bytes);
        std::memcpy(bytes.data() + rans::checksum_offset, &crc, 4);
        return bytes;
    };
    CHECK(error_id([&] { rans::decode(patched(0, 'X'), tables, backend::scalar{}); }) == errc::corrupt);
    CHECK(error_id([&] { rans::decode(patched(4, 2), tables, backend::scalar{}); }) == errc::unsupported);
    CHECK(error_id([&] { rans::decode(patched(6, 16), tables, backend::scalar{}); }) == errc::unsupported);
    CHECK(error_id([&] { rans::decode(patched(16, 0xFF), tables, backend::scalar{}); }) == errc::corrupt);  // symbol count
    // A symbol count of 2^64 - 1 with segment size 4 and no segments must not wrap into "valid".
    {
        std::vector<std::uint8_t> empty = rans::encode({}, tables);
        const std::uint64_t huge = ~std::uint64_t(0);
        const std::uint32_t segment_size = 4;  // a multiple of the 4 channels
        std::memcpy(empty.data() + 16, &huge, 8);
        std::memcpy(empty.data() + 24, &segment_size, 4);
        const std::uint32_t crc = detail::rans_stream_checksum(empty);
        std::memcpy(empty.data() + rans::checksum_offset, &crc, 4);
        CHECK(error_id([&] { rans::decode(empty, tables, backend::simd{}); }) == errc::corrupt);
    }
    std::vector<std::uint8_t> longer = stream;
    longer.push_back(0);
    CHECK(error_id([&] { rans::decode(longer, tables, backend::scalar{}); }) == errc::corrupt);
}
