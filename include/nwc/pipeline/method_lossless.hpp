// The "lossless" method: a tensor stored bit-exactly by the lossless float codec
// (entropy/lossless_float.hpp: the exponent byte plane rANS-coded with a table fitted to this
// tensor, the other byte planes raw, coded or constant). `nwc decompress` gives back the very
// bits of the input, NaN payloads, infinities, subnormals and -0 included.
//
// Read me first (byte layout: docs/format/methods.md, section `lossless`):
// - The pipeline hands every method float32 weights (bf16 and f16 widened exactly). The encoder
//   codes them in the NARROWEST dtype that holds every value bit for bit (the *plane dtype*):
//   bf16 when every float's low 16 bits are zero, else f16 when every value survives
//   float -> half -> float unchanged, else f32. A BF16 checkpoint is thus coded as bf16, never as
//   twice its bytes. Writing the decoded floats back in the original dtype is exact because
//   nwc::to_half / to_bfloat16 are exact on every value that came from a half / bfloat16 (NaN
//   payloads too: core/half.hpp).
// - Metadata: the MethodPrefix (span = elements per segment), then the lossless float metadata
//   unchanged (which holds the plane dtype, the element count and the tables, under its own
//   CRC-32C). Segments are the lossless float codec's segments: elements [s S, min((s+1) S, N)) of
//   the row-major tensor, any rank (the pipeline codes matrices and, with this method, vectors).
// - Decoding a segment: the planes into a per-thread buffer of the plane dtype (scalar or SIMD
//   kernels), then one widening into the output floats; an f32 plane decodes straight into them.
//   The segment CRC-32C is not checked again: the container checked the payload's first.
// - No rate knob (has_rate_knob = false): rate control, allocation and `--target-bpw` refuse this
//   method with errc::invalid_argument instead of searching a knob that changes nothing. Decoded
//   values may be infinite or NaN, as the source's were (is_lossless: the finiteness check of the
//   lossy methods' outputs does not apply).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/half_simd.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/lossless_float.hpp"
#include "nwc/io/tensor_bytes.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_lossless_decoding.hpp"

namespace nwc {

namespace detail {

/// Which of bf16 and f16 hold every value seen so far bit for bit (add() them block by block).
struct ExactDtypes {
    bool bf16 = true, f16 = true;

    void add(std::span<const float> values) noexcept {
        for (const float value : values) {
            if (!bf16 && !f16) return;
            const std::uint32_t bits = float_bits(value);
            bf16 = bf16 && (bits & 0xFFFFu) == 0;
            f16 = f16 && float_bits(to_float(to_half(value))) == bits;
        }
    }
    /// The narrowest of bf16, f16, f32 that holds them.
    dtype narrowest() const noexcept { return bf16 ? dtype::bf16 : f16 ? dtype::f16 : dtype::f32; }
};

/// The narrowest of bf16, f16, f32 that holds every value of `values` bit for bit.
inline dtype narrowest_exact_dtype(std::span<const float> values) noexcept {
    ExactDtypes exact;
    exact.add(values);
    return exact.narrowest();
}

/// `values` narrowed to `type` (exact: narrowest_exact_dtype chose it), as little-endian bytes.
inline std::vector<std::uint8_t> narrow_exactly(std::span<const float> values, dtype type) {
    std::vector<std::uint8_t> bytes(values.size() * dtype_size(type));
    if (type == dtype::f32) {
        if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
        return bytes;
    }
    for (std::size_t i = 0; i < values.size(); ++i) {
        const std::uint16_t bits = type == dtype::bf16 ? std::uint16_t(float_bits(values[i]) >> 16) : to_half(values[i]).bits;
        std::memcpy(bytes.data() + 2 * i, &bits, 2);
    }
    return bytes;
}

}  // namespace detail

/// The lossless method: the encoder here, the decoder in LosslessDecoding
/// (method_lossless_decoding.hpp).
struct LosslessMethod : LosslessDecoding {
    /// No knob: the size is what the data gives (see the read-me). The option name is empty so
    /// that tools generate no option for it.
    static constexpr MethodKnob knob{};
    static constexpr bool has_rate_knob = false;
    static double knob_value(const MethodOptions&) noexcept { return std::numeric_limits<double>::quiet_NaN(); }
    static void set_knob(MethodOptions&, double) noexcept {}

    /// Codes the weights (any shape, row-major) bit-exactly in their narrowest exact dtype.
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>*, const MethodOptions& options, const Resources&) {
        const std::span<const float> values(weights.data(), std::size_t(weights.numel()));
        const dtype plane_type = detail::narrowest_exact_dtype(values);
        return encoded(detail::narrow_exactly(values, plane_type), plane_type, options);
    }

    /// encode() of the tensor a file stores as `bytes` (little-endian elements of `stored`: bf16,
    /// f16 or f32), the same bytes out, without the float32 copy: a BF16 tensor is coded where it
    /// lies. `range_done` receives each range of `bytes` once read (lossless_float::InputRangeDone).
    static EncodedMatrix encode_stored(std::span<const std::uint8_t> bytes, dtype stored, const MethodOptions& options,
                                       const lossless_float::InputRangeDone& range_done = {}) {
        require(is_floating_dtype(stored) && bytes.size() % dtype_size(stored) == 0, errc::invalid_argument, "lossless: ", bytes.size(),
                " bytes are not whole ", dtype_name(stored), " elements");
        const std::string context = "lossless: stored tensor";
        // A widened bf16 value always has 16 zero low bits: bf16 planes, the bytes as they are.
        dtype plane_type = dtype::bf16;
        if (stored != dtype::bf16) {
            detail::ExactDtypes exact;
            for_each_float32_block(stored, bytes, [&](std::span<const float> values) { exact.add(values); }, context);
            plane_type = exact.narrowest();
        }
        if (plane_type == stored) return encoded(bytes, plane_type, options, range_done);
        // A rare narrowing (an f16 or f32 tensor of bf16 values): coded from a copy.
        const Tensor<float> values = decode_float32(stored, Shape{std::int64_t(bytes.size() / dtype_size(stored))}, bytes, context);
        if (range_done) range_done(bytes);
        return encoded(detail::narrow_exactly(values.values(), plane_type), plane_type, options);
    }

private:
    /// The tensor's container entry from its elements in the plane dtype.
    static EncodedMatrix encoded(std::span<const std::uint8_t> planes, dtype plane_type, const MethodOptions& options,
                                 const lossless_float::InputRangeDone& range_done = {}) {
        LosslessFloatOptions codec_options;
        codec_options.elements_per_segment = std::uint32_t(options.weights_per_segment);  // validated: 1 .. 2^20
        codec_options.threads = std::max(1, options.threads);
        LosslessFloatEncoding coded = lossless_float::encode(planes, plane_type, codec_options, range_done);

        EncodedMatrix result;  // no reconstruction: the pipeline knows a lossless method's is the weights
        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        prefix.relative_mse = 0.0f;
        prefix.span = codec_options.elements_per_segment;
        prefix.write(metadata);
        metadata.put_bytes(coded.metadata);
        tensor.metadata = metadata.take();
        tensor.add_segments(std::move(coded.segments));
        return result;
    }
};

}  // namespace nwc
