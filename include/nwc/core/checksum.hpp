// CRC-32C (Castagnoli), the checksum of every nwc file format.
//
// Chosen over CRC-32 for its better error detection on short bursts and because x86 (SSE4.2) and
// ARMv8 have an instruction for it. With SSE4.2 the crc32 instruction does 8 bytes per step (one
// dependency chain: ~8 GB/s); elsewhere slicing-by-8 tables (about 1-2 GB/s), which measured as
// much as the whole rANS decode of a lossless float segment (docs/bench/lossless.md). Both give the
// same value. Check value: crc32c("123456789") == 0xE3069283.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <span>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace nwc {

/// Whether readers reject a checksum mismatch: always, except in fuzzing builds. libFuzzer and
/// OSS-Fuzz define FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION so that a fuzzer can reach the parsers
/// behind a checksum instead of stopping at it (it cannot forge CRCs); everything after the check
/// must then still reject bad bytes cleanly, which is what the fuzzers test (docs/fuzzing.md).
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
inline constexpr bool enforce_checksums = false;
#else
inline constexpr bool enforce_checksums = true;
#endif

namespace detail {
inline constexpr std::uint32_t crc32c_polynomial = 0x82F63B78u;  // reflected 0x1EDC6F41

constexpr std::array<std::array<std::uint32_t, 256>, 8> make_crc32c_tables() {
    std::array<std::array<std::uint32_t, 256>, 8> tables{};
    for (std::uint32_t byte = 0; byte < 256; ++byte) {
        std::uint32_t crc = byte;
        for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (crc32c_polynomial & (0u - (crc & 1u)));
        tables[0][byte] = crc;
    }
    for (std::size_t slice = 1; slice < 8; ++slice)
        for (std::uint32_t byte = 0; byte < 256; ++byte)
            tables[slice][byte] = (tables[slice - 1][byte] >> 8) ^ tables[0][tables[slice - 1][byte] & 0xFFu];
    return tables;
}
inline constexpr auto crc32c_tables = make_crc32c_tables();

/// The table-driven CRC-32C (the fallback, and the reference the SSE4.2 version is tested against).
inline std::uint32_t crc32c_portable(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0) noexcept {
    const auto& t = detail::crc32c_tables;
    crc = ~crc;
    const std::uint8_t* data = bytes.data();
    std::size_t size = bytes.size();
    while (size >= 8) {
        std::uint64_t word;
        std::memcpy(&word, data, 8);
        word ^= crc;
        crc = t[7][word & 0xFF] ^ t[6][(word >> 8) & 0xFF] ^ t[5][(word >> 16) & 0xFF] ^ t[4][(word >> 24) & 0xFF] ^
              t[3][(word >> 32) & 0xFF] ^ t[2][(word >> 40) & 0xFF] ^ t[1][(word >> 48) & 0xFF] ^ t[0][word >> 56];
        data += 8;
        size -= 8;
    }
    while (size-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *data++) & 0xFFu];
    return ~crc;
}
}  // namespace detail

/// Continues a CRC-32C over `bytes`; start with crc = 0.
inline std::uint32_t crc32c(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0) noexcept {
#if defined(__SSE4_2__)
    const std::uint8_t* data = bytes.data();
    std::size_t size = bytes.size();
    std::uint64_t state = ~crc;
    for (; size >= 8; data += 8, size -= 8) {
        std::uint64_t word;
        std::memcpy(&word, data, 8);
        state = _mm_crc32_u64(state, word);
    }
    auto low = std::uint32_t(state);
    for (; size > 0; ++data, --size) low = _mm_crc32_u8(low, *data);
    return ~low;
#else
    return detail::crc32c_portable(bytes, crc);
#endif
}

}  // namespace nwc
