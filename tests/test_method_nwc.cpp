// The "nwc" pipeline method (pipeline/method_nwc.hpp) without LDLQ, coded a window of the chunk
// array at a time (pipeline/nwc_encoding.hpp): the symbols, payload and reconstruction of one
// pass over the whole array (the tiles of the encoder and the decoder blocks counted from its
// start) for matrices of several windows, a column longer than a window, a tile height that does
// not divide the window (a width-96 network: tiles of 682 chunks), every axis, 1 and 3 threads;
// encode_rows (a strip of columns at a time) gives encode()'s entry and error; the error is summed
// in chunk order. (Round trips, corruption, rate control: test_pipeline.cpp, test_corruption.cpp;
// from a mapped file: test_model_reader.cpp.)
// nwc-ctest-labels: slow
#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <vector>

#include "matrix_rows_testing.hpp"
#include "nwc/core/random.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "reliability_support.hpp"

namespace nwc_test_method_nwc {

using namespace nwc;

/// A small codec trained a few steps: width 96 (so ResidualMLP::tile_rows_for gives 682, which
/// divides no piece or block), one block, 4 latents, 4 levels sharing one prior.
std::shared_ptr<const NeuralCodec> odd_tile_codec() {
    static const std::shared_ptr<const NeuralCodec> codec =
        std::make_shared<const NeuralCodec>(reliability::briefly_trained_codec(CodecArchitecture{16, 96, 1, 4, 4, false}, 20, 77));
    return codec;
}

Tensor<float> gaussian(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
    Random random(seed);
    Tensor<float> weights(Shape{rows, cols});
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) weights(r, c) = 0.02f * float(random.normal()) * (1.0f + float(c % 3));
    return weights;
}

/// What the method codes, computed the way it was before windows: the whole chunk array encoded
/// and decoded in one call each; each span of columns one rANS stream.
struct WholeArray {
    std::vector<std::uint8_t> payload;
    std::vector<std::uint64_t> segment_sizes;
    Tensor<float> reconstruction;
    detail::ErrorMeasure chunk_order;  ///< down each column, column after column
};

WholeArray code_whole_array(const NeuralCodec& codec, const Tensor<float>& weights, const MethodOptions& options) {
    const CodecArchitecture& arch = codec.architecture();
    const Chunker chunker(ChunkerOptions{.axis = options.axis, .chunk_size = arch.chunk_size});
    ChunkedWeights chunked = chunker.split(weights.view());
    for (float& value : chunked.chunks) value *= options.alpha;
    const std::int64_t count = std::int64_t(chunked.chunks.size()) / arch.chunk_size, per_column = chunker.chunks_per_column(weights.rows());
    const std::vector<std::uint8_t> levels(std::size_t(count), 0);
    const TensorView<const float> view(chunked.chunks.data(), Shape{count, arch.chunk_size});
    std::vector<std::int32_t> symbols(std::size_t(count * arch.latents));
    codec.encode(view, levels, symbols, 1, backend::scalar{});
    WholeArray result;
    const std::int64_t span = NwcMethod::columns_per_segment(weights.rows(), weights.cols(), options, arch);
    ContainerTensor tensor;
    for (std::int64_t first = 0; first < weights.cols(); first += span) {
        const std::int64_t columns = std::min(span, weights.cols() - first);
        NwcMethod::add_segment(tensor, std::span<const std::int32_t>(symbols).subspan(std::size_t(first * per_column * arch.latents),
                                                                                      std::size_t(columns * per_column * arch.latents)),
                               codec, 0);
    }
    result.payload = tensor.payload;
    result.segment_sizes = tensor.segment_sizes;
    codec.decode(symbols, levels, TensorView<float>(chunked.chunks.data(), Shape{count, arch.chunk_size}), 1, backend::scalar{});
    for (float& value : chunked.chunks) value /= options.alpha;
    result.reconstruction = chunker.merge(chunked);
    for (std::int64_t c = 0; c < weights.cols(); ++c)
        for (std::int64_t r = 0; r < weights.rows(); ++r) detail::add_error(result.chunk_order, weights(r, c), result.reconstruction(r, c));
    return result;
}

