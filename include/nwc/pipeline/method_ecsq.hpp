// The "ecsq" method: normalization scales s (nwc::Chunker: one per tensor, row or column),
// one uniform step Δ on the normalized weights, symbol = round(w / (Δ s)), symbols entropy coded
// by the rANS coder with ONE table fitted to this tensor's own histogram (a compact table:
// fit_compact_table picks the form that minimizes table + payload bytes); optional LDLQ
// (per-column feedback) when a Hessian is given.
//
// Metadata: MethodPrefix (span = rows per segment), u8 axis (0 per column, 1 per row, 2 per
// tensor), fp16 Δ, the scales (1, m or n of them: write_scales), the compact table
// (CompactCdfTable::write). Payload segment k = one rANS stream (docs/format/rans.md) of the
// row-major symbols of rows [k span, min((k + 1) span, m)).
// Value = symbol * (Δ * s), the product Δ * s taken in float as the encoder took it. A vector
// (rank 1, n elements: norm scales) is coded as a 1 x n matrix.
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
#include "nwc/entropy/range_coder.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/entropy_coded_scalar.hpp"
#include "nwc/quant/ldlq_compensator.hpp"

namespace nwc {

/// The ecsq method.
struct EcsqMethod {
    static constexpr std::string_view name = "ecsq";
    static constexpr MethodKnob knob{
        .option = "step", .integer = false, .rate_grows = false, .lowest = 0x1p-12, .highest = 16.0, .guess_intercept = 2.047, .guess_slope = -1.0};
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.step; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.step = float(value); }

    /// Decoding parameters of one tensor.
    struct Layout {
        std::int64_t rows = 0, cols = 0;
        NormalizationAxis axis = NormalizationAxis::per_column;
        std::int64_t rows_per_segment = 1;
        std::vector<float> steps;  ///< Δ * s per column (per_column), row (per_row) or tensor (per_tensor)
        CdfTableSet tables;
        std::uint64_t scale_bytes = 0, table_bytes = 0;  ///< of the metadata (for accounting)

        std::size_t segment_count() const noexcept { return std::size_t(detail::segment_count(rows, rows_per_segment)); }
        std::int64_t segment_weights(std::size_t segment) const noexcept {
            return std::min(rows_per_segment, rows - std::int64_t(segment) * rows_per_segment) * cols;
        }
    };

    /// The step stored in a coded tensor's metadata (NaN if it is too short to hold it).
    static double stored_knob(std::span<const std::uint8_t> metadata) noexcept {
        return detail::stored_after_prefix(metadata, [](ByteReader& in) {
            in.get_u8();
            return double(to_float(half{in.get_u16()}));
        });
    }

