// Tensor elements as stored in files: checked byte sizes and conversion to and from float32.
//
// Every file format nwc reads (safetensors, the .nwc container's passthrough tensors) stores
// elements little-endian and row-major, with no alignment promise: a tensor inside a mapped file
// can start at any byte. So nothing here casts a byte pointer to float*; elements are copied out
// with memcpy, which compilers turn into plain loads where alignment allows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc {

namespace detail {
// Names and values from a hostile file end up in messages and terminals: escape control bytes and
// cut long text, so an error message cannot carry escape sequences or megabytes.
inline std::string printable(std::string_view text, std::size_t max_bytes = 200) {
    std::string result;
    for (std::size_t i = 0; i < text.size() && i < max_bytes; ++i) {
        const unsigned char byte = static_cast<unsigned char>(text[i]);
        if (byte < 0x20 || byte == 0x7F) {
            static constexpr char digits[] = "0123456789abcdef";
            result += "\\x";
            result += digits[byte >> 4];
            result += digits[byte & 15];
        } else {
            result += char(byte);
        }
    }
    if (text.size() > max_bytes) result += "...";
    return result;
}
}  // namespace detail

/// The dtype stored as `code` (the numeric value of nwc::dtype) or errc::unsupported.
inline dtype dtype_from_code(std::uint8_t code, std::string_view context) {
    if (code > std::uint8_t(dtype::u8)) fail(errc::unsupported, context, ": unknown dtype code ", unsigned(code));
    return dtype(code);
}

/// Whether values of this dtype can be read as float32 (F32, F16, BF16).
constexpr bool is_floating_dtype(dtype type) noexcept { return type == dtype::f32 || type == dtype::f16 || type == dtype::bf16; }

/// Bytes taken by `dims` elements of `type`; errc::limit (naming `context`) if the product
/// overflows or exceeds `max_bytes`. Negative dimensions are errc::corrupt.
inline std::uint64_t checked_tensor_bytes(dtype type, std::span<const std::int64_t> dims, std::string_view context,
                                          std::uint64_t max_bytes = std::uint64_t(std::numeric_limits<std::int64_t>::max())) {
    const std::uint64_t element_size = dtype_size(type);
    std::uint64_t bytes = element_size;
    for (std::size_t axis = 0; axis < dims.size(); ++axis) {
        const std::int64_t dim = dims[axis];
        if (dim < 0) fail(errc::corrupt, context, ": dimension ", axis, " is negative (", dim, ")");
        // Checked before multiplying, so a hostile shape cannot wrap around to a small size.
        if (dim != 0 && bytes > max_bytes / std::uint64_t(dim))
            fail(errc::limit, context, ": shape needs more than ", max_bytes, " bytes (dimension ", axis, " is ", dim, ")");
        bytes *= std::uint64_t(dim);
    }
    return bytes;
}

namespace detail {
/// Throws unless `bytes` are exactly shape.numel() stored elements of a floating dtype.
inline void require_float32_source(dtype type, const Shape& shape, std::span<const std::uint8_t> bytes, std::string_view context) {
    if (!is_floating_dtype(type)) fail(errc::unsupported, context, ": dtype ", dtype_name(type), " cannot be read as float32");
    const std::uint64_t expected = checked_tensor_bytes(type, shape.dims(), context);
    if (bytes.size() != expected)
        fail(errc::corrupt, context, ": ", bytes.size(), " bytes for ", shape.numel(), " elements of ", dtype_name(type), " (", expected, " expected)");
}
}  // namespace detail

/// Decodes stored F32/F16/BF16 elements into `out` (shape.numel() floats); `bytes` must hold
/// exactly shape.numel() elements (errc::corrupt otherwise), other dtypes are errc::unsupported.
inline void decode_float32_into(dtype type, const Shape& shape, std::span<const std::uint8_t> bytes, std::span<float> out, std::string_view context) {
    detail::require_float32_source(type, shape, bytes, context);
    NWC_ASSERT(std::int64_t(out.size()) == shape.numel());
    const std::size_t count = out.size();
    const std::uint8_t* in = bytes.data();
    if (count == 0) return;
    if (type == dtype::f32) {
        std::memcpy(out.data(), in, count * sizeof(float));
    } else if (type == dtype::f16) {
        // A table of all 65536 halves (256 KiB, built once from to_float, so exact) is faster than
        // the branchy conversion on whole models (docs/bench/io.md).
        static const std::vector<float> table = [] {
            std::vector<float> values(65536);
            for (std::uint32_t bits = 0; bits < 65536; ++bits) values[bits] = to_float(half{std::uint16_t(bits)});
            return values;
        }();
        for (std::size_t i = 0; i < count; ++i) {
            std::uint16_t bits;
            std::memcpy(&bits, in + 2 * i, 2);
            out[i] = table[bits];
        }
    } else {
        for (std::size_t i = 0; i < count; ++i) {
            std::uint16_t bits;
            std::memcpy(&bits, in + 2 * i, 2);
            out[i] = to_float(bfloat16{bits});
        }
    }
}

/// decode_float32_into a new float32 tensor of `shape`.
inline Tensor<float> decode_float32(dtype type, const Shape& shape, std::span<const std::uint8_t> bytes, std::string_view context) {
    detail::require_float32_source(type, shape, bytes, context);  // before the tensor is allocated
    Tensor<float> result(shape);
    decode_float32_into(type, shape, bytes, result.view().span(), context);
    return result;
}

/// f(std::span<const float>) on the stored F32/F16/BF16 elements in `bytes`, widened as
/// decode_float32_into does, `block` at a time in order: a pass over a stored tensor (a norm, a
/// check) without a float32 copy of it. Errors as decode_float32_into.
template <class F>
void for_each_float32_block(dtype type, std::span<const std::uint8_t> bytes, F&& f, std::string_view context, std::size_t block = std::size_t(1) << 16) {
    if (!is_floating_dtype(type)) fail(errc::unsupported, context, ": dtype ", dtype_name(type), " cannot be read as float32");
    const std::size_t size = dtype_size(type), count = bytes.size() / size;
    require(bytes.size() % size == 0, errc::corrupt, context, ": ", bytes.size(), " bytes are not whole ", dtype_name(type), " elements");
    std::vector<float> values(std::min(count, block));
    for (std::size_t first = 0; first < count; first += block) {
        const std::size_t n = std::min(block, count - first);
        decode_float32_into(type, Shape{std::int64_t(n)}, bytes.subspan(first * size, n * size), std::span<float>(values.data(), n), context);
        f(std::span<const float>(values.data(), n));
    }
}

/// Encodes float32 values as stored elements of `type` (F32, F16 or BF16; rounding to nearest even).
inline std::vector<std::uint8_t> encode_float32(TensorView<const float> values, dtype type) {
    if (!is_floating_dtype(type)) fail(errc::invalid_argument, "cannot store float32 values as ", dtype_name(type));
    const std::size_t count = std::size_t(values.numel());
    std::vector<std::uint8_t> bytes(count * dtype_size(type));
    if (count == 0) return bytes;
    if (type == dtype::f32) {
        std::memcpy(bytes.data(), values.data(), count * sizeof(float));
    } else {
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint16_t bits = type == dtype::f16 ? to_half(values[std::int64_t(i)]).bits : to_bfloat16(values[std::int64_t(i)]).bits;
            std::memcpy(bytes.data() + 2 * i, &bits, 2);
        }
    }
    return bytes;
}

}  // namespace nwc
