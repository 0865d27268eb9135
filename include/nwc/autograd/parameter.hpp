// nwc::autograd::Parameter: a trainable matrix (value and gradient) owned by a model, and
// torch.nn.Linear's initialization of one.
//
// Read me first:
// - Apart from the tape (autograd/tape.hpp) so that a network which only runs inference
//   (ResidualMLP's infer(), the decoder a .nwc file embeds) stores its weights without pulling in
//   the tape or any op: <nwc/decode.hpp> includes this header and none of the rest of autograd/.
// - `tape.parameter(p)` records a leaf that reads p.value without copying and whose gradient IS
//   p.grad; backward passes accumulate into it until zero_grad().
#pragma once

#include <cmath>
#include <string>
#include <utility>

#include <Eigen/Core>

#include "nwc/core/random.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc::autograd {

using Index = Eigen::Index;

/// A trainable tensor owned by a model: its value and the gradient that backward accumulates.
template <class Scalar>
struct Parameter {
    using Matrix = RowMajorMatrix<Scalar>;

    Matrix value;
    Matrix grad;  ///< Same shape as value; accumulates across backward passes until zero_grad().
    std::string name;  ///< Optional, for checkpoints and messages.

    Parameter() = default;
    /// A rows x cols parameter filled with zeros.
    Parameter(Index rows, Index cols, std::string parameter_name = {})
        : value(Matrix::Zero(rows, cols)), grad(Matrix::Zero(rows, cols)), name(std::move(parameter_name)) {}
    /// A parameter with the given initial value.
    explicit Parameter(Matrix initial, std::string parameter_name = {})
        : value(std::move(initial)), grad(Matrix::Zero(value.rows(), value.cols())), name(std::move(parameter_name)) {}

    Index rows() const noexcept { return value.rows(); }
    Index cols() const noexcept { return value.cols(); }
    Index size() const noexcept { return value.size(); }
    /// Sets the gradient to zero (resizing it to the value's shape if someone resized the value).
    void zero_grad() { grad.setZero(value.rows(), value.cols()); }
};

/// torch.nn.Linear's default initialization: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)),
/// drawn in row-major order from `random` (deterministic).
template <class Scalar>
void init_linear(Parameter<Scalar>& weight, Parameter<Scalar>* bias, Random& random) {
    const double bound = 1.0 / std::sqrt(double(weight.cols()));
    for (Index i = 0; i < weight.value.size(); ++i)
        weight.value.data()[i] = Scalar(random.uniform(float(-bound), float(bound)));
    weight.zero_grad();
    if (bias) {
        for (Index i = 0; i < bias->value.size(); ++i)
            bias->value.data()[i] = Scalar(random.uniform(float(-bound), float(bound)));
        bias->zero_grad();
    }
}

}  // namespace nwc::autograd
