// nwc::RoundToNearest: llama.cpp-style group quantization (Q4_0 / Q5_0 / Q8_0 and friends), as an
// LDLQ quantizer policy (see quantizer_concept.hpp). LDLQ + RoundToNearest is GPTQ.
//
// Read me first:
// - A group is G (32) consecutive weights of one ROW, i.e. along the input dimension: columns
//   [g G, (g + 1) G) of row r share one fp16 scale. So b bits cost b + 16 / G bits per weight
//   (Q4_0 4.5, Q5_0 5.5, Q8_0 8.5). A last group of a row may be shorter when G does not divide n.
// - RoundingScheme::signed_max is ggml's quantize_row_q4_0_ref / q5_0 generalized to b bits:
//   find the value `max` of largest magnitude (the first one on ties), d = max / -2^(b-1),
//   id = 1 / d (0 if d == 0), code = min(2^b - 1, (int)(x id + 2^(b-1) + 0.5)), scale = fp16(d).
//   Codes 0..2^b-1 decode to (code - 2^(b-1)) fp16(d); note that ggml quantizes with the UNROUNDED
//   d and dequantizes with the fp16 one, and so do we (bit-identical codes to ggml for b = 4, 5).
// - RoundingScheme::absmax is ggml's Q8_0 generalized: d = amax / (2^(b-1) - 1),
//   q = roundf(x id) in [-(2^(b-1) - 1), 2^(b-1) - 1], stored as code = q + 2^(b-1).
// - x * id is formed in double and rounded once to float, so a compiler that contracts x*id + c
//   into an FMA cannot change a code: the result equals ggml's reference (no FMA) bit for bit.
// - RoundingScheme::grid (nwc's own, what the pipeline writes by default): the scale is +- a value
//   of the quarter-octave grid (scale_grid.hpp), so a file stores it as a ~4-bit code and a sign
//   bit instead of 16 bits; codes 0..2^b-1 as for signed_max. For each sign, the grid values from
//   about 0.25 to 1.4 times the smallest |scale| that clips nothing are tried; the one with the
//   least squared error over the group is kept (ties: positive, then the smaller), so the coarse
//   grid costs little and clipping an outlier is allowed when it pays. The sign puts the extra
//   level (-2^(b-1)) on the side that needs it, as ggml's negative d does: without it the error
//   of stories260K's matrices was 6-21% higher at 2-5 bits, for 1 bit per group. Quantizing uses 1/float(scale) itself,
//   so a code's value is exactly what the search measured.
// - Under LDLQ the group's scale is fixed when its first column is reached (begin_group) from the
//   compensated values; later columns of the group may then fall outside [min, max] and are
//   clamped to the code range (ggml clamps only the top; the bottom cannot be reached there).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/quant/quantizer_concept.hpp"
#include "nwc/quant/rounding_scheme.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// Options of RoundToNearest.
struct RoundToNearestOptions {
    int bits = 4;         ///< b, 2..8
    int group_size = 32;  ///< G, weights of one row sharing a scale
    RoundingScheme scheme = RoundingScheme::signed_max;
};

