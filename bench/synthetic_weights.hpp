// Synthetic weight matrices with the statistics of trained LLM weights, shared by the CPU and
// CUDA decode benchmarks so both decode the same tensors: per-column standard deviations
// log-normal around 0.02, Student-t tails (5 degrees of freedom, rescaled to the column's std).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "nwc/core/random.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc::bench {

/// rows x cols, deterministic in `seed`.
inline Tensor<float> synthetic_weights(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
    Random random(seed);
    std::vector<float> column_std(static_cast<std::size_t>(cols));
    for (float& value : column_std) value = float(0.02 * std::exp(0.5 * random.normal()));
    Tensor<float> weights(Shape{rows, cols});
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c) {
            double chi2 = 0;
            for (int k = 0; k < 5; ++k) {
                const double z = random.normal();
                chi2 += z * z;
            }
            weights.view()(r, c) = float(column_std[std::size_t(c)] * random.normal() / std::sqrt(chi2 / 5.0 + 1e-12) * std::sqrt(3.0 / 5.0));
        }
    return weights;
}

}  // namespace nwc::bench
