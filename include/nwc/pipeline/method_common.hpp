// What the per-tensor methods (rtn, gptq, ecsq, tcq, nwc, lossless) share, encoders and decoders
// alike: options, the per-tensor report, the common metadata prefix, bit packing and the error
// sums. Byte layouts: docs/format/methods.md. What only the encoders share (LDLQ set-up, the error
// measure of a reconstruction): method_encoding.hpp.
//
// Read me first:
// - Every coded tensor's metadata starts with the same prefix (MethodPrefix): a layout version,
//   flags, the diagnostics (relative MSE and sensitivity; bfloat16, NaN when unknown) and
//   the segment span. The diagnostics sit at a fixed offset, so a rate search can encode with them
//   unknown and the final pass fill them in without changing a single size.
// - Segments: a tensor's payload is cut into segments of whole rows (rtn, gptq, ecsq) or whole
//   columns (nwc), `span` of them per segment (the last may hold fewer). Each segment decodes on its
//   own; the container records their sizes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/io/container_format.hpp"
#include "nwc/quant/chunker.hpp"

namespace nwc {

/// Options of the per-tensor methods; each method reads the fields it needs.
struct MethodOptions {
    /// Largest segment: a rANS stream is at least 172 bytes, so no file this pipeline writes has
    /// more than 2^20 / 172 < detail::max_weights_per_payload_byte weights per payload byte.
    static constexpr std::int64_t max_weights_per_segment = std::int64_t(1) << 20;

    /// The name of a method in the codec's list (Codec::method_names()). tcq by default: it measures
    /// best on stories260K at equal bytes (docs/bench/report.md, fine-tuned: ahead of ecsq at 3, 4
    /// and 6 bits per weight, level at 5; nwc and gptq behind both) and codes MT3's matrices with
    /// about a fifth less error than ecsq at 4 bits per weight; it encodes several times slower.
    std::string method = "tcq";
    int bits = 4;            ///< rtn, gptq: bits per code (2..8); 4 is Q4_0's 4.5 bits per weight
    /// rtn, gptq: weights of a row sharing one scale; with grid scales about 5 bits each (0.16 bits
    /// per weight at 32; 64 halves that but gptq lost 0.013 nats more on stories260K's calibration
    /// text at 4 bits per weight, equal bytes, docs/bench/report.md). 32 with fp16_group_scales is
    /// ggml's Q4_0 layout.
    int group_size = 32;
    /// rtn, gptq: fp16 group scales chosen as ggml's Q4_0 does (16 bits per group) instead of
    /// least-error scales on the quarter-octave grid coded in about 4 bits (RoundingScheme::grid).
    bool fp16_group_scales = false;
    float step = 0.5f;       ///< ecsq: quantizer step on normalized (unit-variance) weights
    /// tcq: the step of its union grid on normalized weights (the CLI's --step, as for ecsq). Its
    /// unions are two steps apart, so at the same rate the step is about half of ecsq's: 0.25
    /// lands near ecsq's 0.5 (stories260K without calibration: 3.10 bits per weight at relative MSE
    /// 1.40e-2, ecsq 3.14 at 1.87e-2).
    float tcq_step = 0.25f;
    float alpha = 1.0f;      ///< nwc: rate knob, the normalized weights are scaled by alpha before g_a
    /// tcq: trellis states (4..256, a power of two); 8 gains about 1 dB of ECSQ's 1.53 dB to the
    /// rate-distortion bound, 256 about 1.3 dB at several times the encoding time.
    int tcq_states = 8;
    /// Vectors the selection codes (norm scales): the ecsq step on them, relative to their standard
    /// deviation (1/64: ~8 bits each, an error no calibration loss can see).
    float vector_step = 1.0f / 64.0f;
    bool ldlq = true;        ///< use the Hessian's feedback (LDLQ / GPTQ) when a Hessian is given
    /// nwc: embed the codec's decoder even when it ships with the library (a self-contained file,
    /// 9-20 KB more); off, a shipped codec is referenced by the SHA-256 of its decoder (36 bytes).
    bool embed_codec = false;
    /// ecsq, nwc: one scale per tensor by default (the least MSE for the same bytes, one fp16 of
    /// side information; allocation may choose per row or per column for a matrix, see allocation.hpp).
    NormalizationAxis axis = NormalizationAxis::per_tensor;
    double damping = 0.01;   ///< LDLQ damping relative to mean(diag H)
    int ldlq_block_size = 128;  ///< rtn, gptq, ecsq: columns per LDLQ block (exact feedback inside a block too)
    /// nwc: columns the codec codes together under block LDLQ; feedback flows between blocks only,
    /// so small blocks follow exact LDLQ more closely (at the cost of smaller encoder batches).
    int nwc_block_columns = 16;
    /// nwc with per-level priors: a level whose columns of one span hold fewer symbols than this is
    /// coded at the next lower level instead. Every (span, level) pair is its own rANS stream with
    /// ~150 bytes of flushed states and index, which costs more than the level gains on a few
    /// columns (stories260K: 0.3 bits per weight of the file). 0 keeps every level.
    std::int64_t nwc_min_level_symbols = 4096;
    std::int64_t weights_per_segment = std::int64_t(1) << 17;  ///< target size of a segment
    int threads = 1;         ///< threads inside one tensor (results never depend on it)
    bool measure = true;     ///< compute relative MSE / proxy loss (nwc: costs one decoder pass)

