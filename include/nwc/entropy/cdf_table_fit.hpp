// nwc::fit_compact_table: the CompactCdfTable that minimizes (table bytes + payload) for the
// symbol counts of one tensor (the ECSQ histogram), over kinds, parameters, precisions and support.
//
// Read me first:
// - Payload = sum over symbols of their code length under the integer table (escaped symbols:
//   the escape bin plus their Elias-gamma code) plus the rANS coder's estimated loss at the
//   table's precision, in Q16 fixed point: every decision is integer arithmetic on integer
//   counts, so the choice (and the bytes) are the same on every machine.
// - Candidates, per precision and support window (the full range of the counts, and the
//   narrowest windows that leave 1, 4 or 16 symbols to the escape code):
//   frequencies (the exact histogram table), code_lengths at resolutions 2^-0 .. 2^-8 bits
//   (rounded log-ratios to the largest count), and parametric (coordinate descent on center and
//   the two shape codes from Gaussian, Laplace and blended starts).
// - Small tensors pick parametric tables (~4-6 bytes, a few bytes of payload lost), large ones
//   code lengths at fine resolution (docs/bench/range_coder.md has the measured choices).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <span>
#include <vector>

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/bit_io.hpp"
#include "nwc/entropy/cdf_table.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"

namespace nwc {

/// Options of fit_compact_table.
struct CompactTableFitOptions {
    /// Precisions to try (12..16): a higher one resolves rare symbols better, but the rANS coder
    /// itself loses more (its states' lower bound 2^16 gets close to the table total), which the
    /// fit adds to each candidate's payload from detail::coder_loss_q16.
    std::vector<int> precisions = {12, 13, 14, 15, 16};
    /// Also try supports that leave a few outliers to the escape code.
    bool try_escapes = true;
};

/// The chosen table and what it costs.
struct CompactTableFit {
    CompactCdfTable compact;
    CdfTable table;
    std::uint64_t table_bytes = 0;
    std::uint64_t payload_q16 = 0;  ///< payload bits * 2^16, with the coder's estimated loss (detail::coder_loss_q16)
    double payload_bits() const noexcept { return double(payload_q16) / 65536.0; }
    double total_bits() const noexcept { return 8.0 * double(table_bytes) + payload_bits(); }
};

namespace detail {

/// log2(value) in Q16, value >= 1 (truncated; integer squarings of a Q31 mantissa).
constexpr std::uint64_t log2_q16(compact_u128 value) noexcept {
    const std::uint64_t high = std::uint64_t(value >> 64);
    const int whole = (high ? 128 - std::countl_zero(high) : 64 - std::countl_zero(std::uint64_t(value))) - 1;
    std::uint64_t mantissa = std::uint64_t(whole >= 31 ? value >> (whole - 31) : value << (31 - whole));  // [2^31, 2^32)
    std::uint64_t fraction = 0;
    for (int bit = 15; bit >= 0; --bit) {
        mantissa = (mantissa * mantissa) >> 31;
        if (mantissa >= (std::uint64_t(1) << 32)) {
            mantissa >>= 1;
            fraction |= std::uint64_t(1) << bit;
        }
    }
    return (std::uint64_t(whole) << 16) | fraction;
}

/// log2_q16 of 0..2^16 (entry 0 unused). A named function that is not constexpr, on purpose: a
/// lambda initializer would be, and C++20's constexpr std::vector makes g++ try to evaluate the
/// 65536 * 16 squarings at compile time in every translation unit (1.8 s of `-fsyntax-only`,
/// docs/bench/headers.md) before it gives up and initializes at run time anyway.
inline std::vector<std::uint32_t> make_log2_q16_table() {
    std::vector<std::uint32_t> values((std::size_t(1) << 16) + 1, 0);
    for (std::size_t value = 1; value < values.size(); ++value) values[value] = std::uint32_t(log2_q16(value));
    return values;
}

/// log2_q16 of a table frequency (1..2^16) from a table made once per process: pricing a
/// candidate table takes one per bin, and the squarings cost ~50 cycles each.
inline std::uint64_t log2_q16_of_frequency(std::uint32_t frequency) noexcept {
    static const std::vector<std::uint32_t> table = make_log2_q16_table();
    NWC_ASSERT(frequency >= 1 && frequency < table.size());
    return table[frequency];
}

/// The rANS coder's own loss per symbol at precision 12..16, in Q16 bits: measured as the size
/// over the ideal of one 16M-symbol segment of the bench workload (~4.3 bits per symbol;
/// docs/bench/range_coder.md, BM_segment_overhead): 4.8e-5, 3.6e-4 and 4.7e-3 bits at 12, 14
/// and 16, geometric in between. An estimate: it varies with the distribution.
inline constexpr std::uint64_t coder_loss_q16[5] = {3, 9, 24, 85, 308};

/// The counts of one fit: bins [first, last] of the histogram form the support, the rest escape.
struct FitWindow {
    std::int32_t offset;                 ///< value of histogram bin 0
    std::span<const std::uint64_t> counts;
    std::size_t first, last;
    std::uint64_t inside = 0, outside = 0, largest = 0;
    std::uint64_t outside_code_q16 = 0;  ///< the escape codes' own bits of the outside symbols, Q16
};

inline FitWindow make_window(std::int32_t offset, std::span<const std::uint64_t> counts, std::size_t first, std::size_t last) {
    FitWindow window{offset, counts, first, last};
    const std::int32_t low = std::int32_t(std::int64_t(offset) + std::int64_t(first));
    const std::uint32_t support = std::uint32_t(last - first + 1);
    for (std::size_t i = 0; i < counts.size(); ++i) {
        if (i >= first && i <= last) {
            window.inside += counts[i];
            window.largest = std::max(window.largest, counts[i]);
        } else if (counts[i] != 0) {
            window.outside += counts[i];
            const std::uint64_t code = escape_code(std::int32_t(std::int64_t(offset) + std::int64_t(i)), low, support);
            window.outside_code_q16 += counts[i] * (std::uint64_t(escape_code_bits(code)) << 16);
        }
    }
    return window;
}

/// Payload of the window's counts under a table of these frequencies (bin 0 is histogram bin
/// window.first, the escape bin last) at `precision`, Q16.
inline std::uint64_t payload_q16(const FitWindow& window, std::span<const std::uint32_t> frequencies, int precision) {
    const std::uint64_t precision_q16 = std::uint64_t(precision) << 16;
    std::uint64_t total = window.outside_code_q16 + window.outside * (precision_q16 - log2_q16_of_frequency(frequencies.back()));
    for (std::size_t i = window.first; i <= window.last; ++i)
        if (window.counts[i] != 0) total += window.counts[i] * (precision_q16 - log2_q16_of_frequency(frequencies[i - window.first]));
    return total;
}

/// Payload of the window's counts under `table` (whose bin 0 is histogram bin window.first), Q16.
inline std::uint64_t payload_q16(const FitWindow& window, const CdfTable& table) { return payload_q16(window, table.frequencies(), table.precision()); }

/// q = round(2^r log2(largest / count)), capped where the frequency would be 1 anyway.
inline std::uint32_t code_length_of(std::uint64_t count, std::uint64_t largest, int resolution, std::uint64_t cap) {
    if (count == 0) return std::uint32_t(cap);
    const std::uint64_t ratio_q16 = log2_q16(largest) - log2_q16(count);
    return std::uint32_t(std::min<std::uint64_t>(cap, ((ratio_q16 << resolution) + (1u << 15)) >> 16));
}

/// The nearest 10-bit float code of a value.
inline std::uint32_t float_code_of(double value) {
    if (!(value >= 32.0)) return value >= 16.0 ? 1 : 0;
    int exponent = 0;
    while (value >= 64.0 && exponent < 31) value /= 2, ++exponent;
    const std::uint32_t mantissa = std::min<std::uint32_t>(31, std::uint32_t(value + 0.5) - 32);
    return std::min<std::uint32_t>(max_float_code, 32 * std::uint32_t(exponent) + mantissa + 1);
}

class TableFitter {
public:
    TableFitter(const FitWindow& window, int precision, CompactTableFit& best) : m_window(window), m_precision(precision), m_best(best) {}

