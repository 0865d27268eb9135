// nwc::FactorizedPrior: Balle et al.'s non-parametric per-channel density (CompressAI's
// EntropyBottleneck) for the M latents of the weight codec.
//
// Read me first:
// - Per channel c a monotone function L_c: R -> R, the logit of the CDF, filters (3, 3, 3, 3):
//   widths 1 -> 3 -> 3 -> 3 -> 3 -> 1. Layer k: z = softplus(H_k) a + b_k, and for every layer but
//   the last a' = z + tanh(f_k) tanh(z). 58 parameters per channel. init_scale 10.
// - Likelihood of y on the integer grid: sigmoid(L(y + 1/2)) - sigmoid(L(y - 1/2)), evaluated with
//   CompressAI's sign trick (flip both arguments when L(y-1/2) + L(y+1/2) > 0, so the difference
//   is taken where the sigmoids are small and precise), then lower-bounded at 1e-9. The bound
//   passes the gradient whenever it pushes the likelihood up, as CompressAI's LowerBound does.
// - Three paths: bits(tape, y) for training (one fused tape op, its backward written by hand and
//   checked against finite differences), logits_cumulative()/likelihood() in double for analysis,
//   and build_tables(), which freezes the trained density into integer CdfTables ONCE.
// - Quantiles come from bisection on the monotone L (deterministic, no auxiliary loss):
//   median = L^-1(0), tails = L^-1(-+t), t = log(2 / 1e-9 - 1), so each tail holds 5e-10.
// - Coding uses the median offset: the integer coded for y is round(y - median_c), the decoder
//   adds median_c (stored as float) back. Tables are built around the float median so that encoder
//   and decoder agree exactly on what a symbol means.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "nwc/autograd/tape.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/random.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/prior_kernels.hpp"

namespace nwc {

/// A trained prior frozen for coding: per channel the float median and the integer table of
/// the symbols round(y - median).
struct PriorTables {
    std::vector<float> medians;
    CdfTableSet tables;
};

/// The factorized prior over `channels` latents; Scalar is float for training, double for checks.
template <class Scalar>
class BasicFactorizedPrior {
public:
    using Parameter = autograd::Parameter<Scalar>;
    using Matrix = RowMajorMatrix<Scalar>;
    static constexpr int layer_count = detail::prior_layer_count;
    static constexpr int parameters_per_channel = detail::prior_parameters_per_channel;  // 58
    static constexpr double init_scale = 10.0;
    static constexpr double likelihood_bound = 1e-9;
    /// Widest table build_tables() makes; wider densities send their tails to the escape bin.
    static constexpr std::int32_t max_support = 8192;

    BasicFactorizedPrior() = default;
    /// A prior over `channels` latents with CompressAI's initial density (biases zero until
    /// initialize() draws them).
    explicit BasicFactorizedPrior(int channels) : m_channels(channels) {
        require(channels >= 1 && channels <= 4096, errc::invalid_argument, "FactorizedPrior: ", channels,
                " channels outside 1..4096");
        const auto& widths = detail::prior_widths;
        const double scale = std::pow(init_scale, 1.0 / double(layer_count));
        for (int k = 0; k < layer_count; ++k) {
            const int in = widths[std::size_t(k)], out = widths[std::size_t(k + 1)];
            const std::string suffix = std::to_string(k);
            m_matrices[std::size_t(k)] = Parameter(channels, out * in, "prior.matrix" + suffix);
            m_matrices[std::size_t(k)].value.setConstant(Scalar(std::log(std::expm1(1.0 / scale / out))));
            m_biases[std::size_t(k)] = Parameter(channels, out, "prior.bias" + suffix);
            if (k + 1 < layer_count) m_factors[std::size_t(k)] = Parameter(channels, out, "prior.factor" + suffix);
        }
    }

    /// Draws the biases from U(-0.5, 0.5) (CompressAI), factors stay 0.
    void initialize(Random& random) {
        for (auto& bias : m_biases)
            for (Eigen::Index i = 0; i < bias.value.size(); ++i) bias.value.data()[i] = Scalar(random.uniform() - 0.5f);
        for (Parameter* parameter : parameters()) parameter->zero_grad();
    }

