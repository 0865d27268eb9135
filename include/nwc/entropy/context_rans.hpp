// nwc::context_rans: the context-conditioned rANS coder. Each of 32 machine paths carries the
// state of a LaneStateMachine that picks the table of its next value (trellis-coded
// quantization: the table of the union the path's trellis state allows).
//
// Usage:
//     const LaneStateMachine machine = ...;                 // contexts = table indices
//     const CdfTableSet tables(...);                        // one CdfTable per context
//     std::vector<std::uint8_t> stream = context_rans::encode(values, tables, machine);
//     context_rans::decode(stream, tables, machine, out, backend::scalar{}, threads);
//
// Value i of a segment follows path i % 32; the encoder runs each path's machine from state 0 at
// every segment start to find each value's context (so callers pass values only: contexts that
// disagree with the machine cannot be written). A value must lie on its context's coset
// (value_stride * symbol + addend); symbols outside a table's support are escaped as in the
// plain coder. Decoding validates everything: a corrupt or truncated stream throws nwc::error,
// it never reads out of bounds. Output is identical for any backend and thread count.
// Format (version 2): docs/format/rans.md, section 3.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/context_rans_lanes.hpp"
#include "nwc/entropy/context_rans_simd.hpp"
#include "nwc/entropy/lane_state_machine.hpp"
#include "nwc/entropy/rans_format.hpp"

