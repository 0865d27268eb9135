// The "tcq" method: entropy-coded trellis-coded quantization (quant/trellis_quantizer.hpp) of the
// normalized weights, with LDLQ feedback when a Hessian is given.
//
// Read me first (byte layout: docs/format/methods.md, section `tcq`):
// - Normalization exactly as ecsq: Chunker scales s (one per tensor, row or column, on the scale
//   grid), one step Δ stored as fp16 (the encoder quantizes with the stored value); a weight is
//   coded in grid units w / (Δ s) and decodes as k * (Δ s), the float product. The rate knob is
//   "step" as for ecsq (fewer bytes as it grows; MethodOptions::tcq_step, its own field so that
//   each method's default lands near the same rate), so rate control and allocation work unchanged.
// - Layout (quant/trellis_strips.hpp): strips of 32 columns, column c on lane c % 32, its trellis
//   path continuing into the lane's next column; segments of whole strips, each its own context
//   rANS stream (docs/format/rans.md, section 3) that decodes alone.
// - Without a Hessian (or options.ldlq false): TrellisQuantizer::fit on the tensor's stream, then
//   quantize_stream per segment (whole lane paths, a Viterbi search each). With one: the same fit,
//   then LDLQCompensator drives TrellisColumnQuantizer, which runs each column's trellis from the
//   state where the lane's previous column ended while the feedback moves the columns not yet coded.
// - Entropy tables: one per trellis union (coding k >> 1), fitted to the final symbols of the whole
//   tensor (union 0's fit picks the precision both use), stored once in the metadata; union 1's is
//   one byte when the table derived from union 0's (the odd indices lie between the even ones)
//   costs less in all. The trellis machine follows from the state count.
// - Vectors never come here: the codec codes them with ecsq (pipeline_codec.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/cdf_table_fit.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"
#include "nwc/entropy/context_rans.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/trellis_quantizer.hpp"
#include "nwc/quant/trellis_strips.hpp"

namespace nwc {

namespace detail {
/// Grid indices kept between a streamed encoder's search and its coding, in the narrowest of
/// int8, int16, int32 that holds them all (one byte per weight at the rates tcq is used at).
class PackedSymbols {
public:
    PackedSymbols() = default;
    explicit PackedSymbols(std::span<const std::int32_t> symbols) : m_count(symbols.size()) {
        std::int32_t largest = 0;
        for (const std::int32_t symbol : symbols) largest = std::max(largest, symbol < 0 ? -(symbol + 1) : symbol);
        m_width = largest < 128 ? 1 : largest < 32768 ? 2 : 4;
        m_bytes.resize(symbols.size() * std::size_t(m_width));
        for (std::size_t i = 0; i < symbols.size(); ++i) {
            if (m_width == 1) m_bytes[i] = std::uint8_t(std::int8_t(symbols[i]));
            else if (m_width == 2) store(i, std::int16_t(symbols[i]));
            else store(i, symbols[i]);
        }
    }
    std::int32_t operator[](std::size_t i) const noexcept {
        if (m_width == 1) return std::int8_t(m_bytes[i]);
        if (m_width == 2) return load<std::int16_t>(i);
        return load<std::int32_t>(i);
    }
    /// Bytes per symbol: 1, 2 or 4.
    int width() const noexcept { return m_width; }
    std::vector<std::int32_t> unpack() const {
        std::vector<std::int32_t> symbols(m_count);
        for (std::size_t i = 0; i < m_count; ++i) symbols[i] = (*this)[i];
        return symbols;
    }

private:
    template <class T>
    void store(std::size_t i, T value) noexcept { std::memcpy(m_bytes.data() + i * sizeof(T), &value, sizeof(T)); }
    template <class T>
    T load(std::size_t i) const noexcept {
        T value;
        std::memcpy(&value, m_bytes.data() + i * sizeof(T), sizeof(T));
        return value;
    }

