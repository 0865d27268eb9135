// The "rtn" and "gptq" methods (RtnMethod, GptqMethod: one template, GroupRoundingMethod): groups
// of G weights of a row sharing one scale (nwc::RoundToNearest), codes bit-packed; gptq adds LDLQ
// per-column feedback (GPTQ) when a Hessian is given, and without one writes exactly rtn's bytes
// under its own name.
//
// Two scale layouts (MethodOptions::fp16_group_scales):
// - grid (the default, RoundingScheme::grid): each scale the least-error value of +- the
//   quarter-octave grid, a segment's magnitudes stored as one code set (scale_grid.hpp: fixed-width
//   fields up to 7 bits so a set may span the whole grid, or Rice codes around the median where
//   shorter), then one sign bit per group: about 4 bits per group, 0.125 bits per weight with
//   G = 32 where fp16 scales cost 0.5. Sizes depend on the values, so rate control codes a tensor
//   to size it.
// - fp16 (ggml's Q4_0 layout with G = 32: RoundingScheme::signed_max): 16 bits per group; sizes
//   follow from the shape and the bits alone (predicted_sizes).
//
// Metadata: MethodPrefix (span = rows per segment), u8 bits, u8 rounding scheme, varint group
// size. Payload segment k = rows [k span, min((k + 1) span, m)): the scales of those rows
// (row-major, ceil(n / G) per row), then their codes, row-major, packed `bits` bits each LSB
// first, zero-padded to a byte. Value = (code - 2^(bits-1)) * scale.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/io/container_format.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/round_to_nearest.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// The rtn (GptqFeedback false) and gptq (true) methods.
template <bool GptqFeedback>
struct GroupRoundingMethod {
    static constexpr std::string_view name = GptqFeedback ? "gptq" : "rtn";
    static constexpr MethodKnob knob{.option = "bits", .integer = true, .rate_grows = true, .lowest = 2, .highest = 8};
    static double knob_value(const MethodOptions& options) noexcept { return options.bits; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.bits = int(value); }

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

    /// The rounding scheme `options` asks for.
    static RoundingScheme scheme_of(const MethodOptions& options) noexcept {
        return options.fp16_group_scales ? RoundingScheme::signed_max : RoundingScheme::grid;
    }

    /// The metadata: MethodPrefix, u8 bits, u8 rounding scheme, varint group size.
    static std::vector<std::uint8_t> metadata_of(std::uint8_t flags, std::int64_t span, int bits, RoundingScheme scheme, int group_size) {
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.flags = flags;
        prefix.span = std::uint32_t(span);
        prefix.write(metadata);
        metadata.put_u8(std::uint8_t(bits));
        metadata.put_u8(std::uint8_t(scheme));
        detail::put_varint(metadata, std::uint64_t(group_size));
        return metadata.take();
    }

    static Layout layout_of(std::int64_t rows, std::int64_t cols, const MethodOptions& options) {
        return {rows, cols, options.bits, options.group_size, scheme_of(options), std::min(rows, detail::rows_per_segment(cols, options.weights_per_segment)),
                (cols + options.group_size - 1) / options.group_size};
    }

    /// The sizes coding an m x n matrix with `options` gives: metadata, then each segment (exact,
    /// whatever the values: rate control sizes operating points with it); nullopt for grid scales,
    /// whose size depends on the values.
    static std::optional<std::vector<std::uint64_t>> predicted_sizes(const Shape& shape, const MethodOptions& options) {
        if (!options.fp16_group_scales) return std::nullopt;
        const Layout layout = layout_of(shape[0], shape[1], options);
        std::vector<std::uint64_t> sizes{metadata_of(0, layout.rows_per_segment, options.bits, layout.scheme, options.group_size).size()};
        for (std::size_t k = 0; k < layout.segment_count(); ++k)
            sizes.push_back(layout.scale_bytes(layout.segment_rows(k)) + layout.code_bytes(layout.segment_rows(k)));
        return sizes;
    }

    /// The bits stored in a coded tensor's metadata (NaN if it does not parse that far).
    static double stored_knob(std::span<const std::uint8_t> metadata) noexcept {
        return detail::stored_after_prefix(metadata, [](ByteReader& in) { return double(in.get_u8()); });
    }

