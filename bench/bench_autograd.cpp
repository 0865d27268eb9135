// Autograd throughput on the codec's MLP shape, beside plain Eigen GEMM on the same sizes.
//
// Graph: batch 2048, Linear 16->512, 4 blocks x = x + ReLU(LayerNorm(Linear 512->512 (x))),
// Linear 512->16, MSE against the input; forward + backward, float. GFLOP/s counts the GEMM
// flops only (forward 2*B*(16*512 + 4*512*512 + 512*16), backward twice that minus the input
// layer's dX, which is not computed), so the gap to the reference is the cost of everything
// else: bias, layer norm, ReLU, residual adds, tape bookkeeping.
// Reference: the same GEMMs (same shapes and transposes) on preallocated Eigen matrices.
#include <benchmark/benchmark.h>

#include <vector>

#include "nwc/autograd/autograd.hpp"
#include "nwc/core/random.hpp"

namespace nwc_bench_autograd {

namespace {

using namespace nwc;
using namespace nwc::autograd;
using Matrix = RowMajorMatrix<float>;

constexpr Index batch = 2048, width = 16, hidden = 512, blocks = 4;

double gemm_flops() {
    const double forward = 2.0 * batch * (width * hidden + blocks * hidden * hidden + hidden * width);
    const double input_layer_dx = 2.0 * batch * width * hidden;
    return 3.0 * forward - input_layer_dx;
}

Matrix random_matrix(Random& random, Index rows, Index cols, float bound) {
    Matrix matrix(rows, cols);
    for (Index i = 0; i < matrix.size(); ++i) matrix.data()[i] = random.uniform(-bound, bound);
    return matrix;
}

struct Mlp {
    std::vector<Parameter<float>> weights, biases, gammas, betas;
    explicit Mlp(Random& random) {
        auto linear_layer = [&](Index out, Index in) {
            Parameter<float> weight(out, in), bias(1, out);
            init_linear(weight, &bias, random);
            weights.push_back(std::move(weight));
            biases.push_back(std::move(bias));
        };
        linear_layer(hidden, width);
        for (Index block = 0; block < blocks; ++block) {
            linear_layer(hidden, hidden);
            gammas.emplace_back(Matrix::Ones(1, hidden));
            betas.emplace_back(Matrix::Zero(1, hidden));
        }
        linear_layer(width, hidden);
    }
};

void BM_AutogradMlpForwardBackward(benchmark::State& state) {
    Random random(1);
    Mlp mlp(random);
    const Matrix input = random_matrix(random, batch, width, 1.0f);
    Tape<float> tape;
    // The first step allocates the tape's buffers (page faults included); a trainer pays that
    // once in thousands of steps, so it happens before the timed loop.
    auto step = [&] {
        tape.clear();
        const Var x = tape.constant_ref(input);
        Var h = linear(tape, x, tape.parameter(mlp.weights[0]), tape.parameter(mlp.biases[0]));
        for (std::size_t block = 0; block < std::size_t(blocks); ++block) {
            const Var inner = linear(tape, h, tape.parameter(mlp.weights[block + 1]), tape.parameter(mlp.biases[block + 1]));
            h = add(tape, h, relu(tape, layer_norm(tape, inner, tape.parameter(mlp.gammas[block]), tape.parameter(mlp.betas[block]))));
        }
        const Var output = linear(tape, h, tape.parameter(mlp.weights.back()), tape.parameter(mlp.biases.back()));
        const Var loss = mse_loss(tape, output, x);
        tape.backward(loss);
    };
    step();
    for (auto _ : state) {
        step();
        benchmark::DoNotOptimize(mlp.weights[0].grad.data());
        benchmark::ClobberMemory();
    }
    state.counters["FLOP/s"] = benchmark::Counter(gemm_flops(), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_AutogradMlpForwardBackward)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_EigenGemmSameShapes(benchmark::State& state) {
    Random random(1);
    // Weights in torch layout [out, in]; activations row-major [batch, features].
    std::vector<Matrix> weights = {random_matrix(random, hidden, width, 0.25f)};
    for (Index block = 0; block < blocks; ++block) weights.push_back(random_matrix(random, hidden, hidden, 0.04f));
    weights.push_back(random_matrix(random, width, hidden, 0.04f));
    std::vector<Matrix> activations = {random_matrix(random, batch, width, 1.0f)};
    for (std::size_t layer = 0; layer < weights.size(); ++layer) activations.emplace_back(batch, weights[layer].rows());
    std::vector<Matrix> weight_grads, activation_grads;
    for (const Matrix& weight : weights) weight_grads.emplace_back(weight.rows(), weight.cols());
    for (const Matrix& activation : activations) activation_grads.emplace_back(activation.rows(), activation.cols());
    activation_grads.back().setConstant(1e-3f);
    auto step = [&] {
        for (std::size_t layer = 0; layer < weights.size(); ++layer)
            activations[layer + 1].noalias() = activations[layer] * weights[layer].transpose();
        for (std::size_t layer = weights.size(); layer-- > 0;) {
            weight_grads[layer].noalias() = activation_grads[layer + 1].transpose() * activations[layer];
            if (layer > 0) activation_grads[layer].noalias() = activation_grads[layer + 1] * weights[layer];
        }
    };
    step();
    for (auto _ : state) {
        step();
        benchmark::DoNotOptimize(weight_grads[0].data());
        benchmark::ClobberMemory();
    }
    state.counters["FLOP/s"] = benchmark::Counter(gemm_flops(), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_EigenGemmSameShapes)->Unit(benchmark::kMillisecond)->MinTime(2.0);

/// One 2048 x 512 x 512 GEMM, the bulk of the work, as the peak to compare with.
void BM_EigenGemm2048x512x512(benchmark::State& state) {
    Random random(2);
    const Matrix a = random_matrix(random, batch, hidden, 1.0f), b = random_matrix(random, hidden, hidden, 0.04f);
    Matrix c(batch, hidden);
    for (auto _ : state) {
        c.noalias() = a * b.transpose();
        benchmark::DoNotOptimize(c.data());
        benchmark::ClobberMemory();
    }
    state.counters["FLOP/s"] =
        benchmark::Counter(2.0 * batch * hidden * hidden, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_EigenGemm2048x512x512)->Unit(benchmark::kMillisecond)->MinTime(1.0);

}  // namespace

}  // namespace nwc_bench_autograd
