// Elementwise ops: broadcasting add/sub/mul/div, scaling, the activations, and the quantization
// proxies and bounds of learned compression (uniform noise, straight-through rounding, clamp,
// CompressAI's lower bound).
//
// Broadcasting follows numpy on the two matrix axes: each operand's rows are either the output's
// rows or 1, and its columns the output's columns or 1 (a 1 x n bias row, an m x 1 per-row
// factor, a 1 x 1 scalar). Backward sums the gradient over the broadcast axes.
//
// Every unary op is written as a pair of Eigen array expressions (forward, derivative) side by
// side, so the loops stay vectorized where Eigen vectorizes the functions (exp, tanh, log).
#pragma once

#include <algorithm>
#include <cmath>

#include "nwc/autograd/tape.hpp"
#include "nwc/core/random.hpp"

namespace nwc::autograd {
namespace detail {

/// The broadcast shape of two operands (asserts they are compatible).
inline std::pair<Index, Index> broadcast_shape(Index rows_a, Index cols_a, Index rows_b, Index cols_b) {
    NWC_ASSERT(rows_a == rows_b || rows_a == 1 || rows_b == 1);
    NWC_ASSERT(cols_a == cols_b || cols_a == 1 || cols_b == 1);
    return {std::max(rows_a, rows_b), std::max(cols_a, cols_b)};
}

/// out (=|+=) op(broadcast a, broadcast b) where op takes two row-array expressions.
/// `out` must already have the broadcast shape.
template <bool accumulate, class Matrix, class Operation>
void broadcast_apply(const Matrix& a, const Matrix& b, Matrix& out, Operation operation) {
    using Scalar = typename Matrix::Scalar;
    using RowArray = Eigen::Array<Scalar, 1, Eigen::Dynamic>;
    const Index rows = out.rows(), cols = out.cols();
    auto store = [](auto&& target, const auto& expression) {
        if constexpr (accumulate) target += expression; else target = expression;
    };
    if (a.rows() == rows && a.cols() == cols && b.rows() == rows && b.cols() == cols) {
        store(out.array(), operation(a.array(), b.array()));
        return;
    }
    const bool full_a = a.cols() == cols, full_b = b.cols() == cols;
    for (Index i = 0; i < rows; ++i) {
        const Index row_a = a.rows() == 1 ? 0 : i, row_b = b.rows() == 1 ? 0 : i;
        auto target = out.row(i).array();
        if (full_a && full_b) store(target, operation(a.row(row_a).array(), b.row(row_b).array()));
        else if (full_a) store(target, operation(a.row(row_a).array(), RowArray::Constant(cols, b(row_b, 0))));
        else if (full_b) store(target, operation(RowArray::Constant(cols, a(row_a, 0)), b.row(row_b).array()));
        else store(target, operation(RowArray::Constant(cols, a(row_a, 0)), RowArray::Constant(cols, b(row_b, 0))));
    }
}

/// grad(var) += source summed over the axes on which var is broadcast, times `factor`.
template <class Scalar>
void accumulate_reduced(Tape<Scalar>& tape, Var var, const RowMajorMatrix<Scalar>& source, Scalar factor = 1) {
    const Index rows = tape.rows(var), cols = tape.cols(var);
    if (rows == source.rows() && cols == source.cols()) {
        if (factor == Scalar(1)) tape.accumulate_grad(var, source);
        else tape.accumulate_grad(var, factor * source);
    }
    else if (rows == 1 && cols == 1) tape.grad(var)(0, 0) += factor * source.sum();
    else if (rows == 1) tape.accumulate_grad(var, factor * source.colwise().sum());
    else tape.accumulate_grad(var, factor * source.rowwise().sum());
}

/// Records a unary elementwise op from an array-expression pair: y = forward(x, c) and
/// dx += derivative(dy, x, y, c), with c the node's constants.
template <class Scalar, class Forward, class Derivative>
Var unary_op(Tape<Scalar>& tape, Var x, const char* op_name, Forward forward, Derivative derivative,
             Scalar constant0 = 0, Scalar constant1 = 0) {
    const Var out = tape.record(op_name, {x}, [derivative](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var input = n.inputs[0];
        t.accumulate_grad(input, derivative(n.grad.array(), t.value(input).array(), n.value.array(), n.constants).matrix());
    });
    Node<Scalar>& node = tape.node(out);
    node.constants[0] = constant0;
    node.constants[1] = constant1;
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.rows(), input.cols());
    result.array() = forward(input.array(), node.constants);
    return out;
}

}  // namespace detail

