// Matrix products and the fully connected layer, with their backward passes.
//
// All products go through Eigen's GEMM with noalias(), so neither the forward nor the backward
// pass materializes a transpose: a row-major matrix read transposed is a column-major one, which
// Eigen's GEMM kernels take directly. Their parameters' initialization (init_linear) is
// autograd/parameter.hpp's.
#pragma once

#include <span>

#include "nwc/autograd/tape.hpp"

namespace nwc::autograd {

/// C = A B (A: m x k, B: k x n).
template <class Scalar>
Var matmul(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("matmul", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var a = n.inputs[0], b = n.inputs[1];
        // dA = dC B^T, dB = A^T dC
        if (t.requires_grad(a)) t.accumulate_grad(a, n.grad * t.value(b).transpose());
        if (t.requires_grad(b)) t.accumulate_grad(b, t.value(a).transpose() * n.grad);
    });
    const auto& left = tape.value(a);
    const auto& right = tape.value(b);
    NWC_ASSERT(left.cols() == right.rows());
    auto& result = tape.output(out);
    result.resize(left.rows(), right.cols());
    result.noalias() = left * right;
    return out;
}

/// C = A B^T (A: m x k, B: n x k). With B a torch-layout weight [out, in] this is x W^T.
template <class Scalar>
Var matmul_nt(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("matmul_nt", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var a = n.inputs[0], b = n.inputs[1];
        // dA = dC B, dB = dC^T A
        if (t.requires_grad(a)) t.accumulate_grad(a, n.grad * t.value(b));
        if (t.requires_grad(b)) t.accumulate_grad(b, n.grad.transpose() * t.value(a));
    });
    const auto& left = tape.value(a);
    const auto& right = tape.value(b);
    NWC_ASSERT(left.cols() == right.cols());
    auto& result = tape.output(out);
    result.resize(left.rows(), right.rows());
    result.noalias() = left * right.transpose();
    return out;
}

/// C = A^T B (A: k x m, B: k x n).
template <class Scalar>
Var matmul_tn(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("matmul_tn", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var a = n.inputs[0], b = n.inputs[1];
        // dA = B dC^T, dB = A dC
        if (t.requires_grad(a)) t.accumulate_grad(a, t.value(b) * n.grad.transpose());
        if (t.requires_grad(b)) t.accumulate_grad(b, t.value(a) * n.grad);
    });
    const auto& left = tape.value(a);
    const auto& right = tape.value(b);
    NWC_ASSERT(left.rows() == right.rows());
    auto& result = tape.output(out);
    result.resize(left.cols(), right.cols());
    result.noalias() = left.transpose() * right;
    return out;
}

/// Fully connected layer in torch's layout: y = x W^T + bias, x: m x in, W: out x in,
/// bias: 1 x out or an invalid Var for none. One node (GEMM + bias in one pass over y).
template <class Scalar>
Var linear(Tape<Scalar>& tape, Var x, Var weight, Var bias = Var{}) {
    const bool has_bias = bias.valid();
    const Var inputs_with_bias[3] = {x, weight, bias};
    const Var out = tape.record("linear", std::span<const Var>(inputs_with_bias, has_bias ? 3 : 2),
                                [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var x = n.inputs[0], weight = n.inputs[1];
        if (t.requires_grad(x)) t.accumulate_grad(x, n.grad * t.value(weight));
        if (t.requires_grad(weight)) t.accumulate_grad(weight, n.grad.transpose() * t.value(x));
        if (n.inputs.size() == 3 && t.requires_grad(n.inputs[2]))
            t.accumulate_grad(n.inputs[2], n.grad.colwise().sum());
    });
    const auto& input = tape.value(x);
    const auto& weights = tape.value(weight);
    NWC_ASSERT(input.cols() == weights.cols());
    auto& result = tape.output(out);
    result.resize(input.rows(), weights.rows());
    if (has_bias) {
        const auto& offsets = tape.value(bias);
        NWC_ASSERT(offsets.rows() == 1 && offsets.cols() == weights.rows());
        result.rowwise() = offsets.row(0);
        result.noalias() += input * weights.transpose();
    } else {
        result.noalias() = input * weights.transpose();
    }
    return out;
}

}  // namespace nwc::autograd
