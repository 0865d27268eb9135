// Reductions (sum and mean over everything, each row, each column; the MSE loss) and the
// normalizations over the last axis (each row): layer norm and RMS norm, optionally affine.
//
// Both norms keep the normalized input x_hat (m x n) and 1/sigma per row (m x 1) for backward, which
// then needs no second pass over the statistics:
//   layer norm: dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),   g = dy * gamma
//   RMS norm:   dx = rstd * (g - x_hat * mean(g * x_hat))
#pragma once

#include <cmath>

#include "nwc/autograd/tape.hpp"

namespace nwc::autograd {
namespace detail {

enum class ReduceAxis { all, each_row, each_col };

/// Records a sum over `axis` multiplied by `factor` (1 for a sum, 1/count for a mean).
template <class Scalar>
Var reduce_sum(Tape<Scalar>& tape, Var x, ReduceAxis axis, Scalar factor, const char* op_name) {
    const Var out = tape.record(op_name, {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        auto& target = t.grad(n.inputs[0]);
        const Scalar factor = n.constants[0];
        switch (ReduceAxis(n.indices[0])) {
            case ReduceAxis::all: target.array() += factor * n.grad(0, 0); break;
            case ReduceAxis::each_row: target.colwise() += factor * n.grad.col(0); break;
            case ReduceAxis::each_col: target.rowwise() += factor * n.grad.row(0); break;
        }
    });
    Node<Scalar>& node = tape.node(out);
    node.indices.push_back(std::int64_t(axis));
    node.constants[0] = factor;
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    switch (axis) {
        case ReduceAxis::all: result.resize(1, 1); result(0, 0) = factor * input.sum(); break;
        case ReduceAxis::each_row: result.resize(input.rows(), 1); result.noalias() = factor * input.rowwise().sum(); break;
        case ReduceAxis::each_col: result.resize(1, input.cols()); result.noalias() = factor * input.colwise().sum(); break;
    }
    return out;
}

}  // namespace detail

/// Sum of all elements (1 x 1).
template <class Scalar>
Var sum(Tape<Scalar>& tape, Var x) {
    return detail::reduce_sum(tape, x, detail::ReduceAxis::all, Scalar(1), "sum");
}
/// Mean of all elements (1 x 1).
template <class Scalar>
Var mean(Tape<Scalar>& tape, Var x) {
    return detail::reduce_sum(tape, x, detail::ReduceAxis::all, Scalar(1) / Scalar(tape.value(x).size()), "mean");
}
/// Sum of each row (m x n -> m x 1).
template <class Scalar>
Var row_sum(Tape<Scalar>& tape, Var x) {
    return detail::reduce_sum(tape, x, detail::ReduceAxis::each_row, Scalar(1), "row_sum");
}
/// Mean of each row (m x n -> m x 1).
template <class Scalar>
Var row_mean(Tape<Scalar>& tape, Var x) {
    return detail::reduce_sum(tape, x, detail::ReduceAxis::each_row, Scalar(1) / Scalar(tape.cols(x)), "row_mean");
}
/// Sum of each column (m x n -> 1 x n).
template <class Scalar>
Var col_sum(Tape<Scalar>& tape, Var x) {
    return detail::reduce_sum(tape, x, detail::ReduceAxis::each_col, Scalar(1), "col_sum");
}
/// Mean of each column (m x n -> 1 x n).
template <class Scalar>
Var col_mean(Tape<Scalar>& tape, Var x) {
    return detail::reduce_sum(tape, x, detail::ReduceAxis::each_col, Scalar(1) / Scalar(tape.rows(x)), "col_mean");
}

/// mean((a - b)^2) over all elements as one node (1 x 1); a and b have the same shape.
template <class Scalar>
Var mse_loss(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("mse_loss", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Scalar factor = Scalar(2) * n.grad(0, 0) / Scalar(n.saved[0].size());
        if (t.requires_grad(n.inputs[0])) t.accumulate_grad(n.inputs[0], factor * n.saved[0]);
        if (t.requires_grad(n.inputs[1])) t.accumulate_grad(n.inputs[1], -factor * n.saved[0]);
    });
    const auto &left = tape.value(a), &right = tape.value(b);
    NWC_ASSERT(left.rows() == right.rows() && left.cols() == right.cols());
    auto& difference = tape.node(out).saved[0];
    difference.resize(left.rows(), left.cols());
    difference.noalias() = left - right;
    auto& result = tape.output(out);
    result.resize(1, 1);
    result(0, 0) = difference.squaredNorm() / Scalar(difference.size());
    return out;
}

