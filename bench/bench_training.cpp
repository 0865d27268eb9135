// Codec training throughput: one shard's forward + backward (g_a, noise, prior, g_s, loss) on the
// tape, in chunks/s and GFLOP/s, beside Eigen SGEMM measured in the same run.
//
//   nwc_bench_training --benchmark_counters_tabular=true
//
// FLOPs counted: the GEMMs of g_a and g_s, forward (2 per multiply-add) and backward (twice the
// forward: input and weight gradients), i.e. 3 x (gemm_flops_per_row of g_a + g_s) per chunk. The
// prior, the epilogues and the optimizer are real work the count leaves out, so GFLOP/s is a
// lower bound on the machine rate and a fair ratio against SGEMM.
#include <benchmark/benchmark.h>

#include <vector>

#include "nwc/codec/codec_model.hpp"

namespace nwc_bench_training {

namespace {

void codec_forward_backward(benchmark::State& state) {
    const int width = int(state.range(0)), blocks = int(state.range(1)), rows = int(state.range(2));
    const nwc::CodecArchitecture architecture{16, width, blocks, 16, 4};
    nwc::CodecModel model(architecture);
    nwc::Random random(1);
    model.initialize(random);
    nwc::RowMajorMatrix<float> chunks(rows, 16);
    for (Eigen::Index i = 0; i < chunks.size(); ++i) chunks.data()[i] = random.normal();
    std::vector<std::uint8_t> levels(static_cast<std::size_t>(rows));
    for (auto& level : levels) level = std::uint8_t(random.below(4));
    nwc::autograd::Tape<float> tape;
    const nwc::CodecLossWeights weights{};
    for (auto _ : state) {
        tape.clear();
        for (auto* parameter : model.parameters()) parameter->grad.setZero();
        const auto parts = model.training_loss(tape, chunks, levels, double(rows) * 16, weights, random);
        tape.backward(parts.loss);
        benchmark::DoNotOptimize(parts.bits);
    }
    const double flops_per_chunk = 3.0 * (architecture.encoder_shape().gemm_flops_per_row() + architecture.decoder_shape().gemm_flops_per_row());
    const double chunks_done = double(state.iterations()) * rows;
    state.counters["chunks/s"] = benchmark::Counter(chunks_done, benchmark::Counter::kIsRate);
    state.counters["GFLOP/s"] = benchmark::Counter(chunks_done * flops_per_chunk * 1e-9, benchmark::Counter::kIsRate);
}

void eigen_sgemm(benchmark::State& state) {
    const Eigen::Index width = state.range(0), rows = state.range(1);
    nwc::RowMajorMatrix<float> a = nwc::RowMajorMatrix<float>::Random(rows, width);
    nwc::RowMajorMatrix<float> b = nwc::RowMajorMatrix<float>::Random(width, width);
    nwc::RowMajorMatrix<float> c(rows, width);
    for (auto _ : state) {
        c.noalias() = a * b.transpose();
        benchmark::DoNotOptimize(c.data());
    }
    state.counters["GFLOP/s"] =
        benchmark::Counter(double(state.iterations()) * 2.0 * double(rows) * double(width) * double(width) * 1e-9, benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(codec_forward_backward)
    ->ArgNames({"width", "blocks", "rows"})
    ->Args({32, 1, 256})
    ->Args({64, 1, 256})
    ->Args({128, 2, 256})
    ->Args({256, 2, 256})
    ->Args({512, 4, 256})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(eigen_sgemm)->ArgNames({"width", "rows"})->Args({128, 256})->Args({256, 256})->Args({512, 256})->Unit(benchmark::kMicrosecond);

}  // namespace nwc_bench_training
