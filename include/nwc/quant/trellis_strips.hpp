// The LDLQ quantizer policy that runs the trellis down each column (nwc::TrellisColumnQuantizer)
// over the strips of nwc::TrellisStripLayout (trellis_strip_layout.hpp: the stream layout).
//
// Read me first:
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
#include "nwc/quant/trellis_strip_layout.hpp"
#include "nwc/quant/trellis_quantizer.hpp"

namespace nwc {

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
