// Scale grid: snapping to the nearest quarter octave, packed serialization that round-trips every
// set, and bad bytes rejected with the field and its offset.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "error_testing.hpp"
#include "nwc/core/random.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc_test_scale_grid {

using namespace nwc;
using nwc::testing::error_of;

namespace {

std::vector<std::uint8_t> written(std::span<const half> scales) {
    ByteWriter writer;
    write_scales(writer, scales);
    return writer.take();
}
}  // namespace

TEST_CASE("scale grid: every normal fp16 snaps to the grid value nearest in log2", "[scale_grid]") {
    // The grid values are 2^(j/4) in fp16 (within 0.03%).
    for (int j = 0; j < 4; ++j) CHECK(std::abs(std::log2(to_float(detail::scale_of_code(60 + j))) - j / 4.0) < 0.0005);
    for (std::uint32_t bits = 1u << 10; bits < 31u << 10; ++bits) {
        const half scale{std::uint16_t(bits)};
        const half snapped = snap_scale(scale);
        REQUIRE(snap_scale(snapped).bits == snapped.bits);  // grid values are fixed points
        const double distance = std::abs(std::log2(double(to_float(snapped)) / double(to_float(scale))));
        const int code = detail::scale_code(scale);
        // No other code in reach is nearer (the last grid value also takes everything above it).
        for (int other = std::max(detail::scale_code_lowest, code - 1); other <= std::min(detail::scale_code_highest, code + 1); ++other) {
            const double other_distance = std::abs(std::log2(double(to_float(detail::scale_of_code(other))) / double(to_float(scale))));
            REQUIRE(distance <= other_distance + 1e-6);
        }
        if (code < detail::scale_code_highest) REQUIRE(distance <= 0.125 + 0.0005);
    }
    CHECK(snap_scale(half{0x0001}).bits == 1u << 10);  // subnormal: the smallest normal
    CHECK(snap_scale(half{0x7BFF}).bits == 0x7ABA);    // 65504: the largest grid value, 55104
}

TEST_CASE("scale grid: sets keep 64 codes below their largest and round-trip in ~width bits", "[scale_grid]") {
    std::vector<half> spread{to_half(1000.0f), to_half(1e-3f), to_half(1.0f)};
    snap_scales(spread);
    CHECK(to_float(spread[0]) == 1024.0f);
    CHECK(detail::scale_code(spread[1]) == detail::scale_code(spread[0]) - 63);  // raised to 63 codes below
    CHECK(to_float(spread[2]) == 1.0f);

    Random random(7);
    for (const std::size_t count : {std::size_t(2), std::size_t(3), std::size_t(9), std::size_t(64), std::size_t(172), std::size_t(513)}) {
        for (const double octaves : {0.0, 0.2, 3.0, 30.0}) {
            std::vector<half> scales(count);
            for (half& scale : scales) scale = to_half(float(0.02 * std::exp2(octaves * random.uniform())));
            snap_scales(scales);
            const std::vector<std::uint8_t> bytes = written(scales);
            int low = 1000, high = 0;
            for (const half scale : scales) low = std::min(low, detail::scale_code(scale)), high = std::max(high, detail::scale_code(scale));
            const int width = detail::scale_code_width(high - low);
            REQUIRE(width <= detail::scale_code_max_width);
            // Fixed-width fields, or Rice codes (width byte 0x80 | k) where those are shorter.
            REQUIRE(bytes.size() <= packed_scale_bytes(count, width));
            if ((bytes[1] & detail::scale_rice_flag) == 0) REQUIRE(bytes.size() == packed_scale_bytes(count, width));
            ByteReader reader(bytes, "scales");
            const std::vector<half> read_back = read_scales(reader, count);
            reader.expect_end();
            for (std::size_t i = 0; i < count; ++i) REQUIRE(read_back[i].bits == scales[i].bits);
        }
    }
    // 64 row scales spread over 3 octaves: 12-13 codes, 4 bits each: 34 bytes instead of 65.
    std::vector<half> rows(64);
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = to_half(float(0.01 * std::exp2(3.0 * double(i) / 63.0)));
    snap_scales(rows);
    CHECK(written(rows).size() == 2 + 64 * 4 / 8);
}

