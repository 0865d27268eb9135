// The rANS stream format: constants, the header and segment index, and the escape bit code.
//
// Read me first (docs/format/rans.md has the byte-by-byte layout):
// - 32 interleaved rANS states of 32 bits, renormalized with 16-bit words: a state lives in
//   [2^16, 2^32), a decode step leaves it >= 1, so one word always suffices to renormalize.
// - Symbol i of a segment belongs to lane i % 32 and "step" i / 32. Within a step, lanes that need
//   a word take consecutive words in lane order (lane-ordered renormalization). That is exactly the
//   order of a 32-thread CUDA warp doing ballot(need) + popc(ballot & lanemask_lt), and of an
//   AVX-512 masked expand-load; the scalar reference reads the same words symbol by symbol.
// - The encoder runs backwards (last symbol first) and reverses its words at the end.
// - Escapes (values outside a channel's support) go into a separate per-segment bit stream, in
//   symbol order, so the SIMD/warp fast path never waits on them.
// - A stream is cut into segments of segment_size symbols (a multiple of the channel count), each
//   decodable alone: its own 32 initial states, words, escape bits.
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/cdf_table_set.hpp"

namespace nwc {

/// Options of nwc::rans::encode.
struct RangeCoderOptions {
    /// Symbols per independently decodable segment; must be a positive multiple of the channel
    /// count and at most rans::max_segment_size. Each segment costs ~100 bytes of flushed states,
    /// so small segments buy parallelism with size (0.4% at 65536 symbols of 4 bits).
    std::uint32_t segment_size = 65536;
    /// Threads encoding segments in parallel (0 = all hardware threads); output is identical for any count.
    int threads = 1;
};

/// One segment of a parsed stream.
struct RansSegment {
    std::uint64_t first_symbol = 0;   ///< index of its first symbol in the stream
    std::uint32_t symbol_count = 0;   ///< segment_size, less for the last segment
    std::uint64_t byte_offset = 0;    ///< where its bytes start, from the start of the stream
    std::uint32_t byte_size = 0;      ///< states + words + escape bytes + padding to 4
    std::uint32_t word_count = 0;     ///< 16-bit renormalization words after the 32 initial states
    std::uint32_t escape_bytes = 0;   ///< bytes of the escape bit stream after the words
};

/// The parsed, validated header and segment index of a stream.
struct RansStreamIndex {
    std::uint64_t symbol_count = 0;
    std::uint32_t segment_size = 0;
    std::uint32_t channel_count = 0;
    int precision = 0;
    std::uint32_t tables_checksum = 0;
    std::vector<RansSegment> segments;
};

namespace rans {
inline constexpr std::uint32_t magic = 0x4352574E;           // "NWRC" little-endian
inline constexpr std::uint16_t version = 1;
inline constexpr std::uint32_t lane_count = 32;              // interleaved states = one CUDA warp
inline constexpr std::uint32_t state_lower_bound = 1u << 16;  // L; states live in [L, 2^32)
inline constexpr std::uint32_t word_bits = 16;
inline constexpr std::size_t header_bytes = 36;
inline constexpr std::size_t index_entry_bytes = 8;
inline constexpr std::size_t segment_state_bytes = lane_count * 4;
inline constexpr std::uint32_t max_segment_size = 1u << 24;
inline constexpr std::size_t checksum_offset = 32;          // the CRC field inside the header
/// Longest escape code: Elias-gamma of a 34-bit number.
inline constexpr std::uint32_t max_escape_code_bits = 67;
}  // namespace rans

namespace detail {

/// Writes the escape codes of one segment: Elias-gamma of (code + 1), MSB first.
class EscapeBitWriter {
public:
    void write(std::uint64_t code) {
        const std::uint64_t value = code + 1;
        const int length = int(std::bit_width(value));
        put_bits(0, length - 1);
        put_bits(value, length);
    }
    /// The bytes, the last one zero-padded.
    const std::vector<std::uint8_t>& finish() {
        if (m_bit_count % 8 != 0) m_bytes.push_back(std::uint8_t(m_pending << (8 - m_bit_count % 8)));
        m_bit_count = 0;
        return m_bytes;
    }

private:
    void put_bits(std::uint64_t value, int count) {
        for (int bit = count - 1; bit >= 0; --bit) {
            m_pending = std::uint8_t((m_pending << 1) | ((value >> bit) & 1u));
            if (++m_bit_count % 8 == 0) m_bytes.push_back(m_pending), m_pending = 0;
        }
    }
    std::vector<std::uint8_t> m_bytes;
    std::uint8_t m_pending = 0;
    std::uint64_t m_bit_count = 0;
};

/// Reads escape codes back; every failure throws nwc::error(corrupt) naming the segment.
class EscapeBitReader {
public:
    EscapeBitReader(std::span<const std::uint8_t> bytes, std::size_t segment, std::uint64_t byte_offset)
        : m_bytes(bytes), m_segment(segment), m_byte_offset(byte_offset) {}