    std::size_t m_count = 0;
    int m_width = 1;
    std::vector<std::uint8_t> m_bytes;
};
}  // namespace detail

/// The tcq method.
struct TcqMethod {
    static constexpr std::string_view name = "tcq";
    // TCQ's unions are 2 Δ apart: at the same rate its step is about half of ecsq's (log2 Δ = 1.047 - B).
    static constexpr MethodKnob knob{
        .option = "step", .integer = false, .rate_grows = false, .lowest = 0x1p-12, .highest = 16.0, .guess_intercept = 1.047, .guess_slope = -1.0};
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.tcq_step; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.tcq_step = float(value); }

    /// Decoding parameters of one tensor.
    struct Layout {
        TrellisStripLayout strips;
        NormalizationAxis axis = NormalizationAxis::per_column;
        std::vector<float> steps;  ///< Δ * s per column (per_column), row (per_row) or tensor (per_tensor)
        LaneStateMachine machine;
        CdfTableSet tables;
        std::uint64_t scale_bytes = 0, table_bytes = 0;  ///< of the metadata (for accounting)

        std::size_t segment_count() const noexcept { return strips.segment_count(); }
        std::int64_t segment_weights(std::size_t segment) const noexcept { return strips.segment_weights(segment); }
    };

    /// The step stored in a coded tensor's metadata (NaN if it is too short to hold it).
    static double stored_knob(std::span<const std::uint8_t> metadata) noexcept {
        return detail::stored_after_prefix(metadata, [](ByteReader& in) {
            in.get_u8();
            return double(to_float(half{in.get_u16()}));
        });
    }

