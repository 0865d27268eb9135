// nwc::LaneStateMachine: the per-lane finite-state machine that picks each symbol's table in a
// context-coded rANS stream (context_rans.hpp), and the constants of that stream's format.
//
// Read me first:
// - Each of the 32 paths of a segment (value i follows path i % 32) is in a state s (state 0 at the start of every segment).
//   Its next symbol is coded with table context(s); once the symbol m is known the lane moves to
//   next(s, m & 1). So the decoder knows the table of a lane's next symbol as soon as it has
//   decoded the lane's previous one: one table step per symbol, lanes still independent.
// - The value a symbol stands for is value_stride * m + addend(context): contexts may code
//   different cosets of a lattice with tables of the coset's own symbols. Trellis-coded
//   quantization (quant/trellis_quantizer.hpp) codes the grid index k = 2 m + union with the
//   union's table; stride 1 and addends 0 make the value the symbol itself.
// - The machine is integer data. A stream records the CRC-32C of its serialization, so decoding
//   with another machine is an error, never garbage.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/checksum.hpp"
#include "nwc/core/error.hpp"

namespace nwc {

/// A per-lane state machine: state -> context (table), (state, symbol parity) -> next state,
/// context -> the value map value = value_stride * symbol + addend.
class LaneStateMachine {
public:
    static constexpr std::uint32_t max_states = 4096;
    static constexpr std::uint32_t max_contexts = 4096;
    static constexpr std::int32_t max_value_stride = 1 << 16;

    LaneStateMachine() : LaneStateMachine({0}, {0, 0}, 1, {0}) {}

    /// contexts[s] is the table of state s; next[2 s + p] the state after a symbol of parity p;
    /// addends[c] the value offset of context c (one per context, so addends.size() is the
    /// context count). Throws nwc::error(invalid_argument) when sizes or indices do not fit.
    LaneStateMachine(std::vector<std::uint16_t> contexts, std::vector<std::uint16_t> next, std::int32_t value_stride,
                     std::vector<std::int32_t> addends)
        : m_contexts(std::move(contexts)), m_next(std::move(next)), m_value_stride(value_stride), m_addends(std::move(addends)) {
        const std::size_t states = m_contexts.size();
        require(states >= 1 && states <= max_states, errc::invalid_argument, "LaneStateMachine: ", states, " states outside [1, ", max_states, "]");
        require(m_next.size() == 2 * states, errc::invalid_argument, "LaneStateMachine: ", m_next.size(), " transitions for ", states,
                " states (expected 2 per state)");
        require(!m_addends.empty() && m_addends.size() <= max_contexts, errc::invalid_argument, "LaneStateMachine: ", m_addends.size(),
                " contexts outside [1, ", max_contexts, "]");
        require(m_value_stride >= 1 && m_value_stride <= max_value_stride, errc::invalid_argument, "LaneStateMachine: value stride ",
                m_value_stride, " outside [1, ", max_value_stride, "]");
        for (std::size_t s = 0; s < states; ++s)
            require(m_contexts[s] < m_addends.size(), errc::invalid_argument, "LaneStateMachine: state ", s, " uses context ", m_contexts[s], " of ",
                    m_addends.size());
        for (std::size_t t = 0; t < m_next.size(); ++t)
            require(m_next[t] < states, errc::invalid_argument, "LaneStateMachine: transition ", t, " leads to state ", m_next[t], " of ", states);
        ByteWriter writer;
        write(writer);
        m_checksum = crc32c(writer.bytes());
    }

    std::uint32_t state_count() const noexcept { return std::uint32_t(m_contexts.size()); }
    std::uint32_t context_count() const noexcept { return std::uint32_t(m_addends.size()); }
    std::uint32_t context(std::uint32_t state) const noexcept { return m_contexts[state]; }
    std::uint32_t next(std::uint32_t state, std::int32_t symbol) const noexcept { return m_next[2 * state + (std::uint32_t(symbol) & 1u)]; }
    std::int32_t value_stride() const noexcept { return m_value_stride; }
    std::int32_t addend(std::uint32_t context) const noexcept { return m_addends[context]; }
    std::span<const std::uint16_t> contexts() const noexcept { return m_contexts; }
    std::span<const std::uint16_t> transitions() const noexcept { return m_next; }
    std::span<const std::int32_t> addends() const noexcept { return m_addends; }
    /// CRC-32C of write()'s bytes: identifies the machine a stream was coded with.
    std::uint32_t checksum() const noexcept { return m_checksum; }

    /// Layout: u16 state count S, u16 context count C, i32 value stride, C x i32 addends, then per
    /// state u16 context, u16 next (parity 0), u16 next (parity 1).
    void write(ByteWriter& writer) const {
        writer.put_u16(std::uint16_t(state_count()));
        writer.put_u16(std::uint16_t(context_count()));
        writer.put_i32(m_value_stride);
        for (std::int32_t addend : m_addends) writer.put_i32(addend);
        for (std::size_t s = 0; s < m_contexts.size(); ++s) {
            writer.put_u16(m_contexts[s]);
            writer.put_u16(m_next[2 * s]);
            writer.put_u16(m_next[2 * s + 1]);
        }
    }
    /// Reads what write() wrote; throws nwc::error (truncated, corrupt) on anything else.
    static LaneStateMachine read(ByteReader& reader) {
        const std::size_t at = reader.offset();
        const std::uint32_t states = reader.get_u16(), contexts = reader.get_u16();
        const std::int32_t stride = reader.get_i32();
        require(states >= 1 && states <= max_states && contexts >= 1 && contexts <= max_contexts, errc::corrupt, reader.context(),
                ": lane state machine at offset ", at, " has ", states, " states and ", contexts, " contexts");
        std::vector<std::int32_t> addends = reader.get_array<std::int32_t>(contexts);
        const std::uint32_t state_total = states;
        const std::vector<std::uint16_t> table = reader.get_array<std::uint16_t>(3 * std::uint64_t(state_total));
        std::vector<std::uint16_t> state_contexts(state_total), next(2 * std::size_t(state_total));
        for (std::size_t s = 0; s < state_total; ++s) {
            state_contexts[s] = table[3 * s];
            next[2 * s] = table[3 * s + 1];
            next[2 * s + 1] = table[3 * s + 2];
        }
        try {
            return LaneStateMachine(std::move(state_contexts), std::move(next), stride, std::move(addends));
        } catch (const error& bad) {
            fail(errc::corrupt, reader.context(), ": lane state machine at offset ", at, ": ", bad.message());
        }
    }

    friend bool operator==(const LaneStateMachine& a, const LaneStateMachine& b) noexcept {
        return a.m_contexts == b.m_contexts && a.m_next == b.m_next && a.m_value_stride == b.m_value_stride && a.m_addends == b.m_addends;
    }

private:
    std::vector<std::uint16_t> m_contexts;
    std::vector<std::uint16_t> m_next;
    std::int32_t m_value_stride = 1;
    std::vector<std::int32_t> m_addends;
    std::uint32_t m_checksum = 0;
};

/// Constants of the context-coded rANS stream (docs/format/rans.md, section 3). Its segments are
/// laid out exactly like those of the plain rANS stream (rans_format.hpp); only the header differs.
namespace context_rans {
inline constexpr std::uint8_t version = 2;
/// Machine paths: value i of a segment follows path i % 32 (its machine state), whatever the
/// number of rANS lanes coding the segment. The trellis quantizer's Viterbi paths are these.
inline constexpr std::uint32_t path_count = 32;
}  // namespace context_rans

}  // namespace nwc
