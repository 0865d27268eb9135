// The SIMD rANS decoder (nwc::backend::simd): all lanes of a step at once, on xsimd batches.
//
// Read me first:
// - One step decodes symbols lanes t .. lanes t + lanes - 1 of a segment: lane l holds state l,
//   in lanes / batch::size registers (32 lanes: 2 zmm on AVX-512, 4 ymm on AVX2, 8 xmm on SSE/NEON;
//   16 lanes: 1 zmm). A segment whose lanes do not fill one register of the best instruction set
//   uses a narrower one (8 lanes: AVX2 on an AVX-512 machine); 1, 2 or 4 lanes go to the scalar
//   reference, whose speed is then the decoder's (docs/bench/range_coder.md).
// - Table lookups are gathers, and gathers bound this loop on Zen 5 (~1 element per cycle), so
//   the tables' layout (detail::RansSlotLayout, chosen when a CdfTableSet is built) minimizes
//   gathered elements while staying in L2: one packed u32 per slot when it fits (one gather per
//   symbol), else a u8/u16 bin per slot plus the bin's (frequency, cumulative) entry (two).
// - Renormalization is lane-ordered: the lanes with x < 2^16 take the next words in lane order.
//   On AVX-512 that is a masked expand (vpexpandd) of 16 zero-extended words per register and a
//   masked shift-or; on AVX2 a permute by a 256-entry table of lane ranks and a blend: no branch.
//   Other instruction sets use a portable per-lane loop.
// - xsimd 8.1's own gathers fall back to element inserts (its AVX2/AVX-512 overloads carry an
//   ill-formed enable_if), so the gathers here are intrinsics on x86 with an xsimd fallback.
// - The fast loop needs 2 x lanes readable bytes after the next word, and stops at the first step
//   where a lane reaches its tail (rans_format.hpp); the rest of the segment, the partial last
//   step and escapes go to the scalar reference (RansLaneDecoder), which shares the states, so
//   both decoders produce identical output from the same bytes, or both throw.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include <xsimd/xsimd.hpp>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/backend.hpp"
#include "nwc/entropy/rans_lanes.hpp"

// GCC 12 reports its own _mm512_undefined_epi32() as "(maybe) uninitialized" once AVX-512
// intrinsics are inlined (GCC bug 105593, fixed in 13); nothing in this file reads an undefined value.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nwc::detail {
namespace rans_simd {

template <class Arch>
using Lanes = xsimd::batch<std::uint32_t, Arch>;
template <class Arch, std::size_t Registers>
using LaneRegisters = std::array<Lanes<Arch>, Registers>;

// ---- table lookups: the generic versions, then faster ones picked by the arch tag's base classes.

template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u32(const std::uint32_t* table, const Lanes<Arch>& index, xsimd::generic) noexcept {
    alignas(64) std::uint32_t indices[Lanes<Arch>::size], values[Lanes<Arch>::size];
    index.store_aligned(indices);
    for (std::size_t lane = 0; lane < Lanes<Arch>::size; ++lane) values[lane] = table[indices[lane]];
    return Lanes<Arch>::load_aligned(values);
}
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u16(const std::uint16_t* table, const Lanes<Arch>& index, xsimd::generic) noexcept {
    alignas(64) std::uint32_t indices[Lanes<Arch>::size], values[Lanes<Arch>::size];
    index.store_aligned(indices);
    for (std::size_t lane = 0; lane < Lanes<Arch>::size; ++lane) values[lane] = table[indices[lane]];
    return Lanes<Arch>::load_aligned(values);
}
#if defined(__AVX2__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u32(const std::uint32_t* table, const Lanes<Arch>& index, xsimd::avx2) noexcept {
    return _mm256_i32gather_epi32(reinterpret_cast<const int*>(table), index, 4);
}
/// Reads 32 bits at scale 2 and keeps the low half: the tables carry 2 u16 of padding for this.
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u16(const std::uint16_t* table, const Lanes<Arch>& index, xsimd::avx2) noexcept {
    return _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(table), index, 2), _mm256_set1_epi32(0xFFFF));
}
#endif
#if defined(__AVX512F__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u32(const std::uint32_t* table, const Lanes<Arch>& index, xsimd::avx512f) noexcept {
    return _mm512_i32gather_epi32(index, table, 4);
}
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u16(const std::uint16_t* table, const Lanes<Arch>& index, xsimd::avx512f) noexcept {
    return _mm512_and_si512(_mm512_i32gather_epi32(index, table, 2), _mm512_set1_epi32(0xFFFF));
}
#endif

