// The 32-lane rANS segment encoder and the scalar reference decoder (nwc::backend::scalar).
//
// Read me first (constants and ordering in rans_format.hpp):
// - Symbol i of a segment (i counted from the segment's start) uses lane i % 32 and table
//   i % channel_count. Decoding symbol by symbol in index order, renormalizing each lane right after
//   its symbol, reads the words in exactly the lane-ordered order the SIMD and warp decoders use.
// - Encoder, per symbol, backwards: if x >= freq << (32 - precision), emit the low 16 bits and shift;
//   then x = ((x / freq) << precision) + (x % freq) + cumulative. Words come out last-first, so they
//   fill their buffer from its end. Every lane starts at L = 2^16, the value the decoder must end at.
// - Decoder, per symbol: slot = x & (2^precision - 1); bin = slot table[slot]; (freq, cumulative) =
//   bin table[bin]; x = freq * (x >> precision) + slot - cumulative; if x < 2^16, x = x << 16 | next word.
// - Untrusted input cannot drive a read out of bounds: table indices are < 2^precision by
//   construction, the word index is clamped, and overruns throw nwc::error(corrupt).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/rans_format.hpp"

namespace nwc::detail {

/// Where one segment's parts lie in a stream.
struct RansSegmentBytes {
    std::size_t index = 0;                      ///< segment number, for messages
    std::uint64_t byte_offset = 0;              ///< where the segment starts in the stream, for messages
    const std::uint8_t* states = nullptr;       ///< 32 u32 initial states
    const std::uint8_t* words = nullptr;        ///< word_count u16 words
    std::uint32_t word_count = 0;
    std::span<const std::uint8_t> escapes;      ///< the escape bit stream
    const std::uint8_t* stream_end = nullptr;   ///< end of the whole buffer (SIMD loads may read up to here)
};

inline RansSegmentBytes segment_bytes(std::span<const std::uint8_t> stream, const RansStreamIndex& index, std::size_t segment) {
    const RansSegment& info = index.segments[segment];
    RansSegmentBytes bytes;
    bytes.index = segment;
    bytes.byte_offset = info.byte_offset;
    bytes.states = stream.data() + info.byte_offset;
    bytes.words = bytes.states + rans::segment_state_bytes;
    bytes.word_count = info.word_count;
    bytes.escapes = stream.subspan(info.byte_offset + rans::segment_state_bytes + 2 * std::size_t(info.word_count), info.escape_bytes);
    bytes.stream_end = stream.data() + stream.size();
    return bytes;
}

NWC_FORCE_INLINE std::uint32_t load_u16(const std::uint8_t* at) noexcept {
    std::uint16_t value;
    std::memcpy(&value, at, 2);
    return value;
}

/// The decoder state of one segment, stepped symbol by symbol; the SIMD decoder hands its tail
/// (the last, partial step) and any escape to this reference code.
class RansLaneDecoder {
public:
    RansLaneDecoder(const RansDecodeTables& tables, const RansSegmentBytes& segment)
        : m_tables(tables),
          m_segment(segment),
          m_escapes(segment.escapes, segment.index, segment.byte_offset + rans::segment_state_bytes + 2 * std::uint64_t(segment.word_count)) {
        for (std::uint32_t lane = 0; lane < rans::lane_count; ++lane) {
            std::memcpy(&m_states[lane], segment.states + 4 * lane, 4);
            require(m_states[lane] >= rans::state_lower_bound, errc::corrupt, "rANS stream: segment ", segment.index, " at byte ", segment.byte_offset,
                    ": initial state of lane ", lane, " is ", m_states[lane], " < 2^16");
        }
        static const std::uint8_t zero_word[2] = {0, 0};
        m_words = segment.word_count ? segment.words : zero_word;
        m_last_word = segment.word_count ? segment.word_count - 1 : 0;
    }

    /// Decodes segment symbols [first, end) into out[first..end).
    void decode(std::size_t first, std::size_t end, std::int32_t* out) {
        // Everything in locals: as far as the compiler knows, stores through `out` may alias the members.
        const std::uint32_t channels = m_tables.channel_count;
        const int precision = m_tables.precision;
        const std::uint32_t slot_mask = (1u << precision) - 1;
        const std::uint16_t* slot_bins = m_tables.slot_bins.data();
        const std::uint32_t* bin_entries = m_tables.bin_entries.data();
        const std::uint32_t* bin_bases = m_tables.bin_bases.data();
        const std::int32_t* offsets = m_tables.offsets.data();
        const std::uint32_t* supports = m_tables.supports.data();
        const std::uint8_t* words = m_words;
        const std::size_t last_word = m_last_word;
        const bool no_words = m_segment.word_count == 0;
        std::uint32_t states[rans::lane_count];
        std::copy(std::begin(m_states), std::end(m_states), states);
        std::uint32_t channel = std::uint32_t(first % channels);
        std::size_t position = m_position;
        std::uint32_t overrun = 0;
        for (std::size_t i = first; i < end; ++i) {
            std::uint32_t& x = states[i % rans::lane_count];
            const std::uint32_t slot = x & slot_mask;
            const std::uint32_t bin = slot_bins[(std::size_t(channel) << precision) | slot];
            const std::uint32_t entry = bin_entries[bin_bases[channel] + bin];
            x = (entry >> 16) * (x >> precision) + slot - (entry & 0xFFFFu);
            if (NWC_LIKELY(bin != supports[channel]))
                out[i] = std::int32_t(std::uint32_t(offsets[channel]) + bin);
            else
                out[i] = m_escapes.read_value(offsets[channel], supports[channel]);
            // Branch-free renormalization; the clamped load keeps a corrupt stream inside its words.
            const std::uint32_t need = x < rans::state_lower_bound;
            overrun |= need & std::uint32_t(position > last_word || no_words);
            const std::uint32_t word = load_u16(words + 2 * std::min(position, last_word));
            x = need ? (x << 16) | word : x;
            position += need;
            if (++channel == channels) channel = 0;
        }
        std::copy(std::begin(states), std::end(states), m_states);
        m_position = position;
        if (overrun) fail_overrun();
    }

