// The SIMD decoder of context-coded rANS segments (stream version 2) for nwc::backend::simd.
//
// Read me first (rans_simd.hpp explains the rANS step, the slot layouts, the gathers and the
// lane-ordered renormalization, all reused from there; context_rans_lanes.hpp the paths):
// - A step decodes values lanes t .. lanes t + lanes - 1 of a segment on lanes = 8, 16 or 32 rANS
//   lanes (rans::lane_count_for), in lanes / width registers, as the plain SIMD decoder does.
// - Value i follows machine path i % 32, so step t covers the `lanes` consecutive paths of group
//   t % (32 / lanes). The 32 path words (state | context << 16, the packing of
//   ContextDecodeTables::bin_transitions) live in 32 / width registers; the loop runs rounds of
//   32 / lanes steps, unrolled, so that every step's path registers are compile-time indices and
//   stay in registers (an index known only at run time would put them in memory).
// - Per value: the slot gather at (context << precision) | slot (plus the bin's entry in the
//   two-gather layouts), then the transition at (state << 1) | (bin & 1) -> next path word. The
//   contexts' value offsets, supports and bin bases, and the transitions, are in-register permutes
//   when they fit (trellis-coded quantization: 2 contexts, 4-16 states on AVX-512, 4-8 on AVX2),
//   else gathers: a gather costs about one cycle per element on Zen 5, a permute one per register.
// - A step with an escape (bin == its context's support) maps its bins to values and transitions
//   with the reference's own per-value code (context_take_bin), in value order, so the escape
//   bits are read in the reference's order.
// - The fast loop stops where the plain one does (the first step where a lane reaches its tail, or
//   the end of the readable buffer); the reference takes over the rANS states, the word position
//   and the path states and finishes the segment, so both decoders produce identical output from
//   the same bytes, or both throw.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/backend.hpp"
#include "nwc/entropy/context_rans_lanes.hpp"
#include "nwc/entropy/rans_simd.hpp"

// GCC 12's AVX-512 intrinsics warn on their own undefined values (see rans_simd.hpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nwc::detail {
namespace context_simd {

using rans_simd::LaneRegisters;
using rans_simd::Lanes;
using rans_simd::SlotLayout;

// ---- small tables held in registers: table[index[lane]] by permutes (index < 2 x width).

template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> permute_u32(const Lanes<Arch>& low, const Lanes<Arch>& high, const Lanes<Arch>& index, xsimd::generic) noexcept {
    constexpr std::size_t width = Lanes<Arch>::size;
    alignas(64) std::uint32_t entries[2 * width], indices[width], values[width];
    low.store_aligned(entries);
    high.store_aligned(entries + width);
    index.store_aligned(indices);
    for (std::size_t lane = 0; lane < width; ++lane) values[lane] = entries[indices[lane]];
    return Lanes<Arch>::load_aligned(values);
}
#if defined(__AVX2__)
/// AVX2 permutes within 8 entries: both halves, then bit 3 of the index picks one.
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> permute_u32(const Lanes<Arch>& low, const Lanes<Arch>& high, const Lanes<Arch>& index, xsimd::avx2) noexcept {
    const __m256 from_low = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(low, index));
    const __m256 from_high = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(high, index));
    return _mm256_castps_si256(_mm256_blendv_ps(from_low, from_high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28))));
}
#endif
#if defined(__AVX512F__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> permute_u32(const Lanes<Arch>& low, const Lanes<Arch>& high, const Lanes<Arch>& index, xsimd::avx512f) noexcept {
    return _mm512_permutex2var_epi32(low, index, high);
}
#endif

/// A u32 table looked up per lane: permuted from two registers (InRegisters: at most 2 x width
/// entries), else gathered from memory.
template <class Arch, bool InRegisters>
struct LaneTable {
    static constexpr std::size_t width = Lanes<Arch>::size;
    static constexpr std::size_t register_capacity = 2 * width;
    const std::uint32_t* entries;
    Lanes<Arch> low, high;

