// nwc::CompactCdfTable: a CdfTable in a few bytes. Three kinds, all decoded to an exact integer
// table by integer arithmetic only (no exp/log on the decoding side: libm differs across machines).
//
// Read me first:
// - frequencies: the table's own frequencies (any table, round trip exact), as Exp-Golomb codes
//   of the differences between neighbouring bins; the last one is implied by the total 2^P.
// - code_lengths: per bin a code length q in units of 2^-r bits (r = 0..8), coded as Exp-Golomb
//   differences (first or second order); weight(q) = 2^62 / 2^(q / 2^r), from an integer table of
//   2^(-j/256) built by integer square roots; frequencies = CdfTable::from_weights (integer).
// - parametric: q(t) = (A t^2 + B t) >> 20 in 1/16 bits, t = |4 bin - C| (C: the center in
//   quarter bins): a discretized Gaussian (B = 0), Laplace (A = 0) or a blend, in ~4-6 bytes.
//   A and B are stored as 10-bit "floats" (32 + m) 2^e.
// - The escape bin's code length is stored (code_lengths, parametric) or absent (weight 0, so
//   frequency 1: nothing is expected outside the support).
// - Bits are MSB first from the first byte (bit_io.hpp), zero-padded to a whole byte: the table
//   delimits itself. Layout: docs/format/rans.md, section 1.2. cdf_table_fit.hpp picks the kind
//   and parameters that minimize table bytes + payload for given symbol counts.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/bit_io.hpp"
#include "nwc/entropy/cdf_table.hpp"
#include "nwc/entropy/cdf_table_set.hpp"

namespace nwc {

namespace detail {

__extension__ typedef unsigned __int128 compact_u128;

/// floor(sqrt(value)) of a 128-bit integer: Newton's method from above, integer only.
constexpr std::uint64_t isqrt128(compact_u128 value) noexcept {
    if (value == 0) return 0;
    const std::uint64_t high = std::uint64_t(value >> 64);
    const int width = high ? 128 - std::countl_zero(high) : 64 - std::countl_zero(std::uint64_t(value));
    compact_u128 x = compact_u128(1) << ((width + 1) / 2);  // >= sqrt(value)
    for (;;) {
        const compact_u128 next = (x + value / x) / 2;
        if (next >= x) return std::uint64_t(x);
        x = next;
    }
}

/// exp2_fraction[j] ~ 2^62 * 2^(-j/256), j = 0..255: 2^(-1/256) in Q64 by eight integer square
/// roots of 2^-1, then repeated Q64 products. Only integer operations: identical everywhere.
constexpr std::array<std::uint64_t, 256> make_exp2_fractions() noexcept {
    compact_u128 root = compact_u128(1) << 63;  // 2^-1 in Q64
    for (int k = 0; k < 8; ++k) root = isqrt128(root << 64);
    std::array<std::uint64_t, 256> table{};
    compact_u128 value = compact_u128(1) << 62;
    for (std::size_t j = 0; j < 256; ++j) {
        table[j] = std::uint64_t(value);
        value = (value * root + (compact_u128(1) << 63)) >> 64;
    }
    return table;
}
inline constexpr std::array<std::uint64_t, 256> exp2_fractions = make_exp2_fractions();

/// The weight of code length q in units of 2^-r bits (r <= 8): 2^62 2^(-q / 2^r), 0 beyond 2^-62.
constexpr std::uint64_t code_length_weight(std::uint64_t q, int r) noexcept {
    const std::uint64_t whole = q >> r;
    return whole >= 63 ? 0 : exp2_fractions[std::size_t((q & ((1u << r) - 1)) << (8 - r))] >> whole;
}

/// The 10-bit float code of the parametric kind: 0 -> 0, else (32 + m) << e with c - 1 = 32 e + m.
constexpr std::uint64_t float_code_value(std::uint32_t code) noexcept {
    return code == 0 ? 0 : (std::uint64_t(32 + (code - 1) % 32)) << ((code - 1) / 32);
}
inline constexpr std::uint32_t max_float_code = 1023;
inline constexpr int parametric_resolution = 4;  // q in 1/16 bits
inline constexpr int parametric_shift = 20;
inline constexpr std::uint64_t max_code_length = std::uint64_t(1) << 20;

}  // namespace detail

/// A CdfTable as stored compactly; table() derives the exact integer table.
struct CompactCdfTable {
    enum class Kind : std::uint8_t { frequencies = 0, code_lengths = 1, parametric = 2 };

