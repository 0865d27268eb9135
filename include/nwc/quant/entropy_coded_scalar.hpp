// nwc::EntropyCodedScalar (ECSQ): uniform scalar quantization of the normalized weights with a
// single step, symbols coded by an entropy coder; an LDLQ quantizer policy (quantizer_concept.hpp).
//
// Read me first:
// - The step Δ applies to NORMALIZED weights: a weight w with normalization scale s (the Chunker's
//   fp16 scale of its column or row, or 1) gets symbol round(w / (Δ s)) (nearest integer, halves
//   away from zero, no dead zone) and decodes to symbol * (Δ s), the product Δ s taken in float
//   exactly as the decoder takes it.
// - The rate is the empirical entropy of all symbols of the matrix (bits per weight, the ideal
//   code length under the matrix's own histogram). The real bytes are written by the rANS coder
//   with a CdfTable built from that histogram: SymbolHistogram::to_cdf_table() is the link.
// - step_for_target_bits() bisects Δ (geometrically) on the entropy of the symbols of plain
//   rounding. LDLQ's feedback changes the symbols a little (typically a few hundredths of a bit per
//   weight more), so measure entropy_bits_per_weight() after compression for the true rate.
#pragma once

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdint>
#include <span>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/cdf_table.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/quantizer_concept.hpp"

namespace nwc {

/// Counts of the integers offset, offset + 1, ..., offset + counts.size() - 1.
struct SymbolHistogram {
    std::int32_t offset = 0;
    std::vector<std::uint64_t> counts;

    std::uint64_t total() const noexcept {
        std::uint64_t sum = 0;
        for (std::uint64_t count : counts) sum += count;
        return sum;
    }
    /// Empirical entropy in bits per symbol: -sum p log2 p.
    double entropy_bits() const noexcept {
        const double all = double(total());
        double bits = 0.0;
        for (std::uint64_t count : counts)
            if (count != 0) bits -= double(count) / all * std::log2(double(count) / all);
        return bits;
    }
    /// A CdfTable for the rANS coder: the support is the histogram's range, narrowed (to the window
    /// of 2^(precision - 1) - 1 values holding the most symbols) if it has more values than that;
    /// symbols outside go through the escape bin, whose probability is the mass outside the window
    /// (at least `escape_probability`). Every bin gets a frequency >= 1 (CdfTable's rule).
    CdfTable to_cdf_table(int precision = 16, double escape_probability = 0.0) const {
        require(!counts.empty() && total() > 0, errc::invalid_argument, "SymbolHistogram::to_cdf_table: empty histogram");
        require(precision >= CdfTable::min_precision && precision <= CdfTable::max_precision, errc::invalid_argument,
                "SymbolHistogram::to_cdf_table: precision ", precision, " is outside [", CdfTable::min_precision, ", ", CdfTable::max_precision, "]");
        const std::size_t window = std::min(counts.size(), (std::size_t(1) << (precision - 1)) - 1);
        std::size_t best_start = 0;
        std::uint64_t inside = 0, best_inside = 0;
        for (std::size_t i = 0; i < counts.size(); ++i) {  // sliding window; the first best wins
            inside += counts[i];
            if (i >= window) inside -= counts[i - window];
            if (i + 1 >= window && inside > best_inside) {
                best_inside = inside;
                best_start = i + 1 - window;
            }
        }
        std::vector<double> probabilities(window);
        for (std::size_t i = 0; i < window; ++i) probabilities[i] = double(counts[best_start + i]);
        const double outside = double(total() - best_inside);
        return CdfTable::from_probabilities(offset + std::int32_t(best_start), probabilities,
                                            std::max(outside, escape_probability * double(total())), precision);
    }
};

namespace detail {
/// Widest symbol range histogram_of counts densely (2^24 u64 counts, 128 MiB); a wider one means a step
/// far too small for the weights.
inline constexpr std::int64_t max_symbol_span = std::int64_t(1) << 24;

/// Dense histogram of symbols; errc::limit if they span more than max_symbol_span values.
inline SymbolHistogram histogram_of(std::span<const std::int32_t> symbols) {
    SymbolHistogram histogram;
    if (symbols.empty()) return histogram;
    const auto [low, high] = std::minmax_element(symbols.begin(), symbols.end());
    const std::int64_t span = std::int64_t(*high) - *low + 1;
    require(span <= max_symbol_span, errc::limit, "ECSQ: symbols span ", span, " values (", *low, " .. ", *high, "), more than ",
            max_symbol_span, ": the step is too small");
    histogram.offset = *low;
    histogram.counts.assign(std::size_t(span), 0);
    for (std::int32_t symbol : symbols) ++histogram.counts[std::size_t(symbol - *low)];
    return histogram;
}

/// round(value / step) with a range check (symbols stay far inside int32).
/// histogram_of() of symbols that arrive one by one (a streamed tensor's), without holding them:
/// the counts grow geometrically to the range seen so far; past max_symbol_span only the range is
/// followed, so that finish() fails with histogram_of's message, range included.
class StreamedHistogram {
public:
    void add(std::int32_t symbol) {
        m_low = std::min(m_low, symbol), m_high = std::max(m_high, symbol);
        if (!m_counting) return;
        if (std::int64_t(m_high) - m_low >= max_symbol_span) {
            m_counting = false;
            m_counts = {};
            return;
        }
        const std::int64_t size = std::int64_t(m_counts.size());
        if (symbol < m_base || symbol >= m_base + size) grow(symbol, size);
        ++m_counts[std::size_t(symbol - m_base)];
    }
    SymbolHistogram finish() && {
        SymbolHistogram histogram;
        if (m_low > m_high) return histogram;  // no symbols
        const std::int64_t span = std::int64_t(m_high) - m_low + 1;
        require(span <= max_symbol_span, errc::limit, "ECSQ: symbols span ", span, " values (", m_low, " .. ", m_high, "), more than ",
                max_symbol_span, ": the step is too small");
        histogram.offset = m_low;
        histogram.counts.assign(m_counts.begin() + (m_low - m_base), m_counts.begin() + (m_high - m_base + 1));
        return histogram;
    }

private:
    // A window covering [low, high] with the current size again as room on the side that grew,
    // never wider than the largest span allows.
    void grow(std::int32_t symbol, std::int64_t size) {
        std::int64_t first = size == 0 ? symbol : std::min<std::int64_t>(m_base, m_low);
        std::int64_t end = size == 0 ? std::int64_t(symbol) + 1 : std::max<std::int64_t>(m_base + size, std::int64_t(m_high) + 1);
        if (size > 0 && symbol < m_base) first -= size;
        if (size > 0 && symbol >= m_base + size) end += size;
        first = std::max(first, std::int64_t(m_high) + 1 - max_symbol_span);
        end = std::min(end, std::int64_t(m_low) + max_symbol_span);
        std::vector<std::uint64_t> counts(std::size_t(end - first), 0);
        // Counted symbols lie in [low, high], inside both windows; only empty room is dropped.
        const std::int64_t from = std::max(m_base, first), to = std::min(m_base + size, end);
        if (to > from) std::copy(m_counts.begin() + (from - m_base), m_counts.begin() + (to - m_base), counts.begin() + (from - first));
        m_counts = std::move(counts);
        m_base = first;
    }

