// ResidualMLP inference (the codec's decoder g_s): GFLOP/s and decoded weights/s per size and
// backend, beside a plain Eigen SGEMM of the same hidden width measured in the same run.
//
//   nwc_bench_residual_mlp --benchmark_counters_tabular=true
//
// A "weight" is one of the chunk_size (16) values a decoded chunk holds, so weights/s = rows/s * 16.
#include <benchmark/benchmark.h>

#include <vector>

#include "nwc/nn/residual_mlp.hpp"

namespace nwc_bench_residual_mlp {

namespace {

constexpr std::int64_t rows = 16384;  // chunks per call: 262,144 weights

template <class Backend>
void decoder_inference(benchmark::State& state) {
    const nwc::ResidualMLPShape shape{16, int(state.range(0)), int(state.range(1)), 16, 4};
    nwc::Random random(1);
    nwc::ResidualMLP<float> network(shape);
    network.initialize(random);
    std::vector<float> input(std::size_t(rows * 16)), output(std::size_t(rows * 16));
    std::vector<std::uint8_t> levels(static_cast<std::size_t>(rows));
    for (auto& value : input) value = random.normal();
    for (auto& level : levels) level = std::uint8_t(random.below(4));
    for (auto _ : state) {
        network.infer(nwc::TensorView<const float>(input.data(), {rows, 16}), levels, nwc::TensorView<float>(output.data(), {rows, 16}), 1,
                      Backend{});
        benchmark::DoNotOptimize(output.data());
    }
    const double calls = double(state.iterations());
    state.counters["GFLOP/s"] = benchmark::Counter(calls * rows * shape.flops_per_row() * 1e-9, benchmark::Counter::kIsRate);
    state.counters["weights/s"] = benchmark::Counter(calls * rows * 16, benchmark::Counter::kIsRate);
    state.counters["params"] = double(shape.parameter_count());
    state.SetLabel(std::string(Backend::name));
}

// Reference: one SGEMM of the block shape (rows x W times W x W), as Eigen runs it in the decoder.
void eigen_sgemm(benchmark::State& state) {
    const Eigen::Index width = state.range(0), tile = nwc::ResidualMLP<float>::tile_rows_for(int(width));
    nwc::RowMajorMatrix<float> a = nwc::RowMajorMatrix<float>::Random(tile, width);
    nwc::RowMajorMatrix<float> b = nwc::RowMajorMatrix<float>::Random(width, width);
    nwc::RowMajorMatrix<float> c(tile, width);
    for (auto _ : state) {
        c.noalias() = a * b.transpose();
        benchmark::DoNotOptimize(c.data());
    }
    state.counters["GFLOP/s"] =
        benchmark::Counter(double(state.iterations()) * 2.0 * double(tile) * double(width) * double(width) * 1e-9, benchmark::Counter::kIsRate);
}

void sizes(benchmark::internal::Benchmark* bench) {
    for (auto [width, blocks] : {std::pair{32, 1}, {64, 1}, {128, 1}, {128, 2}, {256, 2}, {512, 4}}) bench->Args({width, blocks});
    bench->ArgNames({"width", "blocks"})->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(decoder_inference<nwc::backend::scalar>)->Apply(sizes);
BENCHMARK(decoder_inference<nwc::backend::simd>)->Apply(sizes);
BENCHMARK(eigen_sgemm)->Arg(32)->Arg(64)->Arg(128)->Arg(256)->Arg(512)->ArgName("width")->Unit(benchmark::kMicrosecond);

}  // namespace nwc_bench_residual_mlp