    int channels() const noexcept { return m_channels; }

    /// The 14 parameter tensors (each channels x n) in the fixed order matrix0, bias0, factor0,
    /// ..., matrix3, bias3, factor3, matrix4, bias4.
    std::vector<Parameter*> parameters() {
        std::vector<Parameter*> all;
        for (int k = 0; k < layer_count; ++k) {
            all.push_back(&m_matrices[std::size_t(k)]);
            all.push_back(&m_biases[std::size_t(k)]);
            if (k + 1 < layer_count) all.push_back(&m_factors[std::size_t(k)]);
        }
        return all;
    }
    std::vector<const Parameter*> parameters() const {
        auto all = const_cast<BasicFactorizedPrior*>(this)->parameters();
        return {all.begin(), all.end()};
    }

    /// L_c(x) in double.
    double logits_cumulative(int channel, double x) const {
        const auto weights = channel_weights<double>(channel);
        Eigen::Array<double, Eigen::Dynamic, 1> points(1);
        points(0) = x;
        detail::PriorActivations<double> activations;
        detail::prior_forward(weights, points, activations);
        return activations.logits(0);
    }
    /// The bounded likelihood of y (any real) on the integer grid around it, in double.
    double likelihood(int channel, double y) const {
        const double lower = logits_cumulative(channel, y - 0.5), upper = logits_cumulative(channel, y + 0.5);
        return std::max(detail::sign_trick_difference(lower, upper), likelihood_bound);
    }
    /// x with L_c(x) == logit, by bisection (deterministic; L is strictly increasing).
    double quantile(int channel, double logit) const {
        double low = -1.0, high = 1.0;
        while (logits_cumulative(channel, low) > logit) {
            low *= 2.0;
            require(low > -1e7, errc::numerical, "FactorizedPrior: channel ", channel, " has no quantile for logit ", logit);
        }
        while (logits_cumulative(channel, high) < logit) {
            high *= 2.0;
            require(high < 1e7, errc::numerical, "FactorizedPrior: channel ", channel, " has no quantile for logit ", logit);
        }
        for (int iteration = 0; iteration < 200 && high - low > 1e-12 * std::max(1.0, std::abs(low)); ++iteration) {
            const double middle = 0.5 * (low + high);
            (logits_cumulative(channel, middle) < logit ? low : high) = middle;
        }
        return 0.5 * (low + high);
    }
    double median(int channel) const { return quantile(channel, 0.0); }
    /// The tail logit t: L^-1(-t) and L^-1(t) bound all but `tail_mass` of the mass (1e-9 by default).
    static double tail_logit(double tail_mass = likelihood_bound) { return std::log(2.0 / tail_mass - 1.0); }

