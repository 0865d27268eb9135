// nwc::TrellisSearch: the Viterbi encoder of trellis-coded quantization, minimizing
//     sum_t (y_t - k_t)^2 + rate_weight * bits(k_t)
// over the paths of a Trellis from a given start state (free end), y in grid units, bits the code
// length of k_t >> 1 under the integer table of its union (nwc::TrellisRateModel).
//
// Read me first:
// - The branch metric depends only on the sample and the subset k mod 4, not on the state, because
//   tables are per union. So each sample costs 4 searches (trellis_branches: the nearest point of
//   each subset, then outward while a point could still win: exact, not a heuristic) and one
//   add-compare-select over the butterflies (i, i + S/2) -> (2i, 2i + 1).
// - The add-compare-select runs on xsimd batches when S/2 fills a register (32+ states on AVX-512,
//   16+ on AVX2), else in scalar code; both do the same float additions and comparisons in the
//   same order, so they pick the same path (ties go to the predecessor i, then the lower end state).
// - Decisions are one bit per state and sample (32 bytes per sample at 256 states); path costs are
//   renormalized every 64 samples so float keeps its precision on long sequences.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>
#if defined(__SSE2__) || defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/quant/trellis.hpp"

namespace nwc {

/// What the search charges for a grid index k: rate_weight * (code length of k >> 1 under the
/// table of union k & 1), as floats taken from the integer frequencies the coder will use.
class TrellisRateModel {
public:
    /// No rate term: the search finds the nearest path (plain TCQ).
    TrellisRateModel() = default;

    /// `tables` holds 2 channels (union 0, union 1); rate_weight >= 0 multiplies bits.
    TrellisRateModel(const CdfTableSet& tables, double rate_weight) : m_weight(float(rate_weight)) {
        require(tables.channel_count() == 2, errc::invalid_argument, "TrellisRateModel: ", tables.channel_count(), " tables (expected one per union)");
        require(std::isfinite(rate_weight) && rate_weight >= 0.0, errc::invalid_argument, "TrellisRateModel: rate weight ", rate_weight);
        for (unsigned u = 0; u < 2; ++u) {
            const CdfTable& table = tables[u];
            m_tables[u] = table;
            m_low[u] = table.offset();
            m_costs[u].resize(table.support());
            float cheapest = std::numeric_limits<float>::infinity();
            for (std::uint32_t bin = 0; bin < table.support(); ++bin) {
                m_costs[u][bin] = float(rate_weight * table.ideal_bits(std::int32_t(table.offset() + std::int64_t(bin))));
                cheapest = std::min(cheapest, m_costs[u][bin]);
            }
            m_escape_bin_cost[u] = float(rate_weight * (double(table.precision()) - std::log2(double(table.frequencies()[table.escape_bin()]))));
            m_min_cost[u] = std::min(cheapest, m_escape_bin_cost[u]);  // an escape costs at least its bin
        }
    }

