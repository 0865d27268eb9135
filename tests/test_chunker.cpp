// Chunker: normalization with fp16 scales, chunk layout and exact reassembly, importance levels,
// 2-bit level packing, validated serialization of levels (scales: test_scale_grid.cpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "error_testing.hpp"
#include "nwc/core/random.hpp"
#include "nwc/quant/chunker.hpp"

namespace nwc_test_chunker {

using namespace nwc;
using nwc::testing::error_of;

namespace {
Tensor<float> random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed, float scale = 0.02f) {
    Random random(seed);
    Tensor<float> matrix(Shape{rows, cols});
    for (auto& value : matrix.values()) value = scale * random.normal();
    return matrix;
}

}  // namespace

TEST_CASE("chunker: chunk + dechunk is exact for odd sizes; layout is column-major over chunks, tail padded with 0", "[chunker]") {
    for (int chunk_size : {16, 7, 1}) {
        const Chunker chunker(ChunkerOptions{NormalizationAxis::per_column, chunk_size, {}});
        for (std::int64_t rows : {1, 15, 16, 17, 37}) {
            for (std::int64_t cols : {1, 5, 33}) {
                const Tensor<float> matrix = random_matrix(rows, cols, std::uint64_t(rows * 100 + cols), 1.0f);
                const auto chunks = chunker.chunk(matrix.view());
                const std::int64_t per_column = (rows + chunk_size - 1) / chunk_size;
                REQUIRE(chunker.chunks_per_column(rows) == per_column);
                REQUIRE(chunker.chunk_count(rows, cols) == per_column * cols);
                REQUIRE(std::int64_t(chunks.size()) == per_column * cols * chunk_size);
                for (std::int64_t c = 0; c < cols; ++c)
                    for (std::int64_t k = 0; k < per_column; ++k)
                        for (int i = 0; i < chunk_size; ++i) {
                            const std::int64_t row = k * chunk_size + i;
                            const float stored = chunks[std::size_t(((c * per_column) + k) * chunk_size + i)];
                            if (row < rows) {
                                REQUIRE(stored == matrix(row, c));
                            } else {
                                REQUIRE(stored == 0.0f);  // padding
                            }
                        }
                Tensor<float> back(matrix.shape(), -1.0f);
                chunker.dechunk(chunks, back.view());
                REQUIRE(back.values() == matrix.values());
            }
        }
    }
    const Chunker chunker;
    Tensor<float> target(Shape{17, 3});
    std::vector<float> too_few(10);
    CHECK(error_of([&] { chunker.dechunk(too_few, target.view()); }) == errc::invalid_argument);
}

TEST_CASE("chunker: column scales are the population std on the scale grid; decoding uses exactly that scale", "[chunker]") {
    const Chunker chunker;
    Tensor<float> matrix = random_matrix(37, 9, 11);
    for (std::int64_t r = 0; r < 37; ++r) {
        matrix(r, 3) = 0.0f;           // zero column
        matrix(r, 5) = 0.25f;          // constant column
        matrix(r, 7) *= 40.0f;         // a loud column
        matrix(r, 8) = matrix(r, 8) + 3.0f;  // nonzero mean: only scaled, never shifted
    }
    const auto scales = chunker.compute_scales(matrix.view());
    REQUIRE(scales.size() == 9);
    for (std::int64_t c = 0; c < 9; ++c) {
        double mean = 0.0, squares = 0.0;
        for (std::int64_t r = 0; r < 37; ++r) mean += matrix(r, c) / 37.0;
        for (std::int64_t r = 0; r < 37; ++r) squares += (matrix(r, c) - mean) * (matrix(r, c) - mean);
        const double std_dev = std::sqrt(squares / 37.0);
        if (c == 3 || c == 5) {
            CHECK(to_float(scales[std::size_t(c)]) == 1.0f);  // zero / constant column: scale 1
        } else {
            // The fp16 std snapped to the quarter-octave grid: within 2^(1/8) - 1 (9.1%) relative.
            CHECK(scales[std::size_t(c)].bits == snap_scale(to_half(float(std_dev))).bits);
            CHECK(std::abs(std::log2(to_float(scales[std::size_t(c)]) / std_dev)) <= 0.125 + 0.001);
        }
    }
    ChunkedWeights chunked = chunker.split(matrix.view());
    CHECK(chunked.scales.size() == 9);
    // The decoder (merge) multiplies by exactly the fp16 value that divided.
    Tensor<float> normalized(matrix.shape());
    chunker.normalize(matrix.view(), scales, normalized.view());
    for (std::int64_t c = 0; c < 9; ++c) {
        double mean = 0.0, squares = 0.0;
        for (std::int64_t r = 0; r < 37; ++r) mean += normalized(r, c) / 37.0;
        for (std::int64_t r = 0; r < 37; ++r) squares += (normalized(r, c) - mean) * (normalized(r, c) - mean);
        if (c != 3 && c != 5) CHECK(std::abs(std::sqrt(squares / 37.0) - 1.0) < 0.1);  // the grid's rounding of the scale
        if (c == 8) CHECK(mean > 10.0);                                                  // the mean was kept
    }
    const Tensor<float> decoded = chunker.merge(chunked);
    for (std::int64_t r = 0; r < 37; ++r)
        for (std::int64_t c = 0; c < 9; ++c) {
            const float expected = normalized(r, c) * to_float(scales[std::size_t(c)]);
            REQUIRE(decoded(r, c) == expected);
            REQUIRE(std::abs(decoded(r, c) - matrix(r, c)) <= std::abs(matrix(r, c)) * 0x1.0p-23f);  // (x / s) s: one rounding
        }
    for (std::int64_t r = 0; r < 37; ++r) CHECK(decoded(r, 3) == 0.0f);
}