namespace detail {

/// Shared by layer_norm and rms_norm: `centered` says whether the row mean is subtracted.
template <class Scalar>
Var normalize_rows(Tape<Scalar>& tape, Var x, Var gamma, Var beta, Scalar epsilon, bool centered,
                   const char* op_name) {
    Var operands[3] = {x, Var{}, Var{}};
    std::size_t operand_count = 1;
    if (gamma.valid()) operands[operand_count++] = gamma;
    if (beta.valid()) operands[operand_count++] = beta;
    const Var out = tape.record(op_name, std::span<const Var>(operands, operand_count),
                                [](Tape<Scalar>& t, Node<Scalar>& n) {
        const bool centered = n.indices[0] != 0, has_gamma = n.indices[1] != 0, has_beta = n.indices[2] != 0;
        const auto& x_hat = n.saved[0];
        const auto& rstd = n.saved[1];
        const Var input = n.inputs[0];
        const Var gamma = has_gamma ? n.inputs[1] : Var{};
        const Var beta = has_beta ? n.inputs[has_gamma ? 2 : 1] : Var{};
        if (has_gamma && t.requires_grad(gamma))
            t.accumulate_grad(gamma, (n.grad.array() * x_hat.array()).matrix().colwise().sum());
        if (has_beta && t.requires_grad(beta)) t.accumulate_grad(beta, n.grad.colwise().sum());
        if (!t.requires_grad(input)) return;
        bool overwrite = false;
        auto& target = t.grad_for_update(input, overwrite);
        const Index cols = x_hat.cols();
        // g is an expression (never materialized) so the row loop allocates nothing.
        auto accumulate_row = [&](Index i, const auto& g) {
            const Scalar projection = (g * x_hat.row(i).array()).sum() / Scalar(cols);
            const Scalar g_mean = centered ? g.sum() / Scalar(cols) : Scalar(0);
            const auto row_gradient = rstd(i, 0) * (g - g_mean - x_hat.row(i).array() * projection);
            if (overwrite) target.row(i).array() = row_gradient;
            else target.row(i).array() += row_gradient;
        };
        for (Index i = 0; i < x_hat.rows(); ++i) {
            if (has_gamma) accumulate_row(i, n.grad.row(i).array() * t.value(gamma).row(0).array());
            else accumulate_row(i, n.grad.row(i).array());
        }
    });
    Node<Scalar>& node = tape.node(out);
    node.indices.assign({centered ? 1 : 0, gamma.valid() ? 1 : 0, beta.valid() ? 1 : 0});
    const auto& input = tape.value(x);
    const Index rows = input.rows(), cols = input.cols();
    auto& x_hat = node.saved[0];
    auto& rstd = node.saved[1];
    x_hat.resize(rows, cols);
    rstd.resize(rows, 1);
    for (Index i = 0; i < rows; ++i) {
        const Scalar row_mean = centered ? input.row(i).mean() : Scalar(0);
        const Scalar variance = (input.row(i).array() - row_mean).square().sum() / Scalar(cols);
        rstd(i, 0) = Scalar(1) / std::sqrt(variance + epsilon);
        x_hat.row(i).array() = (input.row(i).array() - row_mean) * rstd(i, 0);
    }
    auto& result = tape.output(out);
    result.resize(rows, cols);
    if (gamma.valid()) {
        const auto& scale = tape.value(gamma);
        NWC_ASSERT(scale.rows() == 1 && scale.cols() == cols);
        result.array() = x_hat.array().rowwise() * scale.row(0).array();
    } else {
        result = x_hat;
    }
    if (beta.valid()) {
        const auto& shift = tape.value(beta);
        NWC_ASSERT(shift.rows() == 1 && shift.cols() == cols);
        result.rowwise() += shift.row(0);
    }
    return out;
}

}  // namespace detail

/// Layer norm over each row: (x - mean) / sqrt(var + epsilon) * gamma + beta, with the biased
/// variance (torch.nn.LayerNorm). gamma and beta are 1 x n, or Var{} for none.
template <class Scalar>
Var layer_norm(Tape<Scalar>& tape, Var x, Var gamma = Var{}, Var beta = Var{}, Scalar epsilon = Scalar(1e-5)) {
    return detail::normalize_rows(tape, x, gamma, beta, epsilon, true, "layer_norm");
}

/// RMS norm over each row: x / sqrt(mean(x^2) + epsilon) * gamma (llama2.c's rmsnorm; gamma
/// 1 x n or Var{}).
template <class Scalar>
Var rms_norm(Tape<Scalar>& tape, Var x, Var gamma = Var{}, Scalar epsilon = Scalar(1e-5)) {
    return detail::normalize_rows(tape, x, gamma, Var{}, epsilon, false, "rms_norm");
}

}  // namespace nwc::autograd