namespace detail {
/// A group's stored scale and the (unrounded) inverse that quantizes, ggml's way.
struct RtnGroupScale {
    half scale;
    float inverse;
};

template <class Values>
RtnGroupScale rtn_group_scale(const Values& values, std::int64_t count, int bits, RoundingScheme scheme) {
    float amax = 0.0f, max = 0.0f;
    for (std::int64_t i = 0; i < count; ++i) {
        const float value = values(i);
        if (amax < std::fabs(value)) {  // strict: the first value of largest magnitude wins, as in ggml
            amax = std::fabs(value);
            max = value;
        }
    }
    const float d = scheme == RoundingScheme::signed_max ? max / -float(1 << (bits - 1)) : amax / float((1 << (bits - 1)) - 1);
    const half scale = to_half(d);
    require(is_finite(scale), errc::invalid_argument, "RoundToNearest: group scale ", d, " exceeds the fp16 range");
    return {scale, d != 0.0f ? 1.0f / d : 0.0f};
}

/// The code of one value (see the header comment for both schemes).
inline int rtn_code(float value, float inverse, int bits, RoundingScheme scheme) noexcept {
    const float scaled = float(double(value) * double(inverse));  // exact product, one rounding
    const int offset = 1 << (bits - 1);
    if (scheme == RoundingScheme::signed_max) {
        const float shifted = scaled + (float(offset) + 0.5f);
        return int(std::clamp(std::floor(shifted), 0.0f, float((1 << bits) - 1)));
    }
    return int(std::clamp(std::round(scaled), -float(offset - 1), float(offset - 1))) + offset;
}

/// RoundingScheme::grid: the grid scale of least squared error over the group, either sign
/// (header comment).
template <class Values>
RtnGroupScale rtn_grid_group_scale(const Values& values, std::int64_t count, int bits) {
    const int offset = 1 << (bits - 1);
    float highest = 0.0f, lowest = 0.0f;
    for (std::int64_t i = 0; i < count; ++i) {
        highest = std::max(highest, values(i));
        lowest = std::min(lowest, values(i));
    }
    require(std::isfinite(highest) && std::isfinite(lowest), errc::invalid_argument, "RoundToNearest: a group holds a non-finite value");
    RtnGroupScale best{scale_of_code(scale_code_lowest), 0.0f};
    double best_error = INFINITY;
    for (const bool negative : {false, true}) {
        // Levels run from -offset d to (offset - 1) d: with d < 0 the side of `offset` levels is the
        // positive one. The smallest |d| that clips nothing:
        const float up = negative ? -lowest : highest, down = negative ? highest : -lowest;
        const float unclipped = std::max(up / float(std::max(offset - 1, 1)), down / float(offset));
        const int start = scale_code(to_half(unclipped));
        for (int code = std::max(scale_code_lowest, start - 8); code <= std::min(scale_code_highest, start + 2); ++code) {
            const half scale{std::uint16_t(scale_of_code(code).bits | (negative ? half_sign_mask : 0))};
            const float step = to_float(scale), inverse = 1.0f / step;
            double error = 0.0;
            for (std::int64_t i = 0; i < count; ++i) {
                const float value = values(i);
                const float decoded = float(rtn_code(value, inverse, bits, RoundingScheme::signed_max) - offset) * step;
                error += double(value - decoded) * double(value - decoded);
            }
            if (error < best_error) best_error = error, best = {scale, inverse};
        }
    }
    return best;
}

}  // namespace detail

/// Round-to-nearest group quantizer with fp16 or grid group scales; a ColumnQuantizer for LDLQ.
class RoundToNearest {
public:
    /// Bits of a group's fp16 scale (signed_max, absmax; a grid scale's stored size depends on its
    /// neighbours', see method_rtn.hpp).
    static constexpr int scale_bits = 16;

    explicit RoundToNearest(RoundToNearestOptions options = {}) : m_options(options) {
        require(options.bits >= 2 && options.bits <= 8, errc::invalid_argument, "RoundToNearest: ", options.bits, " bits (2..8 are supported)");
        require(options.group_size >= 1 && options.group_size <= 65536, errc::invalid_argument, "RoundToNearest: group size ", options.group_size,
                " is outside [1, 65536]");
    }

    /// The llama.cpp formats: Q4_0 (4.5 bits/weight), Q5_0 (5.5), Q8_0 (8.5).
    static RoundToNearest q4_0() { return RoundToNearest({4, 32, RoundingScheme::signed_max}); }
    static RoundToNearest q5_0() { return RoundToNearest({5, 32, RoundingScheme::signed_max}); }
    static RoundToNearest q8_0() { return RoundToNearest({8, 32, RoundingScheme::absmax}); }

    const RoundToNearestOptions& options() const noexcept { return m_options; }
    int bits() const noexcept { return m_options.bits; }
    int group_size() const noexcept { return m_options.group_size; }
    /// Code bits plus the fp16 scale shared by a group: b + 16 / G.
    double bits_per_weight() const noexcept { return bits() + double(scale_bits) / group_size(); }
    /// Bits of the codes and scales of a rows x cols matrix, exact when G does not divide cols (a
    /// row's shorter last group has a scale of its own): Q4_0 stores 16 + 4 n bits per group of n.
    std::int64_t payload_bits(std::int64_t rows, std::int64_t cols) const noexcept {
        return rows * ((cols + group_size() - 1) / group_size() * scale_bits + cols * bits());
    }

    // --- the LDLQ quantizer concept (quantizer_concept.hpp) ---
    int column_group() const noexcept { return m_options.group_size; }
    int row_group() const noexcept { return 1; }

    void reset(std::int64_t rows, std::int64_t cols) {
        NWC_ASSERT(rows >= 0 && cols >= 0);
        m_rows = rows;
        m_cols = cols;
        m_groups_per_row = (cols + group_size() - 1) / group_size();
        m_codes.assign(std::size_t(rows * cols), std::uint8_t(1 << (bits() - 1)));
        m_scales.assign(std::size_t(rows * m_groups_per_row), half{});
        m_active_inverse.assign(std::size_t(rows), 0.0f);
        m_active_scale.assign(std::size_t(rows), 0.0f);
    }

