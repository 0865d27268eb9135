// The fused epilogue of a ResidualMLP block, shared by the training and the inference paths.
//
// Read me first:
// - A block is `h <- (h + ReLU(LayerNorm(t))) * E[level]` where t = h W^T + b came out of a GEMM.
//   Everything after the GEMM touches each row once, so it is one pass per row here
//   ("epilogue"), not five tape ops with five full-matrix temporaries.
// - `block_epilogue_row(..., backend::scalar)` is the reference: plain loops, two-pass mean and
//   variance (LayerNorm's biased variance, epsilon 1e-5 as in torch.nn.LayerNorm). The training
//   op below calls exactly this function, so inference and training agree bit for bit on the
//   scalar backend. `backend::simd` overloads it in nn/mlp_kernels_simd.hpp (xsimd), which agrees
//   to about 1e-6 relative; without that header a simd call falls back to this reference.
// - The tape op saves nothing: backward recomputes the normalized row from t, which is still on the
//   tape, so a training step keeps one W-wide matrix per block instead of four.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "nwc/autograd/tape.hpp"
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

/// Backward of the epilogue for one row (bias already inside t). Adds into dt, dh_in (the gradient
/// w.r.t. the block's input h), dgamma, dbeta, dscale. `h_in` is the block's input row.
template <class Scalar>
void block_epilogue_row_backward(const Scalar* t, const Scalar* h_in, const Scalar* gamma, const Scalar* beta,
                                 const Scalar* scale, const Scalar* dout, Scalar* dt, Scalar* dh_in, Scalar* dgamma,
                                 Scalar* dbeta, Scalar* dscale, int width, std::vector<Scalar>& scratch) {
    Scalar mean = 0;
    for (int i = 0; i < width; ++i) mean += t[i];
    mean /= Scalar(width);
    Scalar variance = 0;
    for (int i = 0; i < width; ++i) variance += (t[i] - mean) * (t[i] - mean);
    variance /= Scalar(width);
    const Scalar inverse_std = Scalar(1) / std::sqrt(variance + Scalar(layer_norm_epsilon));
    scratch.resize(std::size_t(2 * width));
    Scalar* normalized = scratch.data();
    Scalar* dnormalized = scratch.data() + width;
    Scalar mean_dn = 0, mean_dn_n = 0;
    for (int i = 0; i < width; ++i) {
        normalized[i] = (t[i] - mean) * inverse_std;
        const Scalar pre_relu = normalized[i] * gamma[i] + beta[i];
        const Scalar activated = std::max(pre_relu, Scalar(0));
        dscale[i] += dout[i] * (h_in[i] + activated);
        const Scalar dsum = dout[i] * scale[i];
        if (dh_in) dh_in[i] += dsum;
        const Scalar dpre = pre_relu > Scalar(0) ? dsum : Scalar(0);
        dgamma[i] += dpre * normalized[i];
        dbeta[i] += dpre;
        dnormalized[i] = dpre * gamma[i];
        mean_dn += dnormalized[i];
        mean_dn_n += dnormalized[i] * normalized[i];
    }
    mean_dn /= Scalar(width);
    mean_dn_n /= Scalar(width);
    if (!dt) return;
    for (int i = 0; i < width; ++i) dt[i] += inverse_std * (dnormalized[i] - mean_dn - normalized[i] * mean_dn_n);
}

}  // namespace nwc::detail

namespace nwc::nn {

/// Records the fused block epilogue on a tape: `(h + ReLU(LayerNorm(t; gamma, beta))) * E[levels]`,
/// t: n x W (bias included), h: n x W, gamma/beta: 1 x W, embedding: levels x W, one level per row.
template <class Scalar>
autograd::Var residual_block(autograd::Tape<Scalar>& tape, autograd::Var t, autograd::Var h, autograd::Var gamma,
                             autograd::Var beta, autograd::Var embedding, std::span<const std::uint8_t> levels) {
    using autograd::Var;
    const auto& t_value = tape.value(t);
    const auto& h_value = tape.value(h);
    const auto& table = tape.value(embedding);
    const int width = int(t_value.cols());
    NWC_ASSERT(h_value.rows() == t_value.rows() && h_value.cols() == width);
    NWC_ASSERT(std::int64_t(levels.size()) == t_value.rows() && table.cols() == width);
    const Var out = tape.record("residual_block", {t, h, gamma, beta, embedding}, [](autograd::Tape<Scalar>& tp,
                                                                                     autograd::Node<Scalar>& node) {
        const Var t = node.inputs[0], h = node.inputs[1], gamma = node.inputs[2], beta = node.inputs[3],
                  embedding = node.inputs[4];
        const auto& t_value = tp.value(t);
        const auto& h_value = tp.value(h);
        const auto& gamma_value = tp.value(gamma);
        const auto& beta_value = tp.value(beta);
        const auto& table = tp.value(embedding);
        const int width = int(t_value.cols());
        // Gradients of the small parameters are summed in row order here, then added once.
        RowMajorMatrix<Scalar> dgamma = RowMajorMatrix<Scalar>::Zero(1, width);
        RowMajorMatrix<Scalar> dbeta = RowMajorMatrix<Scalar>::Zero(1, width);
        RowMajorMatrix<Scalar> dtable = RowMajorMatrix<Scalar>::Zero(table.rows(), width);
        Scalar* dt = tp.requires_grad(t) ? tp.grad(t).data() : nullptr;
        Scalar* dh = tp.requires_grad(h) ? tp.grad(h).data() : nullptr;
        std::vector<Scalar> scratch;
        for (Eigen::Index row = 0; row < t_value.rows(); ++row) {
            const auto level = node.indices[std::size_t(row)];
            const Eigen::Index offset = row * width;
            detail::block_epilogue_row_backward(t_value.row(row).data(), h_value.row(row).data(), gamma_value.data(),
                                                beta_value.data(), table.row(level).data(), node.grad.row(row).data(),
                                                dt ? dt + offset : nullptr, dh ? dh + offset : nullptr, dgamma.data(),
                                                dbeta.data(), dtable.row(level).data(), width, scratch);
        }
        if (tp.requires_grad(gamma)) tp.grad(gamma) += dgamma;
        if (tp.requires_grad(beta)) tp.grad(beta) += dbeta;
        if (tp.requires_grad(embedding)) tp.grad(embedding) += dtable;
    });
    auto& node = tape.node(out);
    node.indices.assign(levels.begin(), levels.end());
    auto& result = tape.output(out);
    result = h_value;
    const auto& gamma_value = tape.value(gamma);
    const auto& beta_value = tape.value(beta);
    for (Eigen::Index row = 0; row < t_value.rows(); ++row) {
        NWC_ASSERT(levels[std::size_t(row)] < table.rows());
        detail::block_epilogue_row<Scalar>(t_value.row(row).data(), nullptr, gamma_value.data(), beta_value.data(),
                                           table.row(levels[std::size_t(row)]).data(), result.row(row).data(), width,
                                           backend::scalar{});
    }
    return out;
}

}  // namespace nwc::nn