    /// Codes W (m x n); GPTQ feedback for gptq when options.ldlq and a Hessian are both there.
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, const Resources&) {
        const std::int64_t rows = weights.rows(), cols = weights.cols();
        const Layout layout = layout_of(rows, cols, options);
        RoundToNearest quantizer(RoundToNearestOptions{options.bits, options.group_size, layout.scheme});
        EncodedMatrix result;
        const bool feedback = GptqFeedback && options.ldlq && hessian != nullptr;
        if (feedback) {
            // Blocks of whole groups, so a group's scale sees the feedback of every earlier column.
            const int block = (std::max(options.ldlq_block_size, options.group_size) + options.group_size - 1) / options.group_size * options.group_size;
            LDLQResult coded = LDLQCompensator<RoundToNearest>(detail::ldlq_options(options, block, FeedbackMode::per_column))
                                   .compress(weights, hessian->matrix(), quantizer);
            result.used_feedback = coded.report.used_feedback;
            result.reconstruction = std::move(coded.reconstructed);
        } else {
            result.reconstruction = quantizer.quantize(weights);
        }
        result.used_hessian = feedback;
        result.setting = knob_setting<GroupRoundingMethod>(options.bits);

        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        tensor.metadata = metadata_of(result.used_feedback ? detail::flag_feedback : 0, layout.rows_per_segment, options.bits, layout.scheme, options.group_size);
        for (std::int64_t first = 0; first < rows; first += layout.rows_per_segment) {
            const std::int64_t count = std::min(layout.rows_per_segment, rows - first);
            add_segment(tensor, layout, quantizer.scales().subspan(std::size_t(first * layout.groups_per_row), std::size_t(count * layout.groups_per_row)),
                        quantizer.codes().subspan(std::size_t(first * cols), std::size_t(count * cols)), options.bits);
        }
        return result;
    }

    /// encode() without a Hessian of a matrix read segment by segment (RowEncodingMethod): a
    /// group's scale and codes depend on its row alone, so each segment's rows are quantized and
    /// written as they are read, and the error is summed row after row, measure_error's order.
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const MethodResources& = {}) {
        const std::int64_t rows = source.rows, cols = source.cols;
        const Layout layout = layout_of(rows, cols, options);
        EncodedMatrix result;
        result.setting = knob_setting<GroupRoundingMethod>(options.bits);
        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        tensor.metadata = metadata_of(0, layout.rows_per_segment, options.bits, layout.scheme, options.group_size);
        detail::ErrorMeasure measure;
        for (std::int64_t first = 0; first < rows; first += layout.rows_per_segment) {
            const std::int64_t count = std::min(layout.rows_per_segment, rows - first);
            const TensorView<const float> part = source.read(first, count, 0, cols);
            RoundToNearest quantizer(RoundToNearestOptions{options.bits, options.group_size, layout.scheme});
            const Tensor<float> reconstruction = quantizer.quantize(part);
            for (std::int64_t i = 0; i < part.numel(); ++i) {
                const double value = part[i], difference = value - double(reconstruction[i]);
                measure.squared_error += difference * difference;
                measure.squared_norm += value * value;
            }
            add_segment(tensor, layout, quantizer.scales(), quantizer.codes(), options.bits);
        }
        if (options.measure) result.measured = measure;
        return result;
    }

    /// One segment: its rows' scales (grid: magnitudes as a code set, then the signs; fp16: as
    /// they are), then their codes, packed.
    static void add_segment(ContainerTensor& tensor, const Layout& layout, std::span<const half> scales, std::span<const std::uint8_t> codes, int bits) {
        ByteWriter segment;
        if (layout.scheme == RoundingScheme::grid) {
            // The magnitudes as a code set, then the signs, one bit each, LSB first.
            std::vector<half> magnitudes(scales.begin(), scales.end());
            std::vector<std::uint8_t> signs(std::size_t(Layout::sign_bytes(scales.size())), 0);
            for (std::size_t i = 0; i < scales.size(); ++i) {
                magnitudes[i].bits &= std::uint16_t(~half_sign_mask);
                if (scales[i].bits & half_sign_mask) signs[i / 8] |= std::uint8_t(1u << (i % 8));
            }
            write_scales(segment, magnitudes, grid_scale_width);
            segment.put_bytes(signs);
        } else {
            for (half scale : scales) segment.put_u16(scale.bits);
        }
        segment.put_bytes(detail::pack_codes(codes, bits));
        tensor.add_segment(segment.bytes());
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
        thread_local std::vector<half> scales;  // reused: see NwcMethod::decode_segment
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

private:
    /// Grid scale sets may span the whole grid (they are not snapped to within 16 octaves).
    static constexpr int grid_scale_width = 7;
};

using RtnMethod = GroupRoundingMethod<false>;
using GptqMethod = GroupRoundingMethod<true>;

}  // namespace nwc
