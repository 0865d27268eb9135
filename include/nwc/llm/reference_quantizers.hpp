// Reference quantizers for baselines: llama.cpp's Q4_0, round to nearest, bit for bit.
//
// Q4_0 (ggml's quantize_row_q4_0_ref): blocks of 32 consecutive weights along a row (the input
// dimension); in each block the value of largest magnitude `max` (the first one on ties) gives
// d = max / -8; every weight becomes q = min(15, (int8_t)(x * (1/d) + 8.5)) and decodes to
// (q - 8) * fp16(d). Quantizing uses the float d, decoding the fp16-rounded d, as ggml does.
// A block costs 16 + 32 * 4 bits: 4.5 bits per weight.
//
// Rows whose length is not a multiple of 32 (stories260K's down_proj has 172 columns) end with a
// shorter block that gets its own scale (16 + 4 * length bits); ggml itself would refuse such rows.
// The row-wise reading matters: the flattened matrix would let blocks straddle rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc::llm {

inline constexpr int q4_0_block_size = 32;

namespace detail {
/// Quantizes and dequantizes one block of `length` <= 32 values in place, as ggml does.
inline void q4_0_block(float* values, int length) {
    float absolute_max = 0.0f, max = 0.0f;
    for (int j = 0; j < length; ++j) {
        if (absolute_max < std::fabs(values[j])) {
            absolute_max = std::fabs(values[j]);
            max = values[j];
        }
    }
    const float scale = max / -8.0f;
    const float inverse = scale != 0.0f ? 1.0f / scale : 0.0f;
    const float stored_scale = to_float(to_half(scale));
    for (int j = 0; j < length; ++j) {
        const int level = std::min(15, int(static_cast<std::int8_t>(values[j] * inverse + 8.5f)));
        values[j] = float(level - 8) * stored_scale;
    }
}
}  // namespace detail

/// The Q4_0 round trip of a [rows, cols] matrix: blocks of 32 along every row.
inline Tensor<float> quantize_dequantize_q4_0(TensorView<const float> matrix) {
    Tensor<float> result(matrix.shape(), std::vector<float>(matrix.data(), matrix.data() + matrix.numel()));
    const std::int64_t rows = matrix.rows(), cols = matrix.cols();
    for (std::int64_t row = 0; row < rows; ++row)
        for (std::int64_t start = 0; start < cols; start += q4_0_block_size)
            detail::q4_0_block(result.data() + row * cols + start, int(std::min<std::int64_t>(q4_0_block_size, cols - start)));
    return result;
}

/// Bits Q4_0 stores for a [rows, cols] matrix (a 16-bit scale per block, 4 bits per weight).
inline std::int64_t q4_0_bits(std::int64_t rows, std::int64_t cols) {
    const std::int64_t blocks_per_row = (cols + q4_0_block_size - 1) / q4_0_block_size;
    return rows * (blocks_per_row * 16 + cols * 4);
}

}  // namespace nwc::llm