    explicit LaneTable(std::span<const std::uint32_t> table) : entries(table.data()) {
        if constexpr (InRegisters) {
            NWC_ASSERT(table.size() <= register_capacity);
            alignas(64) std::uint32_t padded[register_capacity] = {};
            std::copy(table.begin(), table.end(), padded);
            low = Lanes<Arch>::load_aligned(padded);
            high = Lanes<Arch>::load_aligned(padded + width);
        }
    }
    NWC_FORCE_INLINE Lanes<Arch> operator()(const Lanes<Arch>& index) const noexcept {
        if constexpr (InRegisters)
            return permute_u32<Arch>(low, high, index, Arch{});
        else
            return rans_simd::gather_u32<Arch>(entries, index, Arch{});
    }
};

/// The per-context constants of the step and the per-(state, parity) transitions.
template <class Arch, bool ContextsInRegisters, bool TransitionsInRegisters>
struct MachineTables {
    LaneTable<Arch, ContextsInRegisters> value_offsets, supports, bin_bases;
    LaneTable<Arch, TransitionsInRegisters> transitions;
    Lanes<Arch> stride;

    explicit MachineTables(const ContextDecodeTables& bound)
        : value_offsets(std::span(reinterpret_cast<const std::uint32_t*>(bound.value_offsets.data()), bound.value_offsets.size())),
          supports(bound.rans->supports),
          bin_bases(bound.rans->bin_bases),
          transitions(bound.bin_transitions),
          stride(std::uint32_t(bound.value_stride)) {}
};

/// A step with an escape, out of line: the reference's per-value code maps the step's bins to
/// values and its paths' words to their next ones, in value order.
[[gnu::noinline]] inline void escape_step(const ContextDecodeTables& bound, RansLaneDecoder& reference, std::uint32_t* path_words,
                                          const std::uint32_t* bins, std::size_t lane_count, std::int32_t* step_out) {
    for (std::size_t lane = 0; lane < lane_count; ++lane) {
        const std::uint32_t next = context_take_bin(bound, reference, path_words[lane] & 0xFFFFu, bins[lane], step_out[lane]);
        path_words[lane] = next | (std::uint32_t(bound.state_contexts[next]) << 16);
    }
}

/// Decodes step `step` of a segment, whose values follow the paths of group `Group`.
template <std::size_t Group, class Arch, std::size_t Registers, std::size_t PathRegisters, SlotLayout Layout, bool ContextsInRegisters,
          bool TransitionsInRegisters>
NWC_FORCE_INLINE void decode_step(rans_simd::SegmentLanes<Arch, Registers>& segment, LaneRegisters<Arch, PathRegisters>& paths, std::size_t step,
                                  const rans_simd::StepTables<Layout>& tables,
                                  const MachineTables<Arch, ContextsInRegisters, TransitionsInRegisters>& machine,
                                  const ContextDecodeTables& bound, RansLaneDecoder& reference) {
    using V = Lanes<Arch>;
    constexpr std::size_t width = V::size, first_path = Group * Registers;
    const V slot_mask((1u << tables.precision) - 1), low_16(0xFFFFu), state_bits(0x1FFFEu), one(1u);
    std::int32_t* step_out = segment.out + step * segment.lane_count;
    LaneRegisters<Arch, Registers> bins;
    auto escaped = V(0) != V(0);
    for (std::size_t r = 0; r < Registers; ++r) {
        const V context = paths[first_path + r] >> 16;
        const V slot = segment.states[r] & slot_mask;
        const V slot_index = slot | (context << tables.precision);
        if constexpr (Layout == SlotLayout::packed) {
            const V entry = rans_simd::gather_u32<Arch>(tables.slots, slot_index, Arch{});
            bins[r] = entry & V(tables.bin_mask);
            segment.states[r] = (entry >> tables.frequency_shift) * (segment.states[r] >> tables.precision) +
                                ((entry >> tables.bin_bits) & V(tables.inner_mask));
        } else {
            if constexpr (Layout == SlotLayout::byte_bins)
                bins[r] = rans_simd::gather_u8<Arch>(tables.slots, slot_index, Arch{});
            else
                bins[r] = rans_simd::gather_u16<Arch>(tables.slots, slot_index, Arch{});
            const V entry = rans_simd::gather_u32<Arch>(tables.bin_entries, bins[r] + machine.bin_bases(context), Arch{});
            segment.states[r] = (entry >> 16) * (segment.states[r] >> tables.precision) + slot - (entry & low_16);
        }
        escaped = escaped | (bins[r] == machine.supports(context));
    }
    if (NWC_LIKELY(!xsimd::any(escaped))) {
        for (std::size_t r = 0; r < Registers; ++r) {
            const V path = paths[first_path + r];
            (machine.value_offsets(path >> 16) + bins[r] * machine.stride).store_unaligned(reinterpret_cast<std::uint32_t*>(step_out + r * width));
            // (state << 1) | (bin & 1), the state being the word's low 16 bits.
            paths[first_path + r] = machine.transitions(((path << 1) & state_bits) | (bins[r] & one));
        }
    } else {
        alignas(64) std::uint32_t path_words[Registers * width], bin_values[Registers * width];
        for (std::size_t r = 0; r < Registers; ++r) {
            paths[first_path + r].store_aligned(path_words + r * width);
            bins[r].store_aligned(bin_values + r * width);
        }
        escape_step(bound, reference, path_words, bin_values, segment.lane_count, step_out);
        for (std::size_t r = 0; r < Registers; ++r) paths[first_path + r] = V::load_aligned(path_words + r * width);
    }
    segment.position += std::ptrdiff_t(rans_simd::renormalize<Arch, Registers>(segment.states, segment.words + 2 * segment.position, Arch{}));
}