    /// Evaluates a candidate; keeps it when it beats the best so far. Returns its total in Q16.
    /// Priced by its frequencies alone: fit_compact_table builds the winner's CdfTable once at the end.
    std::uint64_t consider(const CompactCdfTable& compact) {
        const std::vector<std::uint32_t> frequencies = compact.table_frequencies();
        const std::uint64_t bytes = compact.byte_size();
        const std::uint64_t payload =
            payload_q16(m_window, frequencies, m_precision) + (m_window.inside + m_window.outside) * coder_loss_q16[m_precision - CdfTable::min_precision];
        const std::uint64_t total = (bytes << 19) + payload;
        if (compact.kind == CompactCdfTable::Kind::parametric && total < m_best_parametric_total) m_best_parametric_total = total, m_best_parametric = compact;
        if (m_best.table_bytes == 0 || total < (m_best.table_bytes << 19) + m_best.payload_q16) {
            m_best.compact = compact;
            m_best.table_bytes = bytes;
            m_best.payload_q16 = payload;
        }
        return total;
    }

    CompactCdfTable base(CompactCdfTable::Kind kind) const {
        CompactCdfTable compact;
        compact.kind = kind;
        compact.precision = m_precision;
        compact.offset = std::int32_t(std::int64_t(m_window.offset) + std::int64_t(m_window.first));
        compact.support = std::uint32_t(m_window.last - m_window.first + 1);
        return compact;
    }