    /// Codes W (m x n) with step options.step on the normalized weights.
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, const Resources&) {
        const std::int64_t rows = weights.rows(), cols = weights.cols();
        const half stored_step = detail::stored_step(options.step, name);
        const float step = to_float(stored_step);
        const Chunker chunker(ChunkerOptions{.axis = options.axis});
        EntropyCodedScalar quantizer(EntropyCodedScalarOptions{step, options.axis, chunker.compute_scales(weights)});
        EncodedMatrix result;
        const bool feedback = options.ldlq && hessian != nullptr;
        if (feedback) {
            LDLQResult coded = LDLQCompensator<EntropyCodedScalar>(detail::ldlq_options(options, options.ldlq_block_size, FeedbackMode::per_column))
                                   .compress(weights, hessian->matrix(), quantizer);
            result.used_feedback = coded.report.used_feedback;
            result.reconstruction = std::move(coded.reconstructed);
        } else {
            result.reconstruction = quantizer.quantize(weights);
        }
        result.used_hessian = feedback;
        result.setting = knob_setting<EcsqMethod>(step);

        const CompactTableFit fit = begin_entry(result, quantizer.histogram(), rows, cols, stored_step, quantizer.options().scales, options);
        const CdfTableSet tables({fit.table});
        const std::span<const std::int32_t> symbols = quantizer.symbols();
        const std::int64_t span = rows_per_segment(rows, cols, options);
        for (std::int64_t first = 0; first < rows; first += span) {
            const std::int64_t count = std::min(span, rows - first) * cols;
            add_segment(result.tensor, symbols.subspan(std::size_t(first * cols), std::size_t(count)), tables);
        }
        return result;
    }

    /// encode() without a Hessian, of a matrix read in blocks of rows (RowEncodingMethod): the
    /// scales in two passes, the symbol range and histogram in two more, then each segment's rows
    /// quantized again and coded, the error measured on the way. Symbols are a pure function of a
    /// weight, its step and scale, and the sums run in encode()'s order: the same bytes.
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const MethodResources& = {}) {
        const std::int64_t rows = source.rows, cols = source.cols, block = source.block_rows();
        const half stored_step = detail::stored_step(options.step, name);
        const float step = to_float(stored_step);
        const Chunker chunker(ChunkerOptions{.axis = options.axis});
        const std::vector<half> scales = chunker.compute_scales_by_rows(rows, cols, block, source.all_columns());
        const std::vector<float> steps = detail::scaled_steps(step, scales);  // the products EntropyCodedScalar takes
        // f(row, its symbols' steps' index base, the row) for every row, in order.
        const auto for_each_symbol = [&](std::int64_t first_row, std::int64_t count, auto&& f) {
            for (std::int64_t first = first_row; first < first_row + count; first += block) {
                const TensorView<const float> part = source.read(first, std::min(block, first_row + count - first), 0, cols);
                for (std::int64_t r = 0; r < part.rows(); ++r)
                    for (std::int64_t c = 0; c < cols; ++c) {
                        const float value = part(r, c), element_step = steps[std::size_t(scale_index(options.axis, first + r, c))];
                        f(value, detail::ecsq_symbol(value, element_step), element_step);
                    }
            }
        };
        detail::StreamedHistogram streamed;  // histogram_of's, in one pass
        for_each_symbol(0, rows, [&](float, std::int32_t symbol, float) { streamed.add(symbol); });
        const SymbolHistogram histogram = std::move(streamed).finish();

        EncodedMatrix result;
        result.setting = knob_setting<EcsqMethod>(step);
        const CompactTableFit fit = begin_entry(result, histogram, rows, cols, stored_step, scales, options);
        const CdfTableSet tables({fit.table});
        detail::ErrorMeasure measure;
        std::vector<std::int32_t> symbols;
        const std::int64_t span = rows_per_segment(rows, cols, options);
        for (std::int64_t first = 0; first < rows; first += span) {
            const std::int64_t count = std::min(span, rows - first);
            symbols.clear();
            for_each_symbol(first, count, [&](float value, std::int32_t symbol, float element_step) {
                symbols.push_back(symbol);
                const double difference = double(value) - double(float(symbol) * element_step);  // as measure_error
                measure.squared_error += difference * difference;
                measure.squared_norm += double(value) * double(value);
            });
            add_segment(result.tensor, symbols, tables);
        }
        if (options.measure) result.measured = measure;
        return result;
    }

    static std::int64_t rows_per_segment(std::int64_t rows, std::int64_t cols, const MethodOptions& options) noexcept {
        return std::min(rows, detail::rows_per_segment(cols, options.weights_per_segment));
    }
    /// The entry's method and metadata (prefix, axis, step, scales, table); returns the table fit.
    static CompactTableFit begin_entry(EncodedMatrix& result, const SymbolHistogram& histogram, std::int64_t rows, std::int64_t cols,
                                       half stored_step, std::span<const half> scales, const MethodOptions& options) {
        CompactTableFit fit = fit_compact_table(histogram.offset, histogram.counts);
        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.flags = result.used_feedback ? detail::flag_feedback : 0;
        prefix.span = std::uint32_t(rows_per_segment(rows, cols, options));
        prefix.write(metadata);
        metadata.put_u8(std::uint8_t(options.axis));
        metadata.put_u16(stored_step.bits);
        write_scales(metadata, scales);
        fit.compact.write(metadata);
        tensor.metadata = metadata.take();
        return fit;
    }
    /// One segment: the rANS stream of `symbols` (its rows, row-major).
    static void add_segment(ContainerTensor& tensor, std::span<const std::int32_t> symbols, const CdfTableSet& tables) {
        RangeCoderOptions coder;
        coder.segment_size = std::uint32_t(symbols.size());
        tensor.add_segment(rans::encode(symbols, tables, coder));
    }

    /// Parses and validates the metadata of `entry`.
    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, DecodeResources&, const std::string& context) {
        // A vector (norm scales) is coded as one row.
        const bool vector = entry.shape.rank() == 1 && entry.shape[0] > 0;
        if (!vector) detail::require_matrix(entry.shape, context);
        ByteReader in(metadata, context + " metadata");
        const detail::MethodPrefix prefix = detail::MethodPrefix::read(in, detail::flag_feedback);
        Layout layout;
        layout.rows = vector ? 1 : entry.shape[0];
        layout.cols = vector ? entry.shape[0] : entry.shape[1];
        const std::size_t axis_at = in.offset();
        const std::uint8_t axis = in.get_u8();
        require(axis <= last_normalization_axis, errc::corrupt, context, ": normalization axis ", int(axis), " at offset ", axis_at);
        layout.axis = NormalizationAxis(axis);
        const half stored_step{in.get_u16()};
        const float step = to_float(stored_step);
        require(is_finite(stored_step) && step > 0.0f, errc::corrupt, context, ": step ", step, " at offset ", axis_at + 1, " is not finite and positive");
        const std::size_t scales_at = in.offset();
        const std::vector<half> scales = read_scales(in, std::size_t(scale_count(layout.axis, layout.rows, layout.cols)));
        const std::size_t table_at = in.offset();
        layout.steps = detail::scaled_steps(step, scales);
        layout.tables = CdfTableSet({CompactCdfTable::read(in).table()});
        layout.scale_bytes = table_at - scales_at;
        layout.table_bytes = in.offset() - table_at;
        in.expect_end();
        layout.rows_per_segment = std::min<std::int64_t>(prefix.span, layout.rows);
        require(entry.segment_count() == layout.segment_count(), errc::corrupt, context, ": ", entry.segment_count(), " segments, ", layout.rows,
                " rows in spans of ", layout.rows_per_segment, " need ", layout.segment_count());
        return layout;
    }

    static void account_metadata(const Layout& layout, std::size_t size, ByteAccount& account) {
        account.add("scales", layout.scale_bytes);
        account.add("tables", layout.table_bytes);
        account.add("metadata", size - layout.scale_bytes - layout.table_bytes);
    }
    static void account_segment(const Layout& layout, std::size_t, std::span<const std::uint8_t> bytes, ByteAccount& account) {
        detail::account_rans_stream(bytes, layout.tables, account);
    }

    /// Decodes segment `segment` into its rows of `output`.
    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend backend) {
        const std::int64_t first = std::int64_t(segment) * layout.rows_per_segment;
        const std::int64_t rows = std::min(layout.rows_per_segment, layout.rows - first), cols = layout.cols;
        const RansStreamIndex index = rans::read_index(bytes, layout.tables);
        require(index.symbol_count == std::uint64_t(rows * cols), errc::corrupt, context, " segment ", segment, ": ", index.symbol_count,
                " symbols for ", rows, " x ", cols, " weights");
        thread_local std::vector<std::int32_t> symbols;  // reused: see NwcMethod::decode_segment
        symbols.resize(std::size_t(rows * cols));
        for (std::size_t s = 0; s < index.segments.size(); ++s) {
            const RansSegment& info = index.segments[s];
            rans::decode_segment(bytes, index, layout.tables, s, std::span<std::int32_t>(symbols).subspan(info.first_symbol, info.symbol_count), backend);
        }
        dequantize_segment(layout, segment, symbols, output);
    }

    /// output(r, c) = symbol * its step for every weight of segment k (decode_segment's second half,
    /// public for bench_pipeline's limit_fraction), the axis resolved once per row so that each
    /// row is one loop that vectorizes (the same products as scale_index per weight).
    static void dequantize_segment(const Layout& layout, std::size_t segment, std::span<const std::int32_t> symbols, TensorView<float> output) {
        const std::int64_t first = std::int64_t(segment) * layout.rows_per_segment;
        const std::int64_t rows = std::min(layout.rows_per_segment, layout.rows - first), cols = layout.cols;
        NWC_ASSERT(std::int64_t(symbols.size()) == rows * cols);
        const float* steps = layout.steps.data();
        for (std::int64_t r = 0; r < rows; ++r) {
            const std::int32_t* row_symbols = symbols.data() + r * cols;
            float* row = &output(first + r, 0);
            if (layout.axis == NormalizationAxis::per_column) {
                for (std::int64_t c = 0; c < cols; ++c) row[c] = float(row_symbols[c]) * steps[c];
            } else {
                const float step = steps[std::size_t(scale_index(layout.axis, first + r, 0))];
                for (std::int64_t c = 0; c < cols; ++c) row[c] = float(row_symbols[c]) * step;
            }
        }
    }
};

}  // namespace nwc
