// The decoding half of the "lossless" method (method_lossless.hpp has the format and the
// encoder): LosslessDecoding parses a tensor's metadata (MethodPrefix, then the lossless float
// metadata) into a Layout and decodes a segment's byte planes into floats, or straight into the
// stored dtype (decode_segment_stored: a streamed decompress then skips float32).
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
#include "nwc/core/half.hpp"
#include "nwc/core/half_simd.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/lossless_float.hpp"
#include "nwc/io/tensor_bytes.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"

namespace nwc {

/// The lossless method's decoder (LosslessMethod adds the encoder).
struct LosslessDecoding {
    static constexpr std::string_view name = "lossless";
    static constexpr bool is_lossless = true;
    static double stored_knob(std::span<const std::uint8_t>) noexcept { return std::numeric_limits<double>::quiet_NaN(); }

    /// Decoding parameters of one tensor.
    struct Layout {
        LosslessFloatLayout codec;
        std::uint64_t prefix_bytes = 0, table_bytes = 0;  ///< of the metadata (for accounting)

        std::size_t segment_count() const noexcept { return codec.segment_count; }
        std::int64_t segment_weights(std::size_t segment) const noexcept { return std::int64_t(codec.segment_elements(segment)); }
    };

    /// Parses and validates the metadata of `entry` (shape, dtypes, element and segment counts).
    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, DecodeResources&, const std::string& context) {
        require(entry.shape.rank() >= 1 && entry.shape.numel() > 0, errc::corrupt, context, ": a lossless tensor must have at least one element");
        require(is_floating_dtype(entry.original_dtype), errc::corrupt, context, ": a lossless tensor of dtype ", dtype_name(entry.original_dtype),
                " (F32, F16 or BF16 expected)");
        ByteReader in(metadata, context + " metadata");
        const detail::MethodPrefix prefix = detail::MethodPrefix::read(in, 0);
        Layout layout;
        layout.prefix_bytes = in.offset();
        const std::span<const std::uint8_t> codec_metadata = metadata.subspan(in.offset());
        layout.codec = LosslessFloatLayout::parse(codec_metadata, entry.payload_size, context);
        const LosslessFloatLayout& codec = layout.codec;
        // Header, one mode and constant per plane, tables, CRC-32C (lossless_float_format.hpp).
        layout.table_bytes = codec_metadata.size() - lossless_float::fixed_metadata_bytes - 2 * codec.plane_count() - 4;
        require(codec.element_count == std::uint64_t(entry.shape.numel()), errc::corrupt, context, ": metadata codes ", codec.element_count,
                " elements, the shape has ", entry.shape.numel());
        require(codec.element_size() <= dtype_size(entry.original_dtype), errc::corrupt, context, ": ", dtype_name(codec.type),
                " planes cannot hold a ", dtype_name(entry.original_dtype), " tensor exactly");
        require(prefix.span == codec.elements_per_segment, errc::corrupt, context, ": segment span ", prefix.span, " in the prefix, ",
                codec.elements_per_segment, " elements per segment in the lossless metadata");
        require(entry.segment_count() == codec.segment_count, errc::corrupt, context, ": ", entry.segment_count(), " segments, the metadata needs ",
                codec.segment_count);
        return layout;
    }

    static void account_metadata(const Layout& layout, std::size_t size, ByteAccount& account) {
        account.add("tables", layout.table_bytes);
        account.add("metadata", size - layout.table_bytes);
    }
    /// The segment header (CRC, stream sizes) and each rANS stream's own framing as "framing",
    /// the renormalization words and raw planes as "payload".
    static void account_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, ByteAccount& account) {
        const LosslessFloatLayout& codec = layout.codec;
        const std::string context = "lossless segment " + std::to_string(segment);
        const std::size_t header = detail::lossless_segment_header_bytes(codec.coded_plane_count());
        require(bytes.size() >= header, errc::truncated, context, ": ", bytes.size(), " bytes, its header needs ", header);
        ByteReader sizes(bytes.subspan(4, header - 4), context);
        ByteReader planes(bytes.subspan(header), context);
        account.add("framing", header);
        for (std::size_t p = 0; p < codec.plane_count(); ++p) {
            if (codec.modes[p] == FloatPlaneMode::coded) detail::account_rans_stream(planes.get_bytes(sizes.get_u32()), codec.tables[p], account);
            else if (codec.modes[p] == FloatPlaneMode::raw) account.add("payload", planes.get_bytes(codec.segment_elements(segment)).size());
        }
        planes.expect_end();
    }

    /// The dtype decode_segment_stored writes: the source's.
    static dtype stored_dtype(const Layout& layout) noexcept { return layout.codec.type; }

    /// Decodes segment `segment` into its elements of `output`, the whole tensor's bytes as the
    /// source stored them (StoredDecodingMethod): decode_segment without the widening to float32.
    template <class Backend>
    static void decode_segment_stored(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, std::span<std::uint8_t> output,
                                      const std::string& context, Backend backend) {
        const LosslessFloatLayout& codec = layout.codec;
        require(segment < codec.segment_count, errc::invalid_argument, context, ": segment ", segment, " of ", codec.segment_count);
        const std::size_t size = dtype_size(codec.type), count = codec.segment_elements(segment);
        NWC_ASSERT(output.size() == codec.element_count * size);
        constexpr bool verify_segment_crc = false;  // as in decode_segment
        lossless_float::decode_segment(codec, segment, bytes, output.subspan(std::size_t(codec.first_element(segment)) * size, count * size), backend,
                                       context, verify_segment_crc);
    }

    /// Decodes segment `segment` into its elements of `output` (the whole tensor, row-major).
    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend backend) {
        const LosslessFloatLayout& codec = layout.codec;
        require(segment < codec.segment_count, errc::invalid_argument, context, ": segment ", segment, " of ", codec.segment_count);
        const std::size_t count = codec.segment_elements(segment);
        float* target = output.data() + codec.first_element(segment);
        // The container checked these bytes against its payload CRC-32C: the segment's own is skipped.
        constexpr bool verify_segment_crc = false;
        if (codec.type == dtype::f32) {
            lossless_float::decode_segment(codec, segment, bytes, {reinterpret_cast<std::uint8_t*>(target), count * 4}, backend, context,
                                           verify_segment_crc);
        } else if (codec.type == dtype::bf16) {
            thread_local std::vector<bfloat16> planes;  // reused: one allocation per thread, not per segment
            planes.resize(count);
            lossless_float::decode_segment(codec, segment, bytes, {reinterpret_cast<std::uint8_t*>(planes.data()), count * 2}, backend, context,
                                           verify_segment_crc);
            convert_to_float(std::span<const bfloat16>(planes), std::span<float>(target, count), backend);
        } else {
            thread_local std::vector<half> planes;
            planes.resize(count);
            lossless_float::decode_segment(codec, segment, bytes, {reinterpret_cast<std::uint8_t*>(planes.data()), count * 2}, backend, context,
                                           verify_segment_crc);
            convert_to_float(std::span<const half>(planes), std::span<float>(target, count), backend);
        }
    }
};

}  // namespace nwc
