// The rANS stream format, version 2: constants, the lane-count rule, the header and segment
// index, the lane blocks and the escape code. docs/format/rans.md has the byte-by-byte layout.
//
// Read me first:
// - A segment of n symbols is coded by lanes = lane_count_for(n) interleaved rANS states (1, 2,
//   4, 8, 16 or 32: fewer lanes for small segments, whose final states would otherwise cost more
//   than their payload). Symbol j of a segment belongs to lane j % lanes and "step" j / lanes;
//   within a step, lanes that need a word take consecutive words in lane order (a CUDA warp's
//   ballot + popc, an AVX-512 masked expand; the scalar reference reads them symbol by symbol).
// - States are 32 bits with 16-bit words; the normal range is [2^16, 2^32). Every lane's ENCODER
//   starts at state 1, not 2^16: the lane's last symbols (its "tail", k of them) are coded while
//   the state is still below 2^16, where no word is ever emitted. The decoder is told k per lane
//   and does not renormalize on those symbols; it must end every lane at state 1. Starting at 1
//   instead of 2^16 saves the 16 bits per lane that an unused start state costs.
// - Final encoder states (the decoder's initial states) are stored in a bit-packed lane block:
//   each in about log2(state) + 4 bits instead of 32, with the tail lengths.
// - Escapes (values outside a channel's support) go into a separate per-segment bit stream, in
//   symbol order, so the SIMD/warp fast path never waits on them.
// - No checksum by default: streams live inside containers that CRC every tensor. Options add a
//   CRC-32C of the stream and the CRC-32C fingerprint of the tables (4 bytes each).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/bit_io.hpp"
#include "nwc/entropy/cdf_table_set.hpp"