    /// errc::invalid_argument for values out of range.
    void validate() const {
        require(bits >= 2 && bits <= 8, errc::invalid_argument, "--bits ", bits, " is outside 2..8");
        require(group_size >= 1 && group_size <= 65536, errc::invalid_argument, "group size ", group_size, " is outside 1..65536");
        require(std::isfinite(step) && step > 0.0f, errc::invalid_argument, "ECSQ step ", step, " must be finite and positive");
        require(std::isfinite(tcq_step) && tcq_step > 0.0f, errc::invalid_argument, "tcq step ", tcq_step, " must be finite and positive");
        require(std::isfinite(vector_step) && vector_step > 0.0f, errc::invalid_argument, "vector step ", vector_step, " must be finite and positive");
        require(tcq_states >= 4 && tcq_states <= 256 && (tcq_states & (tcq_states - 1)) == 0, errc::invalid_argument, "tcq states ", tcq_states,
                " must be a power of two in 4..256");
        require(std::isfinite(alpha) && alpha > 0.0f, errc::invalid_argument, "nwc alpha ", alpha, " must be finite and positive");
        require(damping >= 0.0 && std::isfinite(damping), errc::invalid_argument, "LDLQ damping ", damping, " must be >= 0");
        require(ldlq_block_size >= 1 && nwc_block_columns >= 1 && threads >= 0, errc::invalid_argument, "LDLQ block sizes must be positive");
        require(weights_per_segment >= 1 && weights_per_segment <= max_weights_per_segment && nwc_min_level_symbols >= 0, errc::invalid_argument, "segments of ",
                weights_per_segment, " weights (1..", max_weights_per_segment, ")");
    }
};

/// Bytes of a file by what they are for (nwc inspect --breakdown): "payload" for the coded bits
/// themselves, and side information under "scales", "levels", "tables", "framing" (stream headers,
/// segment indexes, lane states, escapes), "metadata" (the rest of a method's metadata),
/// "directory", "header", "padding", "codecs" (codec blobs), "passthrough" (raw tensors), "files"
/// (a model directory's tokenizer and other files, pipeline_codec.hpp).
struct ByteAccount {
    std::map<std::string, std::uint64_t, std::less<>> bytes;

    void add(std::string_view category, std::uint64_t count) {
        if (count == 0) return;
        const auto found = bytes.find(category);
        if (found == bytes.end()) bytes.emplace(std::string(category), count);
        else found->second += count;
    }
    std::uint64_t total() const noexcept {
        std::uint64_t sum = 0;
        for (const auto& [category, count] : bytes) sum += count;
        return sum;
    }
    std::uint64_t of(std::string_view category) const {
        const auto found = bytes.find(category);
        return found == bytes.end() ? 0 : found->second;
    }
    /// Everything but the payload.
    std::uint64_t side_information() const { return total() - of("payload"); }
};

/// What compressing one tensor did.
struct TensorReport {
    std::string name;
    Shape shape;
    dtype original_dtype = dtype::f32;
    std::string method;              ///< as written: "raw", "rtn", "gptq", "ecsq", "nwc"
    std::uint64_t stored_bytes = 0;  ///< metadata + payload
    std::size_t segments = 1;
    double relative_mse = std::numeric_limits<double>::quiet_NaN();  ///< NaN: not measured
    double proxy_loss = std::numeric_limits<double>::quiet_NaN();    ///< NaN: no Hessian or not measured
    double squared_error = 0.0;     ///< ||W - What||^2 (0 when not measured)
    double squared_norm = 0.0;      ///< ||W||^2 (0 when not measured)
    bool used_hessian = false;      ///< levels and/or feedback came from a Hessian
    bool used_feedback = false;     ///< LDLQ / GPTQ feedback was applied
    std::string setting;            ///< "bits=4", "step=0.41", "alpha=1.3", "" for raw
    double seconds = 0.0;

