// rANS range coder: encode and decode of 16 channels x 1M symbols at about 4 bits per symbol
// (discretized Laplace and Gaussian latents), at table precisions 12, 14 and 16.
//
// items_per_second = symbols, bytes_per_second = compressed stream bytes. The scalar decoder is
// the reference measured in the same run; decode_threads reports wall-clock time (UseRealTime).
// Counters: bits_per_symbol (actual), overhead_pct (actual bytes vs the ideal sum of
// -log2(freq / 2^precision)). Results and commands: docs/bench/range_coder.md.
#include <benchmark/benchmark.h>

#include <cmath>
#include <map>
#include <memory>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/checksum.hpp"
#include "nwc/core/random.hpp"
#include "nwc/entropy/range_coder.hpp"

namespace {

constexpr std::size_t channel_count = 16;
constexpr std::size_t symbols_per_channel = std::size_t(1) << 20;

struct Workload {
    nwc::CdfTableSet tables;
    std::vector<std::int32_t> symbols;
    std::vector<std::uint8_t> stream;
    double ideal_bits = 0.0;
    std::string layout;
};

/// Channel c: Laplace (even c) or Gaussian (odd c) with a scale growing with c, about 4 bits per
/// symbol on average; the symbols are drawn from the tables themselves.
const Workload& workload(int precision) {
    static std::map<int, std::unique_ptr<Workload>> cache;
    auto& entry = cache[precision];
    if (entry) return *entry;
    entry = std::make_unique<Workload>();
    std::vector<nwc::CdfTable> tables;
    for (std::size_t c = 0; c < channel_count; ++c) {
        const double scale = c % 2 ? 3.0 + 0.25 * double(c) : 2.0 + 0.2 * double(c);
        std::vector<double> probabilities(121);
        for (std::size_t i = 0; i < probabilities.size(); ++i) {
            const double x = double(i) - 60.0;
            probabilities[i] = c % 2 ? std::exp(-0.5 * x * x / (scale * scale)) : std::exp(-std::abs(x) / scale);
        }
        tables.push_back(nwc::CdfTable::from_probabilities(-60, probabilities, 1e-6, precision));
    }
    entry->tables = nwc::CdfTableSet(std::move(tables));
    nwc::Random random(1234);
    entry->symbols.resize(channel_count * symbols_per_channel);
    for (std::size_t i = 0; i < entry->symbols.size(); ++i) {
        const nwc::CdfTable& table = entry->tables[i % channel_count];
        const std::uint32_t bin = table.bin_at_slot(std::uint32_t(random.below(std::uint64_t(1) << precision)));
        entry->symbols[i] = bin == table.escape_bin() ? 1000 + std::int32_t(random.below(1000)) : table.offset() + std::int32_t(bin);
    }
    entry->stream = nwc::rans::encode(entry->symbols, entry->tables);
    entry->ideal_bits = entry->tables.ideal_bits(entry->symbols);
    const auto layout = entry->tables.decode_tables().layout;
    entry->layout = layout == nwc::detail::RansSlotLayout::packed      ? "packed slots"
                    : layout == nwc::detail::RansSlotLayout::byte_bins ? "u8 bins"
                                                                       : "u16 bins";
    return *entry;
}

void report(benchmark::State& state, const Workload& work) {
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(work.symbols.size()));
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(work.stream.size()));
    state.counters["bits_per_symbol"] = double(work.stream.size()) * 8.0 / double(work.symbols.size());
    state.counters["overhead_pct"] = 100.0 * (double(work.stream.size()) * 8.0 / work.ideal_bits - 1.0);
    state.SetLabel(work.layout);
}

void BM_encode(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    for (auto _ : state) {
        auto stream = nwc::rans::encode(work.symbols, work.tables);
        benchmark::DoNotOptimize(stream.data());
    }
    report(state, work);
}

template <class Backend>
void BM_decode(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    std::vector<std::int32_t> out(work.symbols.size());
    for (auto _ : state) {
        nwc::rans::decode(work.stream, work.tables, std::span<std::int32_t>(out), Backend{}, 1);
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.symbols) state.SkipWithError("decoded symbols differ");
    report(state, work);
}