    /// The value outside [offset, offset + support) coded by the next escape code.
    std::int32_t read_value(std::int32_t offset, std::uint32_t support) {
        int zeros = 0;
        while (get_bit() == 0)
            if (++zeros > int(rans::max_escape_code_bits / 2)) fail(errc::corrupt, where(), "escape code longer than ", rans::max_escape_code_bits, " bits");
        std::uint64_t value = 1;
        for (int bit = 0; bit < zeros; ++bit) value = (value << 1) | get_bit();
        const std::uint64_t code = value - 1;
        const std::int64_t distance = std::int64_t(code >> 1);
        const std::int64_t decoded = (code & 1u) ? std::int64_t(offset) + support + distance : std::int64_t(offset) - 1 - distance;
        require(decoded >= INT32_MIN && decoded <= INT32_MAX, errc::corrupt, where(), "escaped value ", decoded, " is not an int32");
        return std::int32_t(decoded);
    }
    /// Throws unless every byte was used and the padding bits of the last one are zero.
    void expect_end() const {
        const std::size_t used_bytes = (m_bit_position + 7) / 8;
        require(used_bytes == m_bytes.size(), errc::corrupt, where(), "it uses ", used_bytes, " bytes but the index announces ", m_bytes.size());
        if (m_bit_position % 8 != 0)
            require((m_bytes.back() & (0xFFu >> (m_bit_position % 8))) == 0, errc::corrupt, where(), "nonzero padding bits");
    }

private:
    std::uint32_t get_bit() {
        if (m_bit_position >= m_bytes.size() * 8) fail(errc::corrupt, where(), "exhausted after ", m_bytes.size(), " bytes");
        const std::uint32_t bit = (m_bytes[m_bit_position / 8] >> (7 - m_bit_position % 8)) & 1u;
        ++m_bit_position;
        return bit;
    }
    std::string where() const {
        return detail::concat("rANS stream: escape stream of segment ", m_segment, " at byte ", m_byte_offset, ": ");
    }
    std::span<const std::uint8_t> m_bytes;
    std::size_t m_segment;
    std::uint64_t m_byte_offset;
    std::size_t m_bit_position = 0;
};

inline std::uint32_t segment_byte_size(std::uint32_t word_count, std::uint32_t escape_bytes) noexcept {
    const std::uint64_t size = rans::segment_state_bytes + 2 * std::uint64_t(word_count) + escape_bytes;
    return std::uint32_t((size + 3) & ~std::uint64_t(3));
}

/// CRC-32C of a stream without its 4-byte checksum field.
inline std::uint32_t rans_stream_checksum(std::span<const std::uint8_t> stream) noexcept {
    return crc32c(stream.subspan(rans::checksum_offset + 4), crc32c(stream.first(rans::checksum_offset)));
}

}  // namespace detail

namespace rans {

/// Parses and validates a stream's header and index against `tables`. Throws nwc::error: truncated
/// (short stream), corrupt (bad magic, checksum, sizes, padding), unsupported (version, lane
/// count), invalid_argument (the stream was coded with other tables).
inline RansStreamIndex read_index(std::span<const std::uint8_t> stream, const CdfTableSet& tables, bool verify_checksum = true) {
    ByteReader reader(stream, "rANS stream");
    const std::uint32_t found_magic = reader.get_u32();
    require(found_magic == magic, errc::corrupt, "rANS stream: magic 0x", std::hex, found_magic, " at offset 0, expected 0x", magic);
    const std::uint16_t found_version = reader.get_u16();
    require(found_version == version, errc::unsupported, "rANS stream: version ", found_version, " (this build reads ", version, ")");
    const std::uint8_t lanes = reader.get_u8();
    require(lanes == lane_count, errc::unsupported, "rANS stream: ", int(lanes), " lanes (this build decodes ", lane_count, ")");
    RansStreamIndex index;
    index.precision = reader.get_u8();
    index.channel_count = reader.get_u32();
    index.tables_checksum = reader.get_u32();
    index.symbol_count = reader.get_u64();
    index.segment_size = reader.get_u32();
    const std::uint32_t segment_count = reader.get_u32();
    const std::uint32_t stored_checksum = reader.get_u32();
    if (verify_checksum && enforce_checksums) {
        const std::uint32_t actual = detail::rans_stream_checksum(stream);
        require(actual == stored_checksum, errc::corrupt, "rANS stream: CRC-32C 0x", std::hex, actual, " does not match the stored 0x",
                stored_checksum);
    }
    require(index.precision == tables.precision() && index.channel_count == tables.channel_count() &&
                index.tables_checksum == tables.checksum(),
            errc::invalid_argument, "rANS stream: coded with ", index.channel_count, " tables of precision ", index.precision, " (checksum 0x",
            std::hex, index.tables_checksum, "), decoder given ", std::dec, tables.channel_count(), " of precision ", tables.precision(),
            " (checksum 0x", std::hex, tables.checksum(), ")");
    require(index.segment_size >= 1 && index.segment_size <= max_segment_size && index.segment_size % index.channel_count == 0,
            errc::corrupt, "rANS stream: segment size ", index.segment_size, " is not a multiple of ", index.channel_count, " in [1, ",
            max_segment_size, "]");
    // Written so that a hostile symbol count near 2^64 cannot wrap around.
    const std::uint64_t expected_segments = index.symbol_count / index.segment_size + (index.symbol_count % index.segment_size != 0);
    require(expected_segments == segment_count, errc::corrupt, "rANS stream: ", segment_count, " segments announced, ", index.symbol_count,
            " symbols in segments of ", index.segment_size, " need ", expected_segments);
    require(segment_count <= reader.remaining() / (index_entry_bytes + segment_state_bytes), errc::truncated, "rANS stream: ",
            segment_count, " segments cannot fit in the ", reader.remaining(), " bytes after the header");
    index.segments.resize(segment_count);
    std::uint64_t byte_offset = header_bytes + std::uint64_t(segment_count) * index_entry_bytes;
    for (std::uint32_t s = 0; s < segment_count; ++s) {
        RansSegment& segment = index.segments[s];
        segment.first_symbol = std::uint64_t(s) * index.segment_size;
        segment.symbol_count = std::uint32_t(std::min<std::uint64_t>(index.segment_size, index.symbol_count - segment.first_symbol));
        segment.word_count = reader.get_u32();
        segment.escape_bytes = reader.get_u32();
        // Each symbol consumes at most one word and writes at most one escape code.
        require(segment.word_count <= segment.symbol_count &&
                    segment.escape_bytes <= (std::uint64_t(segment.symbol_count) * max_escape_code_bits + 7) / 8,
                errc::corrupt, "rANS stream: segment ", s, " announces ", segment.word_count, " words and ", segment.escape_bytes,
                " escape bytes for ", segment.symbol_count, " symbols");
        segment.byte_offset = byte_offset;
        segment.byte_size = detail::segment_byte_size(segment.word_count, segment.escape_bytes);
        byte_offset += segment.byte_size;
    }
    require(byte_offset <= stream.size(), errc::truncated, "rANS stream: segments end at byte ", byte_offset, " but the stream has ",
            stream.size());
    require(byte_offset == stream.size(), errc::corrupt, "rANS stream: ", stream.size() - byte_offset, " trailing bytes after byte ",
            byte_offset);
    for (std::uint32_t s = 0; s < segment_count; ++s) {
        const RansSegment& segment = index.segments[s];
        const std::uint64_t used = segment_state_bytes + 2 * std::uint64_t(segment.word_count) + segment.escape_bytes;
        for (std::uint64_t pad = used; pad < segment.byte_size; ++pad)
            require(stream[segment.byte_offset + pad] == 0, errc::corrupt, "rANS stream: segment ", s, ": nonzero padding at byte ",
                    segment.byte_offset + pad);
    }
    return index;
}

}  // namespace rans
}  // namespace nwc