TEST_CASE("scale grid: sets clustered around their median with a few far codes are Rice-coded, and bad Rice bytes are refused", "[scale_grid]") {
    // 64 rows within a step of code 60, and four rows 30-40 codes below: fixed width takes 6 bits each.
    std::vector<half> scales;
    Random random(3);
    for (int i = 0; i < 64; ++i) scales.push_back(detail::scale_of_code(i % 16 == 5 ? 20 + i / 8 : 59 + int(random.uniform() * 3.0)));
    const std::vector<std::uint8_t> bytes = written(scales);
    REQUIRE((bytes[1] & detail::scale_rice_flag) != 0);
    CHECK(bytes[0] == 60);  // the median code
    CHECK(bytes.size() + 10 < packed_scale_bytes(scales.size(), 6));  // 35 bytes instead of 50
    {
        ByteReader reader(bytes, "rice");
        const std::vector<half> back = read_scales(reader, scales.size());
        reader.expect_end();
        for (std::size_t i = 0; i < scales.size(); ++i) REQUIRE(back[i].bits == scales[i].bits);
    }
    auto reading = [](std::vector<std::uint8_t> data, std::size_t count) {
        return error_of([&] {
            ByteReader reader(data, "test scales");
            read_scales(reader, count);
        });
    };
    for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
        INFO("cut to " << cut);
        const errc id = reading({bytes.begin(), bytes.begin() + std::ptrdiff_t(cut)}, scales.size());
        CHECK((id == errc::truncated || id == errc::corrupt));
    }
    auto patched = [&](std::size_t at, std::uint8_t value) {
        std::vector<std::uint8_t> damaged = bytes;
        damaged[at] = value;
        return reading(damaged, scales.size());
    };
    CHECK(patched(1, std::uint8_t(detail::scale_rice_flag | 8)) == errc::corrupt);  // k beyond 7
    CHECK(patched(0, 2) == errc::corrupt);                                          // center below the grid
    CHECK(patched(0, 15) == errc::corrupt);                                         // far codes fall below the grid
    CHECK(reading(bytes, 8 * bytes.size()) == errc::truncated);                    // more codes than bits
    // A run of ones longer than any distance on the grid.
    std::vector<std::uint8_t> ones{60, detail::scale_rice_flag};
    ones.insert(ones.end(), 40, 0xFF);
    CHECK(reading(ones, 2) == errc::corrupt);
    // Nonzero padding after the last code, with its offset.
    std::vector<std::uint8_t> two{60, detail::scale_rice_flag, 0x00};  // k = 0: codes 60, 60 ("0", "0"), then 6 padding bits
    {
        ByteReader reader(two, "two");
        const std::vector<half> back = read_scales(reader, 2);
        CHECK(detail::scale_code(back[0]) == 60);
        CHECK(detail::scale_code(back[1]) == 60);
    }
    two[2] = 0x01;
    CHECK(reading(two, 2) == errc::corrupt);
}

TEST_CASE("scale grid: one scale is its fp16 bits; scales off the grid are refused", "[scale_grid]") {
    const std::vector<std::uint8_t> single = written(std::vector<half>{to_half(0.0123f)});
    REQUIRE(single.size() == 2);
    ByteReader reader(single, "single");
    CHECK(read_scales(reader, 1)[0].bits == to_half(0.0123f).bits);
    CHECK(error_of([] { written(std::vector<half>{to_half(0.0123f), to_half(1.0f)}); }) == errc::invalid_argument);
    // On the grid but 64 codes apart: snap_scales would have raised the lower one.
    CHECK(error_of([] { written(std::vector<half>{detail::scale_of_code(4), detail::scale_of_code(68)}); }) == errc::invalid_argument);
}

TEST_CASE("scale grid: bad bytes are rejected with the field and its offset", "[scale_grid]") {
    std::vector<half> scales{detail::scale_of_code(50), detail::scale_of_code(57), detail::scale_of_code(53)};
    const std::vector<std::uint8_t> bytes = written(scales);
    REQUIRE(bytes.size() == 2 + 2);  // lowest 50, width 3, 9 bits of codes
    auto reading = [](std::vector<std::uint8_t> data, std::size_t count) {
        return error_of([&] {
            ByteReader reader(data, "test scales");
            read_scales(reader, count);
        });
    };
    CHECK(reading(bytes, 6) == errc::truncated);  // the count comes from the shape: too few bytes for it
    for (std::size_t cut : {0, 1, 2, 3}) CHECK(reading({bytes.begin(), bytes.begin() + std::ptrdiff_t(cut)}, 3) == errc::truncated);
    for (std::uint8_t bad_lowest : {0, 3, 124, 255}) {
        auto corrupted = bytes;
        corrupted[0] = bad_lowest;
        CHECK(reading(corrupted, 3) == errc::corrupt);
    }
    auto wide = bytes;
    wide[1] = 7;
    CHECK(reading(wide, 3) == errc::corrupt);
    auto beyond = bytes;
    beyond[0] = detail::scale_code_highest;  // codes 0, 7, 3 above the largest grid value: 7 and 3 overflow
    CHECK(reading(beyond, 3) == errc::corrupt);
    auto bad_padding = bytes;
    bad_padding.back() = std::uint8_t(bad_padding.back() | 0x80);
    CHECK(reading(bad_padding, 3) == errc::corrupt);
    try {
        ByteReader reader(bad_padding, "test scales");
        read_scales(reader, 3);
        FAIL("bad padding was accepted");
    } catch (const error& failure) {
        CHECK_THAT(failure.message(), Catch::Contains("test scales") && Catch::Contains("offset 3"));
    }
}

}  // namespace nwc_test_scale_grid
