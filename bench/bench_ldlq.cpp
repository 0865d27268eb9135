// LDLQ + RTN (GPTQ) throughput in weights/s, and the GFLOP/s of the Hessian factorization next to
// Eigen's GEMM measured in the same run (the factorization is a Cholesky: n^3 / 3 flops).
//
// Inputs are generated: W ~ N(0, 0.02^2), H = X^T X / N with X = Z diag(s) + Z_r M (N = n samples,
// log-normal feature scales s, a rank-64 correlated component), so H is dense and ill-conditioned.
//
//   nwc_bench_ldlq --benchmark_filter=4096
#include <benchmark/benchmark.h>

#include <cmath>
#include <map>
#include <memory>

#include "nwc/core/random.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/round_to_nearest.hpp"

namespace nwc_bench_ldlq {

namespace {
struct Problem {
    nwc::Tensor<float> weights;
    Eigen::MatrixXf hessian;
};

const Problem& problem(std::int64_t size) {
    static std::map<std::int64_t, std::unique_ptr<Problem>> cache;
    auto& entry = cache[size];
    if (!entry) {
        nwc::Random random{std::uint64_t(size)};
        entry = std::make_unique<Problem>();
        entry->weights = nwc::Tensor<float>(nwc::Shape{size, size});
        for (auto& value : entry->weights.values()) value = 0.02f * random.normal();
        const std::int64_t samples = size, rank = 64;
        Eigen::MatrixXf z(samples, size), low_rank(samples, rank), mixing(rank, size);
        for (Eigen::Index i = 0; i < z.size(); ++i) z.data()[i] = random.normal();
        for (Eigen::Index i = 0; i < low_rank.size(); ++i) low_rank.data()[i] = random.normal();
        for (Eigen::Index i = 0; i < mixing.size(); ++i) mixing.data()[i] = random.normal() / 8.0f;
        Eigen::VectorXf scales(size);
        for (Eigen::Index j = 0; j < size; ++j) scales(j) = std::exp(random.normal());
        Eigen::MatrixXf activations = z * scales.asDiagonal();
        activations.noalias() += low_rank * mixing;
        entry->hessian.noalias() = activations.transpose() * activations / float(samples);
    }
    return *entry;
}

nwc::LDLQOptions options_for(const benchmark::State& state) {
    nwc::LDLQOptions options;
    options.threads = int(state.range(1));
    options.compute_proxy_loss = false;
    return options;
}

/// Whole compression: factorization + sweep. Args: size, threads.
void BM_ldlq_rtn(benchmark::State& state) {
    const Problem& input = problem(state.range(0));
    const nwc::LDLQCompensator<nwc::RoundToNearest> ldlq(options_for(state));
    nwc::RoundToNearest rtn = nwc::RoundToNearest::q4_0();
    for (auto _ : state) benchmark::DoNotOptimize(ldlq.compress(input.weights.view(), input.hessian, rtn).reconstructed.data());
    state.SetItemsProcessed(state.iterations() * input.weights.numel());
}

/// The sweep alone, with a factorization made once. Args: size, threads, feedback mode.
void BM_ldlq_rtn_sweep(benchmark::State& state) {
    const Problem& input = problem(state.range(0));
    nwc::LDLQOptions options = options_for(state);
    options.feedback = state.range(2) == 0 ? nwc::FeedbackMode::per_column : nwc::FeedbackMode::per_block;
    const nwc::LDLQCompensator<nwc::RoundToNearest> ldlq(options);
    const nwc::LDLFeedback feedback = ldlq.factorize(input.hessian);
    nwc::RoundToNearest rtn = nwc::RoundToNearest::q4_0();
    for (auto _ : state) benchmark::DoNotOptimize(ldlq.compress(input.weights.view(), feedback, input.hessian, rtn).reconstructed.data());
    state.SetItemsProcessed(state.iterations() * input.weights.numel());
    state.SetLabel(state.range(2) == 0 ? "per_column" : "per_block");
}

/// Reference: the same RTN without feedback through the same code path. Args: size, threads.
void BM_rtn_without_feedback(benchmark::State& state) {
    const Problem& input = problem(state.range(0));
    const nwc::LDLQCompensator<nwc::RoundToNearest> ldlq(options_for(state));
    nwc::RoundToNearest rtn = nwc::RoundToNearest::q4_0();
    for (auto _ : state) benchmark::DoNotOptimize(ldlq.compress(input.weights.view(), rtn).reconstructed.data());
    state.SetItemsProcessed(state.iterations() * input.weights.numel());
}

/// The factorization (normalize, damp, reversed Cholesky in double, form A). Args: size.
void BM_ldl_factorization(benchmark::State& state) {
    const Problem& input = problem(state.range(0));
    const nwc::LDLQOptions options;
    for (auto _ : state) {
        const nwc::LDLFeedback feedback = nwc::ldl_feedback(input.hessian, options);
        if (feedback.status != nwc::LDLQStatus::ok) state.SkipWithError("factorization failed");
        benchmark::DoNotOptimize(feedback.coefficients.data());
    }
    const double n = double(state.range(0));
    state.counters["GFLOP/s"] = benchmark::Counter(n * n * n / 3.0 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

/// Reference: Eigen's GEMM (n x n times n x n) in double and float, 2 n^3 flops. Args: size, is_float.
template <class Scalar>
void BM_eigen_gemm(benchmark::State& state) {
    using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    const Eigen::Index n = state.range(0);
    const Matrix a = problem(n).hessian.template cast<Scalar>(), b = a * Scalar(0.5);
    Matrix c(n, n);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
    }
    const double size = double(n);
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * size * size * size * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
}  // namespace

BENCHMARK(BM_ldlq_rtn)->Args({1024, 1})->Args({1024, 2})->Args({4096, 1})->Args({4096, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ldlq_rtn_sweep)->Args({1024, 1, 0})->Args({1024, 1, 1})->Args({4096, 1, 0})->Args({4096, 2, 0})->Args({4096, 1, 1})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_rtn_without_feedback)->Args({1024, 1})->Args({4096, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ldl_factorization)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_eigen_gemm, double)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_eigen_gemm, float)->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace nwc_bench_ldlq