    void fit_frequencies() {
        std::vector<std::uint64_t> weights(m_window.counts.begin() + std::ptrdiff_t(m_window.first), m_window.counts.begin() + std::ptrdiff_t(m_window.last) + 1);
        weights.push_back(m_window.outside);
        const CdfTable table = CdfTable::from_weights(base(CompactCdfTable::Kind::frequencies).offset, weights, m_precision);
        consider(CompactCdfTable::exact(table));
    }

    void fit_code_lengths(int resolution) {
        CompactCdfTable compact = base(CompactCdfTable::Kind::code_lengths);
        compact.resolution = resolution;
        // Beyond log2(largest / total) + precision + 1 bits a bin gets frequency 1 anyway.
        const std::uint64_t total = m_window.inside + m_window.outside;
        const std::uint64_t cap_q16 = (std::uint64_t(m_precision + 1) << 16) + log2_q16(m_window.largest) - std::min(log2_q16(m_window.largest), log2_q16(total));
        const std::uint64_t cap = (cap_q16 << resolution) >> 16;
        for (std::size_t i = m_window.first; i <= m_window.last; ++i)
            compact.lengths.push_back(code_length_of(m_window.counts[i], m_window.largest, resolution, cap));
        compact.has_escape_length = m_window.outside != 0;
        if (compact.has_escape_length) compact.escape_length = code_length_of(m_window.outside, std::max(m_window.largest, m_window.outside), resolution, cap);
        consider(compact);
    }

    /// The parametric table the descent found best here, kept for re-use at other precisions.
    const CompactCdfTable& best_parametric() const noexcept { return m_best_parametric; }

    /// A parametric description found at another precision, evaluated at this one.
    void consider_parametric(CompactCdfTable compact) {
        compact.precision = m_precision;
        consider(compact);
    }