/// a + b with broadcasting (e.g. m x n plus a 1 x n bias row).
template <class Scalar>
Var add(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("add", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        if (t.requires_grad(n.inputs[0])) detail::accumulate_reduced(t, n.inputs[0], n.grad);
        if (t.requires_grad(n.inputs[1])) detail::accumulate_reduced(t, n.inputs[1], n.grad);
    });
    const auto &left = tape.value(a), &right = tape.value(b);
    auto [rows, cols] = detail::broadcast_shape(left.rows(), left.cols(), right.rows(), right.cols());
    auto& result = tape.output(out);
    result.resize(rows, cols);
    detail::broadcast_apply<false>(left, right, result, [](const auto& u, const auto& v) { return u + v; });
    return out;
}

/// a - b with broadcasting.
template <class Scalar>
Var sub(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("sub", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        if (t.requires_grad(n.inputs[0])) detail::accumulate_reduced(t, n.inputs[0], n.grad);
        if (t.requires_grad(n.inputs[1])) detail::accumulate_reduced(t, n.inputs[1], n.grad, Scalar(-1));
    });
    const auto &left = tape.value(a), &right = tape.value(b);
    auto [rows, cols] = detail::broadcast_shape(left.rows(), left.cols(), right.rows(), right.cols());
    auto& result = tape.output(out);
    result.resize(rows, cols);
    detail::broadcast_apply<false>(left, right, result, [](const auto& u, const auto& v) { return u - v; });
    return out;
}

/// a * b elementwise with broadcasting (e.g. the level modulation x * E[level]).
template <class Scalar>
Var mul(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("mul", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        auto times = [](const auto& u, const auto& v) { return u * v; };
        for (int k = 0; k < 2; ++k) {
            const Var self = n.inputs[std::size_t(k)], other = n.inputs[std::size_t(1 - k)];
            if (!t.requires_grad(self)) continue;
            if (t.rows(self) == n.grad.rows() && t.cols(self) == n.grad.cols()) {
                bool overwrite = false;
                auto& target = t.grad_for_update(self, overwrite);
                if (overwrite) detail::broadcast_apply<false>(n.grad, t.value(other), target, times);
                else detail::broadcast_apply<true>(n.grad, t.value(other), target, times);
            } else {  // self was broadcast: form the full product, then sum it down
                n.saved[0].resize(n.grad.rows(), n.grad.cols());
                detail::broadcast_apply<false>(n.grad, t.value(other), n.saved[0], times);
                detail::accumulate_reduced(t, self, n.saved[0]);
            }
        }
    });
    const auto &left = tape.value(a), &right = tape.value(b);
    auto [rows, cols] = detail::broadcast_shape(left.rows(), left.cols(), right.rows(), right.cols());
    auto& result = tape.output(out);
    result.resize(rows, cols);
    detail::broadcast_apply<false>(left, right, result, [](const auto& u, const auto& v) { return u * v; });
    return out;
}

/// a / b elementwise with broadcasting.
template <class Scalar>
Var div(Tape<Scalar>& tape, Var a, Var b) {
    const Var out = tape.record("div", {a, b}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const Var a = n.inputs[0], b = n.inputs[1];
        // quotient = dy / b; da = quotient, db = -quotient * (a / b) = -quotient * y
        auto& quotient = n.saved[0];
        quotient.resize(n.grad.rows(), n.grad.cols());
        detail::broadcast_apply<false>(n.grad, t.value(b), quotient, [](const auto& u, const auto& v) { return u / v; });
        if (t.requires_grad(a)) detail::accumulate_reduced(t, a, quotient);
        if (t.requires_grad(b)) {
            quotient.array() *= n.value.array();
            detail::accumulate_reduced(t, b, quotient, Scalar(-1));
        }
    });
    const auto &left = tape.value(a), &right = tape.value(b);
    auto [rows, cols] = detail::broadcast_shape(left.rows(), left.cols(), right.rows(), right.cols());
    auto& result = tape.output(out);
    result.resize(rows, cols);
    detail::broadcast_apply<false>(left, right, result, [](const auto& u, const auto& v) { return u / v; });
    return out;
}

