// Trellis-coded quantization (TCQ, 4/8/32/256 states) beside ECSQ, in the same run:
//  - BM_rate_distortion/<source>/<method>/<bits>: the gap to the Gaussian bound in bits,
//    gap = 0.5 log2(MSE / (σ² 2^(-2R))), R the bits per weight actually written (every byte of
//    the streams, tables, headers, fp16 row scales and the step). Sources: 0 = 2^20 unit Gaussian
//    samples (no scales), 1 = GPT-Neo-125M layer 6 q/k/v/out (BF16, 4 x 768 x 768), 2 = MT3
//    decoder.layers_7 self_attention.query/out, mlp.wi_0/wo (F16, 1.44M weights), both normalized
//    per row (fp16 scale = the row's standard deviation, 16 bits per row counted); 3, 4 = the
//    same normalized per tensor (one fp16 scale). Each matrix is coded on its own (own tables and
//    stream), with one step for the source, found for the target rate.
//    Methods: 0 = ECSQ, 1..4 = TCQ with 4, 8, 32, 256 states.
//  - BM_encode / BM_decode /<method>: weights/s on a 4096 x 4096 N(0, 0.02^2) matrix at ~4 bits,
//    one thread (CPU time). Encode = model fit + quantization + tables + rANS; decode = rANS
//    (SIMD, or the scalar reference) + dequantization to float.
//  - Studies behind the defaults (unit Gaussian): BM_rate_weight (μ = λ / Δ²), BM_table_precision,
//    BM_path_length (per-column paths with chained states), BM_state_contexts (tables per state
//    vs per union), BM_granular_gain (plain TCQ on a uniform source).
//
//   nwc_bench_trellis_quantizer --benchmark_counters_tabular=true
// Results and commands: docs/bench/trellis.md.
#include <benchmark/benchmark.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "nwc/core/random.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/trellis_quantizer.hpp"

