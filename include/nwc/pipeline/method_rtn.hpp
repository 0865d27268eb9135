// The "rtn" and "gptq" methods (RtnMethod, GptqMethod: one template, GroupRoundingMethod):
// llama.cpp-style groups of 32 weights of a row sharing one fp16 scale (nwc::RoundToNearest),
// codes bit-packed; gptq adds LDLQ per-column feedback (GPTQ) when a Hessian is given, and without
// one writes exactly rtn's bytes under its own name. Their sizes follow from the shape and the
// bits alone (predicted_sizes), which rate control uses to choose bits per tensor exactly.
//
// Metadata: MethodPrefix (span = rows per segment), u8 bits, u8 rounding scheme, varint group
// size. Payload segment k = rows [k span, min((k + 1) span, m)): the fp16
// scales of those rows (row-major, ceil(n / G) per row), then their codes, row-major, packed
// `bits` bits each LSB first, zero-padded to a byte. Value = (code - 2^(bits-1)) * scale.
// Bits per weight: bits + 16 / G (Q4_0: 4.5) plus about 12 bytes of metadata per tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
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
        std::int64_t rows_per_segment = 1;
        std::int64_t groups_per_row = 1;

        std::size_t segment_count() const noexcept { return std::size_t(detail::segment_count(rows, rows_per_segment)); }
        std::int64_t segment_weights(std::size_t segment) const noexcept {
            return std::min(rows_per_segment, rows - std::int64_t(segment) * rows_per_segment) * cols;
        }
        std::uint64_t segment_bytes(std::int64_t segment_rows) const noexcept {
            return std::uint64_t(segment_rows) * std::uint64_t(groups_per_row) * 2 + (std::uint64_t(segment_rows * cols) * std::uint64_t(bits) + 7) / 8;
        }
    };

    /// The metadata: MethodPrefix, u8 bits, u8 rounding scheme, varint group size.
    static std::vector<std::uint8_t> metadata_of(std::uint8_t flags, std::int64_t span, int bits, int group_size) {
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.flags = flags;
        prefix.span = std::uint32_t(span);
        prefix.write(metadata);
        metadata.put_u8(std::uint8_t(bits));
        metadata.put_u8(std::uint8_t(RoundingScheme::signed_max));
        detail::put_varint(metadata, std::uint64_t(group_size));
        return metadata.take();
    }

    /// The sizes coding an m x n matrix with `options` gives: metadata, then each segment (exact,
    /// whatever the values: rate control sizes operating points with it).
    static std::vector<std::uint64_t> predicted_sizes(const Shape& shape, const MethodOptions& options) {
        const std::int64_t rows = shape[0], cols = shape[1];
        const Layout layout{rows, cols, options.bits, options.group_size, std::min(rows, detail::rows_per_segment(cols, options.weights_per_segment)),
                            (cols + options.group_size - 1) / options.group_size};
        std::vector<std::uint64_t> sizes{metadata_of(0, layout.rows_per_segment, options.bits, options.group_size).size()};
        for (std::int64_t first = 0; first < rows; first += layout.rows_per_segment)
            sizes.push_back(layout.segment_bytes(std::min(layout.rows_per_segment, rows - first)));
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
        RoundToNearest quantizer(RoundToNearestOptions{options.bits, options.group_size, RoundingScheme::signed_max});
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

        Layout layout{rows, cols, options.bits, options.group_size, std::min(rows, detail::rows_per_segment(cols, options.weights_per_segment)),
                      quantizer.groups_per_row()};
        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        tensor.metadata = metadata_of(result.used_feedback ? detail::flag_feedback : 0, layout.rows_per_segment, options.bits, options.group_size);
        for (std::int64_t first = 0; first < rows; first += layout.rows_per_segment) {
            const std::int64_t count = std::min(layout.rows_per_segment, rows - first);
            ByteWriter segment;
            for (half scale : quantizer.scales().subspan(std::size_t(first * layout.groups_per_row), std::size_t(count * layout.groups_per_row)))
                segment.put_u16(scale.bits);
            segment.put_bytes(detail::pack_codes(quantizer.codes().subspan(std::size_t(first * cols), std::size_t(count * cols)), options.bits));
            tensor.add_segment(segment.bytes());
        }
        return result;
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
        require(scheme <= std::uint8_t(RoundingScheme::absmax), errc::unsupported, context, ": rounding scheme ", int(scheme));
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
    /// A segment is its rows' fp16 group scales, then their packed codes.
    static void account_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, ByteAccount& account) {
        const std::int64_t first = std::int64_t(segment) * layout.rows_per_segment;
        const std::uint64_t scales = std::uint64_t(std::min(layout.rows_per_segment, layout.rows - first) * layout.groups_per_row) * 2;
        account.add("scales", std::min<std::uint64_t>(scales, bytes.size()));
        account.add("payload", bytes.size() - std::min<std::uint64_t>(scales, bytes.size()));
    }

    /// Decodes segment `segment` into its rows of `output` (m x n).
    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend) {
        const std::int64_t first = std::int64_t(segment) * layout.rows_per_segment;
        const std::int64_t count = std::min(layout.rows_per_segment, layout.rows - first);
        const std::string where = context + std::string(" segment ") + std::to_string(segment);
        require(bytes.size() == layout.segment_bytes(count), errc::corrupt, where, ": ", bytes.size(), " bytes, ", count, " rows need ",
                layout.segment_bytes(count));
        const std::size_t scale_bytes = std::size_t(count * layout.groups_per_row) * 2;
        thread_local std::vector<std::uint8_t> codes;  // reused: see NwcMethod::decode_segment
        codes.resize(std::size_t(count * layout.cols));
        detail::unpack_codes(bytes.subspan(scale_bytes), layout.bits, codes, where);
        for (std::int64_t r = 0; r < count; ++r) {
            for (std::int64_t g = 0; g < layout.groups_per_row; ++g) {
                half scale;
                std::memcpy(&scale.bits, bytes.data() + 2 * std::size_t(r * layout.groups_per_row + g), 2);
                require(is_finite(scale), errc::corrupt, where, ": scale of row ", first + r, " group ", g, " is not finite");
                const std::int64_t end = std::min<std::int64_t>((g + 1) * layout.group_size, layout.cols);
                for (std::int64_t c = g * layout.group_size; c < end; ++c)
                    output(first + r, c) = detail::rtn_value(codes[std::size_t(r * layout.cols + c)], scale, layout.bits);
            }
        }
    }
};

using RtnMethod = GroupRoundingMethod<false>;
using GptqMethod = GroupRoundingMethod<true>;

}  // namespace nwc
