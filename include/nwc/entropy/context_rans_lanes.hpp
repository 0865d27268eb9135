// The context-coded rANS stream: header and index, the segment encoder and the scalar reference
// decoder (nwc::backend::scalar). The public API is context_rans.hpp.
//
// Read me first (the plain coder's rans_lanes.hpp explains the rANS step; only the table choice
// differs here):
// - Symbol j of a segment belongs to lane j % 32, as in the plain coder, but its table is the
//   context of its lane's state (LaneStateMachine), not j % channel_count. Every lane starts each
//   segment in state 0, so segments still decode alone.
// - Segment bytes (initial states, lane-ordered words, escape bits, padding) and the escape code
//   are those of the plain stream, byte for byte; only the 40-byte header differs (it also
//   records the machine's checksum). docs/format/rans.md, section 3.
// - ContextDecodeTables binds a machine to a CdfTableSet once: the transition of each (state,
//   parity of the decoded BIN) with the next state's context packed beside it, and each
//   context's value offset. Everything is integer data derived from the stored tables.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <vector>

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

/// The CRC-32C of a table set's serialization without its trailing CRC, which identifies the tables
/// a context stream was coded with. (CdfTableSet::checksum() covers the trailing CRC too, and a
/// CRC over a message followed by its own CRC is the same constant, 0x48674BC7, for every message.)
inline std::uint32_t table_set_fingerprint(const CdfTableSet& tables) {
    ByteWriter writer;
    tables.write(writer);
    return crc32c(std::span<const std::uint8_t>(writer.bytes()).first(writer.size() - 4));
}

/// CRC-32C of a context stream without its 4-byte checksum field.
inline std::uint32_t context_stream_checksum(std::span<const std::uint8_t> stream) noexcept {
    return crc32c(stream.subspan(context_rans::checksum_offset + 4), crc32c(stream.first(context_rans::checksum_offset)));
}

/// Reusable per-thread buffers of the segment encoder.
struct ContextEncodeScratch {
    std::vector<std::uint16_t> contexts;
    std::vector<std::int32_t> symbols;
    std::vector<std::uint16_t> words;
};

