// The context-coded rANS stream: the machine bound to its tables, the segment encoder and the
// reference decoder. The public API is context_rans.hpp.
//
// Read me first (the plain coder's rans_lanes.hpp explains the rANS step and its lanes; only the
// table choice differs here):
// - Value i of a segment follows machine path i % 32 (context_rans::path_count): its table is the
//   context of that path's LaneStateMachine state. Every path starts each segment in state 0, so
//   segments still decode alone.
// - The rANS lanes are those of the plain coder (lane i % lanes, lanes = rans::lane_count_for(n),
//   starting at state 1 with coded tails) and so are the segment bytes (varints, lane block,
//   words, escape bits): rans_encode_lanes and RansLaneDecoder::decode_bin do the rANS work with
//   the table this file picks. Paths and lanes are independent: a 1-lane segment still has 32 paths.
// - ContextDecodeTables binds a machine to a CdfTableSet once: the transition of each (state,
//   parity of the decoded BIN) and each context's value offset. Everything is integer data
//   derived from the stored tables.
#pragma once

#include <algorithm>
#include <bit>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/lane_state_machine.hpp"
#include "nwc/entropy/rans_format.hpp"
#include "nwc/entropy/rans_lanes.hpp"

namespace nwc::detail {

/// A LaneStateMachine bound to the CdfTableSet its contexts index (context c = channel c).
struct ContextDecodeTables {
    const RansDecodeTables* rans = nullptr;
    std::int32_t value_stride = 1;
    std::vector<std::uint16_t> state_contexts;       ///< per state
    std::vector<std::uint16_t> symbol_transitions;   ///< [2 s + (symbol & 1)] -> next state
    std::vector<std::uint32_t> bin_transitions;      ///< [2 s + (bin & 1)] -> next state | context(next) << 16
    std::vector<std::int32_t> value_offsets;         ///< per context: stride * table offset + addend
    std::vector<std::int32_t> addends;               ///< per context

    /// Throws nwc::error(invalid_argument) when the machine has another context count than the
    /// tables have channels, or when a regular bin's value would leave int32.
    ContextDecodeTables(const CdfTableSet& tables, const LaneStateMachine& machine)
        : rans(&tables.decode_tables()), value_stride(machine.value_stride()) {
        require(!tables.empty() && machine.context_count() == tables.channel_count(), errc::invalid_argument, "context rANS: the machine has ",
                machine.context_count(), " contexts but there are ", tables.channel_count(), " tables");
        const std::uint32_t states = machine.state_count();
        state_contexts.assign(machine.contexts().begin(), machine.contexts().end());
        symbol_transitions.assign(machine.transitions().begin(), machine.transitions().end());
        addends.assign(machine.addends().begin(), machine.addends().end());
        value_offsets.resize(addends.size());
        for (std::size_t c = 0; c < addends.size(); ++c) {
            const std::int64_t low = std::int64_t(value_stride) * tables[c].offset() + addends[c];
            const std::int64_t high = low + std::int64_t(value_stride) * (std::int64_t(tables[c].support()) - 1);
            require(low >= std::numeric_limits<std::int32_t>::min() && high <= std::numeric_limits<std::int32_t>::max(), errc::invalid_argument,
                    "context rANS: context ", c, " maps its ", tables[c].support(), " symbols from ", tables[c].offset(), " to values ", low, " .. ",
                    high, ", outside int32");
            value_offsets[c] = std::int32_t(low);
        }
        bin_transitions.resize(2 * std::size_t(states));
        for (std::uint32_t s = 0; s < states; ++s)
            for (std::uint32_t parity = 0; parity < 2; ++parity) {
                // A bin's symbol is offset + bin: its parity is the bin's, flipped by an odd offset.
                const std::uint32_t symbol_parity = parity ^ (std::uint32_t(tables[state_contexts[s]].offset()) & 1u);
                const std::uint32_t next = symbol_transitions[2 * s + symbol_parity];
                bin_transitions[2 * s + parity] = next | (std::uint32_t(state_contexts[next]) << 16);
            }
    }