    /// Training path: bits (n x m) = -log2 likelihood(latents) for latents n x m (noisy or rounded).
    /// Row r is coded with channels [g_r m, g_r m + m) where g_r = groups[r] (empty: all rows use
    /// group 0), so one prior can hold a separate density per importance level. Gradients flow to
    /// the latents and to every prior parameter.
    autograd::Var bits(autograd::Tape<Scalar>& tape, autograd::Var latents, std::span<const std::uint8_t> groups = {}) {
        const Eigen::Index m = tape.cols(latents), n = tape.rows(latents);
        NWC_ASSERT(groups.empty() || Eigen::Index(groups.size()) == n);
        std::vector<autograd::Var> inputs{latents};
        for (Parameter* parameter : parameters()) inputs.push_back(tape.parameter(*parameter));
        const autograd::Var out = tape.record("prior_bits", inputs, [this](autograd::Tape<Scalar>& t, autograd::Node<Scalar>& node) {
            backward_bits(t, node);
        });
        // indices: per row its group (for backward); row lists per group are rebuilt from them.
        auto& node = tape.node(out);
        node.indices.assign(std::size_t(n), 0);
        for (std::size_t row = 0; row < groups.size(); ++row) {
            NWC_ASSERT(Eigen::Index(groups[row] + 1) * m <= m_channels);
            node.indices[row] = groups[row];
        }
        NWC_ASSERT(m <= m_channels);
        const Matrix& y = tape.value(latents);
        Matrix& result = tape.output(out);
        result.resize(n, m);
        detail::PriorActivations<Scalar> activations;
        Eigen::Array<Scalar, Eigen::Dynamic, 1> points;
        for (const auto& [group, rows] : group_rows(node.indices))
            for (Eigen::Index column = 0; column < m; ++column) {
                detail::gather_half_steps(y, int(column), rows, points);
                detail::prior_forward(channel_weights<Scalar>(int(group * m + column)), points, activations);
                const Eigen::Index count = Eigen::Index(rows.size());
                for (Eigen::Index i = 0; i < count; ++i) {
                    const double difference = detail::sign_trick_difference(double(activations.logits(i)),
                                                                            double(activations.logits(count + i)));
                    result(rows[std::size_t(i)], column) = Scalar(-std::log2(std::max(difference, likelihood_bound)));
                }
            }
        return out;
    }

    /// Freezes channels [first, first + count) (all by default) into integer tables (precision
    /// 12..16): per channel the float median m, support [floor(q_lo - m), ceil(q_hi - m)] (at most
    /// max_support wide, around 0), the likelihood at m + k for each integer k of it, and the
    /// remaining mass as the escape bin.
    /// `tail_mass` is the probability left outside the support (split between the two tails; the
    /// notes' 1e-9 by default): a larger one gives narrower tables, whose outer values are escaped.
    PriorTables build_tables(int precision = 16, int first = 0, int count = -1, double tail_mass = likelihood_bound) const {
        if (count < 0) count = m_channels - first;
        NWC_ASSERT(first >= 0 && count >= 1 && first + count <= m_channels);
        require(tail_mass > 0.0 && tail_mass < 0.5, errc::invalid_argument, "FactorizedPrior: tail mass ", tail_mass, " outside (0, 0.5)");
        PriorTables frozen;
        std::vector<CdfTable> tables;
        const double tail = tail_logit(tail_mass);
        for (int channel = first; channel < first + count; ++channel) {
            const float median_value = float(median(channel));
            const double m = double(median_value);
            std::int64_t low = std::int64_t(std::floor(quantile(channel, -tail) - m));
            std::int64_t high = std::int64_t(std::ceil(quantile(channel, tail) - m));
            low = std::clamp<std::int64_t>(std::min<std::int64_t>(low, 0), -max_support / 2, 0);
            high = std::clamp<std::int64_t>(std::max<std::int64_t>(high, 0), 0, max_support / 2);
            std::vector<double> probabilities;
            double total = 0.0;
            for (std::int64_t k = low; k <= high; ++k) {
                const double lower = logits_cumulative(channel, m + double(k) - 0.5);
                const double upper = logits_cumulative(channel, m + double(k) + 0.5);
                probabilities.push_back(std::max(detail::sign_trick_difference(lower, upper), 0.0));
                total += probabilities.back();
            }
            const double escape = std::max(1.0 - total, 0.0);
            frozen.medians.push_back(median_value);
            tables.push_back(CdfTable::from_probabilities(std::int32_t(low), probabilities, escape, precision));
        }
        frozen.tables = CdfTableSet(std::move(tables));
        return frozen;
    }

private:
    template <class Out>
    detail::PriorChannelWeights<Out> channel_weights(int channel) const {
        detail::PriorChannelWeights<Out> weights;
        for (int k = 0; k < layer_count; ++k) {
            const auto kk = std::size_t(k);
            for (Eigen::Index i = 0; i < m_matrices[kk].cols(); ++i)
                weights.matrix[kk][std::size_t(i)] = Out(m_matrices[kk].value(channel, i));
            for (Eigen::Index i = 0; i < m_biases[kk].cols(); ++i) {
                weights.bias[kk][std::size_t(i)] = Out(m_biases[kk].value(channel, i));
                if (k + 1 < layer_count) weights.factor[kk][std::size_t(i)] = Out(m_factors[kk].value(channel, i));
            }
        }
        weights.prepare();
        return weights;
    }

