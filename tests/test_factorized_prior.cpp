// FactorizedPrior: parameter count, likelihood normalization, training path == double path,
// gradients vs finite differences, quantiles, integer tables, and a fit to a Laplace source whose
// rate must come within 2% of the source's discretized entropy.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "nwc/autograd/optimizer.hpp"
#include "nwc/entropy/factorized_prior.hpp"

namespace nwc_test_factorized_prior {

using namespace nwc;
using autograd::Tape;
using autograd::Var;

namespace {

template <class Scalar>
void perturb(BasicFactorizedPrior<Scalar>& prior, Random& random, float amount) {
    for (auto* parameter : prior.parameters())
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i)
            parameter->value.data()[i] += Scalar(amount * random.normal());
}

// A Laplace(center, scale) sample by inversion.
double laplace(Random& random, double center, double scale) {
    const double u = (double(random.next_u64() >> 11) + 0.5) * 0x1.0p-53 - 0.5;
    return center - scale * (u < 0 ? -1.0 : 1.0) * std::log(1.0 - 2.0 * std::abs(u));
}

// Entropy in bits of round(y - center) for y ~ Laplace(center, scale).
double discretized_laplace_entropy(double scale) {
    auto cdf = [&](double x) { return x < 0 ? 0.5 * std::exp(x / scale) : 1.0 - 0.5 * std::exp(-x / scale); };
    double entropy = 0.0;
    for (int k = -2000; k <= 2000; ++k) {
        const double p = cdf(k + 0.5) - cdf(k - 0.5);
        if (p > 0) entropy -= p * std::log2(p);
    }
    return entropy;
}

}  // namespace

TEST_CASE("FactorizedPrior: 58 parameters per channel and CompressAI's initial density", "[factorized_prior]") {
    FactorizedPrior prior(5);
    std::int64_t total = 0;
    for (const auto* parameter : std::as_const(prior).parameters()) total += parameter->size();
    CHECK(total == 5 * FactorizedPrior::parameters_per_channel);
    CHECK(prior.parameters().size() == 14);
    // With zero biases and factors, L(x) = x * prod softplus(H_k) summed over paths = x / 10 * (1 * 1 ...).
    // init_scale 10 makes L(x) = x / 10 exactly: every path's product is 1 / (10 f) per layer.
    CHECK(prior.logits_cumulative(0, 5.0) == Approx(0.5).epsilon(1e-6));
    CHECK(prior.median(3) == Approx(0.0).margin(1e-9));
    CHECK_THROWS_AS(FactorizedPrior(0), nwc::error);
}

TEST_CASE("FactorizedPrior: the likelihood is a distribution on every integer grid", "[factorized_prior]") {
    Random random(1);
    BasicFactorizedPrior<double> prior(3);
    prior.initialize(random);
    perturb(prior, random, 0.3f);
    for (int channel = 0; channel < 3; ++channel) {
        for (double phase : {0.0, 0.3, -0.45}) {
            double total = 0.0;
            for (int k = -3000; k <= 3000; ++k) total += prior.likelihood(channel, k + phase);
            CHECK(total == Approx(1.0).epsilon(1e-5));  // + 6001 bins x the 1e-9 floor
        }
        // Monotone L and quantiles by bisection.
        const double median = prior.median(channel);
        CHECK(std::abs(prior.logits_cumulative(channel, median)) < 1e-9);
        const double high = prior.quantile(channel, FactorizedPrior::tail_logit());
        const double low = prior.quantile(channel, -FactorizedPrior::tail_logit());
        CHECK(low < median);
        CHECK(median < high);
        CHECK(prior.logits_cumulative(channel, high) == Approx(FactorizedPrior::tail_logit()).epsilon(1e-9));
    }
}

