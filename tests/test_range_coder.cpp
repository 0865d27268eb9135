// rANS range coder (stream version 2): exact round trips of any int32 on every backend, lane
// count and thread count, identical scalar/SIMD output, the documented byte layout, size within
// 0.5% of the ideal code length at 8192-symbol segments, and safe failure on every truncation,
// on random corruption and on hostile headers.
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

namespace nwc_test_range_coder {

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
        CHECK(stream == std::vector<std::uint8_t>{rans::version, 4, 0});  // version, precision 16 - 12, no symbols
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
    REQUIRE(index.segment_size == 1000);
    REQUIRE(index.segments.size() == 11);
    CHECK(index.segments.back().symbol_count == 1);
    // The documented header layout (docs/format/rans.md): version, flags, varint 10001, varint 1000.
    CHECK(stream[0] == 2);
    CHECK(stream[1] == tables.precision() - 12);
    CHECK(stream[2] == (10001 & 0x7F) + 0x80);
    CHECK(stream[3] == 10001 >> 7);
    CHECK(stream[4] == (1000 & 0x7F) + 0x80);
    CHECK(stream[5] == 1000 >> 7);
    std::uint64_t offset = 6;
    for (std::size_t s = 0; s < index.segments.size(); ++s) {
        const RansSegment& segment = index.segments[s];
        CHECK(segment.first_symbol == s * 1000);
        CHECK(segment.lane_count == 1);
        CHECK(segment.byte_offset == offset);
        CHECK(segment.lanes_offset == offset + detail::varint_size(segment.word_count) + detail::varint_size(segment.escape_bytes));
        CHECK(segment.words_offset == segment.lanes_offset + segment.lane_bytes);
        CHECK(segment.byte_offset + segment.byte_size == segment.words_offset + 2 * segment.word_count + segment.escape_bytes);
        offset += segment.byte_size;
        std::vector<std::int32_t> alone(segment.symbol_count);
        rans::decode_segment(stream, index, tables, s, std::span<std::int32_t>(alone), backend::scalar{});
        CHECK(std::equal(alone.begin(), alone.end(), symbols.begin() + std::ptrdiff_t(segment.first_symbol)));
    }
    CHECK(offset == stream.size());
    // One segment is stored as segment size 0; options add the fingerprint and the CRC.
    options.segment_size = 12000;
    options.checksum = options.table_fingerprint = true;
    const auto single = rans::encode(symbols, tables, options);
    CHECK(single[1] == ((tables.precision() - 12) | rans::flag_table_fingerprint | rans::flag_checksum));
    CHECK(single[4] == 0);
    std::uint32_t fingerprint, crc;
    std::memcpy(&fingerprint, single.data() + 5, 4);
    std::memcpy(&crc, single.data() + single.size() - 4, 4);
    CHECK(fingerprint == tables.checksum());
    CHECK(crc == crc32c(std::span<const std::uint8_t>(single).first(single.size() - 4)));
    const RansStreamIndex single_index = rans::read_index(single, tables);
    CHECK(single_index.segments.size() == 1);
    CHECK(single_index.segments[0].lane_count == 4);  // 10001 symbols: 4 lanes of >= 2048
    CHECK(single_index.has_checksum);
    CHECK(single_index.has_table_fingerprint);
    CHECK(rans::decode(single, tables, backend::simd{}) == symbols);
}

