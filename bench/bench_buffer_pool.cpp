// BufferPool (core/buffer_pool.hpp): a decoder's per-tensor float32 scratch taken from the pool
// (its pages kept from the previous tensor) against the reference measured in the same run, a
// fresh zeroed std::vector per tensor as `nwc decompress` had before (Tensor<float>(shape)): the
// kernel maps, zeroes and faults in every page and unmaps it again. Each iteration takes a buffer
// of the size and writes every float once, as a decoder does. bytes_per_second = scratch bytes
// per second; the pooled row's `ratio` is its rate over the fresh row's (measured first).
//
//   nwc_bench_buffer_pool --benchmark_counters_tabular=true
// Sizes: 6.3 MB (a 768 x 2048 MLP matrix of the 111M synthetic model) and 104 MB (its embedding).
#include <benchmark/benchmark.h>

#include <chrono>
#include <map>
#include <vector>

#include "nwc/core/buffer_pool.hpp"

namespace nwc_bench_buffer_pool {

namespace {

using Clock = std::chrono::steady_clock;

/// Bytes per second of the fresh_vector row, by size (the reference of the pooled row).
std::map<std::int64_t, double>& fresh_rates() {
    static std::map<std::int64_t, double> rates;
    return rates;
}

double bytes_per_second(const benchmark::State& state, std::size_t bytes, Clock::time_point start) {
    return double(state.iterations()) * double(bytes) / std::chrono::duration<double>(Clock::now() - start).count();
}

void write_every_float(float* data, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) data[i] = float(i & 1023);
    benchmark::DoNotOptimize(data);
    benchmark::ClobberMemory();
}

void fresh_vector(benchmark::State& state) {
    const std::size_t count = std::size_t(state.range(0));
    const Clock::time_point start = Clock::now();
    for (auto _ : state) {
        std::vector<float> scratch(count);
        write_every_float(scratch.data(), count);
    }
    fresh_rates()[state.range(0)] = bytes_per_second(state, count * sizeof(float), start);
    state.SetBytesProcessed(state.iterations() * std::int64_t(count * sizeof(float)));
}

void pooled(benchmark::State& state) {
    const std::size_t count = std::size_t(state.range(0));
    nwc::BufferPool pool;
    const Clock::time_point start = Clock::now();
    for (auto _ : state) {
        const nwc::BufferPool::Lease lease = pool.take(count * sizeof(float));
        write_every_float(reinterpret_cast<float*>(lease.data()), count);
    }
    const double rate = bytes_per_second(state, count * sizeof(float), start);
    state.SetBytesProcessed(state.iterations() * std::int64_t(count * sizeof(float)));
    if (const auto fresh = fresh_rates().find(state.range(0)); fresh != fresh_rates().end()) state.counters["ratio"] = rate / fresh->second;
}

void sizes(benchmark::internal::Benchmark* benchmark) {
    benchmark->Arg(768 * 2048)->Arg(34000 * 768)->ArgName("floats")->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(fresh_vector)->Apply(sizes);
BENCHMARK(pooled)->Apply(sizes);

}  // namespace

}  // namespace nwc_bench_buffer_pool