    void begin_group(const BlockPosition& position, ConstColumnBlock group) {
        NWC_ASSERT(position.first_column % group_size() == 0 && position.first_row + group.rows() <= m_rows);
        NWC_ASSERT(group.cols() == std::min<std::int64_t>(group_size(), m_cols - position.first_column));
        const std::int64_t group_index = position.first_column / group_size();
        for (std::int64_t i = 0; i < group.rows(); ++i) {
            const auto row_values = [&](std::int64_t c) { return group(i, c); };
            const auto found = m_options.scheme == RoundingScheme::grid ? detail::rtn_grid_group_scale(row_values, group.cols(), bits())
                                                                         : detail::rtn_group_scale(row_values, group.cols(), bits(), m_options.scheme);
            const std::int64_t row = position.first_row + i;
            m_scales[std::size_t(row * m_groups_per_row + group_index)] = found.scale;
            m_active_inverse[std::size_t(row)] = found.inverse;
            m_active_scale[std::size_t(row)] = to_float(found.scale);
        }
    }

    void quantize_column(const BlockPosition& position, std::span<const float> column, std::span<float> reconstructed) {
        NWC_ASSERT(column.size() == reconstructed.size() && position.first_row + std::int64_t(column.size()) <= m_rows);
        const std::int64_t c = position.first_column;
        const int offset = 1 << (bits() - 1);
        for (std::size_t i = 0; i < column.size(); ++i) {
            const std::int64_t row = position.first_row + std::int64_t(i);
            const int code = detail::rtn_code(column[i], m_active_inverse[std::size_t(row)], bits(), code_scheme());
            m_codes[std::size_t(row * m_cols + c)] = std::uint8_t(code);
            reconstructed[i] = float(code - offset) * m_active_scale[std::size_t(row)];  // the decoder's value: (code - 2^(b-1)) x scale
        }
    }

    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        detail::quantize_block_by_columns(*this, position, block, reconstructed);
    }

    // --- direct use ---
    /// Plain round to nearest of a whole matrix (no error feedback); returns the reconstruction.
    Tensor<float> quantize(TensorView<const float> weights) {
        return detail::quantize_plain(*this, weights);
    }

    /// The decoder's reconstruction from codes and scales alone; bit-identical to what
    /// quantize / quantize_column returned.
    Tensor<float> dequantize() const {
        Tensor<float> result(Shape{m_rows, m_cols});
        const int offset = 1 << (bits() - 1);
        for (std::int64_t r = 0; r < m_rows; ++r)
            for (std::int64_t g = 0; g < m_groups_per_row; ++g) {
                const float group_scale = to_float(scale(r, g));  // the same product as the decoder's, hoisted
                for (std::int64_t c = g * group_size(); c < std::min<std::int64_t>((g + 1) * group_size(), m_cols); ++c)
                    result(r, c) = float(code(r, c) - offset) * group_scale;
            }
        return result;
    }

    std::int64_t rows() const noexcept { return m_rows; }
    std::int64_t cols() const noexcept { return m_cols; }
    std::int64_t groups_per_row() const noexcept { return m_groups_per_row; }
    /// Codes, row-major rows x cols, each in 0 .. 2^b - 1 (value = (code - 2^(b-1)) scale).
    std::span<const std::uint8_t> codes() const noexcept { return m_codes; }
    /// Scales, row-major rows x groups_per_row().
    std::span<const half> scales() const noexcept { return m_scales; }
    int code(std::int64_t row, std::int64_t col) const noexcept { return m_codes[std::size_t(row * m_cols + col)]; }
    half scale(std::int64_t row, std::int64_t group) const noexcept { return m_scales[std::size_t(row * m_groups_per_row + group)]; }

private:
    /// grid codes as signed_max does (all 2^b levels, round half up).
    RoundingScheme code_scheme() const noexcept { return m_options.scheme == RoundingScheme::grid ? RoundingScheme::signed_max : m_options.scheme; }

    RoundToNearestOptions m_options;
    std::int64_t m_rows = 0, m_cols = 0, m_groups_per_row = 0;
    std::vector<std::uint8_t> m_codes;
    std::vector<half> m_scales;
    std::vector<float> m_active_inverse;  // per row: the unrounded 1/d of the group being coded
    std::vector<float> m_active_scale;    // per row: float(fp16(d)) of the group being coded
};

static_assert(ColumnQuantizer<RoundToNearest>);

}  // namespace nwc
