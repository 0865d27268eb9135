// The byte planes of the lossless float codec: splitting elements into planes and merging them back.
//
// Read me first:
// - A 16-bit element (bf16 or f16) is cut into two bytes: plane 0 = bits 7..14 (bf16: the whole
//   exponent; f16: its 5 exponent bits and the top 3 mantissa bits), plane 1 = the sign as bit 7
//   and bits 0..6 below it. Plane 0 holds nearly all the redundancy (2.61 bits of entropy per
//   element in GPT-Neo's bf16 weights), plane 1 is nearly uniform (7.97 bits). For f16 the same cut
//   puts 3 mantissa bits beside the exponent, where the coder gets their small skew (0.075 bit on
//   MT3) for free, and keeps one kernel for both types (docs/bench/lossless.md has the entropies).
// - A 32-bit element (f32): planes 0 and 1 are those of its high half (a bf16), plane 2 = bits
//   0..7, plane 3 = bits 8..15.
// - Merging takes plane 0 as int32, the rANS decoder's output (no separate narrowing pass), and the
//   other planes as bytes. It returns whether every plane-0 value was a byte: one outside 0..255
//   can only come from a corrupt escape code, and the caller turns that into nwc::error.
// - backend::simd: xsimd batches for the bit arithmetic, with widening/narrowing loads per
//   instruction set (AVX-512BW, AVX2; a generic fallback through memory elsewhere); the tail goes
//   to the scalar reference, so both give the same bytes. Splitting (the encoder's side) is scalar:
//   the scalar rANS encoder takes ~6x its time (docs/bench/lossless.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <xsimd/xsimd.hpp>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/tensor.hpp"

// GCC 12 reports its own _mm256_undefined_si256() as "(maybe) uninitialized" once AVX-512
// intrinsics are inlined (GCC bug 105593, fixed in 13), as in rans_simd.hpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nwc::detail {

inline constexpr std::size_t lossless_max_planes = 4;

/// The byte planes of one block of elements: plane 0 as decoded int32 symbols, planes 1.. as bytes.
struct FloatPlaneSources {
    const std::int32_t* plane0 = nullptr;
    const std::uint8_t* bytes[lossless_max_planes] = {};  ///< bytes[p] for p >= 1; bytes[0] unused
};

/// Splits `count` little-endian elements of `type` (bf16, f16, f32) into planes[p][0..count).
inline void split_float_planes(dtype type, const std::uint8_t* elements, std::size_t count, std::uint8_t* const* planes) noexcept {
    if (type == dtype::f32) {
        for (std::size_t i = 0; i < count; ++i) {
            std::uint32_t bits;
            std::memcpy(&bits, elements + 4 * i, 4);
            planes[0][i] = std::uint8_t(bits >> 23);
            planes[1][i] = std::uint8_t(((bits >> 24) & 0x80u) | ((bits >> 16) & 0x7Fu));
            planes[2][i] = std::uint8_t(bits);
            planes[3][i] = std::uint8_t(bits >> 8);
        }
        return;
    }
    for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, elements + 2 * i, 2);
        planes[0][i] = std::uint8_t(bits >> 7);
        planes[1][i] = std::uint8_t(((bits >> 8) & 0x80u) | (bits & 0x7Fu));
    }
}

/// Reference merge of elements [first, end) into out (element i at out + element size * i); returns
/// whether all their plane-0 values were in 0..255. Out of line: the SIMD kernels call it for
/// their short tails, and inlined there GCC 12 misjudges its bounds (-Waggressive-loop-optimizations).
[[gnu::noinline]] inline bool merge_float_range(dtype type, const FloatPlaneSources& in, std::size_t first, std::size_t end, std::uint8_t* out) noexcept {
    std::uint32_t seen = 0;
    const std::size_t size = type == dtype::f32 ? 4 : 2;
    for (std::size_t i = first; i < end; ++i) {
        const auto exponent = std::uint32_t(in.plane0[i]);
        seen |= exponent;
        const std::uint32_t low = in.bytes[1][i];
        const std::uint32_t high = ((low & 0x80u) << 8) | ((exponent & 0xFFu) << 7) | (low & 0x7Fu);
        const std::uint32_t bits = size == 4 ? (high << 16) | (std::uint32_t(in.bytes[3][i]) << 8) | in.bytes[2][i] : high;
        std::memcpy(out + size * i, &bits, size);  // little-endian: the low `size` bytes
    }
    return seen <= 0xFFu;
}

/// Reference merge of `count` elements into out; returns whether all plane-0 values were in 0..255.
inline bool merge_float_planes(dtype type, const FloatPlaneSources& in, std::size_t count, std::uint8_t* out, backend::scalar) noexcept {
    return merge_float_range(type, in, 0, count, out);
}

