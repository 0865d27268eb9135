// Plain (feedback-free) throughput of the scalar quantizer policies in weights/s, next to a
// reference that also touches every weight once: float -> fp16 conversion of the same matrix.
//
//   nwc_bench_scalar_quantizers
#include <benchmark/benchmark.h>

#include <map>
#include <memory>

#include "nwc/core/random.hpp"
#include "nwc/quant/scalar_quantizers.hpp"

namespace nwc_bench_scalar_quantizers {

namespace {
const nwc::Tensor<float>& matrix(std::int64_t size) {
    static std::map<std::int64_t, std::unique_ptr<nwc::Tensor<float>>> cache;
    auto& entry = cache[size];
    if (!entry) {
        nwc::Random random{std::uint64_t(size)};
        entry = std::make_unique<nwc::Tensor<float>>(nwc::Shape{size, size});
        for (auto& value : entry->values()) value = 0.02f * random.normal();
    }
    return *entry;
}

void BM_float_to_half_reference(benchmark::State& state) {
    const auto& weights = matrix(state.range(0));
    std::vector<nwc::half> halves(weights.values().size());
    for (auto _ : state) {
        for (std::size_t i = 0; i < halves.size(); ++i) halves[i] = nwc::to_half(weights.values()[i]);
        benchmark::DoNotOptimize(halves.data());
    }
    state.SetItemsProcessed(state.iterations() * weights.numel());
}

void BM_rtn_quantize(benchmark::State& state) {
    const auto& weights = matrix(state.range(0));
    nwc::RoundToNearest rtn = nwc::RoundToNearest::q4_0();
    for (auto _ : state) benchmark::DoNotOptimize(rtn.quantize(weights.view()).data());
    state.SetItemsProcessed(state.iterations() * weights.numel());
}

void BM_rtn_dequantize(benchmark::State& state) {
    const auto& weights = matrix(state.range(0));
    nwc::RoundToNearest rtn = nwc::RoundToNearest::q4_0();
    rtn.quantize(weights.view());
    for (auto _ : state) benchmark::DoNotOptimize(rtn.dequantize().data());
    state.SetItemsProcessed(state.iterations() * weights.numel());
}

void BM_ecsq_quantize(benchmark::State& state) {
    const auto& weights = matrix(state.range(0));
    nwc::EntropyCodedScalar ecsq(0.005f);
    for (auto _ : state) benchmark::DoNotOptimize(ecsq.quantize(weights.view()).data());
    state.SetItemsProcessed(state.iterations() * weights.numel());
}

void BM_ecsq_entropy(benchmark::State& state) {
    const auto& weights = matrix(state.range(0));
    nwc::EntropyCodedScalar ecsq(0.005f);
    ecsq.quantize(weights.view());
    for (auto _ : state) benchmark::DoNotOptimize(ecsq.entropy_bits_per_weight());
    state.SetItemsProcessed(state.iterations() * weights.numel());
}

/// The whole bisection (about 25 entropy evaluations); items = weights searched over.
void BM_ecsq_step_for_target_bits(benchmark::State& state) {
    const auto& weights = matrix(state.range(0));
    for (auto _ : state) benchmark::DoNotOptimize(nwc::EntropyCodedScalar::step_for_target_bits(weights.values(), 3.0));
    state.SetItemsProcessed(state.iterations() * weights.numel());
}
}  // namespace

BENCHMARK(BM_float_to_half_reference)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_rtn_quantize)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_rtn_dequantize)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ecsq_quantize)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ecsq_entropy)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ecsq_step_for_target_bits)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace nwc_bench_scalar_quantizers
