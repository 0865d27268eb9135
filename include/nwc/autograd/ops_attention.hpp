// Attention and language-model building blocks: row-wise softmax with an optional causal mask,
// log-softmax and cross-entropy over rows of logits, and rotary position embedding (RoPE)
// exactly as llama2.c applies it.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "nwc/autograd/tape.hpp"
#include "nwc/core/error.hpp"

namespace nwc::autograd {

/// Softmax of each row. With `causal`, entry (i, j) is masked (probability 0, no gradient) when
/// j > i + (cols - rows): for square scores that is "key after query"; for a query block that is
/// the last `rows` positions of a longer key sequence (a KV cache) the mask aligns bottom-right.
template <class Scalar>
Var softmax_rows(Tape<Scalar>& tape, Var x, bool causal = false) {
    const Var out = tape.record("softmax_rows", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        // dx = y * (dy - sum_j(dy * y)); masked entries have y = 0 and so get 0.
        bool overwrite = false;
        auto& target = t.grad_for_update(n.inputs[0], overwrite);
        const auto& y = n.value;
        for (Index i = 0; i < y.rows(); ++i) {
            const Scalar dot = n.grad.row(i).dot(y.row(i));
            const auto row_gradient = y.row(i).array() * (n.grad.row(i).array() - dot);
            if (overwrite) target.row(i).array() = row_gradient;
            else target.row(i).array() += row_gradient;
        }
    });
    const auto& input = tape.value(x);
    const Index rows = input.rows(), cols = input.cols();
    NWC_ASSERT(!causal || cols >= rows);
    auto& result = tape.output(out);
    result.resize(rows, cols);
    for (Index i = 0; i < rows; ++i) {
        const Index visible = causal ? i + (cols - rows) + 1 : cols;
        auto kept = result.row(i).head(visible).array();
        const Scalar row_max = input.row(i).head(visible).maxCoeff();
        kept = (input.row(i).head(visible).array() - row_max).exp();
        kept /= kept.sum();
        result.row(i).tail(cols - visible).setZero();
    }
    return out;
}

/// log(softmax(x)) of each row, computed as x - max - log(sum(exp(x - max))).
template <class Scalar>
Var log_softmax_rows(Tape<Scalar>& tape, Var x) {
    const Var out = tape.record("log_softmax_rows", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        // dx = dy - softmax * sum_j(dy), softmax = exp(y).
        t.accumulate_grad(n.inputs[0], (n.grad.array() - n.value.array().exp().colwise() *
                                                              n.grad.rowwise().sum().array().col(0)).matrix());
    });
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.rows(), input.cols());
    for (Index i = 0; i < input.rows(); ++i) {
        const Scalar row_max = input.row(i).maxCoeff();
        const Scalar log_sum = std::log((input.row(i).array() - row_max).exp().sum());
        result.row(i).array() = input.row(i).array() - (row_max + log_sum);
    }
    return out;
}

/// Mean over rows of -log softmax(logits)[row, targets[row]] (1 x 1): the language-model loss.
/// Throws errc::invalid_argument for a target outside [0, cols).
template <class Scalar>
Var cross_entropy_rows(Tape<Scalar>& tape, Var logits, std::span<const std::int32_t> targets) {
    const Var out = tape.record("cross_entropy_rows", {logits}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        // dx = (softmax - one_hot(target)) * dy / rows; saved[0] holds the softmax.
        const Scalar factor = n.grad(0, 0) / Scalar(n.saved[0].rows());
        auto& target = t.grad(n.inputs[0]);
        target += factor * n.saved[0];
        for (std::size_t i = 0; i < n.indices.size(); ++i) target(Index(i), Index(n.indices[i])) -= factor;
    });
    const auto& input = tape.value(logits);
    require(Index(targets.size()) == input.rows(), errc::invalid_argument, "cross_entropy_rows: ", targets.size(),
            " targets for ", input.rows(), " rows of logits");
    Node<Scalar>& node = tape.node(out);
    auto& probabilities = node.saved[0];
    probabilities.resize(input.rows(), input.cols());
    double total = 0.0;
    for (Index i = 0; i < input.rows(); ++i) {
        const std::int32_t target = targets[std::size_t(i)];
        require(target >= 0 && target < input.cols(), errc::invalid_argument, "cross_entropy_rows: target ", target,
                " of row ", i, " is outside the ", input.cols(), " classes");
        node.indices.push_back(target);
        const Scalar row_max = input.row(i).maxCoeff();
        probabilities.row(i).array() = (input.row(i).array() - row_max).exp();
        const Scalar row_sum = probabilities.row(i).sum();
        probabilities.row(i) /= row_sum;
        total += double(row_max + std::log(row_sum) - input(i, target));
    }
    auto& result = tape.output(out);
    result.resize(1, 1);
    result(0, 0) = Scalar(total / double(input.rows()));
    return out;
}