/// Reference narrowing of a decoded plane p >= 1 to bytes; returns whether all values were in 0..255.
inline bool narrow_plane(const std::int32_t* in, std::size_t count, std::uint8_t* out, backend::scalar) noexcept {
    std::uint32_t seen = 0;
    for (std::size_t i = 0; i < count; ++i) {
        seen |= std::uint32_t(in[i]);
        out[i] = std::uint8_t(in[i]);
    }
    return seen <= 0xFFu;
}

namespace lossless_simd {

template <class Arch>
using U16 = xsimd::batch<std::uint16_t, Arch>;
template <class Arch>
using U32 = xsimd::batch<std::uint32_t, Arch>;

// ---- loads that change the element width: generic versions through memory, then intrinsics.

/// U16::size int32 values (each < 2^16 when valid) as u16 lanes.
template <class Arch>
NWC_FORCE_INLINE U16<Arch> load_narrow_u16(const std::int32_t* in, xsimd::generic) noexcept {
    alignas(64) std::uint16_t lanes[U16<Arch>::size];
    for (std::size_t lane = 0; lane < U16<Arch>::size; ++lane) lanes[lane] = std::uint16_t(in[lane]);
    return U16<Arch>::load_aligned(lanes);
}
/// U16::size bytes, zero-extended.
template <class Arch>
NWC_FORCE_INLINE U16<Arch> load_widen_u16(const std::uint8_t* in, xsimd::generic) noexcept {
    alignas(64) std::uint16_t lanes[U16<Arch>::size];
    for (std::size_t lane = 0; lane < U16<Arch>::size; ++lane) lanes[lane] = in[lane];
    return U16<Arch>::load_aligned(lanes);
}
/// U32::size bytes, zero-extended.
template <class Arch>
NWC_FORCE_INLINE U32<Arch> load_widen_u32(const std::uint8_t* in, xsimd::generic) noexcept {
    alignas(64) std::uint32_t lanes[U32<Arch>::size];
    for (std::size_t lane = 0; lane < U32<Arch>::size; ++lane) lanes[lane] = in[lane];
    return U32<Arch>::load_aligned(lanes);
}
/// Stores the low byte of each lane.
template <class Arch>
NWC_FORCE_INLINE void store_narrow_u8(const U32<Arch>& values, std::uint8_t* out, xsimd::generic) noexcept {
    alignas(64) std::uint32_t lanes[U32<Arch>::size];
    values.store_aligned(lanes);
    for (std::size_t lane = 0; lane < U32<Arch>::size; ++lane) out[lane] = std::uint8_t(lanes[lane]);
}
#if defined(__AVX2__)
template <class Arch>
NWC_FORCE_INLINE U16<Arch> load_narrow_u16(const std::int32_t* in, xsimd::avx2) noexcept {
    // packus saturates and interleaves 128-bit halves; the permute restores element order.
    const __m256i packed = _mm256_packus_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)),
                                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 8)));
    return _mm256_permute4x64_epi64(packed, 0xD8);
}
template <class Arch>
NWC_FORCE_INLINE U16<Arch> load_widen_u16(const std::uint8_t* in, xsimd::avx2) noexcept {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
}
template <class Arch>
NWC_FORCE_INLINE U32<Arch> load_widen_u32(const std::uint8_t* in, xsimd::avx2) noexcept {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(in)));
}
#endif
#if defined(__AVX512BW__)
template <class Arch>
NWC_FORCE_INLINE U16<Arch> load_narrow_u16(const std::int32_t* in, xsimd::avx512bw) noexcept {
    const __m256i low = _mm512_cvtepi32_epi16(_mm512_loadu_si512(in)), high = _mm512_cvtepi32_epi16(_mm512_loadu_si512(in + 16));
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}
template <class Arch>
NWC_FORCE_INLINE U16<Arch> load_widen_u16(const std::uint8_t* in, xsimd::avx512bw) noexcept {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)));
}
#endif
#if defined(__AVX512F__)
template <class Arch>
NWC_FORCE_INLINE U32<Arch> load_widen_u32(const std::uint8_t* in, xsimd::avx512f) noexcept {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
}
template <class Arch>
NWC_FORCE_INLINE void store_narrow_u8(const U32<Arch>& values, std::uint8_t* out, xsimd::avx512f) noexcept {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(values));
}
#endif

// ---- the kernels; each returns the index where the scalar tail starts.

