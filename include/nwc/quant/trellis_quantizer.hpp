// nwc::TrellisQuantizer: entropy-coded trellis-coded quantization (ECTCQ; Marcellin and Fischer
// 1990, Fischer and Wang 1992) of values in grid units, with tables conditioned on the trellis
// union, and nwc::TrellisCode, its symbols coded by the context-conditioned rANS coder (32 machine paths).
//
// Read me first:
// - Grid units: the caller divides each weight by Δ times its normalization scale (per row, per
//   column or per tensor, as ECSQ does: the float product Δ s) and decodes k -> k * (Δ s). The
//   symbol of a value is its grid index k (trellis.hpp); rate_weight μ = λ / Δ^2 is the
//   Lagrangian weight of one bit in squared grid units.
// - A STREAM of values is coded in 32 paths: value i belongs to path i % 32, and path l's values
//   l, l + 32, ... form one trellis path, restarted at state 0 at every multiple of segment_size
//   (where the coder's segments start, so they decode alone). quantize_stream() runs these 32 x
//   segments Viterbi searches in parallel; quantize_sequence() runs one, from any start state,
//   which is what a per-column (LDLQ) method calls with the end state of the lane's previous
//   column. How a matrix maps to the stream is the method's choice; paths of fewer than a few
//   hundred values lose part of the gain (docs/bench/trellis.md), so a column should be one
//   lane's path: strips of 32 columns stored row by row, (r, c) at (c / 32) 32 m + 32 r + c % 32,
//   segments of whole strips (tests/test_trellis_quantizer.cpp does exactly this).
// - The model: one table per union for the table symbol k >> 1, at table_precision. fit() starts
//   from an ECSQ-like model (each union's grid rounded to nearest), then alternates searches and
//   refits on a sample of whole lane paths. Automatic μ = 2 ln 2 D / Δ^2, D the last pass's MSE:
//   the slope of D(R) = σ² 2^(-2R) at the operating point (measured best, docs/bench/trellis.md).
// - TrellisCode fits its tables to the final symbols, so the written rate is their conditional
//   empirical entropy plus the coder's overhead.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/context_rans.hpp"
#include "nwc/quant/entropy_coded_scalar.hpp"
#include "nwc/quant/trellis.hpp"
#include "nwc/quant/trellis_search.hpp"

namespace nwc {

/// Options of TrellisQuantizer.
struct TrellisQuantizerOptions {
    int states = 256;                        ///< 4, 8, 16, 32, 64, 128 or 256
    double rate_weight = -1.0;               ///< μ = λ / Δ^2; negative: automatic (2 ln 2 x the measured MSE in grid units)
    int fit_passes = 3;                      ///< search + refit passes of fit()
    std::size_t fit_sample = 1 << 20;        ///< fit() searches at most about this many values (whole lane paths)
    int table_precision = 14;                ///< of the union tables (12..16)
    std::uint32_t segment_size = 1 << 18;    ///< lanes restart at state 0 at its multiples; a multiple of 32
    int threads = 1;                         ///< for quantize_stream (0 = all); results do not depend on it
};

/// What fit()'s last pass measured on its sample.
struct TrellisFitResult {
    double bits_per_value = 0.0;  ///< ideal code length under the refitted tables
    double squared_error = 0.0;   ///< mean squared error, grid units
};

/// Entropy-coded trellis-coded quantization of values in grid units.
class TrellisQuantizer {
public:
    explicit TrellisQuantizer(TrellisQuantizerOptions options = {}) : m_options(options), m_trellis(options.states) {
        require(options.table_precision >= CdfTable::min_precision && options.table_precision <= CdfTable::max_precision, errc::invalid_argument,
                "TrellisQuantizer: table precision ", options.table_precision);
        require(options.segment_size >= context_rans::path_count && options.segment_size <= rans::max_segment_size &&
                    options.segment_size % context_rans::path_count == 0,
                errc::invalid_argument, "TrellisQuantizer: segment size ", options.segment_size, " must be a multiple of 32 in [32, 2^24]");
        require(options.fit_passes >= 0 && options.fit_sample >= context_rans::path_count, errc::invalid_argument, "TrellisQuantizer: ", options.fit_passes,
                " passes on ", options.fit_sample, " values");
    }

    const Trellis& trellis() const noexcept { return m_trellis; }
    const TrellisQuantizerOptions& options() const noexcept { return m_options; }
    /// The rate model the searches charge (empty before fit() or set_model(): plain TCQ).
    const TrellisRateModel& rate_model() const noexcept { return m_rates; }
    /// μ in use (0 before a model is set).
    double rate_weight() const noexcept { return m_rates.rate_weight(); }

    /// Searches with these union tables (2 channels) and μ from now on.
    void set_model(const CdfTableSet& tables, double rate_weight) { m_rates = TrellisRateModel(tables, rate_weight); }

