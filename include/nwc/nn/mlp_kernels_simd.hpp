// The simd backend's kernels of ResidualMLP inference, on xsimd batches.
//
// Read me first:
// - The block epilogue `h = (h + ReLU(LayerNorm(t + bias))) * E[level]` is the only part of
//   inference that is not a GEMM (Eigen runs those). It reads each row three times: sum, sum of
//   squared deviations (the same two-pass scheme as the scalar reference, so no cancellation when
//   |mean| >> std), then normalize + affine + ReLU + residual + level scale in one sweep that
//   writes h. Nothing is stored between the passes: recomputing t + bias costs one add and saves
//   a W-wide scratch row per thread.
// - The reference is detail::block_epilogue_row(..., backend::scalar) in nn/residual_block.hpp.
//   This kernel sums in batch-sized partial sums and uses FMA, so it agrees with the reference to
//   rounding (tests/test_backend_consistency.cpp: 1e-5 relative), not bit for bit.
// - On a build without any xsimd instruction set (xsimd::unavailable) the scalar kernel runs.
// - Why only the epilogue: the GEMMs are ~99% of the FLOPs (residual_mlp.hpp), and Eigen's SGEMM
//   already runs at the machine's FMA peak; docs/bench/decode.md measures the decoder against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"
#include "nwc/nn/residual_block.hpp"

namespace nwc::detail {

namespace mlp_simd {

template <class Scalar>
inline constexpr bool vectorizable = !std::is_same_v<xsimd::default_arch, xsimd::unavailable> &&
                                     (std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>);

/// t[i] + bias[i], or t[i] without a bias (the training path's linear op added it already).
template <bool HasBias, class Batch, class Scalar>
NWC_FORCE_INLINE Batch shifted_input(const Scalar* t, const Scalar* bias, int i) noexcept {
    if constexpr (HasBias)
        return Batch::load_unaligned(t + i) + Batch::load_unaligned(bias + i);
    else
        return Batch::load_unaligned(t + i);
}
template <bool HasBias, class Scalar>
NWC_FORCE_INLINE Scalar shifted_input(const Scalar* t, const Scalar* bias, int i) noexcept {
    if constexpr (HasBias)
        return t[i] + bias[i];
    else
        return t[i];
}

template <bool HasBias, class Scalar>
void epilogue_row(const Scalar* t, const Scalar* bias, const Scalar* gamma, const Scalar* beta, const Scalar* scale, Scalar* h,
                  int width) noexcept {
    using Batch = xsimd::batch<Scalar>;
    constexpr int lanes = int(Batch::size);
    const int vector_end = width - width % lanes;
    // Two accumulators: a row of 512 floats is 32 dependent adds otherwise.
    Batch sum_even(Scalar(0)), sum_odd(Scalar(0));
    int i = 0;
    for (; i + 2 * lanes <= vector_end; i += 2 * lanes) {
        sum_even += shifted_input<HasBias, Batch>(t, bias, i);
        sum_odd += shifted_input<HasBias, Batch>(t, bias, i + lanes);
    }
    for (; i < vector_end; i += lanes) sum_even += shifted_input<HasBias, Batch>(t, bias, i);
    Scalar sum = xsimd::hadd(sum_even + sum_odd);
    for (; i < width; ++i) sum += shifted_input<HasBias>(t, bias, i);
    const Scalar mean = sum / Scalar(width);

    const Batch mean_lanes(mean);
    Batch squares_even(Scalar(0)), squares_odd(Scalar(0));
    for (i = 0; i + 2 * lanes <= vector_end; i += 2 * lanes) {
        const Batch even = shifted_input<HasBias, Batch>(t, bias, i) - mean_lanes;
        const Batch odd = shifted_input<HasBias, Batch>(t, bias, i + lanes) - mean_lanes;
        squares_even = xsimd::fma(even, even, squares_even);
        squares_odd = xsimd::fma(odd, odd, squares_odd);
    }
    for (; i < vector_end; i += lanes) {
        const Batch centered = shifted_input<HasBias, Batch>(t, bias, i) - mean_lanes;
        squares_even = xsimd::fma(centered, centered, squares_even);
    }
    Scalar squares = xsimd::hadd(squares_even + squares_odd);
    for (; i < width; ++i) {
        const Scalar centered = shifted_input<HasBias>(t, bias, i) - mean;
        squares += centered * centered;
    }
    const Scalar inverse_std = Scalar(1) / std::sqrt(squares / Scalar(width) + Scalar(layer_norm_epsilon));

    const Batch inverse_std_lanes(inverse_std), zero(Scalar(0));
    for (i = 0; i < vector_end; i += lanes) {
        const Batch normalized = (shifted_input<HasBias, Batch>(t, bias, i) - mean_lanes) * inverse_std_lanes;
        const Batch activated = xsimd::max(xsimd::fma(normalized, Batch::load_unaligned(gamma + i), Batch::load_unaligned(beta + i)), zero);
        ((Batch::load_unaligned(h + i) + activated) * Batch::load_unaligned(scale + i)).store_unaligned(h + i);
    }
    for (; i < width; ++i) {
        const Scalar normalized = (shifted_input<HasBias>(t, bias, i) - mean) * inverse_std;
        const Scalar activated = std::max(normalized * gamma[i] + beta[i], Scalar(0));
        h[i] = (h[i] + activated) * scale[i];
    }
}

}  // namespace mlp_simd

/// SIMD epilogue for one row: h = (h + relu(gamma * normalize(t + bias) + beta)) * scale, `bias`
/// may be null. Agrees with the backend::scalar reference to about 1e-6 relative.
template <class Scalar>
void block_epilogue_row(const Scalar* t, const Scalar* bias, const Scalar* gamma, const Scalar* beta, const Scalar* scale,
                        Scalar* h, int width, backend::simd) {
    if constexpr (!mlp_simd::vectorizable<Scalar>) {
        block_epilogue_row(t, bias, gamma, beta, scale, h, width, backend::scalar{});
    } else if (bias != nullptr) {
        mlp_simd::epilogue_row<true>(t, bias, gamma, beta, scale, h, width);
    } else {
        mlp_simd::epilogue_row<false>(t, bias, gamma, beta, scale, h, width);
    }
}

}  // namespace nwc::detail