/// factor * x.
template <class Scalar>
Var scale(Tape<Scalar>& tape, Var x, Scalar factor) {
    return detail::unary_op(tape, x, "scale", [](const auto& v, const Scalar* c) { return c[0] * v; },
                            [](const auto& dy, const auto&, const auto&, const Scalar* c) { return c[0] * dy; }, factor);
}

/// x + offset.
template <class Scalar>
Var add_scalar(Tape<Scalar>& tape, Var x, Scalar offset) {
    return detail::unary_op(tape, x, "add_scalar", [](const auto& v, const Scalar* c) { return v + c[0]; },
                            [](const auto& dy, const auto&, const auto&, const Scalar*) { return dy; }, offset);
}

/// -x.
template <class Scalar>
Var neg(Tape<Scalar>& tape, Var x) { return scale(tape, x, Scalar(-1)); }

/// max(x, 0).
template <class Scalar>
Var relu(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "relu", [](const auto& v, const Scalar*) { return v.max(Scalar(0)); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) {
                                return (v > Scalar(0)).select(dy, Scalar(0));
                            });
}

/// x * sigmoid(x) (SiLU / swish, as in llama's feed-forward).
template <class Scalar>
Var silu(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "silu", [](const auto& v, const Scalar*) { return v / (Scalar(1) + (-v).exp()); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) {
                                const auto s = (Scalar(1) + (-v).exp()).inverse();
                                return dy * s * (Scalar(1) + v * (Scalar(1) - s));
                            });
}

/// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (torch's
/// approximate="tanh", GPT-2's gelu_new), not the erf form.
template <class Scalar>
Var gelu(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "gelu", [](const auto& v, const Scalar*) {
                                constexpr Scalar k = Scalar(0.7978845608028654), c = Scalar(0.044715);
                                return Scalar(0.5) * v * (Scalar(1) + (k * (v + c * v.cube())).tanh());
                            },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) {
                                constexpr Scalar k = Scalar(0.7978845608028654), c = Scalar(0.044715);
                                const auto th = (k * (v + c * v.cube())).tanh();
                                return dy * (Scalar(0.5) * (Scalar(1) + th) +
                                             Scalar(0.5) * v * (Scalar(1) - th.square()) * k *
                                                 (Scalar(1) + Scalar(3) * c * v.square()));
                            });
}

/// log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) so it never overflows.
template <class Scalar>
Var softplus(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "softplus",
                            [](const auto& v, const Scalar*) { return v.max(Scalar(0)) + (-v.abs()).exp().log1p(); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) {
                                return dy / (Scalar(1) + (-v).exp());
                            });
}

/// tanh(x).
template <class Scalar>
Var tanh(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "tanh", [](const auto& v, const Scalar*) { return v.tanh(); },
                            [](const auto& dy, const auto&, const auto& y, const Scalar*) {
                                return dy * (Scalar(1) - y.square());
                            });
}

/// 1 / (1 + exp(-x)).
template <class Scalar>
Var sigmoid(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "sigmoid", [](const auto& v, const Scalar*) { return (Scalar(1) + (-v).exp()).inverse(); },
                            [](const auto& dy, const auto&, const auto& y, const Scalar*) {
                                return dy * y * (Scalar(1) - y);
                            });
}

/// exp(x).
template <class Scalar>
Var exp(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "exp", [](const auto& v, const Scalar*) { return v.exp(); },
                            [](const auto& dy, const auto&, const auto& y, const Scalar*) { return dy * y; });
}

/// Natural logarithm (x > 0).
template <class Scalar>
Var log(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "log", [](const auto& v, const Scalar*) { return v.log(); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) { return dy / v; });
}

/// x^2.
template <class Scalar>
Var square(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "square", [](const auto& v, const Scalar*) { return v.square(); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) { return Scalar(2) * v * dy; });
}

