// The lossless float codec's per-tensor metadata: options, the parsed layout, and the fitting of
// each byte plane's integer table to the tensor's histogram.
//
// Read me first (byte layout: docs/format/lossless_float.md):
// - A tensor of bf16 / f16 / f32 elements is cut into byte planes (lossless_float_kernels.hpp).
//   Plane 0 (the exponent) is always rANS-coded; every other plane is raw, coded, or constant (one
//   value, nothing stored). The metadata holds the dtype, the element count, the segment size,
//   each plane's mode, and one CdfTableSet (one channel, values 0..255) per coded plane.
// - Tables are fitted by the encoder only and stored: the decoder never derives a table itself.
//   The fit tries a few precisions and supports and keeps the one whose exact code length
//   (the coder's -log2 of the integer frequencies, escape codes, and the table's own bytes) is
//   least; values outside the support are escaped.
// - Because plane 0 is always coded, every segment holds a rANS stream of at least 172 bytes, so a
//   real encoding never has more than 2^20 / 172 < 8192 elements per payload byte; parse() refuses
//   more before anyone allocates the output.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/lossless_float_kernels.hpp"

namespace nwc {

/// Options of lossless_float::encode.
struct LosslessFloatOptions {
    /// Elements per independently decodable segment (1 .. 2^20). Each segment costs ~180 bytes per
    /// coded plane (rANS states and header): 0.14% of a bf16 segment of 65536 elements.
    std::uint32_t elements_per_segment = 65536;
    /// Highest table precision tried (12..16). Precision 12 keeps the SIMD decoder's one-gather
    /// table layout; higher precisions are chosen only where their code is shorter.
    int max_precision = 12;
    /// A plane other than the exponent is entropy-coded only when that saves at least this fraction
    /// of its raw bytes: each coded plane costs a rANS decoding pass.
    double min_coding_gain = 0.05;
    /// Threads (0 = all); the bytes do not depend on it.
    int threads = 1;

    /// errc::invalid_argument for values out of range.
    void validate() const;
};

/// How a byte plane is stored.
enum class FloatPlaneMode : std::uint8_t {
    raw = 0,       ///< one byte per element
    coded = 1,     ///< a rANS stream under the plane's table
    constant = 2,  ///< every element has the same byte; nothing stored
};

namespace lossless_float {
inline constexpr std::uint32_t magic = 0x464C574E;  // "NWLF" little-endian
inline constexpr std::uint16_t version = 1;
inline constexpr std::uint32_t max_elements_per_segment = 1u << 20;
/// parse() refuses (errc::limit) more elements than this per payload byte (see the read-me).
inline constexpr std::uint64_t max_elements_per_payload_byte = 8192;
inline constexpr std::size_t fixed_metadata_bytes = 24;

/// Whether the codec takes this dtype (bf16, f16, f32).
constexpr bool supports(dtype type) noexcept { return type == dtype::bf16 || type == dtype::f16 || type == dtype::f32; }
}  // namespace lossless_float

inline void LosslessFloatOptions::validate() const {
    require(elements_per_segment >= 1 && elements_per_segment <= lossless_float::max_elements_per_segment, errc::invalid_argument,
            "lossless float: ", elements_per_segment, " elements per segment outside [1, ", lossless_float::max_elements_per_segment, "]");
    require(max_precision >= CdfTable::min_precision && max_precision <= CdfTable::max_precision, errc::invalid_argument,
            "lossless float: max precision ", max_precision, " outside [", CdfTable::min_precision, ", ", CdfTable::max_precision, "]");
    require(min_coding_gain >= 0.0 && min_coding_gain <= 1.0, errc::invalid_argument, "lossless float: minimum coding gain ", min_coding_gain,
            " outside [0, 1]");
    require(threads >= 0, errc::invalid_argument, "lossless float: thread count ", threads, " is negative");
}

/// A tensor's decoding parameters, from its metadata.
struct LosslessFloatLayout {
    dtype type = dtype::bf16;
    std::uint64_t element_count = 0;
    std::uint32_t elements_per_segment = 65536;
    std::uint32_t segment_count = 0;
    std::array<FloatPlaneMode, detail::lossless_max_planes> modes{};
    std::array<std::uint8_t, detail::lossless_max_planes> constants{};  ///< the byte of a constant plane
    std::array<CdfTableSet, detail::lossless_max_planes> tables;         ///< the table of a coded plane