/// The decode kernel alone: segment by segment, without the stream's CRC-32C check.
void BM_decode_simd_no_crc(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    const nwc::RansStreamIndex index = nwc::rans::read_index(work.stream, work.tables);
    std::vector<std::int32_t> out(work.symbols.size());
    for (auto _ : state) {
        for (std::size_t s = 0; s < index.segments.size(); ++s) {
            auto segment_out = std::span<std::int32_t>(out).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count);
            nwc::rans::decode_segment(work.stream, index, work.tables, s, segment_out, nwc::backend::simd{});
        }
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.symbols) state.SkipWithError("decoded symbols differ");
    report(state, work);
}

void BM_decode_simd_threads(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    std::vector<std::int32_t> out(work.symbols.size());
    for (auto _ : state) {
        nwc::rans::decode(work.stream, work.tables, std::span<std::int32_t>(out), nwc::backend::simd{}, int(state.range(1)));
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.symbols) state.SkipWithError("decoded symbols differ");
    report(state, work);
}

/// The checksum every decode() verifies first, over the same stream.
void BM_stream_crc32c(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    for (auto _ : state) benchmark::DoNotOptimize(nwc::crc32c(work.stream));
    report(state, work);
}

/// Size cost of the segment size: every segment flushes 32 states (128 bytes, ~100 of them
/// overhead). Reports overhead_pct for one encode; 2^24 puts all 16M symbols in one segment.
void BM_segment_overhead(benchmark::State& state) {
    const Workload& work = workload(int(state.range(0)));
    nwc::RangeCoderOptions options;
    options.segment_size = std::uint32_t(state.range(1));
    std::size_t bytes = 0;
    for (auto _ : state) bytes = nwc::rans::encode(work.symbols, work.tables, options).size();
    state.counters["bits_per_symbol"] = double(bytes) * 8.0 / double(work.symbols.size());
    state.counters["overhead_pct"] = 100.0 * (double(bytes) * 8.0 / work.ideal_bits - 1.0);
    state.counters["segments"] = double((work.symbols.size() + options.segment_size - 1) / options.segment_size);
}

#if defined(__AVX512F__)
/// Reference for the SIMD decoder's bound: AVX-512 gathers of 16 u32 from a 16 KiB table, in
/// `chains` independent dependency chains (1 = latency, 4 = throughput). items = gathered elements.
void BM_avx512_gather(benchmark::State& state) {
    std::vector<std::uint32_t> table(4096);
    for (std::uint32_t i = 0; i < table.size(); ++i) table[i] = (i * 2654435761u) & 4095u;
    const __m512i mask = _mm512_set1_epi32(4095);
    const int chains = int(state.range(0));
    constexpr int steps = 1 << 16;
    for (auto _ : state) {
        __m512i lanes[4] = {_mm512_set1_epi32(1), _mm512_set1_epi32(2), _mm512_set1_epi32(3), _mm512_set1_epi32(4)};
        for (int step = 0; step < steps; ++step)
            for (int c = 0; c < chains; ++c) lanes[c] = _mm512_i32gather_epi32(_mm512_and_si512(lanes[c], mask), table.data(), 4);
        for (int c = 0; c < chains; ++c) benchmark::DoNotOptimize(lanes[c]);
    }
    state.SetItemsProcessed(std::int64_t(state.iterations()) * steps * chains * 16);
}
BENCHMARK(BM_avx512_gather)->ArgName("chains")->Arg(1)->Arg(4);
#endif

void precisions(benchmark::internal::Benchmark* bench) {
    bench->ArgName("precision")->Arg(12)->Arg(14)->Arg(16)->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_encode)->Apply(precisions);
BENCHMARK_TEMPLATE(BM_decode, nwc::backend::scalar)->Apply(precisions);
BENCHMARK_TEMPLATE(BM_decode, nwc::backend::simd)->Apply(precisions);
BENCHMARK(BM_decode_simd_no_crc)->Apply(precisions);
BENCHMARK(BM_decode_simd_threads)
    ->ArgNames({"precision", "threads"})
    ->ArgsProduct({{12, 14, 16}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_stream_crc32c)->Apply(precisions);
BENCHMARK(BM_segment_overhead)
    ->ArgNames({"precision", "segment_size"})
    ->ArgsProduct({{12, 14, 16}, {8192, 32768, 65536, 262144, 1 << 24}})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