/// sqrt(x) (x > 0 for a finite gradient).
template <class Scalar>
Var sqrt(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "sqrt", [](const auto& v, const Scalar*) { return v.sqrt(); },
                            [](const auto& dy, const auto&, const auto& y, const Scalar*) { return Scalar(0.5) * dy / y; });
}

/// |x|; the gradient at 0 is 0.
template <class Scalar>
Var abs(Tape<Scalar>& tape, Var x) {
    return detail::unary_op(tape, x, "abs", [](const auto& v, const Scalar*) { return v.abs(); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar*) { return dy * v.sign(); });
}

/// x^exponent for a constant exponent (x > 0 unless the exponent is an integer).
template <class Scalar>
Var pow(Tape<Scalar>& tape, Var x, Scalar exponent) {
    return detail::unary_op(tape, x, "pow", [](const auto& v, const Scalar* c) { return v.pow(c[0]); },
                            [](const auto& dy, const auto& v, const auto&, const Scalar* c) {
                                return dy * c[0] * v.pow(c[0] - Scalar(1));
                            },
                            exponent);
}

/// x + u with u ~ U(-0.5, 0.5) per element, drawn in row-major order from `random` as
/// random.uniform() - 0.5 (so a seed gives the same noise on every machine). Gradient: identity.
/// The training-time stand-in for rounding (Balle et al.).
template <class Scalar>
Var add_uniform_noise(Tape<Scalar>& tape, Var x, Random& random) {
    const Var out = tape.record("add_uniform_noise", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        t.accumulate_grad(n.inputs[0], n.grad);
    });
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.rows(), input.cols());
    const Scalar* source = input.data();
    Scalar* target = result.data();
    for (Index i = 0; i < input.size(); ++i) target[i] = source[i] + (Scalar(random.uniform()) - Scalar(0.5));
    return out;
}

/// Straight-through rounding: forward rounds to the nearest integer, ties to even (std::nearbyint
/// in the default rounding mode, as torch.round); backward passes the gradient unchanged.
template <class Scalar>
Var round_ste(Tape<Scalar>& tape, Var x) {
    const Var out = tape.record("round_ste", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        t.accumulate_grad(n.inputs[0], n.grad);
    });
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.rows(), input.cols());
    result = input.unaryExpr([](Scalar v) { return std::nearbyint(v); });
    return out;
}

/// min(max(x, low), high) with torch.clamp's gradient: passed where low <= x <= high, else 0.
template <class Scalar>
Var clamp(Tape<Scalar>& tape, Var x, Scalar low, Scalar high) {
    NWC_ASSERT(low <= high);
    const Var out = tape.record("clamp", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const auto& input = t.value(n.inputs[0]).array();
        const Scalar low = n.constants[0], high = n.constants[1];
        t.accumulate_grad(n.inputs[0], (input >= low && input <= high).select(n.grad.array(), Scalar(0)).matrix());
    });
    Node<Scalar>& node = tape.node(out);
    node.constants[0] = low;
    node.constants[1] = high;
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.rows(), input.cols());
    result.array() = input.array().max(low).min(high);
    return out;
}

/// max(x, bound) with CompressAI's LowerBound gradient: the gradient passes where x >= bound OR
/// where it is negative (it would push x up, back above the bound), else it is 0. This keeps a
/// likelihood clamped at 1e-9 trainable instead of stuck. Use clamp() for the plain gradient.
template <class Scalar>
Var lower_bound(Tape<Scalar>& tape, Var x, Scalar bound) {
    const Var out = tape.record("lower_bound", {x}, [](Tape<Scalar>& t, Node<Scalar>& n) {
        const auto& input = t.value(n.inputs[0]).array();
        const auto& upstream = n.grad.array();
        const Scalar bound = n.constants[0];
        t.accumulate_grad(n.inputs[0], (input >= bound || upstream < Scalar(0)).select(upstream, Scalar(0)).matrix());
    });
    tape.node(out).constants[0] = bound;
    const auto& input = tape.value(x);
    auto& result = tape.output(out);
    result.resize(input.rows(), input.cols());
    result.array() = input.array().max(bound);
    return out;
}

}  // namespace nwc::autograd