    /// rate_weight * bits of table symbol m in union u.
    float cost(unsigned u, std::int32_t m) const noexcept {
        const std::uint64_t bin = std::uint64_t(std::int64_t(m) - m_low[u]);
        if (NWC_LIKELY(bin < m_costs[u].size())) return m_costs[u][bin];
        if (m_costs[u].empty()) return 0.0f;
        const CdfTable& table = m_tables[u];
        return m_escape_bin_cost[u] + m_weight * float(detail::escape_code_bits(detail::escape_code(m, table.offset(), table.support())));
    }
    /// A lower bound of cost(u, m) over all m.
    float min_cost(unsigned u) const noexcept { return m_min_cost[u]; }
    float rate_weight() const noexcept { return m_weight; }

private:
    float m_weight = 0.0f;
    CdfTable m_tables[2];
    std::int32_t m_low[2] = {0, 0};
    std::vector<float> m_costs[2];
    float m_escape_bin_cost[2] = {0.0f, 0.0f};
    float m_min_cost[2] = {0.0f, 0.0f};
};

namespace detail {

/// The best grid index of each subset j = k mod 4 for one sample, and its cost.
struct TrellisBranches {
    float cost[4];
    std::int32_t k[4];
};

inline void trellis_branches(float y, const TrellisRateModel& rates, TrellisBranches& out) noexcept {
    // floor(y) - 1 .. floor(y) + 2 hold one point of each subset, each its subset's nearest to y.
    const std::int32_t base = std::int32_t(std::floor(y)) - 1;
    for (std::int32_t d = 0; d < 4; ++d) {
        const std::int32_t nearest = base + d;
        const unsigned subset = std::uint32_t(nearest) & 3u, u = subset & 1u;
        const float distance = y - float(nearest);
        float best = distance * distance + rates.cost(u, nearest >> 1);
        std::int32_t best_k = nearest;
        // Farther points of the subset can only win on rate: stop once distance alone loses.
        const float bound = rates.min_cost(u);
        for (std::int32_t direction = -4; direction <= 4; direction += 8)
            for (std::int32_t k = nearest + direction;; k += direction) {
                const float away = y - float(k), squared = away * away;
                if (squared >= best - bound) break;
                const float candidate = squared + rates.cost(u, k >> 1);
                if (candidate < best) best = candidate, best_k = k;
            }
        out.cost[subset] = best;
        out.k[subset] = best_k;
    }
}

namespace trellis_simd {
template <class Arch>
using Floats = xsimd::batch<float, Arch>;
template <class Arch>
using Mask = xsimd::batch_bool<float, Arch>;

/// Stores even[0], odd[0], even[1], odd[1], ... (2 registers) at `out`.
template <class Arch>
NWC_FORCE_INLINE void store_interleaved(const Floats<Arch>& even, const Floats<Arch>& odd, float* out, xsimd::generic) noexcept {
    constexpr std::size_t width = Floats<Arch>::size;
    alignas(64) float e[width], o[width];
    even.store_aligned(e);
    odd.store_aligned(o);
    for (std::size_t i = 0; i < width; ++i) out[2 * i] = e[i], out[2 * i + 1] = o[i];
}
template <class Arch>
NWC_FORCE_INLINE std::uint64_t bits_of(const Mask<Arch>& mask, xsimd::generic) noexcept {
    alignas(64) bool flags[Floats<Arch>::size];
    mask.store_aligned(flags);
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < Floats<Arch>::size; ++i) bits |= std::uint64_t(flags[i]) << i;
    return bits;
}
#if defined(__SSE2__)
template <class Arch>
NWC_FORCE_INLINE void store_interleaved(const Floats<Arch>& even, const Floats<Arch>& odd, float* out, xsimd::sse2) noexcept {
    _mm_storeu_ps(out, _mm_unpacklo_ps(even, odd));
    _mm_storeu_ps(out + 4, _mm_unpackhi_ps(even, odd));
}
template <class Arch>
NWC_FORCE_INLINE std::uint64_t bits_of(const Mask<Arch>& mask, xsimd::sse2) noexcept {
    return std::uint64_t(_mm_movemask_ps(mask));
}
#endif
#if defined(__AVX__)
template <class Arch>
NWC_FORCE_INLINE void store_interleaved(const Floats<Arch>& even, const Floats<Arch>& odd, float* out, xsimd::avx) noexcept {
    // unpack works inside 128-bit halves; the lane permute puts the halves in order.
    const __m256 low = _mm256_unpacklo_ps(even, odd), high = _mm256_unpackhi_ps(even, odd);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(low, high, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(low, high, 0x31));
}
template <class Arch>
NWC_FORCE_INLINE std::uint64_t bits_of(const Mask<Arch>& mask, xsimd::avx) noexcept {
    return std::uint64_t(_mm256_movemask_ps(mask));
}
#endif
#if defined(__AVX512F__)
template <class Arch>
NWC_FORCE_INLINE void store_interleaved(const Floats<Arch>& even, const Floats<Arch>& odd, float* out, xsimd::avx512f) noexcept {
    const __m512i low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i high = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_storeu_ps(out, _mm512_permutex2var_ps(even, low, odd));
    _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(even, high, odd));
}
template <class Arch>
NWC_FORCE_INLINE std::uint64_t bits_of(const Mask<Arch>& mask, xsimd::avx512f) noexcept {
    return std::uint64_t(__mmask16(mask));
}
#endif
}  // namespace trellis_simd

}  // namespace detail

