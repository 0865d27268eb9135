// nwc::rans: the interleaved rANS range coder of latent tensors (1-32 lanes per segment by its
// size, 32-bit states, 16-bit words).
//
// Usage:
//     const CdfTableSet tables(...);                        // one CdfTable per channel
//     std::vector<std::uint8_t> stream = rans::encode(symbols, tables);
//     rans::decode(stream, tables, out, backend::simd{}, threads);   // or backend::scalar{}
//
// Symbol i uses table i % tables.channel_count(). Any int32 round-trips: values outside a table's
// support are escaped. The stream is cut into segments that decode independently (one thread or
// one GPU warp each); read_index() exposes where each lies. Decoding validates everything: a
// corrupt or truncated stream throws nwc::error, it never reads out of bounds or loops forever.
// Both decoders produce identical output, for any thread count. Format: docs/format/rans.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/rans_format.hpp"
#include "nwc/entropy/rans_lanes.hpp"
#include "nwc/entropy/rans_simd.hpp"

namespace nwc::rans {

/// Encodes `symbols` (any int32 values) with `tables`; symbol i uses table i % channel_count.
/// Throws nwc::error(invalid_argument) for empty tables or a segment size that is not a positive
/// multiple of the channel count (at most max_segment_size). The bytes do not depend on
/// options.threads.
inline std::vector<std::uint8_t> encode(std::span<const std::int32_t> symbols, const CdfTableSet& tables,
                                        const RangeCoderOptions& options = {}) {
    require(!tables.empty(), errc::invalid_argument, "rans::encode: no tables");
    const std::uint32_t channels = std::uint32_t(tables.channel_count());
    const std::uint32_t segment_size = options.segment_size;
    require(segment_size >= 1 && segment_size <= max_segment_size && segment_size % channels == 0, errc::invalid_argument,
            "rans::encode: segment size ", segment_size, " must be a multiple of the ", channels, " channels in [1, ", max_segment_size, "]");
    const std::size_t segment_count = (symbols.size() + segment_size - 1) / segment_size;

    std::vector<std::vector<std::uint8_t>> segment_bytes(segment_count);
    parallel_for(std::int64_t(segment_count), options.threads, [&](std::int64_t s) {
        const std::size_t first = std::size_t(s) * segment_size;
        const std::size_t count = std::min<std::size_t>(segment_size, symbols.size() - first);
        detail::rans_encode_segment(tables.encode_tables(), symbols.subspan(first, count), segment_bytes[std::size_t(s)]);
    });

    ByteWriter header;
    header.put_u8(version);
    header.put_u8(std::uint8_t((tables.precision() - CdfTable::min_precision) | (options.table_fingerprint ? flag_table_fingerprint : 0) |
                               (options.checksum ? flag_checksum : 0)));
    detail::put_varint(header, symbols.size());
    // 0: one segment of all symbols (what a caller gets whenever segment_size >= the symbol count).
    if (!symbols.empty()) detail::put_varint(header, segment_count > 1 ? segment_size : 0);
    if (options.table_fingerprint) header.put_u32(tables.checksum());
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
        stream.resize(stream.size() + 4);
        std::memcpy(stream.data() + stream.size() - 4, &crc, sizeof crc);
    }
    return stream;
}

/// Decodes segment `segment` of a stream whose index read_index() returned, into `out` (exactly
/// index.segments[segment].symbol_count values). Throws nwc::error(corrupt) on a corrupt segment.
/// The checksum is not re-verified here: read_index() did that once for the whole stream.
template <class Backend>
void decode_segment(std::span<const std::uint8_t> stream, const RansStreamIndex& index, const CdfTableSet& tables, std::size_t segment,
                    std::span<std::int32_t> out, Backend backend) {
    NWC_ASSERT(segment < index.segments.size());
    const RansSegment& info = index.segments[segment];
    NWC_ASSERT(info.byte_offset + info.byte_size <= stream.size());
    NWC_ASSERT(tables.precision() == index.precision);
    require(out.size() == info.symbol_count, errc::invalid_argument, "rans::decode_segment: segment ", segment, " holds ", info.symbol_count,
            " symbols, output has room for ", out.size());
    // Unqualified: found by argument-dependent lookup, so a user's backend tag supplies its own kernel.
    rans_decode_segment(tables.decode_tables(), detail::segment_bytes(stream, index, segment), out, backend);
}

/// Decodes a whole stream into `out` (exactly the stream's symbol count), segments in parallel on
/// `threads` threads (0 = all). Backend: backend::scalar{} (reference) or backend::simd{}; results
/// are identical for every backend and thread count. Throws nwc::error: see read_index(), plus
/// invalid_argument when out has the wrong size and corrupt for an inconsistent segment.
template <class Backend>
void decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, std::span<std::int32_t> out, Backend backend,
            int threads = 1) {
    const RansStreamIndex index = read_index(stream, tables);
    require(out.size() == index.symbol_count, errc::invalid_argument, "rans::decode: the stream holds ", index.symbol_count,
            " symbols, output has room for ", out.size());
    parallel_for(std::int64_t(index.segments.size()), threads, [&](std::int64_t s) {
        const RansSegment& info = index.segments[std::size_t(s)];
        rans_decode_segment(tables.decode_tables(), detail::segment_bytes(stream, index, std::size_t(s)),
                            out.subspan(info.first_symbol, info.symbol_count), backend);  // ADL: see decode_segment
    });
}

/// Decodes a whole stream into a new vector (see decode above). A highly skewed table codes up to
/// max_segment_size symbols in a segment of a few bytes: callers that must bound memory check
/// read_index().symbol_count first.
template <class Backend = backend::default_backend>
std::vector<std::int32_t> decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, Backend backend = {}, int threads = 1) {
    const RansStreamIndex index = read_index(stream, tables);
    std::vector<std::int32_t> out(index.symbol_count);
    decode(stream, tables, std::span<std::int32_t>(out), backend, threads);
    return out;
}

}  // namespace nwc::rans
