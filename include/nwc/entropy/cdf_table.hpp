// nwc::CdfTable: one channel's integer probability table for the rANS coder.
//
// Read me first:
// - A table covers the integer values [offset, offset + support) with one bin each, plus ONE extra
//   bin at the end, the escape bin: every value outside the support is coded as the escape symbol
//   followed by raw bits (see range_coder.hpp). So any int32 can be coded with any table.
// - Frequencies are integers, each >= 1, summing to exactly 2^precision (12 <= precision <= 16).
//   Because the escape bin is always >= 1, every frequency is < 2^16 and fits a u16 on disk.
// - Tables are built ONCE (by the prior, at training time) and stored; the decoder never rebuilds
//   them from floating point, which is what breaks decoding across machines elsewhere.
// - from_probabilities() is deterministic on every IEEE-754 machine: the only floating-point
//   operations are one division and one exact power-of-two scaling per bin (correctly rounded,
//   no fused multiply-add can change them); everything after is integer arithmetic.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <queue>
#include <span>
#include <utility>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"

namespace nwc {

namespace detail {
/// Bits of the self-delimiting escape code of the distance `code` (Elias-gamma of code + 1).
inline int escape_code_bits(std::uint64_t code) noexcept { return 2 * int(std::bit_width(code + 1)) - 1; }
/// The escape code of a value outside [offset, offset + support): 2 d below, 2 d + 1 above.
inline std::uint64_t escape_code(std::int32_t value, std::int32_t offset, std::uint32_t support) noexcept {
    const std::int64_t end = std::int64_t(offset) + support;
    if (value < offset) return 2 * std::uint64_t(std::int64_t(offset) - 1 - value);
    return 2 * std::uint64_t(std::int64_t(value) - end) + 1;
}
}  // namespace detail

/// One channel's quantized distribution: `support` regular bins for the values
/// offset .. offset + support - 1, then the escape bin; frequencies sum to 2^precision.
class CdfTable {
public:
    static constexpr int min_precision = 12;
    static constexpr int max_precision = 16;
    /// Most bins per table, escape included, so that a bin index fits 16 bits.
    static constexpr std::uint32_t max_bins = 65536;

    CdfTable() = default;

    /// Quantizes probabilities[i] = P(value == offset + i) and the escape probability to integer
    /// frequencies (each >= 1, total exactly 2^precision) that approximately minimize the expected
    /// code length. The inputs need not be normalized. Algorithm (all integer after step 1):
    ///  1. weight w_i = floor(p_i / p_max * 2^52) (one correctly rounded division per bin);
    ///  2. f_i = max(1, round(w_i * 2^precision / sum w)) (round half up, 128-bit products);
    ///  3. while sum f > 2^precision, decrement the bin with f > 1 whose decrement costs least,
    ///     cost ~ w_i / (f_i - 1/2); while sum f < 2^precision, increment the bin with the largest
    ///     gain w_i / (f_i + 1/2). These are the derivatives of w log2 f at the midpoints, compared
    ///     exactly by cross-multiplication; ties go to the lowest bin index.
    /// Throws nwc::error(invalid_argument) on a negative or non-finite input, an all-zero input, a
    /// bad precision, more bins than 2^precision or max_bins, or a support reaching past INT32_MAX.
    static CdfTable from_probabilities(std::int32_t offset, std::span<const double> probabilities, double escape_probability,
                                       int precision) {
        check_shape(offset, probabilities.size() + 1, precision, "CdfTable::from_probabilities");
        const std::size_t bins = probabilities.size() + 1;
        auto probability = [&](std::size_t bin) { return bin + 1 == bins ? escape_probability : probabilities[bin]; };
        double largest = 0.0;
        for (std::size_t bin = 0; bin < bins; ++bin) {
            const double p = probability(bin);
            require(std::isfinite(p) && p >= 0.0, errc::invalid_argument, "CdfTable::from_probabilities: probability of bin ", bin,
                    " is ", p, " (must be finite and >= 0)");
            largest = std::max(largest, p);
        }
        require(largest > 0.0, errc::invalid_argument, "CdfTable::from_probabilities: all ", bins, " probabilities are zero");
        std::vector<std::uint64_t> weights(bins);
        for (std::size_t bin = 0; bin < bins; ++bin) weights[bin] = std::uint64_t(probability(bin) / largest * 0x1.0p52);
        return CdfTable(offset, quantize(weights, precision), precision);
    }

    /// The table of integer weights (escape bin last): steps 2 and 3 of from_probabilities(), all
    /// integer arithmetic, so a decoder may derive a table from stored integers this way. Throws
    /// nwc::error(invalid_argument) when every weight is zero or the shape is invalid (as above).
    static CdfTable from_weights(std::int32_t offset, std::span<const std::uint64_t> weights, int precision) {
        return CdfTable(offset, frequencies_from_weights(offset, weights, precision), precision);
    }