    std::int32_t m_low = INT32_MAX, m_high = INT32_MIN;
    std::int64_t m_base = 0;  // m_counts[i] counts symbol m_base + i
    std::vector<std::uint64_t> m_counts;
    bool m_counting = true;
};

inline std::int32_t ecsq_symbol(float value, float step) {
    const float ratio = value / step;
    require(std::fabs(ratio) < 0x1.0p30f, errc::invalid_argument, "ECSQ: value ", value, " / step ", step, " does not fit a symbol");
    // std::round (half away from zero) without its library call: ratio +- 0.5 is exact in double
    // for every |ratio| >= 2^-29, and below that the sum stays inside (-1, 1); truncation finishes it.
    return std::int32_t(double(ratio) + std::copysign(0.5, double(ratio)));
}
}  // namespace detail

/// Options of EntropyCodedScalar.
struct EntropyCodedScalarOptions {
    float step = 0.25f;  ///< Δ on normalized weights
    NormalizationAxis axis = NormalizationAxis::per_column;
    std::vector<half> scales;  ///< normalization scales (one per column, row or tensor, see axis); empty = all 1
};

/// Uniform scalar quantizer whose symbols are entropy coded; a ColumnQuantizer for LDLQ.
class EntropyCodedScalar {
public:
    explicit EntropyCodedScalar(EntropyCodedScalarOptions options) : m_options(std::move(options)) {
        require(std::isfinite(m_options.step) && m_options.step > 0.0f, errc::invalid_argument, "ECSQ: step ", m_options.step,
                " must be finite and positive");
    }
    explicit EntropyCodedScalar(float step = 0.25f) : EntropyCodedScalar(EntropyCodedScalarOptions{step, NormalizationAxis::per_column, {}}) {}

    float step() const noexcept { return m_options.step; }
    const EntropyCodedScalarOptions& options() const noexcept { return m_options; }

    // --- the LDLQ quantizer concept (quantizer_concept.hpp) ---
    int column_group() const noexcept { return 1; }
    int row_group() const noexcept { return 1; }