namespace nwc {

/// Options of nwc::rans::encode.
struct RangeCoderOptions {
    /// Symbols per independently decodable segment; must be a positive multiple of the channel
    /// count and at most rans::max_segment_size. Small segments buy parallelism with size: each
    /// costs a few bytes of index plus about 1.5-2 bytes per lane (docs/bench/range_coder.md).
    std::uint32_t segment_size = 65536;
    /// Threads encoding segments in parallel (0 = all hardware threads); output is identical for any count.
    int threads = 1;
    /// Append a CRC-32C of the whole stream (4 bytes): for streams stored outside a checksummed container.
    bool checksum = false;
    /// Record the tables' CRC-32C fingerprint (4 bytes), so that decoding with other tables is
    /// errc::invalid_argument instead of (most likely) errc::corrupt.
    bool table_fingerprint = false;
};

/// One segment of a parsed stream; offsets are from the start of the stream.
struct RansSegment {
    std::uint64_t first_symbol = 0;   ///< index of its first symbol in the stream
    std::uint32_t symbol_count = 0;   ///< segment_size, less for the last segment
    std::uint32_t lane_count = 0;     ///< rans::lane_count_for(symbol_count)
    std::uint64_t byte_offset = 0;    ///< where the segment starts (its two varints)
    std::uint32_t byte_size = 0;      ///< varints + lane block + words + escape bytes
    std::uint64_t lanes_offset = 0;   ///< the bit-packed lane block
    std::uint32_t lane_bytes = 0;
    std::uint64_t words_offset = 0;   ///< word_count u16 words, then escape_bytes bytes
    std::uint32_t word_count = 0;     ///< 16-bit renormalization words
    std::uint32_t escape_bytes = 0;   ///< bytes of the escape bit stream after the words
};

/// The parsed, validated header and segment index of a stream.
struct RansStreamIndex {
    std::uint64_t symbol_count = 0;
    std::uint32_t segment_size = 0;  ///< symbols per segment (the symbol count for a single segment)
    int precision = 0;
    bool has_checksum = false;
    bool has_table_fingerprint = false;
    std::vector<RansSegment> segments;
};

namespace rans {
inline constexpr std::uint8_t version = 2;
inline constexpr std::uint32_t max_lane_count = 32;           // one CUDA warp, two AVX-512 registers
inline constexpr std::uint32_t symbols_per_lane = 2048;       // the lane-count rule's unit (below)
inline constexpr std::uint32_t state_lower_bound = 1u << 16;  // L; normal states live in [L, 2^32)
inline constexpr std::uint32_t initial_state = 1;             // every lane's encoder start = decoder end
inline constexpr std::uint32_t word_bits = 16;
inline constexpr std::uint32_t max_segment_size = 1u << 24;
/// Longest escape code: Elias-gamma of a 34-bit number.
inline constexpr std::uint32_t max_escape_code_bits = 67;
/// Smallest segment: two one-byte varints and a one-byte lane block.
inline constexpr std::size_t min_segment_bytes = 3;
/// Header flags (byte 1): bits 0-2 precision - 12, then these.
inline constexpr std::uint8_t flag_table_fingerprint = 1u << 3;
inline constexpr std::uint8_t flag_checksum = 1u << 4;

/// Lanes of a segment of `symbols` symbols: the largest power of two <= symbols / 2048, within
/// [1, 32]. About 1.5-2 bytes per lane of final state against >= 2048 symbols per lane keeps the
/// lanes' cost near 0.2% of a 4-bit payload; segments of 64Ki symbols and more get all 32 lanes.
constexpr std::uint32_t lane_count_for(std::uint64_t symbols) noexcept {
    const std::uint64_t ratio = std::clamp<std::uint64_t>(symbols / symbols_per_lane, 1, max_lane_count);
    return std::uint32_t(std::bit_floor(ratio));
}
/// Symbols of lane `lane` in a segment of `symbols` symbols coded by `lanes` lanes.
constexpr std::uint32_t lane_symbols(std::uint32_t symbols, std::uint32_t lanes, std::uint32_t lane) noexcept {
    return symbols / lanes + (lane < symbols % lanes);
}
}  // namespace rans

namespace detail {

/// The decoder's start of one segment, parsed from its lane block.
struct RansLaneStart {
    std::uint32_t lane_count = 0;
    std::uint32_t states[rans::max_lane_count] = {};
    /// Per lane, its symbols before the tail: the decoder renormalizes after these only.
    std::uint32_t renormalized[rans::max_lane_count] = {};
};

/// Writes a lane block: gamma(k_min), then per lane gamma(k - k_min + 1) and the final state x as
/// its bit width (4 bits: width - 17 when the lane has symbols before its tail, so x >= 2^16;
/// else 5 bits: width - 1) and its bits below the top one. k (the tail) is >= 1 for every lane.
inline std::vector<std::uint8_t> write_lane_block(std::uint32_t symbols, std::uint32_t lanes, const std::uint32_t* states,
                                                  const std::uint32_t* tails) {
    BitWriter bits;
    const std::uint32_t smallest_tail = *std::min_element(tails, tails + lanes);
    bits.put_gamma(smallest_tail);
    for (std::uint32_t lane = 0; lane < lanes; ++lane) {
        bits.put_gamma(tails[lane] - smallest_tail + 1);
        const int width = int(std::bit_width(states[lane]));
        if (tails[lane] < rans::lane_symbols(symbols, lanes, lane))
            bits.put(std::uint64_t(width - 17), 4);
        else
            bits.put(std::uint64_t(width - 1), 5);
        bits.put(states[lane], width - 1);
    }
    return bits.finish();
}

/// Parses the lane block at the start of `bytes` (a segment of `symbols` symbols); returns its
/// byte size. Throws nwc::error(corrupt) for a tail longer than its lane or a malformed code.
inline std::size_t read_lane_block(std::span<const std::uint8_t> bytes, std::uint32_t symbols, std::uint64_t byte_offset, std::size_t segment,
                                   RansLaneStart& start) {
    const std::string context = concat("rANS stream: lane block of segment ", segment);
    BitReader bits(bytes, context, byte_offset);
    start.lane_count = rans::lane_count_for(symbols);
    const std::uint64_t smallest_tail = bits.get_gamma(32);
    for (std::uint32_t lane = 0; lane < start.lane_count; ++lane) {
        const std::uint64_t tail = smallest_tail + bits.get_gamma(32) - 1;
        const std::uint32_t lane_symbols = rans::lane_symbols(symbols, start.lane_count, lane);
        if (tail > lane_symbols) bits.fail_at("lane ", lane, " announces a tail of ", tail, " symbols but has ", lane_symbols);
        const int width = tail < lane_symbols ? 17 + int(bits.get(4)) : 1 + int(bits.get(5));
        start.states[lane] = std::uint32_t((std::uint64_t(1) << (width - 1)) | bits.get(width - 1));
        start.renormalized[lane] = lane_symbols - std::uint32_t(tail);
    }
    bits.expect_zero_padding();
    return bits.bytes_used();
}

/// Writes the escape codes of one segment: Elias-gamma of (code + 1), MSB first.
class EscapeBitWriter {
public:
    void write(std::uint64_t code) { m_bits.put_gamma(code + 1); }
    std::vector<std::uint8_t> finish() { return m_bits.finish(); }

private:
    BitWriter m_bits;
};

/// Reads escape codes back; every failure throws nwc::error(corrupt) naming the segment.
class EscapeBitReader {
public:
    EscapeBitReader(std::span<const std::uint8_t> bytes, std::size_t segment, std::uint64_t byte_offset)
        : m_context(concat("rANS stream: escape stream of segment ", segment)), m_bits(bytes, m_context, byte_offset), m_size(bytes.size()) {}
    EscapeBitReader(const EscapeBitReader&) = delete;

