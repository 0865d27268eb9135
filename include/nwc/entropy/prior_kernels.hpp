// Kernels of the factorized prior: one channel's L(x) over many points, its hand-written
// backward, and the numerically careful likelihood and its gradient.
//
// Points are processed as Eigen column arrays (all points of one channel, unit by unit), so the
// tanh and the multiply-adds are vectorized; a channel's 58 weights (prior_parameters_per_channel)
// are scalars. Backward recomputes nothing: the forward pass keeps each layer's inputs and tanh
// values (25 arrays of the point count per channel, reused across channels and steps).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "nwc/core/tensor.hpp"

namespace nwc::detail {

inline constexpr int prior_layer_count = 5;
/// Units per layer boundary: filters (3, 3, 3, 3) between a scalar input and a scalar logit.
inline constexpr std::array<int, prior_layer_count + 1> prior_widths = {1, 3, 3, 3, 3, 1};
/// The widest layer boundary: per-layer arrays hold prior_max_units biases and factors and
/// prior_max_units^2 matrix entries (unused entries of narrower layers stay 0).
inline constexpr int prior_max_units = 3;
inline constexpr std::size_t prior_max_matrix = std::size_t(prior_max_units * prior_max_units);
/// Parameters of one channel: per layer k an out x in matrix and out biases, and out factors for
/// every layer but the last (58 for filters (3, 3, 3, 3)).
inline constexpr int prior_parameters_per_channel = [] {
    int count = 0;
    for (std::size_t k = 0; k < prior_widths.size() - 1; ++k)
        count += prior_widths[k + 1] * prior_widths[k] + prior_widths[k + 1] + (k + 2 < prior_widths.size() ? prior_widths[k + 1] : 0);
    return count;
}();
static_assert(*std::max_element(prior_widths.begin(), prior_widths.end()) == prior_max_units);

inline double stable_sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
    const double e = std::exp(x);
    return e / (1.0 + e);
}
inline double stable_softplus(double x) { return x > 30.0 ? x : std::log1p(std::exp(x)); }

/// sigmoid(upper) - sigmoid(lower) computed on the side where both sigmoids are small
/// (CompressAI: flip the sign of both arguments when their sum is positive).
inline double sign_trick_difference(double lower, double upper) {
    const double sign = lower + upper > 0.0 ? -1.0 : 1.0;
    return std::abs(stable_sigmoid(sign * upper) - stable_sigmoid(sign * lower));
}

/// d bits / d lower and d bits / d upper for bits = -log2(max(likelihood, bound)), scaled by the
/// upstream gradient. Below the bound the gradient passes only when it raises the likelihood.
inline std::pair<double, double> bits_gradient(double lower, double upper, double upstream, double bound) {
    const double likelihood = sign_trick_difference(lower, upper);
    const double dlikelihood = -upstream / (std::max(likelihood, bound) * std::numbers::ln2);
    if (likelihood < bound && !(dlikelihood < 0.0)) return {0.0, 0.0};
    // sigmoid'(x) = s (1 - s) with s = sigmoid(-|x|), exact in the tails.
    auto derivative = [](double x) {
        const double s = stable_sigmoid(-std::abs(x));
        return s * (1.0 - s);
    };
    return {-dlikelihood * derivative(lower), dlikelihood * derivative(upper)};
}

/// One channel's weights, raw and transformed (softplus(H), sigmoid(H) = softplus'(H), tanh(f)).
template <class S>
struct PriorChannelWeights {
    std::array<std::array<S, prior_max_matrix>, prior_layer_count> matrix{};
    std::array<std::array<S, prior_max_units>, prior_layer_count> bias{};
    std::array<std::array<S, prior_max_units>, prior_layer_count - 1> factor{};
    std::array<std::array<S, prior_max_matrix>, prior_layer_count> softplus_matrix{};
    std::array<std::array<S, prior_max_matrix>, prior_layer_count> sigmoid_matrix{};
    std::array<std::array<S, prior_max_units>, prior_layer_count - 1> tanh_factor{};

    void prepare() {
        for (std::size_t k = 0; k < matrix.size(); ++k)
            for (std::size_t i = 0; i < prior_max_matrix; ++i) {
                softplus_matrix[k][i] = S(stable_softplus(double(matrix[k][i])));
                sigmoid_matrix[k][i] = S(stable_sigmoid(double(matrix[k][i])));
            }
        for (std::size_t k = 0; k < factor.size(); ++k)
            for (std::size_t i = 0; i < prior_max_units; ++i) tanh_factor[k][i] = S(std::tanh(double(factor[k][i])));
    }
};

/// What prior_forward keeps for prior_backward.
template <class S>
struct PriorActivations {
    using Array = Eigen::Array<S, Eigen::Dynamic, 1>;
    std::array<std::array<Array, prior_max_units>, prior_layer_count> inputs;      ///< inputs[k][i]: unit i into layer k
    std::array<std::array<Array, prior_max_units>, prior_layer_count - 1> tanh_z;  ///< tanh of layer k's pre-activation j
    Array logits;
};