/// The rest of a segment on the reference, from the fast loop's rANS states (already handed over),
/// word position and path states; then the reference's end checks.
[[gnu::noinline]] inline void finish_reference(const ContextDecodeTables& bound, RansLaneDecoder& reference, std::size_t word_position,
                                               std::uint32_t* path_states, std::size_t first_value, std::span<std::int32_t> out) {
    reference.word_position() = word_position;
    context_decode_values(bound, reference, path_states, first_value, out.size(), out.data());
    reference.expect_end();
}

/// Decodes one segment: rounds of 32 / lanes fast steps, then the reference for the rest.
template <class Arch, std::size_t Registers, SlotLayout Layout, bool ContextsInRegisters, bool TransitionsInRegisters>
void decode_segment(const ContextDecodeTables& bound, RansLaneDecoder& reference, const RansSegmentBytes& segment_bytes,
                    std::span<std::int32_t> out) {
    using V = Lanes<Arch>;
    constexpr std::size_t width = V::size, lane_count = Registers * width;
    constexpr std::size_t path_registers = context_rans::path_count / width, groups = context_rans::path_count / lane_count;
    static_assert(context_rans::path_count % lane_count == 0);
    const rans_simd::StepTables<Layout> tables(*bound.rans);
    const MachineTables<Arch, ContextsInRegisters, TransitionsInRegisters> machine(bound);
    rans_simd::SegmentLanes<Arch, Registers> segment(reference, segment_bytes, out);
    // Every path starts the segment in state 0.
    LaneRegisters<Arch, path_registers> paths;
    paths.fill(V(std::uint32_t(bound.state_contexts[0]) << 16));

    std::size_t step = 0;
    auto step_in_group = [&]<std::size_t Group>(std::integral_constant<std::size_t, Group>) {
        if (!segment.can_step(step)) return false;
        decode_step<Group>(segment, paths, step, tables, machine, bound, reference);
        ++step;
        return true;
    };
    // One round visits groups 0 .. groups - 1 in order (a segment starts at group 0); && stops the
    // round, and the loop, at the first step the fast loop may not take.
    [&]<std::size_t... Group>(std::index_sequence<Group...>) {
        while ((step_in_group(std::integral_constant<std::size_t, Group>{}) && ...)) {
        }
    }(std::make_index_sequence<groups>{});

    for (std::size_t r = 0; r < Registers; ++r) segment.states[r].store_unaligned(reference.states() + r * width);
    alignas(64) std::uint32_t path_states[context_rans::path_count];
    for (std::size_t r = 0; r < path_registers; ++r) (paths[r] & V(0xFFFFu)).store_aligned(path_states + r * width);
    finish_reference(bound, reference, std::size_t(segment.position), path_states, step * lane_count, out);
}

