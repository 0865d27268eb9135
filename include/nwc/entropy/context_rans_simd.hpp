// The SIMD decoder of context-coded rANS streams (nwc::backend::simd): all 32 lanes of a step at
// once, each lane carrying its rANS state and its machine state in xsimd registers.
//
// Read me first (rans_simd.hpp explains the rANS step, the slot layouts and the lane-ordered
// renormalization, all reused from there):
// - Per step and register: one gather of the slot entry (the lane's table is its context, so the
//   slot index is (context << precision) | slot), then one gather of the packed transition
//   (next state | next context << 16) indexed by (state << 1) | (bin & 1). The context's value
//   offset and support (and bin base, in the two-gather layouts) are looked up in registers by
//   a permute when the contexts fit one register (2 for trellis-coded quantization), else gathered.
// - A step with an escape (bin == the context's support) hands the whole step's values and
//   transitions to the reference decoder's read_escape (the escaped symbol's parity, not the escape
//   bin's, picks the transition), then reloads the lanes: both decoders read the same bytes in the
//   same order and produce the same values, or both throw.
// - The partial last step and the last steps of the buffer go to the reference decoder, which
//   takes over the rANS and machine states.
#pragma once

#include <cstdint>
#include <span>
#include <type_traits>

#include <xsimd/xsimd.hpp>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/backend.hpp"
#include "nwc/entropy/context_rans_lanes.hpp"
#include "nwc/entropy/rans_simd.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nwc::detail {
namespace context_simd {

using rans_simd::LaneRegisters;
using rans_simd::Lanes;
using rans_simd::register_count;
using rans_simd::SlotLayout;

/// table[index[lane]] for a table held in one register (index < Lanes::size).
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> permute_u32(const Lanes<Arch>& table, const Lanes<Arch>& index, xsimd::generic) noexcept {
    alignas(64) std::uint32_t entries[Lanes<Arch>::size], indices[Lanes<Arch>::size], values[Lanes<Arch>::size];
    table.store_aligned(entries);
    index.store_aligned(indices);
    for (std::size_t lane = 0; lane < Lanes<Arch>::size; ++lane) values[lane] = entries[indices[lane]];
    return Lanes<Arch>::load_aligned(values);
}
#if defined(__AVX2__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> permute_u32(const Lanes<Arch>& table, const Lanes<Arch>& index, xsimd::avx2) noexcept {
    return _mm256_permutevar8x32_epi32(table, index);
}
#endif
#if defined(__AVX512F__)
template <class Arch>
NWC_FORCE_INLINE Lanes<Arch> permute_u32(const Lanes<Arch>& table, const Lanes<Arch>& index, xsimd::avx512f) noexcept {
    return _mm512_permutexvar_epi32(index, table);
}
#endif

/// One per-context constant: from a register (InRegister: every context index < Lanes::size) or gathered.
template <class Arch, bool InRegister>
struct ContextConstant {
    const std::uint32_t* values;
    Lanes<Arch> in_register;
    ContextConstant(const std::uint32_t* data, std::size_t count) : values(data) {
        if constexpr (InRegister) {
            alignas(64) std::uint32_t padded[Lanes<Arch>::size] = {};
            std::copy(data, data + count, padded);
            in_register = Lanes<Arch>::load_aligned(padded);
        }
    }
    NWC_FORCE_INLINE Lanes<Arch> operator()(const Lanes<Arch>& context) const noexcept {
        if constexpr (InRegister)
            return permute_u32<Arch>(in_register, context, Arch{});
        else
            return rans_simd::gather_u32<Arch>(values, context, Arch{});
    }
};

/// The lanes of one segment: rANS states, machine states and their contexts' constants.
template <class Arch, SlotLayout Layout, bool InRegister>
struct ContextLanes {
    using V = Lanes<Arch>;
    static constexpr std::size_t width = V::size;
    LaneRegisters<Arch> x, state, slot_base, value_offset, support, bin_base;
    ContextConstant<Arch, InRegister> value_offsets, supports, bin_bases;
    int precision;