    Kind kind = Kind::frequencies;
    int precision = CdfTable::min_precision;
    std::int32_t offset = 0;
    std::uint32_t support = 1;                ///< regular bins (the escape bin is extra)
    std::vector<std::uint32_t> frequencies;   ///< frequencies: support + 1 of them, escape last
    int resolution = 0;                       ///< code_lengths: q in units of 2^-resolution bits
    std::vector<std::uint32_t> lengths;       ///< code_lengths: support of them
    bool has_escape_length = false;           ///< code_lengths, parametric: else the escape weight is 0
    std::uint32_t escape_length = 0;          ///< in 2^-resolution bits (1/16 bits for parametric)
    std::uint32_t center = 0;                 ///< parametric: C, in quarter bins from bin 0
    std::uint32_t quadratic = 0, linear = 0;  ///< parametric: float codes of A and B

    /// Any table, kept exactly.
    static CompactCdfTable exact(const CdfTable& table) {
        CompactCdfTable compact;
        compact.precision = table.precision();
        compact.offset = table.offset();
        compact.support = table.support();
        compact.frequencies.assign(table.frequencies().begin(), table.frequencies().end());
        return compact;
    }

    /// The integer weights of the bins (escape last) of the code_lengths and parametric kinds.
    std::vector<std::uint64_t> weights() const {
        std::vector<std::uint64_t> result(std::size_t(support) + 1);
        const int r = kind == Kind::parametric ? detail::parametric_resolution : resolution;
        if (kind == Kind::code_lengths) {
            for (std::uint32_t bin = 0; bin < support; ++bin) result[bin] = detail::code_length_weight(lengths[bin], r);
        } else {
            const detail::compact_u128 a = detail::float_code_value(quadratic), b = detail::float_code_value(linear);
            for (std::uint32_t bin = 0; bin < support; ++bin) {
                const std::int64_t distance = std::int64_t(4) * bin - std::int64_t(center);
                const detail::compact_u128 t = std::uint64_t(distance < 0 ? -distance : distance);
                const detail::compact_u128 q = (a * t * t + b * t) >> detail::parametric_shift;
                result[bin] = detail::code_length_weight(std::uint64_t(std::min<detail::compact_u128>(q, detail::max_code_length)), r);
            }
        }
        result[support] = has_escape_length ? detail::code_length_weight(escape_length, r) : 0;
        return result;
    }

    /// The exact integer table. Throws nwc::error(invalid_argument) for an invalid description
    /// (read() turns that into corrupt).
    CdfTable table() const {
        if (kind == Kind::frequencies) return CdfTable::from_frequencies(offset, frequencies, precision);
        const std::vector<std::uint64_t> bin_weights = weights();
        return CdfTable::from_weights(offset, bin_weights, precision);
    }

    /// table().frequencies() without building the table (fit_compact_table prices thousands of
    /// candidates by their frequencies alone). The frequencies kind's are returned as stored
    /// (table() validates them).
    std::vector<std::uint32_t> table_frequencies() const {
        if (kind == Kind::frequencies) return frequencies;
        const std::vector<std::uint64_t> bin_weights = weights();
        return CdfTable::frequencies_from_weights(offset, bin_weights, precision);
    }

    /// Appends the bit-packed description, zero-padded to a whole byte.
    void write(ByteWriter& writer) const {
        detail::BitWriter bits;
        put_fields(bits);
        writer.put_bytes(bits.finish());
    }

    /// Bytes write() produces (counted, not written: the fitter sizes thousands of candidates).
    std::size_t byte_size() const {
        detail::BitCounter bits;
        put_fields(bits);
        return std::size_t((bits.bit_count() + 7) / 8);
    }


