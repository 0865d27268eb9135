// The .nwc container, version 3: constants, limits, the layout rule and the records shared by the
// writers (container_writer.hpp), the directory builder (container_layout.hpp) and the reader.
//
// A container holds compressed tensors whose payloads the codec layer produces; it knows nothing
// of codecs, only structure. Byte-by-byte layout in docs/format/container.md; in short:
//
//   [header 16 B][codec blobs][tensor 0 metadata][pad][tensor 0 payload]...[directory][footer 16 B]
//
// Regions come in the order they were added, so a writer streams them to disk and writes the
// directory (varints, names coded against one of the 64 before) and the footer that locates it last. Offsets are not
// stored: they follow from the sizes by one rule (regions packed back to back, except that a
// payload of at least 64 KiB starts at a multiple of 64), so each content has exactly one encoding
// and regions can neither overlap nor alias.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc {

/// Format constants and the limits a reader enforces before allocating anything.
namespace container_format {
/// "\x89NWC\r\n\x1a\n": the high byte catches 7-bit transfers, CR LF and ^Z catch text-mode mangling (as PNG).
inline constexpr std::uint8_t magic[8] = {0x89, 'N', 'W', 'C', '\r', '\n', 0x1A, '\n'};
/// The footer's last bytes: a file that does not end with them was cut short (or had bytes appended).
inline constexpr std::uint8_t end_magic[4] = {'N', 'W', 'C', 0x1A};
inline constexpr std::uint32_t version = 3;
inline constexpr std::size_t header_bytes = 16;
inline constexpr std::size_t footer_bytes = 16;
/// A payload of at least `aligned_payload_bytes` starts at a multiple of `payload_alignment`
/// (a cache line, an AVX-512 vector) for zero-copy and device readers, at under 0.1% of its size;
/// every other region is packed. Why these numbers: docs/format/container.md, "Alignment".
inline constexpr std::uint64_t payload_alignment = 64;
inline constexpr std::uint64_t aligned_payload_bytes = 65536;

inline constexpr std::uint32_t max_tensors = 1u << 20;
inline constexpr std::uint32_t max_codecs = 1u << 12;
inline constexpr std::uint32_t max_methods = 1u << 8;
inline constexpr std::size_t max_name_bytes = 4096;
/// All tensor names together: names share bytes with the previous one, so a few directory bytes can
/// stand for a long name, and what a reader allocates for names is capped on its own.
inline constexpr std::uint64_t max_total_name_bytes = 64u << 20;
inline constexpr std::size_t max_method_bytes = 32;
inline constexpr std::uint32_t max_file_metadata_bytes = 64u << 20;
inline constexpr std::uint64_t max_directory_bytes = 1ull << 30;
/// Segments of all tensors together (a reader keeps 8 bytes per segment; its varint may be 1 byte).
inline constexpr std::uint64_t max_segments = 1u << 26;
/// Elements of one tensor; decoders still bound what they allocate by their payload size.
inline constexpr std::int64_t max_elements = std::int64_t(1) << 40;
/// Smallest directory records, to check counts against the bytes that remain before allocating.
inline constexpr std::size_t min_method_record_bytes = 2, min_codec_record_bytes = 5, min_tensor_record_bytes = 14;
}  // namespace container_format

/// What the caller hands to the writers' add_tensor.
struct ContainerTensor {
    std::string name;                          ///< unique, 1..4096 bytes of UTF-8 without control characters
    dtype original_dtype = dtype::f32;         ///< the dtype the tensor had in the source model
    Shape shape;                               ///< its shape in the source model
    std::string method = "raw";                ///< "nwc", "ecsq", "gptq", "rtn", "raw": [a-z0-9_-], 1..32 bytes
    std::int32_t codec_index = -1;             ///< index returned by the writer's add_codec, or -1
    std::vector<std::uint8_t> metadata;        ///< codec-defined (scales, levels, ...), opaque here
    std::vector<std::uint8_t> payload;         ///< the compressed bits, one or more segments back to back
    std::vector<std::uint64_t> segment_sizes;  ///< bytes of each independently decodable segment; empty = one segment

    /// Appends one independently decodable segment to the payload.
    void add_segment(std::span<const std::uint8_t> segment) {
        payload.insert(payload.end(), segment.begin(), segment.end());
        segment_sizes.push_back(segment.size());
    }
    /// Appends `segments` in order, freeing each once copied: the payload and the segments are
    /// never both held whole (a large tensor's coded bytes, twice).
    void add_segments(std::vector<std::vector<std::uint8_t>>&& segments) {
        std::size_t total = payload.size();
        for (const auto& segment : segments) total += segment.size();
        payload.reserve(total);
        segment_sizes.reserve(segment_sizes.size() + segments.size());
        for (auto& segment : segments) {
            add_segment(segment);
            std::vector<std::uint8_t>().swap(segment);
        }
        segments.clear();
    }
};

