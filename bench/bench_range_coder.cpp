// rANS range coder and CDF tables: speed and size.
//
// Synthetic workload: 16 channels x 1M symbols at about 4.3 bits per symbol (discretized Laplace
// and Gaussian latents) at table precisions 12, 14 and 16.
// - BM_encode, BM_decode<scalar|simd>/precision/lanes: speed per lane count (the segment size
//   picks the lanes: 2048 symbols per lane, rans::lane_count_for), items_per_second = symbols,
//   bytes_per_second = compressed stream bytes. BM_decode_v1_simd is the version 1 stream and
//   SIMD decoder (bench/rans_v1_reference.hpp, 32 lanes, segments of 65536) on the same symbols:
//   the same-run reference. BM_decode_simd_threads reports wall-clock time (UseRealTime).
// - BM_context_decode<scalar|simd>/states/lanes: the context-coded stream (context_rans.hpp,
//   version 2) of trellis-coded quantization: 4M grid indices following the trellis machine of
//   `states` states (2 union tables at precision 12, about 4 bits per value), one segment size
//   per lane count as above; items_per_second = values. Compare with BM_decode/12/lanes.
// - BM_segment_overhead: bytes over the ideal sum of -log2(freq / 2^precision) per segment size,
//   version 2 (overhead_pct) and version 1 (v1_overhead_pct).
// Real data (NWC_DATA_DIR): BM_real_side_information/model/bits codes every matrix of
// stories260K or MT3 as ECSQ does (one scale per tensor here, the step giving 3/4/5 bits of
// entropy, one stream per span of 2^17 weights) and reports the side information in bits per
// weight: table bytes + stream bytes - the ideal payload under the tensor's exact histogram, for
// version 1 (CdfTableSet::write + v1 streams) and version 2 (fit_compact_table + v2 streams).
// NWC_BENCH_PER_TENSOR=1 prints one line per tensor. Results and commands:
// docs/bench/range_coder.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/random.hpp"
#include "nwc/entropy/cdf_table_fit.hpp"
#include "nwc/entropy/context_rans.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/io/safetensors_reader.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/quant/trellis.hpp"
#include "rans_v1_reference.hpp"

namespace nwc_bench_range_coder {

namespace {

constexpr std::size_t channel_count = 16;
constexpr std::size_t symbols_per_channel = std::size_t(1) << 20;

struct Workload {
    nwc::CdfTableSet tables;
    std::vector<std::int32_t> symbols;
    double ideal_bits = 0.0;
    std::string layout;
    std::map<std::uint32_t, std::vector<std::uint8_t>> streams;  // by segment size
    std::vector<std::uint8_t> v1_stream;

    const std::vector<std::uint8_t>& stream(std::uint32_t segment_size) {
        auto& bytes = streams[segment_size];
        if (bytes.empty()) bytes = nwc::rans::encode(symbols, tables, {.segment_size = segment_size});
        return bytes;
    }
};

/// Channel c: Laplace (even c) or Gaussian (odd c) with a scale growing with c, about 4 bits per
/// symbol on average; the symbols are drawn from the tables themselves.
Workload& workload(int precision) {
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
    entry->ideal_bits = entry->tables.ideal_bits(entry->symbols);
    entry->v1_stream = nwc::v1::rans::encode(entry->symbols, entry->tables);
    const auto layout = entry->tables.decode_tables().layout;
    entry->layout = layout == nwc::detail::RansSlotLayout::packed      ? "packed slots"
                    : layout == nwc::detail::RansSlotLayout::byte_bins ? "u8 bins"
                                                                       : "u16 bins";
    return *entry;
}

/// Segment size whose segments get `lanes` lanes.
std::uint32_t segment_size_for(std::int64_t lanes) { return std::uint32_t(std::max<std::int64_t>(lanes * nwc::rans::symbols_per_lane, 2048)); }

void report(benchmark::State& state, const Workload& work, std::size_t stream_bytes) {
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(work.symbols.size()));
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(stream_bytes));
    state.counters["bits_per_symbol"] = double(stream_bytes) * 8.0 / double(work.symbols.size());
    state.counters["overhead_pct"] = 100.0 * (double(stream_bytes) * 8.0 / work.ideal_bits - 1.0);
    state.SetLabel(work.layout);
}

