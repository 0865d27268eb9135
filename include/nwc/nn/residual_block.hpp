// The fused epilogue of a ResidualMLP block, shared by the training and the inference paths.
//
// Read me first:
// - A block is `h <- (h + ReLU(LayerNorm(t))) * E[level]` where t = h W^T + b came out of a GEMM.
//   Everything after the GEMM touches each row once, so it is one pass per row here
//   ("epilogue"), not five tape ops with five full-matrix temporaries.
// - `block_epilogue_row(..., backend::scalar)` is the reference: plain loops, two-pass mean and
//   variance (LayerNorm's biased variance, epsilon 1e-5 as in torch.nn.LayerNorm). The training
//   op (nn::residual_block in nn/residual_mlp_tape.hpp, with the backward pass) calls exactly this
//   function, so inference and training agree bit for bit on the scalar backend.
//   `backend::simd` overloads it in nn/mlp_kernels_simd.hpp (xsimd), which agrees to about 1e-6
//   relative; without that header a simd call falls back to this reference.
// - No autograd here: ResidualMLP's inference path (and so decoding) needs only this header.
#pragma once

#include <algorithm>
#include <cmath>

#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"

namespace nwc::detail {

/// torch.nn.LayerNorm's default epsilon.
inline constexpr double layer_norm_epsilon = 1e-5;

/// Reference epilogue for one row: h = (h + relu(gamma * normalize(t + bias) + beta)) * scale.
/// `bias` may be null (the training path's linear op has already added it).
template <class Scalar>
void block_epilogue_row(const Scalar* t, const Scalar* bias, const Scalar* gamma, const Scalar* beta, const Scalar* scale,
                        Scalar* h, int width, backend::scalar) {
    Scalar mean = 0;
    for (int i = 0; i < width; ++i) mean += bias ? t[i] + bias[i] : t[i];
    mean /= Scalar(width);
    Scalar variance = 0;
    for (int i = 0; i < width; ++i) {
        const Scalar centered = (bias ? t[i] + bias[i] : t[i]) - mean;
        variance += centered * centered;
    }
    variance /= Scalar(width);
    const Scalar inverse_std = Scalar(1) / std::sqrt(variance + Scalar(layer_norm_epsilon));
    for (int i = 0; i < width; ++i) {
        const Scalar normalized = ((bias ? t[i] + bias[i] : t[i]) - mean) * inverse_std;
        const Scalar activated = std::max(normalized * gamma[i] + beta[i], Scalar(0));
        h[i] = (h[i] + activated) * scale[i];
    }
}

}  // namespace nwc::detail