#if defined(__AVX512F__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u8(const std::uint8_t* table, const Lanes<Arch>& index, xsimd::avx512f) noexcept {
    return _mm512_and_si512(_mm512_i32gather_epi32(index, table, 1), _mm512_set1_epi32(0xFF));
}
#endif
#if defined(__AVX2__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u8(const std::uint8_t* table, const Lanes<Arch>& index, xsimd::avx2) noexcept {
    return _mm256_and_si256(_mm256_i32gather_epi32(reinterpret_cast<const int*>(table), index, 1), _mm256_set1_epi32(0xFF));
}
#endif
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> gather_u8(const std::uint8_t* table, const Lanes<Arch>& index, xsimd::generic) noexcept {
    alignas(64) std::uint32_t indices[Lanes<Arch>::size], values[Lanes<Arch>::size];
    index.store_aligned(indices);
    for (std::size_t lane = 0; lane < Lanes<Arch>::size; ++lane) values[lane] = table[indices[lane]];
    return Lanes<Arch>::load_aligned(values);
}

// ---- lane-ordered renormalization of all lanes; returns the words taken.

template <class Arch, std::size_t Registers>
NWC_FORCE_INLINE std::size_t renormalize(LaneRegisters<Arch, Registers>& states, const std::uint8_t* words, xsimd::generic) noexcept {
    std::size_t taken = 0;
    for (std::size_t r = 0; r < Registers; ++r) {
        const auto need = states[r] < Lanes<Arch>(rans::state_lower_bound);
        if (!xsimd::any(need)) continue;
        alignas(64) std::uint32_t lanes[Lanes<Arch>::size];
        states[r].store_aligned(lanes);
        for (std::size_t lane = 0; lane < Lanes<Arch>::size; ++lane)
            if (lanes[lane] < rans::state_lower_bound) lanes[lane] = (lanes[lane] << 16) | load_u16(words + 2 * taken++);
        states[r] = Lanes<Arch>::load_aligned(lanes);
    }
    return taken;
}
#if defined(__AVX2__)
/// Per 8-bit mask of the lanes that need a word, each lane's rank among them (one byte per lane):
/// AVX2 has no expand instruction, so a permute by these indices does it.
constexpr std::array<std::uint64_t, 256> make_expand_indices() noexcept {
    std::array<std::uint64_t, 256> table{};
    for (unsigned mask = 0; mask < 256; ++mask) {
        std::uint64_t packed = 0, rank = 0;
        for (unsigned lane = 0; lane < 8; ++lane)
            if ((mask >> lane) & 1u) packed |= (rank++) << (8 * lane);
        table[mask] = packed;
    }
    return table;
}
inline constexpr std::array<std::uint64_t, 256> expand_indices = make_expand_indices();

template <class Arch, std::size_t Registers>
NWC_FORCE_INLINE std::size_t renormalize(LaneRegisters<Arch, Registers>& states, const std::uint8_t* words, xsimd::avx2) noexcept {
    const __m256i below_bound = _mm256_set1_epi32(std::int32_t(rans::state_lower_bound - 1));
    std::size_t taken = 0;
    for (std::size_t r = 0; r < Registers; ++r) {
        const __m256i lanes = states[r];
        const __m256i need = _mm256_cmpeq_epi32(_mm256_min_epu32(lanes, below_bound), lanes);  // x < 2^16, unsigned
        const unsigned mask = unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(need)));
        const __m256i next_words = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(words + 2 * taken)));
        const __m256i ranks = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(std::int64_t(expand_indices[mask])));
        const __m256i renormalized = _mm256_or_si256(_mm256_slli_epi32(lanes, 16), _mm256_permutevar8x32_epi32(next_words, ranks));
        states[r] = _mm256_blendv_epi8(lanes, renormalized, need);
        taken += std::size_t(std::popcount(mask));
    }
    return taken;
}
#endif
#if defined(__AVX512F__)
template <class Arch, std::size_t Registers>
NWC_FORCE_INLINE std::size_t renormalize(LaneRegisters<Arch, Registers>& states, const std::uint8_t* words, xsimd::avx512f) noexcept {
    const __m512i bound = _mm512_set1_epi32(std::int32_t(rans::state_lower_bound));
    // Each register's words start after the previous register's. (VBMI2's vpexpandw does 32 lanes
    // in one instruction but measured 20% slower on Zen 5.)
    std::size_t taken = 0;
    for (std::size_t r = 0; r < Registers; ++r) {
        const __m512i lanes = states[r];
        const __mmask16 need = _mm512_cmplt_epu32_mask(lanes, bound);
        const __m512i next_words =
            _mm512_maskz_expand_epi32(need, _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(words + 2 * taken))));
        states[r] = _mm512_mask_or_epi32(lanes, need, _mm512_slli_epi32(lanes, 16), next_words);
        taken += std::size_t(std::popcount(std::uint32_t(need)));
    }
    return taken;
}
#endif

