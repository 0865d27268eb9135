// The interleaved rANS lane coder: the segment encoder and the scalar reference decoder
// (nwc::backend::scalar), for any lane count 1..32 (a power of two).
//
// Read me first (constants, tails and ordering in rans_format.hpp):
// - Symbol i of a segment (i counted from the segment's start) uses lane i % lanes. The plain
//   stream codes it with table i % channel_count; the core below (rans_encode_lanes,
//   RansLaneDecoder::decode_symbol) takes any table per symbol, so a context-conditioned coder
//   can reuse it by choosing the table itself.
// - Encoder, per symbol, backwards, each lane starting at state 1: if x >= freq << (32 - precision),
//   emit the low 16 bits and shift (never while x < 2^16: that threshold is >= 2^16); then
//   x = ((x / freq) << precision) + (x % freq) + cumulative. The symbols a lane codes while its
//   state is still below 2^16 are its tail. Words come out last-first, filling a buffer from its end.
// - Decoder, per symbol: slot = x & (2^precision - 1); bin = slot table[slot]; (freq, cumulative) =
//   bin table[bin]; x = freq * (x >> precision) + slot - cumulative; outside its lane's tail, if
//   x < 2^16, x = x << 16 | next word. Decoding symbol by symbol in index order reads the words in
//   exactly the lane-ordered order the SIMD and warp decoders use.
// - Untrusted input cannot drive a read out of bounds: table indices are < 2^precision by
//   construction, the word index is clamped, and overruns throw nwc::error(corrupt).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/backend.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/bit_io.hpp"
#include "nwc/entropy/rans_format.hpp"