    ContextLanes(const ContextDecodeTables& bound, ContextLaneDecoder& reference)
        : value_offsets(reinterpret_cast<const std::uint32_t*>(bound.value_offsets.data()), bound.value_offsets.size()),
          supports(bound.rans->supports.data(), bound.rans->supports.size()),
          bin_bases(bound.rans->bin_bases.data(), bound.rans->bin_bases.size()),
          precision(bound.rans->precision) {
        load(bound, reference);
    }
    /// Takes the rANS and machine states from the reference decoder and derives the contexts' constants.
    void load(const ContextDecodeTables& bound, ContextLaneDecoder& reference) {
        alignas(64) std::uint32_t contexts[rans::lane_count];
        for (std::size_t lane = 0; lane < rans::lane_count; ++lane) contexts[lane] = bound.state_contexts[reference.lane_states()[lane]];
        for (std::size_t r = 0; r < register_count<Arch>; ++r) {
            x[r] = V::load_unaligned(reference.states() + r * width);
            state[r] = V::load_unaligned(reference.lane_states() + r * width);
            refresh(r, V::load_aligned(contexts + r * width));
        }
    }
    NWC_FORCE_INLINE void refresh(std::size_t r, const V& context) noexcept {
        slot_base[r] = context << precision;
        value_offset[r] = value_offsets(context);
        support[r] = supports(context);
        if constexpr (Layout != SlotLayout::packed) bin_base[r] = bin_bases(context);
    }
    void store(ContextLaneDecoder& reference) const {
        for (std::size_t r = 0; r < register_count<Arch>; ++r) {
            x[r].store_unaligned(reference.states() + r * width);
            state[r].store_unaligned(reference.lane_states() + r * width);
        }
    }
};

/// A step with an escape: values and transitions of all 32 lanes through the reference decoder,
/// in lane (= symbol) order, then the lanes reloaded.
template <class Arch, SlotLayout Layout, bool InRegister>
[[gnu::noinline]] void escape_step(ContextLanes<Arch, Layout, InRegister>& lanes, const LaneRegisters<Arch>& bins, const ContextDecodeTables& bound,
                                   ContextLaneDecoder& reference, std::int32_t* step_out) {
    alignas(64) std::uint32_t bin_values[rans::lane_count];
    for (std::size_t r = 0; r < register_count<Arch>; ++r) bins[r].store_aligned(bin_values + r * Lanes<Arch>::size);
    lanes.store(reference);
    std::uint32_t* lane_states = reference.lane_states();
    for (std::size_t lane = 0; lane < rans::lane_count; ++lane) {
        const std::uint32_t state = lane_states[lane], context = bound.state_contexts[state], bin = bin_values[lane];
        if (bin != bound.rans->supports[context]) {
            step_out[lane] = bound.value_of_bin(context, bin);
            lane_states[lane] = bound.bin_transitions[2 * state + (bin & 1u)] & 0xFFFFu;
        } else {
            lane_states[lane] = reference.read_escape(state, context, step_out[lane]);
        }
    }
    lanes.load(bound, reference);
}