/// Per-lane channel constants of the current step; every segment starts at channel 0.
/// FixedChannels: lanes % channel_count == 0, they never change.
template <class Arch, std::size_t Registers, bool FixedChannels>
struct ChannelLanes {
    using V = Lanes<Arch>;
    static constexpr std::size_t width = V::size;
    static constexpr std::uint32_t lane_count = std::uint32_t(Registers * width);
    LaneRegisters<Arch, Registers> channel, slot_base, bin_base, value_offset, support;

    explicit ChannelLanes(const RansDecodeTables& tables) {
        for (std::size_t r = 0; r < Registers; ++r) {
            alignas(64) std::uint32_t lane_channel[width];
            for (std::size_t lane = 0; lane < width; ++lane) lane_channel[lane] = std::uint32_t((r * width + lane) % tables.channel_count);
            channel[r] = V::load_aligned(lane_channel);
        }
        lookup(tables);
    }
    /// Moves every lane one step on: channel += lanes mod channel_count.
    NWC_FORCE_INLINE void advance(const RansDecodeTables& tables) noexcept {
        if constexpr (!FixedChannels) {
            const V stride(lane_count % tables.channel_count), count(tables.channel_count);
            for (std::size_t r = 0; r < Registers; ++r) {
                channel[r] = channel[r] + stride;
                channel[r] = xsimd::select(channel[r] >= count, channel[r] - count, channel[r]);
            }
            lookup(tables);
        }
    }
    NWC_FORCE_INLINE void lookup(const RansDecodeTables& tables) noexcept {
        const auto* offsets = reinterpret_cast<const std::uint32_t*>(tables.offsets.data());
        for (std::size_t r = 0; r < Registers; ++r) {
            slot_base[r] = channel[r] << tables.precision;
            bin_base[r] = gather_u32<Arch>(tables.bin_bases.data(), channel[r], Arch{});
            value_offset[r] = gather_u32<Arch>(offsets, channel[r], Arch{});
            support[r] = gather_u32<Arch>(tables.supports.data(), channel[r], Arch{});
        }
    }
};

using SlotLayout = RansSlotLayout;

/// The table pointers of the step, copied out of RansDecodeTables into locals: the step's vector
/// stores may alias anything, so values left in memory would be reloaded after every store.
template <SlotLayout Layout>
struct StepTables {
    using SlotEntry = std::conditional_t<Layout == SlotLayout::packed, std::uint32_t,
                                         std::conditional_t<Layout == SlotLayout::byte_bins, std::uint8_t, std::uint16_t>>;
    const SlotEntry* slots;
    const std::uint32_t* bin_entries;
    int precision, bin_bits, frequency_shift;
    std::uint32_t bin_mask, inner_mask;

    explicit StepTables(const RansDecodeTables& tables)
        : bin_entries(tables.bin_entries.data()),
          precision(tables.precision),
          bin_bits(tables.packed_bin_bits),
          frequency_shift(tables.packed_bin_bits + tables.packed_frequency_bits),
          bin_mask((1u << tables.packed_bin_bits) - 1),
          inner_mask(std::uint32_t((std::uint64_t(1) << tables.packed_frequency_bits) - 1)) {
        if constexpr (Layout == SlotLayout::packed)
            slots = tables.slot_packed.data();
        else if constexpr (Layout == SlotLayout::byte_bins)
            slots = tables.slot_bins_u8.data();
        else
            slots = tables.slot_bins.data();
    }
};

/// One segment in the fast loop: states in registers, the next word, where its symbols go.
template <class Arch, std::size_t Registers>
struct SegmentLanes {
    static constexpr std::size_t lane_count = Registers * Lanes<Arch>::size;
    LaneRegisters<Arch, Registers> states;
    const std::uint8_t* words;
    std::int32_t* out;
    std::ptrdiff_t position = 0;
    std::ptrdiff_t fast_limit;
    std::size_t fast_steps;

    SegmentLanes(RansLaneDecoder& reference, const RansSegmentBytes& segment, std::span<std::int32_t> symbols)
        : words(segment.words), out(symbols.data()) {
        for (std::size_t r = 0; r < Registers; ++r)
            states[r] = Lanes<Arch>::load_unaligned(reference.states() + r * Lanes<Arch>::size);
        // Full steps before any lane reaches its tail (untailed_end is a multiple of the lanes).
        fast_steps = std::min(symbols.size() / lane_count, reference.untailed_end() / lane_count);
        // A fast step reads up to 2 x lanes bytes at the next word: stop where that would pass the buffer.
        fast_limit = (segment.stream_end - segment.words - std::ptrdiff_t(2 * lane_count)) / 2;
    }
    NWC_FORCE_INLINE bool can_step(std::size_t step) const noexcept { return step < fast_steps && position <= fast_limit; }
};

