// The .nwc container: constants, limits and the records shared by ContainerWriter and ContainerReader.
//
// A container holds compressed tensors whose payloads the codec layer produces; it knows nothing
// of codecs, only structure. Byte-by-byte layout in docs/format/container.md; in short:
//
//   [header 40 B][directory][pad][codec blob 0][pad]...[tensor 0 metadata][pad][tensor 0 payload]...
//
// The header holds the magic, version, file size and the directory's size and CRC-32C, and its own
// CRC; the directory lists codecs and tensors with the offset, size and CRC-32C of every region.
// Every region starts at a multiple of 64 bytes (aligned loads for SIMD and GPU decoders on a
// mapped file) and the gaps are zero. Offsets are stored, yet must equal the canonical layout:
// the reader rejects anything the writer would not produce, so there is exactly one valid
// encoding of a given content and no room for overlapping or aliased regions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc {

/// Format constants and the limits a reader enforces before allocating anything.
namespace container_format {
/// "\x89NWC\r\n\x1a\n": the high byte catches 7-bit transfers, CR LF and ^Z catch text-mode mangling (as PNG).
inline constexpr std::uint8_t magic[8] = {0x89, 'N', 'W', 'C', '\r', '\n', 0x1A, '\n'};
inline constexpr std::uint32_t version = 1;
inline constexpr std::size_t header_bytes = 40;
/// The header's CRC-32C sits here and covers the bytes before it.
inline constexpr std::size_t header_checksum_offset = 36;
/// Smallest directory records, the bounds of counts read before the records (ByteReader::get_count):
/// a codec is u64 offset, u64 size, u32 CRC; a tensor at least a 1-byte name and method, rank 0 and
/// one segment (2+1 name, dtype, rank, 1+1 method, codec i32, 2 x (u64, u64, u32) regions, u32
/// segment count, one u64 segment size); a segment size is a u64.
inline constexpr std::size_t codec_record_bytes = 20;
inline constexpr std::size_t min_tensor_record_bytes = 63;
inline constexpr std::size_t segment_record_bytes = 8;
inline constexpr std::uint64_t region_alignment = 64;

inline constexpr std::uint32_t max_tensors = 1u << 20;
inline constexpr std::uint32_t max_codecs = 1u << 12;
inline constexpr std::size_t max_name_bytes = 4096;
inline constexpr std::size_t max_method_bytes = 32;
inline constexpr std::uint32_t max_file_metadata_bytes = 64u << 20;
inline constexpr std::uint64_t max_directory_bytes = 1ull << 30;
inline constexpr std::uint32_t max_segments = 1u << 28;
/// Elements of one tensor; decoders still bound what they allocate by their payload size.
inline constexpr std::int64_t max_elements = std::int64_t(1) << 40;
}  // namespace container_format

/// What the caller hands to ContainerWriter::add_tensor.
struct ContainerTensor {
    std::string name;                          ///< unique, 1..4096 bytes of UTF-8 without control characters
    dtype original_dtype = dtype::f32;         ///< the dtype the tensor had in the source model
    Shape shape;                               ///< its shape in the source model
    std::string method = "raw";                ///< "nwc", "ecsq", "gptq", "rtn", "raw": [a-z0-9_-], 1..32 bytes
    std::int32_t codec_index = -1;             ///< index returned by ContainerWriter::add_codec, or -1
    std::vector<std::uint8_t> metadata;        ///< codec-defined (scales, levels, ...), opaque here
    std::vector<std::uint8_t> payload;         ///< the compressed bits, one or more segments back to back
    std::vector<std::uint64_t> segment_sizes;  ///< bytes of each independently decodable segment; empty = one segment

    /// Appends one independently decodable segment to the payload.
    void add_segment(std::span<const std::uint8_t> segment) {
        payload.insert(payload.end(), segment.begin(), segment.end());
        segment_sizes.push_back(segment.size());
    }
};

/// A tensor of an opened container, as its directory entry describes it (offsets are file offsets).
struct ContainerEntry {
    std::string name;
    dtype original_dtype = dtype::f32;
    Shape shape;
    std::string method;
    std::int32_t codec_index = -1;
    std::uint64_t metadata_offset = 0;
    std::uint64_t metadata_size = 0;
    std::uint32_t metadata_crc = 0;
    std::uint64_t payload_offset = 0;
    std::uint64_t payload_size = 0;
    std::uint32_t payload_crc = 0;
    std::vector<std::uint64_t> segment_bounds;  ///< segment k is payload bytes [bounds[k], bounds[k+1])

    std::size_t segment_count() const noexcept { return segment_bounds.empty() ? 0 : segment_bounds.size() - 1; }
};

/// Where a codec blob lies in an opened container.
struct ContainerCodecEntry {
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
    std::uint32_t crc = 0;
};

namespace detail {

constexpr std::uint64_t align_region(std::uint64_t offset) noexcept {
    return (offset + container_format::region_alignment - 1) / container_format::region_alignment * container_format::region_alignment;
}

// Names end up in messages and terminals: valid UTF-8 (no overlongs, no surrogates), no C0/DEL.
inline bool is_clean_utf8(std::string_view text) noexcept {
    std::size_t i = 0;
    while (i < text.size()) {
        const unsigned char lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            if (lead < 0x20 || lead == 0x7F) return false;
            ++i;
            continue;
        }
        std::size_t length = 0;
        std::uint32_t code = 0;
        if (lead >= 0xC2 && lead <= 0xDF) length = 2, code = lead & 0x1Fu;
        else if (lead >= 0xE0 && lead <= 0xEF) length = 3, code = lead & 0x0Fu;
        else if (lead >= 0xF0 && lead <= 0xF4) length = 4, code = lead & 0x07u;
        else return false;
        if (text.size() - i < length) return false;
        for (std::size_t k = 1; k < length; ++k) {
            const unsigned char next = static_cast<unsigned char>(text[i + k]);
            if ((next & 0xC0u) != 0x80u) return false;
            code = (code << 6) | (next & 0x3Fu);
        }
        if ((length == 3 && (code < 0x800 || (code >= 0xD800 && code <= 0xDFFF))) || (length == 4 && (code < 0x10000 || code > 0x10FFFF))) return false;
        i += length;
    }
    return true;
}

inline bool is_valid_tensor_name(std::string_view name) noexcept {
    return !name.empty() && name.size() <= container_format::max_name_bytes && is_clean_utf8(name);
}

inline bool is_valid_method(std::string_view method) noexcept {
    if (method.empty() || method.size() > container_format::max_method_bytes) return false;
    for (char c : method)
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
    return true;
}

}  // namespace detail
}  // namespace nwc