/// Picks the instantiation for the segment's tables and machine.
template <class Arch, std::size_t Registers>
void decode_segment_with(const ContextDecodeTables& bound, RansLaneDecoder& reference, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    constexpr std::size_t capacity = LaneTable<Arch, true>::register_capacity;
    auto with_layout = [&](auto contexts_fit, auto transitions_fit) {
        constexpr bool contexts = decltype(contexts_fit)::value, transitions = decltype(transitions_fit)::value;
        switch (bound.rans->layout) {
            case SlotLayout::packed: return decode_segment<Arch, Registers, SlotLayout::packed, contexts, transitions>(bound, reference, segment, out);
            case SlotLayout::byte_bins:
                return decode_segment<Arch, Registers, SlotLayout::byte_bins, contexts, transitions>(bound, reference, segment, out);
            case SlotLayout::word_bins:
                return decode_segment<Arch, Registers, SlotLayout::word_bins, contexts, transitions>(bound, reference, segment, out);
        }
    };
    auto with_transitions = [&](auto contexts_fit) {
        if (bound.bin_transitions.size() <= capacity) with_layout(contexts_fit, std::true_type{});
        else with_layout(contexts_fit, std::false_type{});
    };
    if (bound.value_offsets.size() <= capacity) with_transitions(std::true_type{});
    else with_transitions(std::false_type{});
}

/// Decodes one segment on `Arch`: its lanes in lanes / width registers, or on the reference when
/// they do not fill one register.
template <class Arch>
void decode_segment_on(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    constexpr std::size_t width = Lanes<Arch>::size;
    RansLaneDecoder reference(*bound.rans, segment);
    const std::size_t lanes = reference.lane_count();
    if constexpr (width <= rans::max_lane_count) {
        if (lanes == rans::max_lane_count) return decode_segment_with<Arch, rans::max_lane_count / width>(bound, reference, segment, out);
    }
    if constexpr (width <= rans::max_lane_count / 2) {
        if (lanes == rans::max_lane_count / 2) return decode_segment_with<Arch, rans::max_lane_count / 2 / width>(bound, reference, segment, out);
    }
    if constexpr (width <= rans::max_lane_count / 4) {
        if (lanes == rans::max_lane_count / 4) return decode_segment_with<Arch, rans::max_lane_count / 4 / width>(bound, reference, segment, out);
    }
    if constexpr (width <= rans::max_lane_count / 8) {
        if (lanes == rans::max_lane_count / 8) return decode_segment_with<Arch, rans::max_lane_count / 8 / width>(bound, reference, segment, out);
    }
    std::uint32_t path_states[context_rans::path_count] = {};
    finish_reference(bound, reference, 0, path_states, 0, out);
}

}  // namespace context_simd

/// SIMD decoder of one context segment on the xsimd architecture `Arch` (tests instantiate several).
template <class Arch>
void context_decode_segment_on(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    context_simd::decode_segment_on<Arch>(bound, segment, out);
}

/// The simd backend: the instruction set choice of the plain coder (rans_decode_segment): the best
/// one whose registers the segment's lanes fill, AVX2 for 8 lanes on AVX-512, else the reference.
/// A template for the same reason as rans_decode_segment's (instantiated where it is used).
template <std::derived_from<backend::simd> Simd>
void context_decode_segment(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out, Simd) {
    if constexpr (std::is_same_v<xsimd::default_arch, xsimd::unavailable>) {
        context_decode_segment(bound, segment, out, backend::scalar{});
    } else {
        const std::uint32_t lanes = rans::lane_count_for(segment.symbol_count);
        if (lanes >= rans_simd::Lanes<xsimd::default_arch>::size) return context_decode_segment_on<xsimd::default_arch>(bound, segment, out);
#if XSIMD_WITH_AVX2
        if (lanes >= 8) return context_decode_segment_on<xsimd::avx2>(bound, segment, out);
#endif
        context_decode_segment(bound, segment, out, backend::scalar{});
    }
}

}  // namespace nwc::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