TEST_CASE("range_coder: every lane count and segment size boundary round-trips, scalar == SIMD", "[range_coder]") {
    CHECK(rans::lane_count_for(1) == 1);
    CHECK(rans::lane_count_for(4095) == 1);
    CHECK(rans::lane_count_for(4096) == 2);
    CHECK(rans::lane_count_for(8191) == 2);
    CHECK(rans::lane_count_for(8192) == 4);
    CHECK(rans::lane_count_for(16384) == 8);
    CHECK(rans::lane_count_for(32768) == 16);
    CHECK(rans::lane_count_for(65535) == 16);
    CHECK(rans::lane_count_for(65536) == 32);
    CHECK(rans::lane_count_for(rans::max_segment_size) == 32);
    Random random(27);
    int lanes_seen[6] = {};
    for (std::size_t channels : {1, 3, 16}) {
        const CdfTableSet tables = random_tables(random, channels);
        for (std::uint32_t lanes = 1; lanes <= 32; lanes *= 2) {
            const std::size_t boundary = lanes == 1 ? 0 : std::size_t(lanes) * rans::symbols_per_lane;
            for (std::size_t count : {boundary - 1, boundary, boundary + 1, boundary + lanes - 1, boundary + 7 * lanes + 3}) {
                if (count > boundary + 100000 || count == 0) continue;
                const std::vector<std::int32_t> symbols = draw_symbols(tables, random, count, random.below(2) ? 0.0 : 0.01);
                RangeCoderOptions options;
                options.segment_size = std::uint32_t((count + channels - 1) / channels * channels);
                const auto stream = rans::encode(symbols, tables, options);
                const RansStreamIndex index = rans::read_index(stream, tables);
                REQUIRE(index.segments.size() == 1);
                ++lanes_seen[std::countr_zero(index.segments[0].lane_count)];
                INFO(channels << " channels, precision " << tables.precision() << ", " << count << " symbols, " << index.segments[0].lane_count
                              << " lanes");
                for (const auto& [name, decoded] : decode_every_way(stream, tables)) {
                    INFO(name);
                    REQUIRE(decoded == symbols);
                }
            }
        }
    }
    for (int count : lanes_seen) CHECK(count > 0);
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
    for (std::uint32_t segment_size : {8192u, 65536u, 1u << 20}) {
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
    const auto symbols = draw_symbols(tables, random, 9000, 0.05);
    RangeCoderOptions options;
    options.segment_size = 4800;  // a segment of 2 lanes, then one of 1 lane
    options.checksum = true;
    const auto stream = rans::encode(symbols, tables, options);
    options.checksum = false;
    const auto bare = rans::encode(symbols, tables, options);
    REQUIRE(bare.size() + 4 == stream.size());

    for (const auto* bytes : {&stream, &bare})
        for (std::size_t length = 0; length < bytes->size(); ++length) {
            const std::vector<std::uint8_t> cut(bytes->begin(), bytes->begin() + std::ptrdiff_t(length));
            CHECK_THROWS_AS(rans::decode(cut, tables, backend::scalar{}), nwc::error);
            CHECK_THROWS_AS(rans::decode(cut, tables, backend::simd{}), nwc::error);
            CHECK_THROWS_AS(rans::read_index(cut, tables, false), nwc::error);  // the structure alone rejects it
        }

    // Random byte flips: the checksum catches them; without it, the decoders must still either
    // throw or return a decode of the right length, and agree.
    int rejected = 0, decoded_differently = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        std::vector<std::uint8_t> flipped = bare, checked = stream;
        const int flips = 1 + int(random.below(3));
        for (int f = 0; f < flips; ++f) {
            const std::size_t at = random.below(bare.size());
            const std::uint8_t mask = std::uint8_t(1 + random.below(255));
            flipped[at] ^= mask;
            checked[at] ^= mask;
        }
        if (flipped == bare) continue;
        CHECK_THROWS_AS(rans::decode(checked, tables, backend::simd{}), nwc::error);
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
            decoded_differently += *scalar != symbols;
        } else {
            ++rejected;
        }
    }
    std::printf("range_coder corruption: %d of 3000 corruptions of an unchecksummed stream rejected by structure, %d decoded to other values\n",
                rejected, decoded_differently);
    CHECK(rejected > 1500);
}