    /// Rows of each group, in row order (groups ascending): the work list of forward and backward.
    static std::vector<std::pair<std::int64_t, std::vector<Eigen::Index>>> group_rows(const std::vector<std::int64_t>& row_groups) {
        std::vector<std::pair<std::int64_t, std::vector<Eigen::Index>>> lists;
        std::int64_t largest = 0;
        for (std::int64_t group : row_groups) largest = std::max(largest, group);
        for (std::int64_t group = 0; group <= largest; ++group) {
            std::vector<Eigen::Index> rows;
            for (std::size_t row = 0; row < row_groups.size(); ++row)
                if (row_groups[row] == group) rows.push_back(Eigen::Index(row));
            if (!rows.empty()) lists.emplace_back(group, std::move(rows));
        }
        return lists;
    }

    void backward_bits(autograd::Tape<Scalar>& tape, autograd::Node<Scalar>& node) {
        const autograd::Var latents = node.inputs[0];
        const Matrix& y = tape.value(latents);
        const Eigen::Index m = y.cols();
        Matrix* dy = tape.requires_grad(latents) ? &tape.grad(latents) : nullptr;
        detail::PriorActivations<Scalar> activations;
        detail::PriorChannelGradients<Scalar> gradients;
        Eigen::Array<Scalar, Eigen::Dynamic, 1> points, dlogits;
        for (const auto& [group, rows] : group_rows(node.indices))
            for (Eigen::Index column = 0; column < m; ++column) {
                const int channel = int(group * m + column);
                const auto weights = channel_weights<Scalar>(channel);
                detail::gather_half_steps(y, int(column), rows, points);
                detail::prior_forward(weights, points, activations);
                const Eigen::Index count = Eigen::Index(rows.size());
                dlogits.resize(2 * count);
                for (Eigen::Index i = 0; i < count; ++i) {
                    const auto [d_lower, d_upper] =
                        detail::bits_gradient(double(activations.logits(i)), double(activations.logits(count + i)),
                                              double(node.grad(rows[std::size_t(i)], column)), likelihood_bound);
                    dlogits(i) = Scalar(d_lower);
                    dlogits(count + i) = Scalar(d_upper);
                }
                gradients.clear();
                detail::prior_backward(weights, activations, dlogits, gradients);
                if (dy)
                    for (Eigen::Index i = 0; i < count; ++i)
                        (*dy)(rows[std::size_t(i)], column) += gradients.dpoints(i) + gradients.dpoints(count + i);
                // Parameter inputs follow the latents in parameters() order.
                std::size_t input = 1;
                for (int k = 0; k < layer_count; ++k) {
                    const auto kk = std::size_t(k);
                    add_row(tape, node.inputs[input++], channel, gradients.matrix[kk]);
                    add_row(tape, node.inputs[input++], channel, gradients.bias[kk]);
                    if (k + 1 < layer_count) add_row(tape, node.inputs[input++], channel, gradients.factor[kk]);
                }
            }
    }

    template <std::size_t N>
    static void add_row(autograd::Tape<Scalar>& tape, autograd::Var var, int channel, const std::array<Scalar, N>& values) {
        if (!tape.requires_grad(var)) return;
        Matrix& grad = tape.grad(var);
        for (Eigen::Index i = 0; i < grad.cols(); ++i) grad(channel, i) += values[std::size_t(i)];
    }

    int m_channels = 0;
    std::array<Parameter, layer_count> m_matrices;
    std::array<Parameter, layer_count> m_biases;
    std::array<Parameter, layer_count - 1> m_factors;
};

/// The prior the codec trains and ships.
using FactorizedPrior = BasicFactorizedPrior<float>;

}  // namespace nwc
