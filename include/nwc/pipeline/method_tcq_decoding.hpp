// The decoding half of the "tcq" method (method_tcq.hpp has the format and the encoder):
// TcqDecoding parses a tensor's metadata (MethodPrefix, axis, fp16 step, trellis size, scales,
// union tables) into a Layout and decodes a segment (one context rANS stream of its strips, the
// lanes' trellis paths in the state machine) as grid index * (Δ s). Decoding-only programs
// include this, not the trellis search, LDLQ or table fitting.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"
#include "nwc/entropy/context_rans.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/scale_grid.hpp"
#include "nwc/quant/trellis.hpp"
#include "nwc/quant/trellis_strip_layout.hpp"

namespace nwc {

/// The tcq method's decoder (TcqMethod adds the encoder).
struct TcqDecoding {
    static constexpr std::string_view name = "tcq";

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
        thread_local std::vector<std::int32_t> symbols;  // reused: see NwcDecoding::decode_segment
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
};

}  // namespace nwc
