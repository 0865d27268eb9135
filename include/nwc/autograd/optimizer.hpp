// Optimizers for Parameter<Scalar>: Adam / AdamW, global-norm gradient clipping, and
// learning-rate schedules.
//
// Adam follows torch.optim.Adam (bias-corrected moments, epsilon added to the corrected root
// second moment) and, with weight_decay > 0, torch.optim.AdamW's decoupled decay
// (p <- p (1 - lr wd) before the Adam update). Step scalars are computed in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include "nwc/autograd/tape.hpp"

namespace nwc::autograd {

/// Adam's hyper-parameters (torch's defaults).
struct AdamOptions {
    double learning_rate = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double epsilon = 1e-8;
    double weight_decay = 0.0;  ///< Decoupled (AdamW) when > 0; 0 gives plain Adam.
};

/// Adam / AdamW over a fixed list of parameters owned elsewhere.
template <class Scalar>
class Adam {
public:
    using Matrix = RowMajorMatrix<Scalar>;

    explicit Adam(std::vector<Parameter<Scalar>*> parameters, AdamOptions options = {})
        : m_parameters(std::move(parameters)), m_options(options) {
        m_first_moments.reserve(m_parameters.size());
        m_second_moments.reserve(m_parameters.size());
        for (Parameter<Scalar>* parameter : m_parameters) {
            NWC_ASSERT(parameter != nullptr);
            m_first_moments.push_back(Matrix::Zero(parameter->rows(), parameter->cols()));
            m_second_moments.push_back(Matrix::Zero(parameter->rows(), parameter->cols()));
        }
    }

    /// One update of every parameter from its current gradient, at the current learning rate.
    void step() {
        ++m_step_count;
        const double bias_correction1 = 1.0 - std::pow(m_options.beta1, double(m_step_count));
        const double bias_correction2 = 1.0 - std::pow(m_options.beta2, double(m_step_count));
        const Scalar step_size = Scalar(m_options.learning_rate / bias_correction1);
        const Scalar root_correction2 = Scalar(std::sqrt(bias_correction2));
        const Scalar beta1 = Scalar(m_options.beta1), beta2 = Scalar(m_options.beta2);
        const Scalar epsilon = Scalar(m_options.epsilon);
        const Scalar decay = Scalar(1.0 - m_options.learning_rate * m_options.weight_decay);
        for (std::size_t i = 0; i < m_parameters.size(); ++i) {
            Parameter<Scalar>& parameter = *m_parameters[i];
            NWC_ASSERT(parameter.grad.rows() == parameter.rows() && parameter.grad.cols() == parameter.cols());
            auto gradient = parameter.grad.array();
            auto first = m_first_moments[i].array();
            auto second = m_second_moments[i].array();
            if (m_options.weight_decay != 0.0) parameter.value *= decay;
            first = beta1 * first + (Scalar(1) - beta1) * gradient;
            second = beta2 * second + (Scalar(1) - beta2) * gradient.square();
            parameter.value.array() -= step_size * first / (second.sqrt() / root_correction2 + epsilon);
        }
    }

    /// Sets every parameter's gradient to zero.
    void zero_grad() {
        for (Parameter<Scalar>* parameter : m_parameters) parameter->zero_grad();
    }

    double learning_rate() const noexcept { return m_options.learning_rate; }
    /// Changes the learning rate for the following steps (call it with a schedule's value).
    void set_learning_rate(double learning_rate) noexcept { m_options.learning_rate = learning_rate; }
    const AdamOptions& options() const noexcept { return m_options; }
    /// Number of step() calls so far (the t of the bias corrections).
    std::int64_t step_count() const noexcept { return m_step_count; }
    std::span<Parameter<Scalar>* const> parameters() const noexcept { return m_parameters; }

    /// Optimizer state (tests check it): the first and second moments of parameter i.
    Matrix& first_moment(std::size_t i) { return m_first_moments.at(i); }
    Matrix& second_moment(std::size_t i) { return m_second_moments.at(i); }

private:
    std::vector<Parameter<Scalar>*> m_parameters;
    AdamOptions m_options;
    std::vector<Matrix> m_first_moments;
    std::vector<Matrix> m_second_moments;
    std::int64_t m_step_count = 0;
};

/// The L2 norm of all gradients together (accumulated in double).
template <class Scalar>
double gradient_norm(std::span<Parameter<Scalar>* const> parameters) {
    double squares = 0.0;
    for (const Parameter<Scalar>* parameter : parameters)
        squares += double(parameter->grad.template cast<double>().squaredNorm());
    return std::sqrt(squares);
}

/// torch.nn.utils.clip_grad_norm_: when the global gradient norm exceeds max_norm, scales every
/// gradient by max_norm / (norm + 1e-6). Returns the norm before clipping (NaN/inf tells the
/// caller the step should be skipped).
template <class Scalar>
double clip_gradient_norm(std::span<Parameter<Scalar>* const> parameters, double max_norm) {
    const double norm = gradient_norm(parameters);
    const double coefficient = max_norm / (norm + 1e-6);
    if (coefficient < 1.0)
        for (Parameter<Scalar>* parameter : parameters) parameter->grad *= Scalar(coefficient);
    return norm;
}
template <class Scalar>
double clip_gradient_norm(const std::vector<Parameter<Scalar>*>& parameters, double max_norm) {
    return clip_gradient_norm(std::span<Parameter<Scalar>* const>(parameters), max_norm);
}

/// A constant learning rate.
struct ConstantSchedule {
    double learning_rate = 1e-3;
    /// The rate for step `step` (0-based index of the step about to be taken).
    double operator()(std::int64_t /*step*/) const noexcept { return learning_rate; }
};

/// Linear warm-up from peak / warmup_steps to peak over warmup_steps steps, then cosine decay
/// from peak to final_learning_rate at total_steps (and final_learning_rate after it).
struct WarmupCosineSchedule {
    double peak_learning_rate = 1e-3;
    std::int64_t warmup_steps = 0;
    std::int64_t total_steps = 1;
    double final_learning_rate = 0.0;

    /// The rate for step `step` (0-based index of the step about to be taken).
    double operator()(std::int64_t step) const noexcept {
        if (step < warmup_steps) return peak_learning_rate * double(step + 1) / double(warmup_steps);
        const std::int64_t decay_steps = total_steps - warmup_steps;
        if (decay_steps <= 0) return final_learning_rate;
        const double progress = std::min(1.0, double(step - warmup_steps) / double(decay_steps));
        return final_learning_rate +
               0.5 * (peak_learning_rate - final_learning_rate) * (1.0 + std::cos(std::numbers::pi * progress));
    }
};

}  // namespace nwc::autograd