void BM_encode(benchmark::State& state) {
    Workload& work = workload(int(state.range(0)));
    const std::uint32_t segment_size = segment_size_for(state.range(1));
    for (auto _ : state) {
        auto stream = nwc::rans::encode(work.symbols, work.tables, {.segment_size = segment_size});
        benchmark::DoNotOptimize(stream.data());
    }
    report(state, work, work.stream(segment_size).size());
}

/// Segment by segment after one read_index, as the method decoders call it.
template <class Backend>
void BM_decode(benchmark::State& state) {
    Workload& work = workload(int(state.range(0)));
    const std::vector<std::uint8_t>& stream = work.stream(segment_size_for(state.range(1)));
    std::vector<std::int32_t> out(work.symbols.size());
    for (auto _ : state) {
        const nwc::RansStreamIndex index = nwc::rans::read_index(stream, work.tables);
        for (std::size_t s = 0; s < index.segments.size(); ++s) {
            auto segment_out = std::span<std::int32_t>(out).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count);
            nwc::rans::decode_segment(stream, index, work.tables, s, segment_out, Backend{});
        }
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.symbols) state.SkipWithError("decoded symbols differ");
    report(state, work, stream.size());
}

/// A trellis-coded stream: grid indices k = 2 m + union that follow the machine path by path (every
/// path at state 0 where a segment starts), m drawn from the union's table.
struct ContextWorkload {
    nwc::LaneStateMachine machine;
    nwc::CdfTableSet tables;
    std::vector<std::int32_t> values;
    std::vector<std::uint8_t> stream;
};

ContextWorkload& context_workload(int states, std::uint32_t segment_size) {
    static std::map<std::pair<int, std::uint32_t>, std::unique_ptr<ContextWorkload>> cache;
    auto& entry = cache[{states, segment_size}];
    if (entry) return *entry;
    entry = std::make_unique<ContextWorkload>();
    entry->machine = nwc::Trellis(states).lane_machine();
    std::vector<nwc::CdfTable> tables;
    for (int u = 0; u < 2; ++u) {
        std::vector<double> probabilities(49);
        for (std::size_t i = 0; i < probabilities.size(); ++i) probabilities[i] = std::exp(-0.5 * std::pow((double(i) - 24.0 + 0.5 * u) / 3.5, 2));
        tables.push_back(nwc::CdfTable::from_probabilities(-24, probabilities, 1e-6, 12));
    }
    entry->tables = nwc::CdfTableSet(std::move(tables));
    nwc::Random random(4321);
    entry->values.resize(std::size_t(1) << 22);
    std::uint32_t path_states[nwc::context_rans::path_count] = {};
    for (std::size_t i = 0; i < entry->values.size(); ++i) {
        if (i % segment_size == 0) std::fill(std::begin(path_states), std::end(path_states), 0u);
        std::uint32_t& path = path_states[i % nwc::context_rans::path_count];
        const std::uint32_t context = entry->machine.context(path);
        const nwc::CdfTable& table = entry->tables[context];
        const std::uint32_t bin = table.bin_at_slot(std::uint32_t(random.below(std::uint64_t(1) << table.precision())));
        const std::int32_t symbol = bin == table.escape_bin() ? 1000 + std::int32_t(random.below(1000)) : table.offset() + std::int32_t(bin);
        entry->values[i] = entry->machine.value_stride() * symbol + entry->machine.addend(context);
        path = entry->machine.next(path, symbol);
    }
    entry->stream = nwc::context_rans::encode(entry->values, entry->tables, entry->machine, {.segment_size = segment_size});
    return *entry;
}

/// Segment by segment after one read_index, as the tcq method decodes its segments.
template <class Backend>
void BM_context_decode(benchmark::State& state) {
    ContextWorkload& work = context_workload(int(state.range(0)), segment_size_for(state.range(1)));
    std::vector<std::int32_t> out(work.values.size());
    const nwc::detail::ContextDecodeTables bound(work.tables, work.machine);
    for (auto _ : state) {
        const nwc::RansStreamIndex index = nwc::context_rans::read_index(work.stream, work.tables, work.machine);
        for (std::size_t s = 0; s < index.segments.size(); ++s)
            context_decode_segment(bound, nwc::detail::segment_bytes(work.stream, index, s),
                                   std::span<std::int32_t>(out).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count), Backend{});
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.values) state.SkipWithError("decoded values differ");
    state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(work.values.size()));
    state.counters["bits_per_value"] = double(work.stream.size()) * 8.0 / double(work.values.size());
    state.SetLabel(work.tables.decode_tables().layout == nwc::detail::RansSlotLayout::packed ? "packed slots" : "two gathers");
}