/// Rotary position embedding on x (T x (heads * head_dim)); row t is position position_offset + t.
/// Within every head, the pair (2k, 2k+1) is rotated by the angle pos * theta^(-2k / head_dim):
///   (v0, v1) -> (v0 cos - v1 sin, v0 sin + v1 cos)   (llama2.c, theta = 10000).
/// Backward rotates the gradient by the opposite angle.
template <class Scalar>
Var rope(Tape<Scalar>& tape, Var x, Index head_dim, Index position_offset = 0, Scalar theta = Scalar(10000)) {
    // angles (T x head_dim/2) are kept as cos in saved[0] and sin in saved[1].
    const Var out = tape.record("rope", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        auto& target = t.grad(n.inputs[0]);
        const auto &cosines = n.saved[0], &sines = n.saved[1];
        const Index head_dim = Index(n.indices[0]);
        for (Index row = 0; row < n.grad.rows(); ++row)
            for (Index col = 0; col < n.grad.cols(); col += 2) {
                const Index pair = (col % head_dim) / 2;
                const Scalar c = cosines(row, pair), s = sines(row, pair);
                const Scalar g0 = n.grad(row, col), g1 = n.grad(row, col + 1);
                target(row, col) += g0 * c + g1 * s;
                target(row, col + 1) += -g0 * s + g1 * c;
            }
    });
    const auto& input = tape.value(x);
    NWC_ASSERT(head_dim > 0 && head_dim % 2 == 0 && input.cols() % head_dim == 0);
    Node<Scalar>& node = tape.node(out);
    node.indices.push_back(head_dim);
    const Index rows = input.rows(), pairs = head_dim / 2;
    auto &cosines = node.saved[0], &sines = node.saved[1];
    cosines.resize(rows, pairs);
    sines.resize(rows, pairs);
    for (Index row = 0; row < rows; ++row)
        for (Index pair = 0; pair < pairs; ++pair) {
            // In Scalar precision, operation for operation as llama2.c (float):
            // freq = 1 / powf(10000, head_dim_index / (float)head_size); val = pos * freq.
            const Scalar frequency = Scalar(1) / std::pow(theta, Scalar(2 * pair) / Scalar(head_dim));
            const Scalar angle = Scalar(position_offset + row) * frequency;
            cosines(row, pair) = std::cos(angle);
            sines(row, pair) = std::sin(angle);
        }
    auto& result = tape.output(out);
    result.resize(rows, input.cols());
    for (Index row = 0; row < rows; ++row)
        for (Index col = 0; col < input.cols(); col += 2) {
            const Index pair = (col % head_dim) / 2;
            const Scalar c = cosines(row, pair), s = sines(row, pair);
            const Scalar v0 = input(row, col), v1 = input(row, col + 1);
            result(row, col) = v0 * c - v1 * s;
            result(row, col + 1) = v0 * s + v1 * c;
        }
    return out;
}

}  // namespace nwc::autograd
