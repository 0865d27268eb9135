// The training path of a ResidualMLP: the network recorded on an autograd tape (nn::forward), and
// its fused block epilogue as a tape op with its backward pass (nn::residual_block).
//
// Read me first:
// - nn/residual_mlp.hpp holds the network and its inference path (infer(): no tape); this header
//   adds training, so a translation unit that only decodes never parses autograd's tape or ops.
// - nn::forward records Linear, then per block Linear + the fused epilogue, then Linear: the
//   graph of NWC-NOTES "Encode". The epilogue's forward is detail::block_epilogue_row(...,
//   backend::scalar) (nn/residual_block.hpp), the very function inference runs on the scalar
//   backend, so training and inference agree bit for bit there.
// - The tape op saves nothing: backward recomputes the normalized row from t, which is still on the
//   tape, so a training step keeps one W-wide matrix per block instead of four.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "nwc/autograd/ops_linear.hpp"
#include "nwc/autograd/tape.hpp"
#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"
#include "nwc/nn/residual_block.hpp"
#include "nwc/nn/residual_mlp.hpp"

namespace nwc::detail {

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

/// ResidualMLP's training path (a friend of the network: it reads the layers' parameters).
template <class Scalar>
struct ResidualMLPTape {
    static autograd::Var forward(autograd::Tape<Scalar>& tape, ResidualMLP<Scalar>& network, autograd::Var input,
                                 std::span<const std::uint8_t> levels) {
        NWC_ASSERT(tape.cols(input) == network.m_shape.input && std::int64_t(levels.size()) == tape.rows(input));
        autograd::Var h = autograd::linear(tape, input, tape.parameter(network.m_input_weight), tape.parameter(network.m_input_bias));
        const autograd::Var embedding = tape.parameter(network.m_embedding);
        for (auto& block : network.m_blocks) {
            const autograd::Var t = autograd::linear(tape, h, tape.parameter(block.weight), tape.parameter(block.bias));
            h = nn::residual_block(tape, t, h, tape.parameter(block.gamma), tape.parameter(block.beta), embedding, levels);
        }
        return autograd::linear(tape, h, tape.parameter(network.m_output_weight), tape.parameter(network.m_output_bias));
    }
};

/// Records `network` on `tape`: input n x in, one level per row; returns the n x out output.
/// Gradients reach the network's parameters through tape.parameter().
template <class Scalar>
autograd::Var forward(autograd::Tape<Scalar>& tape, ResidualMLP<Scalar>& network, autograd::Var input,
                      std::span<const std::uint8_t> levels) {
    return ResidualMLPTape<Scalar>::forward(tape, network, input, levels);
}

}  // namespace nwc::nn
