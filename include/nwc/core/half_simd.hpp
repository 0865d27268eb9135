// Bulk fp16 / bf16 <-> fp32 conversion, per backend.
//
// Read me first:
// - backend::scalar calls nwc::to_float / to_half / to_bfloat16 (core/half.hpp) element by element:
//   the reference. backend::simd gives the same bits for every value, NaNs included (the lossless
//   method needs NaN payloads kept). tests/test_backend_consistency.cpp checks all 65536 halves and
//   bfloat16s and float edge cases (ties, subnormals, overflow, signalling NaNs).
// - fp16 uses F16C (vcvtph2ps / vcvtps2ph with round-to-nearest-even, which also rounds to
//   subnormal halves exactly as the reference does). F16C sets the quiet bit of a signalling NaN,
//   the reference keeps the payload: a block with a NaN in it is redone by the scalar loop (NaNs
//   are rare in weights, so this costs one compare per block). bf16 is integer arithmetic on xsimd
//   batches: add 0x7FFF + the lowest kept bit, keep the high half; a NaN keeps its truncated
//   payload as the reference does. AVX512-BF16's vcvtneps2bf16 is not used because it flushes
//   subnormal floats to zero.
// - Without F16C / AVX-512 the simd overloads run the scalar loop: same results, no speed-up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <xsimd/xsimd.hpp>
#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/half.hpp"

namespace nwc {

/// out[i] = to_float(in[i]); sizes must match.
inline void convert_to_float(std::span<const half> in, std::span<float> out, backend::scalar) {
    NWC_ASSERT(in.size() == out.size());
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = to_float(in[i]);
}
inline void convert_to_float(std::span<const bfloat16> in, std::span<float> out, backend::scalar) {
    NWC_ASSERT(in.size() == out.size());
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = to_float(in[i]);
}
/// out[i] = to_half(in[i]) / to_bfloat16(in[i]); sizes must match.
inline void convert_from_float(std::span<const float> in, std::span<half> out, backend::scalar) {
    NWC_ASSERT(in.size() == out.size());
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = to_half(in[i]);
}
inline void convert_from_float(std::span<const float> in, std::span<bfloat16> out, backend::scalar) {
    NWC_ASSERT(in.size() == out.size());
    for (std::size_t i = 0; i < in.size(); ++i) out[i] = to_bfloat16(in[i]);
}

/// SIMD half -> float (F16C).
inline void convert_to_float(std::span<const half> in, std::span<float> out, backend::simd) {
    NWC_ASSERT(in.size() == out.size());
    std::size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= in.size(); i += 16) {
        const __m512 wide = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in.data() + i)));
        _mm512_storeu_ps(out.data() + i, wide);
        if (_mm512_cmp_ps_mask(wide, wide, _CMP_UNORD_Q) != 0) convert_to_float(in.subspan(i, 16), out.subspan(i, 16), backend::scalar{});
    }
#elif defined(__F16C__)
    for (; i + 8 <= in.size(); i += 8) {
        const __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in.data() + i)));
        _mm256_storeu_ps(out.data() + i, wide);
        if (_mm256_movemask_ps(_mm256_cmp_ps(wide, wide, _CMP_UNORD_Q)) != 0) convert_to_float(in.subspan(i, 8), out.subspan(i, 8), backend::scalar{});
    }
#endif
    convert_to_float(in.subspan(i), out.subspan(i), backend::scalar{});
}

/// SIMD float -> half (F16C, round to nearest even).
inline void convert_from_float(std::span<const float> in, std::span<half> out, backend::simd) {
    NWC_ASSERT(in.size() == out.size());
    std::size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= in.size(); i += 16) {
        const __m512 values = _mm512_loadu_ps(in.data() + i);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.data() + i), _mm512_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        if (_mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q) != 0) convert_from_float(in.subspan(i, 16), out.subspan(i, 16), backend::scalar{});
    }
#elif defined(__F16C__)
    for (; i + 8 <= in.size(); i += 8) {
        const __m256 values = _mm256_loadu_ps(in.data() + i);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out.data() + i), _mm256_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        if (_mm256_movemask_ps(_mm256_cmp_ps(values, values, _CMP_UNORD_Q)) != 0)
            convert_from_float(in.subspan(i, 8), out.subspan(i, 8), backend::scalar{});
    }
#endif
    convert_from_float(in.subspan(i), out.subspan(i), backend::scalar{});
}

/// SIMD bfloat16 -> float: zero-extend and shift (exact).
inline void convert_to_float(std::span<const bfloat16> in, std::span<float> out, backend::simd) {
    NWC_ASSERT(in.size() == out.size());
    std::size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= in.size(); i += 16) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in.data() + i)));
        _mm512_storeu_si512(out.data() + i, _mm512_slli_epi32(wide, 16));
    }
#endif
    convert_to_float(in.subspan(i), out.subspan(i), backend::scalar{});
}

/// SIMD float -> bfloat16 (round to nearest even, a NaN keeps its truncated payload), integer ops on xsimd batches.
inline void convert_from_float(std::span<const float> in, std::span<bfloat16> out, backend::simd) {
    NWC_ASSERT(in.size() == out.size());
    std::size_t i = 0;
#if defined(__AVX512BW__)
    using Bits = xsimd::batch<std::uint32_t, xsimd::avx512bw>;
    static_assert(Bits::size == 16);
    const Bits magnitude_mask(0x7FFFFFFFu), infinity(0x7F800000u), half_ulp(0x7FFFu), one(1u), quiet(0x40u), payload(0x7Fu), zero(0u);
    for (; i + 16 <= in.size(); i += 16) {
        const Bits bits = Bits::load_unaligned(reinterpret_cast<const std::uint32_t*>(in.data() + i));
        const Bits rounded = (bits + half_ulp + ((bits >> 16) & one)) >> 16;
        const Bits truncated = bits >> 16;
        const Bits nan = xsimd::select((truncated & payload) == zero, truncated | quiet, truncated);
        const Bits result = xsimd::select((bits & magnitude_mask) > infinity, nan, rounded);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.data() + i), _mm512_cvtepi32_epi16(result));
    }
#endif
    convert_from_float(in.subspan(i), out.subspan(i), backend::scalar{});
}

}  // namespace nwc