/// The same-run reference: version 1 (32 lanes, segments of 65536) with its SIMD decoder, segment
/// by segment after one read_index without re-checking its CRC (as BM_decode).
void BM_decode_v1_simd(benchmark::State& state) {
    Workload& work = workload(int(state.range(0)));
    std::vector<std::int32_t> out(work.symbols.size());
    for (auto _ : state) {
        const nwc::v1::RansStreamIndex index = nwc::v1::rans::read_index(work.v1_stream, work.tables, false);
        for (std::size_t s = 0; s < index.segments.size(); ++s) {
            auto segment_out = std::span<std::int32_t>(out).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count);
            nwc::v1::rans::decode_segment(work.v1_stream, index, work.tables, s, segment_out, nwc::backend::simd{});
        }
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.symbols) state.SkipWithError("decoded symbols differ");
    report(state, work, work.v1_stream.size());
}

void BM_decode_simd_threads(benchmark::State& state) {
    Workload& work = workload(int(state.range(0)));
    const std::vector<std::uint8_t>& stream = work.stream(65536);
    std::vector<std::int32_t> out(work.symbols.size());
    for (auto _ : state) {
        nwc::rans::decode(stream, work.tables, std::span<std::int32_t>(out), nwc::backend::simd{}, int(state.range(1)));
        benchmark::DoNotOptimize(out.data());
    }
    if (out != work.symbols) state.SkipWithError("decoded symbols differ");
    report(state, work, stream.size());
}