/// The Viterbi search over one Trellis. Holds scratch buffers: one object per thread.
class TrellisSearch {
public:
    explicit TrellisSearch(const Trellis& trellis) : m_trellis(trellis) {
        const unsigned half = unsigned(trellis.states()) / 2, feedback = trellis.h0() >> 1;
        m_half_words = (half + 63) / 64;
        m_pair_union.resize(half);
        m_pair_parity.resize(half);
        for (unsigned i = 0; i < half; ++i) {
            m_pair_union[i] = std::uint8_t(trellis.union_of(i));
            m_pair_parity[i] = std::uint8_t(std::popcount(i & feedback) & 1);
        }
        m_costs.resize(std::size_t(trellis.states()));
        m_next_costs.resize(std::size_t(trellis.states()));
    }

    const Trellis& trellis() const noexcept { return m_trellis; }

    /// Writes the grid indices of the cheapest path from `start_state` over `values` (grid units,
    /// finite, |y| < 2^22) into `symbols` (same size) and returns the path's end state.
    std::uint32_t run(std::span<const float> values, std::uint32_t start_state, const TrellisRateModel& rates, std::span<std::int32_t> symbols) {
        NWC_ASSERT(values.size() == symbols.size() && start_state < std::uint32_t(m_trellis.states()));
        const std::size_t count = values.size(), states = std::size_t(m_trellis.states());
        if (count == 0) return start_state;
        if (m_branches.size() < count) m_branches.resize(count);
        if (m_decisions.size() < count * 2 * m_half_words) m_decisions.resize(count * 2 * m_half_words);
        for (std::size_t t = 0; t < count; ++t) {
            require(std::fabs(values[t]) < 0x1.0p22f, errc::invalid_argument, "TrellisSearch: value ", values[t], " at ", t,
                    " is not finite or too large for the grid (|y| < 2^22)");
            detail::trellis_branches(values[t], rates, m_branches[t]);
        }
        std::fill(m_costs.begin(), m_costs.end(), unreachable);
        m_costs[start_state] = 0.0f;
        if constexpr (!std::is_same_v<xsimd::default_arch, xsimd::unavailable>) {
            if (states / 2 >= detail::trellis_simd::Floats<xsimd::default_arch>::size)
                forward_simd<xsimd::default_arch>(count);
            else
                forward_scalar(count);
        } else {
            forward_scalar(count);
        }
        const std::uint32_t end_state = std::uint32_t(std::min_element(m_costs.begin(), m_costs.end()) - m_costs.begin());
        const unsigned feedback = m_trellis.h0() >> 1, top = unsigned(states / 2);
        std::uint32_t state = end_state;
        for (std::size_t t = count; t-- > 0;) {
            const std::uint64_t* words = m_decisions.data() + t * 2 * m_half_words + (state & 1u) * m_half_words;
            const unsigned pair = state >> 1;
            const unsigned previous = pair | (unsigned((words[pair / 64] >> (pair % 64)) & 1u) ? top : 0u);
            const unsigned branch = (state & 1u) ^ unsigned(std::popcount(previous & feedback) & 1);
            symbols[t] = m_branches[t].k[m_trellis.union_of(previous) + 2 * branch];
            state = previous;
        }
        NWC_ASSERT(state == start_state);
        return end_state;
    }

    /// Forward passes through the scalar and SIMD add-compare-select, for tests (both must agree).
    void force_scalar(bool scalar) noexcept { m_force_scalar = scalar; }

private:
    static constexpr float unreachable = 1e30f;
    static constexpr std::size_t renormalize_every = 64;

    /// Subtracts the smallest cost (float precision on long sequences).
    void renormalize() noexcept {
        const float lowest = *std::min_element(m_costs.begin(), m_costs.end());
        for (float& cost : m_costs) cost -= lowest;
    }