    /// The frequencies of from_weights(offset, weights, precision), with the same checks, without
    /// building the decoder's slot index (2^precision entries): what a table fitter needs to
    /// price a candidate.
    static std::vector<std::uint32_t> frequencies_from_weights(std::int32_t offset, std::span<const std::uint64_t> weights, int precision) {
        check_shape(offset, weights.size(), precision, "CdfTable::from_weights");
        bool any = false;
        for (std::uint64_t weight : weights) any = any || weight != 0;
        require(any, errc::invalid_argument, "CdfTable::from_weights: all ", weights.size(), " weights are zero");
        return quantize(weights, precision);
    }

    /// Every value of [offset, offset + support) equally likely (support >= 1), the escape bin at frequency 1.
    static CdfTable uniform(std::int32_t offset, int support, int precision) {
        require(support >= 1, errc::invalid_argument, "CdfTable::uniform: support ", support, " must be >= 1");
        const std::vector<double> ones(std::size_t(support), 1.0);
        return from_probabilities(offset, ones, 0.0, precision);
    }

    /// A table from given frequencies (escape bin last); validated like a table read from disk.
    static CdfTable from_frequencies(std::int32_t offset, std::vector<std::uint32_t> frequencies, int precision) {
        check_shape(offset, frequencies.size(), precision, "CdfTable::from_frequencies");
        std::uint64_t total = 0;
        for (std::size_t bin = 0; bin < frequencies.size(); ++bin) {
            require(frequencies[bin] >= 1, errc::invalid_argument, "CdfTable::from_frequencies: bin ", bin, " has frequency 0");
            total += frequencies[bin];
        }
        require(total == (std::uint64_t(1) << precision), errc::invalid_argument, "CdfTable::from_frequencies: frequencies sum to ", total,
                ", expected 2^", precision);
        return CdfTable(offset, std::move(frequencies), precision);
    }

    /// The value of bin 0.
    std::int32_t offset() const noexcept { return m_offset; }
    /// Number of regular bins (values offset .. offset + support - 1); the escape bin is extra.
    std::uint32_t support() const noexcept { return std::uint32_t(m_frequencies.size()) - 1; }
    /// support() + 1.
    std::uint32_t bin_count() const noexcept { return std::uint32_t(m_frequencies.size()); }
    /// Index of the escape bin, == support().
    std::uint32_t escape_bin() const noexcept { return support(); }
    /// log2 of the frequency total.
    int precision() const noexcept { return m_precision; }
    /// bin_count() frequencies, escape last; each >= 1, sum 2^precision.
    std::span<const std::uint32_t> frequencies() const noexcept { return m_frequencies; }
    /// bin_count() + 1 running sums: cumulative()[b] = sum of frequencies below bin b.
    std::span<const std::uint32_t> cumulative() const noexcept { return m_cumulative; }
    /// Whether `value` has a regular bin.
    bool in_support(std::int32_t value) const noexcept {
        return value >= m_offset && std::int64_t(value) - m_offset < std::int64_t(support());
    }
    /// The bin that codes `value`: value - offset inside the support, escape_bin() outside.
    std::uint32_t bin_of(std::int32_t value) const noexcept {
        return in_support(value) ? std::uint32_t(std::int64_t(value) - m_offset) : escape_bin();
    }
    /// The bin whose interval [cumulative[b], cumulative[b + 1]) contains `slot` < 2^precision, by
    /// binary search: the decoders index CdfTableSet's slot tables instead (a table per channel
    /// here would be 2^precision more entries per table of every codec held).
    std::uint32_t bin_at_slot(std::uint32_t slot) const noexcept {
        return std::uint32_t(std::upper_bound(m_cumulative.begin(), m_cumulative.end(), slot) - m_cumulative.begin() - 1);
    }

    /// Code length of `value` under this table: -log2(freq / 2^precision), plus the raw escape
    /// code's bits for a value outside the support.
    double ideal_bits(std::int32_t value) const noexcept {
        const std::uint32_t bin = bin_of(value);
        double bits = double(m_precision) - std::log2(double(m_frequencies[bin]));
        if (bin == escape_bin()) bits += detail::escape_code_bits(detail::escape_code(value, m_offset, support()));
        return bits;
    }

    /// On disk: i32 offset, u32 bin_count, u16 frequency per bin (escape last). The precision is
    /// stored once per CdfTableSet.
    void write(ByteWriter& writer) const {
        writer.put_i32(m_offset);
        writer.put_u32(bin_count());
        for (std::uint32_t frequency : m_frequencies) writer.put_u16(std::uint16_t(frequency));
    }
    /// Reads what write() wrote; throws nwc::error (corrupt, limit, truncated) on any violation.
    static CdfTable read(ByteReader& reader, int precision) {
        const std::size_t at = reader.offset();
        const std::int32_t offset = reader.get_i32();
        const std::uint32_t bins = reader.get_count(sizeof(std::uint16_t), max_bins, "CDF table bin");
        std::vector<std::uint32_t> frequencies(bins);
        for (auto& frequency : frequencies) frequency = reader.get_u16();
        try {
            return from_frequencies(offset, std::move(frequencies), precision);
        } catch (const error& bad) {
            fail(errc::corrupt, reader.context(), ": CDF table at offset ", at, ": ", bad.message());
        }
    }

