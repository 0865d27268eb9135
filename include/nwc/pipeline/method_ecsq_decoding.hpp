// The decoding half of the "ecsq" method (method_ecsq.hpp has the format and the encoder):
// EcsqDecoding parses a tensor's metadata (MethodPrefix, axis, fp16 step, scales, compact table)
// into a Layout and decodes a segment (one rANS stream of its rows' symbols) as symbol * (Δ s).
// Decoding-only programs (<nwc/decode.hpp>, the CUDA decoder) include this, not the encoder's
// quantizers, LDLQ and table fitting.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// The ecsq method's decoder (EcsqMethod adds the encoder).
struct EcsqDecoding {
    static constexpr std::string_view name = "ecsq";

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
        thread_local std::vector<std::int32_t> symbols;  // reused: see NwcDecoding::decode_segment
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
