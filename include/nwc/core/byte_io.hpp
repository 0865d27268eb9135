// Little-endian byte serialization with bounds checks: the only way nwc reads untrusted bytes.
//
// ByteReader never reads past its span; every short read throws errc::truncated naming the
// context ("codec file", "segment 3") and the byte offset. Sizes read from a stream are checked
// against the bytes that remain *before* anything is allocated (`read_count`), so a hostile length
// field cannot trigger a huge allocation. All multi-byte values are little-endian on disk whatever
// the host (the project only builds on little-endian hosts; see the static_assert).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/error.hpp"

namespace nwc {

static_assert(std::endian::native == std::endian::little, "nwc's file formats assume a little-endian host");

/// Appends little-endian values to a growing byte buffer.
class ByteWriter {
public:
    void put_u8(std::uint8_t value) { m_bytes.push_back(value); }
    void put_u16(std::uint16_t value) { put_raw(&value, sizeof value); }
    void put_u32(std::uint32_t value) { put_raw(&value, sizeof value); }
    void put_u64(std::uint64_t value) { put_raw(&value, sizeof value); }
    void put_i32(std::int32_t value) { put_raw(&value, sizeof value); }
    void put_i64(std::int64_t value) { put_raw(&value, sizeof value); }
    void put_f32(float value) { put_raw(&value, sizeof value); }
    void put_bytes(std::span<const std::uint8_t> bytes) { m_bytes.insert(m_bytes.end(), bytes.begin(), bytes.end()); }
    /// A u32 length followed by the characters.
    void put_string(std::string_view text) {
        put_u32(std::uint32_t(text.size()));
        put_raw(text.data(), text.size());
    }
    template <class T>
    void put_array(std::span<const T> values) {
        static_assert(std::is_trivially_copyable_v<T>);
        put_raw(values.data(), values.size_bytes());
    }
    std::size_t size() const noexcept { return m_bytes.size(); }
    const std::vector<std::uint8_t>& bytes() const noexcept { return m_bytes; }
    std::vector<std::uint8_t> take() noexcept { return std::move(m_bytes); }

private:
    void put_raw(const void* data, std::size_t size) {
        const auto* begin = static_cast<const std::uint8_t*>(data);
        m_bytes.insert(m_bytes.end(), begin, begin + size);
    }
    std::vector<std::uint8_t> m_bytes;
};

/// Reads little-endian values from a span, throwing nwc::error on any short read.
class ByteReader {
public:
    ByteReader(std::span<const std::uint8_t> bytes, std::string_view context) : m_bytes(bytes), m_context(context) {}

    std::uint8_t get_u8() { return get<std::uint8_t>(); }
    std::uint16_t get_u16() { return get<std::uint16_t>(); }
    std::uint32_t get_u32() { return get<std::uint32_t>(); }
    std::uint64_t get_u64() { return get<std::uint64_t>(); }
    std::int32_t get_i32() { return get<std::int32_t>(); }
    std::int64_t get_i64() { return get<std::int64_t>(); }
    float get_f32() { return get<float>(); }

    /// The next `count` bytes, without copying.
    std::span<const std::uint8_t> get_bytes(std::size_t count) {
        need(count);
        auto result = m_bytes.subspan(m_offset, count);
        m_offset += count;
        return result;
    }
    /// A string written by ByteWriter::put_string, at most `max_length` characters.
    std::string get_string(std::size_t max_length = 1 << 16) {
        const std::uint32_t length = get_u32();
        if (length > max_length) fail(errc::limit, m_context, ": string of ", length, " bytes at offset ", m_offset - 4, " exceeds ", max_length);
        auto bytes = get_bytes(length);
        return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    /// `count` values of T; the byte count is checked against what remains before allocating.
    template <class T>
    std::vector<T> get_array(std::uint64_t count) {
        static_assert(std::is_trivially_copyable_v<T>);
        if (count > remaining() / sizeof(T))
            fail(errc::truncated, m_context, ": ", count, " elements of ", sizeof(T), " bytes announced at offset ", m_offset, " but only ",
                 remaining(), " bytes remain");
        std::vector<T> values(static_cast<std::size_t>(count));
        // No memcpy for zero elements: both pointers may then be null, which memcpy forbids.
        if (!values.empty()) std::memcpy(values.data(), m_bytes.data() + m_offset, values.size() * sizeof(T));
        m_offset += values.size() * sizeof(T);
        return values;
    }
    /// Reads a u32 element count and checks that `count * element_size` bytes could follow.
    std::uint32_t get_count(std::size_t element_size, std::uint32_t max_count, std::string_view what) {
        const std::uint32_t count = get_u32();
        if (count > max_count) fail(errc::limit, m_context, ": ", what, " count ", count, " exceeds ", max_count);
        if (element_size != 0 && count > remaining() / element_size)
            fail(errc::truncated, m_context, ": ", what, " count ", count, " needs ", std::uint64_t(count) * element_size, " bytes at offset ", m_offset,
                 " but only ", remaining(), " remain");
        return count;
    }
    void skip(std::size_t count) { get_bytes(count); }
    std::size_t offset() const noexcept { return m_offset; }
    std::size_t remaining() const noexcept { return m_bytes.size() - m_offset; }
    bool at_end() const noexcept { return m_offset == m_bytes.size(); }
    std::string_view context() const noexcept { return m_context; }
    /// Throws errc::corrupt if bytes remain (formats that must be consumed exactly).
    void expect_end() const {
        if (!at_end()) fail(errc::corrupt, m_context, ": ", remaining(), " unexpected trailing bytes at offset ", m_offset);
    }

private:
    void need(std::size_t count) const {
        if (count > remaining())
            fail(errc::truncated, m_context, ": needs ", count, " bytes at offset ", m_offset, " but only ", remaining(), " remain");
    }
    template <class T>
    T get() {
        need(sizeof(T));
        T value;
        std::memcpy(&value, m_bytes.data() + m_offset, sizeof(T));
        m_offset += sizeof(T);
        return value;
    }

    std::span<const std::uint8_t> m_bytes;
    std::size_t m_offset = 0;
    std::string m_context;
};

namespace detail {

/// LEB128 varint: 7 bits per byte, low groups first, the high bit set on every byte but the last.
inline void put_varint(ByteWriter& out, std::uint64_t value) {
    while (value >= 0x80) {
        out.put_u8(std::uint8_t(value | 0x80));
        value >>= 7;
    }
    out.put_u8(std::uint8_t(value));
}
/// Bytes put_varint writes for `value`.
constexpr std::uint64_t varint_size(std::uint64_t value) noexcept {
    std::uint64_t size = 1;
    for (; value >= 0x80; value >>= 7) ++size;
    return size;
}
/// Reads a varint in its shortest form (errc::corrupt for a longer one or for more than 64 bits,
/// so that every value has exactly one encoding; errc::truncated at the end of the input).
inline std::uint64_t get_varint(ByteReader& in, std::string_view what) {
    const std::size_t at = in.offset();
    std::uint64_t value = 0;
    for (int shift = 0;; shift += 7) {
        const std::uint8_t byte = in.get_u8();
        if (shift == 63 && byte > 1) fail(errc::corrupt, in.context(), ": ", what, " at offset ", at, " does not fit in 64 bits");
        value |= std::uint64_t(byte & 0x7Fu) << shift;
        if ((byte & 0x80u) == 0) {
            if (byte == 0 && shift > 0) fail(errc::corrupt, in.context(), ": ", what, " at offset ", at, " is not in its shortest form");
            return value;
        }
    }
}

}  // namespace detail

}  // namespace nwc