TEST_CASE("chunker: per-row normalization stores one scale per row", "[chunker]") {
    const Chunker chunker(ChunkerOptions{NormalizationAxis::per_row, 16, {}});
    Tensor<float> matrix = random_matrix(20, 48, 5);
    for (std::int64_t c = 0; c < 48; ++c) matrix(4, c) *= 100.0f;
    const ChunkedWeights chunked = chunker.split(matrix.view());
    REQUIRE(chunked.scales.size() == 20);
    CHECK(to_float(chunked.scales[4]) > 50.0f * to_float(chunked.scales[3]));
    const Tensor<float> decoded = chunker.merge(chunked);
    for (std::int64_t i = 0; i < matrix.numel(); ++i) REQUIRE(std::abs(decoded[i] - matrix[i]) <= std::abs(matrix[i]) * 0x1.0p-23f);
    // Huge columns clamp to the largest fp16, non-finite weights are rejected.
    Tensor<float> huge(Shape{2, 1});
    huge(0, 0) = 1e6f;
    huge(1, 0) = -1e6f;
    CHECK(Chunker().compute_scales(huge.view())[0].bits == 0x7BFF);  // one scale: full fp16
    // Several: the largest grid value below infinity; scales 16+ octaves below the largest are raised.
    Tensor<float> spread(Shape{2, 3});
    spread(0, 0) = 1e6f, spread(1, 0) = -1e6f, spread(0, 1) = 1e-3f, spread(1, 1) = -1e-3f, spread(0, 2) = 1.0f, spread(1, 2) = -1.0f;
    const std::vector<half> spread_scales = Chunker().compute_scales(spread.view());
    CHECK(spread_scales[0].bits == 0x7ABA);  // 1.6816 x 2^15 = 55104, code 4 x 30 + 3
    CHECK(spread_scales[1].bits == std::uint16_t(15 << 10));  // 1e-3 is raised to the set's lowest code, 63 below: 2^0
    CHECK(to_float(spread_scales[2]) == 1.0f);
    huge(1, 0) = std::nanf("");
    CHECK(error_of([&] { Chunker().compute_scales(huge.view()); }) == errc::invalid_argument);
}