TEST_CASE("FactorizedPrior: training path matches the double path", "[factorized_prior]") {
    Random random(2);
    FactorizedPrior prior(4);
    prior.initialize(random);
    perturb(prior, random, 0.2f);
    RowMajorMatrix<float> y(64, 4);
    for (Eigen::Index i = 0; i < y.size(); ++i) y.data()[i] = 8.0f * random.normal();
    Tape<float> tape;
    const Var bits = prior.bits(tape, tape.constant_ref(y));
    for (Eigen::Index row = 0; row < y.rows(); ++row)
        for (int channel = 0; channel < 4; ++channel) {
            const double expected = -std::log2(prior.likelihood(channel, y(row, channel)));
            CHECK(tape.value(bits)(row, channel) == Approx(expected).epsilon(2e-4).margin(2e-4));
        }
}

TEST_CASE("FactorizedPrior: gradients match finite differences", "[factorized_prior]") {
    Random random(3);
    BasicFactorizedPrior<double> prior(2);
    prior.initialize(random);
    perturb(prior, random, 0.4f);
    RowMajorMatrix<double> y(6, 2), weights(6, 2);
    for (Eigen::Index i = 0; i < y.size(); ++i) {
        y.data()[i] = 6.0 * random.normal();
        weights.data()[i] = 1.0 + random.uniform();
    }
    Tape<double> tape;
    auto loss_of = [&](const RowMajorMatrix<double>& latents) {
        tape.clear();
        const Var bits = prior.bits(tape, tape.constant(latents));
        return (tape.value(bits).array() * weights.array()).sum();
    };
    tape.clear();
    const Var latents = tape.variable(y);
    const Var bits = prior.bits(tape, latents);
    for (auto* parameter : prior.parameters()) parameter->zero_grad();
    tape.backward(bits, weights);
    const RowMajorMatrix<double> dy = tape.grad(latents);
    const double step = 1e-6;
    for (auto* parameter : prior.parameters())
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i) {
            const double saved = parameter->value.data()[i];
            parameter->value.data()[i] = saved + step;
            const double plus = loss_of(y);
            parameter->value.data()[i] = saved - step;
            const double minus = loss_of(y);
            parameter->value.data()[i] = saved;
            INFO(parameter->name << "[" << i << "]");
            CHECK(parameter->grad.data()[i] == Approx((plus - minus) / (2 * step)).epsilon(1e-5).margin(1e-6));
        }
    for (Eigen::Index i = 0; i < y.size(); ++i) {
        RowMajorMatrix<double> shifted = y;
        shifted.data()[i] += step;
        const double plus = loss_of(shifted);
        shifted.data()[i] -= 2 * step;
        const double minus = loss_of(shifted);
        CHECK(dy.data()[i] == Approx((plus - minus) / (2 * step)).epsilon(1e-5).margin(1e-6));
    }
}

TEST_CASE("FactorizedPrior: integer tables follow the density around the median", "[factorized_prior]") {
    Random random(4);
    FactorizedPrior prior(3);
    prior.initialize(random);
    perturb(prior, random, 0.2f);
    const PriorTables frozen = prior.build_tables(16);
    REQUIRE(frozen.medians.size() == 3);
    REQUIRE(frozen.tables.channel_count() == 3);
    for (int channel = 0; channel < 3; ++channel) {
        const CdfTable& table = frozen.tables[std::size_t(channel)];
        CHECK(table.offset() <= 0);
        CHECK(std::int64_t(table.offset()) + table.support() > 0);
        const double median = frozen.medians[std::size_t(channel)];
        for (int k = -3; k <= 3; ++k) {
            const double p = prior.likelihood(channel, median + k);
            if (p < 1e-3) continue;
            CHECK(table.ideal_bits(k) == Approx(-std::log2(p)).epsilon(0.02).margin(0.01));
        }
    }
    // Deterministic: the same prior gives the same integers.
    CHECK(prior.build_tables(16).tables.checksum() == frozen.tables.checksum());
}