    void fit_parametric() {
        const CompactCdfTable start = base(CompactCdfTable::Kind::parametric);
        // Moments of the window (doubles: only the starting points depend on them).
        double mean = 0, variance = 0, deviation = 0;
        const double n = double(m_window.inside);
        for (std::size_t i = m_window.first; i <= m_window.last; ++i) mean += double(m_window.counts[i]) * double(i - m_window.first) / n;
        for (std::size_t i = m_window.first; i <= m_window.last; ++i) {
            const double d = double(i - m_window.first) - mean;
            variance += double(m_window.counts[i]) * d * d / n;
            deviation += double(m_window.counts[i]) * (d < 0 ? -d : d) / n;
        }
        constexpr double inverse_ln2 = 1.4426950408889634;
        const double quadratic = double(1 << parametric_shift) * inverse_ln2 / (2.0 * std::max(variance, 0.05));
        const double linear = double(1 << parametric_shift) * 4.0 * inverse_ln2 / std::max(deviation, 0.05);
        const auto center = std::uint32_t(std::clamp(4.0 * mean + 0.5, 0.0, 4.0 * double(start.support) - 1.0));
        // Gaussian, Laplace and blended starts; the descent continues from the best of them only
        // (from all three it found the same tables on the real histograms, at three times the cost).
        const std::uint32_t starts[3][2] = {{float_code_of(quadratic), 0}, {0, float_code_of(linear)}, {float_code_of(quadratic / 2), float_code_of(linear / 2)}};
        CompactCdfTable best_start;
        std::uint64_t best_total = ~std::uint64_t(0);
        for (const auto& [a, b] : starts) {
            CompactCdfTable compact = start;
            compact.center = center;
            compact.quadratic = std::max<std::uint32_t>(a, b == 0 ? 1 : 0);
            compact.linear = b;
            set_escape(compact);
            const std::uint64_t total = consider(compact);
            if (total < best_total) best_total = total, best_start = compact;
        }
        descend(best_start, best_total);
    }

private:
    /// Coordinate descent on (center, quadratic, linear, escape length) with shrinking steps.
    void descend(CompactCdfTable compact, std::uint64_t current) {
        for (int round = 0; round < 64; ++round) {
            bool improved = false;
            for (int parameter = 0; parameter < 4; ++parameter)
                for (int step : {16, -16, 4, -4, 1, -1}) {
                    CompactCdfTable trial = compact;
                    std::uint32_t& value = parameter == 0 ? trial.center : parameter == 1 ? trial.quadratic : parameter == 2 ? trial.linear : trial.escape_length;
                    const std::int64_t moved = std::int64_t(value) + step;
                    const std::int64_t limit = parameter == 0 ? 4 * std::int64_t(trial.support) - 1 : parameter == 3 ? std::int64_t(max_code_length) : max_float_code;
                    if (moved < 0 || moved > limit || (parameter == 3 && !trial.has_escape_length)) continue;
                    value = std::uint32_t(moved);
                    if (trial.quadratic == 0 && trial.linear == 0) continue;
                    const std::uint64_t total = consider(trial);
                    if (total < current) {
                        current = total;
                        compact = trial;
                        improved = true;
                    }
                }
            if (!improved) break;
        }
    }

    /// An escape code length matching the outside share: weight(q) = inside weights * outside / inside.
    void set_escape(CompactCdfTable& compact) const {
        compact.has_escape_length = m_window.outside != 0;
        if (!compact.has_escape_length) return;
        compact.has_escape_length = false;
        compact_u128 inside_weight = 0;
        for (std::uint64_t weight : compact.weights()) inside_weight += weight;
        compact.has_escape_length = true;
        const compact_u128 escape_weight = std::max<compact_u128>(1, inside_weight * m_window.outside / std::max<std::uint64_t>(m_window.inside, 1));
        const std::uint64_t log_q16 = log2_q16(escape_weight);
        const std::uint64_t q = log_q16 >= (std::uint64_t(62) << 16) ? 0 : ((std::uint64_t(62) << 16) - log_q16) >> (16 - parametric_resolution);
        compact.escape_length = std::uint32_t(std::min(q, max_code_length));
    }