TEST_CASE("chunker: importance levels by fixed quantiles of diag(H), ties to the lower column", "[chunker]") {
    const Chunker chunker;
    SECTION("n = 1000, diag = j: top 1 / 10 / 100 columns") {
        std::vector<float> diagonal(1000);
        for (std::size_t j = 0; j < diagonal.size(); ++j) diagonal[j] = float(j);
        const auto levels = chunker.importance_levels(std::span<const float>(diagonal));
        for (std::size_t j = 0; j < 1000; ++j) {
            const int expected = j >= 999 ? 3 : j >= 990 ? 2 : j >= 900 ? 1 : 0;
            REQUIRE(int(levels[j]) == expected);
        }
    }
    SECTION("n = 512 (the mt3 width), reversed: ceil(f n) = 52 / 6 / 1 columns") {
        std::vector<double> diagonal(512);
        for (std::size_t j = 0; j < diagonal.size(); ++j) diagonal[j] = 1000.0 - double(j);
        const auto levels = chunker.importance_levels(std::span<const double>(diagonal));
        int counts[4] = {0, 0, 0, 0};
        for (auto level : levels) ++counts[level];
        CHECK(counts[3] == 1);
        CHECK(counts[2] == 5);
        CHECK(counts[1] == 46);
        CHECK(counts[0] == 460);
        CHECK(levels[0] == 3);
        CHECK(levels[51] == 1);
        CHECK(levels[52] == 0);
    }
    SECTION("ties: equal values go to the lower column index") {
        std::vector<float> diagonal(20, 2.0f);
        diagonal[17] = 5.0f;
        const auto levels = chunker.importance_levels(diagonal);
        // top ceil(0.1 * 20) = 2: column 17 and then column 0; top 1% and 0.1% = 1 column: 17.
        CHECK(levels[17] == 3);
        CHECK(levels[0] == 1);
        for (std::size_t j = 1; j < 20; ++j)
            if (j != 17) CHECK(levels[j] == 0);
    }
    SECTION("configurable fractions; bad ones are rejected") {
        const Chunker custom(ChunkerOptions{NormalizationAxis::per_column, 16, ImportanceQuantiles{{0.5, 0.25, 0.0}}});
        std::vector<float> diagonal{1, 2, 3, 4, 5, 6, 7, 8};
        const auto levels = custom.importance_levels(std::span<const float>(diagonal));
        CHECK(levels == std::vector<std::uint8_t>{0, 0, 0, 0, 1, 1, 2, 2});
        CHECK(error_of([] { Chunker(ChunkerOptions{NormalizationAxis::per_column, 16, ImportanceQuantiles{{0.01, 0.1, 0.0}}}); }) ==
              errc::invalid_argument);
        CHECK(error_of([] { Chunker(ChunkerOptions{NormalizationAxis::per_column, 0, {}}); }) == errc::invalid_argument);
        diagonal[2] = std::nanf("");
        CHECK(error_of([&] { custom.importance_levels(std::span<const float>(diagonal)); }) == errc::invalid_argument);
    }
}

TEST_CASE("chunker: levels pack 2 bits per column and unpack exactly; bad padding is corrupt", "[chunker]") {
    Random random(3);
    for (std::size_t count : {0, 1, 3, 4, 5, 8, 513}) {
        std::vector<std::uint8_t> levels(count);
        for (auto& level : levels) level = std::uint8_t(random.below(4));
        const auto packed = pack_levels(levels);
        REQUIRE(packed.size() == (count + 3) / 4);
        REQUIRE(unpack_levels(packed, count) == levels);
    }
    CHECK(pack_levels(std::vector<std::uint8_t>{1, 2, 3, 0, 3}) == std::vector<std::uint8_t>{0x39, 0x03});
    CHECK(error_of([] { unpack_levels(std::vector<std::uint8_t>{0x39, 0x13}, 5); }) == errc::corrupt);
    CHECK(error_of([] { unpack_levels(std::vector<std::uint8_t>{0x39}, 5); }) == errc::truncated);
}

TEST_CASE("chunker: levels serialize, and bad bytes are rejected with the offset", "[chunker]") {
    const std::vector<std::uint8_t> levels{0, 1, 2, 3, 1};
    ByteWriter writer;
    write_levels(writer, levels);
    const auto bytes = writer.take();
    REQUIRE(bytes.size() == 2);
    {
        ByteReader reader(bytes, "test side data");
        CHECK(read_levels(reader, 5) == levels);
        reader.expect_end();
    }
    auto reading = [&](std::vector<std::uint8_t> data, std::size_t level_count) {
        return error_of([&] {
            ByteReader reader(data, "test side data");
            read_levels(reader, level_count);
        });
    };
    CHECK(reading(bytes, 9) == errc::truncated);
    CHECK(reading({bytes.begin(), bytes.begin() + 1}, 5) == errc::truncated);
    auto bad_padding = bytes;
    bad_padding.back() = 0xF1;
    CHECK(reading(bad_padding, 5) == errc::corrupt);
    try {
        ByteReader reader(bad_padding, "test side data");
        read_levels(reader, 5);
        FAIL("bad padding was accepted");
    } catch (const error& failure) {
        CHECK_THAT(failure.message(), Catch::Contains("test side data") && Catch::Contains("offset 0"));
    }
}

}  // namespace nwc_test_chunker