TEST_CASE("FactorizedPrior: a prior fitted to Laplace samples codes within 2% of their entropy", "[factorized_prior]") {
    // Channel 0: Laplace(0, 2.5); channel 1: Laplace(3.3, 0.8) (tests the median offset).
    const double centers[2] = {0.0, 3.3}, scales[2] = {2.5, 0.8};
    Random random(5);
    FactorizedPrior prior(2);
    prior.initialize(random);
    autograd::Adam<float> adam(prior.parameters(), {.learning_rate = 1e-2});
    Tape<float> tape;
    RowMajorMatrix<float> y(512, 2);
    for (int step = 0; step < 1500; ++step) {
        if (step == 1000) adam.set_learning_rate(2e-3);
        for (Eigen::Index row = 0; row < y.rows(); ++row)
            for (int c = 0; c < 2; ++c)
                y(row, c) = float(laplace(random, centers[c], scales[c]) + (random.uniform() - 0.5));
        tape.clear();
        const Var bits = prior.bits(tape, tape.constant_ref(y));
        adam.zero_grad();
        tape.backward(bits, RowMajorMatrix<float>::Constant(y.rows(), 2, 1.0f / float(y.rows())));
        adam.step();
    }
    const PriorTables frozen = prior.build_tables(16);
    for (int c = 0; c < 2; ++c) {
        CHECK(frozen.medians[std::size_t(c)] == Approx(centers[c]).margin(0.15));
        double bits = 0.0;
        const int samples = 200000;
        for (int i = 0; i < samples; ++i) {
            const double value = laplace(random, centers[c], scales[c]);
            const auto symbol = std::int32_t(std::nearbyint(value - frozen.medians[std::size_t(c)]));
            bits += frozen.tables[std::size_t(c)].ideal_bits(symbol);
        }
        const double rate = bits / samples, entropy = discretized_laplace_entropy(scales[c]);
        INFO("channel " << c << ": rate " << rate << " bits, entropy " << entropy << " bits");
        CHECK(rate >= entropy * 0.98);  // sampling noise only
        CHECK(rate <= entropy * 1.02);
    }
}

TEST_CASE("FactorizedPrior: rows coded by per-group channels (one prior per level)", "[factorized_prior]") {
    Random random(6);
    BasicFactorizedPrior<double> prior(3 * 2);  // 3 groups of 2 latents
    prior.initialize(random);
    perturb(prior, random, 0.4f);
    RowMajorMatrix<double> y(9, 2), weights(9, 2);
    for (Eigen::Index i = 0; i < y.size(); ++i) {
        y.data()[i] = 5.0 * random.normal();
        weights.data()[i] = 1.0 + random.uniform();
    }
    const std::vector<std::uint8_t> groups{2, 0, 1, 1, 2, 0, 0, 2, 1};
    Tape<double> tape;
    const Var latents = tape.variable(y);
    const Var bits = prior.bits(tape, latents, groups);
    for (Eigen::Index row = 0; row < 9; ++row)
        for (int c = 0; c < 2; ++c)
            CHECK(tape.value(bits)(row, c) == Approx(-std::log2(prior.likelihood(groups[std::size_t(row)] * 2 + c, y(row, c)))).epsilon(1e-12));
    for (auto* parameter : prior.parameters()) parameter->zero_grad();
    tape.backward(bits, weights);
    const RowMajorMatrix<double> dy = tape.grad(latents);
    auto loss_of = [&](const RowMajorMatrix<double>& values) {
        tape.clear();
        return (tape.value(prior.bits(tape, tape.constant(values), groups)).array() * weights.array()).sum();
    };
    const double step = 1e-6;
    for (auto* parameter : prior.parameters())
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i) {
            const double saved = parameter->value.data()[i];
            parameter->value.data()[i] = saved + step;
            const double plus = loss_of(y);
            parameter->value.data()[i] = saved - step;
            const double minus = loss_of(y);
            parameter->value.data()[i] = saved;
            CHECK(parameter->grad.data()[i] == Approx((plus - minus) / (2 * step)).epsilon(1e-5).margin(1e-6));
        }
    for (Eigen::Index i = 0; i < y.size(); ++i) {
        RowMajorMatrix<double> shifted = y;
        shifted.data()[i] += step;
        const double plus = loss_of(shifted);
        shifted.data()[i] -= 2 * step;
        CHECK(dy.data()[i] == Approx((plus - loss_of(shifted)) / (2 * step)).epsilon(1e-5).margin(1e-6));
    }
}

}  // namespace nwc_test_factorized_prior