    /// Fits the model to `values` (grid units): an ECSQ-like start, then fit_passes x (search a
    /// sample of whole lane paths, refit the tables to its symbols; with automatic μ, set μ from
    /// its MSE). Throws nwc::error(invalid_argument) on a value that is not finite or too large.
    TrellisFitResult fit(std::span<const float> values) {
        if (values.empty()) return {};
        const std::vector<Path> sample = sample_paths(values.size());
        std::vector<float> sample_values;
        for (const Path& path : sample)
            for (std::size_t j = 0; j < path.count; ++j) sample_values.push_back(values[path.first + j * context_rans::path_count]);
        return fit_sample(sample, sample_values);
    }

    /// One lane path of the stream: values first, first + 32, ..., count of them.
    struct Path {
        std::size_t first = 0;
        std::size_t count = 0;
    };
    /// The lane paths fit() searches in a stream of `count` values: every k-th path, spread over
    /// the stream, about fit_sample values in all (a streamed encoder gathers them itself).
    std::vector<Path> sample_paths(std::size_t count) const {
        const std::vector<Path> paths = all_paths(count);
        const std::size_t stride = std::max<std::size_t>(1, (count + m_options.fit_sample - 1) / m_options.fit_sample);
        std::vector<Path> sample;
        for (std::size_t p = 0; p < paths.size(); p += stride) sample.push_back(paths[p]);
        return sample;
    }
    /// fit() on `sample_values`: the values of the paths `sample` (sample_paths()), path after path.
    TrellisFitResult fit_sample(std::span<const Path> sample, std::span<const float> sample_values) {
        if (sample_values.empty()) return {};
        // Start: each union's own grid, rounded to nearest (what ECSQ with step 2 would code).
        std::vector<std::int32_t> symbols(sample_values.size());
        std::vector<CdfTable> start;
        for (std::int32_t u = 0; u < 2; ++u) {
            for (std::size_t i = 0; i < sample_values.size(); ++i) symbols[i] = detail::ecsq_symbol(sample_values[i] - float(u), 2.0f);
            start.push_back(detail::histogram_of(symbols).to_cdf_table(m_options.table_precision));
        }
        const bool automatic = m_options.rate_weight < 0.0;
        // High-rate TCQ: D ~ (1/3) / 10^(1.1/10) grid units^2 before anything is measured.
        set_model(CdfTableSet(std::move(start)), automatic ? 2.0 * std::log(2.0) * 0.26 : m_options.rate_weight);
        TrellisSearch search(m_trellis);
        TrellisFitResult result;
        for (int pass = 0; pass < m_options.fit_passes; ++pass) {
            std::size_t offset = 0;
            for (const Path& path : sample) {
                const auto path_values = std::span<const float>(sample_values).subspan(offset, path.count);
                search.run(path_values, 0, m_rates, std::span<std::int32_t>(symbols).subspan(offset, path.count));
                offset += path.count;
            }
            double squared = 0.0;
            for (std::size_t i = 0; i < symbols.size(); ++i) squared += double(sample_values[i] - float(symbols[i])) * (sample_values[i] - float(symbols[i]));
            const CdfTableSet tables = fit_tables(symbols, m_options.table_precision);
            result.bits_per_value = ideal_bits(symbols, tables) / double(symbols.size());
            result.squared_error = squared / double(symbols.size());
            set_model(tables, automatic ? 2.0 * std::log(2.0) * result.squared_error : m_options.rate_weight);
        }
        return result;
    }

    /// The step Δ at which the values `normalized` / Δ fit (with `options`) to about `target_bits`
    /// bits per value (estimated on fit()'s sample; within 0.005 bit or after 8 steps). Starts from
    /// half of ECSQ's step (TCQ's unions are 2 Δ apart), then secant steps on log Δ.
    static float step_for_target_bits(std::span<const float> normalized, double target_bits, TrellisQuantizerOptions options) {
        float step = EntropyCodedScalar::step_for_target_bits(normalized, target_bits) / 2;
        options.fit_sample = std::min<std::size_t>(options.fit_sample, 1 << 18);
        options.fit_passes = std::max(options.fit_passes, 1);
        std::vector<float> values(normalized.size());
        double previous_log_step = 0.0, previous_bits = 0.0;
        for (int iteration = 0; iteration < 8; ++iteration) {
            for (std::size_t i = 0; i < values.size(); ++i) values[i] = normalized[i] / step;
            TrellisQuantizer quantizer(options);
            const double bits = quantizer.fit(values).bits_per_value;
            if (std::fabs(bits - target_bits) < 0.005) break;
            const double log_step = std::log2(double(step));
            // Rate falls by about a bit per doubling of Δ at high rate, less near zero rate.
            double slope = iteration == 0 || log_step == previous_log_step ? -1.0 : (bits - previous_bits) / (log_step - previous_log_step);
            slope = std::clamp(slope, -2.0, -0.1);
            previous_log_step = log_step;
            previous_bits = bits;
            step = float(std::exp2(log_step + std::clamp((target_bits - bits) / slope, -2.0, 2.0)));
        }
        return step;
    }