    std::int64_t weights() const noexcept { return shape.numel(); }
    /// 8 x stored bytes / weights: the tensor's own rate (the file adds headers and padding).
    double bits_per_weight() const noexcept { return weights() > 0 ? 8.0 * double(stored_bytes) / double(weights()) : 0.0; }
};

namespace detail {

/// 3: row and column scales on the quarter-octave grid, ~4 bits each (scale_grid.hpp), and two
/// diagnostics instead of three (the proxy loss, which reports print at compression time, is not
/// stored); 2 is refused with errc::unsupported. 4: scale sets may be Rice-coded and tcq's union 1
/// table derived (one byte); otherwise version 3's layout, so both are read and 4 is written
/// (readers of 3 refuse 4 as unsupported rather than misread it).
inline constexpr std::uint8_t method_layout_version = 4;
inline constexpr std::uint8_t oldest_method_layout_version = 3;
/// Decoders refuse (errc::limit) a coded tensor with more weights per payload byte than this
/// before allocating its output: a small hostile file cannot ask for a huge allocation.
inline constexpr std::int64_t max_weights_per_payload_byte = 8192;
inline constexpr std::uint8_t flag_feedback = 1;        ///< LDLQ / GPTQ feedback applied
inline constexpr std::uint8_t flag_hessian_levels = 2;  ///< nwc: importance levels from diag(H)
/// Where the diagnostics sit in every coded tensor's metadata (after version and flags), and their size.
inline constexpr std::size_t diagnostics_offset = 2;
inline constexpr std::size_t diagnostics_bytes = 4;

/// What every coded tensor's metadata starts with: u8 layout version, u8 flags, the diagnostics
/// (relative MSE and sensitivity as bfloat16: for nwc inspect only, NaN when unknown; at a
/// fixed offset and size so the final pass of a rate search fills them in without moving a byte),
/// then the segment span as a varint.
struct MethodPrefix {
    std::uint8_t flags = 0;
    float relative_mse = std::numeric_limits<float>::quiet_NaN();
    float sensitivity = std::numeric_limits<float>::quiet_NaN();
    std::uint32_t span = 1;  ///< rows (rtn, gptq, ecsq) or columns (nwc) per segment