namespace nwc::detail {

/// Where one segment's parts lie in a stream.
struct RansSegmentBytes {
    std::size_t index = 0;                      ///< segment number, for messages
    std::uint64_t byte_offset = 0;              ///< where the segment starts in the stream, for messages
    std::uint32_t symbol_count = 0;
    std::span<const std::uint8_t> lane_block;
    std::uint64_t lanes_offset = 0;
    const std::uint8_t* words = nullptr;        ///< word_count u16 words
    std::uint32_t word_count = 0;
    std::span<const std::uint8_t> escapes;      ///< the escape bit stream
    std::uint64_t escapes_offset = 0;
    const std::uint8_t* stream_end = nullptr;   ///< end of the whole buffer (SIMD loads may read up to here)
};

inline RansSegmentBytes segment_bytes(std::span<const std::uint8_t> stream, const RansStreamIndex& index, std::size_t segment) {
    const RansSegment& info = index.segments[segment];
    RansSegmentBytes bytes;
    bytes.index = segment;
    bytes.byte_offset = info.byte_offset;
    bytes.symbol_count = info.symbol_count;
    bytes.lane_block = stream.subspan(info.lanes_offset, info.lane_bytes);
    bytes.lanes_offset = info.lanes_offset;
    bytes.words = stream.data() + info.words_offset;
    bytes.word_count = info.word_count;
    bytes.escapes_offset = info.words_offset + 2 * std::uint64_t(info.word_count);
    bytes.escapes = stream.subspan(bytes.escapes_offset, info.escape_bytes);
    bytes.stream_end = stream.data() + stream.size();
    return bytes;
}

NWC_FORCE_INLINE std::uint32_t load_u16(const std::uint8_t* at) noexcept {
    std::uint16_t value;
    std::memcpy(&value, at, 2);
    return value;
}

/// The encoder's result for one segment: final states, tails, and its words in decoding order.
struct RansLaneEncoding {
    std::uint32_t lane_count = 0;
    std::uint32_t states[rans::max_lane_count] = {};
    std::uint32_t tails[rans::max_lane_count] = {};
    std::span<const std::uint16_t> words;
};

/// Encodes `count` symbols on `lanes` lanes; entry_of(i) gives symbol i's (frequency << 16) |
/// cumulative at `precision`. The words land in `scratch` (resized to `count`, reused across calls).
template <class EntryOf>
void rans_encode_lanes(std::uint32_t lanes, std::size_t count, int precision, EntryOf&& entry_of, std::vector<std::uint16_t>& scratch,
                       RansLaneEncoding& result) {
    NWC_ASSERT(std::has_single_bit(lanes) && lanes <= rans::max_lane_count);
    if (scratch.size() < count) scratch.resize(count);
    std::uint16_t* const words_end = scratch.data() + count;
    std::uint16_t* first_word = words_end;
    std::uint32_t states[rans::max_lane_count], tails[rans::max_lane_count];
    std::fill(std::begin(states), std::end(states), rans::initial_state);
    std::fill(std::begin(tails), std::end(tails), 0u);
    const std::uint32_t lane_mask = lanes - 1;
    for (std::size_t i = count; i-- > 0;) {
        const std::uint32_t lane = std::uint32_t(i) & lane_mask;
        std::uint32_t x = states[lane];
        const std::uint32_t entry = entry_of(i);
        const std::uint32_t frequency = entry >> 16, cumulative = entry & 0xFFFFu;
        tails[lane] += x < rans::state_lower_bound;
        if (x >= frequency << (32 - precision)) {  // frequency < 2^precision: no overflow
            *--first_word = std::uint16_t(x);
            x >>= 16;
        }
        // Below 2^16 the product stays below 2^32 too: (2^16 - 1) * 2^16 / frequency + 2^16 - 1.
        states[lane] = ((x / frequency) << precision) + (x % frequency) + cumulative;
    }
    result.lane_count = lanes;
    std::copy(states, states + lanes, result.states);
    std::copy(tails, tails + lanes, result.tails);
    result.words = std::span<const std::uint16_t>(first_word, words_end);
}

/// Appends one segment: varint word count, varint escape bytes, lane block, words, escape bytes.
inline void append_segment(std::vector<std::uint8_t>& out, std::uint32_t symbol_count, const RansLaneEncoding& lanes,
                           std::span<const std::uint8_t> escape_bytes) {
    ByteWriter head;
    put_varint(head, lanes.words.size());
    put_varint(head, escape_bytes.size());
    const std::vector<std::uint8_t> block = write_lane_block(symbol_count, lanes.lane_count, lanes.states, lanes.tails);
    const std::size_t start = out.size();
    out.resize(start + head.size() + block.size() + 2 * lanes.words.size() + escape_bytes.size());
    std::uint8_t* at = out.data() + start;
    std::memcpy(at, head.bytes().data(), head.size());
    at += head.size();
    std::memcpy(at, block.data(), block.size());
    at += block.size();
    if (!lanes.words.empty()) std::memcpy(at, lanes.words.data(), 2 * lanes.words.size());  // little-endian hosts (config.hpp)
    at += 2 * lanes.words.size();
    if (!escape_bytes.empty()) std::memcpy(at, escape_bytes.data(), escape_bytes.size());
}

/// Encodes one segment (symbols start at channel 0) and appends its bytes to `out`.
inline void rans_encode_segment(const RansDecodeTables& tables, std::span<const std::int32_t> symbols, std::vector<std::uint8_t>& out) {
    const std::uint32_t channels = tables.channel_count;
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
    const std::vector<std::uint8_t> escape_bytes = escape_writer.finish();
    // Segments up to 2^20 symbols reuse a per-thread buffer: a fresh one per segment cost more in
    // page faults than the coding itself.
    thread_local std::vector<std::uint16_t> reused;
    std::vector<std::uint16_t> large;
    std::vector<std::uint16_t>& scratch = symbols.size() <= (std::size_t(1) << 20) ? reused : large;
    std::uint32_t channel = symbols.empty() ? 0 : std::uint32_t((symbols.size() - 1) % channels);
    RansLaneEncoding lanes;
    // entry_of is called for i = count - 1 down to 0, so the channel steps backwards with it.
    rans_encode_lanes(rans::lane_count_for(symbols.size()), symbols.size(), tables.precision, [&](std::size_t i) {
        const std::uint32_t entry = entries[bin_bases[channel] + bin_of(symbols[i], channel)];
        channel = channel == 0 ? channels - 1 : channel - 1;
        return entry;
    }, scratch, lanes);
    append_segment(out, std::uint32_t(symbols.size()), lanes, escape_bytes);
}

/// The decoder state of one segment, stepped symbol by symbol; the SIMD decoder hands its tail
/// (the last steps, where lanes reach their tails) and any escape to this reference code.
class RansLaneDecoder {
public:
    RansLaneDecoder(const RansDecodeTables& tables, const RansSegmentBytes& segment)
        : m_tables(tables), m_segment(segment), m_escapes(segment.escapes, segment.index, segment.escapes_offset) {
        read_lane_block(segment.lane_block, segment.symbol_count, segment.lanes_offset, segment.index, m_start);
        static const std::uint8_t zero_word[2] = {0, 0};
        m_words = segment.word_count ? segment.words : zero_word;
        m_last_word = segment.word_count ? segment.word_count - 1 : 0;
        m_lane_shift = std::countr_zero(m_start.lane_count);
        // Below this symbol index every lane renormalizes: no tail check is needed.
        m_untailed_end = std::size_t(*std::min_element(m_start.renormalized, m_start.renormalized + m_start.lane_count)) << m_lane_shift;
    }
    RansLaneDecoder(const RansLaneDecoder&) = delete;