/// Encodes one segment of values (lanes start in state 0) and appends its bytes to `out`; returns
/// {word_count, escape_bytes}. Throws nwc::error(invalid_argument) for a value that is not on
/// its context's coset (value - addend not a multiple of the stride), naming its stream index.
inline std::pair<std::uint32_t, std::uint32_t> context_encode_segment(const ContextDecodeTables& bound, const LaneStateMachine& machine,
                                                                      std::span<const std::int32_t> values, std::uint64_t first_index,
                                                                      std::vector<std::uint8_t>& out) {
    const RansDecodeTables& tables = *bound.rans;
    thread_local ContextEncodeScratch reused;
    ContextEncodeScratch large;
    ContextEncodeScratch& scratch = values.size() <= (std::size_t(1) << 20) ? reused : large;
    if (scratch.symbols.size() < values.size()) {
        scratch.contexts.resize(values.size());
        scratch.symbols.resize(values.size());
        scratch.words.resize(values.size());
    }
    std::uint16_t* const contexts = scratch.contexts.data();
    std::int32_t* const symbols = scratch.symbols.data();

    // The machine forwards, lane by lane: each value's context and table symbol.
    std::uint32_t lane_states[rans::lane_count] = {};
    const std::int64_t stride = bound.value_stride;
    // A power-of-two stride (2 for trellis-coded quantization) divides by an arithmetic shift.
    const int stride_shift = std::has_single_bit(std::uint64_t(stride)) ? std::countr_zero(std::uint64_t(stride)) : -1;
    for (std::size_t i = 0; i < values.size(); ++i) {
        std::uint32_t& state = lane_states[i % rans::lane_count];
        const std::uint32_t context = bound.state_contexts[state];
        const std::int64_t offset_value = std::int64_t(values[i]) - bound.addends[context];
        const std::int64_t symbol = stride_shift >= 0    ? offset_value >> stride_shift
                                    : offset_value >= 0 ? offset_value / stride
                                                        : -((-offset_value + stride - 1) / stride);
        require(symbol * stride == offset_value && symbol >= std::numeric_limits<std::int32_t>::min() &&
                    symbol <= std::numeric_limits<std::int32_t>::max(),
                errc::invalid_argument, "context_rans::encode: value ", values[i], " at index ", first_index + i, " is not ", stride,
                " * symbol + ", bound.addends[context], " (context ", context, " of lane state ", state, ")");
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
    const std::vector<std::uint8_t>& escape_bytes = escape_writer.finish();

    // Backwards, words filling the buffer from its end (rans_encode_segment, with the context's table).
    const int precision = tables.precision;
    std::uint16_t* const words_end = scratch.words.data() + values.size();
    std::uint16_t* first_word = words_end;
    std::uint32_t states[rans::lane_count];
    std::fill(std::begin(states), std::end(states), rans::state_lower_bound);
    for (std::size_t i = values.size(); i-- > 0;) {
        std::uint32_t& x = states[i % rans::lane_count];
        const std::uint32_t entry = tables.bin_entries[tables.bin_bases[contexts[i]] + bin_of(symbols[i], contexts[i])];
        const std::uint32_t frequency = entry >> 16, cumulative = entry & 0xFFFFu;
        if (x >= frequency << (32 - precision)) {
            *--first_word = std::uint16_t(x);
            x >>= 16;
        }
        x = ((x / frequency) << precision) + (x % frequency) + cumulative;
    }
    const std::size_t word_count = std::size_t(words_end - first_word);

    const std::size_t start = out.size();
    const std::uint32_t size = segment_byte_size(std::uint32_t(word_count), std::uint32_t(escape_bytes.size()));
    out.resize(start + size);
    std::uint8_t* at = out.data() + start;
    std::memcpy(at, states, sizeof states);
    std::memcpy(at + rans::segment_state_bytes, first_word, 2 * word_count);
    if (!escape_bytes.empty()) std::memcpy(at + rans::segment_state_bytes + 2 * word_count, escape_bytes.data(), escape_bytes.size());
    const std::size_t used = rans::segment_state_bytes + 2 * word_count + escape_bytes.size();
    std::fill(at + used, at + size, std::uint8_t(0));
    return {std::uint32_t(word_count), std::uint32_t(escape_bytes.size())};
}

/// The decoder of one segment, stepped symbol by symbol: the reference, and the SIMD decoder's
/// tail and escape path (it shares the rANS states and the lanes' machine states).
class ContextLaneDecoder {
public:
    ContextLaneDecoder(const ContextDecodeTables& bound, const RansSegmentBytes& segment)
        : m_bound(bound),
          m_segment(segment),
          m_escapes(segment.escapes, segment.index, segment.byte_offset + rans::segment_state_bytes + 2 * std::uint64_t(segment.word_count)) {
        for (std::uint32_t lane = 0; lane < rans::lane_count; ++lane) {
            std::memcpy(&m_states[lane], segment.states + 4 * lane, 4);
            require(m_states[lane] >= rans::state_lower_bound, errc::corrupt, "context rANS stream: segment ", segment.index, " at byte ",
                    segment.byte_offset, ": initial state of lane ", lane, " is ", m_states[lane], " < 2^16");
            m_lane_states[lane] = 0;
        }
        static const std::uint8_t zero_word[2] = {0, 0};
        m_words = segment.word_count ? segment.words : zero_word;
        m_last_word = segment.word_count ? segment.word_count - 1 : 0;
    }

    /// Decodes segment symbols [first, end) into out[first..end).
    void decode(std::size_t first, std::size_t end, std::int32_t* out) {
        const RansDecodeTables& tables = *m_bound.rans;
        const int precision = tables.precision;
        const std::uint32_t slot_mask = (1u << precision) - 1;
        const std::uint16_t* slot_bins = tables.slot_bins.data();
        const std::uint32_t* bin_entries = tables.bin_entries.data();
        const std::uint32_t* bin_bases = tables.bin_bases.data();
        const std::uint32_t* supports = tables.supports.data();
        const std::uint16_t* state_contexts = m_bound.state_contexts.data();
        const std::uint32_t* bin_transitions = m_bound.bin_transitions.data();
        const std::uint8_t* words = m_words;
        const std::size_t last_word = m_last_word;
        const bool no_words = m_segment.word_count == 0;
        std::uint32_t states[rans::lane_count], lane_states[rans::lane_count];
        std::copy(std::begin(m_states), std::end(m_states), states);
        std::copy(std::begin(m_lane_states), std::end(m_lane_states), lane_states);
        std::size_t position = m_position;
        std::uint32_t overrun = 0;
        for (std::size_t i = first; i < end; ++i) {
            std::uint32_t& x = states[i % rans::lane_count];
            std::uint32_t& lane_state = lane_states[i % rans::lane_count];
            const std::uint32_t context = state_contexts[lane_state];
            const std::uint32_t slot = x & slot_mask;
            const std::uint32_t bin = slot_bins[(std::size_t(context) << precision) | slot];
            const std::uint32_t entry = bin_entries[bin_bases[context] + bin];
            x = (entry >> 16) * (x >> precision) + slot - (entry & 0xFFFFu);
            if (NWC_LIKELY(bin != supports[context])) {
                out[i] = m_bound.value_of_bin(context, bin);
                lane_state = bin_transitions[2 * lane_state + (bin & 1u)] & 0xFFFFu;
            } else {
                lane_state = read_escape(lane_state, context, out[i]);
            }
            const std::uint32_t need = x < rans::state_lower_bound;
            overrun |= need & std::uint32_t(position > last_word || no_words);
            const std::uint32_t word = load_u16(words + 2 * std::min(position, last_word));
            x = need ? (x << 16) | word : x;
            position += need;
        }
        std::copy(std::begin(states), std::end(states), m_states);
        std::copy(std::begin(lane_states), std::end(lane_states), m_lane_states);
        m_position = position;
        if (overrun)
            fail(errc::corrupt, "context rANS stream: segment ", m_segment.index, " at byte ", m_segment.byte_offset,
                 ": decoding needs more than the ", m_segment.word_count, " words the index announces");
    }

    /// Reads the escaped symbol of a lane in `state` (context `context`), stores its value in
    /// `value` and returns the lane's next state. Throws nwc::error(corrupt) when the value
    /// leaves int32.
    std::uint32_t read_escape(std::uint32_t state, std::uint32_t context, std::int32_t& value) {
        const RansDecodeTables& tables = *m_bound.rans;
        const std::int32_t symbol = m_escapes.read_value(tables.offsets[context], tables.supports[context]);
        const std::int64_t decoded = std::int64_t(m_bound.value_stride) * symbol + m_bound.addends[context];
        require(decoded >= std::numeric_limits<std::int32_t>::min() && decoded <= std::numeric_limits<std::int32_t>::max(), errc::corrupt,
                "context rANS stream: segment ", m_segment.index, " at byte ", m_segment.byte_offset, ": escaped symbol ", symbol, " of context ",
                context, " maps to ", decoded, ", outside int32");
        value = std::int32_t(decoded);
        return m_bound.symbol_transitions[2 * state + (std::uint32_t(symbol) & 1u)];
    }

    /// Throws unless the segment ended exactly: all words and escape bytes used, every state back at 2^16.
    void expect_end() const {
        require(m_position == m_segment.word_count, errc::corrupt, "context rANS stream: segment ", m_segment.index, " at byte ",
                m_segment.byte_offset, ": decoding used ", m_position, " words but the index announces ", m_segment.word_count);
        for (std::uint32_t lane = 0; lane < rans::lane_count; ++lane)
            require(m_states[lane] == rans::state_lower_bound, errc::corrupt, "context rANS stream: segment ", m_segment.index, " at byte ",
                    m_segment.byte_offset, ": lane ", lane, " ends in state ", m_states[lane], ", expected 2^16");
        m_escapes.expect_end();
    }

    std::uint32_t* states() noexcept { return m_states; }
    std::uint32_t* lane_states() noexcept { return m_lane_states; }
    std::size_t& word_position() noexcept { return m_position; }
    const ContextDecodeTables& bound() const noexcept { return m_bound; }

private:
    const ContextDecodeTables& m_bound;
    RansSegmentBytes m_segment;
    EscapeBitReader m_escapes;
    std::uint32_t m_states[rans::lane_count];
    std::uint32_t m_lane_states[rans::lane_count];
    const std::uint8_t* m_words = nullptr;
    std::size_t m_last_word = 0;
    std::size_t m_position = 0;
};

/// Reference decoder of one segment (`out.size()` == its symbol count).
inline void context_decode_segment(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out,
                                   backend::scalar) {
    ContextLaneDecoder decoder(bound, segment);
    decoder.decode(0, out.size(), out.data());
    decoder.expect_end();
}

}  // namespace nwc::detail