template <class Arch>
std::size_t merge16(const FloatPlaneSources& in, std::size_t count, std::uint8_t* out, U32<Arch>& seen) noexcept {
    using V = U16<Arch>;
    constexpr std::size_t width = V::size;
    const V low_mask(0x7F), sign_mask(0x80);
    std::size_t i = 0;
    for (; i + width <= count; i += width) {
        // The OR of the raw int32s catches values >= 2^16, which the narrowing load would hide.
        for (std::size_t half = 0; half < width; half += U32<Arch>::size)
            seen = seen | U32<Arch>::load_unaligned(reinterpret_cast<const std::uint32_t*>(in.plane0 + i + half));
        const V exponent = load_narrow_u16<Arch>(in.plane0 + i, Arch{});
        const V low = load_widen_u16<Arch>(in.bytes[1] + i, Arch{});
        const V bits = ((low & sign_mask) << 8) | (exponent << 7) | (low & low_mask);
        bits.store_unaligned(reinterpret_cast<std::uint16_t*>(out + 2 * i));
    }
    return i;
}

template <class Arch>
std::size_t merge32(const FloatPlaneSources& in, std::size_t count, std::uint8_t* out, U32<Arch>& seen) noexcept {
    using V = U32<Arch>;
    constexpr std::size_t width = V::size;
    const V low_mask(0x7F), sign_mask(0x80);
    std::size_t i = 0;
    for (; i + width <= count; i += width) {
        const V exponent = V::load_unaligned(reinterpret_cast<const std::uint32_t*>(in.plane0 + i));
        seen = seen | exponent;
        const V high = load_widen_u32<Arch>(in.bytes[1] + i, Arch{});
        const V bits = ((high & sign_mask) << 24) | (exponent << 23) | ((high & low_mask) << 16) |
                       (load_widen_u32<Arch>(in.bytes[3] + i, Arch{}) << 8) | load_widen_u32<Arch>(in.bytes[2] + i, Arch{});
        bits.store_unaligned(reinterpret_cast<std::uint32_t*>(out + 4 * i));
    }
    return i;
}

template <class Arch>
NWC_FORCE_INLINE bool all_bytes(const U32<Arch>& seen) noexcept {
    return !xsimd::any(seen > U32<Arch>(0xFFu));
}

}  // namespace lossless_simd

/// SIMD merge on the xsimd architecture `Arch` (tests instantiate several); same result as the
/// scalar overload.
template <class Arch>
bool merge_float_planes_on(dtype type, const FloatPlaneSources& in, std::size_t count, std::uint8_t* out) noexcept {
    lossless_simd::U32<Arch> seen(0u);
    const std::size_t done =
        type == dtype::f32 ? lossless_simd::merge32<Arch>(in, count, out, seen) : lossless_simd::merge16<Arch>(in, count, out, seen);
    const bool tail_ok = merge_float_range(type, in, done, count, out);
    return lossless_simd::all_bytes<Arch>(seen) && tail_ok;
}

/// SIMD narrowing of a decoded plane on `Arch`; same result as the scalar overload.
template <class Arch>
bool narrow_plane_on(const std::int32_t* in, std::size_t count, std::uint8_t* out) noexcept {
    using V = lossless_simd::U32<Arch>;
    V seen(0u);
    std::size_t i = 0;
    for (; i + V::size <= count; i += V::size) {
        const V values = V::load_unaligned(reinterpret_cast<const std::uint32_t*>(in + i));
        seen = seen | values;
        lossless_simd::store_narrow_u8<Arch>(values, out + i, Arch{});
    }
    const bool tail_ok = narrow_plane(in + i, count - i, out + i, backend::scalar{});
    return lossless_simd::all_bytes<Arch>(seen) && tail_ok;
}

/// The simd backend: the best instruction set this translation unit was compiled for. Templates
/// over simd and the tags derived from it, so that the kernels are instantiated where they are
/// used, not where this is included (a tag's own non-template overload wins).
template <std::derived_from<backend::simd> Simd>
bool merge_float_planes(dtype type, const FloatPlaneSources& in, std::size_t count, std::uint8_t* out, Simd) noexcept {
    if constexpr (std::is_same_v<xsimd::default_arch, xsimd::unavailable>)
        return merge_float_planes(type, in, count, out, backend::scalar{});
    else
        return merge_float_planes_on<xsimd::default_arch>(type, in, count, out);
}
template <std::derived_from<backend::simd> Simd>
bool narrow_plane(const std::int32_t* in, std::size_t count, std::uint8_t* out, Simd) noexcept {
    if constexpr (std::is_same_v<xsimd::default_arch, xsimd::unavailable>)
        return narrow_plane(in, count, out, backend::scalar{});
    else
        return narrow_plane_on<xsimd::default_arch>(in, count, out);
}

}  // namespace nwc::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