    /// Decodes segment symbols [first, end) into out[first..end), symbol i with table i % channels.
    void decode(std::size_t first, std::size_t end, std::int32_t* out) {
        const std::size_t split = std::clamp(m_untailed_end, first, end);
        decode_range<false>(first, split, out);
        decode_range<true>(split, end, out);
    }

    /// The regular bin of symbol i (its lane's next) under table `channel`, or the table's escape
    /// bin: the core a context-conditioned coder steps with. Symbols must come in index order.
    NWC_FORCE_INLINE std::uint32_t decode_bin(std::size_t i, std::uint32_t channel) {
        std::uint32_t& x = m_start.states[i & (m_start.lane_count - 1)];
        const std::uint32_t slot = x & ((1u << m_tables.precision) - 1);
        const std::uint32_t bin = m_tables.slot_bins[(std::size_t(channel) << m_tables.precision) | slot];
        const std::uint32_t entry = m_tables.bin_entries[m_tables.bin_bases[channel] + bin];
        x = (entry >> 16) * (x >> m_tables.precision) + slot - (entry & 0xFFFFu);
        if (x < rans::state_lower_bound && (i >> m_lane_shift) < m_start.renormalized[i & (m_start.lane_count - 1)]) {
            if (m_position >= m_segment.word_count) fail_overrun();
            x = (x << 16) | load_u16(m_words + 2 * m_position++);
        }
        return bin;
    }

    /// Throws unless the segment ended exactly: all words and escape bytes used, every state back at 1.
    void expect_end() const {
        require(m_position == m_segment.word_count, errc::corrupt, "rANS stream: segment ", m_segment.index, " at byte ", m_segment.byte_offset,
                ": decoding used ", m_position, " words but the index announces ", m_segment.word_count);
        for (std::uint32_t lane = 0; lane < m_start.lane_count; ++lane)
            require(m_start.states[lane] == rans::initial_state, errc::corrupt, "rANS stream: segment ", m_segment.index, " at byte ",
                    m_segment.byte_offset, ": lane ", lane, " ends in state ", m_start.states[lane], ", expected ", rans::initial_state);
        m_escapes.expect_end();
    }

    [[noreturn]] void fail_overrun() const {
        fail(errc::corrupt, "rANS stream: segment ", m_segment.index, " at byte ", m_segment.byte_offset, ": decoding needs more than the ",
             m_segment.word_count, " words the index announces");
    }

