// The "rtn" and "gptq" methods: llama.cpp-style groups of 32 weights of a row sharing one fp16
// scale (nwc::RoundToNearest), codes bit-packed; gptq adds LDLQ per-column feedback (GPTQ) when a
// Hessian is given, and without one writes exactly rtn's bytes under its own name.
//
// Metadata (24 bytes): MethodPrefix (span = rows per segment), u8 bits, u8 rounding scheme,
// u16 zero, u32 group size. Payload segment k = rows [k span, min((k + 1) span, m)): the fp16
// scales of those rows (row-major, ceil(n / G) per row), then their codes, row-major, packed
// `bits` bits each LSB first, zero-padded to a byte. Value = (code - 2^(bits-1)) * scale.
// Bits per weight: bits + 16 / G (Q4_0: 4.5) plus 3 bytes of metadata per tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/io/container_format.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/round_to_nearest.hpp"

namespace nwc {

/// A matrix coded by one method, before the pipeline adds name, dtype and shape.
struct EncodedMatrix {
    ContainerTensor tensor;        ///< method, metadata, payload, segment sizes
    Tensor<float> reconstruction;  ///< what the decoder will produce (empty when not computed)
    bool used_feedback = false;
    bool used_hessian = false;
    std::string setting;
};

/// The rtn / gptq method.
struct RtnMethod {
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

    static std::int64_t rows_per_segment(std::int64_t cols, std::int64_t weights_per_segment) noexcept {
        return std::max<std::int64_t>(1, weights_per_segment / std::max<std::int64_t>(cols, 1));
    }

    /// Bytes of metadata + payload of an m x n matrix at `bits` (exact; for rate allocation).
    static std::uint64_t stored_bytes(std::int64_t rows, std::int64_t cols, int bits, int group_size, std::int64_t weights_per_segment) {
        Layout layout{rows, cols, bits, group_size, rows_per_segment(cols, weights_per_segment), (cols + group_size - 1) / group_size};
        std::uint64_t total = 24;
        for (std::int64_t first = 0; first < rows; first += layout.rows_per_segment)
            total += layout.segment_bytes(std::min(layout.rows_per_segment, rows - first));
        return total;
    }

    /// Codes W (m x n); GPTQ feedback when `gptq`, options.ldlq and a Hessian are all there.
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, bool gptq) {
        const std::int64_t rows = weights.rows(), cols = weights.cols();
        RoundToNearest quantizer(RoundToNearestOptions{options.bits, options.group_size, RoundingScheme::signed_max});
        EncodedMatrix result;
        const bool feedback = gptq && options.ldlq && hessian != nullptr;
        if (feedback) {
            LDLQOptions ldlq;
            ldlq.damping = options.damping;
            ldlq.block_size = (std::max(options.ldlq_block_size, options.group_size) + options.group_size - 1) / options.group_size * options.group_size;
            ldlq.feedback = FeedbackMode::per_column;
            ldlq.threads = std::max(1, options.threads);
            ldlq.compute_proxy_loss = false;
            LDLQResult coded = LDLQCompensator<RoundToNearest>(ldlq).compress(weights, hessian->matrix(), quantizer);
            result.used_feedback = coded.report.used_feedback;
            result.reconstruction = std::move(coded.reconstructed);
        } else {
            result.reconstruction = quantizer.quantize(weights);
        }
        result.used_hessian = feedback;
        result.setting = std::string("bits=") + std::to_string(options.bits);

        Layout layout{rows, cols, options.bits, options.group_size, std::min(rows, rows_per_segment(cols, options.weights_per_segment)),
                      quantizer.groups_per_row()};
        ContainerTensor& tensor = result.tensor;
        tensor.method = gptq ? "gptq" : "rtn";
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.flags = result.used_feedback ? detail::flag_feedback : 0;
        prefix.span = std::uint32_t(layout.rows_per_segment);
        prefix.write(metadata);
        metadata.put_u8(std::uint8_t(options.bits));
        metadata.put_u8(std::uint8_t(RoundingScheme::signed_max));
        metadata.put_u16(0);
        metadata.put_u32(std::uint32_t(options.group_size));
        tensor.metadata = metadata.take();
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
    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, const std::string& context) {
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
        require(in.get_u16() == 0, errc::corrupt, context, ": reserved bytes 18-19 are not zero");
        const std::uint32_t group = in.get_u32();
        require(group >= 1 && group <= 65536, errc::corrupt, context, ": group size ", group, " (1..65536)");
        in.expect_end();
        layout.group_size = int(group);
        layout.groups_per_row = (layout.cols + layout.group_size - 1) / layout.group_size;
        layout.rows_per_segment = std::min<std::int64_t>(prefix.span, layout.rows);
        require(entry.segment_count() == layout.segment_count(), errc::corrupt, context, ": ", entry.segment_count(), " segments, ", layout.rows,
                " rows in spans of ", layout.rows_per_segment, " need ", layout.segment_count());
        return layout;
    }

    /// Decodes segment `segment` into its rows of `output` (m x n).
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context) {
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
                require((scale.bits & 0x7C00u) != 0x7C00u, errc::corrupt, where, ": scale of row ", first + r, " group ", g, " is not finite");
                const std::int64_t end = std::min<std::int64_t>((g + 1) * layout.group_size, layout.cols);
                for (std::int64_t c = g * layout.group_size; c < end; ++c)
                    output(first + r, c) = detail::rtn_value(codes[std::size_t(r * layout.cols + c)], scale, layout.bits);
            }
        }
    }
};

}  // namespace nwc