TEST_CASE("range_coder: misuse, foreign streams and hostile headers give the right error ids", "[range_coder]") {
    Random random(26);
    const CdfTableSet tables = random_tables(random, 4);
    CdfTableSet other = random_tables(random, 4);
    while (other.precision() != tables.precision()) other = random_tables(random, 4);
    const auto symbols = draw_symbols(tables, random, 1000, 0.01);
    const auto stream = rans::encode(symbols, tables);
    std::vector<std::int32_t> out(999);
    CHECK(error_id([&] { rans::decode(stream, tables, std::span<std::int32_t>(out), backend::simd{}); }) == errc::invalid_argument);
    RangeCoderOptions options;
    options.table_fingerprint = true;
    CHECK(error_id([&] { rans::decode(rans::encode(symbols, tables, options), other, backend::simd{}); }) == errc::invalid_argument);
    CHECK_THROWS_AS(rans::decode(stream, other, backend::simd{}), nwc::error);  // without a fingerprint: most likely corrupt
    const CdfTableSet other_precision({CdfTable::uniform(0, 3, tables.precision() == 12 ? 13 : 12)});
    CHECK(error_id([&] { rans::decode(stream, other_precision, backend::simd{}); }) == errc::invalid_argument);
    options.segment_size = 6;  // not a multiple of 4 channels
    CHECK(error_id([&] { rans::encode(symbols, tables, options); }) == errc::invalid_argument);
    options.segment_size = 0;
    CHECK(error_id([&] { rans::encode(symbols, tables, options); }) == errc::invalid_argument);
    CHECK(error_id([&] { rans::encode(symbols, CdfTableSet{}); }) == errc::invalid_argument);

    auto patched = [&](std::size_t at, std::uint8_t value) {
        std::vector<std::uint8_t> bytes = stream;
        bytes[at] = value;
        return bytes;
    };
    CHECK(error_id([&] { rans::decode(patched(0, 3), tables, backend::scalar{}); }) == errc::unsupported);
    CHECK(error_id([&] { rans::decode(patched(1, stream[1] | 0x20), tables, backend::scalar{}); }) == errc::corrupt);  // reserved flag
    CHECK(error_id([&] { rans::decode(patched(1, 5), tables, backend::scalar{}); }) == errc::corrupt);                // precision 17
    // A version 1 stream (its 36-byte header, magic "NWRC"): unsupported, with a clear message.
    std::vector<std::uint8_t> version1{'N', 'W', 'R', 'C', 1, 0, 32, std::uint8_t(tables.precision()), 4, 0, 0, 0};
    version1.resize(36 + 8 + 128, 0);
    try {
        rans::decode(version1, tables, backend::scalar{});
        FAIL("a version 1 stream was accepted");
    } catch (const nwc::error& failure) {
        CHECK(failure.id() == errc::unsupported);
        CHECK(std::string(failure.what()).find("version 1") != std::string::npos);
    }
    auto header = [&](std::initializer_list<std::uint8_t> bytes) {
        std::vector<std::uint8_t> result{rans::version, std::uint8_t(tables.precision() - 12)};
        result.insert(result.end(), bytes);
        return result;
    };
    // Symbol counts near 2^64 must not wrap into "valid", nor allocate an index for them.
    const std::vector<std::uint8_t> huge_count = header({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 4});
    CHECK(error_id([&] { rans::read_index(huge_count, tables); }) == errc::truncated);
    CHECK(error_id([&] { rans::read_index(header({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x03, 4}), tables); }) == errc::corrupt);
    CHECK(error_id([&] { rans::read_index(header({0x80, 0x80, 0x80, 0x80, 0x08, 0}), tables); }) == errc::corrupt);  // one segment > 2^24
    CHECK(error_id([&] { rans::read_index(header({10, 5}), tables); }) == errc::corrupt);       // segment size not a multiple of 4
    CHECK(error_id([&] { rans::read_index(header({10, 12}), tables); }) == errc::corrupt);      // segment size above the count
    CHECK(error_id([&] { rans::read_index(header({0x80, 0}), tables); }) == errc::corrupt);     // a varint longer than its shortest form
    CHECK(error_id([&] { rans::read_index(header({10, 0, 0, 0, 0x10}), tables); }) == errc::corrupt);  // a lane block cut short
    CHECK(error_id([&] { rans::read_index(header({10, 0, 11, 0, 0}), tables); }) == errc::corrupt);       // 11 words for 10 symbols
    std::vector<std::uint8_t> longer = stream;
    longer.push_back(0);
    CHECK(error_id([&] { rans::decode(longer, tables, backend::scalar{}); }) == errc::corrupt);
    // A lane block announcing a tail longer than its lane: gamma(11) = 0001011 for 10 symbols.
    const std::vector<std::uint8_t> long_tail = header({10, 0, 0, 0, 0b00010110, 0b10000000});
    CHECK(error_id([&] { rans::read_index(long_tail, tables); }) == errc::corrupt);
}

}  // namespace nwc_test_range_coder