    /// Codes W (m x n) with step options.tcq_step and options.tcq_states trellis states.
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, const Resources&) {
        const std::int64_t rows = weights.rows(), cols = weights.cols();
        const half stored_step = detail::stored_step(options.tcq_step, name);
        const float step = to_float(stored_step);
        const std::vector<half> scales = Chunker(ChunkerOptions{.axis = options.axis}).compute_scales(weights);
        const std::vector<float> steps = detail::scaled_steps(step, scales);
        const auto step_at = [&](std::int64_t r, std::int64_t c) { return steps[std::size_t(scale_index(options.axis, r, c))]; };

        const TrellisStripLayout strips = TrellisStripLayout::for_matrix(rows, cols, options.weights_per_segment);
        std::vector<float> normalized(std::size_t(rows * cols));  // the whole tensor's stream, grid units
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) normalized[std::size_t(strips.position(r, c))] = weights(r, c) / step_at(r, c);
        TrellisQuantizer quantizer(trellis_options_of(options));
        quantizer.fit(normalized);

        EncodedMatrix result;
        std::vector<std::int32_t> symbols;
        const bool feedback = options.ldlq && hessian != nullptr;
        if (feedback) {
            TrellisColumnQuantizer columns(quantizer, strips, steps, options.axis);
            LDLQOptions ldlq = detail::ldlq_options(options, options.ldlq_block_size, FeedbackMode::per_column);
            ldlq.row_block = int(rows);  // whole columns: the lanes' trellis states run from column to column
            LDLQResult coded = LDLQCompensator<TrellisColumnQuantizer>(ldlq).compress(weights, hessian->matrix(), columns);
            result.used_feedback = coded.report.used_feedback;
            result.reconstruction = std::move(coded.reconstructed);
            symbols.assign(columns.symbols().begin(), columns.symbols().end());
        } else {
            symbols.resize(normalized.size());
            result.reconstruction = Tensor<float>(weights.shape());
            for (std::size_t k = 0; k < strips.segment_count(); ++k) {
                const std::size_t first = std::size_t(strips.segment_begin(k)), count = std::size_t(strips.segment_weights(k));
                const std::vector<std::int32_t> coded = quantizer.quantize_stream(std::span<const float>(normalized).subspan(first, count));
                std::copy(coded.begin(), coded.end(), symbols.begin() + std::ptrdiff_t(first));
                strips.for_each_in_segment(k, [&](std::int64_t r, std::int64_t c, std::int64_t i) {
                    result.reconstruction(r, c) = float(coded[std::size_t(i)]) * step_at(r, c);
                });
            }
        }
        result.used_hessian = feedback;
        result.setting = knob_setting<TcqMethod>(step);
        std::vector<float>().swap(normalized);  // a tensor's worth of memory not held while the tables are fitted and the streams written

        const TableFit fit = fit_union_tables(union_histograms(symbols));
        write_metadata(result, strips, stored_step, scales, quantizer, fit, options);
        const LaneStateMachine machine = quantizer.trellis().lane_machine();
        for (std::size_t k = 0; k < strips.segment_count(); ++k)
            add_segment(result.tensor,
                        std::span<const std::int32_t>(symbols).subspan(std::size_t(strips.segment_begin(k)), std::size_t(strips.segment_weights(k))),
                        fit.tables, machine);
        return result;
    }

    /// encode() without a Hessian, of a matrix read in blocks of rows (RowEncodingMethod): the
    /// scales in two passes; fit()'s sample gathered in one (the same paths of the same stream);
    /// each segment's strips read, searched and its symbols kept in the narrowest integer type
    /// that holds them; the error measured in one more pass in the order measure_error takes;
    /// then the tables and the segments. The same values reach the same searches: the same bytes.
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const MethodResources& = {}) {
        const std::int64_t rows = source.rows, cols = source.cols, block = source.block_rows();
        const half stored_step = detail::stored_step(options.tcq_step, name);
        const float step = to_float(stored_step);
        const std::vector<half> scales = Chunker(ChunkerOptions{.axis = options.axis}).compute_scales_by_rows(rows, cols, block, source.all_columns());
        const std::vector<float> steps = detail::scaled_steps(step, scales);
        const auto step_at = [&](std::int64_t r, std::int64_t c) { return steps[std::size_t(scale_index(options.axis, r, c))]; };
        const TrellisStripLayout strips = TrellisStripLayout::for_matrix(rows, cols, options.weights_per_segment);
        TrellisQuantizer quantizer(trellis_options_of(options));
        fit_streamed(quantizer, source, strips, step_at);

        EncodedMatrix result;
        result.setting = knob_setting<TcqMethod>(step);
        std::vector<detail::PackedSymbols> packed(strips.segment_count());
        std::array<detail::StreamedHistogram, 2> unions;
        std::vector<float> stream;
        for (std::size_t k = 0; k < strips.segment_count(); ++k) {
            const std::int64_t begin = strips.segment_begin(k), first_col = strips.first_strip(k) * TrellisStripLayout::strip_width;
            const std::int64_t width = std::min(cols, strips.end_strip(k) * TrellisStripLayout::strip_width) - first_col;
            stream.resize(std::size_t(strips.segment_weights(k)));
            for (std::int64_t first = 0; first < rows; first += block) {
                const TensorView<const float> part = source.read(first, std::min(block, rows - first), first_col, width);
                for (std::int64_t r = 0; r < part.rows(); ++r)
                    for (std::int64_t c = 0; c < width; ++c)
                        stream[std::size_t(strips.position(first + r, first_col + c) - begin)] = part(r, c) / step_at(first + r, first_col + c);
            }
            const std::vector<std::int32_t> symbols = quantizer.quantize_stream(stream);
            for (const std::int32_t symbol : symbols) unions[std::uint32_t(symbol) & 1u].add(symbol >> 1);
            packed[k] = detail::PackedSymbols(symbols);
        }
        std::vector<float>().swap(stream);
        if (options.measure) {  // measure_error's sums, row-major
            detail::ErrorMeasure measure;
            const std::int64_t segment_columns = strips.strips_per_segment * TrellisStripLayout::strip_width;
            for (std::int64_t first = 0; first < rows; first += block) {
                const TensorView<const float> part = source.read(first, std::min(block, rows - first), 0, cols);
                for (std::int64_t r = 0; r < part.rows(); ++r)
                    for (std::int64_t c = 0; c < cols; ++c) {
                        const std::size_t k = std::size_t(c / segment_columns);
                        const std::int32_t symbol = packed[k][std::size_t(strips.position(first + r, c) - strips.segment_begin(k))];
                        const double value = part(r, c), difference = value - double(float(symbol) * step_at(first + r, c));
                        measure.squared_error += difference * difference;
                        measure.squared_norm += value * value;
                    }
            }
            result.measured = measure;
        }
        const TableFit fit = fit_union_tables({std::move(unions[0]).finish(), std::move(unions[1]).finish()});
        write_metadata(result, strips, stored_step, scales, quantizer, fit, options);
        const LaneStateMachine machine = quantizer.trellis().lane_machine();
        for (std::size_t k = 0; k < strips.segment_count(); ++k) {
            add_segment(result.tensor, packed[k].unpack(), fit.tables, machine);
            packed[k] = {};
        }
        return result;
    }

    /// Parses and validates the metadata of `entry`.
    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, DecodeResources&, const std::string& context) {
        detail::require_matrix(entry.shape, context);
        ByteReader in(metadata, context + " metadata");
        const detail::MethodPrefix prefix = detail::MethodPrefix::read(in, detail::flag_feedback);
        Layout layout;
        const std::int64_t rows = entry.shape[0], cols = entry.shape[1];
        const std::size_t axis_at = in.offset();
        const std::uint8_t axis = in.get_u8();
        require(axis <= last_normalization_axis, errc::corrupt, context, ": normalization axis ", int(axis), " at offset ", axis_at);
        layout.axis = NormalizationAxis(axis);
        const half stored_step{in.get_u16()};
        const float step = to_float(stored_step);
        require(is_finite(stored_step) && step > 0.0f, errc::corrupt, context, ": step ", step, " at offset ", axis_at + 1, " is not finite and positive");
        const std::size_t scales_at = in.offset();
        const std::vector<half> scales = read_scales(in, std::size_t(scale_count(layout.axis, rows, cols)));
        layout.scale_bytes = in.offset() - scales_at;
        layout.steps = detail::scaled_steps(step, scales);
        const std::size_t states_at = in.offset();
        const int state_bits = in.get_u8();
        require(state_bits >= Trellis::min_state_bits && state_bits <= Trellis::max_state_bits, errc::corrupt, context, ": ", state_bits,
                " trellis state bits at offset ", states_at, " (", Trellis::min_state_bits, "..", Trellis::max_state_bits, ")");
        layout.machine = Trellis(1 << state_bits).lane_machine();
        const std::size_t tables_at = in.offset();
        std::vector<CdfTable> tables;
        tables.push_back(CompactCdfTable::read(in).table());
        const std::size_t union1_at = in.offset();
        if (in.remaining() >= 1 && (metadata[union1_at] >> 6) == derived_table_kind) {  // the derived table's single byte
            const std::uint8_t marker = in.get_u8();
            require(marker == derived_table_marker, errc::corrupt, context, ": union 1 table byte ", int(marker), " at offset ", union1_at,
                    " (a derived table is the byte ", int(derived_table_marker), ")");
        } else {
            tables.push_back(CompactCdfTable::read(in).table());
        }
        layout.table_bytes = in.offset() - tables_at;
        in.expect_end();
        try {
            if (tables.size() == 1) tables.push_back(derived_union_table(tables[0]));
            layout.tables = CdfTableSet(std::move(tables));
            const nwc::detail::ContextDecodeTables check(layout.tables, layout.machine);  // every bin's value fits int32
        } catch (const error& bad) {
            if (bad.id() != errc::invalid_argument) throw;
            fail(errc::corrupt, context, ": union tables at offset ", tables_at, ": ", bad.message());
        }
        layout.strips = TrellisStripLayout{rows, cols, std::int64_t(prefix.span)};
        layout.strips.strips_per_segment = std::min(layout.strips.strips_per_segment, layout.strips.strip_count());
        require(entry.segment_count() == layout.segment_count(), errc::corrupt, context, ": ", entry.segment_count(), " segments, ",
                layout.strips.strip_count(), " strips of 32 columns in spans of ", layout.strips.strips_per_segment, " need ", layout.segment_count());
        return layout;
    }

    static void account_metadata(const Layout& layout, std::size_t size, ByteAccount& account) {
        account.add("scales", layout.scale_bytes);
        account.add("tables", layout.table_bytes);
        account.add("metadata", size - layout.scale_bytes - layout.table_bytes);
    }
    /// The stream's renormalization words are "payload"; header, index, lane states and escapes "framing".
    static void account_segment(const Layout& layout, std::size_t, std::span<const std::uint8_t> bytes, ByteAccount& account) {
        const RansStreamIndex index = read_index(layout, bytes, "segment");
        std::uint64_t words = 0;
        for (const RansSegment& segment : index.segments) words += 2 * std::uint64_t(segment.word_count);
        account.add("payload", words);
        account.add("framing", bytes.size() - words);
    }

    /// Decodes segment `segment` into its columns of `output`.
    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend backend) {
        const std::string where = context + " segment " + std::to_string(segment);
        const RansStreamIndex index = read_index(layout, bytes, where);
        require(index.symbol_count == std::uint64_t(layout.segment_weights(segment)), errc::corrupt, where, ": ", index.symbol_count, " symbols for ",
                layout.segment_weights(segment), " weights");
        thread_local std::vector<std::int32_t> symbols;  // reused: see NwcMethod::decode_segment
        symbols.resize(std::size_t(index.symbol_count));
        try {
            context_rans::decode(bytes, layout.tables, layout.machine, std::span<std::int32_t>(symbols), backend);
        } catch (const error& bad) {
            if (bad.id() != errc::invalid_argument) throw;
            fail(errc::corrupt, where, ": ", bad.message());
        }
        dequantize_segment(layout, segment, symbols, output);
    }

    /// Union 1's description may be this one byte (CompactCdfTable kind 3, which that format
    /// leaves unused): its table is then derived from union 0's (derived_union_table).
    static constexpr std::uint8_t derived_table_kind = 3, derived_table_marker = 0xC0;

    /// Union 1's table as union 0's implies it: union 0 codes the even grid indices 2j, union 1 the
    /// odd ones 2j + 1 that lie between them, so bin j of union 1 gets the geometric mean of union
    /// 0's frequencies of j and j + 1 (log-density interpolated halfway), for j = o - 1 .. o + n - 1
    /// (a missing neighbour at either end counts as union 0's escape frequency), and union 0's
    /// escape frequency as its escape weight; then CdfTable::from_weights at union 0's precision.
    /// Integer arithmetic only. On stories260K at 4 bits per weight (no calibration) the encoder
    /// chose it for 33 of the 36 matrices: the tables took 428 bytes instead of 625 (docs/format/methods.md).
    /// Throws nwc::error(invalid_argument) when the table would not be valid (offset or bins out of range).
    static CdfTable derived_union_table(const CdfTable& union0) {
        const std::span<const std::uint32_t> f = union0.frequencies();
        const std::size_t support = union0.support();
        const std::uint64_t escape = f[support];
        require(union0.offset() > std::numeric_limits<std::int32_t>::min(), errc::invalid_argument, "tcq: union 0 table offset ", union0.offset(),
                " leaves no room below it for union 1's");
        std::vector<std::uint64_t> weights(support + 2);
        for (std::size_t j = 0; j <= support; ++j) {
            const std::uint64_t below = j == 0 ? escape : f[j - 1], above = j == support ? escape : f[j];
            weights[j] = nwc::detail::isqrt128((nwc::detail::compact_u128(below) << 32) * above);
        }
        weights[support + 1] = escape << 16;
        return CdfTable::from_weights(union0.offset() - 1, weights, union0.precision());
    }

    /// The segment's stream index; a stream that does not fit the tables is a corrupt file.
    static RansStreamIndex read_index(const Layout& layout, std::span<const std::uint8_t> bytes, const std::string& where) {
        try {
            return context_rans::read_index(bytes, layout.tables, layout.machine);
        } catch (const error& bad) {
            if (bad.id() != errc::invalid_argument) throw;
            fail(errc::corrupt, where, ": ", bad.message());
        }
    }

    /// output(r, c) = symbol * its step for every weight of segment k (decode_segment's second half,
    /// public for bench_pipeline's limit_fraction). A full strip holds each row's
    /// 32 columns contiguously, in the output as in the stream: those rows are one vectorizable
    /// loop with the axis resolved once (per weight it cost more than the SIMD rANS decoding).
    static void dequantize_segment(const Layout& layout, std::size_t segment, std::span<const std::int32_t> symbols, TensorView<float> output) {
        const TrellisStripLayout& strips = layout.strips;
        constexpr std::int64_t width = TrellisStripLayout::strip_width;
        const float* steps = layout.steps.data();
        const std::int32_t* symbol = symbols.data();
        for (std::int64_t strip = strips.first_strip(segment); strip < strips.end_strip(segment); ++strip) {
            const std::int64_t first = strip * width;
            if (strips.strip_columns(strip) != width) {  // the last, narrower strip: stored column by column
                for (std::int64_t c = first; c < strips.cols; ++c)
                    for (std::int64_t r = 0; r < strips.rows; ++r) output(r, c) = float(*symbol++) * steps[std::size_t(scale_index(layout.axis, r, c))];
                continue;
            }
            for (std::int64_t r = 0; r < strips.rows; ++r, symbol += width) {
                float* row = &output(r, first);
                if (layout.axis == NormalizationAxis::per_column) {
                    for (std::int64_t c = 0; c < width; ++c) row[c] = float(symbol[c]) * steps[first + c];
                } else {
                    const float step = steps[std::size_t(scale_index(layout.axis, r, first))];
                    for (std::int64_t c = 0; c < width; ++c) row[c] = float(symbol[c]) * step;
                }
            }
        }
    }