namespace nwc_bench_trellis_quantizer {

namespace {

constexpr int method_states[] = {0, 4, 8, 32, 256};  // 0: ECSQ
constexpr int table_precision = 14;
constexpr std::uint32_t segment_size = 1 << 20;  // one segment per real matrix: 136 bytes of states and index

/// One matrix of a source: its values, and its fp16 scales: one per row, one for the tensor, or none (unit scale).
struct Matrix {
    std::int64_t rows = 0, cols = 0;
    std::vector<float> weights;
    std::vector<nwc::half> scales;
    float scale(std::int64_t row) const {
        return scales.empty() ? 1.0f : nwc::to_float(scales[scales.size() == 1 ? 0 : std::size_t(row)]);
    }
};

struct Source {
    std::string name;
    std::vector<Matrix> matrices;
    std::vector<float> normalized;  // all matrices, w / s, row-major
    double variance = 0.0;          // of the normalized values
};

const Source& source(int id) {
    static std::map<int, std::unique_ptr<Source>> cache;
    auto& entry = cache[id];
    if (entry) return *entry;
    entry = std::make_unique<Source>();
    if (id == 0) {
        entry->name = "gaussian 2^20";
        Matrix matrix;
        matrix.rows = 1024;
        matrix.cols = 1024;
        nwc::Random random(20);
        matrix.weights.resize(1 << 20);
        for (float& w : matrix.weights) w = random.normal();
        entry->matrices.push_back(std::move(matrix));
    } else {
        const bool gpt_neo = id % 2 == 1, per_row = id <= 2;
        const char* file = gpt_neo ? "gptneo125m_attn.safetensors" : "mt3.safetensors";
        const std::vector<std::string> names =
            gpt_neo ? std::vector<std::string>{"transformer.h.6.attn.attention.q_proj.weight", "transformer.h.6.attn.attention.k_proj.weight",
                                               "transformer.h.6.attn.attention.v_proj.weight", "transformer.h.6.attn.attention.out_proj.weight"}
                    : std::vector<std::string>{"decoder.layers_7.self_attention.query.weight", "decoder.layers_7.self_attention.out.weight",
                                               "decoder.layers_7.mlp.wi_0.weight", "decoder.layers_7.mlp.wo.weight"};
        entry->name = std::string(gpt_neo ? "gpt-neo layer 6" : "mt3 decoder layer 7") + (per_row ? " per row" : " per tensor");
        const auto file_path = std::filesystem::path(NWC_DATA_DIR) / file;
        if (!std::filesystem::exists(file_path)) return *entry;  // benchmarks on it report skipped
        const auto safetensors = nwc::SafetensorsFile::open(file_path);
        const nwc::Chunker chunker(nwc::ChunkerOptions{nwc::NormalizationAxis::per_row, 16, {}});
        for (const std::string& name : names) {
            const nwc::Tensor<float> tensor = safetensors.read_float32(name);
            Matrix matrix;
            matrix.rows = tensor.rows();
            matrix.cols = tensor.cols();
            matrix.weights.assign(tensor.values().begin(), tensor.values().end());
            if (per_row) {
                matrix.scales = chunker.compute_scales(tensor.view());
            } else {  // the tensor's standard deviation: the scale of one row holding every weight
                matrix.scales = chunker.compute_scales(nwc::TensorView<const float>(tensor.values().data(), nwc::Shape{1, tensor.numel()}));
            }
            entry->matrices.push_back(std::move(matrix));
        }
    }
    double sum = 0.0, squares = 0.0;
    for (const Matrix& matrix : entry->matrices)
        for (std::int64_t r = 0; r < matrix.rows; ++r)
            for (std::int64_t c = 0; c < matrix.cols; ++c) {
                const float value = matrix.weights[std::size_t(r * matrix.cols + c)] / matrix.scale(r);
                entry->normalized.push_back(value);
                sum += value;
                squares += double(value) * value;
            }
    const double count = double(entry->normalized.size());
    entry->variance = squares / count - (sum / count) * (sum / count);
    return *entry;
}

/// Bytes written and squared normalized error of coding a source with one step (ECSQ: states 0).
struct Coded {
    std::size_t bytes = 0;
    double squared_error = 0.0;
    double ideal_bits = 0.0;
    double rate_weight = 0.0;
};

Coded code_source(const Source& data, int states, float step, nwc::TrellisQuantizerOptions options) {
    Coded coded;
    for (const Matrix& matrix : data.matrices) {
        const std::size_t count = matrix.weights.size();
        std::vector<float> element_steps(std::size_t(matrix.rows)), values(count);
        for (std::int64_t r = 0; r < matrix.rows; ++r) element_steps[std::size_t(r)] = step * matrix.scale(r);  // the float product the decoder uses
        for (std::size_t i = 0; i < count; ++i) values[i] = matrix.weights[i] / element_steps[i / std::size_t(matrix.cols)];
        std::vector<std::int32_t> symbols;
        if (states == 0) {
            symbols.resize(count);
            for (std::size_t i = 0; i < count; ++i) symbols[i] = nwc::detail::ecsq_symbol(values[i], 1.0f);
            const nwc::CdfTableSet tables({nwc::detail::histogram_of(symbols).to_cdf_table(table_precision)});
            nwc::RangeCoderOptions coder;
            coder.segment_size = segment_size;
            nwc::ByteWriter writer;
            tables.write(writer);
            coded.bytes += writer.size() + nwc::rans::encode(symbols, tables, coder).size();
            coded.ideal_bits += tables.ideal_bits(symbols);
        } else {
            options.states = states;
            nwc::TrellisQuantizer quantizer(options);
            quantizer.fit(values);
            symbols = quantizer.quantize_stream(values);
            const nwc::TrellisCode code = nwc::TrellisCode::encode(symbols, quantizer.trellis(), options.table_precision, options.segment_size);
            coded.bytes += code.byte_size();
            coded.ideal_bits += nwc::TrellisQuantizer::ideal_bits(symbols, code.tables());
            coded.rate_weight = quantizer.rate_weight();
        }
        coded.bytes += 4 + 2 * matrix.scales.size();  // the step and the fp16 row scales
        for (std::size_t i = 0; i < count; ++i) {
            const std::size_t row = i / std::size_t(matrix.cols);
            const float reconstruction = float(symbols[i]) * element_steps[row];
            const double error = (double(matrix.weights[i]) - reconstruction) / matrix.scale(std::int64_t(row));
            coded.squared_error += error * error;
        }
    }
    return coded;
}

nwc::TrellisQuantizerOptions default_options() {
    nwc::TrellisQuantizerOptions options;
    options.table_precision = table_precision;
    options.segment_size = segment_size;
    return options;
}

/// Codes `data` at about `target_bits` and reports rate, distortion and the gap to D(R).
void report_point(benchmark::State& state, const Source& data, int states, double target_bits, nwc::TrellisQuantizerOptions options) {
    if (data.normalized.empty()) {
        state.SkipWithError("data file missing (NWC_DATA_DIR)");
        return;
    }
    Coded coded;
    for (auto _ : state) {
        options.states = states == 0 ? 8 : states;
        const float step = states == 0 ? nwc::EntropyCodedScalar::step_for_target_bits(data.normalized, target_bits)
                                       : nwc::TrellisQuantizer::step_for_target_bits(data.normalized, target_bits, options);
        coded = code_source(data, states, step, options);
        state.counters["step"] = step;
    }
    const double count = double(data.normalized.size());
    const double bits = 8.0 * double(coded.bytes) / count, mse = coded.squared_error / count;
    state.counters["bits"] = bits;
    state.counters["ideal_bits"] = coded.ideal_bits / count;
    state.counters["mse"] = mse;
    state.counters["gap_bits"] = 0.5 * std::log2(mse / (data.variance * std::exp2(-2.0 * bits)));
    state.counters["mu"] = coded.rate_weight;
    state.SetLabel(data.name + (states == 0 ? " ecsq" : " tcq-" + std::to_string(states)));
}

void BM_rate_distortion(benchmark::State& state) {
    report_point(state, source(int(state.range(0))), method_states[state.range(1)], double(state.range(2)), default_options());
}

// ---- speed on a 4096 x 4096 matrix, one thread

struct SpeedWorkload {
    std::vector<float> weights;
    float sigma = 0.02f;
};
const SpeedWorkload& speed_workload() {
    static const SpeedWorkload workload = [] {
        SpeedWorkload made;
        nwc::Random random(4096);
        made.weights.resize(std::size_t(4096) * 4096);
        for (float& w : made.weights) w = made.sigma * random.normal();
        return made;
    }();
    return workload;
}
// About 4 bits per weight: ECSQ's step 0.25 σ (docs/BENCHMARKS.md), TCQ's grid half of it.
constexpr float ecsq_step = 0.25f, tcq_step = 0.125f;

struct Encoded {
    std::vector<std::uint8_t> ecsq_stream;
    nwc::CdfTableSet ecsq_tables;
    std::map<int, nwc::TrellisCode> tcq;
};

Encoded encode_speed(int states) {
    const SpeedWorkload& workload = speed_workload();
    Encoded encoded;
    if (states == 0) {
        const float step = ecsq_step * workload.sigma;
        std::vector<std::int32_t> symbols(workload.weights.size());
        for (std::size_t i = 0; i < symbols.size(); ++i) symbols[i] = nwc::detail::ecsq_symbol(workload.weights[i], step);
        encoded.ecsq_tables = nwc::CdfTableSet({nwc::detail::histogram_of(symbols).to_cdf_table(table_precision)});
        nwc::RangeCoderOptions coder;
        coder.segment_size = segment_size;
        encoded.ecsq_stream = nwc::rans::encode(symbols, encoded.ecsq_tables, coder);
    } else {
        const float step = tcq_step * workload.sigma;
        std::vector<float> values(workload.weights.size());
        for (std::size_t i = 0; i < values.size(); ++i) values[i] = workload.weights[i] / step;
        nwc::TrellisQuantizerOptions options = default_options();
        options.states = states;
        nwc::TrellisQuantizer quantizer(options);
        quantizer.fit(values);
        const std::vector<std::int32_t> symbols = quantizer.quantize_stream(values);
        encoded.tcq.emplace(states, nwc::TrellisCode::encode(symbols, quantizer.trellis(), table_precision, segment_size));
    }
    return encoded;
}

void BM_encode(benchmark::State& state) {
    const int states = method_states[state.range(0)];
    speed_workload();
    std::size_t bytes = 0;
    for (auto _ : state) {
        const Encoded encoded = encode_speed(states);
        bytes = states == 0 ? encoded.ecsq_stream.size() : encoded.tcq.at(states).byte_size();
    }
    state.SetItemsProcessed(state.iterations() * std::int64_t(speed_workload().weights.size()));
    state.counters["bits"] = 8.0 * double(bytes) / double(speed_workload().weights.size());
    state.SetLabel(states == 0 ? "ecsq" : "tcq-" + std::to_string(states));
}

template <class Backend>
void BM_decode(benchmark::State& state) {
    const int states = method_states[state.range(0)];
    static std::map<int, Encoded> cache;
    if (!cache.count(states)) cache.emplace(states, encode_speed(states));
    const Encoded& encoded = cache.at(states);
    const SpeedWorkload& workload = speed_workload();
    std::vector<std::int32_t> symbols(workload.weights.size());
    std::vector<float> weights(workload.weights.size());
    const float step = (states == 0 ? ecsq_step : tcq_step) * workload.sigma;
    for (auto _ : state) {
        if (states == 0)
            nwc::rans::decode(encoded.ecsq_stream, encoded.ecsq_tables, std::span<std::int32_t>(symbols), Backend{});
        else
            encoded.tcq.at(states).decode(std::span<std::int32_t>(symbols), Backend{});
        for (std::size_t i = 0; i < symbols.size(); ++i) weights[i] = float(symbols[i]) * step;
        benchmark::DoNotOptimize(weights.data());
    }
    state.SetItemsProcessed(state.iterations() * std::int64_t(symbols.size()));
    state.SetLabel(std::string(states == 0 ? "ecsq" : "tcq-" + std::to_string(states)) + " " + std::string(Backend::name));
}

// ---- studies on the unit Gaussian

/// μ: range(2) / 1000, or automatic when negative.
void BM_rate_weight(benchmark::State& state) {
    nwc::TrellisQuantizerOptions options = default_options();
    options.rate_weight = double(state.range(2)) / 1000.0;
    report_point(state, source(0), int(state.range(0)), double(state.range(1)), options);
}

void BM_table_precision(benchmark::State& state) {
    nwc::TrellisQuantizerOptions options = default_options();
    options.table_precision = int(state.range(1));
    report_point(state, source(0), int(state.range(0)), 4.0, options);
}

/// Paths of range(1) values chained column after column (the per-column LDLQ use), 4 bits.
void BM_path_length(benchmark::State& state) {
    const Source& data = source(0);
    const int states = int(state.range(0));
    const std::size_t length = std::size_t(state.range(1));
    nwc::TrellisQuantizerOptions options = default_options();
    options.states = states;
    const float step = nwc::TrellisQuantizer::step_for_target_bits(data.normalized, 4.0, options);
    std::vector<float> values(data.normalized.size());
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = data.normalized[i] / step;
    std::vector<std::int32_t> symbols(values.size());
    double squared = 0.0, bits = 0.0;
    for (auto _ : state) {
        nwc::TrellisQuantizer quantizer(options);
        quantizer.fit(values);
        nwc::TrellisSearch search(quantizer.trellis());
        std::uint32_t path_state = 0;
        for (std::size_t first = 0; first < values.size(); first += length) {
            const std::size_t count = std::min(length, values.size() - first);
            path_state = quantizer.quantize_sequence(std::span<const float>(values).subspan(first, count), path_state,
                                                     std::span<std::int32_t>(symbols).subspan(first, count), search);
        }
        bits = nwc::TrellisQuantizer::ideal_bits(symbols, nwc::TrellisQuantizer::fit_tables(symbols, table_precision)) / double(values.size());
        squared = 0.0;
        for (std::size_t i = 0; i < values.size(); ++i) {
            const double error = double(data.normalized[i]) - double(float(symbols[i]) * step);
            squared += error * error;
        }
    }
    const double mse = squared / double(values.size());
    state.counters["ideal_bits"] = bits;
    state.counters["mse"] = mse;
    state.counters["gap_bits"] = 0.5 * std::log2(mse / (data.variance * std::exp2(-2.0 * bits)));
}

/// Ideal rate of the same 4-bit TCQ symbols with tables per union (as coded) and per trellis state.
void BM_state_contexts(benchmark::State& state) {
    const Source& data = source(0);
    nwc::TrellisQuantizerOptions options = default_options();
    options.states = int(state.range(0));
    const float step = nwc::TrellisQuantizer::step_for_target_bits(data.normalized, 4.0, options);
    std::vector<float> values(data.normalized.size());
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = data.normalized[i] / step;
    double by_union = 0.0, by_state = 0.0, union_entropy = 0.0;
    for (auto _ : state) {
        nwc::TrellisQuantizer quantizer(options);
        quantizer.fit(values);
        const std::vector<std::int32_t> symbols = quantizer.quantize_stream(values);
        by_union = nwc::TrellisQuantizer::ideal_bits(symbols, nwc::TrellisQuantizer::fit_tables(symbols, table_precision));
        // Replay every lane's trellis to find each symbol's state; empirical entropy per state.
        std::vector<std::vector<std::int32_t>> per_state(std::size_t(options.states));
        std::vector<unsigned> lane_states(32, 0);
        for (std::size_t i = 0; i < symbols.size(); ++i) {
            if (i % segment_size == 0) std::fill(lane_states.begin(), lane_states.end(), 0u);
            unsigned& lane = lane_states[i % 32];
            per_state[lane].push_back(symbols[i] >> 1);
            lane = quantizer.trellis().next(lane, symbols[i]);
        }
        by_state = 0.0;
        for (const auto& state_symbols : per_state)
            if (!state_symbols.empty()) by_state += nwc::detail::histogram_of(state_symbols).entropy_bits() * double(state_symbols.size());
        std::vector<std::int32_t> per_union[2];
        for (std::int32_t k : symbols) per_union[std::uint32_t(k) & 1u].push_back(k >> 1);
        union_entropy = 0.0;
        for (const auto& union_symbols : per_union)
            if (!union_symbols.empty()) union_entropy += nwc::detail::histogram_of(union_symbols).entropy_bits() * double(union_symbols.size());
    }
    // Empirical entropies (no table quantization, no table bytes) per union and per state, and
    // the ideal code length under the integer union tables the coder uses.
    state.counters["bits_union_tables"] = by_union / double(values.size());
    state.counters["bits_union_entropy"] = union_entropy / double(values.size());
    state.counters["bits_state_entropy"] = by_state / double(values.size());
}

/// Plain TCQ (no rate term) of a uniform source: MSE against a uniform quantizer of the unions' step 2.
void BM_granular_gain(benchmark::State& state) {
    const nwc::Trellis trellis(int(state.range(0)));
    nwc::Random random(7);
    std::vector<float> values(std::size_t(1) << 18);
    for (float& value : values) value = random.uniform(-1000.0f, 1000.0f);
    std::vector<std::int32_t> symbols(values.size());
    double mse = 0.0;
    for (auto _ : state) {
        nwc::TrellisSearch search(trellis);
        search.run(values, 0, nwc::TrellisRateModel(), symbols);
        mse = 0.0;
        for (std::size_t i = 0; i < values.size(); ++i) mse += double(values[i] - float(symbols[i])) * (values[i] - float(symbols[i]));
        mse /= double(values.size());
    }
    state.counters["mse"] = mse;
    state.counters["gain_db"] = 10.0 * std::log10((4.0 / 12.0) / mse);
}

void rate_distortion_arguments(benchmark::internal::Benchmark* bench) {
    for (int source_id = 0; source_id < 5; ++source_id)
        for (int method = 0; method < 5; ++method)
            for (int bits = 1; bits <= 8; ++bits) bench->Args({source_id, method, bits});
}

}  // namespace

BENCHMARK(BM_encode)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK_TEMPLATE(BM_decode, nwc::backend::simd)->DenseRange(0, 4)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_decode, nwc::backend::scalar)->DenseRange(0, 4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_granular_gain)->RangeMultiplier(2)->Range(4, 256)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_rate_weight)
    ->ArgsProduct({{8, 256}, {2, 4}, {0, 150, 250, 350, 450, 600, -1}})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(1);
BENCHMARK(BM_table_precision)->ArgsProduct({{8, 256}, {12, 13, 14, 15, 16}})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_path_length)->ArgsProduct({{8, 256}, {24, 128, 768, 4096, 32768}})->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_state_contexts)->Arg(4)->Arg(8)->Arg(32)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_rate_distortion)->Apply(rate_distortion_arguments)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace nwc_bench_trellis_quantizer
