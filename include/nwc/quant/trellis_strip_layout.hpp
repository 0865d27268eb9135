// How a matrix is laid out as trellis-coded streams (nwc::TrellisStripLayout): what the tcq
// method's encoder and decoder agree on (trellis_strips.hpp adds the LDLQ column quantizer).
//
// Read me first:
// - A context rANS stream codes value i of a segment on machine path (lane) i % 32, and every
//   lane's trellis path restarts at state 0 where a rANS segment starts (context_rans.hpp). The
//   layout makes each COLUMN one lane's path, continuing into the same lane's next column, so a
//   per-column (LDLQ) encoder can run the trellis down a column from the state where the lane's
//   previous column ended: columns are cut into strips of 32; a full strip is stored row by row
//   ((r, c) at strip base + 32 r + c % 32: column c is lane c % 32); the last strip, when the
//   column count is not a multiple of 32, is stored column by column (base + (c % 32) m + r: its
//   lanes take every 32nd row of a column, and each column still comes after the previous one on
//   every lane, which is all the per-column search needs).
// - Segments hold whole strips (strips_per_segment of them; the last may hold fewer): each is its
//   own context rANS stream, so it decodes alone. Inside a segment the rANS coder restarts its
//   lanes every restart_interval values (2^20: it keeps a segment of a tall matrix within the
//   decoder's allocation bound, at least one rANS segment per 2^20 weights).
#pragma once

#include <algorithm>
#include <cstdint>

#include "nwc/entropy/context_rans.hpp"

namespace nwc {

/// Where each weight of an m x n matrix sits in its trellis-coded segments (see the header comment).
struct TrellisStripLayout {
    static constexpr std::int64_t strip_width = std::int64_t(context_rans::path_count);
    /// Values between lane restarts inside a segment (the context rANS segment size).
    static constexpr std::uint32_t restart_interval = std::uint32_t(1) << 20;

    std::int64_t rows = 0, cols = 0;
    std::int64_t strips_per_segment = 1;

    /// Whole strips per segment of about `weights_per_segment` weights (at least one strip).
    static TrellisStripLayout for_matrix(std::int64_t rows, std::int64_t cols, std::int64_t weights_per_segment) {
        return {rows, cols, std::max<std::int64_t>(1, weights_per_segment / (strip_width * rows))};
    }

    std::int64_t strip_count() const noexcept { return (cols + strip_width - 1) / strip_width; }
    std::size_t segment_count() const noexcept { return std::size_t((strip_count() + strips_per_segment - 1) / strips_per_segment); }
    std::int64_t first_strip(std::size_t segment) const noexcept { return std::int64_t(segment) * strips_per_segment; }
    std::int64_t end_strip(std::size_t segment) const noexcept { return std::min(strip_count(), first_strip(segment) + strips_per_segment); }
    /// Columns of strip s.
    std::int64_t strip_columns(std::int64_t strip) const noexcept { return std::min(strip_width, cols - strip * strip_width); }
    /// Where segment k's values start in the whole tensor's stream, and how many it holds.
    std::int64_t segment_begin(std::size_t segment) const noexcept { return first_strip(segment) * strip_width * rows; }
    std::int64_t segment_weights(std::size_t segment) const noexcept {
        const std::int64_t last = end_strip(segment);
        return ((last - 1 - first_strip(segment)) * strip_width + strip_columns(last - 1)) * rows;
    }
    /// Position of (r, c) in the whole tensor's stream.
    std::int64_t position(std::int64_t r, std::int64_t c) const noexcept {
        const std::int64_t strip = c / strip_width, lane = c % strip_width, base = strip * strip_width * rows;
        return strip_columns(strip) == strip_width ? base + strip_width * r + lane : base + lane * rows + r;
    }

    /// Calls f(r, c, i) for every weight of segment k, i its index in the segment's stream, in stream order.
    template <class F>
    void for_each_in_segment(std::size_t segment, F&& f) const {
        std::int64_t i = 0;
        for (std::int64_t strip = first_strip(segment); strip < end_strip(segment); ++strip) {
            const std::int64_t first = strip * strip_width, width = strip_columns(strip);
            if (width == strip_width) {
                for (std::int64_t r = 0; r < rows; ++r)
                    for (std::int64_t c = first; c < first + width; ++c) f(r, c, i++);
            } else {
                for (std::int64_t c = first; c < first + width; ++c)
                    for (std::int64_t r = 0; r < rows; ++r) f(r, c, i++);
            }
        }
    }
};

}  // namespace nwc