    /// Reads what write() wrote and derives the table; throws nwc::error (corrupt, truncated) on
    /// any violation, before allocating more than the input could describe.
    static CompactCdfTable read(ByteReader& reader) {
        const std::size_t at = reader.offset();
        ByteReader peek = reader;
        const std::span<const std::uint8_t> rest = peek.get_bytes(peek.remaining());
        const std::string context = detail::concat(reader.context(), ": compact CDF table at offset ", at);
        detail::BitReader bits(rest, context, 0);
        CompactCdfTable compact;
        const std::uint64_t kind = bits.get(2);
        if (kind > 2) bits.fail_at("kind ", kind);
        compact.kind = Kind(kind);
        compact.precision = CdfTable::min_precision + int(bits.get(3));
        if (compact.precision > CdfTable::max_precision) bits.fail_at("precision ", compact.precision);
        const std::int64_t offset = detail::unzigzag(bits.get_exp_golomb(3, 33));
        const std::uint64_t support = bits.get_exp_golomb(3, 32) + 1;
        // Every bin costs at least one bit in every kind but parametric, whose support is bounded
        // by the table limits alone (a few hundred KiB at most).
        if (offset < std::numeric_limits<std::int32_t>::min() || offset > std::numeric_limits<std::int32_t>::max() ||
            support >= std::min<std::uint64_t>(CdfTable::max_bins, std::uint64_t(1) << compact.precision) ||
            (kind != 2 && support > 8 * std::uint64_t(rest.size())))
            bits.fail_at("offset ", offset, " and support ", support, " (at most ", CdfTable::max_bins - 1, " bins below 2^precision)");
        compact.offset = std::int32_t(offset);
        compact.support = std::uint32_t(support);
        if (compact.kind == Kind::frequencies) {
            const int k = int(bits.get(4));
            std::int64_t previous = 0, total = 0;
            compact.frequencies.resize(compact.support + 1);
            for (std::uint32_t bin = 0; bin < compact.support; ++bin) {
                previous += detail::unzigzag(bits.get_exp_golomb(k, 40));
                if (previous < 1 || previous >= (std::int64_t(1) << compact.precision)) bits.fail_at("frequency ", previous, " of bin ", bin);
                compact.frequencies[bin] = std::uint32_t(previous);
                total += previous;
            }
            const std::int64_t escape = (std::int64_t(1) << compact.precision) - total;
            if (escape < 1) bits.fail_at("frequencies sum to ", total, " without the escape bin, at precision ", compact.precision);
            compact.frequencies[compact.support] = std::uint32_t(escape);
        } else if (compact.kind == Kind::code_lengths) {
            compact.resolution = int(bits.get(4));
            if (compact.resolution > 8) bits.fail_at("resolution 2^-", compact.resolution);
            const bool second = bits.get(1) != 0;
            const int k = int(bits.get(4));
            compact.lengths.resize(compact.support);
            std::int64_t previous = 0, slope = 0;
            for (std::uint32_t bin = 0; bin < compact.support; ++bin) {
                const std::int64_t code = detail::unzigzag(bits.get_exp_golomb(k, 40));
                const std::int64_t delta = second && bin >= 2 ? slope + code : code;
                previous += delta;
                slope = bin >= 1 ? delta : 0;
                if (previous < 0 || std::uint64_t(previous) > detail::max_code_length) bits.fail_at("code length ", previous, " of bin ", bin);
                compact.lengths[bin] = std::uint32_t(previous);
            }
        } else {
            compact.center = std::uint32_t(std::min<std::uint64_t>(bits.get_exp_golomb(3, 32), std::uint64_t(1) << 31));
            if (compact.center >= 4 * compact.support) bits.fail_at("center ", compact.center, " beyond the ", compact.support, " bins");
            compact.quadratic = std::uint32_t(bits.get(10));
            compact.linear = std::uint32_t(bits.get(10));
        }
        if (compact.kind != Kind::frequencies) {
            compact.has_escape_length = bits.get(1) != 0;
            if (compact.has_escape_length) compact.escape_length = std::uint32_t(std::min<std::uint64_t>(bits.get_exp_golomb(6, 32), detail::max_code_length));
        }
        bits.expect_zero_padding();
        reader.skip(bits.bytes_used());
        try {
            (void)compact.table();  // every weight zero, a support past INT32_MAX, ...
        } catch (const error& bad) {
            fail(errc::corrupt, context, ": ", bad.message());
        }
        return compact;
    }

private:
    /// The description's fields into a detail::BitWriter or detail::BitCounter.
    template <class Bits>
    void put_fields(Bits& bits) const {
        bits.put(std::uint64_t(kind), 2);
        bits.put(std::uint64_t(precision - CdfTable::min_precision), 3);
        bits.put_exp_golomb(detail::zigzag(offset), 3);
        bits.put_exp_golomb(support - 1, 3);
        if (kind == Kind::frequencies) {
            const int k = best_order(difference_codes(frequencies, 1, frequencies.size() - 1));
            bits.put(std::uint64_t(k), 4);
            for (std::uint64_t code : difference_codes(frequencies, 1, frequencies.size() - 1)) bits.put_exp_golomb(code, k);
        } else if (kind == Kind::code_lengths) {
            bits.put(std::uint64_t(resolution), 4);
            const std::vector<std::uint64_t> first = difference_codes(lengths, 1, lengths.size()), second = difference_codes(lengths, 2, lengths.size());
            const int k1 = best_order(first), k2 = best_order(second);
            const bool use_second = total_bits(second, k2) < total_bits(first, k1);
            bits.put(use_second, 1);
            bits.put(std::uint64_t(use_second ? k2 : k1), 4);
            for (std::uint64_t code : use_second ? second : first) bits.put_exp_golomb(code, use_second ? k2 : k1);
        } else {
            bits.put_exp_golomb(center, 3);
            bits.put(quadratic, 10);
            bits.put(linear, 10);
        }
        if (kind != Kind::frequencies) {
            bits.put(has_escape_length, 1);
            if (has_escape_length) bits.put_exp_golomb(escape_length, 6);
        }
    }

