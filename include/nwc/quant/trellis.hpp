// nwc::Trellis and nwc::TrellisSearch: the Ungerboeck trellis of trellis-coded quantization (TCQ)
// and its Viterbi search under squared error + rate_weight * code length.
//
// Read me first:
// - Values are in GRID UNITS (the weight divided by the step Δ and its normalization scale); the
//   codebook is the integer grid split into 4 subsets D_j = {k : k ≡ j mod 4}. Each state allows one
//   UNION: even k (D0 ∪ D2) or odd k (D1 ∪ D3). Within it, bit 1 of k, (k >> 1) & 1, picks the
//   branch, hence the next state. So a grid index k is the whole symbol: its union is k & 1, its
//   table symbol k >> 1, and the decoder's reconstruction is k Δ s, exactly as for ECSQ.
// - The trellis is the systematic feedback encoder of the parity-check polynomials (h0, h1)
//   (Ungerboeck 1987, table I, one-dimensional codes), in controller form: a state is the last
//   ν outputs a(t-1..t-ν) of the feedback register; union(s) = parity(s & h1 >> 1) and
//   next(s, b) = (s << 1 | b ^ parity(s & h0 >> 1)) mod 2^ν. Because h1 has no tap at 0 or ν and
//   h0 taps both, the two branches leaving a state share its union, the two entering one come
//   from states s and s + 2^(ν-1) of the same union with different branch bits: the butterfly
//   (i, i + S/2) -> (2i, 2i + 1) that the SIMD search below steps through.
// - Granular gain measured here on a uniform source (plain TCQ, 10^5 samples): 0.99 dB at 4
//   states, 1.09 (8), 1.14 (16), 1.22 (32), 1.25 (64), 1.30 (128), 1.34 (256), of the 1.53 dB
//   of the sphere; docs/bench/trellis.md.
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/entropy/lane_state_machine.hpp"

namespace nwc {

/// The 2^ν-state Ungerboeck trellis over the four subsets of the integer grid.
class Trellis {
public:
    static constexpr int min_state_bits = 2;
    static constexpr int max_state_bits = 8;

    /// `states` = 2^ν, ν in [2, 8]. Throws nwc::error(invalid_argument) otherwise.
    explicit Trellis(int states = 8) {
        require(states >= (1 << min_state_bits) && states <= (1 << max_state_bits) && std::has_single_bit(unsigned(states)), errc::invalid_argument,
                "Trellis: ", states, " states (must be a power of two in [4, 256])");
        m_state_bits = std::countr_zero(unsigned(states));
        // Parity-check polynomials (octal) of Ungerboeck's one-dimensional codes, indexed by ν.
        static constexpr unsigned h0_of[] = {0, 0, 05, 013, 023, 045, 0103, 0235, 0515};
        static constexpr unsigned h1_of[] = {0, 0, 02, 04, 04, 010, 024, 0126, 0362};
        m_h0 = h0_of[m_state_bits];
        m_h1 = h1_of[m_state_bits];
        const unsigned count = unsigned(states), feedback = m_h0 >> 1, union_taps = m_h1 >> 1;
        m_unions.resize(count);
        m_next.resize(2 * std::size_t(count));
        for (unsigned s = 0; s < count; ++s) {
            m_unions[s] = std::uint8_t(std::popcount(s & union_taps) & 1);
            for (unsigned branch = 0; branch < 2; ++branch)
                m_next[2 * s + branch] = std::uint16_t(((s << 1) | (branch ^ (std::popcount(s & feedback) & 1u))) & (count - 1));
        }
    }

    int states() const noexcept { return 1 << m_state_bits; }
    int state_bits() const noexcept { return m_state_bits; }
    unsigned h0() const noexcept { return m_h0; }
    unsigned h1() const noexcept { return m_h1; }
    /// 0: the state allows even grid indices, 1: odd ones.
    unsigned union_of(unsigned state) const noexcept { return m_unions[state]; }
    /// The state after grid index k (k & 1 must be union_of(state)).
    unsigned next(unsigned state, std::int32_t k) const noexcept { return m_next[2 * state + ((std::uint32_t(k) >> 1) & 1u)]; }
    /// The state after branch bit `branch` (0 or 1).
    unsigned next_by_branch(unsigned state, unsigned branch) const noexcept { return m_next[2 * state + branch]; }

    /// The decoder's view, for context_rans: context = union, table symbol m = k >> 1, value
    /// k = 2 m + union, next state by the parity of m.
    LaneStateMachine lane_machine() const {
        std::vector<std::uint16_t> contexts(m_unions.begin(), m_unions.end());
        return LaneStateMachine(std::move(contexts), m_next, 2, {0, 1});
    }

private:
    int m_state_bits = 3;
    unsigned m_h0 = 013, m_h1 = 04;
    std::vector<std::uint8_t> m_unions;
    std::vector<std::uint16_t> m_next;
};

}  // namespace nwc
