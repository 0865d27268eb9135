// rows_of: a MatrixRows over a tensor in memory, for tests of a RowEncodingMethod's encode_rows
// against its encode() of the whole matrix (check_encode_rows). Each read copies its block into a
// buffer of its own (as a streamed compress widens it from a file) and counts the weights it
// handed out.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <catch2/catch.hpp>

#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/pipeline/method_encoding.hpp"

namespace nwc::testing {

struct CountedRows {
    MatrixRows rows;
    std::shared_ptr<std::int64_t> weights_read = std::make_shared<std::int64_t>(0);
};

inline CountedRows rows_of(const Tensor<float>& matrix) {
    CountedRows result;
    auto buffer = std::make_shared<std::vector<float>>();
    const std::int64_t cols = matrix.cols();
    result.rows = MatrixRows{matrix.rows(), cols, [&matrix, buffer, cols, counter = result.weights_read](std::int64_t first_row, std::int64_t row_count,
                                                                                                      std::int64_t first_col, std::int64_t col_count) {
                                 REQUIRE((first_row >= 0 && row_count >= 0 && first_row + row_count <= matrix.rows()));
                                 REQUIRE((first_col >= 0 && col_count >= 0 && first_col + col_count <= cols));
                                 buffer->assign(std::size_t(row_count * col_count), 0.0f);
                                 for (std::int64_t r = 0; r < row_count; ++r)
                                     for (std::int64_t c = 0; c < col_count; ++c)
                                         (*buffer)[std::size_t(r * col_count + c)] = matrix(first_row + r, first_col + c);
                                 *counter += row_count * col_count;
                                 return TensorView<const float>(buffer->data(), Shape{row_count, col_count});
                             }};
    return result;
}

/// Checks that M::encode_rows of `weights` (read through rows_of) gives M::encode()'s entry, no
/// reconstruction, and the error encode() measured (or, when it measured none, measure_error's
/// sums of its reconstruction); returns the weights it read.
template <class M>
std::int64_t check_encode_rows(const Tensor<float>& weights, const MethodOptions& options, const MethodResources& resources = {}) {
    const EncodedMatrix whole = M::encode(weights.view(), nullptr, options, resources);
    const CountedRows source = rows_of(weights);
    const EncodedMatrix streamed = M::encode_rows(source.rows, options, resources);
    CHECK(streamed.tensor.method == whole.tensor.method);
    CHECK(streamed.tensor.metadata == whole.tensor.metadata);
    CHECK(streamed.tensor.payload == whole.tensor.payload);
    CHECK(streamed.tensor.segment_sizes == whole.tensor.segment_sizes);
    CHECK(streamed.setting == whole.setting);
    CHECK((!streamed.used_feedback && !streamed.used_hessian));
    CHECK(streamed.reconstruction.values().empty());
    REQUIRE(streamed.measured.has_value());
    const detail::ErrorMeasure expected =
        whole.measured ? *whole.measured : detail::measure_error<double>(weights.view(), whole.reconstruction.view(), nullptr);
    CHECK(streamed.measured->squared_error == expected.squared_error);
    CHECK(streamed.measured->squared_norm == expected.squared_norm);
    return *source.weights_read;
}

}  // namespace nwc::testing