    /// Throws unless the segment ended exactly: all words and escape bytes used, every state back at 2^16.
    void expect_end() const {
        require(m_position == m_segment.word_count, errc::corrupt, "rANS stream: segment ", m_segment.index, " at byte ", m_segment.byte_offset,
                ": decoding used ", m_position, " words but the index announces ", m_segment.word_count);
        for (std::uint32_t lane = 0; lane < rans::lane_count; ++lane)
            require(m_states[lane] == rans::state_lower_bound, errc::corrupt, "rANS stream: segment ", m_segment.index, " at byte ",
                    m_segment.byte_offset, ": lane ", lane, " ends in state ", m_states[lane], ", expected 2^16");
        m_escapes.expect_end();
    }

    [[noreturn]] void fail_overrun() const {
        fail(errc::corrupt, "rANS stream: segment ", m_segment.index, " at byte ", m_segment.byte_offset, ": decoding needs more than the ",
             m_segment.word_count, " words the index announces");
    }

    std::uint32_t* states() noexcept { return m_states; }
    std::size_t& word_position() noexcept { return m_position; }
    EscapeBitReader& escapes() noexcept { return m_escapes; }
    const RansSegmentBytes& segment() const noexcept { return m_segment; }
    const RansDecodeTables& tables() const noexcept { return m_tables; }

private:
    const RansDecodeTables& m_tables;
    RansSegmentBytes m_segment;
    EscapeBitReader m_escapes;
    std::uint32_t m_states[rans::lane_count];
    const std::uint8_t* m_words = nullptr;
    std::size_t m_last_word = 0;
    std::size_t m_position = 0;
};

/// Reference decoder of one segment (`out.size()` == its symbol count).
inline void rans_decode_segment(const RansDecodeTables& tables, const RansSegmentBytes& segment, std::span<std::int32_t> out,
                                backend::scalar) {
    RansLaneDecoder decoder(tables, segment);
    decoder.decode(0, out.size(), out.data());
    decoder.expect_end();
}

/// Encodes one segment (symbols start at channel 0) and appends its bytes (states, words, escape
/// bytes, zero padding to 4) to `out`; returns {word_count, escape_bytes} for the index.
inline std::pair<std::uint32_t, std::uint32_t> rans_encode_segment(const RansDecodeTables& tables, std::span<const std::int32_t> symbols,
                                                                   std::vector<std::uint8_t>& out) {
    const std::uint32_t channels = tables.channel_count;
    const int precision = tables.precision;
    const std::int32_t* offsets = tables.offsets.data();
    const std::uint32_t* supports = tables.supports.data();
    const std::uint32_t* bin_bases = tables.bin_bases.data();
    const std::uint32_t* entries = tables.bin_entries.data();
    // The bin of a value; below the support the 64-bit difference wraps to a huge number.
    auto bin_of = [&](std::int32_t value, std::uint32_t channel) {
        const std::uint64_t bin = std::uint64_t(std::int64_t(value) - offsets[channel]);
        return bin < supports[channel] ? std::uint32_t(bin) : supports[channel];
    };

    // Escape codes first, forwards: the decoder reads them in symbol order.
    EscapeBitWriter escape_writer;
    for (std::size_t i = 0; i < symbols.size(); ++i) {
        const auto channel = std::uint32_t(i % channels);
        if (NWC_UNLIKELY(bin_of(symbols[i], channel) == supports[channel]))
            escape_writer.write(escape_code(symbols[i], offsets[channel], supports[channel]));
    }
    const std::vector<std::uint8_t>& escape_bytes = escape_writer.finish();

    // Backwards; words fill a buffer from its end, so they come out in decoding order. Segments up
    // to 2^20 symbols reuse a per-thread buffer: a fresh one per segment cost more in page faults
    // than the coding itself.
    thread_local std::vector<std::uint16_t> reused;
    std::vector<std::uint16_t> large;
    std::vector<std::uint16_t>& scratch = symbols.size() <= (std::size_t(1) << 20) ? reused : large;
    if (scratch.size() < symbols.size()) scratch.resize(symbols.size());
    std::uint16_t* const words_end = scratch.data() + symbols.size();
    std::uint16_t* first_word = words_end;
    std::uint32_t states[rans::lane_count];
    std::fill(std::begin(states), std::end(states), rans::state_lower_bound);
    std::uint32_t channel = symbols.empty() ? 0 : std::uint32_t((symbols.size() - 1) % channels);
    for (std::size_t i = symbols.size(); i-- > 0;) {
        std::uint32_t& x = states[i % rans::lane_count];
        const std::uint32_t entry = entries[bin_bases[channel] + bin_of(symbols[i], channel)];
        const std::uint32_t frequency = entry >> 16, cumulative = entry & 0xFFFFu;
        if (x >= frequency << (32 - precision)) {  // frequency < 2^precision: no overflow
            *--first_word = std::uint16_t(x);
            x >>= 16;
        }
        x = ((x / frequency) << precision) + (x % frequency) + cumulative;
        channel = channel == 0 ? channels - 1 : channel - 1;
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

}  // namespace nwc::detail
