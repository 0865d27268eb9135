// nwc::lossless_float: bit-exact compression of bf16 / f16 / f32 tensors ("the same model, smaller").
//
// Usage:
//     LosslessFloatEncoding coded = lossless_float::encode(tensor_bytes, dtype::bf16);
//     // store coded.metadata and coded.segments; later, per segment, on any thread:
//     const auto layout = LosslessFloatLayout::parse(metadata, payload_bytes, "tensor 'x'");
//     lossless_float::decode_segment(layout, s, segment_bytes, out.subspan(...), backend::simd{});
//
// Read me first (format: docs/format/lossless_float.md; planes: lossless_float_kernels.hpp):
// - Bit-exact by construction: every bit of an element lies in exactly one byte plane, and each
//   plane is stored raw, as one repeated byte, or rANS-coded (lossless). Nothing is ever converted
//   to or from a float, so NaN payloads, infinities, subnormals and -0 are just bit patterns.
// - A segment codes elements [s S, min((s + 1) S, N)) and decodes alone into its part of the
//   output: u32 CRC-32C of the rest, u32 byte size of each coded plane's rANS stream, then the
//   planes in order (a rANS stream of one segment, raw bytes, or nothing).
// - Decoding a segment: each coded plane through the rANS decoder (scalar or SIMD) into a per-thread
//   int32 buffer, then one merge of all planes into the caller's memory (scalar or SIMD). Planes
//   1.. that were coded are narrowed to bytes first; raw planes are read where they lie.
// - Both backends give the same bytes for any thread count; the scalar one is the reference.
// - The segment CRC makes a corrupt raw byte an error rather than a wrong weight. A caller whose
//   container already checked the bytes (the pipeline's payload CRC) may skip it: the structural
//   checks alone still guarantee an error, never a crash, on any input.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/entropy/lossless_float_format.hpp"
#include "nwc/entropy/lossless_float_kernels.hpp"
#include "nwc/entropy/range_coder.hpp"

namespace nwc {

/// What lossless_float::encode produces: the tensor's metadata and its segments.
struct LosslessFloatEncoding {
    LosslessFloatLayout layout;
    std::vector<std::uint8_t> metadata;
    std::vector<std::vector<std::uint8_t>> segments;
    /// Bytes of each plane over all segments (rANS streams or raw bytes), for reports.
    std::array<std::uint64_t, detail::lossless_max_planes> plane_bytes{};