    /// One trellis path over `values` from `start_state`: writes grid indices, returns the end state.
    std::uint32_t quantize_sequence(std::span<const float> values, std::uint32_t start_state, std::span<std::int32_t> symbols,
                                    TrellisSearch& search) const {
        require(values.size() == symbols.size(), errc::invalid_argument, "TrellisQuantizer: ", values.size(), " values, ", symbols.size(), " symbols");
        require(start_state < std::uint32_t(m_trellis.states()), errc::invalid_argument, "TrellisQuantizer: start state ", start_state);
        return search.run(values, start_state, m_rates, symbols);
    }

    /// The whole stream: 32 lane paths per segment (see the top of this file), in parallel.
    std::vector<std::int32_t> quantize_stream(std::span<const float> values) const {
        std::vector<std::int32_t> symbols(values.size());
        const std::vector<Path> paths = all_paths(values.size());
        parallel_for(std::int64_t(paths.size()), m_options.threads, [&](std::int64_t p) {
            // Per-thread search and buffers: short segments make many short paths.
            thread_local std::unique_ptr<PathScratch> scratch;
            if (!scratch || scratch->search.trellis().states() != m_trellis.states()) scratch = std::make_unique<PathScratch>(m_trellis);
            const Path& path = paths[std::size_t(p)];
            scratch->values.resize(path.count);
            scratch->symbols.resize(path.count);
            for (std::size_t j = 0; j < path.count; ++j) scratch->values[j] = values[path.first + j * context_rans::path_count];
            scratch->search.run(scratch->values, 0, m_rates, scratch->symbols);
            for (std::size_t j = 0; j < path.count; ++j) symbols[path.first + j * context_rans::path_count] = scratch->symbols[j];
        });
        return symbols;
    }

    /// One table per union (channel u codes k >> 1 of the grid indices k with k & 1 == u), fitted
    /// to the symbols' histograms; a union without symbols gets a one-value table.
    static CdfTableSet fit_tables(std::span<const std::int32_t> symbols, int precision) {
        std::vector<std::int32_t> by_union[2];
        for (std::int32_t k : symbols) by_union[std::uint32_t(k) & 1u].push_back(k >> 1);
        std::vector<CdfTable> tables;
        for (auto& table_symbols : by_union) {
            if (table_symbols.empty()) table_symbols.push_back(0);
            tables.push_back(detail::histogram_of(table_symbols).to_cdf_table(precision));
        }
        return CdfTableSet(std::move(tables));
    }

    /// Ideal code length of a stream's grid indices under union tables, in bits.
    static double ideal_bits(std::span<const std::int32_t> symbols, const CdfTableSet& tables) {
        double bits = 0.0;
        for (std::int32_t k : symbols) bits += tables[std::uint32_t(k) & 1u].ideal_bits(k >> 1);
        return bits;
    }

private:
    struct PathScratch {
        explicit PathScratch(const Trellis& trellis) : search(trellis) {}
        TrellisSearch search;
        std::vector<float> values;
        std::vector<std::int32_t> symbols;
    };

    std::vector<Path> all_paths(std::size_t count) const {
        std::vector<Path> paths;
        for (std::size_t start = 0; start < count; start += m_options.segment_size) {
            const std::size_t length = std::min<std::size_t>(m_options.segment_size, count - start);
            for (std::size_t lane = 0; lane < context_rans::path_count && lane < length; ++lane)
                paths.push_back({start + lane, (length - lane + context_rans::path_count - 1) / context_rans::path_count});
        }
        return paths;
    }
    TrellisQuantizerOptions m_options;
    Trellis m_trellis;
    TrellisRateModel m_rates;
};

/// Grid indices coded for a decoder: the trellis, the union tables fitted to the indices, and the
/// context-coded rANS stream (docs/format/rans.md, section 4).
class TrellisCode {
public:
    static constexpr std::uint32_t magic = 0x5143544E;  // "NTCQ" little-endian
    static constexpr std::uint16_t version = 2;  // 2: context stream version 2, varint stream size