    std::size_t element_size() const noexcept { return dtype_size(type); }
    /// Planes per element: one per byte.
    std::size_t plane_count() const noexcept { return element_size(); }
    std::uint64_t first_element(std::size_t segment) const noexcept { return std::uint64_t(segment) * elements_per_segment; }
    std::uint32_t segment_elements(std::size_t segment) const noexcept {
        return std::uint32_t(std::min<std::uint64_t>(elements_per_segment, element_count - first_element(segment)));
    }
    /// Bytes segment `segment` decodes to.
    std::size_t segment_output_bytes(std::size_t segment) const noexcept { return std::size_t(segment_elements(segment)) * element_size(); }
    std::size_t coded_plane_count() const noexcept {
        std::size_t coded = 0;
        for (std::size_t p = 0; p < plane_count(); ++p) coded += modes[p] == FloatPlaneMode::coded;
        return coded;
    }

    /// Layout: see docs/format/lossless_float.md; ends with a CRC-32C of everything before it.
    void write(ByteWriter& out) const {
        ByteWriter body;
        body.put_u32(lossless_float::magic);
        body.put_u16(lossless_float::version);
        body.put_u8(std::uint8_t(type));
        body.put_u8(0);
        body.put_u64(element_count);
        body.put_u32(elements_per_segment);
        body.put_u32(segment_count);
        for (std::size_t p = 0; p < plane_count(); ++p) {
            body.put_u8(std::uint8_t(modes[p]));
            body.put_u8(constants[p]);
        }
        for (std::size_t p = 0; p < plane_count(); ++p)
            if (modes[p] == FloatPlaneMode::coded) tables[p].write(body);
        out.put_bytes(body.bytes());
        out.put_u32(crc32c(body.bytes()));
    }

