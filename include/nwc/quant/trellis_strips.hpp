// How a matrix is laid out as trellis-coded streams (nwc::TrellisStripLayout), and the LDLQ
// quantizer policy that runs the trellis down each column (nwc::TrellisColumnQuantizer).
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
// - TrellisColumnQuantizer is a ColumnQuantizer (quantizer_concept.hpp) for LDLQCompensator. It
//   keeps each lane's trellis state between columns, so the compensator must hand it WHOLE
//   columns in column order (LDLQOptions::row_block >= rows: one row block, one thread).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/entropy/context_rans.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/quantizer_concept.hpp"
#include "nwc/quant/trellis_quantizer.hpp"

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

/// The LDLQ policy: one trellis path per lane, continued column after column (see the header comment).
class TrellisColumnQuantizer {
public:
    /// `steps`: Δ s per scale index of `axis` (the float products the decoder multiplies by).
    TrellisColumnQuantizer(const TrellisQuantizer& quantizer, const TrellisStripLayout& layout, std::span<const float> steps, NormalizationAxis axis)
        : m_quantizer(&quantizer), m_layout(layout), m_steps(steps), m_axis(axis), m_search(quantizer.trellis()) {}

    int column_group() const noexcept { return 1; }
    int row_group() const noexcept { return 1; }
    void reset(std::int64_t rows, std::int64_t cols) {
        require(rows == m_layout.rows && cols == m_layout.cols, errc::invalid_argument, "TrellisColumnQuantizer: a ", rows, " x ", cols,
                " matrix for a layout of ", m_layout.rows, " x ", m_layout.cols);
        m_symbols.assign(std::size_t(rows * cols), 0);
        m_lane_state.fill(0);
        m_lane_run.fill(-1);
    }
    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        detail::quantize_block_by_columns(*this, position, block, reconstructed);
    }
    void begin_group(const BlockPosition&, ConstColumnBlock) {}

    /// Codes column position.first_column (all rows): each lane's rows from the state its previous
    /// column ended in, or from 0 where the rANS coder restarts the lane.
    void quantize_column(const BlockPosition& position, std::span<const float> column, std::span<float> reconstructed) {
        require(position.first_row == 0 && std::int64_t(column.size()) == m_layout.rows, errc::invalid_argument,
                "TrellisColumnQuantizer: needs whole columns (LDLQ row block >= rows)");
        const std::int64_t c = position.first_column;
        // Runs: rows of one lane between two restarts, in row order (= stream order).
        for (auto& rows : m_lane_rows) rows.clear();
        for (std::int64_t r = 0; r < m_layout.rows; ++r) m_lane_rows[lane_of(r, c)].push_back(r);
        for (std::size_t lane = 0; lane < m_lane_rows.size(); ++lane) {
            const std::vector<std::int64_t>& rows = m_lane_rows[lane];
            for (std::size_t first = 0; first < rows.size();) {
                const std::int64_t run = run_of(rows[first], c);
                std::size_t last = first + 1;
                while (last < rows.size() && run_of(rows[last], c) == run) ++last;
                m_values.resize(last - first);
                m_run_symbols.resize(last - first);
                for (std::size_t k = first; k < last; ++k) m_values[k - first] = column[std::size_t(rows[k])] / step_at(rows[k], c);
                const std::uint32_t start = m_lane_run[lane] == run ? m_lane_state[lane] : 0u;
                m_lane_state[lane] = m_quantizer->quantize_sequence(m_values, start, m_run_symbols, m_search);
                m_lane_run[lane] = run;
                for (std::size_t k = first; k < last; ++k) {
                    const std::int64_t r = rows[k];
                    const std::int32_t symbol = m_run_symbols[k - first];
                    m_symbols[std::size_t(m_layout.position(r, c))] = symbol;
                    reconstructed[std::size_t(r)] = float(symbol) * step_at(r, c);
                }
                first = last;
            }
        }
    }

    /// The grid indices of the whole tensor's stream (segments one after another).
    std::span<const std::int32_t> symbols() const noexcept { return m_symbols; }

private:
    float step_at(std::int64_t r, std::int64_t c) const noexcept { return m_steps[std::size_t(scale_index(m_axis, r, c))]; }
    /// Offset of (r, c) in its segment's stream.
    std::int64_t local_position(std::int64_t r, std::int64_t c) const noexcept {
        const std::size_t segment = std::size_t(c / TrellisStripLayout::strip_width / m_layout.strips_per_segment);
        return m_layout.position(r, c) - m_layout.segment_begin(segment);
    }
    std::size_t lane_of(std::int64_t r, std::int64_t c) const noexcept { return std::size_t(local_position(r, c) % TrellisStripLayout::strip_width); }
    /// Where the lane's path of (r, c) last restarted: the stream position of its rANS segment's start.
    std::int64_t run_of(std::int64_t r, std::int64_t c) const noexcept {
        const std::int64_t local = local_position(r, c);
        return m_layout.position(r, c) - local % std::int64_t(TrellisStripLayout::restart_interval);
    }

    const TrellisQuantizer* m_quantizer;
    TrellisStripLayout m_layout;
    std::span<const float> m_steps;
    NormalizationAxis m_axis;
    TrellisSearch m_search;
    std::vector<std::int32_t> m_symbols;
    std::array<std::uint32_t, context_rans::path_count> m_lane_state{};
    std::array<std::int64_t, context_rans::path_count> m_lane_run{};
    std::array<std::vector<std::int64_t>, context_rans::path_count> m_lane_rows;
    std::vector<float> m_values;
    std::vector<std::int32_t> m_run_symbols;
};

static_assert(ColumnQuantizer<TrellisColumnQuantizer>);

}  // namespace nwc