    std::uint32_t lane_count() const noexcept { return m_start.lane_count; }
    std::uint32_t* states() noexcept { return m_start.states; }
    /// Symbols before which every lane still renormalizes (a multiple of the lane count).
    std::size_t untailed_end() const noexcept { return m_untailed_end; }
    std::size_t& word_position() noexcept { return m_position; }
    EscapeBitReader& escapes() noexcept { return m_escapes; }
    const RansSegmentBytes& segment() const noexcept { return m_segment; }
    const RansDecodeTables& tables() const noexcept { return m_tables; }

private:
    template <bool Tails>
    void decode_range(std::size_t first, std::size_t end, std::int32_t* out) {
        // Everything in locals: as far as the compiler knows, stores through `out` may alias the members.
        const std::uint32_t channels = m_tables.channel_count;
        const int precision = m_tables.precision;
        const std::uint32_t slot_mask = (1u << precision) - 1, lane_mask = m_start.lane_count - 1;
        const int lane_shift = m_lane_shift;
        const std::uint16_t* slot_bins = m_tables.slot_bins.data();
        const std::uint32_t* bin_entries = m_tables.bin_entries.data();
        const std::uint32_t* bin_bases = m_tables.bin_bases.data();
        const std::int32_t* offsets = m_tables.offsets.data();
        const std::uint32_t* supports = m_tables.supports.data();
        const std::uint8_t* words = m_words;
        const std::size_t last_word = m_last_word;
        const bool no_words = m_segment.word_count == 0;
        std::uint32_t states[rans::max_lane_count], renormalized[rans::max_lane_count];
        std::copy(std::begin(m_start.states), std::end(m_start.states), states);
        std::copy(std::begin(m_start.renormalized), std::end(m_start.renormalized), renormalized);
        std::uint32_t channel = std::uint32_t(first % channels);
        std::size_t position = m_position;
        std::uint32_t overrun = 0;
        for (std::size_t i = first; i < end; ++i) {
            const std::uint32_t lane = std::uint32_t(i) & lane_mask;
            std::uint32_t x = states[lane];
            const std::uint32_t slot = x & slot_mask;
            const std::uint32_t bin = slot_bins[(std::size_t(channel) << precision) | slot];
            const std::uint32_t entry = bin_entries[bin_bases[channel] + bin];
            x = (entry >> 16) * (x >> precision) + slot - (entry & 0xFFFFu);
            if (NWC_LIKELY(bin != supports[channel]))
                out[i] = std::int32_t(std::uint32_t(offsets[channel]) + bin);
            else
                out[i] = m_escapes.read_value(offsets[channel], supports[channel]);
            // Branch-free renormalization; the clamped load keeps a corrupt stream inside its words.
            std::uint32_t need = x < rans::state_lower_bound;
            if constexpr (Tails) need &= std::uint32_t((i >> lane_shift) < renormalized[lane]);
            overrun |= need & std::uint32_t(position > last_word || no_words);
            const std::uint32_t word = load_u16(words + 2 * std::min(position, last_word));
            states[lane] = need ? (x << 16) | word : x;
            position += need;
            if (++channel == channels) channel = 0;
        }
        std::copy(std::begin(states), std::end(states), m_start.states);
        m_position = position;
        if (overrun) fail_overrun();
    }

    const RansDecodeTables& m_tables;
    RansSegmentBytes m_segment;
    EscapeBitReader m_escapes;
    RansLaneStart m_start;
    const std::uint8_t* m_words = nullptr;
    std::size_t m_last_word = 0;
    std::size_t m_position = 0;
    int m_lane_shift = 0;
    std::size_t m_untailed_end = 0;
};

/// Reference decoder of one segment (`out.size()` == its symbol count).
inline void rans_decode_segment(const RansDecodeTables& tables, const RansSegmentBytes& segment, std::span<std::int32_t> out,
                                backend::scalar) {
    RansLaneDecoder decoder(tables, segment);
    decoder.decode(0, out.size(), out.data());
    decoder.expect_end();
}

}  // namespace nwc::detail