    void forward_scalar(std::size_t count) {
        const std::size_t half = m_pair_union.size();
        for (std::size_t t = 0; t < count; ++t) {
            const float* metric = m_branches[t].cost;
            std::uint64_t* even_words = m_decisions.data() + t * 2 * m_half_words;
            std::uint64_t* odd_words = even_words + m_half_words;
            std::fill(even_words, even_words + 2 * m_half_words, 0);
            for (std::size_t i = 0; i < half; ++i) {
                const unsigned u = m_pair_union[i], parity = m_pair_parity[i];
                const float a = metric[u + 2 * parity], b = metric[u + 2 * (parity ^ 1u)];
                const float low = m_costs[i], high = m_costs[i + half];
                const float e0 = low + a, e1 = high + b, o0 = low + b, o1 = high + a;
                const bool take_even = e1 < e0, take_odd = o1 < o0;
                m_next_costs[2 * i] = take_even ? e1 : e0;
                m_next_costs[2 * i + 1] = take_odd ? o1 : o0;
                even_words[i / 64] |= std::uint64_t(take_even) << (i % 64);
                odd_words[i / 64] |= std::uint64_t(take_odd) << (i % 64);
            }
            m_costs.swap(m_next_costs);
            if (t % renormalize_every == renormalize_every - 1) renormalize();
        }
    }

    template <class Arch>
    void forward_simd(std::size_t count) {
        if (m_force_scalar) return forward_scalar(count);
        using F = detail::trellis_simd::Floats<Arch>;
        using M = detail::trellis_simd::Mask<Arch>;
        constexpr std::size_t width = F::size;
        const std::size_t half = m_pair_union.size(), blocks = half / width;
        std::vector<M> union_masks, parity_masks;
        for (std::size_t block = 0; block < blocks; ++block) {
            alignas(64) float unions[width], parities[width];
            for (std::size_t lane = 0; lane < width; ++lane) {
                unions[lane] = float(m_pair_union[block * width + lane]);
                parities[lane] = float(m_pair_parity[block * width + lane]);
            }
            union_masks.push_back(F::load_aligned(unions) != F(0.0f));
            parity_masks.push_back(F::load_aligned(parities) != F(0.0f));
        }
        for (std::size_t t = 0; t < count; ++t) {
            const float* metric = m_branches[t].cost;
            const F m0(metric[0]), m1(metric[1]), m2(metric[2]), m3(metric[3]);
            std::uint64_t* even_words = m_decisions.data() + t * 2 * m_half_words;
            std::uint64_t* odd_words = even_words + m_half_words;
            std::fill(even_words, even_words + 2 * m_half_words, 0);
            for (std::size_t block = 0; block < blocks; ++block) {
                const std::size_t i = block * width;
                const M& u = union_masks[block];
                const M& parity = parity_masks[block];
                const F a = xsimd::select(u, xsimd::select(parity, m3, m1), xsimd::select(parity, m2, m0));
                const F b = xsimd::select(u, xsimd::select(parity, m1, m3), xsimd::select(parity, m0, m2));
                const F low = F::load_unaligned(m_costs.data() + i), high = F::load_unaligned(m_costs.data() + half + i);
                const F e0 = low + a, e1 = high + b, o0 = low + b, o1 = high + a;
                const M take_even = e1 < e0, take_odd = o1 < o0;
                detail::trellis_simd::store_interleaved<Arch>(xsimd::select(take_even, e1, e0), xsimd::select(take_odd, o1, o0),
                                                              m_next_costs.data() + 2 * i, Arch{});
                even_words[i / 64] |= detail::trellis_simd::bits_of<Arch>(take_even, Arch{}) << (i % 64);
                odd_words[i / 64] |= detail::trellis_simd::bits_of<Arch>(take_odd, Arch{}) << (i % 64);
            }
            m_costs.swap(m_next_costs);
            if (t % renormalize_every == renormalize_every - 1) renormalize();
        }
    }

    Trellis m_trellis;
    std::size_t m_half_words = 1;
    std::vector<std::uint8_t> m_pair_union, m_pair_parity;
    std::vector<float> m_costs, m_next_costs;
    std::vector<detail::TrellisBranches> m_branches;
    std::vector<std::uint64_t> m_decisions;
    bool m_force_scalar = false;
};

}  // namespace nwc