/// Decodes one segment: full steps in registers, then the reference decoder for the rest.
template <class Arch, SlotLayout Layout, bool InRegister>
void decode_segment(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    using V = Lanes<Arch>;
    ContextLaneDecoder reference(bound, segment);
    const rans_simd::StepTables<Layout> tables(*bound.rans);
    ContextLanes<Arch, Layout, InRegister> lanes(bound, reference);
    const std::uint32_t* transitions = bound.bin_transitions.data();
    const V slot_mask((1u << tables.precision) - 1), low_16(0xFFFFu), one(1u), stride(std::uint32_t(bound.value_stride));
    const std::size_t full_steps = out.size() / rans::lane_count;
    // The renormalization reads 64 bytes at the next word: stop the fast loop where that would pass the buffer.
    const std::ptrdiff_t fast_limit = (segment.stream_end - segment.words - 64) / 2;
    std::ptrdiff_t position = 0;
    std::size_t step = 0;
    for (; step < full_steps && position <= fast_limit; ++step) {
        std::int32_t* step_out = out.data() + step * rans::lane_count;
        LaneRegisters<Arch> bins;
        auto escaped = V(0) != V(0);
        for (std::size_t r = 0; r < register_count<Arch>; ++r) {
            const V slot = lanes.x[r] & slot_mask;
            if constexpr (Layout == SlotLayout::packed) {
                const V entry = rans_simd::gather_u32<Arch>(tables.slots, slot | lanes.slot_base[r], Arch{});
                bins[r] = entry & V(tables.bin_mask);
                lanes.x[r] = (entry >> tables.frequency_shift) * (lanes.x[r] >> tables.precision) + ((entry >> tables.bin_bits) & V(tables.inner_mask));
            } else {
                if constexpr (Layout == SlotLayout::byte_bins)
                    bins[r] = rans_simd::gather_u8<Arch>(tables.slots, slot | lanes.slot_base[r], Arch{});
                else
                    bins[r] = rans_simd::gather_u16<Arch>(tables.slots, slot | lanes.slot_base[r], Arch{});
                const V entry = rans_simd::gather_u32<Arch>(tables.bin_entries, bins[r] + lanes.bin_base[r], Arch{});
                lanes.x[r] = (entry >> 16) * (lanes.x[r] >> tables.precision) + slot - (entry & low_16);
            }
            escaped = escaped | (bins[r] == lanes.support[r]);
        }
        if (NWC_UNLIKELY(xsimd::any(escaped))) {
            escape_step(lanes, bins, bound, reference, step_out);
        } else {
            for (std::size_t r = 0; r < register_count<Arch>; ++r) {
                (lanes.value_offset[r] + bins[r] * stride).store_unaligned(reinterpret_cast<std::uint32_t*>(step_out + r * V::size));
                const V transition = rans_simd::gather_u32<Arch>(transitions, (lanes.state[r] << 1) | (bins[r] & one), Arch{});
                lanes.state[r] = transition & low_16;
                lanes.refresh(r, transition >> 16);
            }
        }
        position += std::ptrdiff_t(rans_simd::renormalize<Arch>(lanes.x, segment.words + 2 * position, Arch{}));
    }
    lanes.store(reference);
    reference.word_position() = std::size_t(position);
    reference.decode(step * rans::lane_count, out.size(), out.data());
    reference.expect_end();
}

template <class Arch>
void decode_segment_on(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    auto with_layout = [&](auto in_register) {
        constexpr bool fits = decltype(in_register)::value;
        switch (bound.rans->layout) {
            case SlotLayout::packed: return decode_segment<Arch, SlotLayout::packed, fits>(bound, segment, out);
            case SlotLayout::byte_bins: return decode_segment<Arch, SlotLayout::byte_bins, fits>(bound, segment, out);
            case SlotLayout::word_bins: return decode_segment<Arch, SlotLayout::word_bins, fits>(bound, segment, out);
        }
    };
    if (bound.value_offsets.size() <= Lanes<Arch>::size) with_layout(std::true_type{});
    else with_layout(std::false_type{});
}

}  // namespace context_simd

/// SIMD decoder of one segment on the xsimd architecture `Arch` (tests instantiate several).
template <class Arch>
void context_decode_segment_on(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out) {
    context_simd::decode_segment_on<Arch>(bound, segment, out);
}

/// The simd backend: the best instruction set this translation unit was compiled for.
inline void context_decode_segment(const ContextDecodeTables& bound, const RansSegmentBytes& segment, std::span<std::int32_t> out, backend::simd) {
    if constexpr (std::is_same_v<xsimd::default_arch, xsimd::unavailable>)
        context_decode_segment(bound, segment, out, backend::scalar{});
    else
        context_decode_segment_on<xsimd::default_arch>(bound, segment, out);
}

}  // namespace nwc::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
