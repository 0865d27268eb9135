// nwc::context_rans: the context-conditioned 32-lane rANS coder. Each lane carries the state of a
// LaneStateMachine that picks the table of its next symbol (trellis-coded quantization: the
// table of the union the lane's trellis state allows).
//
// Usage:
//     const LaneStateMachine machine = ...;                 // contexts = table indices
//     const CdfTableSet tables(...);                        // one CdfTable per context
//     std::vector<std::uint8_t> stream = context_rans::encode(values, tables, machine);
//     context_rans::decode(stream, tables, machine, out, backend::simd{}, threads);   // or backend::scalar{}
//
// Value i of a segment belongs to lane i % 32; the encoder runs each lane's machine from state 0
// at every segment start to find each value's context (so callers pass values only: contexts
// that disagree with the machine cannot be written). A value must lie on its context's coset
// (value_stride * symbol + addend); symbols outside a table's support are escaped as in the
// plain coder. Decoding validates everything: a corrupt or truncated stream throws nwc::error,
// it never reads out of bounds. Both decoders produce identical output for any thread count.
// Format: docs/format/rans.md, section 3.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/context_rans_lanes.hpp"
#include "nwc/entropy/context_rans_simd.hpp"
#include "nwc/entropy/lane_state_machine.hpp"
#include "nwc/entropy/rans_format.hpp"