    void write(ByteWriter& out) const {
        out.put_u8(method_layout_version);
        out.put_u8(flags);
        for (const float value : {relative_mse, sensitivity}) out.put_u16(to_bfloat16(value).bits);
        put_varint(out, span);
    }
    static MethodPrefix read(ByteReader& in, std::uint8_t allowed_flags) {
        MethodPrefix prefix;
        const std::uint8_t version = in.get_u8();
        require(version >= oldest_method_layout_version && version <= method_layout_version, errc::unsupported, in.context(), ": layout version ",
                int(version), " (this build reads ", int(oldest_method_layout_version), "..", int(method_layout_version), ")");
        prefix.flags = in.get_u8();
        require((prefix.flags & ~allowed_flags) == 0, errc::corrupt, in.context(), ": unknown flags 0x", std::hex, int(prefix.flags), " at offset 1");
        for (float* value : {&prefix.relative_mse, &prefix.sensitivity}) *value = to_float(bfloat16{in.get_u16()});
        const std::uint64_t span = get_varint(in, "segment span");
        require(span >= 1 && span <= std::numeric_limits<std::uint32_t>::max(), errc::corrupt, in.context(), ": segment span ", span, " at offset ", diagnostics_offset + diagnostics_bytes);
        prefix.span = std::uint32_t(span);
        return prefix;
    }
};

/// Overwrites the diagnostics of a metadata block written with MethodPrefix (same size); NaN
/// arguments leave their field as it is.
inline void patch_diagnostics(std::vector<std::uint8_t>& metadata, double relative_mse, double sensitivity) {
    NWC_ASSERT(metadata.size() >= diagnostics_offset + diagnostics_bytes);
    const double values[2] = {relative_mse, sensitivity};
    for (std::size_t k = 0; k < 2; ++k) {
        if (std::isnan(values[k])) continue;
        const std::uint16_t bits = to_bfloat16(float(values[k])).bits;
        std::memcpy(metadata.data() + diagnostics_offset + 2 * k, &bits, 2);
    }
}

/// What a coded tensor's metadata records about it (NaN when absent or not a coded tensor).
struct StoredDiagnostics {
    double relative_mse = std::numeric_limits<double>::quiet_NaN();
    double sensitivity = std::numeric_limits<double>::quiet_NaN();
};
inline StoredDiagnostics stored_diagnostics(std::span<const std::uint8_t> metadata) noexcept {
    StoredDiagnostics result;
    if (metadata.size() < diagnostics_offset + diagnostics_bytes || metadata[0] < oldest_method_layout_version || metadata[0] > method_layout_version)
        return result;
    double* fields[2] = {&result.relative_mse, &result.sensitivity};
    for (std::size_t k = 0; k < 2; ++k) {
        std::uint16_t bits;
        std::memcpy(&bits, metadata.data() + diagnostics_offset + 2 * k, 2);
        *fields[k] = to_float(bfloat16{bits});
    }
    return result;
}

/// The value a method stores right after the prefix (`read` parses it from a ByteReader), NaN if
/// the metadata does not parse that far: a method's stored_knob.
template <class Read>
double stored_after_prefix(std::span<const std::uint8_t> metadata, Read&& read) noexcept {
    try {
        ByteReader in(metadata, "metadata");
        MethodPrefix::read(in, 0xFF);
        return read(in);
    } catch (const error&) {
        return std::numeric_limits<double>::quiet_NaN();
    }
}

/// "step=0.4675": a method's knob as reports print it.
inline std::string knob_text(const char* key, double value) {
    char buffer[48];
    std::snprintf(buffer, sizeof buffer, "%s=%.4g", key, value);
    return buffer;
}

/// Splits a rANS stream into "payload" (its renormalization words) and "framing" (header, index,
/// lane states, escapes, padding).
inline void account_rans_stream(std::span<const std::uint8_t> stream, const CdfTableSet& tables, ByteAccount& account) {
    const RansStreamIndex index = rans::read_index(stream, tables);
    std::uint64_t words = 0;
    for (const RansSegment& segment : index.segments) words += 2 * std::uint64_t(segment.word_count);
    account.add("payload", words);
    account.add("framing", stream.size() - words);
}

/// A method's step as stored, fp16 (0.05% apart: no rate control or allocation can see it); the
/// encoder quantizes with exactly this value. errc::invalid_argument outside fp16's normal range.
inline half stored_step(float step, std::string_view method) {
    const half stored = to_half(step);
    require(is_finite(stored) && (stored.bits & half_exponent_mask) != 0, errc::invalid_argument, method, " step ", step,
            " is outside fp16's normal range (6.1e-5 .. 65504)");
    return stored;
}

/// Δ s for each normalization scale s: the float products encoder and decoder both multiply by.
inline std::vector<float> scaled_steps(float step, std::span<const half> scales) {
    std::vector<float> steps(scales.size());
    for (std::size_t i = 0; i < scales.size(); ++i) steps[i] = step * to_float(scales[i]);
    return steps;
}

/// Whole rows per segment of about `weights_per_segment` weights (at least one row).
constexpr std::int64_t rows_per_segment(std::int64_t cols, std::int64_t weights_per_segment) noexcept {
    return std::max<std::int64_t>(1, weights_per_segment / std::max<std::int64_t>(cols, 1));
}

/// Segments of `count` units cut `span` at a time.
constexpr std::int64_t segment_count(std::int64_t count, std::int64_t span) noexcept { return (count + span - 1) / span; }

/// Packs codes (< 2^bits) LSB first: code i occupies bits [i b, (i + 1) b) of the little-endian stream.
inline std::vector<std::uint8_t> pack_codes(std::span<const std::uint8_t> codes, int bits) {
    std::vector<std::uint8_t> packed((codes.size() * std::size_t(bits) + 7) / 8, 0);
    std::uint64_t position = 0;
    for (std::uint8_t code : codes) {
        const std::uint32_t value = std::uint32_t(code) << (position % 8);
        packed[position / 8] |= std::uint8_t(value);
        if ((position % 8) + std::uint64_t(bits) > 8) packed[position / 8 + 1] |= std::uint8_t(value >> 8);
        position += std::uint64_t(bits);
    }
    return packed;
}

/// Inverse of pack_codes; `packed` must be exactly ceil(count b / 8) bytes with zero padding bits.
inline void unpack_codes(std::span<const std::uint8_t> packed, int bits, std::span<std::uint8_t> codes, std::string_view context) {
    require(bits >= 1 && bits <= 8, errc::invalid_argument, context, ": codes of ", bits, " bits (1..8)");
    const std::uint64_t total_bits = std::uint64_t(codes.size()) * std::uint64_t(bits);
    require(packed.size() == (total_bits + 7) / 8, errc::corrupt, context, ": ", packed.size(), " bytes of codes, ", codes.size(), " codes of ", bits,
            " bits need ", (total_bits + 7) / 8);
    const std::uint32_t mask = (1u << bits) - 1u;
    std::uint64_t position = 0;
    // 1, 2, 4 or 8 bits: whole codes per byte, least significant first (the loop below's order),
    // with the width a constant so that the loop vectorizes (it was 40% of an rtn decode).
    const auto unpack_whole_bytes = [&]<int width>(std::integral_constant<int, width>) {
        constexpr std::size_t per_byte = std::size_t(8 / width);
        const std::size_t whole = codes.size() / per_byte;
        std::uint8_t* out = codes.data();
        const std::uint8_t* in = packed.data();
        for (std::size_t i = 0; i < whole; ++i)
            for (std::size_t k = 0; k < per_byte; ++k) out[i * per_byte + k] = std::uint8_t((in[i] >> (k * std::size_t(width))) & ((1u << width) - 1u));
        position = std::uint64_t(whole) * 8;
    };
    switch (bits) {
    case 1: unpack_whole_bytes(std::integral_constant<int, 1>{}); break;
    case 2: unpack_whole_bytes(std::integral_constant<int, 2>{}); break;
    case 4: unpack_whole_bytes(std::integral_constant<int, 4>{}); break;
    case 8: unpack_whole_bytes(std::integral_constant<int, 8>{}); break;
    default: break;
    }
    for (auto& code : codes.subspan(std::size_t(position / std::uint64_t(bits)))) {
        std::uint32_t window = packed[position / 8];
        if ((position % 8) + std::uint64_t(bits) > 8) window |= std::uint32_t(packed[position / 8 + 1]) << 8;
        code = std::uint8_t((window >> (position % 8)) & mask);
        position += std::uint64_t(bits);
    }
    if (total_bits % 8 != 0)
        require((packed.back() >> (total_bits % 8)) == 0, errc::corrupt, context, ": padding bits of the last code byte are not zero");
}

/// Sums for relative MSE and proxy loss.
struct ErrorMeasure {
    double squared_error = 0.0, squared_norm = 0.0;    ///< ||W - What||^2, ||W||^2
    double weighted_error = 0.0, weighted_norm = 0.0;  ///< tr(dW H dW^T), tr(W H W^T) (with a Hessian)
    bool has_hessian = false;

    double relative_mse() const noexcept { return squared_norm > 0.0 ? squared_error / squared_norm : 0.0; }
    double proxy_loss() const noexcept {
        if (!has_hessian) return std::numeric_limits<double>::quiet_NaN();
        return weighted_norm > 0.0 ? weighted_error / weighted_norm : 0.0;
    }
};

/// Adds one weight and what the decoder makes of it to `measure`'s sums, as measure_error does.
inline void add_error(ErrorMeasure& measure, float weight, float reconstruction) noexcept {
    const double value = weight, difference = value - double(reconstruction);
    measure.squared_error += difference * difference;
    measure.squared_norm += value * value;
}

/// The entry's shape as a matrix (errc::corrupt unless rank 2).
inline void require_matrix(const Shape& shape, std::string_view context) {
    require(shape.rank() == 2 && shape[0] > 0 && shape[1] > 0, errc::corrupt, context, ": a coded tensor must be a non-empty matrix");
}

}  // namespace detail
}  // namespace nwc