    /// Zigzag codes of the differences of values[0..count) (the first value from 0); order 2 codes
    /// each difference from the third on minus the one before it (a constant slope costs nothing).
    static std::vector<std::uint64_t> difference_codes(std::span<const std::uint32_t> values, int order, std::size_t count) {
        std::vector<std::uint64_t> codes(count);
        std::int64_t previous = 0, slope = 0;
        for (std::size_t i = 0; i < count; ++i) {
            const std::int64_t delta = std::int64_t(values[i]) - previous;
            codes[i] = detail::zigzag(order == 2 && i >= 2 ? delta - slope : delta);
            slope = i >= 1 ? delta : 0;
            previous = values[i];
        }
        return codes;
    }
    static std::uint64_t total_bits(std::span<const std::uint64_t> codes, int k) {
        std::uint64_t total = 0;
        for (std::uint64_t code : codes) total += std::uint64_t(detail::exp_golomb_bits(code, k));
        return total;
    }
    static int best_order(std::span<const std::uint64_t> codes) {
        int best = 0;
        std::uint64_t best_bits = total_bits(codes, 0);
        for (int k = 1; k < 16; ++k) {
            const std::uint64_t bits = total_bits(codes, k);
            if (bits < best_bits) best = k, best_bits = bits;
        }
        return best;
    }
};

/// A whole CdfTableSet, each table kept exactly: varint channel count, then the tables
/// (CompactCdfTable::exact). The compact counterpart of CdfTableSet::write, without magic or CRC
/// (for data inside checksummed containers).
inline void write_compact(const CdfTableSet& set, ByteWriter& writer) {
    detail::put_varint(writer, set.channel_count());
    for (const CdfTable& table : set.tables()) CompactCdfTable::exact(table).write(writer);
}

/// Reads what write_compact(CdfTableSet) wrote (any kinds of table, one precision). Throws
/// nwc::error: corrupt (tables, mixed precisions), limit (channel count), truncated.
inline CdfTableSet read_compact_set(ByteReader& reader) {
    const std::size_t at = reader.offset();
    const std::uint64_t channels = detail::get_varint(reader, "CDF table count");
    require(channels >= 1 && channels <= CdfTableSet::max_channels, errc::limit, reader.context(), ": ", channels, " CDF tables at offset ", at,
            " (1..", CdfTableSet::max_channels, ")");
    require(channels <= reader.remaining(), errc::truncated, reader.context(), ": ", channels, " CDF tables at offset ", at, " need at least ",
            channels, " bytes, ", reader.remaining(), " remain");
    std::vector<CdfTable> tables;
    for (std::uint64_t channel = 0; channel < channels; ++channel) tables.push_back(CompactCdfTable::read(reader).table());
    try {
        return CdfTableSet(std::move(tables));
    } catch (const error& bad) {
        fail(errc::corrupt, reader.context(), ": CDF table set at offset ", at, ": ", bad.message());
    }
}

}  // namespace nwc
