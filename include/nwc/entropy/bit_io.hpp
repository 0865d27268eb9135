// Bit-level I/O for the entropy formats (varints live in core/byte_io.hpp): rANS lane blocks and escape streams, compact
// CDF tables.
//
// Read me first:
// - Bits are MSB first: the first bit written is the top bit of the first byte; the last byte is
//   zero-padded, and readers check that the padding is zero (one encoding per content).
// - Codes: Elias-gamma of v >= 1 (n - 1 zeros, then the n bits of v, n = bit_width(v)), and
//   Exp-Golomb of order k of v >= 0 (gamma of (v >> k) + 1, then the k low bits of v).
// - Varints are LEB128 (7 bits per byte, low group first, top bit = more), shortest form only.
// - Readers never read past their span and never loop on their own: every failure throws
//   nwc::error(corrupt) with the reader's context, so hostile input costs O(its size).
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"

namespace nwc::detail {

/// Appends bits MSB first.
class BitWriter {
public:
    /// The low `count` (0..64) bits of `value`, most significant first.
    void put(std::uint64_t value, int count) {
        for (int bit = count - 1; bit >= 0; --bit) {
            m_pending = std::uint8_t((m_pending << 1) | ((value >> bit) & 1u));
            if (++m_bit_count % 8 == 0) m_bytes.push_back(m_pending), m_pending = 0;
        }
    }
    /// Elias-gamma code of value >= 1: 2 bit_width(value) - 1 bits.
    void put_gamma(std::uint64_t value) {
        const int length = int(std::bit_width(value));
        put(0, length - 1);
        put(value, length);
    }
    /// Exp-Golomb code of order k (0..32) of value (< 2^63).
    void put_exp_golomb(std::uint64_t value, int k) {
        put_gamma((value >> k) + 1);
        put(value, k);
    }
    std::uint64_t bit_count() const noexcept { return m_bit_count; }
    /// The bytes, the last one zero-padded; the writer is empty afterwards.
    std::vector<std::uint8_t> finish() {
        if (m_bit_count % 8 != 0) m_bytes.push_back(std::uint8_t(m_pending << (8 - m_bit_count % 8)));
        m_bit_count = 0;
        m_pending = 0;
        return std::move(m_bytes);
    }

private:
    std::vector<std::uint8_t> m_bytes;
    std::uint8_t m_pending = 0;
    std::uint64_t m_bit_count = 0;
};

/// Bits of the codes above, for size estimates.
constexpr int gamma_bits(std::uint64_t value) noexcept { return 2 * int(std::bit_width(value)) - 1; }
constexpr int exp_golomb_bits(std::uint64_t value, int k) noexcept { return gamma_bits((value >> k) + 1) + k; }
/// Counts the bits a BitWriter would write, with its interface: a size without making the bytes.
class BitCounter {
public:
    void put(std::uint64_t, int count) noexcept { m_bit_count += std::uint64_t(count); }
    void put_gamma(std::uint64_t value) noexcept { m_bit_count += std::uint64_t(gamma_bits(value)); }
    void put_exp_golomb(std::uint64_t value, int k) noexcept { m_bit_count += std::uint64_t(exp_golomb_bits(value, k)); }
    std::uint64_t bit_count() const noexcept { return m_bit_count; }

private:
    std::uint64_t m_bit_count = 0;
};

/// Zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...
constexpr std::uint64_t zigzag(std::int64_t value) noexcept {
    return value >= 0 ? 2 * std::uint64_t(value) : 2 * (~std::uint64_t(value)) + 1;
}
constexpr std::int64_t unzigzag(std::uint64_t code) noexcept {
    return (code & 1u) ? -std::int64_t(code >> 1) - 1 : std::int64_t(code >> 1);
}

/// Reads what BitWriter wrote from a bounded span; `context` names the structure in messages
/// (the caller keeps it alive) and `byte_offset` is where the span starts in its file or stream.
class BitReader {
public:
    BitReader(std::span<const std::uint8_t> bytes, std::string_view context, std::uint64_t byte_offset = 0) noexcept
        : m_bytes(bytes), m_context(context), m_byte_offset(byte_offset) {}

    std::uint32_t get_bit() {
        if (m_position >= 8 * std::uint64_t(m_bytes.size())) fail_at("exhausted after ", m_bytes.size(), " bytes");
        const std::uint32_t bit = (m_bytes[std::size_t(m_position / 8)] >> (7 - m_position % 8)) & 1u;
        ++m_position;
        return bit;
    }
    /// `count` (0..64) bits, most significant first.
    std::uint64_t get(int count) {
        std::uint64_t value = 0;
        for (int bit = 0; bit < count; ++bit) value = (value << 1) | get_bit();
        return value;
    }
    /// An Elias-gamma code of at most `max_bit_width` significant bits (<= 64).
    std::uint64_t get_gamma(int max_bit_width = 64) {
        int zeros = 0;
        while (get_bit() == 0)
            if (++zeros >= max_bit_width) fail_at("Elias-gamma code longer than ", 2 * max_bit_width - 1, " bits");
        return (std::uint64_t(1) << zeros) | get(zeros);
    }
    /// An Exp-Golomb code of order k whose value fits `max_bit_width` bits (<= 63).
    std::uint64_t get_exp_golomb(int k, int max_bit_width = 63) {
        const std::uint64_t high = get_gamma(max_bit_width - k + 1) - 1;
        if (k > 0 && int(std::bit_width(high)) + k > max_bit_width) fail_at("Exp-Golomb value wider than ", max_bit_width, " bits");
        return (high << k) | get(k);
    }
    std::uint64_t bit_position() const noexcept { return m_position; }
    /// Bytes used so far, the partial last one included.
    std::size_t bytes_used() const noexcept { return std::size_t((m_position + 7) / 8); }
    /// Throws unless the padding bits of the last byte used are zero.
    void expect_zero_padding() const {
        if (m_position % 8 != 0 && (m_bytes[std::size_t(m_position / 8)] & (0xFFu >> (m_position % 8))) != 0)
            fail_at("nonzero padding bits");
    }
    /// Throws unless exactly all bytes were used, with zero padding.
    void expect_end() const {
        if (bytes_used() != m_bytes.size()) fail_at("it uses ", bytes_used(), " bytes but ", m_bytes.size(), " are announced");
        expect_zero_padding();
    }

    template <class... Parts>
    [[noreturn]] void fail_at(const Parts&... parts) const {
        fail(errc::corrupt, m_context, " at byte ", m_byte_offset + m_position / 8, ": ", parts...);
    }

private:
    std::span<const std::uint8_t> m_bytes;
    std::string_view m_context;
    std::uint64_t m_byte_offset;
    std::uint64_t m_position = 0;
};

}  // namespace nwc::detail