    void reset(std::int64_t rows, std::int64_t cols) {
        const std::int64_t expected = scale_count(m_options.axis, rows, cols);
        require(m_options.scales.empty() || std::int64_t(m_options.scales.size()) == expected, errc::invalid_argument, "ECSQ: ",
                m_options.scales.size(), " scales for a ", rows, " x ", cols, " matrix (expected ", expected, ")");
        m_rows = rows;
        m_cols = cols;
        m_steps.assign(std::size_t(expected), m_options.step);
        for (std::size_t i = 0; i < m_options.scales.size(); ++i) m_steps[i] = m_options.step * to_float(m_options.scales[i]);
        m_symbols.assign(std::size_t(rows * cols), 0);
    }

    void begin_group(const BlockPosition&, ConstColumnBlock) {}

    void quantize_column(const BlockPosition& position, std::span<const float> column, std::span<float> reconstructed) {
        NWC_ASSERT(column.size() == reconstructed.size() && position.first_row + std::int64_t(column.size()) <= m_rows);
        const std::int64_t c = position.first_column;
        for (std::size_t i = 0; i < column.size(); ++i) {
            const std::int64_t row = position.first_row + std::int64_t(i);
            const float element_step = step_at(row, c);
            const std::int32_t symbol = detail::ecsq_symbol(column[i], element_step);
            m_symbols[std::size_t(row * m_cols + c)] = symbol;
            reconstructed[i] = float(symbol) * element_step;
        }
    }

    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        detail::quantize_block_by_columns(*this, position, block, reconstructed);
    }

    // --- direct use ---
    /// Plain rounding of a whole matrix (no error feedback); returns the reconstruction.
    Tensor<float> quantize(TensorView<const float> weights) {
        return detail::quantize_plain(*this, weights);
    }

    /// The decoder's reconstruction from the symbols, step and scales; bit-identical to quantize's.
    Tensor<float> dequantize() const {
        Tensor<float> result(Shape{m_rows, m_cols});
        for (std::int64_t r = 0; r < m_rows; ++r)
            for (std::int64_t c = 0; c < m_cols; ++c) result(r, c) = float(m_symbols[std::size_t(r * m_cols + c)]) * step_at(r, c);
        return result;
    }

    /// Symbols, row-major rows x cols.
    std::span<const std::int32_t> symbols() const noexcept { return m_symbols; }
    SymbolHistogram histogram() const { return detail::histogram_of(m_symbols); }
    /// The rate: empirical entropy of the symbols, bits per weight (side information excluded).
    double entropy_bits_per_weight() const { return m_symbols.empty() ? 0.0 : histogram().entropy_bits(); }

    /// Entropy (bits per value) of round(value / step) over `values`.
    static double empirical_entropy(std::span<const float> values, float step) {
        std::vector<std::int32_t> symbols(values.size());
        for (std::size_t i = 0; i < values.size(); ++i) symbols[i] = detail::ecsq_symbol(values[i], step);
        return detail::histogram_of(symbols).entropy_bits();
    }

    /// The step Δ at which plain rounding of `normalized_values` has an entropy of `target_bits`
    /// bits per value (at most that, to a relative step tolerance of 1e-5), by bisection on log Δ
    /// between max|v| 2^-20 and 4 max|v| (where every symbol is 0). Returns the smallest step tried
    /// if even that stays below the target, and 1 if all values are zero.
    static float step_for_target_bits(std::span<const float> normalized_values, double target_bits) {
        require(std::isfinite(target_bits) && target_bits > 0.0, errc::invalid_argument, "ECSQ: target of ", target_bits,
                " bits per weight must be positive");
        float largest = 0.0f;
        for (float value : normalized_values) {
            require(std::isfinite(value), errc::invalid_argument, "ECSQ: a value to quantize is not finite");
            largest = std::max(largest, std::fabs(value));
        }
        if (largest == 0.0f) return 1.0f;
        double low = double(largest) * 0x1.0p-20, high = double(largest) * 4.0;
        if (empirical_entropy(normalized_values, float(low)) <= target_bits) return float(low);
        while (high / low > 1.0 + 1e-5) {
            const double middle = std::sqrt(low * high);
            (empirical_entropy(normalized_values, float(middle)) > target_bits ? low : high) = middle;
        }
        return float(high);
    }

private:
    float step_at(std::int64_t row, std::int64_t col) const noexcept {
        return m_steps[std::size_t(scale_index(m_options.axis, row, col))];
    }

    EntropyCodedScalarOptions m_options;
    std::int64_t m_rows = 0, m_cols = 0;
    std::vector<float> m_steps;  // Δ s per column (or row), the float product the decoder uses
    std::vector<std::int32_t> m_symbols;
};

static_assert(ColumnQuantizer<EntropyCodedScalar>);

}  // namespace nwc