    /// The value outside [offset, offset + support) coded by the next escape code.
    std::int32_t read_value(std::int32_t offset, std::uint32_t support) {
        const std::uint64_t code = m_bits.get_gamma(34) - 1;
        const std::int64_t distance = std::int64_t(code >> 1);
        const std::int64_t decoded = (code & 1u) ? std::int64_t(offset) + support + distance : std::int64_t(offset) - 1 - distance;
        if (decoded < INT32_MIN || decoded > INT32_MAX) m_bits.fail_at("escaped value ", decoded, " is not an int32");
        return std::int32_t(decoded);
    }
    /// Throws unless every byte was used and the padding bits of the last one are zero.
    void expect_end() const { m_bits.expect_end(); }

private:
    std::string m_context;
    BitReader m_bits;
    std::size_t m_size;
};

/// Parses `segment_count` segments of `segment_size` symbols (the last one shorter) from `reader`
/// (positioned after the header, over `body`) into index.segments; shared by the plain and the
/// context-coded stream, whose segments are laid out alike. Throws nwc::error(corrupt, truncated).
inline void read_segment_index(ByteReader& reader, std::span<const std::uint8_t> body, std::uint64_t segment_count, std::uint64_t segment_size,
                               std::string_view name, RansStreamIndex& index) {
    index.segments.resize(std::size_t(segment_count));
    RansLaneStart start;
    for (std::size_t s = 0; s < index.segments.size(); ++s) {
        RansSegment& segment = index.segments[s];
        segment.byte_offset = reader.offset();
        segment.first_symbol = std::uint64_t(s) * segment_size;
        segment.symbol_count = std::uint32_t(std::min<std::uint64_t>(segment_size, index.symbol_count - segment.first_symbol));
        segment.lane_count = rans::lane_count_for(segment.symbol_count);
        const std::uint64_t words = get_varint(reader, "word count"), escape_bytes = get_varint(reader, "escape byte count");
        // Each symbol consumes at most one word and writes at most one escape code.
        require(words <= segment.symbol_count && escape_bytes <= (std::uint64_t(segment.symbol_count) * rans::max_escape_code_bits + 7) / 8, errc::corrupt,
                name, ": segment ", s, " at byte ", segment.byte_offset, " announces ", words, " words and ", escape_bytes, " escape bytes for ",
                segment.symbol_count, " symbols");
        segment.word_count = std::uint32_t(words);
        segment.escape_bytes = std::uint32_t(escape_bytes);
        segment.lanes_offset = reader.offset();
        segment.lane_bytes = std::uint32_t(read_lane_block(body.subspan(reader.offset()), segment.symbol_count, reader.offset(), s, start));
        reader.skip(segment.lane_bytes);
        segment.words_offset = reader.offset();
        reader.skip(2 * std::size_t(segment.word_count) + segment.escape_bytes);
        segment.byte_size = std::uint32_t(reader.offset() - segment.byte_offset);
    }
}

/// CRC-32C of a stream without its trailing 4-byte checksum.
inline std::uint32_t rans_stream_checksum(std::span<const std::uint8_t> stream) noexcept { return crc32c(stream.first(stream.size() - 4)); }

}  // namespace detail

namespace rans {

/// Parses and validates a stream's header and index against `tables`. Throws nwc::error:
/// truncated (short stream), corrupt (checksum, sizes, lane blocks, trailing bytes), unsupported
/// (a version 1 stream or an unknown version), invalid_argument (the stream records another
/// precision or another tables fingerprint than `tables` has).
inline RansStreamIndex read_index(std::span<const std::uint8_t> stream, const CdfTableSet& tables, bool verify_checksum = true) {
    static constexpr std::uint8_t version1_magic[6] = {'N', 'W', 'R', 'C', 1, 0};
    require(stream.size() < 6 || !std::equal(std::begin(version1_magic), std::end(version1_magic), stream.begin()), errc::unsupported,
            "rANS stream: version 1 (magic \"NWRC\"); this build reads version ", int(version), " only");
    ByteReader head(stream, "rANS stream");
    const std::uint8_t found_version = head.get_u8();
    require(found_version == version, errc::unsupported, "rANS stream: version ", int(found_version), " (this build reads ", int(version), ")");
    const std::uint8_t flags = head.get_u8();
    RansStreamIndex index;
    index.precision = CdfTable::min_precision + (flags & 7);
    index.has_table_fingerprint = (flags & flag_table_fingerprint) != 0;
    index.has_checksum = (flags & flag_checksum) != 0;
    require((flags & 0xE0) == 0 && index.precision <= CdfTable::max_precision, errc::corrupt, "rANS stream: flags 0x", std::hex, int(flags),
            " at offset 1 (reserved bits or precision beyond 16)");
    require(index.precision == tables.precision(), errc::invalid_argument, "rANS stream: coded with tables of precision ", index.precision,
            ", decoder given precision ", tables.precision());
    // The body: everything before the trailing CRC-32C, if there is one.
    std::span<const std::uint8_t> body = stream;
    if (index.has_checksum) {
        require(stream.size() >= 6, errc::truncated, "rANS stream: ", stream.size(), " bytes cannot hold a header and its CRC-32C");
        body = stream.first(stream.size() - 4);
        std::uint32_t stored;
        std::memcpy(&stored, stream.data() + body.size(), 4);
        if (verify_checksum && enforce_checksums) {
            const std::uint32_t actual = detail::rans_stream_checksum(stream);
            require(actual == stored, errc::corrupt, "rANS stream: CRC-32C 0x", std::hex, actual, " does not match the stored 0x", stored);
        }
    }
    ByteReader reader(body, "rANS stream");
    reader.skip(2);
    index.symbol_count = detail::get_varint(reader, "symbol count");
    const std::uint64_t stored_segment_size = index.symbol_count ? detail::get_varint(reader, "segment size") : 0;
    if (index.has_table_fingerprint) {
        const std::uint32_t fingerprint = reader.get_u32();
        require(fingerprint == tables.checksum(), errc::invalid_argument, "rANS stream: coded with tables of fingerprint 0x", std::hex, fingerprint,
                ", decoder given 0x", tables.checksum());
    }
    // Segment size 0 stands for one segment of all symbols; else it is below the symbol count.
    const std::uint64_t segment_size = stored_segment_size ? stored_segment_size : index.symbol_count;
    const std::uint32_t channels = std::uint32_t(std::max<std::size_t>(tables.channel_count(), 1));
    require(segment_size <= max_segment_size && (stored_segment_size == 0 || (stored_segment_size < index.symbol_count && stored_segment_size % channels == 0)),
            errc::corrupt, "rANS stream: segment size ", stored_segment_size, " for ", index.symbol_count, " symbols (0 = one segment of at most ",
            max_segment_size, ", else a multiple of ", channels, " below the symbol count)");
    index.segment_size = std::uint32_t(segment_size);
    // Written so that a hostile symbol count near 2^64 cannot wrap around.
    const std::uint64_t segment_count = segment_size ? index.symbol_count / segment_size + (index.symbol_count % segment_size != 0) : 0;
    require(segment_count <= reader.remaining() / min_segment_bytes, errc::truncated, "rANS stream: ", segment_count, " segments cannot fit in the ",
            reader.remaining(), " bytes after the header");
    detail::read_segment_index(reader, body, segment_count, segment_size, "rANS stream", index);
    require(reader.at_end(), errc::corrupt, "rANS stream: ", reader.remaining(), " trailing bytes after byte ", reader.offset());
    return index;
}

}  // namespace rans
}  // namespace nwc
