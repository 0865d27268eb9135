// The "tcq" method: entropy-coded trellis-coded quantization (quant/trellis_quantizer.hpp) of the
// normalized weights, with LDLQ feedback when a Hessian is given.
//
// Read me first (byte layout: docs/format/methods.md, section `tcq`):
// - Normalization exactly as ecsq: Chunker scales s (one per tensor, row or column, on the scale
//   grid), one step Δ stored as fp16 (the encoder quantizes with the stored value); a weight is
//   coded in grid units w / (Δ s) and decodes as k * (Δ s), the float product. The rate knob is
//   "step" as for ecsq (fewer bytes as it grows), so rate control and allocation work unchanged.
// - Layout (quant/trellis_strips.hpp): strips of 32 columns, column c on lane c % 32, its trellis
//   path continuing into the lane's next column; segments of whole strips, each its own context
//   rANS stream (docs/format/rans.md, section 3) that decodes alone.
// - Without a Hessian (or options.ldlq false): TrellisQuantizer::fit on the tensor's stream, then
//   quantize_stream per segment (whole lane paths, a Viterbi search each). With one: the same fit,
//   then LDLQCompensator drives TrellisColumnQuantizer, which runs each column's trellis from the
//   state where the lane's previous column ended while the feedback moves the columns not yet coded.
// - Entropy tables: two compact tables (one per trellis union, coding k >> 1), fitted to the final
//   symbols of the whole tensor (union 0's fit picks the precision both use), stored once in the
//   metadata; the trellis machine follows from the state count.
// - Vectors never come here: the codec codes them with ecsq (pipeline_codec.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
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

/// The tcq method.
struct TcqMethod {
    static constexpr std::string_view name = "tcq";
    // TCQ's unions are 2 Δ apart: at the same rate its step is about half of ecsq's (log2 Δ = 1.047 - B).
    static constexpr MethodKnob knob{
        .option = "step", .integer = false, .rate_grows = false, .lowest = 0x1p-12, .highest = 16.0, .guess_intercept = 1.047, .guess_slope = -1.0};
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.step; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.step = float(value); }

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

    /// Codes W (m x n) with step options.step and options.tcq_states trellis states.
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, const Resources&) {
        const std::int64_t rows = weights.rows(), cols = weights.cols();
        const half stored_step = to_half(options.step);
        require(is_finite(stored_step) && (stored_step.bits & 0x7C00) != 0, errc::invalid_argument, "tcq step ", options.step,
                " is outside fp16's normal range (6.1e-5 .. 65504)");
        const float step = to_float(stored_step);
        const std::vector<half> scales = Chunker(ChunkerOptions{.axis = options.axis}).compute_scales(weights);
        std::vector<float> steps(std::size_t(scale_count(options.axis, rows, cols)), step);
        for (std::size_t i = 0; i < scales.size(); ++i) steps[i] = step * to_float(scales[i]);
        const auto step_at = [&](std::int64_t r, std::int64_t c) { return steps[std::size_t(scale_index(options.axis, r, c))]; };

        const TrellisStripLayout strips = TrellisStripLayout::for_matrix(rows, cols, options.weights_per_segment);
        std::vector<float> normalized(std::size_t(rows * cols));  // the whole tensor's stream, grid units
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) normalized[std::size_t(strips.position(r, c))] = weights(r, c) / step_at(r, c);
        TrellisQuantizerOptions trellis_options;
        trellis_options.states = options.tcq_states;
        trellis_options.segment_size = TrellisStripLayout::restart_interval;
        trellis_options.threads = std::max(1, options.threads);
        TrellisQuantizer quantizer(trellis_options);
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

        const TableFit fit = fit_union_tables(symbols);
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
        for (const CompactCdfTable& table : fit.compact) table.write(metadata);
        tensor.metadata = metadata.take();
        const LaneStateMachine machine = quantizer.trellis().lane_machine();
        RangeCoderOptions coder;
        coder.segment_size = TrellisStripLayout::restart_interval;
        for (std::size_t k = 0; k < strips.segment_count(); ++k)
            tensor.add_segment(context_rans::encode(
                std::span<const std::int32_t>(symbols).subspan(std::size_t(strips.segment_begin(k)), std::size_t(strips.segment_weights(k))), fit.tables,
                machine, coder));
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
        layout.steps.resize(scales.size());
        for (std::size_t i = 0; i < scales.size(); ++i) layout.steps[i] = step * to_float(scales[i]);
        const std::size_t states_at = in.offset();
        const int state_bits = in.get_u8();
        require(state_bits >= Trellis::min_state_bits && state_bits <= Trellis::max_state_bits, errc::corrupt, context, ": ", state_bits,
                " trellis state bits at offset ", states_at, " (", Trellis::min_state_bits, "..", Trellis::max_state_bits, ")");
        layout.machine = Trellis(1 << state_bits).lane_machine();
        const std::size_t tables_at = in.offset();
        std::vector<CdfTable> tables;
        for (int u = 0; u < 2; ++u) tables.push_back(CompactCdfTable::read(in).table());
        layout.table_bytes = in.offset() - tables_at;
        in.expect_end();
        try {
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

private:
    /// output(r, c) = symbol * its step for every weight of segment k. A full strip holds each row's
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

    /// The union tables chosen for a tensor's symbols.
    struct TableFit {
        std::vector<CompactCdfTable> compact;
        CdfTableSet tables;
    };

    /// One compact table per union (coding k >> 1 of the indices k with k & 1 == u). A CdfTableSet
    /// has one precision: union 0's fit chooses it (with kind and support, fit_compact_table), union
    /// 1's table is fitted at the same precision (the unions' histograms are near mirror images).
    static TableFit fit_union_tables(std::span<const std::int32_t> symbols) {
        std::vector<std::int32_t> by_union[2];
        for (const std::int32_t k : symbols) by_union[std::uint32_t(k) & 1u].push_back(k >> 1);
        TableFit result;
        std::vector<CdfTable> tables;
        CompactTableFitOptions fit_options;
        for (auto& union_symbols : by_union) {
            if (union_symbols.empty()) union_symbols.push_back(0);
            const SymbolHistogram histogram = detail::histogram_of(union_symbols);
            CompactTableFit fit = fit_compact_table(histogram.offset, histogram.counts, fit_options);
            fit_options.precisions = {fit.table.precision()};
            result.compact.push_back(std::move(fit.compact));
            tables.push_back(std::move(fit.table));
        }
        result.tables = CdfTableSet(std::move(tables));
        return result;
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
};

}  // namespace nwc
