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
#include "nwc/pipeline/method_encoding.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_tcq_decoding.hpp"
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

/// The tcq method: the encoder here, the decoder in TcqDecoding (method_tcq_decoding.hpp).
struct TcqMethod : TcqDecoding {
    // TCQ's unions are 2 Δ apart: at the same rate its step is about half of ecsq's (log2 Δ = 1.047 - B).
    static constexpr MethodKnob knob{
        .option = "step", .integer = false, .rate_grows = false, .lowest = 0x1p-12, .highest = 16.0, .guess_intercept = 1.047, .guess_slope = -1.0};
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.tcq_step; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.tcq_step = float(value); }

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
    template <class Resources = MethodResources>  // a template: instantiated where a tensor is coded
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const Resources& = {}) {
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