[[gnu::noinline]] inline void finish_reference(RansLaneDecoder& reference, std::size_t word_position, std::size_t first_symbol,
                                               std::size_t symbol_count, std::int32_t* out) {
    reference.word_position() = word_position;
    reference.decode(first_symbol, symbol_count, out);
    reference.expect_end();
}

/// Hands a segment's states to its reference decoder, which decodes the rest and checks the end.
/// Copies values out rather than taking the lanes' address, which would pin them to memory.
template <class Arch, std::size_t Registers>
NWC_FORCE_INLINE void finish_segment(RansLaneDecoder& reference, const SegmentLanes<Arch, Registers>& segment, std::size_t step,
                                     std::size_t symbol_count) {
    for (std::size_t r = 0; r < Registers; ++r) segment.states[r].store_unaligned(reference.states() + r * Lanes<Arch>::size);
    finish_reference(reference, std::size_t(segment.position), step * segment.lane_count, symbol_count, segment.out);
}

/// Escape codes are read in symbol order, after the step's regular values were stored.
[[gnu::noinline]] inline void read_escapes(RansLaneDecoder& reference, std::size_t lane_count, std::size_t step, std::int32_t* step_out) {
    const RansDecodeTables& tables = reference.tables();
    for (std::size_t lane = 0; lane < lane_count; ++lane) {
        const std::size_t channel = (step * lane_count + lane) % tables.channel_count;
        const std::uint32_t bin = std::uint32_t(step_out[lane]) - std::uint32_t(tables.offsets[channel]);
        if (bin == tables.supports[channel]) step_out[lane] = reference.escapes().read_value(tables.offsets[channel], tables.supports[channel]);
    }
}

/// Decodes symbols lanes step .. lanes (step + 1) - 1 of one segment.
template <class Arch, std::size_t Registers, bool FixedChannels, SlotLayout Layout>
NWC_FORCE_INLINE void decode_step(SegmentLanes<Arch, Registers>& segment, std::size_t step, const ChannelLanes<Arch, Registers, FixedChannels>& lanes,
                                  const StepTables<Layout>& tables, RansLaneDecoder& reference) {
    using V = Lanes<Arch>;
    const V slot_mask((1u << tables.precision) - 1), low_16(0xFFFFu);
    std::int32_t* step_out = segment.out + step * segment.lane_count;
    auto escaped = V(0) != V(0);
    for (std::size_t r = 0; r < Registers; ++r) {
        const V slot = segment.states[r] & slot_mask;
        V bin;
        if constexpr (Layout == SlotLayout::packed) {
            const V entry = gather_u32<Arch>(tables.slots, slot | lanes.slot_base[r], Arch{});
            bin = entry & V(tables.bin_mask);
            segment.states[r] = (entry >> tables.frequency_shift) * (segment.states[r] >> tables.precision) +
                                ((entry >> tables.bin_bits) & V(tables.inner_mask));
        } else {
            if constexpr (Layout == SlotLayout::byte_bins)
                bin = gather_u8<Arch>(tables.slots, slot | lanes.slot_base[r], Arch{});
            else
                bin = gather_u16<Arch>(tables.slots, slot | lanes.slot_base[r], Arch{});
            const V entry = gather_u32<Arch>(tables.bin_entries, bin + lanes.bin_base[r], Arch{});
            segment.states[r] = (entry >> 16) * (segment.states[r] >> tables.precision) + slot - (entry & low_16);
        }
        (lanes.value_offset[r] + bin).store_unaligned(reinterpret_cast<std::uint32_t*>(step_out + r * V::size));
        escaped = escaped | (bin == lanes.support[r]);
    }
    if (NWC_UNLIKELY(xsimd::any(escaped))) read_escapes(reference, segment.lane_count, step, step_out);
    segment.position += std::ptrdiff_t(renormalize<Arch, Registers>(segment.states, segment.words + 2 * segment.position, Arch{}));
}