/// Size cost of the segment size, version 2 and version 1. 2^24 puts all 16M symbols in one segment.
void BM_segment_overhead(benchmark::State& state) {
    Workload& work = workload(int(state.range(0)));
    const auto segment_size = std::uint32_t(state.range(1));
    std::size_t bytes = 0, v1_bytes = 0;
    for (auto _ : state) {
        bytes = nwc::rans::encode(work.symbols, work.tables, {.segment_size = segment_size}).size();
        v1_bytes = nwc::v1::rans::encode(work.symbols, work.tables, {.segment_size = segment_size}).size();
    }
    const double segments = double((work.symbols.size() + segment_size - 1) / segment_size);
    state.counters["lanes"] = nwc::rans::lane_count_for(std::min<std::size_t>(segment_size, work.symbols.size()));
    state.counters["overhead_pct"] = 100.0 * (double(bytes) * 8.0 / work.ideal_bits - 1.0);
    state.counters["v1_overhead_pct"] = 100.0 * (double(v1_bytes) * 8.0 / work.ideal_bits - 1.0);
    state.counters["bytes_per_segment"] = (double(bytes) - work.ideal_bits / 8.0) / segments;
    state.counters["v1_bytes_per_segment"] = (double(v1_bytes) - work.ideal_bits / 8.0) / segments;
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

// ---- real data: ECSQ symbols of stories260K and MT3 matrices.

struct RealMatrix {
    std::string name;
    std::int64_t rows = 0, cols = 0;
    std::vector<float> values;  ///< divided by the tensor's standard deviation
};

std::vector<RealMatrix> real_matrices(const std::string& model) {
    const std::filesystem::path data = NWC_DATA_DIR;
    std::vector<RealMatrix> matrices;
    auto add = [&](const std::string& name, const nwc::Tensor<float>& tensor) {
        if (tensor.shape().rank() != 2) return;
        RealMatrix matrix{name, tensor.shape()[0], tensor.shape()[1], {tensor.values().begin(), tensor.values().end()}};
        double sum = 0, squares = 0;
        for (float v : matrix.values) sum += v;
        const double mean = sum / double(matrix.values.size());
        for (float v : matrix.values) squares += (v - mean) * (v - mean);
        const double scale = std::sqrt(squares / double(matrix.values.size()));
        for (float& v : matrix.values) v = float(v / scale);
        matrices.push_back(std::move(matrix));
    };
    if (model == "stories260K") {
        nwc::llm::Llama2cModel llama = nwc::llm::read_llama2c(data / "stories260K.bin");
        llama.weights.for_each_tensor([&](const std::string& name, const nwc::Tensor<float>& tensor, const nwc::Shape&) { add(name, tensor); });
    } else {
        const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(data / "mt3.safetensors");
        for (const auto& info : file.tensors()) add(info.name, file.read_float32(info.name));
    }
    return matrices;
}

/// Counts of the values offset, offset + 1, ...
struct SymbolCounts {
    std::int32_t offset = 0;
    std::vector<std::uint64_t> counts;
};

std::vector<std::int32_t> ecsq_symbols(const std::vector<float>& values, double step) {
    std::vector<std::int32_t> symbols(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) symbols[i] = std::int32_t(std::lround(values[i] / step));
    return symbols;
}

SymbolCounts histogram(std::span<const std::int32_t> symbols) {
    const auto [low, high] = std::minmax_element(symbols.begin(), symbols.end());
    SymbolCounts counts{*low, std::vector<std::uint64_t>(std::size_t(*high - *low + 1))};
    for (std::int32_t symbol : symbols) ++counts.counts[std::size_t(symbol - *low)];
    return counts;
}

double entropy_bits(const SymbolCounts& counts, double total) {
    double bits = 0;
    for (std::uint64_t count : counts.counts)
        if (count) bits -= double(count) * std::log2(double(count) / total);
    return bits;
}

void BM_real_side_information(benchmark::State& state, const std::string& model) {
    if (!std::filesystem::exists(std::filesystem::path(NWC_DATA_DIR) / (model == "stories260K" ? "stories260K.bin" : "mt3.safetensors"))) {
        state.SkipWithError("real data not found under NWC_DATA_DIR");
        for (auto _ : state) {
        }
        return;
    }
    static std::map<std::string, std::vector<RealMatrix>> cache;
    auto& matrices = cache[model];
    if (matrices.empty()) matrices = real_matrices(model);
    const double target_bits = double(state.range(0));
    const bool per_tensor = std::getenv("NWC_BENCH_PER_TENSOR") != nullptr;
    double weights = 0, ideal = 0, v1_tables = 0, v1_streams = 0, v2_tables = 0, v2_streams = 0, fit_seconds = 0;
    int kinds[3] = {};
    for (auto _ : state) {
        for (const RealMatrix& matrix : matrices) {
            // The step whose symbols have `target_bits` of entropy (bisection on log step).
            double low = 1e-3, high = 10.0;
            for (int iteration = 0; iteration < 30; ++iteration) {
                const double middle = std::sqrt(low * high);
                const auto symbols = ecsq_symbols(matrix.values, middle);
                (entropy_bits(histogram(symbols), double(symbols.size())) / double(symbols.size()) > target_bits ? low : high) = middle;
            }
            const std::vector<std::int32_t> symbols = ecsq_symbols(matrix.values, high);
            const SymbolCounts counts = histogram(symbols);
            const double tensor_ideal = entropy_bits(counts, double(symbols.size())) / 8;
            // Version 1: the exact histogram table at precision 16, CdfTableSet::write, v1 streams.
            std::vector<double> probabilities(counts.counts.begin(), counts.counts.end());
            const nwc::CdfTableSet v1_set({nwc::CdfTable::from_probabilities(counts.offset, probabilities, 0.0, 16)});
            nwc::ByteWriter v1_table;
            v1_set.write(v1_table);
            // Version 2: the fitted compact table, v2 streams.
            const auto start = std::chrono::steady_clock::now();
            const nwc::CompactTableFit fit = nwc::fit_compact_table(counts.offset, counts.counts);
            fit_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            const nwc::CdfTableSet v2_set({fit.table});
            // One stream per span of rows of at most 2^17 weights, as the ECSQ method writes them.
            const std::int64_t span = std::max<std::int64_t>(1, (std::int64_t(1) << 17) / matrix.cols) * matrix.cols;
            double v1_bytes = 0, v2_bytes = 0;
            for (std::int64_t first = 0; first < std::int64_t(symbols.size()); first += span) {
                const auto part = std::span<const std::int32_t>(symbols).subspan(std::size_t(first), std::size_t(std::min<std::int64_t>(span, std::int64_t(symbols.size()) - first)));
                v1_bytes += double(nwc::v1::rans::encode(part, v1_set, {.segment_size = std::uint32_t(part.size())}).size());
                const auto stream = nwc::rans::encode(part, v2_set, {.segment_size = std::uint32_t(part.size())});
                v2_bytes += double(stream.size());
                if (nwc::rans::decode(stream, v2_set) != std::vector<std::int32_t>(part.begin(), part.end())) state.SkipWithError("round trip failed");
            }
            weights += double(symbols.size());
            ideal += tensor_ideal;
            v1_tables += double(v1_table.size());
            v1_streams += v1_bytes;
            v2_tables += double(fit.table_bytes);
            v2_streams += v2_bytes;
            ++kinds[int(fit.compact.kind)];
            if (per_tensor)
                std::printf("%-12s %d bits  %-44s %5lld x %-5lld  ideal %8.0f B | v1 table %4zu B stream %+6.0f B | v2 table %3llu B (%s, P%d, %u bins) stream %+6.0f B\n",
                            model.c_str(), int(target_bits), matrix.name.c_str(), (long long)matrix.rows, (long long)matrix.cols, tensor_ideal,
                            v1_table.size(), v1_bytes - tensor_ideal, (unsigned long long)fit.table_bytes,
                            fit.compact.kind == nwc::CompactCdfTable::Kind::parametric ? "param"
                            : fit.compact.kind == nwc::CompactCdfTable::Kind::code_lengths ? "lengths"
                                                                                        : "freqs",
                            fit.compact.precision, fit.compact.support + 1, v2_bytes - tensor_ideal);
        }
    }
    const double iterations = double(state.iterations());
    state.counters["weights"] = weights / iterations;
    state.counters["v1_side_bits_per_weight"] = 8 * (v1_tables + v1_streams - ideal) / weights;
    state.counters["v2_side_bits_per_weight"] = 8 * (v2_tables + v2_streams - ideal) / weights;
    state.counters["v1_table_bytes"] = v1_tables / iterations;
    state.counters["v2_table_bytes"] = v2_tables / iterations;
    state.counters["v1_stream_over_ideal_bytes"] = (v1_streams - ideal) / iterations;
    state.counters["v2_stream_over_ideal_bytes"] = (v2_streams - ideal) / iterations;
    state.counters["fit_ms_per_tensor"] = 1000 * fit_seconds / (iterations * double(matrices.size()));
    state.SetLabel(std::to_string(kinds[2]) + " parametric, " + std::to_string(kinds[1]) + " code-length, " + std::to_string(kinds[0]) + " exact tables");
}

void precisions_and_lanes(benchmark::internal::Benchmark* bench) {
    bench->ArgNames({"precision", "lanes"})->ArgsProduct({{12, 14, 16}, {1, 2, 4, 8, 16, 32}})->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_encode)->ArgNames({"precision", "lanes"})->ArgsProduct({{12, 14, 16}, {32}})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_decode, nwc::backend::scalar)->Apply(precisions_and_lanes);
BENCHMARK_TEMPLATE(BM_decode, nwc::backend::simd)->Apply(precisions_and_lanes);
BENCHMARK_TEMPLATE(BM_context_decode, nwc::backend::scalar)
    ->ArgNames({"states", "lanes"})->ArgsProduct({{8, 256}, {8, 16, 32}})->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_context_decode, nwc::backend::simd)
    ->ArgNames({"states", "lanes"})->ArgsProduct({{8, 256}, {8, 16, 32}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_decode_v1_simd)->ArgName("precision")->Arg(12)->Arg(14)->Arg(16)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_decode_simd_threads)
    ->ArgNames({"precision", "threads"})
    ->ArgsProduct({{12, 14, 16}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_segment_overhead)
    ->ArgNames({"precision", "segment_size"})
    ->ArgsProduct({{12, 14, 16}, {1024, 2048, 8192, 65536, 1 << 20, 1 << 24}})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_real_side_information, stories260K, std::string("stories260K"))
    ->ArgName("bits")->Arg(3)->Arg(4)->Arg(5)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_real_side_information, mt3, std::string("mt3"))
    ->ArgName("bits")->Arg(3)->Arg(4)->Arg(5)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace nwc_bench_range_coder