    /// Parses and validates metadata; `payload_bytes` is the size of all segments together, which
    /// bounds the element count (errc::limit) before the caller allocates the output. Throws
    /// nwc::error: truncated, corrupt, unsupported (version, dtype), limit.
    static LosslessFloatLayout parse(std::span<const std::uint8_t> metadata, std::uint64_t payload_bytes, std::string_view context) {
        const std::string where = std::string(context) + " metadata";
        require(metadata.size() >= 4, errc::truncated, where, ": ", metadata.size(), " bytes, too short for its CRC-32C");
        ByteReader crc_reader(metadata.last(4), where);
        const std::uint32_t stored_crc = crc_reader.get_u32(), actual_crc = crc32c(metadata.first(metadata.size() - 4));
        require(!enforce_checksums || stored_crc == actual_crc, errc::corrupt, where, ": CRC-32C 0x", std::hex, actual_crc,
                " does not match the stored 0x", stored_crc);
        ByteReader in(metadata.first(metadata.size() - 4), where);
        const std::uint32_t found_magic = in.get_u32();
        require(found_magic == lossless_float::magic, errc::corrupt, where, ": magic 0x", std::hex, found_magic, " at offset 0, expected 0x",
                lossless_float::magic);
        const std::uint16_t found_version = in.get_u16();
        require(found_version == lossless_float::version, errc::unsupported, where, ": version ", found_version, " (this build reads ",
                lossless_float::version, ")");
        LosslessFloatLayout layout;
        const std::uint8_t type_code = in.get_u8();
        require(type_code <= std::uint8_t(dtype::u8) && lossless_float::supports(dtype(type_code)), errc::unsupported, where, ": dtype code ",
                int(type_code), " at offset 6 (bf16, f16 or f32 expected)");
        layout.type = dtype(type_code);
        require(in.get_u8() == 0, errc::corrupt, where, ": reserved byte 7 is not zero");
        layout.element_count = in.get_u64();
        layout.elements_per_segment = in.get_u32();
        layout.segment_count = in.get_u32();
        require(layout.elements_per_segment >= 1 && layout.elements_per_segment <= lossless_float::max_elements_per_segment, errc::corrupt,
                where, ": ", layout.elements_per_segment, " elements per segment at offset 16, outside [1, ", lossless_float::max_elements_per_segment, "]");
        const std::uint64_t expected_segments =
            layout.element_count / layout.elements_per_segment + (layout.element_count % layout.elements_per_segment != 0);
        require(expected_segments == layout.segment_count, errc::corrupt, where, ": ", layout.segment_count, " segments announced, ",
                layout.element_count, " elements in segments of ", layout.elements_per_segment, " need ", expected_segments);
        // Divided, not multiplied, so that a hostile count cannot overflow.
        require(layout.element_count / lossless_float::max_elements_per_payload_byte <= payload_bytes, errc::limit, where, ": ",
                layout.element_count, " elements in ", payload_bytes, " payload bytes (more than ", lossless_float::max_elements_per_payload_byte,
                " per byte)");
        for (std::size_t p = 0; p < layout.plane_count(); ++p) {
            const std::size_t at = in.offset();
            const std::uint8_t mode = in.get_u8();
            layout.constants[p] = in.get_u8();
            require(mode <= std::uint8_t(FloatPlaneMode::constant), errc::corrupt, where, ": plane ", p, " has mode ", int(mode), " at offset ", at);
            layout.modes[p] = FloatPlaneMode(mode);
            require(p != 0 || layout.modes[p] == FloatPlaneMode::coded, errc::corrupt, where, ": plane 0 is not coded");
            require(layout.modes[p] == FloatPlaneMode::constant || layout.constants[p] == 0, errc::corrupt, where, ": plane ", p,
                    " is not constant but has the value ", int(layout.constants[p]), " at offset ", at + 1);
        }
        for (std::size_t p = 0; p < layout.plane_count(); ++p) {
            if (layout.modes[p] != FloatPlaneMode::coded) continue;
            const std::size_t at = in.offset();
            layout.tables[p] = CdfTableSet::read(in);
            const CdfTableSet& set = layout.tables[p];
            require(set.channel_count() == 1, errc::corrupt, where, ": table of plane ", p, " at offset ", at, " has ", set.channel_count(),
                    " channels, expected 1");
            require(set[0].offset() >= 0 && std::int64_t(set[0].offset()) + set[0].support() <= 256, errc::corrupt, where, ": table of plane ", p,
                    " at offset ", at, " covers values ", set[0].offset(), "..", std::int64_t(set[0].offset()) + set[0].support() - 1,
                    ", not bytes");
        }
        in.expect_end();
        return layout;
    }
};

namespace detail {

/// A table fitted to one plane's histogram and its exact cost in bits (code + table bytes).
struct PlaneTableFit {
    CdfTable table;
    double bits = std::numeric_limits<double>::infinity();
};

/// Fits the table that codes a plane with this histogram (counts[v] = elements with byte v) in the
/// fewest bits. Candidates: every precision from 12 to max_precision, and supports that keep the
/// values whose probability is at least t / 2^precision for a few t (0 keeps every value seen),
/// from the smallest kept value to the largest; the rest is escaped. Ties go to the lower
/// precision (faster decoding). Deterministic: integer tables, costs compared in double.
inline PlaneTableFit fit_plane_table(std::span<const std::uint64_t, 256> counts, int max_precision) {
    std::uint64_t total = 0;
    int most_frequent = 0;
    for (int v = 0; v < 256; ++v) {
        total += counts[v];
        if (counts[v] > counts[most_frequent]) most_frequent = v;
    }
    PlaneTableFit best;
    if (total == 0) {  // an empty tensor still stores a valid table
        best.table = CdfTable::uniform(0, 1, CdfTable::min_precision);
        best.bits = 0.0;
        return best;
    }
    for (int precision = CdfTable::min_precision; precision <= max_precision; ++precision) {
        for (double threshold : {0.0, 1.0 / 16, 0.25, 1.0, 4.0, 16.0}) {
            int first = most_frequent, last = most_frequent;
            for (int v = 0; v < 256; ++v)
                if (counts[v] > 0 && double(counts[v]) * std::ldexp(1.0, precision) >= threshold * double(total)) {
                    first = std::min(first, v);
                    last = std::max(last, v);
                }
            std::vector<double> probabilities(std::size_t(last - first + 1));
            std::uint64_t inside = 0;
            for (int v = first; v <= last; ++v) probabilities[std::size_t(v - first)] = double(counts[v]), inside += counts[v];
            CdfTable table = CdfTable::from_probabilities(first, probabilities, double(total - inside), precision);
            const auto frequencies = table.frequencies();
            double bits = 16.0 * 8 + 16.0 * table.bin_count();  // CdfTableSet framing + u16 per bin
            for (int v = 0; v < 256; ++v) {
                if (counts[v] == 0) continue;
                const std::uint32_t bin = table.bin_of(v);
                double symbol_bits = double(precision) - std::log2(double(frequencies[bin]));
                if (bin == table.escape_bin()) symbol_bits += escape_code_bits(escape_code(v, table.offset(), table.support()));
                bits += double(counts[v]) * symbol_bits;
            }
            if (bits < best.bits) best = {std::move(table), bits};
        }
    }
    return best;
}

}  // namespace detail
}  // namespace nwc