/// Decodes one segment: the fast loop over full untailed steps, then the reference decoder for the
/// rest. The loop works on local copies so that the states stay in registers (GCC 12 spills lanes
/// whose address escapes). Two segments interleaved in one loop measured no faster: the gathers'
/// throughput, not their latency, bounds this loop on Zen 5 at 32 lanes.
template <class Arch, std::size_t Registers, bool FixedChannels, SlotLayout Layout>
void decode_segment(RansLaneDecoder& reference, const RansSegmentBytes& segment_bytes, std::span<std::int32_t> out) {
    const RansDecodeTables& decode_tables = reference.tables();
    const StepTables<Layout> tables(decode_tables);
    ChannelLanes<Arch, Registers, FixedChannels> lanes(decode_tables);
    SegmentLanes<Arch, Registers> segment(reference, segment_bytes, out);
    std::size_t step = 0;
    for (; segment.can_step(step); ++step) {
        decode_step(segment, step, lanes, tables, reference);
        lanes.advance(decode_tables);
    }
    finish_segment(reference, segment, step, out.size());
}

template <class Arch, std::size_t Registers>
void decode_segment_with(RansLaneDecoder& reference, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    using packed = std::integral_constant<SlotLayout, SlotLayout::packed>;
    using byte_bins = std::integral_constant<SlotLayout, SlotLayout::byte_bins>;
    using word_bins = std::integral_constant<SlotLayout, SlotLayout::word_bins>;
    const RansDecodeTables& tables = reference.tables();
    auto with_layout = [&](auto fixed) {
        auto run = [&](auto layout) { decode_segment<Arch, Registers, decltype(fixed)::value, decltype(layout)::value>(reference, segment, out); };
        if (tables.layout == SlotLayout::packed) run(packed{});
        else if (tables.layout == SlotLayout::byte_bins) run(byte_bins{});
        else run(word_bins{});
    };
    if ((Registers * Lanes<Arch>::size) % tables.channel_count == 0) with_layout(std::true_type{});
    else with_layout(std::false_type{});
}

/// Decodes one segment on `Arch`: its lanes in lanes / width registers, or with the scalar
/// reference when they do not fill one register.
template <class Arch>
void decode_segment_on(const RansDecodeTables& tables, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    constexpr std::size_t width = Lanes<Arch>::size;
    RansLaneDecoder reference(tables, segment);
    const std::size_t lanes = reference.lane_count();
    if constexpr (width <= rans::max_lane_count) {
        if (lanes == rans::max_lane_count) return decode_segment_with<Arch, rans::max_lane_count / width>(reference, segment, out);
    }
    if constexpr (width <= rans::max_lane_count / 2) {
        if (lanes == rans::max_lane_count / 2) return decode_segment_with<Arch, rans::max_lane_count / 2 / width>(reference, segment, out);
    }
    if constexpr (width <= rans::max_lane_count / 4) {
        if (lanes == rans::max_lane_count / 4) return decode_segment_with<Arch, rans::max_lane_count / 4 / width>(reference, segment, out);
    }
    if constexpr (width <= rans::max_lane_count / 8) {
        if (lanes == rans::max_lane_count / 8) return decode_segment_with<Arch, rans::max_lane_count / 8 / width>(reference, segment, out);
    }
    finish_reference(reference, 0, 0, out.size(), out.data());
}

}  // namespace rans_simd

/// SIMD decoder of one segment on the xsimd architecture `Arch` (tests instantiate several).
template <class Arch>
void rans_decode_segment_on(const RansDecodeTables& tables, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    rans_simd::decode_segment_on<Arch>(tables, segment, out);
}

/// The simd backend: the best instruction set this translation unit was compiled for whose
/// registers the segment's lanes fill; 8-lane segments on AVX-512 use AVX2, fewer lanes the scalar
/// reference (an SSE or NEON register of 4 lanes without a gather instruction is no faster).
/// A template over simd and the tags derived from it (a tag's own overload, a non-template, wins),
/// so that the SIMD kernels are instantiated where decoding is used, not where this is included.
template <std::derived_from<backend::simd> Simd>
void rans_decode_segment(const RansDecodeTables& tables, const RansSegmentBytes& segment, std::span<std::int32_t> out, Simd) {
    if constexpr (std::is_same_v<xsimd::default_arch, xsimd::unavailable>) {
        rans_decode_segment(tables, segment, out, backend::scalar{});
    } else {
        const std::uint32_t lanes = rans::lane_count_for(segment.symbol_count);
        if (lanes >= rans_simd::Lanes<xsimd::default_arch>::size) return rans_decode_segment_on<xsimd::default_arch>(tables, segment, out);
#if XSIMD_WITH_AVX2
        if (lanes >= 8) return rans_decode_segment_on<xsimd::avx2>(tables, segment, out);
#endif
        rans_decode_segment(tables, segment, out, backend::scalar{});
    }
}

}  // namespace nwc::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