namespace nwc::context_rans {

/// Header flags (byte 1): bits 0-2 precision - 12, then these.
inline constexpr std::uint8_t flag_fingerprints = 1u << 3;  // u32 tables fingerprint + u32 machine checksum
inline constexpr std::uint8_t flag_checksum = 1u << 4;      // trailing CRC-32C of the stream

/// Encodes `values` with `tables` and `machine` (context c codes with table c). Throws
/// nwc::error(invalid_argument) for mismatched tables and machine, a segment size that is not a
/// positive multiple of 32 (at most rans::max_segment_size), or a value off its context's coset.
/// options.table_fingerprint records the tables' and the machine's fingerprints (8 bytes),
/// options.checksum a CRC-32C of the stream (4 bytes). The bytes do not depend on options.threads.
inline std::vector<std::uint8_t> encode(std::span<const std::int32_t> values, const CdfTableSet& tables, const LaneStateMachine& machine,
                                        const RangeCoderOptions& options = {}) {
    const nwc::detail::ContextDecodeTables bound(tables, machine);
    const std::uint32_t segment_size = options.segment_size;
    require(segment_size >= 1 && segment_size <= rans::max_segment_size && segment_size % path_count == 0, errc::invalid_argument,
            "context_rans::encode: segment size ", segment_size, " must be a multiple of ", path_count, " in [1, ", rans::max_segment_size, "]");
    const std::uint64_t segment_count = (values.size() + segment_size - 1) / segment_size;

    std::vector<std::vector<std::uint8_t>> segment_bytes(segment_count);
    parallel_for(std::int64_t(segment_count), options.threads, [&](std::int64_t s) {
        const std::size_t first = std::size_t(s) * segment_size;
        const std::size_t count = std::min<std::size_t>(segment_size, values.size() - first);
        nwc::detail::context_encode_segment(bound, machine, values.subspan(first, count), first, segment_bytes[std::size_t(s)]);
    });

    ByteWriter header;
    header.put_u8(version);
    header.put_u8(std::uint8_t((tables.precision() - CdfTable::min_precision) | (options.table_fingerprint ? flag_fingerprints : 0) |
                               (options.checksum ? flag_checksum : 0)));
    nwc::detail::put_varint(header, values.size());
    // 0 stands for one segment holding every value.
    if (!values.empty()) nwc::detail::put_varint(header, segment_count > 1 ? segment_size : 0);
    if (options.table_fingerprint) {
        header.put_u32(tables.checksum());
        header.put_u32(machine.checksum());
    }
    std::size_t total = header.size() + (options.checksum ? 4 : 0);
    for (const auto& bytes : segment_bytes) total += bytes.size();
    std::vector<std::uint8_t> stream;
    stream.reserve(total);
    stream.insert(stream.end(), header.bytes().begin(), header.bytes().end());
    for (auto& bytes : segment_bytes) {
        stream.insert(stream.end(), bytes.begin(), bytes.end());
        std::vector<std::uint8_t>().swap(bytes);
    }
    if (options.checksum) {
        const std::uint32_t crc = crc32c(stream);
        const auto* crc_bytes = reinterpret_cast<const std::uint8_t*>(&crc);
        stream.insert(stream.end(), crc_bytes, crc_bytes + 4);
    }
    return stream;
}

/// Parses and validates a stream's header and index against `tables` and `machine`. Throws
/// nwc::error: truncated (short stream), corrupt (checksum, sizes, lane blocks, trailing bytes),
/// unsupported (another version), invalid_argument (the stream records another precision, or
/// fingerprints of other tables or another machine).
inline RansStreamIndex read_index(std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine,
                                  bool verify_checksum = true) {
    static constexpr std::uint8_t version1_magic[6] = {'N', 'W', 'C', 'R', 1, 0};
    require(stream.size() < 6 || !std::equal(std::begin(version1_magic), std::end(version1_magic), stream.begin()), errc::unsupported,
            "context rANS stream: version 1 (magic \"NWCR\"); this build reads version ", int(version), " only");
    ByteReader head(stream, "context rANS stream");
    const std::uint8_t found_version = head.get_u8();
    require(found_version == version, errc::unsupported, "context rANS stream: version ", int(found_version), " (this build reads ", int(version),
            ")");
    const std::uint8_t flags = head.get_u8();
    RansStreamIndex index;
    index.precision = CdfTable::min_precision + (flags & 7);
    index.has_table_fingerprint = (flags & flag_fingerprints) != 0;
    index.has_checksum = (flags & flag_checksum) != 0;
    require((flags & 0xE0) == 0 && index.precision <= CdfTable::max_precision, errc::corrupt, "context rANS stream: flags 0x", std::hex,
            int(flags), " at offset 1 (reserved bits or precision beyond 16)");
    require(index.precision == tables.precision(), errc::invalid_argument, "context rANS stream: coded with tables of precision ", index.precision,
            ", decoder given precision ", tables.precision());
    std::span<const std::uint8_t> body = stream;
    if (index.has_checksum) {
        require(stream.size() >= 6, errc::truncated, "context rANS stream: ", stream.size(), " bytes cannot hold a header and its CRC-32C");
        body = stream.first(stream.size() - 4);
        std::uint32_t stored;
        std::memcpy(&stored, stream.data() + body.size(), 4);
        if (verify_checksum && enforce_checksums) {
            const std::uint32_t actual = crc32c(body);
            require(actual == stored, errc::corrupt, "context rANS stream: CRC-32C 0x", std::hex, actual, " does not match the stored 0x", stored);
        }
    }
    ByteReader reader(body, "context rANS stream");
    reader.skip(2);
    index.symbol_count = nwc::detail::get_varint(reader, "symbol count");
    const std::uint64_t stored_segment_size = index.symbol_count ? nwc::detail::get_varint(reader, "segment size") : 0;
    if (index.has_table_fingerprint) {
        const std::uint32_t table_fingerprint = reader.get_u32(), machine_fingerprint = reader.get_u32();
        require(table_fingerprint == tables.checksum(), errc::invalid_argument, "context rANS stream: coded with tables of fingerprint 0x",
                std::hex, table_fingerprint, ", decoder given 0x", tables.checksum());
        require(machine_fingerprint == machine.checksum(), errc::invalid_argument,
                "context rANS stream: coded with the lane state machine of checksum 0x", std::hex, machine_fingerprint, ", decoder given 0x",
                machine.checksum());
    }
    const std::uint64_t segment_size = stored_segment_size ? stored_segment_size : index.symbol_count;
    require(segment_size <= rans::max_segment_size && (stored_segment_size == 0 || (stored_segment_size < index.symbol_count &&
                                                                                      stored_segment_size % path_count == 0)),
            errc::corrupt, "context rANS stream: segment size ", stored_segment_size, " for ", index.symbol_count,
            " symbols (0 = one segment of at most ", rans::max_segment_size, ", else a multiple of ", path_count, " below the symbol count)");
    index.segment_size = std::uint32_t(segment_size);
    const std::uint64_t segment_count = segment_size ? index.symbol_count / segment_size + (index.symbol_count % segment_size != 0) : 0;
    require(segment_count <= reader.remaining() / rans::min_segment_bytes, errc::truncated, "context rANS stream: ", segment_count,
            " segments cannot fit in the ", reader.remaining(), " bytes after the header");
    nwc::detail::read_segment_index(reader, body, segment_count, segment_size, "context rANS stream", index);
    require(reader.at_end(), errc::corrupt, "context rANS stream: ", reader.remaining(), " trailing bytes after byte ", reader.offset());
    return index;
}

/// Decodes a whole stream into `out` (exactly the stream's value count), segments in parallel on
/// `threads` threads (0 = all). Results are identical for every backend and thread count. Throws
/// nwc::error: see read_index(), plus invalid_argument when out has the wrong size and corrupt
/// for an inconsistent segment.
template <class Backend>
void decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine, std::span<std::int32_t> out,
            Backend backend, int threads = 1) {
    const RansStreamIndex index = read_index(stream, tables, machine);
    require(out.size() == index.symbol_count, errc::invalid_argument, "context_rans::decode: the stream holds ", index.symbol_count,
            " values, output has room for ", out.size());
    const nwc::detail::ContextDecodeTables bound(tables, machine);
    const std::span<const std::uint8_t> body = index.has_checksum ? stream.first(stream.size() - 4) : stream;
    parallel_for(std::int64_t(index.segments.size()), threads, [&](std::int64_t s) {
        const RansSegment& info = index.segments[std::size_t(s)];
        // Unqualified: found by argument-dependent lookup, so a user's backend tag supplies its own kernel.
        context_decode_segment(bound, nwc::detail::segment_bytes(body, index, std::size_t(s)), out.subspan(info.first_symbol, info.symbol_count),
                               backend);
    });
}

/// Decodes a whole stream into a new vector (see decode above). A skewed table codes up to
/// rans::max_segment_size values in a few bytes: callers that must bound memory check
/// read_index().symbol_count first.
template <class Backend = backend::default_backend>
std::vector<std::int32_t> decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine,
                                 Backend backend = {}, int threads = 1) {
    const RansStreamIndex index = read_index(stream, tables, machine);
    std::vector<std::int32_t> out(index.symbol_count);
    decode(stream, tables, machine, std::span<std::int32_t>(out), backend, threads);
    return out;
}

}  // namespace nwc::context_rans
