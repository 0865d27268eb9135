// The decoding half of the "rtn" and "gptq" methods (method_rtn.hpp has the format and the
// encoders): GroupRoundingDecoding parses a tensor's metadata (MethodPrefix, bits, rounding
// scheme, group size) into a Layout and decodes a segment (its rows' group scales, then their
// packed codes) as (code - 2^(bits-1)) * scale. Decoding-only programs include this, not
// RoundToNearest's encoder or LDLQ.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/rounding_scheme.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// The rtn (GptqFeedback false) and gptq (true) decoders (GroupRoundingMethod adds the encoders).
template <bool GptqFeedback>
struct GroupRoundingDecoding {
    static constexpr std::string_view name = GptqFeedback ? "gptq" : "rtn";
    /// Grid scale sets may span the whole grid (they are not snapped to within 16 octaves).
    static constexpr int grid_scale_width = 7;

    /// Decoding parameters of one tensor, validated against its shape.
    struct Layout {
        std::int64_t rows = 0, cols = 0;
        int bits = 4, group_size = 32;
        RoundingScheme scheme = RoundingScheme::grid;
        std::int64_t rows_per_segment = 1;
        std::int64_t groups_per_row = 1;

        std::size_t segment_count() const noexcept { return std::size_t(detail::segment_count(rows, rows_per_segment)); }
        std::int64_t segment_rows(std::size_t segment) const noexcept { return std::min(rows_per_segment, rows - std::int64_t(segment) * rows_per_segment); }
        std::int64_t segment_weights(std::size_t segment) const noexcept { return segment_rows(segment) * cols; }
        std::uint64_t code_bytes(std::int64_t segment_rows) const noexcept { return (std::uint64_t(segment_rows * cols) * std::uint64_t(bits) + 7) / 8; }
        /// Bytes of a segment's scales: fp16 exactly; grid at least (the code set's header, or one
        /// fp16, then the sign bits).
        std::uint64_t scale_bytes(std::int64_t segment_rows) const noexcept {
            const std::uint64_t count = std::uint64_t(segment_rows) * std::uint64_t(groups_per_row);
            return scheme == RoundingScheme::grid ? 2 + sign_bytes(count) : count * 2;
        }
        static std::uint64_t sign_bytes(std::uint64_t count) noexcept { return (count + 7) / 8; }
    };

    /// The bits stored in a coded tensor's metadata (NaN if it does not parse that far).
    static double stored_knob(std::span<const std::uint8_t> metadata) noexcept {
        return detail::stored_after_prefix(metadata, [](ByteReader& in) { return double(in.get_u8()); });
    }