    friend bool operator==(const CdfTable& a, const CdfTable& b) noexcept {
        return a.m_offset == b.m_offset && a.m_precision == b.m_precision && a.m_frequencies == b.m_frequencies;
    }

private:
    CdfTable(std::int32_t offset, std::vector<std::uint32_t> frequencies, int precision)
        : m_offset(offset), m_precision(precision), m_frequencies(std::move(frequencies)) {
        m_cumulative.resize(m_frequencies.size() + 1);
        m_cumulative[0] = 0;
        for (std::size_t bin = 0; bin < m_frequencies.size(); ++bin) m_cumulative[bin + 1] = m_cumulative[bin] + m_frequencies[bin];
    }

    static void check_shape(std::int32_t offset, std::size_t bins, int precision, const char* where) {
        require(precision >= min_precision && precision <= max_precision, errc::invalid_argument, where, ": precision ", precision,
                " outside [", min_precision, ", ", max_precision, "]");
        require(bins <= max_bins, errc::invalid_argument, where, ": ", bins, " bins exceed the limit of ", max_bins);
        // One regular bin at least: then every frequency is < 2^16 (fits u16 on disk, 16 bits in the
        // decoder's packed slot entries).
        require(bins >= 2, errc::invalid_argument, where, ": a table needs one regular bin and the escape bin, got ", bins, " bins");
        require(bins <= (std::size_t(1) << precision), errc::invalid_argument, where, ": ", bins, " bins cannot all get frequency >= 1 at precision ",
                precision);
        require(std::int64_t(offset) + std::int64_t(bins) - 2 <= std::numeric_limits<std::int32_t>::max(), errc::invalid_argument, where,
                ": support of ", bins - 1, " values from ", offset, " passes INT32_MAX");
    }

    /// Steps 2 and 3 of from_probabilities() on integer weights.
    static std::vector<std::uint32_t> quantize(std::span<const std::uint64_t> weights, int precision) {
        __extension__ typedef unsigned __int128 u128;  // exact products of 64-bit weights, portable to g++/clang
        const std::uint64_t target = std::uint64_t(1) << precision;
        u128 weight_sum = 0;
        for (std::uint64_t w : weights) weight_sum += w;
        std::vector<std::uint32_t> frequencies(weights.size());
        std::uint64_t total = 0;
        for (std::size_t bin = 0; bin < weights.size(); ++bin) {
            const u128 rounded = (u128(weights[bin]) * target * 2 + weight_sum) / (weight_sum * 2);
            frequencies[bin] = std::uint32_t(std::max<u128>(rounded, 1));
            total += frequencies[bin];
        }
        // Marginal cost w / (f -+ 1/2) = 2w / (2f -+ 1) as an exact fraction (numerator, denominator).
        struct Candidate {
            std::uint64_t weight;
            std::uint64_t denominator;  // 2f - 1 (decrement) or 2f + 1 (increment)
            std::uint32_t bin;
        };
        auto less_urgent = [](bool decrement) {
            // Priority queue order: the top is the cheapest decrement / the best increment.
            return [decrement](const Candidate& a, const Candidate& b) {
                const u128 lhs = u128(a.weight) * b.denominator, rhs = u128(b.weight) * a.denominator;
                if (lhs != rhs) return decrement ? lhs > rhs : lhs < rhs;
                return a.bin > b.bin;
            };
        };
        const bool decrement = total > target;
        std::priority_queue<Candidate, std::vector<Candidate>, decltype(less_urgent(true))> queue(less_urgent(decrement));
        auto push = [&](std::uint32_t bin) {
            if (decrement && frequencies[bin] <= 1) return;
            queue.push({weights[bin], decrement ? 2 * std::uint64_t(frequencies[bin]) - 1 : 2 * std::uint64_t(frequencies[bin]) + 1, bin});
        };
        if (total != target)
            for (std::uint32_t bin = 0; bin < weights.size(); ++bin) push(bin);
        while (total != target) {
            const std::uint32_t bin = queue.top().bin;  // never empty: bins <= target guarantees a f > 1
            queue.pop();
            if (decrement) {
                --frequencies[bin];
                --total;
            } else {
                ++frequencies[bin];
                ++total;
            }
            push(bin);
        }
        return frequencies;
    }

    std::int32_t m_offset = 0;
    int m_precision = min_precision;
    // Default: the value 0 with frequency 2^12 - 1, escape 1.
    std::vector<std::uint32_t> m_frequencies{(std::uint32_t(1) << min_precision) - 1, 1};
    std::vector<std::uint32_t> m_cumulative{0, (std::uint32_t(1) << min_precision) - 1, std::uint32_t(1) << min_precision};
};

}  // namespace nwc