private:
    /// Bits (Q16) of the values of `histogram` under `table`, escape codes included.
    static std::uint64_t payload_q16(const CdfTable& table, const SymbolHistogram& histogram) {
        const std::uint64_t precision_q16 = std::uint64_t(table.precision()) << 16;
        std::uint64_t total = 0;
        for (std::size_t i = 0; i < histogram.counts.size(); ++i) {
            if (histogram.counts[i] == 0) continue;
            const std::int32_t value = std::int32_t(std::int64_t(histogram.offset) + std::int64_t(i));
            const std::uint32_t bin = table.bin_of(value);
            std::uint64_t bits = precision_q16 - nwc::detail::log2_q16(table.frequencies()[bin]);
            if (bin == table.escape_bin())
                bits += std::uint64_t(nwc::detail::escape_code_bits(nwc::detail::escape_code(value, table.offset(), table.support()))) << 16;
            total += histogram.counts[i] * bits;
        }
        return total;
    }

    /// The union tables chosen for a tensor's symbols.
    struct TableFit {
        std::vector<CompactCdfTable> compact;
        CdfTableSet tables;
        bool union1_derived = false;  ///< union 1's table is derived_union_table(union 0's): one byte
    };

    /// One compact table per union (coding k >> 1 of the indices k with k & 1 == u). A CdfTableSet
    /// has one precision: union 0's fit chooses it (with kind and support, fit_compact_table), union
    /// 1's table is fitted at the same precision, or derived from union 0's when that costs fewer
    /// bits in all (its byte plus its payload against the fitted table's bytes plus payload).
    /// The histograms of k >> 1 over the indices k of each union (k & 1); an empty union counts one 0.
    static std::array<SymbolHistogram, 2> union_histograms(std::span<const std::int32_t> symbols) {
        std::array<detail::StreamedHistogram, 2> unions;
        for (const std::int32_t k : symbols) unions[std::uint32_t(k) & 1u].add(k >> 1);
        return {std::move(unions[0]).finish(), std::move(unions[1]).finish()};
    }
    static TableFit fit_union_tables(std::array<SymbolHistogram, 2> histograms) {
        TableFit result;
        std::vector<CdfTable> tables;
        CompactTableFitOptions fit_options;
        SymbolHistogram union1;
        std::uint64_t fitted_q16 = 0;  // union 1's fitted table: its bytes and its payload with the coder's loss
        for (SymbolHistogram& histogram : histograms) {
            if (histogram.counts.empty()) histogram = {0, {1}};  // as one symbol 0
            CompactTableFit fit = fit_compact_table(histogram.offset, histogram.counts, fit_options);
            fit_options.precisions = {fit.table.precision()};
            fitted_q16 = (fit.table_bytes << 19) + fit.payload_q16;
            result.compact.push_back(std::move(fit.compact));
            tables.push_back(std::move(fit.table));
            union1 = std::move(histogram);
        }
        try {
            CdfTable derived = derived_union_table(tables[0]);
            const std::uint64_t coder_loss = union1.total() * nwc::detail::coder_loss_q16[derived.precision() - CdfTable::min_precision];
            if ((std::uint64_t(8) << 16) + payload_q16(derived, union1) + coder_loss < fitted_q16) {
                tables[1] = std::move(derived);
                result.union1_derived = true;
            }
        } catch (const error& bad) {
            if (bad.id() != errc::invalid_argument) throw;  // no derived table here: the fitted one stays
        }
        result.tables = CdfTableSet(std::move(tables));
        return result;
    }

    static TrellisQuantizerOptions trellis_options_of(const MethodOptions& options) {
        TrellisQuantizerOptions trellis_options;
        trellis_options.states = options.tcq_states;
        trellis_options.segment_size = TrellisStripLayout::restart_interval;
        trellis_options.threads = std::max(1, options.threads);
        return trellis_options;
    }

    /// quantizer.fit() of the tensor's normalized stream, its sample gathered from a pass over the
    /// rows: stream position p lies on lane path (p / S) 32 + p % S % 32 (S = the restart
    /// interval, whole blocks of 32 lanes before the last: TrellisQuantizer::all_paths), value
    /// (p % S) / 32 of it.
    template <class StepAt>
    static void fit_streamed(TrellisQuantizer& quantizer, const MatrixRows& source, const TrellisStripLayout& strips, StepAt&& step_at) {
        const std::int64_t rows = source.rows, cols = source.cols, block = source.block_rows();
        const std::size_t count = std::size_t(rows * cols), interval = quantizer.options().segment_size, lanes = context_rans::path_count;
        const std::vector<TrellisQuantizer::Path> sample = quantizer.sample_paths(count);
        std::vector<std::int64_t> offset_of_path((count + interval - 1) / interval * lanes, -1);  // where a sampled path's values start
        std::int64_t sampled = 0;
        for (const TrellisQuantizer::Path& path : sample) {
            offset_of_path[path.first / interval * lanes + path.first % interval % lanes] = sampled;
            sampled += std::int64_t(path.count);
        }
        std::vector<float> sample_values(static_cast<std::size_t>(sampled));
        for (std::int64_t first = 0; first < rows; first += block) {
            const TensorView<const float> part = source.read(first, std::min(block, rows - first), 0, cols);
            for (std::int64_t r = 0; r < part.rows(); ++r)
                for (std::int64_t c = 0; c < cols; ++c) {
                    const std::size_t p = std::size_t(strips.position(first + r, c)), within = p % interval;
                    const std::int64_t offset = offset_of_path[p / interval * lanes + within % lanes];
                    if (offset >= 0) sample_values[std::size_t(offset) + within / lanes] = part(r, c) / step_at(first + r, c);
                }
        }
        quantizer.fit_sample(sample, sample_values);
    }

    /// The entry's method and metadata: prefix, axis, step, scales, state bits, union tables.
    static void write_metadata(EncodedMatrix& result, const TrellisStripLayout& strips, half stored_step, std::span<const half> scales,
                               const TrellisQuantizer& quantizer, const TableFit& fit, const MethodOptions& options) {
        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.flags = result.used_feedback ? detail::flag_feedback : 0;
        prefix.span = std::uint32_t(strips.strips_per_segment);
        prefix.write(metadata);
        metadata.put_u8(std::uint8_t(options.axis));
        metadata.put_u16(stored_step.bits);
        write_scales(metadata, scales);
        metadata.put_u8(std::uint8_t(quantizer.trellis().state_bits()));
        fit.compact[0].write(metadata);
        if (fit.union1_derived)
            metadata.put_u8(derived_table_marker);
        else
            fit.compact[1].write(metadata);
        tensor.metadata = metadata.take();
    }
    /// One segment: the context rANS stream of its grid indices.
    static void add_segment(ContainerTensor& tensor, std::span<const std::int32_t> symbols, const CdfTableSet& tables, const LaneStateMachine& machine) {
        RangeCoderOptions coder;
        coder.segment_size = TrellisStripLayout::restart_interval;
        tensor.add_segment(context_rans::encode(symbols, tables, machine, coder));
    }
};

}  // namespace nwc