    /// Parses and validates the metadata of `entry` (errc::corrupt / unsupported naming `context`).
    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, DecodeResources&, const std::string& context) {
        detail::require_matrix(entry.shape, context);
        ByteReader in(metadata, context + " metadata");
        const detail::MethodPrefix prefix = detail::MethodPrefix::read(in, detail::flag_feedback);
        Layout layout;
        layout.rows = entry.shape[0];
        layout.cols = entry.shape[1];
        layout.bits = in.get_u8();
        require(layout.bits >= 2 && layout.bits <= 8, errc::corrupt, context, ": ", layout.bits, " bits per code (2..8)");
        const std::uint8_t scheme = in.get_u8();
        require(scheme <= std::uint8_t(RoundingScheme::grid), errc::unsupported, context, ": rounding scheme ", int(scheme));
        layout.scheme = RoundingScheme(scheme);
        const std::uint64_t group = detail::get_varint(in, "group size");
        require(group >= 1 && group <= 65536, errc::corrupt, context, ": group size ", group, " (1..65536)");
        in.expect_end();
        layout.group_size = int(group);
        layout.groups_per_row = (layout.cols + layout.group_size - 1) / layout.group_size;
        layout.rows_per_segment = std::min<std::int64_t>(prefix.span, layout.rows);
        require(entry.segment_count() == layout.segment_count(), errc::corrupt, context, ": ", entry.segment_count(), " segments, ", layout.rows,
                " rows in spans of ", layout.rows_per_segment, " need ", layout.segment_count());
        return layout;
    }

    static void account_metadata(const Layout&, std::size_t size, ByteAccount& account) { account.add("metadata", size); }
    /// A segment is its rows' group scales, then their packed codes.
    static void account_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, ByteAccount& account) {
        const std::uint64_t codes = std::min<std::uint64_t>(layout.code_bytes(layout.segment_rows(segment)), bytes.size());
        account.add("scales", bytes.size() - codes);
        account.add("payload", codes);
    }

    /// Decodes segment `segment` into its rows of `output` (m x n).
    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend) {
        const std::int64_t first = std::int64_t(segment) * layout.rows_per_segment;
        const std::int64_t count = layout.segment_rows(segment);
        const std::string where = context + std::string(" segment ") + std::to_string(segment);
        const std::uint64_t code_bytes = layout.code_bytes(count);
        // Checked before anything is allocated: the scales never outnumber the codes' bytes times 8.
        require(bytes.size() >= layout.scale_bytes(count) + code_bytes, errc::corrupt, where, ": ", bytes.size(), " bytes, ", count,
                " rows need at least ", layout.scale_bytes(count) + code_bytes);
        const std::size_t scale_count = std::size_t(count * layout.groups_per_row);
        thread_local std::vector<half> scales;  // reused: see NwcDecoding::decode_segment
        ByteReader in(bytes.first(bytes.size() - code_bytes), where + " scales");
        if (layout.scheme == RoundingScheme::grid) {
            scales = read_scales(in, scale_count, grid_scale_width);
            const std::size_t signs_at = in.offset();
            const std::span<const std::uint8_t> signs = in.get_bytes(std::size_t(Layout::sign_bytes(scale_count)));
            for (std::size_t i = 0; i < scale_count; ++i)
                if ((signs[i / 8] >> (i % 8)) & 1u) scales[i].bits |= half_sign_mask;
            if (scale_count % 8 != 0)
                require((signs.back() >> (scale_count % 8)) == 0, errc::corrupt, where, ": unused bits of the last sign byte (offset ",
                        signs_at + signs.size() - 1, ") are not zero");
        } else {
            scales.resize(scale_count);
            for (std::size_t i = 0; i < scale_count; ++i) {
                scales[i].bits = in.get_u16();
                require(is_finite(scales[i]), errc::corrupt, where, ": scale of row ", first + std::int64_t(i) / layout.groups_per_row, " group ",
                        std::int64_t(i) % layout.groups_per_row, " is not finite");
            }
        }
        require(in.at_end(), errc::corrupt, where, ": ", bytes.size(), " bytes, but ", count, " rows of codes and their scales take ",
                in.offset() + code_bytes);
        thread_local std::vector<std::uint8_t> codes;
        codes.resize(std::size_t(count * layout.cols));
        detail::unpack_codes(bytes.subspan(bytes.size() - code_bytes), layout.bits, codes, where);
        // A code's value is (code - 2^(b-1)) x its group's scale; the scale is converted once per
        // group (RoundToNearest::dequantize computes the same product), in a loop that vectorizes.
        const int offset = 1 << (layout.bits - 1);
        for (std::int64_t r = 0; r < count; ++r) {
            const std::uint8_t* row_codes = codes.data() + r * layout.cols;
            float* row = &output(first + r, 0);
            for (std::int64_t g = 0; g < layout.groups_per_row; ++g) {
                const float scale = to_float(scales[std::size_t(r * layout.groups_per_row + g)]);
                const std::int64_t end = std::min<std::int64_t>((g + 1) * layout.group_size, layout.cols);
                for (std::int64_t c = g * layout.group_size; c < end; ++c) row[c] = float(int(row_codes[c]) - offset) * scale;
            }
        }
    }
};

using RtnDecoding = GroupRoundingDecoding<false>;
using GptqDecoding = GroupRoundingDecoding<true>;

}  // namespace nwc