    /// The value of regular bin `bin` of context c (in range by construction).
    std::int32_t value_of_bin(std::uint32_t context, std::uint32_t bin) const noexcept {
        return std::int32_t(std::uint32_t(value_offsets[context]) + std::uint32_t(value_stride) * bin);
    }
};

/// Reusable per-thread buffers of the segment encoder.
struct ContextEncodeScratch {
    std::vector<std::uint16_t> contexts;
    std::vector<std::int32_t> symbols;
    std::vector<std::uint16_t> words;
};

/// Encodes one segment of values (paths start in state 0) and appends its bytes to `out` in the
/// plain stream's segment layout. Throws nwc::error(invalid_argument) for a value that is not on
/// its context's coset (value - addend not a multiple of the stride), naming its stream index.
inline void context_encode_segment(const ContextDecodeTables& bound, const LaneStateMachine& machine, std::span<const std::int32_t> values,
                                   std::uint64_t first_index, std::vector<std::uint8_t>& out) {
    const RansDecodeTables& tables = *bound.rans;
    thread_local ContextEncodeScratch reused;
    ContextEncodeScratch large;
    ContextEncodeScratch& scratch = values.size() <= (std::size_t(1) << 20) ? reused : large;
    if (scratch.symbols.size() < values.size()) {
        scratch.contexts.resize(values.size());
        scratch.symbols.resize(values.size());
    }
    std::uint16_t* const contexts = scratch.contexts.data();
    std::int32_t* const symbols = scratch.symbols.data();

    // The machine forwards, path by path: each value's context and table symbol.
    std::uint32_t path_states[context_rans::path_count] = {};
    const std::int64_t stride = bound.value_stride;
    // A power-of-two stride (2 for trellis-coded quantization) divides by an arithmetic shift.
    const int stride_shift = std::has_single_bit(std::uint64_t(stride)) ? std::countr_zero(std::uint64_t(stride)) : -1;
    for (std::size_t i = 0; i < values.size(); ++i) {
        std::uint32_t& state = path_states[i % context_rans::path_count];
        const std::uint32_t context = bound.state_contexts[state];
        const std::int64_t offset_value = std::int64_t(values[i]) - bound.addends[context];
        const std::int64_t symbol = stride_shift >= 0    ? offset_value >> stride_shift
                                    : offset_value >= 0 ? offset_value / stride
                                                        : -((-offset_value + stride - 1) / stride);
        require(symbol * stride == offset_value && symbol >= std::numeric_limits<std::int32_t>::min() &&
                    symbol <= std::numeric_limits<std::int32_t>::max(),
                errc::invalid_argument, "context_rans::encode: value ", values[i], " at index ", first_index + i, " is not ", stride,
                " * symbol + ", bound.addends[context], " (context ", context, " of path state ", state, ")");
        contexts[i] = std::uint16_t(context);
        symbols[i] = std::int32_t(symbol);
        state = machine.next(state, std::int32_t(symbol));
    }

    const std::int32_t* offsets = tables.offsets.data();
    const std::uint32_t* supports = tables.supports.data();
    auto bin_of = [&](std::int32_t symbol, std::uint32_t context) {
        const std::uint64_t bin = std::uint64_t(std::int64_t(symbol) - offsets[context]);
        return bin < supports[context] ? std::uint32_t(bin) : supports[context];
    };
    EscapeBitWriter escape_writer;
    for (std::size_t i = 0; i < values.size(); ++i)
        if (NWC_UNLIKELY(bin_of(symbols[i], contexts[i]) == supports[contexts[i]]))
            escape_writer.write(escape_code(symbols[i], offsets[contexts[i]], supports[contexts[i]]));
    const std::vector<std::uint8_t> escape_bytes = escape_writer.finish();

    RansLaneEncoding lanes;
    rans_encode_lanes(rans::lane_count_for(values.size()), values.size(), tables.precision, [&](std::size_t i) {
        return tables.bin_entries[tables.bin_bases[contexts[i]] + bin_of(symbols[i], contexts[i])];
    }, scratch.words, lanes);
    append_segment(out, std::uint32_t(values.size()), lanes, escape_bytes);
}

/// An escaped value: its symbol from the escape bits, its value, and the path's next state (the
/// escaped symbol's parity, not the escape bin's, picks the transition). Out of line: escapes are rare.
[[gnu::noinline]] inline std::uint32_t context_read_escape(const ContextDecodeTables& bound, RansLaneDecoder& decoder, std::uint32_t state,
                                                           std::uint32_t context, std::int32_t& value) {
    const RansSegmentBytes& segment = decoder.segment();
    const std::int32_t symbol = decoder.escapes().read_value(bound.rans->offsets[context], bound.rans->supports[context]);
    const std::int64_t decoded = std::int64_t(bound.value_stride) * symbol + bound.addends[context];
    require(decoded >= std::numeric_limits<std::int32_t>::min() && decoded <= std::numeric_limits<std::int32_t>::max(), errc::corrupt,
            "context rANS stream: segment ", segment.index, " at byte ", segment.byte_offset, ": escaped symbol ", symbol, " of context ",
            context, " maps to ", decoded, ", outside int32");
    value = std::int32_t(decoded);
    return bound.symbol_transitions[2 * state + (std::uint32_t(symbol) & 1u)];
}

/// What follows the rANS step of one value on a path in `state`: the value of its bin (an escape
/// bin reads the escape bits) and the path's next state, as the reference's loop below does it.
/// The SIMD decoder's steps with an escape call it.
NWC_FORCE_INLINE std::uint32_t context_take_bin(const ContextDecodeTables& bound, RansLaneDecoder& decoder, std::uint32_t state, std::uint32_t bin,
                                                std::int32_t& value) {
    const std::uint32_t context = bound.state_contexts[state];
    if (NWC_UNLIKELY(bin == bound.rans->supports[context])) return context_read_escape(bound, decoder, state, context, value);
    value = bound.value_of_bin(context, bin);
    return bound.bin_transitions[2 * state + (bin & 1u)] & 0xFFFFu;
}

/// Decodes values [first, end) of a segment, value i on path i % 32 from path_states[i % 32]: the
/// reference's loop, which the SIMD decoder resumes after its last fast step.
inline void context_decode_values(const ContextDecodeTables& bound, RansLaneDecoder& decoder, std::uint32_t* path_states, std::size_t first,
                                  std::size_t end, std::int32_t* out) {
    // context_take_bin's work, with the tables in locals: as far as the compiler knows, the stores
    // to `out` may alias their contents.
    const std::uint16_t* state_contexts = bound.state_contexts.data();
    const std::uint32_t* supports = bound.rans->supports.data();
    const std::uint32_t* bin_transitions = bound.bin_transitions.data();
    for (std::size_t i = first; i < end; ++i) {
        std::uint32_t& state = path_states[i % context_rans::path_count];
        const std::uint32_t context = state_contexts[state];
        const std::uint32_t bin = decoder.decode_bin(i, context);
        if (NWC_LIKELY(bin != supports[context])) {
            out[i] = bound.value_of_bin(context, bin);
            state = bin_transitions[2 * state + (bin & 1u)] & 0xFFFFu;
        } else {
            state = context_read_escape(bound, decoder, state, context, out[i]);
        }
    }
}

/// The reference decoder of one segment: the plain coder's lanes (RansLaneDecoder::decode_bin),
/// each symbol's table chosen by its path's machine state.
inline void context_decode_segment(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out,
                                   backend::scalar) {
    RansLaneDecoder decoder(*bound.rans, segment);
    std::uint32_t path_states[context_rans::path_count] = {};
    context_decode_values(bound, decoder, path_states, 0, out.size(), out.data());
    decoder.expect_end();
}

/// Tags that are not host backends (CUDA's, decoding a segment on the host) use the reference.
/// Host tags resolve by ordinary overload resolution: backend::simd (and tags derived from it) to
/// the SIMD decoder of context_rans_simd.hpp, which context_rans.hpp includes.
template <class Backend>
    requires(!std::derived_from<Backend, backend::scalar>)
void context_decode_segment(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out, Backend) {
    context_decode_segment(bound, segment, out, backend::scalar{});
}

}  // namespace nwc::detail
