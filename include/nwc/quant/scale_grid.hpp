// The grid row and column normalization scales live on, and how they are stored (about 4 bits each).
//
// Read me first (format: docs/format/quant.md, "Scales"):
// - A scale only normalizes: the encoder divides by exactly the value the decoder multiplies by,
//   so its precision costs no reconstruction error. What a coarse scale moves is a row's step
//   relative to its neighbours': on the quarter-octave grid by at most 9% (RMS ~5%), a loss of
//   about 0.5% in distortion at equal rate (the second-order cost of a step off its optimum),
//   while a 64-long row pays ~4 bits of scale instead of 8 (a byte) or 16 (fp16).
// - The grid: code k = 4 e + j (e an fp16 exponent field 1..30, j 0..3) is the fp16 value
//   (1 + M_j / 1024) 2^(e - 15), M = {0, 194, 424, 698}: 2^(j / 4) rounded to fp16 (within 0.03%).
//   Snapping picks the nearest code in log2 (integer thresholds on the fp16 mantissa field: no
//   floating point, the same on every machine).
// - A set of scales keeps codes within 63 of its largest (16 octaves; lower ones are raised: such
//   a row or column is ~0 next to the rest) and is stored as u8 lowest code, u8 width w (0..6),
//   then the codes minus the lowest as w-bit fields packed LSB first, the last byte's unused bits
//   zero; or, where it is shorter, as u8 median code, u8 0x80 | k, then each code's distance from
//   the median Rice-coded with parameter k (stories260K's row scales: 0.045 -> 0.039 bits per
//   weight; gptq's group magnitudes 0.124 -> 0.095). A single (per-tensor) scale is not snapped
//   and stays full fp16.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/entropy/bit_io.hpp"