    const FitWindow& m_window;
    int m_precision;
    CompactTableFit& m_best;
    CompactCdfTable m_best_parametric;
    std::uint64_t m_best_parametric_total = ~std::uint64_t(0);
};

}  // namespace detail

/// The compact table minimizing table bytes + payload for counts[i] symbols of value offset + i.
/// Throws nwc::error(invalid_argument) for no symbols, a bad precision or a range past int32.
inline CompactTableFit fit_compact_table(std::int32_t offset, std::span<const std::uint64_t> counts, const CompactTableFitOptions& options = {}) {
    std::size_t first = counts.size(), last = 0;
    for (std::size_t i = 0; i < counts.size(); ++i)
        if (counts[i] != 0) first = std::min(first, i), last = i;
    require(first < counts.size(), errc::invalid_argument, "fit_compact_table: no symbols");
    require(std::int64_t(offset) + std::int64_t(counts.size()) - 1 <= std::numeric_limits<std::int32_t>::max(), errc::invalid_argument,
            "fit_compact_table: values ", offset, " + ", counts.size(), " pass INT32_MAX");
    std::uint64_t total = 0;
    for (std::uint64_t count : counts) total += count;
    // Windows: the full range, then the narrowest ones that leave at most 1, 4, 16 symbols outside.
    std::vector<std::pair<std::size_t, std::size_t>> windows{{first, last}};
    if (options.try_escapes)
        for (std::uint64_t outside : {1u, 4u, 16u}) {
            if (outside * 64 > total) break;
            std::pair<std::size_t, std::size_t> narrowest{first, last};
            std::uint64_t inside = 0;
            for (std::size_t low = first, high = first; high <= last; ++high) {
                inside += counts[high];
                while (low < high && inside - counts[low] + outside >= total) inside -= counts[low++];
                if (inside + outside >= total && high - low < narrowest.second - narrowest.first) narrowest = {low, high};
            }
            if (std::find(windows.begin(), windows.end(), narrowest) == windows.end()) windows.push_back(narrowest);
        }
    // The parametric descent runs once per window, at the precision nearest 14 (its shape
    // parameters do not depend on the precision); the other precisions re-evaluate what it found.
    std::vector<int> precisions = options.precisions;
    std::stable_sort(precisions.begin(), precisions.end(), [](int a, int b) { return std::abs(a - 14) < std::abs(b - 14); });
    std::vector<std::pair<std::pair<std::size_t, std::size_t>, CompactCdfTable>> parametric;
    CompactTableFit best;
    for (int precision : precisions) {
        require(precision >= CdfTable::min_precision && precision <= CdfTable::max_precision, errc::invalid_argument, "fit_compact_table: precision ",
                precision, " outside [", CdfTable::min_precision, ", ", CdfTable::max_precision, "]");
        const std::size_t widest = std::min<std::size_t>(CdfTable::max_bins, std::size_t(1) << precision) - 1;
        for (const auto& candidate : windows) {
            // Plain variables, not a structured binding: clang before 16 cannot capture those.
            std::size_t low = candidate.first, high = candidate.second;
            if (high - low + 1 > widest) {  // the window of `widest` bins holding the most symbols
                std::uint64_t inside = 0, most = 0;
                std::size_t best_low = low, best_high = low;
                for (std::size_t i = low, start = low; i <= high; ++i) {
                    inside += counts[i];
                    if (i - start + 1 > widest) inside -= counts[start++];
                    if (inside > most) most = inside, best_low = start, best_high = i;
                }
                low = best_low, high = best_high;
            }
            const detail::FitWindow window = detail::make_window(offset, counts, low, high);
            detail::TableFitter fitter(window, precision, best);
            fitter.fit_frequencies();
            for (int resolution = 0; resolution <= 8; ++resolution) fitter.fit_code_lengths(resolution);
            const auto found = std::find_if(parametric.begin(), parametric.end(), [&](const auto& entry) { return entry.first == std::pair{low, high}; });
            if (found != parametric.end()) {
                fitter.consider_parametric(found->second);
            } else {
                fitter.fit_parametric();
                parametric.emplace_back(std::pair{low, high}, fitter.best_parametric());
            }
        }
    }
    best.table = best.compact.table();
    return best;
}

}  // namespace nwc