/// Parameter gradients of one channel and the gradient w.r.t. the points.
template <class S>
struct PriorChannelGradients {
    std::array<std::array<S, prior_max_matrix>, prior_layer_count> matrix{};
    std::array<std::array<S, prior_max_units>, prior_layer_count> bias{};
    std::array<std::array<S, prior_max_units>, prior_layer_count - 1> factor{};
    Eigen::Array<S, Eigen::Dynamic, 1> dpoints;

    void clear() {
        matrix = {};
        bias = {};
        factor = {};
    }
};

/// logits = L(points) for one channel.
template <class S>
void prior_forward(const PriorChannelWeights<S>& weights, const Eigen::Array<S, Eigen::Dynamic, 1>& points,
                   PriorActivations<S>& activations) {
    const Eigen::Index count = points.size();
    activations.inputs[0][0] = points;
    for (int k = 0; k < prior_layer_count; ++k) {
        const auto kk = std::size_t(k);
        const int in = prior_widths[kk], out = prior_widths[kk + 1];
        for (int j = 0; j < out; ++j) {
            const auto jj = std::size_t(j);
            auto& z = k + 1 < prior_layer_count ? activations.inputs[kk + 1][jj] : activations.logits;
            z.setConstant(count, weights.bias[kk][jj]);
            for (int i = 0; i < in; ++i)
                z += weights.softplus_matrix[kk][std::size_t(j * in + i)] * activations.inputs[kk][std::size_t(i)];
            if (k + 1 < prior_layer_count) {
                auto& t = activations.tanh_z[kk][jj];
                t = z.tanh();
                z += weights.tanh_factor[kk][jj] * t;
            }
        }
    }
}

/// Adds the gradients of sum(dlogits * L(points)) into `gradients` and sets gradients.dpoints.
template <class S>
void prior_backward(const PriorChannelWeights<S>& weights, const PriorActivations<S>& activations,
                    const Eigen::Array<S, Eigen::Dynamic, 1>& dlogits, PriorChannelGradients<S>& gradients) {
    using Array = Eigen::Array<S, Eigen::Dynamic, 1>;
    std::array<Array, prior_max_units> doutputs, dinputs, dz;
    doutputs[0] = dlogits;
    for (int k = prior_layer_count - 1; k >= 0; --k) {
        const auto kk = std::size_t(k);
        const int in = prior_widths[kk], out = prior_widths[kk + 1];
        for (int j = 0; j < out; ++j) {
            const auto jj = std::size_t(j);
            if (k + 1 < prior_layer_count) {
                // a = z + tanh(f) tanh(z): da/dz = 1 + tanh(f) (1 - tanh(z)^2), da/df = tanh(z) (1 - tanh(f)^2)
                const Array& t = activations.tanh_z[kk][jj];
                const S tf = weights.tanh_factor[kk][jj];
                gradients.factor[kk][jj] += (doutputs[jj] * t).sum() * (S(1) - tf * tf);
                dz[jj] = doutputs[jj] * (S(1) + tf * (S(1) - t.square()));
            } else {
                dz[jj] = doutputs[jj];
            }
            gradients.bias[kk][jj] += dz[jj].sum();
            for (int i = 0; i < in; ++i) {
                const auto ji = std::size_t(j * in + i);
                gradients.matrix[kk][ji] += (dz[jj] * activations.inputs[kk][std::size_t(i)]).sum() * weights.sigmoid_matrix[kk][ji];
            }
        }
        for (int i = 0; i < in; ++i) {
            const auto ii = std::size_t(i);
            dinputs[ii] = dz[0] * weights.softplus_matrix[kk][ii];
            for (int j = 1; j < out; ++j) dinputs[ii] += dz[std::size_t(j)] * weights.softplus_matrix[kk][std::size_t(j * in + i)];
        }
        std::swap(doutputs, dinputs);
    }
    gradients.dpoints = doutputs[0];
}

/// points = [y(rows, c) - 1/2 ; y(rows, c) + 1/2]: the lower then the upper bin edges of each row.
template <class S>
void gather_half_steps(const RowMajorMatrix<S>& y, int channel, const std::vector<Eigen::Index>& rows,
                       Eigen::Array<S, Eigen::Dynamic, 1>& points) {
    const Eigen::Index n = Eigen::Index(rows.size());
    points.resize(2 * n);
    for (Eigen::Index i = 0; i < n; ++i) {
        points(i) = y(rows[std::size_t(i)], channel) - S(0.5);
        points(n + i) = y(rows[std::size_t(i)], channel) + S(0.5);
    }
}

}  // namespace nwc::detail