namespace nwc {

namespace detail {
inline constexpr int scale_grid_steps_per_octave = 4;
/// The fp16 mantissa field of grid step j (2^(j/4) in fp16), and the smallest fields nearer (in
/// log2) to the next step: above sqrt of the products of neighbouring grid values.
inline constexpr std::array<std::uint16_t, 4> scale_grid_mantissas{0, 194, 424, 698};
inline constexpr std::array<std::uint16_t, 4> scale_grid_thresholds{93, 305, 556, 854};
inline constexpr int scale_code_lowest = 4 * 1;       ///< exponent field 1: the smallest normal fp16
inline constexpr int scale_code_highest = 4 * 30 + 3;  ///< the largest grid value below infinity (55104)
inline constexpr int scale_code_max_width = 6;         ///< codes of one set span at most 2^6 = 64 (16 octaves)

/// The grid code nearest a positive fp16 scale (subnormals and zero to the lowest code, values
/// above the largest grid value to the largest).
constexpr int scale_code(half scale) noexcept {
    const int exponent = (scale.bits & half_magnitude_mask) >> 10;
    const int mantissa = scale.bits & 0x3FF;
    if (exponent == 0) return scale_code_lowest;
    if (exponent == 31) return scale_code_highest;
    int step = 0;
    while (step < 4 && mantissa >= scale_grid_thresholds[std::size_t(step)]) ++step;
    return std::clamp(4 * exponent + step, scale_code_lowest, scale_code_highest);  // step 4: the next octave's j = 0
}
/// The fp16 value of grid code `code` (scale_code_lowest..scale_code_highest).
constexpr half scale_of_code(int code) noexcept {
    return half{std::uint16_t(((code / 4) << 10) | scale_grid_mantissas[std::size_t(code % 4)])};
}
/// Bits that hold 0..range.
constexpr int scale_code_width(int range) noexcept { return range == 0 ? 0 : std::bit_width(unsigned(range)); }
/// The width byte's top bit marks a Rice-coded set; its low bits are then the Rice parameter k.
inline constexpr int scale_rice_flag = 0x80;
inline constexpr int scale_rice_max_k = 7;

/// The Rice-coded codes of a set (write_scales), after its two header bytes: per code, z =
/// zigzag(code - center) as (z >> k) one bits, a zero bit, then the k low bits of z; MSB first,
/// zero-padded to a byte. errc::corrupt names the field and its offset, errc::truncated comes
/// before anything is allocated.
inline std::vector<half> read_rice_scales(ByteReader& reader, std::size_t count, int center, int k, std::size_t header_at) {
    require(k <= scale_rice_max_k, errc::corrupt, reader.context(), ": scale Rice parameter ", k, " at offset ", header_at + 1, " (at most ",
            scale_rice_max_k, ")");
    const std::size_t codes_at = reader.offset();
    require(std::uint64_t(count) * std::uint64_t(k + 1) <= 8 * std::uint64_t(reader.remaining()), errc::truncated, reader.context(), ": ", count,
            " Rice-coded scales at offset ", codes_at, " need at least ", (std::uint64_t(count) * std::uint64_t(k + 1) + 7) / 8, " bytes, ",
            reader.remaining(), " remain");
    ByteReader peek = reader;
    const std::string where = std::string(reader.context()) + ": Rice-coded scales";
    BitReader bits(peek.get_bytes(peek.remaining()), where, codes_at);
    // No code lies more than the grid's extent from the center: a longer run of ones is corrupt.
    const std::uint64_t longest = (2 * std::uint64_t(scale_code_highest) >> k) + 1;
    std::vector<half> scales(count);
    for (std::size_t i = 0; i < count; ++i) {
        std::uint64_t quotient = 0;
        while (bits.get_bit() != 0)
            if (++quotient > longest) bits.fail_at("scale ", i, ": Rice quotient beyond ", longest);
        const std::uint64_t z = (quotient << k) | bits.get(k);
        const std::int64_t code = center + unzigzag(z);
        if (code < scale_code_lowest || code > scale_code_highest)
            bits.fail_at("scale ", i, " has code ", code, " (", scale_code_lowest, "..", scale_code_highest, ")");
        scales[i] = scale_of_code(int(code));
    }
    bits.expect_zero_padding();
    reader.skip(bits.bytes_used());
    return scales;
}
}  // namespace detail

/// The grid value nearest a positive fp16 scale.
constexpr half snap_scale(half scale) noexcept { return detail::scale_of_code(detail::scale_code(scale)); }

/// Snaps a matrix's row or column scales to the grid and raises those more than 63 codes below
/// the largest to that bound. A single (per-tensor) scale is left as it is.
inline void snap_scales(std::span<half> scales) noexcept {
    if (scales.size() <= 1) return;
    int highest = detail::scale_code_lowest;
    for (const half scale : scales) highest = std::max(highest, detail::scale_code(scale));
    const int lowest = std::max(detail::scale_code_lowest, highest - ((1 << detail::scale_code_max_width) - 1));
    for (half& scale : scales) scale = detail::scale_of_code(std::max(lowest, detail::scale_code(scale)));
}

/// Bytes of a fixed-width set (write_scales) of `count` scales of `width` bits (more than one scale).
constexpr std::size_t packed_scale_bytes(std::size_t count, int width) noexcept { return 2 + (count * std::size_t(width) + 7) / 8; }

/// Writes scales: one scale as its fp16 bits (u16); more (which must be on the grid, within 63
/// codes of each other: snap_scales) as u8 lowest code, u8 width, the packed codes. Throws
/// invalid_argument for scales off the grid. `max_width` 7 lets a set span the whole grid (rtn and
/// gptq group scales, which are not snapped; their reader passes 7 too).
inline void write_scales(ByteWriter& writer, std::span<const half> scales, int max_width = detail::scale_code_max_width) {
    if (scales.size() == 1) {
        writer.put_u16(scales[0].bits);
        return;
    }
    if (scales.empty()) return;
    std::vector<int> codes(scales.size());
    for (std::size_t i = 0; i < scales.size(); ++i) {
        codes[i] = detail::scale_code(scales[i]);
        require(detail::scale_of_code(codes[i]).bits == scales[i].bits, errc::invalid_argument, "write_scales: scale ", i, " (fp16 0x", std::hex,
                scales[i].bits, ") is not on the scale grid (snap_scales)");
    }
    const auto [low, high] = std::minmax_element(codes.begin(), codes.end());
    const int width = detail::scale_code_width(*high - *low);
    require(width <= max_width, errc::invalid_argument, "write_scales: scales span ", *high - *low, " grid codes (at most ",
            (1 << max_width) - 1, ": snap_scales)");
    // Rice codes around the median where they take fewer bytes: most rows' codes sit within a few
    // steps of each other, a few far off (they cost more bits here, fewer in every other row).
    std::vector<int> sorted = codes;
    std::nth_element(sorted.begin(), sorted.begin() + std::ptrdiff_t(sorted.size() / 2), sorted.end());
    const int center = sorted[sorted.size() / 2];
    int best_k = 0;
    std::uint64_t best_bits = ~std::uint64_t(0);
    for (int k = 0; k <= detail::scale_rice_max_k; ++k) {
        std::uint64_t bits = 0;
        for (const int code : codes) bits += (detail::zigzag(code - center) >> k) + 1 + std::uint64_t(k);
        if (bits < best_bits) best_bits = bits, best_k = k;
    }
    if (2 + (best_bits + 7) / 8 < packed_scale_bytes(codes.size(), width)) {
        writer.put_u8(std::uint8_t(center));
        writer.put_u8(std::uint8_t(detail::scale_rice_flag | best_k));
        detail::BitWriter bits;
        for (const int code : codes) {
            const std::uint64_t z = detail::zigzag(code - center);
            for (std::uint64_t q = z >> best_k; q > 0; --q) bits.put(1, 1);
            bits.put(0, 1);
            bits.put(z, best_k);
        }
        writer.put_bytes(bits.finish());
        return;
    }
    writer.put_u8(std::uint8_t(*low));
    writer.put_u8(std::uint8_t(width));
    std::uint32_t pending = 0;
    int pending_bits = 0;
    for (const int code : codes) {
        pending |= std::uint32_t(code - *low) << pending_bits;
        for (pending_bits += width; pending_bits >= 8; pending_bits -= 8, pending >>= 8) writer.put_u8(std::uint8_t(pending));
    }
    if (pending_bits > 0) writer.put_u8(std::uint8_t(pending));
}

/// Reads `count` scales written by write_scales (the count follows from the shape and axis, so it
/// is not stored); every scale is a finite, positive fp16 value (errc::corrupt names the index or
/// field and its byte offset otherwise, errc::truncated if the bytes run out, checked before
/// allocating). `max_width`: as write_scales was given.
inline std::vector<half> read_scales(ByteReader& reader, std::size_t count, int max_width = detail::scale_code_max_width) {
    if (count <= 1) {
        std::vector<half> scales(count);
        if (count == 1) {
            const std::size_t offset = reader.offset();
            scales[0].bits = reader.get_u16();
            const bool positive_finite = (scales[0].bits & half_sign_mask) == 0 && is_finite(scales[0]) && scales[0].bits != 0;
            require(positive_finite, errc::corrupt, reader.context(), ": scale at offset ", offset, " is 0x", std::hex, scales[0].bits, std::dec,
                    " (must be a finite positive fp16 value)");
        }
        return scales;
    }
    const std::size_t header_at = reader.offset();
    const int lowest = reader.get_u8();
    const int width = reader.get_u8();
    require(lowest >= detail::scale_code_lowest && lowest <= detail::scale_code_highest, errc::corrupt, reader.context(), ": ",
            (width & detail::scale_rice_flag) ? "center" : "lowest", " scale code ", lowest, " at offset ", header_at, " (must be ",
            detail::scale_code_lowest, "..", detail::scale_code_highest, ")");
    if (width & detail::scale_rice_flag) return detail::read_rice_scales(reader, count, lowest, width & ~detail::scale_rice_flag, header_at);
    require(width <= max_width, errc::corrupt, reader.context(), ": scale code width ", width, " at offset ", header_at + 1, " (at most ",
            max_width, ")");
    const std::size_t packed = packed_scale_bytes(count, width) - 2;
    require(reader.remaining() >= packed, errc::truncated, reader.context(), ": ", count, " scales of ", width, " bits at offset ", reader.offset(),
            " need ", packed, " bytes, ", reader.remaining(), " remain");
    const std::size_t codes_at = reader.offset();
    const std::span<const std::uint8_t> bytes = reader.get_bytes(packed);
    std::vector<half> scales(count);
    const std::uint32_t mask = (1u << width) - 1u;
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t bit = i * std::size_t(width);
        std::uint32_t window = 0;  // the (at most two) bytes field i touches
        for (std::size_t b = bit / 8; b < std::min(packed, bit / 8 + 2); ++b) window |= std::uint32_t(bytes[b]) << (8 * (b - bit / 8));
        const int code = lowest + int((window >> (bit % 8)) & mask);
        require(code <= detail::scale_code_highest, errc::corrupt, reader.context(), ": scale ", i, " at offset ", codes_at + bit / 8, " has code ",
                code, ", beyond the largest finite grid value (", detail::scale_code_highest, ")");
        scales[i] = detail::scale_of_code(code);
    }
    const std::size_t used_bits = count * std::size_t(width);
    if (used_bits % 8 != 0)
        require((bytes.back() >> (used_bits % 8)) == 0, errc::corrupt, reader.context(), ": unused bits of the last scale byte (offset ",
                codes_at + packed - 1, ") are not zero");
    return scales;
}

}  // namespace nwc