namespace nwc::context_rans {

/// Encodes `values` with `tables` and `machine` (context c codes with table c). Throws
/// nwc::error(invalid_argument) for mismatched tables and machine, a segment size that is not a
/// positive multiple of 32 (at most rans::max_segment_size), or a value off its context's coset.
/// The bytes do not depend on options.threads.
inline std::vector<std::uint8_t> encode(std::span<const std::int32_t> values, const CdfTableSet& tables, const LaneStateMachine& machine,
                                        const RangeCoderOptions& options = {}) {
    const detail::ContextDecodeTables bound(tables, machine);
    const std::uint32_t segment_size = options.segment_size;
    require(segment_size >= 1 && segment_size <= rans::max_segment_size && segment_size % rans::lane_count == 0, errc::invalid_argument,
            "context_rans::encode: segment size ", segment_size, " must be a multiple of ", rans::lane_count, " in [1, ", rans::max_segment_size,
            "]");
    const std::uint64_t segment_count = (values.size() + segment_size - 1) / segment_size;
    require(segment_count <= 0xFFFFFFFFu, errc::limit, "context_rans::encode: ", values.size(), " values need ", segment_count, " segments");

    std::vector<std::vector<std::uint8_t>> segment_bytes(segment_count);
    std::vector<std::pair<std::uint32_t, std::uint32_t>> segment_sizes(segment_count);
    parallel_for(std::int64_t(segment_count), options.threads, [&](std::int64_t s) {
        const std::size_t first = std::size_t(s) * segment_size;
        const std::size_t count = std::min<std::size_t>(segment_size, values.size() - first);
        segment_sizes[std::size_t(s)] = detail::context_encode_segment(bound, machine, values.subspan(first, count), first, segment_bytes[std::size_t(s)]);
    });

    ByteWriter header;
    header.put_u32(magic);
    header.put_u16(version);
    header.put_u8(std::uint8_t(rans::lane_count));
    header.put_u8(std::uint8_t(tables.precision()));
    header.put_u32(std::uint32_t(tables.channel_count()));
    header.put_u32(detail::table_set_fingerprint(tables));
    header.put_u32(machine.checksum());
    header.put_u64(values.size());
    header.put_u32(segment_size);
    header.put_u32(std::uint32_t(segment_count));
    header.put_u32(0);  // CRC-32C, patched below
    for (const auto& [word_count, escape_bytes] : segment_sizes) {
        header.put_u32(word_count);
        header.put_u32(escape_bytes);
    }
    std::size_t total = header.size();
    for (const auto& bytes : segment_bytes) total += bytes.size();
    std::vector<std::uint8_t> stream;
    stream.reserve(total);
    stream.insert(stream.end(), header.bytes().begin(), header.bytes().end());
    for (auto& bytes : segment_bytes) {
        stream.insert(stream.end(), bytes.begin(), bytes.end());
        std::vector<std::uint8_t>().swap(bytes);
    }
    const std::uint32_t crc = detail::context_stream_checksum(stream);
    std::memcpy(stream.data() + checksum_offset, &crc, sizeof crc);
    return stream;
}

/// Parses and validates a stream's header and index against `tables` and `machine`. Throws
/// nwc::error: truncated (short stream), corrupt (bad magic, checksum, sizes, padding), unsupported
/// (version, lane count), invalid_argument (coded with other tables or another machine).
inline RansStreamIndex read_index(std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine,
                                  bool verify_checksum = true) {
    ByteReader reader(stream, "context rANS stream");
    const std::uint32_t found_magic = reader.get_u32();
    require(found_magic == magic, errc::corrupt, "context rANS stream: magic 0x", std::hex, found_magic, " at offset 0, expected 0x", magic);
    const std::uint16_t found_version = reader.get_u16();
    require(found_version == version, errc::unsupported, "context rANS stream: version ", found_version, " (this build reads ", version, ")");
    const std::uint8_t lanes = reader.get_u8();
    require(lanes == rans::lane_count, errc::unsupported, "context rANS stream: ", int(lanes), " lanes (this build decodes ", rans::lane_count, ")");
    RansStreamIndex index;
    index.precision = reader.get_u8();
    index.channel_count = reader.get_u32();
    index.tables_checksum = reader.get_u32();
    const std::uint32_t machine_checksum = reader.get_u32();
    index.symbol_count = reader.get_u64();
    index.segment_size = reader.get_u32();
    const std::uint32_t segment_count = reader.get_u32();
    const std::uint32_t stored_checksum = reader.get_u32();
    if (verify_checksum && enforce_checksums) {
        const std::uint32_t actual = detail::context_stream_checksum(stream);
        require(actual == stored_checksum, errc::corrupt, "context rANS stream: CRC-32C 0x", std::hex, actual, " does not match the stored 0x",
                stored_checksum);
    }
    const std::uint32_t fingerprint = detail::table_set_fingerprint(tables);
    require(index.precision == tables.precision() && index.channel_count == tables.channel_count() && index.tables_checksum == fingerprint,
            errc::invalid_argument, "context rANS stream: coded with ", index.channel_count, " tables of precision ", index.precision,
            " (checksum 0x", std::hex, index.tables_checksum, "), decoder given ", std::dec, tables.channel_count(), " of precision ",
            tables.precision(), " (checksum 0x", std::hex, fingerprint, ")");
    require(machine_checksum == machine.checksum(), errc::invalid_argument, "context rANS stream: coded with the lane state machine of checksum 0x",
            std::hex, machine_checksum, ", decoder given 0x", machine.checksum());
    require(index.segment_size >= 1 && index.segment_size <= rans::max_segment_size && index.segment_size % rans::lane_count == 0, errc::corrupt,
            "context rANS stream: segment size ", index.segment_size, " is not a multiple of ", rans::lane_count, " in [1, ", rans::max_segment_size,
            "]");
    const std::uint64_t expected_segments = index.symbol_count / index.segment_size + (index.symbol_count % index.segment_size != 0);
    require(expected_segments == segment_count, errc::corrupt, "context rANS stream: ", segment_count, " segments announced, ", index.symbol_count,
            " symbols in segments of ", index.segment_size, " need ", expected_segments);
    require(segment_count <= reader.remaining() / (rans::index_entry_bytes + rans::segment_state_bytes), errc::truncated, "context rANS stream: ",
            segment_count, " segments cannot fit in the ", reader.remaining(), " bytes after the header");
    index.segments.resize(segment_count);
    std::uint64_t byte_offset = header_bytes + std::uint64_t(segment_count) * rans::index_entry_bytes;
    for (std::uint32_t s = 0; s < segment_count; ++s) {
        RansSegment& segment = index.segments[s];
        segment.first_symbol = std::uint64_t(s) * index.segment_size;
        segment.symbol_count = std::uint32_t(std::min<std::uint64_t>(index.segment_size, index.symbol_count - segment.first_symbol));
        segment.word_count = reader.get_u32();
        segment.escape_bytes = reader.get_u32();
        require(segment.word_count <= segment.symbol_count &&
                    segment.escape_bytes <= (std::uint64_t(segment.symbol_count) * rans::max_escape_code_bits + 7) / 8,
                errc::corrupt, "context rANS stream: segment ", s, " announces ", segment.word_count, " words and ", segment.escape_bytes,
                " escape bytes for ", segment.symbol_count, " symbols");
        segment.byte_offset = byte_offset;
        segment.byte_size = detail::segment_byte_size(segment.word_count, segment.escape_bytes);
        byte_offset += segment.byte_size;
    }
    require(byte_offset <= stream.size(), errc::truncated, "context rANS stream: segments end at byte ", byte_offset, " but the stream has ",
            stream.size());
    require(byte_offset == stream.size(), errc::corrupt, "context rANS stream: ", stream.size() - byte_offset, " trailing bytes after byte ",
            byte_offset);
    for (std::uint32_t s = 0; s < segment_count; ++s) {
        const RansSegment& segment = index.segments[s];
        const std::uint64_t used = rans::segment_state_bytes + 2 * std::uint64_t(segment.word_count) + segment.escape_bytes;
        for (std::uint64_t pad = used; pad < segment.byte_size; ++pad)
            require(stream[segment.byte_offset + pad] == 0, errc::corrupt, "context rANS stream: segment ", s, ": nonzero padding at byte ",
                    segment.byte_offset + pad);
    }
    return index;
}

/// Decodes a whole stream into `out` (exactly the stream's value count), segments in parallel on
/// `threads` threads (0 = all). Backend: backend::scalar{} (reference) or backend::simd{}; results
/// are identical for every backend and thread count. Throws nwc::error: see read_index(), plus
/// invalid_argument when out has the wrong size and corrupt for an inconsistent segment.
template <class Backend>
void decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine, std::span<std::int32_t> out,
            Backend backend, int threads = 1) {
    const RansStreamIndex index = read_index(stream, tables, machine);
    require(out.size() == index.symbol_count, errc::invalid_argument, "context_rans::decode: the stream holds ", index.symbol_count,
            " values, output has room for ", out.size());
    const detail::ContextDecodeTables bound(tables, machine);
    parallel_for(std::int64_t(index.segments.size()), threads, [&](std::int64_t s) {
        const RansSegment& info = index.segments[std::size_t(s)];
        detail::context_decode_segment(bound, detail::segment_bytes(stream, index, std::size_t(s)), out.subspan(info.first_symbol, info.symbol_count),
                                       backend);
    });
}

/// Decodes a whole stream into a new vector (see decode above). A skewed table codes up to
/// rans::max_segment_size values in a 136-byte segment: callers that must bound memory check
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
