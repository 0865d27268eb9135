// Trellis-coded quantization and the context-coded rANS coder: the trellis's structure, Viterbi
// optimality against brute force, exact encode -> decode of the reconstruction on every decoder
// and thread count, rate-distortion near the Gaussian bound, and safe failure on corrupt,
// truncated and hostile input.
#include <catch2/catch.hpp>

#include <array>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>

#include "nwc/core/random.hpp"
#include "nwc/quant/trellis_quantizer.hpp"

namespace nwc_test_trellis_quantizer {

using namespace nwc;

namespace {

errc error_id(const std::function<void()>& body) {
    try {
        body();
    } catch (const nwc::error& failure) {
        return failure.id();
    }
    FAIL("expected an nwc::error");
    return errc::io;
}

/// A random table of `support` values around `center`, Gaussian or skewed, sometimes with escapes likely.
CdfTable random_table(Random& random, std::int32_t center, std::size_t support, int precision) {
    std::vector<double> probabilities(support);
    const double scale = 0.5 + 6.0 * random.uniform();
    for (std::size_t i = 0; i < support; ++i) {
        const double x = double(i) - double(support) / 2;
        probabilities[i] = random.below(4) == 0 ? 0.05 + random.uniform() : std::exp(-0.5 * x * x / (scale * scale));
    }
    const double escape = random.below(2) ? 0.0 : 0.02 * random.uniform();
    return CdfTable::from_probabilities(center - std::int32_t(support / 2), probabilities, escape, precision);
}

/// Cost of a path of grid indices in double, from the integer tables: sum (y - k)^2 + mu bits.
double path_cost(std::span<const float> values, std::span<const std::int32_t> symbols, const CdfTableSet* tables, double mu) {
    double cost = 0.0;
    for (std::size_t t = 0; t < values.size(); ++t) {
        const double error = double(values[t]) - symbols[t];
        cost += error * error;
        if (tables) cost += mu * (*tables)[std::uint32_t(symbols[t]) & 1u].ideal_bits(symbols[t] >> 1);
    }
    return cost;
}

/// Whether the grid indices follow the trellis from `state`; returns the end state or nothing.
std::optional<unsigned> follow(const Trellis& trellis, unsigned state, std::span<const std::int32_t> symbols) {
    for (std::int32_t k : symbols) {
        if ((std::uint32_t(k) & 1u) != trellis.union_of(state)) return std::nullopt;
        state = trellis.next(state, k);
    }
    return state;
}

/// Decodes a TrellisCode with every backend, thread counts 1..3.
std::vector<std::pair<std::string, std::vector<std::int32_t>>> decode_every_way(const TrellisCode& code) {
    std::vector<std::pair<std::string, std::vector<std::int32_t>>> results;
    for (int threads : {1, 2, 3}) {
        std::vector<std::int32_t> scalar(code.symbol_count()), simd(code.symbol_count());
        code.decode(std::span<std::int32_t>(scalar), backend::scalar{}, threads);
        code.decode(std::span<std::int32_t>(simd), backend::simd{}, threads);
        results.emplace_back("scalar threads " + std::to_string(threads), std::move(scalar));
        results.emplace_back("simd threads " + std::to_string(threads), std::move(simd));
    }
    return results;
}

std::vector<float> gaussian(Random& random, std::size_t count, float scale) {
    std::vector<float> values(count);
    for (float& value : values) value = scale * random.normal();
    return values;
}

}  // namespace

TEST_CASE("trellis: Ungerboeck structure for every state count", "[trellis]") {
    CHECK(error_id([] { Trellis(2); }) == errc::invalid_argument);
    CHECK(error_id([] { Trellis(12); }) == errc::invalid_argument);
    CHECK(error_id([] { Trellis(512); }) == errc::invalid_argument);
    for (int states = 4; states <= 256; states *= 2) {
        INFO(states << " states");
        const Trellis trellis(states);
        std::vector<int> entering(std::size_t(states), 0);
        std::vector<int> entering_union(std::size_t(states), -1), entering_branch(std::size_t(states), -1);
        int even_states = 0;
        for (unsigned s = 0; s < unsigned(states); ++s) {
            even_states += trellis.union_of(s) == 0;
            REQUIRE(trellis.next_by_branch(s, 0) != trellis.next_by_branch(s, 1));
            for (unsigned branch = 0; branch < 2; ++branch) {
                const unsigned next = trellis.next_by_branch(s, branch);
                // The two branches entering a state come from one union, with different branch bits.
                if (entering[next]++ == 0) {
                    entering_union[next] = int(trellis.union_of(s));
                    entering_branch[next] = int(branch);
                } else {
                    CHECK(entering_union[next] == int(trellis.union_of(s)));
                    CHECK(entering_branch[next] != int(branch));
                }
                // A grid index of the state's union with that branch bit leads there.
                const std::int32_t k = std::int32_t(trellis.union_of(s)) + 2 * std::int32_t(branch) - 8;
                CHECK(trellis.next(s, k) == next);
            }
        }
        for (int count : entering) CHECK(count == 2);
        CHECK(even_states == states / 2);
        // The decoder's machine is the same trellis.
        const LaneStateMachine machine = trellis.lane_machine();
        REQUIRE(machine.state_count() == unsigned(states));
        for (unsigned s = 0; s < unsigned(states); ++s) {
            CHECK(machine.context(s) == trellis.union_of(s));
            for (std::int32_t m = -3; m <= 3; ++m) CHECK(machine.next(s, m) == trellis.next(s, 2 * m + std::int32_t(trellis.union_of(s))));
        }
    }
}

TEST_CASE("trellis: the Viterbi search finds the brute-force optimum of squared error + mu bits", "[trellis]") {
    Random random(31);
    for (int trial = 0; trial < 400; ++trial) {
        const int states = 4 << random.below(7);
        const Trellis trellis(states);
        const int precision = 12 + int(random.below(5));
        const bool with_rate = random.below(5) != 0;
        const double mu = with_rate ? std::vector<double>{0.05, 0.3, 1.0, 3.0}[random.below(4)] : 0.0;
        const float spread = 0.5f + 6.0f * random.uniform();
        const CdfTableSet tables({random_table(random, 0, 2 + random.below(12), precision), random_table(random, 0, 2 + random.below(12), precision)});
        const TrellisRateModel rates = with_rate ? TrellisRateModel(tables, mu) : TrellisRateModel();
        const std::size_t length = 1 + random.below(12);
        std::vector<float> values = gaussian(random, length, spread);
        if (random.below(4) == 0) values[random.below(length)] = float(random.below(2) ? 60 : -60);  // deep in the escape range
        const unsigned start = unsigned(random.below(unsigned(states)));
        INFO("trial " << trial << ": " << states << " states, mu " << mu << ", length " << length << ", start " << start);

        TrellisSearch search(trellis);
        std::vector<std::int32_t> symbols(length);
        const std::uint32_t end = search.run(values, start, rates, symbols);
        const auto followed = follow(trellis, start, symbols);
        REQUIRE(followed.has_value());
        CHECK(*followed == end);
        const double found = path_cost(values, symbols, with_rate ? &tables : nullptr, mu);

        // Brute force: every branch sequence; each sample's point is any of its subset in a wide
        // window (the cost is a sum, so each sample's best point per subset is found once).
        std::vector<std::array<double, 4>> point_best(length);
        for (std::size_t t = 0; t < length; ++t) {
            point_best[t].fill(std::numeric_limits<double>::infinity());
            const std::int32_t center = std::int32_t(std::floor(values[t]));
            for (std::int32_t k = center - 80; k <= center + 80; ++k) {
                double& slot = point_best[t][std::uint32_t(k) & 3u];
                slot = std::min(slot, path_cost(std::span<const float>(&values[t], 1), std::span<const std::int32_t>(&k, 1), with_rate ? &tables : nullptr, mu));
            }
        }
        double best = std::numeric_limits<double>::infinity();
        for (std::uint32_t branches = 0; branches < (1u << length); ++branches) {
            unsigned state = start;
            double cost = 0.0;
            for (std::size_t t = 0; t < length; ++t) {
                cost += point_best[t][trellis.union_of(state) + 2 * ((branches >> t) & 1u)];
                state = trellis.next_by_branch(state, (branches >> t) & 1u);
            }
            best = std::min(best, cost);
        }
        CHECK(found <= best + 1e-4 * (1.0 + best));
        CHECK(found >= best - 1e-4 * (1.0 + best));

        // The scalar add-compare-select picks the same path as the SIMD one.
        TrellisSearch scalar(trellis);
        scalar.force_scalar(true);
        std::vector<std::int32_t> scalar_symbols(length);
        CHECK(scalar.run(values, start, rates, scalar_symbols) == end);
        CHECK(scalar_symbols == symbols);
    }
}

TEST_CASE("trellis: long paths, scalar and SIMD search identical, chained sequences follow the trellis", "[trellis]") {
    Random random(32);
    const std::vector<float> values = gaussian(random, 20000, 9.0f);
    for (int states : {4, 8, 32, 64, 256}) {
        INFO(states << " states");
        TrellisQuantizerOptions options;
        options.states = states;
        options.fit_passes = 1;
        TrellisQuantizer quantizer(options);
        quantizer.fit(values);
        TrellisSearch simd(quantizer.trellis()), scalar(quantizer.trellis());
        scalar.force_scalar(true);
        std::vector<std::int32_t> a(values.size()), b(values.size());
        CHECK(simd.run(values, 3, quantizer.rate_model(), a) == scalar.run(values, 3, quantizer.rate_model(), b));
        CHECK(a == b);
        // Column after column (the LDLQ use): each sequence starts where the previous one ended.
        std::vector<std::int32_t> chained(values.size());
        unsigned state = 0;
        for (std::size_t first = 0; first < values.size(); first += 768) {
            const std::size_t count = std::min<std::size_t>(768, values.size() - first);
            state = quantizer.quantize_sequence(std::span<const float>(values).subspan(first, count), state,
                                                std::span<std::int32_t>(chained).subspan(first, count), simd);
        }
        const auto end = follow(quantizer.trellis(), 0, chained);
        REQUIRE(end.has_value());
        CHECK(*end == state);
    }
}

TEST_CASE("trellis: encode -> rANS -> decode reproduces the encoder's reconstruction exactly", "[trellis]") {
    Random random(33);
    for (int trial = 0; trial < 12; ++trial) {
        TrellisQuantizerOptions options;
        options.states = 4 << random.below(7);
        options.table_precision = 12 + int(random.below(5));
        options.segment_size = 32 * std::uint32_t(1 + random.below(trial < 6 ? 40 : 3000));
        options.fit_passes = 1 + int(random.below(2));
        options.threads = 1 + int(random.below(3));
        const std::size_t count = trial == 0 ? 0 : trial == 1 ? 1 + random.below(40) : 1000 + random.below(60000);
        const float step = 0.02f + 0.5f * random.uniform();
        std::vector<float> weights = gaussian(random, count, 1.0f);
        if (count > 10) weights[random.below(count)] = 40.0f;  // an outlier: escaped symbols
        std::vector<float> values(count);
        for (std::size_t i = 0; i < count; ++i) values[i] = weights[i] / step;
        INFO("trial " << trial << ": " << options.states << " states, precision " << options.table_precision << ", segment "
                      << options.segment_size << ", " << count << " values, step " << step);
        TrellisQuantizer quantizer(options);
        quantizer.fit(values);
        const std::vector<std::int32_t> symbols = quantizer.quantize_stream(values);
        std::vector<float> reconstruction(count);
        for (std::size_t i = 0; i < count; ++i) reconstruction[i] = float(symbols[i]) * step;

        const TrellisCode code = TrellisCode::encode(symbols, quantizer.trellis(), options.table_precision, options.segment_size, options.threads);
        ByteWriter writer;
        code.write(writer);
        CHECK(writer.size() == code.byte_size());
        ByteReader reader(writer.bytes(), "test");
        const TrellisCode read = TrellisCode::read(reader);
        CHECK(reader.at_end());
        REQUIRE(read.symbol_count() == count);
        for (const auto& [name, decoded] : decode_every_way(read)) {
            INFO(name);
            REQUIRE(decoded == symbols);
            for (std::size_t i = 0; i < count; ++i) REQUIRE(float(decoded[i]) * step == reconstruction[i]);
        }
        // Neither the quantizer nor the coder depends on the thread count.
        TrellisQuantizerOptions other = options;
        other.threads = options.threads == 1 ? 3 : 1;
        TrellisQuantizer again(other);
        again.fit(values);
        CHECK(again.quantize_stream(values) == symbols);
        CHECK(TrellisCode::encode(symbols, quantizer.trellis(), options.table_precision, options.segment_size, 2).stream().size() ==
              code.stream().size());
        const TrellisCode two_threads = TrellisCode::encode(symbols, quantizer.trellis(), options.table_precision, options.segment_size, 2);
        CHECK(std::equal(two_threads.stream().begin(), two_threads.stream().end(), code.stream().begin(), code.stream().end()));
    }
}

TEST_CASE("trellis: rate-distortion near the Gaussian bound (ideal and written bits)", "[trellis]") {
    Random random(34);
    const std::vector<float> weights = gaussian(random, 1 << 17, 1.0f);
    const double variance = [&] {
        double sum = 0.0;
        for (float w : weights) sum += double(w) * w;
        return sum / double(weights.size());
    }();
    // About 4 bits per weight: ECSQ's step halved (TCQ's unions are twice as coarse as its grid).
    const float step = EntropyCodedScalar::step_for_target_bits(weights, 4.0) / 2;
    std::vector<float> values(weights.size());
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = weights[i] / step;
    auto gap = [&](double bits, std::span<const std::int32_t> symbols, float symbol_step) {
        double squared = 0.0;
        for (std::size_t i = 0; i < weights.size(); ++i) {
            const double error = double(weights[i]) - double(float(symbols[i]) * symbol_step);
            squared += error * error;
        }
        return 0.5 * std::log2(squared / double(weights.size()) / (variance * std::exp2(-2.0 * bits)));
    };
    EntropyCodedScalar ecsq(2 * step);
    ecsq.quantize(TensorView<const float>(weights.data(), Shape{1, std::int64_t(weights.size())}));
    const double ecsq_gap = gap(ecsq.entropy_bits_per_weight(), ecsq.symbols(), 2 * step);
    CHECK(ecsq_gap > 0.22);
    for (const auto& [states, limit] : {std::pair{8, 0.095}, std::pair{32, 0.075}, std::pair{256, 0.05}}) {
        TrellisQuantizerOptions options;
        options.states = states;
        TrellisQuantizer quantizer(options);
        quantizer.fit(values);
        const std::vector<std::int32_t> symbols = quantizer.quantize_stream(values);
        const TrellisCode code = TrellisCode::encode(symbols, quantizer.trellis(), options.table_precision, options.segment_size);
        const double ideal = TrellisQuantizer::ideal_bits(symbols, code.tables()) / double(symbols.size());
        const double written = 8.0 * double(code.byte_size()) / double(symbols.size());
        const double ideal_gap = gap(ideal, symbols, step), written_gap = gap(written, symbols, step);
        std::printf("trellis RD: %d states, %.4f bits/weight ideal (gap %.4f), %.4f written (gap %.4f); ECSQ gap %.4f\n", states, ideal, ideal_gap,
                    written, written_gap, ecsq_gap);
        CHECK(ideal > 3.8);
        CHECK(ideal < 4.2);
        CHECK(ideal_gap < limit);
        CHECK(written_gap < limit + 0.015);  // 131k weights: ~300 bytes of tables, states and headers
    }
}

namespace {

/// A decoder of a whole raw context stream.
using ContextStreamDecoder = std::function<std::vector<std::int32_t>(std::span<const std::uint8_t>, const CdfTableSet&, const LaneStateMachine&)>;

/// Every decoder of a raw context stream: scalar and simd on 1 and 3 threads, and the SIMD kernel
/// on narrower xsimd architectures (AVX2, SSE4.2) segment by segment.
std::vector<std::pair<std::string, ContextStreamDecoder>> context_decoders() {
    std::vector<std::pair<std::string, ContextStreamDecoder>> decoders;
    for (int threads : {1, 3}) {
        decoders.emplace_back("scalar threads " + std::to_string(threads), [threads](auto stream, const auto& tables, const auto& machine) {
            return context_rans::decode(stream, tables, machine, backend::scalar{}, threads);
        });
        decoders.emplace_back("simd threads " + std::to_string(threads), [threads](auto stream, const auto& tables, const auto& machine) {
            return context_rans::decode(stream, tables, machine, backend::simd{}, threads);
        });
    }
    auto add_arch = [&](auto arch, const std::string& name) {
        decoders.emplace_back(name, [](std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine) {
            const RansStreamIndex index = context_rans::read_index(stream, tables, machine);
            const detail::ContextDecodeTables bound(tables, machine);
            const std::span<const std::uint8_t> body = index.has_checksum ? stream.first(stream.size() - 4) : stream;
            std::vector<std::int32_t> out(index.symbol_count);
            for (std::size_t s = 0; s < index.segments.size(); ++s)
                detail::context_decode_segment_on<decltype(arch)>(
                    bound, detail::segment_bytes(body, index, s),
                    std::span<std::int32_t>(out).subspan(index.segments[s].first_symbol, index.segments[s].symbol_count));
            return out;
        });
    };
#if XSIMD_WITH_AVX2
    add_arch(xsimd::avx2{}, "xsimd avx2");
#endif
#if XSIMD_WITH_SSE4_2
    add_arch(xsimd::sse4_2{}, "xsimd sse4.2");
#endif
    (void)add_arch;
    return decoders;
}

/// Every decoder's output of a raw context stream.
std::vector<std::pair<std::string, std::vector<std::int32_t>>> decode_stream_every_way(std::span<const std::uint8_t> stream, const CdfTableSet& tables,
                                                                                       const LaneStateMachine& machine) {
    std::vector<std::pair<std::string, std::vector<std::int32_t>>> results;
    for (const auto& [name, decode] : context_decoders()) results.emplace_back(name, decode(stream, tables, machine));
    return results;
}

/// A random machine of `states` states and `contexts` contexts, with random strides and addends.
LaneStateMachine random_machine(Random& random, std::size_t states, std::size_t contexts) {
    std::vector<std::uint16_t> state_contexts(states), next(2 * states);
    for (auto& context : state_contexts) context = std::uint16_t(random.below(contexts));
    state_contexts[random.below(states)] = std::uint16_t(contexts - 1);  // the largest context index is used
    for (auto& state : next) state = std::uint16_t(random.below(states));
    std::vector<std::int32_t> addends(contexts);
    for (auto& addend : addends) addend = std::int32_t(random.below(7)) - 3;
    return LaneStateMachine(state_contexts, next, 1 + std::int32_t(random.below(4)), addends);
}

/// Values that follow `machine` lane by lane (state 0 at every segment start), symbols drawn from
/// their context's table, a fraction `outside` of them escaped.
std::vector<std::int32_t> machine_values(Random& random, const LaneStateMachine& machine, const CdfTableSet& tables, std::size_t count,
                                         std::uint32_t segment_size, double outside) {
    std::vector<std::int32_t> values(count);
    std::uint32_t states[32] = {};
    const std::int64_t stride = machine.value_stride();
    for (std::size_t i = 0; i < count; ++i) {
        if (i % segment_size == 0) std::fill(std::begin(states), std::end(states), 0u);
        std::uint32_t& state = states[i % 32];
        const std::uint32_t context = machine.context(state);
        const CdfTable& table = tables[context];
        const std::int64_t addend = machine.addend(context);
        // Symbols whose value stays inside int32.
        const std::int64_t lowest = std::max<std::int64_t>(std::numeric_limits<std::int32_t>::min(),
                                                           (std::int64_t(std::numeric_limits<std::int32_t>::min()) - addend + stride - 1) / stride);
        const std::int64_t highest = std::min<std::int64_t>(std::numeric_limits<std::int32_t>::max(),
                                                            (std::int64_t(std::numeric_limits<std::int32_t>::max()) - addend) / stride);
        std::int64_t symbol;
        const std::uint32_t bin = table.bin_at_slot(std::uint32_t(random.below(std::uint64_t(1) << table.precision())));
        if (random.uniform() < outside || bin == table.escape_bin()) {
            const int choice = int(random.below(3));
            symbol = choice == 0 ? lowest : choice == 1 ? highest : std::int64_t(table.offset()) + table.support() + std::int64_t(random.below(1000));
        } else {
            symbol = std::int64_t(table.offset()) + bin;
        }
        symbol = std::clamp(symbol, lowest, highest);
        values[i] = std::int32_t(stride * symbol + addend);
        state = machine.next(state, std::int32_t(symbol));
    }
    return values;
}

}  // namespace

TEST_CASE("context_rans: random machines, tables and values round-trip on every decoder", "[context_rans]") {
    Random random(35);
    int layouts_seen[3] = {0, 0, 0};
    for (int trial = 0; trial < 90; ++trial) {
        const std::size_t states = 1 + random.below(trial % 2 ? 300 : 8);
        const std::size_t contexts = 1 + random.below(trial % 3 == 0 ? 40 : 4);  // > 16 contexts: gathered, not permuted
        const int precision = 12 + int(random.below(5));
        std::vector<CdfTable> channel_tables;
        std::vector<std::int32_t> addends;
        for (std::size_t c = 0; c < contexts; ++c) {
            const std::size_t support = random.below(5) == 0 ? 257 + random.below(1500) : 1 + random.below(60);
            channel_tables.push_back(random_table(random, std::int32_t(random.below(200)) - 100, std::min<std::size_t>(support, (1u << precision) - 1), precision));
            addends.push_back(std::int32_t(random.below(7)) - 3);
        }
        const CdfTableSet tables(std::move(channel_tables));
        ++layouts_seen[int(tables.decode_tables().layout)];
        std::vector<std::uint16_t> state_contexts(states), next(2 * states);
        for (auto& context : state_contexts) context = std::uint16_t(random.below(contexts));
        for (auto& state : next) state = std::uint16_t(random.below(states));
        const LaneStateMachine machine(state_contexts, next, 1 + std::int32_t(random.below(4)), addends);
        RangeCoderOptions options;
        options.segment_size = 32 * std::uint32_t(1 + random.below(random.below(2) ? 8 : 600));
        options.threads = 1 + int(random.below(3));
        const std::size_t count = random.below(4) == 0 ? random.below(100) : random.below(30000);
        const double outside = random.below(3) == 0 ? 0.0 : random.below(2) ? 0.001 : 0.2;
        const std::vector<std::int32_t> values = machine_values(random, machine, tables, count, options.segment_size, outside);
        INFO("trial " << trial << ": " << states << " states, " << contexts << " contexts, stride " << machine.value_stride() << ", precision "
                      << precision << ", " << count << " values, segment " << options.segment_size);
        const std::vector<std::uint8_t> stream = context_rans::encode(values, tables, machine, options);
        for (const auto& [name, decoded] : decode_stream_every_way(stream, tables, machine)) {
            INFO(name);
            REQUIRE(decoded == values);
        }
        options.threads = 4;
        CHECK(context_rans::encode(values, tables, machine, options) == stream);
        // The machine's serialization round-trips.
        ByteWriter writer;
        machine.write(writer);
        ByteReader reader(writer.bytes(), "machine");
        CHECK(LaneStateMachine::read(reader) == machine);
    }
    CHECK(layouts_seen[int(detail::RansSlotLayout::packed)] > 5);
    CHECK(layouts_seen[int(detail::RansSlotLayout::byte_bins)] > 5);
    CHECK(layouts_seen[int(detail::RansSlotLayout::word_bins)] > 5);
}

TEST_CASE("context_rans: misuse and foreign streams give the right error ids", "[context_rans]") {
    Random random(36);
    const Trellis trellis(8);
    const LaneStateMachine machine = trellis.lane_machine();
    const CdfTableSet tables({random_table(random, 0, 20, 14), random_table(random, 0, 20, 14)});
    const std::vector<std::int32_t> values = machine_values(random, machine, tables, 5000, 1024, 0.01);
    RangeCoderOptions options;
    options.segment_size = 1024;
    options.table_fingerprint = true;
    options.checksum = true;
    const std::vector<std::uint8_t> stream = context_rans::encode(values, tables, machine, options);
    // A value off its union's coset; segment sizes that break the lanes; tables of another count.
    std::vector<std::int32_t> off = values;
    off[77] += 1;
    CHECK(error_id([&] { context_rans::encode(off, tables, machine, options); }) == errc::invalid_argument);
    options.segment_size = 48;
    CHECK(error_id([&] { context_rans::encode(values, tables, machine, options); }) == errc::invalid_argument);
    options.segment_size = 1024;
    CHECK(error_id([&] { context_rans::encode(values, CdfTableSet({tables[0]}), machine, options); }) == errc::invalid_argument);
    // Decoding with another machine or other tables, or into the wrong size.
    CHECK(error_id([&] { context_rans::decode(stream, tables, Trellis(16).lane_machine(), backend::simd{}); }) == errc::invalid_argument);
    CHECK(error_id([&] { context_rans::decode(stream, CdfTableSet({tables[1], tables[0]}), machine, backend::simd{}); }) == errc::invalid_argument);
    std::vector<std::int32_t> short_out(values.size() - 1);
    CHECK(error_id([&] { context_rans::decode(stream, tables, machine, std::span<std::int32_t>(short_out), backend::scalar{}); }) == errc::invalid_argument);
    // Values of a context that leave int32.
    const LaneStateMachine wide({0}, {0, 0}, 1 << 16, {0});
    CHECK(error_id([&] { context_rans::encode({}, CdfTableSet({CdfTable::uniform(1 << 20, 4, 12)}), wide); }) == errc::invalid_argument);

    // Header bytes patched, the trailing CRC-32C recomputed: the header checks must catch them.
    auto patched = [&](std::size_t at, std::uint8_t value) {
        std::vector<std::uint8_t> copy = stream;
        copy[at] = value;
        const std::uint32_t crc = crc32c(std::span<const std::uint8_t>(copy).first(copy.size() - 4));
        std::memcpy(copy.data() + copy.size() - 4, &crc, 4);
        return copy;
    };
    CHECK(error_id([&] { context_rans::decode(patched(0, 1), tables, machine, backend::scalar{}); }) == errc::unsupported);
    CHECK(error_id([&] { context_rans::decode(patched(1, std::uint8_t(stream[1] | 0x80)), tables, machine, backend::scalar{}); }) == errc::corrupt);
    CHECK(error_id([&] { context_rans::decode(patched(1, std::uint8_t((stream[1] & ~7) | 3)), tables, machine, backend::scalar{}); }) ==
          errc::invalid_argument);
    // Hostile counts (no checksum): 2^64 - 1 symbols, a segment size off the paths, a segment size
    // at or above the symbol count.
    auto hostile = [&](std::uint64_t symbols, std::uint64_t segment) {
        ByteWriter writer;
        writer.put_u8(context_rans::version);
        writer.put_u8(std::uint8_t(tables.precision() - CdfTable::min_precision));
        detail::put_varint(writer, symbols);
        detail::put_varint(writer, segment);
        for (int pad = 0; pad < 16; ++pad) writer.put_u8(0);
        return writer.bytes();
    };
    CHECK(error_id([&] { context_rans::decode(hostile(~std::uint64_t(0), 1024), tables, machine, backend::simd{}); }) == errc::truncated);
    CHECK(error_id([&] { context_rans::decode(hostile(5000, 1000), tables, machine, backend::simd{}); }) == errc::corrupt);
    CHECK(error_id([&] { context_rans::decode(hostile(5000, 5024), tables, machine, backend::simd{}); }) == errc::corrupt);
    std::vector<std::uint8_t> longer = stream;
    longer.push_back(0);
    CHECK(error_id([&] { context_rans::decode(longer, tables, machine, backend::scalar{}); }) == errc::corrupt);
}

namespace {

/// Random tables for `machine`'s contexts at `precision`: now and then more than 256 bins (the
/// word_bins layout), escapes likely in some.
CdfTableSet random_tables(Random& random, const LaneStateMachine& machine, int precision) {
    std::vector<CdfTable> tables;
    for (std::uint32_t c = 0; c < machine.context_count(); ++c) {
        const std::size_t support = random.below(6) == 0 ? 257 + random.below(1500) : 1 + random.below(40);
        tables.push_back(random_table(random, std::int32_t(random.below(60)) - 30, std::min<std::size_t>(support, (1u << precision) - 1), precision));
    }
    return CdfTableSet(std::move(tables));
}

/// The trellis's machines (2 contexts, stride 2) at 4, 8 and 256 states, and random machines on
/// either side of the SIMD decoder's in-register limits (contexts and 2 x states: 16 entries on
/// AVX2, 32 on AVX-512; beyond them it gathers).
std::vector<std::pair<std::string, LaneStateMachine>> test_machines(Random& random) {
    std::vector<std::pair<std::string, LaneStateMachine>> machines;
    for (const int states : {4, 8, 256}) machines.emplace_back("trellis " + std::to_string(states), Trellis(states).lane_machine());
    const std::pair<std::size_t, std::size_t> shapes[] = {{1, 1}, {8, 8}, {9, 16}, {16, 17}, {17, 32}, {300, 33}};
    for (const auto& [states, contexts] : shapes)
        machines.emplace_back(std::to_string(states) + " states, " + std::to_string(contexts) + " contexts", random_machine(random, states, contexts));
    return machines;
}

}  // namespace

TEST_CASE("context_rans: the SIMD decoder equals the reference for every lane count, machine and table layout", "[context_rans]") {
    Random random(38);
    // Segments of 1, 2, 4, 8, 16 and 32 lanes, partial last steps, and lengths around the lane changes.
    const std::size_t counts[] = {1, 31, 33, 100, 2047, 4096 + 5, 8 * 2048 - 1, 8 * 2048, 8 * 2048 + 3 * 32 + 7, 16 * 2048 + 17, 32 * 2048, 70000};
    int layouts_seen[3] = {0, 0, 0}, escaped_streams = 0;
    for (const auto& [machine_name, machine] : test_machines(random))
        for (const std::size_t count : counts) {
            const int precision = 12 + int(random.below(5));
            const CdfTableSet tables = random_tables(random, machine, precision);
            ++layouts_seen[int(tables.decode_tables().layout)];
            RangeCoderOptions options;
            // One segment, or several of a random multiple of 32 values (every lane count again).
            const std::uint32_t whole = std::uint32_t(std::max<std::size_t>(32, (count + 31) / 32 * 32));
            options.segment_size = random.below(3) ? whole : std::min(whole, 32 * std::uint32_t(1 + random.below(whole / 32)));
            const double outside = random.below(3) == 0 ? 0.0 : random.below(2) ? 0.001 : 0.05;
            const std::vector<std::int32_t> values = machine_values(random, machine, tables, count, options.segment_size, outside);
            INFO(machine_name << ", precision " << precision << ", layout " << int(tables.decode_tables().layout) << ", " << count << " values, segment "
                              << options.segment_size << ", escapes " << outside);
            const std::vector<std::uint8_t> stream = context_rans::encode(values, tables, machine, options);
            escaped_streams += outside > 0.0;
            for (const auto& [name, decoded] : decode_stream_every_way(stream, tables, machine)) {
                INFO(name);
                REQUIRE(decoded == values);
            }
        }
    CHECK(layouts_seen[int(detail::RansSlotLayout::packed)] > 5);
    CHECK(layouts_seen[int(detail::RansSlotLayout::byte_bins)] > 5);
    CHECK(layouts_seen[int(detail::RansSlotLayout::word_bins)] > 5);
    CHECK(escaped_streams > 20);
}

TEST_CASE("context_rans: on corrupt segments the SIMD decoder and the reference both throw or agree", "[context_rans]") {
    Random random(39);
    int rejected = 0, decoded = 0;
    for (const auto& [machine_name, machine] : test_machines(random)) {
        // One segment of 8, 16 or 32 lanes (the fast SIMD paths), or two segments of 16 and 2 lanes.
        for (const std::size_t count : {std::size_t(20000), std::size_t(40000), std::size_t(70000), std::size_t(36000)}) {
            const CdfTableSet tables = random_tables(random, machine, 12 + int(random.below(5)));
            RangeCoderOptions options;
            options.segment_size = count == 36000 ? 32768 : std::uint32_t((count + 31) / 32 * 32);
            const std::vector<std::int32_t> values = machine_values(random, machine, tables, count, options.segment_size, 0.01);
            const std::vector<std::uint8_t> stream = context_rans::encode(values, tables, machine, options);
            const std::size_t body_at = std::size_t(context_rans::read_index(stream, tables, machine).segments[0].byte_offset);
            for (int trial = 0; trial < 12; ++trial) {
                std::vector<std::uint8_t> damaged = stream;
                if (trial % 4 == 3) {
                    damaged.resize(body_at + random.below(stream.size() - body_at));  // a truncated stream
                } else {
                    // Flips in the segment bytes: sizes, lane blocks, words, escape bits.
                    for (int f = 0, flips = 1 + int(random.below(3)); f < flips; ++f)
                        damaged[body_at + random.below(stream.size() - body_at)] ^= std::uint8_t(1 + random.below(255));
                }
                INFO(machine_name << ", " << count << " values, trial " << trial);
                std::optional<std::vector<std::int32_t>> reference;
                bool first = true;
                for (const auto& [name, decode] : context_decoders()) {
                    INFO(name);
                    std::optional<std::vector<std::int32_t>> result;
                    try {
                        result = decode(damaged, tables, machine);
                    } catch (const nwc::error&) {
                    }
                    if (first) reference = std::move(result);
                    else REQUIRE(result == reference);
                    first = false;
                }
                (reference ? decoded : rejected) += 1;
            }
        }
    }
    std::printf("context_rans corruption: %d streams rejected, %d decoded (identically by every decoder)\n", rejected, decoded);
    CHECK(rejected > decoded);
}

TEST_CASE("trellis: every truncation and random corruption of a trellis code fails safely", "[trellis]") {
    Random random(37);
    TrellisQuantizerOptions options;
    options.states = 32;
    options.segment_size = 256;
    options.fit_passes = 1;
    std::vector<float> values = gaussian(random, 900, 6.0f);
    values[5] = 300.0f;  // escapes
    TrellisQuantizer quantizer(options);
    quantizer.fit(values);
    const std::vector<std::int32_t> symbols = quantizer.quantize_stream(values);
    const TrellisCode code = TrellisCode::encode(symbols, quantizer.trellis(), 12, options.segment_size);
    ByteWriter writer;
    code.write(writer);
    const std::vector<std::uint8_t> bytes = writer.bytes();

    for (std::size_t length = 0; length < bytes.size(); ++length) {
        const std::vector<std::uint8_t> cut(bytes.begin(), bytes.begin() + std::ptrdiff_t(length));
        ByteReader reader(cut, "truncated");
        CHECK_THROWS_AS(TrellisCode::read(reader), nwc::error);
    }

    // Flips anywhere: read() rejects (the tables' checksum, the stream's index) or decoding throws
    // (a lane not ending at state 1, words or escape bits left over) or both decoders agree.
    const std::size_t stream_at = bytes.size() - code.stream().size();
    int rejected = 0, accepted = 0;
    for (int trial = 0; trial < 2000; ++trial) {
        std::vector<std::uint8_t> flipped = bytes;
        const bool in_stream = trial % 2 == 0;
        for (int f = 0, flips = 1 + int(random.below(3)); f < flips; ++f) {
            // In the stream: past its version and flags (the segment index, lane blocks, words).
            const std::size_t at = in_stream ? stream_at + 2 + random.below(code.stream().size() - 2) : random.below(flipped.size());
            flipped[at] ^= std::uint8_t(1 + random.below(255));
        }
        if (flipped == bytes) continue;
        std::optional<TrellisCode> read;
        try {
            ByteReader reader(flipped, "flipped");
            read = TrellisCode::read(reader);
        } catch (const nwc::error&) {
            ++rejected;
            continue;
        }
        std::optional<std::vector<std::int32_t>> scalar, simd;
        try {
            scalar.emplace(read->symbol_count());
            read->decode(std::span<std::int32_t>(*scalar), backend::scalar{});
        } catch (const nwc::error&) {
            scalar.reset();
        }
        try {
            simd.emplace(read->symbol_count());
            read->decode(std::span<std::int32_t>(*simd), backend::simd{}, 2);
        } catch (const nwc::error&) {
            simd.reset();
        }
        REQUIRE(scalar.has_value() == simd.has_value());
        if (scalar) {
            REQUIRE(*scalar == *simd);
            ++accepted;
        } else {
            ++rejected;
        }
    }
    std::printf("trellis corruption: %d of 2000 corruptions rejected, %d decoded (identically on both decoders)\n", rejected, accepted);
    CHECK(rejected > 1000);

    // Hostile headers of the trellis code itself.
    auto with_byte = [&](std::size_t at, std::uint8_t value) {
        std::vector<std::uint8_t> copy = bytes;
        copy[at] = value;
        return copy;
    };
    auto read_id = [&](const std::vector<std::uint8_t>& input) {
        return error_id([&] {
            ByteReader reader(input, "hostile");
            TrellisCode::read(reader);
        });
    };
    CHECK(read_id(with_byte(0, 'X')) == errc::corrupt);
    CHECK(read_id(with_byte(4, 9)) == errc::unsupported);
    CHECK(read_id(with_byte(6, 9)) == errc::corrupt);   // 512 states
    // Another trellis than the stream's (16 states): the stream records no fingerprints (the
    // container's CRC covers this byte), so it reads; decoding then throws or yields indices.
    try {
        const std::vector<std::uint8_t> other = with_byte(6, 4);
        ByteReader reader(other, "other trellis");
        const TrellisCode read = TrellisCode::read(reader);
        std::vector<std::int32_t> out(read.symbol_count());
        read.decode(std::span<std::int32_t>(out));
    } catch (const nwc::error& failure) {
        CHECK(failure.id() == errc::corrupt);
    }
    CHECK(read_id(with_byte(7, 1)) == errc::corrupt);   // reserved byte
    // A stream size of 2^62 (its varint in place of the real one).
    const std::size_t size_at = stream_at - detail::varint_size(code.stream().size());
    ByteWriter huge;
    huge.put_bytes(std::span<const std::uint8_t>(bytes).first(size_at));
    detail::put_varint(huge, std::uint64_t(1) << 62);
    huge.put_bytes(std::span<const std::uint8_t>(bytes).subspan(stream_at));
    CHECK(read_id(huge.bytes()) == errc::truncated);
    std::vector<std::int32_t> wrong_size(symbols.size() + 1);
    CHECK(error_id([&] { code.decode(std::span<std::int32_t>(wrong_size)); }) == errc::invalid_argument);
}

TEST_CASE("trellis: column after column with error feedback, in 32-column strips, codes and decodes exactly", "[trellis]") {
    // The per-column (LDLQ) use: column c is the next path of lane c % 32, its start state the end
    // state of column c - 32; stream index of (r, c) = (c / 32) 32 m + 32 r + c % 32, so each strip of
    // 32 columns is stored row by row. Segments hold whole strips, where every lane restarts at 0.
    Random random(38);
    const std::size_t rows = 50, cols = 96, strip = 32 * rows;
    TrellisQuantizerOptions options;
    options.states = 32;
    options.segment_size = std::uint32_t(2 * strip);
    std::vector<float> weights = gaussian(random, rows * cols, 1.0f);
    const float step = 0.1f;
    TrellisQuantizer quantizer(options);
    {
        std::vector<float> values(weights.size());
        for (std::size_t i = 0; i < values.size(); ++i) values[i] = weights[i] / step;
        quantizer.fit(values);
    }
    TrellisSearch search(quantizer.trellis());
    std::vector<std::int32_t> stream(rows * cols);
    std::vector<std::uint32_t> lane_states(32, 0);
    std::vector<float> previous_error(rows, 0.0f), column(rows);
    std::vector<std::int32_t> column_symbols(rows);
    for (std::size_t c = 0; c < cols; ++c) {
        const std::size_t first = (c / 32) * strip;
        if (first % options.segment_size == 0 && c % 32 == 0) std::fill(lane_states.begin(), lane_states.end(), 0u);
        // Feedback: the column moves by half the previous column's error (what LDLQ would add).
        for (std::size_t r = 0; r < rows; ++r) column[r] = (weights[r * cols + c] + 0.5f * previous_error[r]) / step;
        std::uint32_t& state = lane_states[c % 32];
        state = quantizer.quantize_sequence(column, state, column_symbols, search);
        for (std::size_t r = 0; r < rows; ++r) {
            stream[first + 32 * r + c % 32] = column_symbols[r];
            previous_error[r] = column[r] * step - float(column_symbols[r]) * step;
        }
    }
    const TrellisCode code = TrellisCode::encode(stream, quantizer.trellis(), options.table_precision, options.segment_size);
    for (const auto& [name, decoded] : decode_every_way(code)) {
        INFO(name);
        REQUIRE(decoded == stream);
    }
}

}  // namespace nwc_test_trellis_quantizer