/// A tensor as the directory records it: everything but its bytes (ContainerLayout's input, and
/// what rate control knows of a tensor without holding its payload).
struct ContainerTensorInfo {
    std::string name;
    dtype original_dtype = dtype::f32;
    Shape shape;
    std::string method = "raw";
    std::int32_t codec_index = -1;
    std::uint64_t metadata_size = 0;
    std::uint64_t payload_size = 0;
    std::vector<std::uint64_t> segment_sizes;  ///< empty = one segment

    /// The description of `tensor`.
    static ContainerTensorInfo of(const ContainerTensor& tensor) {
        return {tensor.name, tensor.original_dtype, tensor.shape, tensor.method, tensor.codec_index, tensor.metadata.size(), tensor.payload.size(),
                tensor.segment_sizes};
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
    std::uint64_t payload_offset = 0;
    std::uint64_t payload_size = 0;
    std::uint32_t crc = 0;                      ///< CRC-32C of the metadata bytes followed by the payload bytes
    std::vector<std::uint64_t> segment_bounds;  ///< segment k is payload bytes [bounds[k], bounds[k+1])

    std::size_t segment_count() const noexcept { return segment_bounds.empty() ? 0 : segment_bounds.size() - 1; }
};

/// Where a codec blob lies in an opened container.
struct ContainerCodecEntry {
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
    std::uint32_t crc = 0;
};

/// Every byte of a container, by what it is for: the parts sum to the file size exactly
/// (`total()`), the container's share of `nwc inspect --breakdown`.
struct ContainerAccounting {
    struct TensorBytes {
        std::uint64_t directory = 0;  ///< its directory record (also counted in `directory` below)
        std::uint64_t metadata = 0;   ///< codec-defined: scales, levels, tables, measurements
        std::uint64_t payload = 0;    ///< the coded bits, or the raw values of a passthrough tensor
        std::uint64_t padding = 0;    ///< zeros that align its payload (also counted in `padding` below)
    };
    std::uint64_t header_footer = 0;  ///< the fixed header and footer
    std::uint64_t directory = 0;      ///< the whole directory, file metadata text included
    std::uint64_t file_metadata = 0;  ///< of which the file metadata text
    std::uint64_t padding = 0;        ///< alignment zeros before payloads
    std::uint64_t codec_blobs = 0;
    std::vector<TensorBytes> tensors;  ///< in directory order

    /// header + footer + directory + padding + codec blobs + every tensor's metadata and payload.
    std::uint64_t total() const noexcept {
        std::uint64_t sum = header_footer + directory + padding + codec_blobs;
        for (const TensorBytes& tensor : tensors) sum += tensor.metadata + tensor.payload;
        return sum;
    }
};

namespace detail {

/// The layout rule: where a payload of `size` bytes starts when the previous region ends at `cursor`.
constexpr std::uint64_t container_payload_offset(std::uint64_t cursor, std::uint64_t size) noexcept {
    if (size < container_format::aligned_payload_bytes) return cursor;
    return (cursor + container_format::payload_alignment - 1) / container_format::payload_alignment * container_format::payload_alignment;
}

/// The most bytes a tensor's metadata and payload take in the file (padding included, which depends
/// on where the tensor lands): for estimates that add tensors up without laying them out. The exact
/// size of a whole file comes from ContainerLayout::file_size().
constexpr std::uint64_t container_tensor_bytes_bound(std::uint64_t metadata_size, std::uint64_t payload_size) noexcept {
    const bool aligned = payload_size >= container_format::aligned_payload_bytes;
    return metadata_size + payload_size + (aligned ? container_format::payload_alignment - 1 : 0);
}

/// How a tensor name is coded against an earlier one (its base): the bytes they share at the start,
/// then the bytes the rest of each shares at the end. Model names differ from the same role one
/// layer back in the layer number: "model.layers.3.self_attn.k_proj.weight" against
/// "model.layers.2.self_attn.k_proj.weight" costs the one byte "3". The base is one of the
/// `name_base_window` names before (version 2 could only use the previous one).
inline constexpr std::size_t name_base_window = 64;
struct NameSharing {
    std::size_t prefix = 0;
    std::size_t suffix = 0;
    bool operator==(const NameSharing&) const = default;
};
inline NameSharing name_sharing(std::string_view previous, std::string_view name) noexcept {
    NameSharing shared;
    while (shared.prefix < previous.size() && shared.prefix < name.size() && previous[shared.prefix] == name[shared.prefix]) ++shared.prefix;
    const std::size_t room = std::min(previous.size(), name.size()) - shared.prefix;
    while (shared.suffix < room && previous[previous.size() - 1 - shared.suffix] == name[name.size() - 1 - shared.suffix]) ++shared.suffix;
    return shared;
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