TEST_CASE("nwc: coded a window at a time, the symbols and reconstruction of one pass over the chunk array", "[nwc]") {
    struct Case {
        std::int64_t rows, cols;
        NormalizationAxis axis;
        float alpha;
    };
    const auto codec = odd_tile_codec();
    REQUIRE(ResidualMLP<float>::tile_rows_for(codec->encoder().shape().width) == 682);
    MethodResources resources;
    resources.neural_codec = codec;
    // 2000 x 600: 75,000 chunks (two decoder blocks of 65,536), 125 per column, windows inside columns;
    // 1,100,003 x 1: one column of 68,751 chunks, longer than a window, the last chunk cut short;
    // 1001 x 1100: 63 chunks per column, the last one short in every column; 17 x 9: one tile.
    for (const Case& test : {Case{2000, 600, NormalizationAxis::per_column, 1.0f}, Case{1'100'003, 1, NormalizationAxis::per_tensor, 2.0f},
                             Case{1001, 1100, NormalizationAxis::per_row, 0.7f}, Case{17, 9, NormalizationAxis::per_column, 1.0f}}) {
        INFO(test.rows << " x " << test.cols << ", axis " << int(test.axis) << ", alpha " << test.alpha);
        const Tensor<float> weights = gaussian(test.rows, test.cols, std::uint64_t(test.rows + test.cols));
        MethodOptions options;
        options.axis = test.axis;
        options.alpha = test.alpha;
        options.weights_per_segment = 300'000;
        const WholeArray expected = code_whole_array(*codec, weights, options);
        for (const int threads : {1, 3}) {
            INFO(threads << " threads");
            options.threads = threads;
            const EncodedMatrix coded = NwcMethod::encode(weights.view(), nullptr, options, resources);
            CHECK(coded.tensor.payload == expected.payload);
            CHECK(coded.tensor.segment_sizes == expected.segment_sizes);
            CHECK(coded.reconstruction.values() == expected.reconstruction.values());
            REQUIRE(coded.measured.has_value());
            CHECK(coded.measured->squared_error == expected.chunk_order.squared_error);
            CHECK(coded.measured->squared_norm == expected.chunk_order.squared_norm);
            // The same sums as measure_error's row-major ones but for rounding.
            const detail::ErrorMeasure row_major = detail::measure_error<double>(weights.view(), expected.reconstruction.view(), nullptr);
            CHECK(coded.measured->squared_error == Approx(row_major.squared_error).epsilon(1e-12));
            CHECK(coded.measured->squared_norm == Approx(row_major.squared_norm).epsilon(1e-12));
            // The scales' two passes read every weight; the windows read each once more, and a column
            // two windows share (at most one per window) twice.
            const std::int64_t windows = test.cols * ((test.rows + 15) / 16) / NeuralDecoder::block_chunks + 1;
            CHECK(testing::check_encode_rows<NwcMethod>(weights, options, resources) <= 3 * weights.numel() + windows * test.rows);
        }
        options.measure = false;
        const EncodedMatrix unmeasured = NwcMethod::encode(weights.view(), nullptr, options, resources);
        CHECK(unmeasured.tensor.payload == expected.payload);
        CHECK((unmeasured.reconstruction.values().empty() && !unmeasured.measured));
        CHECK(!NwcMethod::encode_rows(testing::rows_of(weights).rows, options, resources).measured);
    }
}

TEST_CASE("nwc: without a codec, encode and encode_rows say what is missing", "[nwc]") {
    const Tensor<float> weights = gaussian(32, 8, 1);
    const MethodOptions options;
    CHECK_THROWS_WITH(NwcMethod::encode(weights.view(), nullptr, options, MethodResources{}), Catch::Contains("needs a trained codec"));
    CHECK_THROWS_WITH(NwcMethod::encode_rows(testing::rows_of(weights).rows, options, MethodResources{}), Catch::Contains("needs a trained codec"));
}

}  // namespace nwc_test_method_nwc
