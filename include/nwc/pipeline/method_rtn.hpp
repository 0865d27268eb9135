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
#include "nwc/pipeline/method_encoding.hpp"
#include "nwc/pipeline/method_rtn_decoding.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/round_to_nearest.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// The rtn (GptqFeedback false) and gptq (true) methods: the encoders here, the decoders in
/// GroupRoundingDecoding (method_rtn_decoding.hpp).
template <bool GptqFeedback>
struct GroupRoundingMethod : GroupRoundingDecoding<GptqFeedback> {
    using Decoding = GroupRoundingDecoding<GptqFeedback>;
    using typename Decoding::Layout;
    using Decoding::name;
    using Decoding::grid_scale_width;

    static constexpr MethodKnob knob{.option = "bits", .integer = true, .rate_grows = true, .lowest = 2, .highest = 8};
    static double knob_value(const MethodOptions& options) noexcept { return options.bits; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.bits = int(value); }

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
    template <class Resources = MethodResources>  // a template: instantiated where a tensor is coded
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const Resources& = {}) {
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
};

using RtnMethod = GroupRoundingMethod<false>;
using GptqMethod = GroupRoundingMethod<true>;

}  // namespace nwc
