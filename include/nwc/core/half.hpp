// 16-bit float storage types: IEEE binary16 (`half`) and bfloat16 (`bfloat16`).
//
// Both are storage only: arithmetic happens in float. Conversions are bit-exact and portable (no
// F16C or AVX512-BF16 intrinsics here; the SIMD backend has its own vectorized versions and is tested
// against these). float -> 16-bit rounds to nearest, ties to even, keeps infinities, and produces
// subnormal halves where the value calls for them. A NaN keeps its sign and its payload truncated
// to the narrower mantissa (a signalling NaN stays signalling); only when the truncated payload is
// zero is the quiet bit set, so that the NaN cannot turn into an infinity. Hence
// to_half(to_float(h)) == h and to_bfloat16(to_float(b)) == b for EVERY bit pattern, NaNs included:
// the lossless method (pipeline/method_lossless.hpp) relies on it.
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

#include "nwc/core/config.hpp"

namespace nwc {

/// IEEE 754 binary16, stored as its 16 bits.
struct half {
    std::uint16_t bits = 0;
};

/// bfloat16: the upper 16 bits of a float32.
struct bfloat16 {
    std::uint16_t bits = 0;
};

/// Fields of a binary16's bits: sign, 5 exponent bits (all ones: infinity or NaN), 10 mantissa bits.
inline constexpr std::uint16_t half_sign_mask = 0x8000u;
inline constexpr std::uint16_t half_exponent_mask = 0x7C00u;
inline constexpr std::uint16_t half_magnitude_mask = 0x7FFFu;  ///< everything but the sign
inline constexpr std::uint16_t half_max_finite_bits = 0x7BFFu;  ///< 65504, the largest finite half

/// Whether `value` is finite: neither an infinity nor a NaN (the bits a decoder must check before
/// it trusts a stored scale).
NWC_HOST_DEVICE constexpr bool is_finite(half value) { return (value.bits & half_exponent_mask) != half_exponent_mask; }

// std::bit_cast is a host-only constexpr function to nvcc, so device code uses CUDA's intrinsics.
NWC_HOST_DEVICE inline std::uint32_t float_bits(float value) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(value);
#else
    return std::bit_cast<std::uint32_t>(value);
#endif
}
NWC_HOST_DEVICE inline float float_from_bits(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    return std::bit_cast<float>(bits);
#endif
}

/// binary16 -> float (exact: every half is a float).
NWC_HOST_DEVICE inline float to_float(half value) {
    const std::uint32_t sign = std::uint32_t(value.bits & half_sign_mask) << 16;
    const std::uint32_t exponent = (value.bits >> 10) & 0x1Fu;
    std::uint32_t mantissa = value.bits & 0x3FFu;
    if (exponent == 0x1F) return float_from_bits(sign | 0x7F800000u | (mantissa << 13));
    if (exponent != 0) return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0) return float_from_bits(sign);
    // Subnormal half: normalize into a float exponent.
    std::uint32_t shift = 0;
    while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        ++shift;
    }
    mantissa &= 0x3FFu;
    return float_from_bits(sign | ((113u - shift) << 23) | (mantissa << 13));
}

/// float -> binary16, round to nearest even; overflow gives infinity.
NWC_HOST_DEVICE inline half to_half(float value) {
    const std::uint32_t bits = float_bits(value);
    const std::uint16_t sign = std::uint16_t((bits >> 16) & half_sign_mask);
    const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
    if (magnitude >= 0x7F800000u) {  // inf or NaN: the payload's top 10 bits, quiet only if they are all zero
        const std::uint16_t payload = std::uint16_t((magnitude >> 13) & 0x3FFu);
        const std::uint16_t nan_bits = magnitude == 0x7F800000u ? 0 : payload != 0 ? payload : std::uint16_t(0x200u);
        return half{std::uint16_t(sign | half_exponent_mask | nan_bits)};
    }
    if (magnitude >= 0x477FF000u) return half{std::uint16_t(sign | half_exponent_mask)};  // rounds past 65504
    if (magnitude < 0x38800000u) {                                              // below the smallest normal half
        if (magnitude < 0x33000000u) return half{sign};                          // rounds to zero
        const std::uint32_t exponent = magnitude >> 23;
        const std::uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
        const std::uint32_t shift = 126u - exponent;  // 14..24
        const std::uint32_t result = mantissa >> shift;
        const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
        const std::uint32_t halfway = 1u << (shift - 1u);
        const std::uint32_t rounded = result + ((remainder > halfway || (remainder == halfway && (result & 1u))) ? 1u : 0u);
        return half{std::uint16_t(sign | rounded)};
    }
    const std::uint32_t rebased = magnitude - 0x38000000u;  // exponent bias 127 -> 15
    const std::uint32_t result = rebased >> 13;
    const std::uint32_t remainder = rebased & 0x1FFFu;
    const std::uint32_t rounded = result + ((remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ? 1u : 0u);
    return half{std::uint16_t(sign | rounded)};
}

/// bfloat16 -> float (exact).
NWC_HOST_DEVICE inline float to_float(bfloat16 value) { return float_from_bits(std::uint32_t(value.bits) << 16); }

/// float -> bfloat16, round to nearest even; a NaN keeps its truncated payload (quiet bit set only
/// when that is zero).
NWC_HOST_DEVICE inline bfloat16 to_bfloat16(float value) {
    const std::uint32_t bits = float_bits(value);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
        const std::uint16_t truncated = std::uint16_t(bits >> 16);
        return bfloat16{std::uint16_t((truncated & 0x7Fu) != 0 ? truncated : truncated | 0x40u)};
    }
    const std::uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
    return bfloat16{std::uint16_t((bits + rounding) >> 16)};
}

NWC_HOST_DEVICE inline float to_float(float value) { return value; }

/// Converts a float to the storage type T (float, half or bfloat16).
template <class T>
NWC_HOST_DEVICE inline T from_float(float value) {
    if constexpr (std::is_same_v<T, half>) {
        return to_half(value);
    } else if constexpr (std::is_same_v<T, bfloat16>) {
        return to_bfloat16(value);
    } else {
        return static_cast<T>(value);
    }
}

}  // namespace nwc
