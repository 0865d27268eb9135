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
#include "nwc/pipeline/method_encoding.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_ecsq_decoding.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/entropy_coded_scalar.hpp"
#include "nwc/quant/ldlq_compensator.hpp"

namespace nwc {

/// The ecsq method: the encoder here, the decoder in EcsqDecoding (method_ecsq_decoding.hpp).
struct EcsqMethod : EcsqDecoding {
    static constexpr MethodKnob knob{
        .option = "step", .integer = false, .rate_grows = false, .lowest = 0x1p-12, .highest = 16.0, .guess_intercept = 2.047, .guess_slope = -1.0};
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.step; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.step = float(value); }

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
    template <class Resources = MethodResources>  // a template: instantiated where a tensor is coded
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const Resources& = {}) {
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
};

}  // namespace nwc