    std::uint64_t payload_bytes() const noexcept {
        std::uint64_t bytes = 0;
        for (const auto& segment : segments) bytes += segment.size();
        return bytes;
    }
    /// Everything that must be stored: metadata + segments.
    std::uint64_t stored_bytes() const noexcept { return metadata.size() + payload_bytes(); }
};

namespace detail {
/// Bytes before a segment's planes: its CRC-32C and one stream size per coded plane.
inline constexpr std::size_t lossless_segment_header_bytes(std::size_t coded_planes) noexcept { return 4 + 4 * coded_planes; }
}  // namespace detail

namespace lossless_float {

/// Receives each range of an encoder's input once it has been read for a pass: a caller whose input
/// is a mapped file hands its pages back (release_pages), so coding a large tensor never makes it
/// resident whole. Called from the encoder's threads; the input must stay readable (it is read in
/// two passes: the histograms, then the coding).
using InputRangeDone = std::function<void(std::span<const std::uint8_t>)>;

/// Codes the little-endian elements in `bytes` (bf16, f16 or f32). Throws nwc::error:
/// unsupported (another dtype), invalid_argument (bad options, a byte count that is not a multiple
/// of the element size), limit (more than 2^32 - 1 segments). The bytes do not depend on options.threads.
/// Memory: the coded segments and one segment's planes per thread, never a copy of the input.
inline LosslessFloatEncoding encode(std::span<const std::uint8_t> bytes, dtype type, const LosslessFloatOptions& options = {},
                                    const InputRangeDone& range_done = {}) {
    options.validate();
    require(supports(type), errc::unsupported, "lossless float: dtype ", dtype_name(type), " (bf16, f16 or f32 expected)");
    const std::size_t element_size = dtype_size(type), plane_count = element_size;
    require(bytes.size() % element_size == 0, errc::invalid_argument, "lossless float: ", bytes.size(), " bytes are not whole ",
            dtype_name(type), " elements");
    const std::uint64_t count = bytes.size() / element_size;
    const std::uint32_t per_segment = options.elements_per_segment;
    const std::uint64_t segment_count = count / per_segment + (count % per_segment != 0);
    require(segment_count <= 0xFFFFFFFFu, errc::limit, "lossless float: ", count, " elements need ", segment_count, " segments, more than 2^32 - 1");
    const auto input = [&](std::uint64_t first, std::uint64_t end) { return bytes.subspan(first * element_size, (end - first) * element_size); };
    // Elements [first, end) split into this thread's planes (plane p at planes + p * (end - first)).
    const auto split = [&](std::uint64_t first, std::uint64_t end) {
        thread_local std::vector<std::uint8_t> planes;
        const std::size_t elements = std::size_t(end - first);
        planes.resize(elements * plane_count);
        std::uint8_t* targets[detail::lossless_max_planes] = {};
        for (std::size_t p = 0; p < plane_count; ++p) targets[p] = planes.data() + p * elements;
        detail::split_float_planes(type, bytes.data() + first * element_size, elements, targets);
        return planes.data();
    };

    // Histograms of the planes, in parallel over ranges of segments, one segment's planes at a
    // time; the counts are integer sums, so they do not depend on the split.
    const std::int64_t ranges = std::int64_t(std::min<std::uint64_t>(segment_count, 64));
    std::vector<std::array<std::uint64_t, 256 * detail::lossless_max_planes>> histograms{std::size_t(ranges)};
    parallel_for(ranges, options.threads, [&](std::int64_t r) {
        const std::uint64_t range_first = segment_count * std::uint64_t(r) / std::uint64_t(ranges) * per_segment;
        const std::uint64_t range_end = std::min(count, segment_count * std::uint64_t(r + 1) / std::uint64_t(ranges) * per_segment);
        auto& histogram = histograms[std::size_t(r)];
        histogram.fill(0);
        for (std::uint64_t first = range_first; first < range_end; first += per_segment) {
            const std::uint64_t end = std::min(range_end, first + per_segment);
            const std::size_t elements = std::size_t(end - first);
            const std::uint8_t* planes = split(first, end);
            for (std::size_t p = 0; p < plane_count; ++p) {
                // Four interleaved counters: runs of one exponent would otherwise wait on each increment.
                std::array<std::array<std::uint64_t, 256>, 4> lanes{};
                const std::uint8_t* values = planes + p * elements;
                std::size_t i = 0;
                for (; i + 4 <= elements; i += 4) ++lanes[0][values[i]], ++lanes[1][values[i + 1]], ++lanes[2][values[i + 2]], ++lanes[3][values[i + 3]];
                for (; i < elements; ++i) ++lanes[0][values[i]];
                for (std::size_t v = 0; v < 256; ++v) histogram[256 * p + v] += lanes[0][v] + lanes[1][v] + lanes[2][v] + lanes[3][v];
            }
        }
        if (range_done) range_done(input(range_first, range_end));
    });

    LosslessFloatEncoding result;
    LosslessFloatLayout& layout = result.layout;
    layout.type = type;
    layout.element_count = count;
    layout.elements_per_segment = per_segment;
    layout.segment_count = std::uint32_t(segment_count);
    for (std::size_t p = 0; p < plane_count; ++p) {
        std::array<std::uint64_t, 256> counts{};
        for (const auto& histogram : histograms)
            for (std::size_t v = 0; v < 256; ++v) counts[v] += histogram[256 * p + v];
        const auto distinct = std::count_if(counts.begin(), counts.end(), [](std::uint64_t c) { return c > 0; });
        if (p > 0 && distinct == 1) {
            layout.modes[p] = FloatPlaneMode::constant;
            layout.constants[p] = std::uint8_t(std::find_if(counts.begin(), counts.end(), [](std::uint64_t c) { return c > 0; }) - counts.begin());
            continue;
        }
        detail::PlaneTableFit fit = detail::fit_plane_table(counts, options.max_precision);
        const double raw_bits = 8.0 * double(count);
        if (p == 0 || fit.bits <= (1.0 - options.min_coding_gain) * raw_bits) {
            layout.modes[p] = FloatPlaneMode::coded;
            layout.tables[p] = CdfTableSet({std::move(fit.table)});
        } else {
            layout.modes[p] = FloatPlaneMode::raw;
        }
    }
    ByteWriter metadata;
    layout.write(metadata);
    result.metadata = metadata.take();

    result.segments.resize(std::size_t(segment_count));
    std::vector<std::array<std::uint64_t, detail::lossless_max_planes>> segment_plane_bytes{std::size_t(segment_count)};
    parallel_for(std::int64_t(segment_count), options.threads, [&](std::int64_t s) {
        const std::uint64_t first = layout.first_element(std::size_t(s));
        const std::uint32_t elements = layout.segment_elements(std::size_t(s));
        const std::uint8_t* planes = split(first, first + elements);
        const auto plane = [&](std::size_t p) { return planes + p * elements; };
        thread_local std::vector<std::int32_t> symbols;
        std::array<std::vector<std::uint8_t>, detail::lossless_max_planes> streams;
        for (std::size_t p = 0; p < plane_count; ++p) {
            if (layout.modes[p] != FloatPlaneMode::coded) continue;
            symbols.assign(plane(p), plane(p) + elements);
            RangeCoderOptions coder;
            coder.segment_size = elements;
            streams[p] = rans::encode(symbols, layout.tables[p], coder);
        }
        ByteWriter out;
        out.put_u32(0);  // CRC-32C, patched below
        for (std::size_t p = 0; p < plane_count; ++p)
            if (layout.modes[p] == FloatPlaneMode::coded) out.put_u32(std::uint32_t(streams[p].size()));
        auto& sizes = segment_plane_bytes[std::size_t(s)];
        for (std::size_t p = 0; p < plane_count; ++p) {
            if (layout.modes[p] == FloatPlaneMode::coded) out.put_bytes(streams[p]);
            if (layout.modes[p] == FloatPlaneMode::raw) out.put_bytes({plane(p), elements});
            sizes[p] = layout.modes[p] == FloatPlaneMode::coded ? streams[p].size() : layout.modes[p] == FloatPlaneMode::raw ? elements : 0;
        }
        std::vector<std::uint8_t> segment = out.take();
        const std::uint32_t crc = crc32c(std::span<const std::uint8_t>(segment).subspan(4));
        std::memcpy(segment.data(), &crc, 4);
        result.segments[std::size_t(s)] = std::move(segment);
        if (range_done) range_done(input(first, first + elements));
    });
    for (const auto& sizes : segment_plane_bytes)
        for (std::size_t p = 0; p < plane_count; ++p) result.plane_bytes[p] += sizes[p];
    return result;
}

/// Where each plane of segment `segment` (its bytes: `bytes`) lies: plane p's rANS stream (coded),
/// its raw bytes (raw) or nothing (constant). Checks the segment's header, sizes and, with
/// verify_checksum, its CRC-32C; throws nwc::error (truncated, corrupt) naming `context`.
inline std::array<std::span<const std::uint8_t>, detail::lossless_max_planes> segment_planes(const LosslessFloatLayout& layout, std::size_t segment,
                                                                                               std::span<const std::uint8_t> bytes,
                                                                                               std::string_view context, bool verify_checksum) {
    require(segment < layout.segment_count, errc::invalid_argument, context, ": segment ", segment, " of ", layout.segment_count);
    const std::uint32_t elements = layout.segment_elements(segment);
    const std::size_t plane_count = layout.plane_count(), coded_planes = layout.coded_plane_count();
    const std::size_t header_bytes = detail::lossless_segment_header_bytes(coded_planes);
    require(bytes.size() >= header_bytes, errc::truncated, context, ": segment ", segment, " has ", bytes.size(), " bytes, its header needs ",
            header_bytes);
    std::uint32_t stored_crc;
    std::memcpy(&stored_crc, bytes.data(), 4);
    if (verify_checksum && enforce_checksums) {
        const std::uint32_t actual = crc32c(bytes.subspan(4));
        require(actual == stored_crc, errc::corrupt, context, ": segment ", segment, ": CRC-32C 0x", std::hex, actual,
                " does not match the stored 0x", stored_crc);
    }
    // All sizes are checked against the segment before any is used.
    std::array<std::span<const std::uint8_t>, detail::lossless_max_planes> parts;
    std::uint64_t at = header_bytes;
    for (std::size_t p = 0, field = 4; p < plane_count; ++p) {
        std::uint64_t size = 0;
        if (layout.modes[p] == FloatPlaneMode::coded) {
            std::uint32_t stream_size;
            std::memcpy(&stream_size, bytes.data() + field, 4);
            size = stream_size, field += 4;
        } else if (layout.modes[p] == FloatPlaneMode::raw) {
            size = elements;
        }
        require(at + size <= bytes.size(), errc::truncated, context, ": segment ", segment, ": plane ", p, " needs bytes [", at, ", ", at + size,
                ") of ", bytes.size());
        parts[p] = bytes.subspan(std::size_t(at), std::size_t(size));
        at += size;
    }
    require(at == bytes.size(), errc::corrupt, context, ": segment ", segment, ": ", bytes.size() - at, " trailing bytes after byte ", at);
    return parts;
}

/// Decodes segment `segment` (its bytes: `bytes`) into `out`, exactly layout.segment_output_bytes(segment)
/// bytes of caller memory. Throws nwc::error: invalid_argument (wrong output size), truncated or
/// corrupt (sizes, CRC-32C, rANS streams, decoded values), each naming `context`, the segment and
/// the plane. verify_checksum = false skips the CRC-32C (see the read-me).
template <class Backend>
void decode_segment(const LosslessFloatLayout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, std::span<std::uint8_t> out,
                    Backend backend, std::string_view context = "lossless float", bool verify_checksum = true) {
    require(segment < layout.segment_count, errc::invalid_argument, context, ": segment ", segment, " of ", layout.segment_count);
    const std::uint32_t elements = layout.segment_elements(segment);
    require(out.size() == layout.segment_output_bytes(segment), errc::invalid_argument, context, ": segment ", segment, " decodes to ",
            layout.segment_output_bytes(segment), " bytes, output has room for ", out.size());
    const std::size_t plane_count = layout.plane_count();
    const auto parts = segment_planes(layout, segment, bytes, context, verify_checksum);

    thread_local std::vector<std::int32_t> exponents, symbols;
    thread_local std::vector<std::uint8_t> byte_planes;
    exponents.resize(elements);
    byte_planes.resize(std::size_t(elements) * (plane_count - 1));
    detail::FloatPlaneSources sources;
    sources.plane0 = exponents.data();
    for (std::size_t p = 0; p < plane_count; ++p) {
        std::uint8_t* scratch = p > 0 ? byte_planes.data() + (p - 1) * elements : nullptr;
        if (layout.modes[p] == FloatPlaneMode::raw) {
            sources.bytes[p] = parts[p].data();
        } else if (layout.modes[p] == FloatPlaneMode::constant) {
            std::memset(scratch, layout.constants[p], elements);
            sources.bytes[p] = scratch;
        } else {
            std::vector<std::int32_t>& target = p == 0 ? exponents : symbols;
            target.resize(elements);
            try {
                const RansStreamIndex index = rans::read_index(parts[p], layout.tables[p], false);
                require(index.symbol_count == elements, errc::corrupt, "the stream holds ", index.symbol_count, " symbols, the segment ", elements,
                        " elements");
                for (std::size_t s = 0; s < index.segments.size(); ++s) {
                    const RansSegment& info = index.segments[s];
                    rans::decode_segment(parts[p], index, layout.tables[p], s,
                                         std::span<std::int32_t>(target).subspan(info.first_symbol, info.symbol_count), backend);
                }
            } catch (const error& bad) {
                // A stream coded with other tables is rans' invalid_argument; inside a segment it is corruption.
                fail(bad.id() == errc::invalid_argument ? errc::corrupt : bad.id(), context, ": segment ", segment, ": plane ", p, " (bytes ", parts[p].data() - bytes.data(), "..",
                     parts[p].data() - bytes.data() + std::ptrdiff_t(parts[p].size()), "): ", bad.message());
            }
            if (p > 0) {
                require(detail::narrow_plane(symbols.data(), elements, scratch, backend), errc::corrupt, context, ": segment ", segment,
                        ": plane ", p, " decodes a value outside 0..255 (a corrupt escape code)");
                sources.bytes[p] = scratch;
            }
        }
    }
    require(detail::merge_float_planes(layout.type, sources, elements, out.data(), backend), errc::corrupt, context, ": segment ", segment,
            ": plane 0 decodes a value outside 0..255 (a corrupt escape code)");
}

/// Decodes a whole tensor: `segments[s]` are the bytes of segment s, `out` exactly
/// element_count * element size bytes; segments in parallel on `threads` threads (0 = all).
template <class Backend = backend::default_backend>
void decode(const LosslessFloatLayout& layout, std::span<const std::span<const std::uint8_t>> segments, std::span<std::uint8_t> out,
            Backend backend = {}, int threads = 1, std::string_view context = "lossless float") {
    require(segments.size() == layout.segment_count, errc::invalid_argument, context, ": ", segments.size(), " segments given, the metadata announces ",
            layout.segment_count);
    require(out.size() == layout.element_count * layout.element_size(), errc::invalid_argument, context, ": the tensor decodes to ",
            layout.element_count * layout.element_size(), " bytes, output has room for ", out.size());
    parallel_for(std::int64_t(segments.size()), threads, [&](std::int64_t s) {
        const auto segment = std::size_t(s);
        decode_segment(layout, segment, segments[segment], out.subspan(std::size_t(layout.first_element(segment) * layout.element_size()),
                                                                       layout.segment_output_bytes(segment)), backend, context);
    });
}

/// Decodes what encode() produced (after re-parsing its metadata, as a reader would) into a new vector.
template <class Backend = backend::default_backend>
std::vector<std::uint8_t> decode(const LosslessFloatEncoding& encoding, Backend backend = {}, int threads = 1) {
    const LosslessFloatLayout layout = LosslessFloatLayout::parse(encoding.metadata, encoding.payload_bytes(), "lossless float");
    std::vector<std::span<const std::uint8_t>> segments(encoding.segments.begin(), encoding.segments.end());
    std::vector<std::uint8_t> out(std::size_t(layout.element_count * layout.element_size()));
    decode(layout, segments, out, backend, threads);
    return out;
}

}  // namespace lossless_float
}  // namespace nwc
