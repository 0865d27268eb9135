// The "ecsq" pipeline method (pipeline/method_ecsq.hpp), its streamed encoder: encode_rows reads
// a matrix block by block and gives encode()'s entry and the error the pipeline would measure,
// for every normalization axis, segment span and symbol range; a step too small for a symbol
// table fails alike. (The method's round trips, corruption and rate control: test_pipeline.cpp,
// test_corruption.cpp, test_model_reader.cpp.)
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <vector>

#include "error_testing.hpp"
#include "matrix_rows_testing.hpp"
#include "nwc/core/random.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace nwc_test_method_ecsq {

using namespace nwc;
using nwc::testing::error_of;

TEST_CASE("ecsq: encode_rows, block by block, gives encode()'s entry and its error", "[ecsq]") {
    struct Case {
        std::int64_t rows, cols;
        float step;
        NormalizationAxis axis;
        std::int64_t weights_per_segment;
    };
    Random random(13);
    for (const Case& test : {Case{700, 300, 0.3f, NormalizationAxis::per_tensor, 1 << 17}, Case{700, 300, 0.05f, NormalizationAxis::per_row, 5000},
                             Case{300, 97, 0.5f, NormalizationAxis::per_column, 1000}, Case{16, 5000, 2e-4f, NormalizationAxis::per_tensor, 100},
                             Case{1, 40, 0.1f, NormalizationAxis::per_tensor, 1 << 17}}) {
        INFO(test.rows << " x " << test.cols << ", step " << test.step << ", axis " << int(test.axis));
        Tensor<float> weights(Shape{test.rows, test.cols});
        for (std::int64_t r = 0; r < test.rows; ++r)
            for (std::int64_t c = 0; c < test.cols; ++c) weights(r, c) = 0.02f * float(random.normal()) * (1.0f + float(r % 5) + 0.5f * float(c % 3));
        MethodOptions options;
        options.method = "ecsq";
        options.step = test.step;
        options.axis = test.axis;
        options.weights_per_segment = test.weights_per_segment;
        // Weights read: scales (2 passes), histogram, coding; passes, not a copy.
        CHECK(testing::check_encode_rows<EcsqMethod>(weights, options) == 4 * weights.numel());
    }
    // Failures come as encode()'s: a non-finite weight, a step too small for the symbol table.
    Tensor<float> bad(Shape{20, 20}, 0.5f);
    bad(3, 4) = std::numeric_limits<float>::infinity();
    MethodOptions options;
    options.method = "ecsq";
    CHECK(error_of([&] { (void)EcsqMethod::encode_rows(testing::rows_of(bad).rows, options); }) ==
          error_of([&] { (void)EcsqMethod::encode(bad.view(), nullptr, options, MethodResources{}); }));
    // Two outliers among a million zeros: the per-tensor scale is ~1.4e-3, so at the smallest step
    // (2^-14) the symbols span ~2.3e7 values, more than a table may (2^24).
    Tensor<float> wide(Shape{1000, 1000}, 0.0f);
    wide(0, 0) = -1.0f, wide(999, 999) = 1.0f;
    options.step = 0x1p-14f;
    const errc expected = error_of([&] { (void)EcsqMethod::encode(wide.view(), nullptr, options, MethodResources{}); });
    CHECK(expected == errc::limit);
    CHECK(error_of([&] { (void)EcsqMethod::encode_rows(testing::rows_of(wide).rows, options); }) == expected);
}

}  // namespace nwc_test_method_ecsq