    /// Codes the grid indices of a stream quantized with `trellis` and lanes restarting at
    /// multiples of `segment_size` (TrellisQuantizer::quantize_stream or its per-path calls), with
    /// union tables of `precision` fitted to them. Throws nwc::error(invalid_argument) if the
    /// indices do not follow the trellis (an index off its state's union).
    static TrellisCode encode(std::span<const std::int32_t> symbols, const Trellis& trellis, int precision, std::uint32_t segment_size,
                              int threads = 1) {
        TrellisCode code(trellis, TrellisQuantizer::fit_tables(symbols, precision));
        RangeCoderOptions options;
        options.segment_size = segment_size;
        options.threads = threads;
        code.m_stream = context_rans::encode(symbols, code.m_tables, code.m_machine, options);
        code.m_symbol_count = symbols.size();
        return code;
    }

    const Trellis& trellis() const noexcept { return m_trellis; }
    const CdfTableSet& tables() const noexcept { return m_tables; }
    std::span<const std::uint8_t> stream() const noexcept { return m_stream; }
    std::uint64_t symbol_count() const noexcept { return m_symbol_count; }
    /// The bytes write() produces.
    std::size_t byte_size() const {
        ByteWriter writer;
        write(writer);
        return writer.size();
    }

    /// Decodes the grid indices into `out` (exactly symbol_count() of them); backend::scalar{} or
    /// backend::simd{}, any thread count: identical results. Throws nwc::error(corrupt) on a
    /// corrupt segment, invalid_argument when out has the wrong size.
    template <class Backend = backend::default_backend>
    void decode(std::span<std::int32_t> out, Backend backend = {}, int threads = 1) const {
        context_rans::decode(m_stream, m_tables, m_machine, out, backend, threads);
    }

    /// u32 magic "NTCQ", u16 version, u8 log2 of the state count, u8 zero, the union tables
    /// (CdfTableSet::write, 2 channels), varint stream byte count, the context-coded stream
    /// (without fingerprints or checksum: the tables are right here and containers CRC every tensor).
    void write(ByteWriter& writer) const {
        writer.put_u32(magic);
        writer.put_u16(version);
        writer.put_u8(std::uint8_t(m_trellis.state_bits()));
        writer.put_u8(0);
        m_tables.write(writer);
        detail::put_varint(writer, m_stream.size());
        writer.put_bytes(m_stream);
    }
    /// Reads and fully validates what write() wrote (the stream's header, index and checksum
    /// included). Throws nwc::error: truncated, corrupt, unsupported.
    static TrellisCode read(ByteReader& reader) {
        const std::size_t at = reader.offset();
        const std::uint32_t found_magic = reader.get_u32();
        require(found_magic == magic, errc::corrupt, reader.context(), ": trellis code at offset ", at, " has magic 0x", std::hex, found_magic,
                ", expected 0x", magic);
        const std::uint16_t found_version = reader.get_u16();
        require(found_version == version, errc::unsupported, reader.context(), ": trellis code version ", found_version, " (this build reads ",
                version, ")");
        const int state_bits = reader.get_u8();
        require(state_bits >= Trellis::min_state_bits && state_bits <= Trellis::max_state_bits && reader.get_u8() == 0, errc::corrupt,
                reader.context(), ": trellis code at offset ", at, " has ", state_bits, " state bits or a nonzero reserved byte");
        CdfTableSet tables = CdfTableSet::read(reader);
        require(tables.channel_count() == 2, errc::corrupt, reader.context(), ": trellis code at offset ", at, " has ", tables.channel_count(),
                " tables (expected 2)");
        const std::uint64_t stream_bytes = detail::get_varint(reader, "trellis code stream size");
        require(stream_bytes <= reader.remaining(), errc::truncated, reader.context(), ": trellis code stream of ", stream_bytes,
                " bytes at offset ", reader.offset(), " but only ", reader.remaining(), " remain");
        const std::span<const std::uint8_t> stream = reader.get_bytes(std::size_t(stream_bytes));
        try {
            TrellisCode code(Trellis(1 << state_bits), std::move(tables));
            code.m_symbol_count = context_rans::read_index(stream, code.m_tables, code.m_machine).symbol_count;
            code.m_stream.assign(stream.begin(), stream.end());
            return code;
        } catch (const error& bad) {
            // Tables that do not fit the stream or the trellis are a corrupt file, not a caller's mistake.
            if (bad.id() != errc::invalid_argument) throw;
            fail(errc::corrupt, reader.context(), ": trellis code at offset ", at, ": ", bad.message());
        }
    }

private:
    TrellisCode(const Trellis& trellis, CdfTableSet tables)
        : m_trellis(trellis), m_machine(trellis.lane_machine()), m_tables(std::move(tables)) {
        const detail::ContextDecodeTables check(m_tables, m_machine);  // values of every bin fit int32
    }

    Trellis m_trellis;
    LaneStateMachine m_machine;
    CdfTableSet m_tables;
    std::vector<std::uint8_t> m_stream;
    std::uint64_t m_symbol_count = 0;
};

}  // namespace nwc
