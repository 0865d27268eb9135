// The "nwc" method: Chunker normalization (fp16 scale per column or row), chunks of d weights of
// one column, importance levels from diag(H) (all 0 without a Hessian), the neural codec
// (symbols = round(g_a(alpha x, level) - median)), rANS with the codec's integer tables. Decoding
// uses the decoder half the container embeds (ContainerWriter::add_codec), or, for a codec that
// ships with the library, the one a 36-byte reference names (codec_reference.hpp).
//
// Rate knob alpha: the encoder sees alpha * x, the decoder's output is divided by alpha. alpha > 1
// spreads the latents over more integers (more bits, less error), alpha < 1 fewer; alpha = 1 is the
// codec as trained. Rate control bisects one alpha for the whole file.
//
// Without LDLQ the encoder runs over pieces of the chunk array with the tiles of one pass over all
// of it (nwc_encoding.hpp): the same symbols, and without a Hessian a matrix can be read a
// strip of columns at a time (encode_rows, for a streamed compress). The error it reports without a
// Hessian is summed in chunk order (down each column), the order a strip-wise encoder can take.
//
// Optional LDLQ in per_block mode: NeuralBlockQuantizer codes the chunks of a block of
// MethodOptions::nwc_block_columns (16) columns at once and returns the decoder's reconstruction
// (a chunk lies in one column, so any block width works); the Hessian is moved into the normalized domain
// (H' = S H S for per-column scales S, so tr(dW H dW^T) is unchanged).
//
// Metadata: MethodPrefix (span = columns per span), u8 axis, f32 alpha, varint chunk size d,
// varint latents M, the scales (write_scales: 1, m or n), and, when the prefix has
// flag_hessian_levels, the levels (write_levels, one per column; all 0 otherwise; the writer sets
// the flag only when a level is not 0). Segments: for each span of columns [k span, min((k + 1) span, n)), for each prior group
// g of the codec (one per level, or one shared) that a column of the span uses, in increasing g:
// one rANS stream (the codec's tables of group g, M channels) of the symbols of the chunks of
// those columns, in column order (ceil(m / d) chunks per column, M symbols per chunk). The segment
// list follows from the levels alone. Weight (r, c) = (chunk value / alpha) * scale.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/pipeline/method_encoding.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_reference.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_nwc_decoding.hpp"
#include "nwc/pipeline/nwc_encoding.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/dechunk_kernels.hpp"
#include "nwc/quant/ldlq_compensator.hpp"

namespace nwc {

/// The nwc method: the encoder here, the decoder in NwcDecoding (method_nwc_decoding.hpp).
struct NwcMethod : NwcDecoding {
    /// Far below 1 the codec's distortion explodes long before its rate falls: pick another codec.
    static constexpr MethodKnob knob{.option = "alpha", .integer = false, .rate_grows = true, .lowest = 0.25, .highest = 16.0};
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.alpha; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.alpha = float(value); }

    /// Moves the columns of a level with fewer than `min_symbols` symbols in a span down one level,
    /// from the top level down (an encoder choice: the stored levels say what was used).
    static void merge_small_levels(std::vector<std::uint8_t>& levels, std::int64_t span, std::int64_t column_symbols, std::int64_t min_symbols,
                                   const CodecArchitecture& arch) {
        if (!arch.per_level_prior || min_symbols <= 0) return;
        const std::int64_t cols = std::int64_t(levels.size());
        for (std::int64_t first = 0; first < cols; first += span) {
            const std::int64_t last = std::min(cols, first + span);
            for (int level = arch.levels - 1; level >= 1; --level) {
                std::int64_t count = 0;
                for (std::int64_t c = first; c < last; ++c) count += levels[std::size_t(c)] == level ? 1 : 0;
                if (count > 0 && count * column_symbols < min_symbols)
                    for (std::int64_t c = first; c < last; ++c)
                        if (levels[std::size_t(c)] == level) levels[std::size_t(c)] = std::uint8_t(level - 1);
            }
        }
    }

    /// Codes W (m x n) with resources.neural_codec at options.alpha.
    /// The networks run on the scalar reference whatever the codec's backend is: the simd epilogue
    /// rounds differently (within 1e-6), which can move a latent across a rounding boundary, and the
    /// file's bytes must not depend on the backend that wrote them (tests/test_backend_consistency.cpp).
    /// Without LDLQ the chunks are coded a window at a time (code_nwc_chunk_windows); without a
    /// Hessian the error is also `measured`, in chunk order (down each column, column after column),
    /// the order encode_rows can take.
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, const Resources& resources) {
        const NeuralCodec& codec = codec_of(resources);
        const CodecArchitecture& arch = codec.architecture();
        const std::int64_t rows = weights.rows(), cols = weights.cols(), latents = arch.latents;
        const Chunker chunker(ChunkerOptions{.axis = options.axis, .chunk_size = arch.chunk_size});
        const std::vector<half> scales = chunker.compute_scales(weights);
        std::vector<std::uint8_t> levels(std::size_t(cols), 0);
        if (hessian != nullptr) {
            const Eigen::VectorXd diagonal = hessian->matrix().diagonal();
            levels = chunker.importance_levels(std::span<const double>(diagonal.data(), std::size_t(diagonal.size())));
            for (auto& level : levels) level = std::uint8_t(std::min<int>(level, arch.levels - 1));
        }
        const std::int64_t per_column = chunker.chunks_per_column(rows);
        const std::int64_t span = columns_per_segment(rows, cols, options, arch);
        merge_small_levels(levels, span, per_column * latents, options.nwc_min_level_symbols, arch);
        std::vector<std::int32_t> symbols(std::size_t(cols * per_column * latents));
        EncodedMatrix result;
        result.used_hessian = hessian != nullptr;
        result.setting = knob_setting<NwcMethod>(options.alpha);
        if (options.ldlq && hessian != nullptr) {
            Tensor<float> normalized(weights.shape());
            chunker.normalize(weights, scales, normalized.view());
            Eigen::MatrixXd moved = hessian->matrix();
            if (options.axis == NormalizationAxis::per_column)
                for (std::int64_t i = 0; i < cols; ++i)
                    for (std::int64_t j = 0; j < cols; ++j) moved(i, j) *= double(to_float(scales[std::size_t(i)])) * double(to_float(scales[std::size_t(j)]));
            NeuralBlockQuantizer<backend::scalar> quantizer(codec, options.alpha, per_column, symbols);
            const LDLQOptions ldlq = detail::ldlq_options(options, options.nwc_block_columns, FeedbackMode::per_block);
            LDLQResult coded = LDLQCompensator<NeuralBlockQuantizer<backend::scalar>>(ldlq).compress(normalized.view(), moved, quantizer, levels);
            result.used_feedback = coded.report.used_feedback;
            normalized = Tensor<float>();
            if (!coded.reconstructed.values().empty()) {
                result.reconstruction = Tensor<float>(weights.shape());
                chunker.denormalize(coded.reconstructed.view(), scales, result.reconstruction.view());
            }
        } else {
            if (options.measure) result.reconstruction = Tensor<float>(weights.shape());
            detail::ErrorMeasure measure;
            const detail::NwcChunkSource source{rows, cols, options.axis, scales, levels, options.alpha};
            detail::code_nwc_chunk_windows(
                codec, source, std::max(1, options.threads), options.measure,
                [&](std::int64_t first_row, std::int64_t, std::int64_t first_col, std::int64_t) {
                    return [&weights, first_row, first_col](std::int64_t r, std::int64_t c) { return weights(first_row + r, first_col + c); };
                },
                [&](std::int64_t first_chunk, std::span<const std::int32_t> coded) {
                    std::copy(coded.begin(), coded.end(), symbols.begin() + first_chunk * latents);
                },
                [&](std::int64_t r, std::int64_t c, float weight, float value) {
                    result.reconstruction(r, c) = value;
                    detail::add_error(measure, weight, value);
                });
            if (options.measure && hessian == nullptr) result.measured = measure;
        }
        begin_entry(result, options, span, arch, scales, levels);
        const std::int64_t column_symbols = per_column * latents;
        std::vector<std::int32_t> gathered;
        for (const Layout::Segment& segment : segments_of(levels, span, arch)) {
            gathered.clear();
            for (std::int64_t c = segment.span * span; c < std::min(cols, (segment.span + 1) * span); ++c)
                if (arch.prior_group(levels[std::size_t(c)]) == segment.group)
                    gathered.insert(gathered.end(), symbols.begin() + c * column_symbols, symbols.begin() + (c + 1) * column_symbols);
            add_segment(result.tensor, gathered, codec, segment.group);
        }
        return result;
    }

    /// encode() without a Hessian of a matrix read a strip of columns at a time (RowEncodingMethod):
    /// the scales in two passes of rows, then code_nwc_chunk_windows, each segment (a span of
    /// columns: every level is 0, so one prior group) coded as soon as its symbols are complete.
    /// Holds a strip of columns (about 2^20 weights, as MatrixRows read them and in chunk layout),
    /// the symbols of two pieces and of one segment, and the coded bytes; never the tensor.
    template <class Resources>  // a template: instantiated where a tensor is coded
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const Resources& resources) {
        const NeuralCodec& codec = codec_of(resources);
        const CodecArchitecture& arch = codec.architecture();
        const std::int64_t rows = source.rows, cols = source.cols, latents = arch.latents;
        const Chunker chunker(ChunkerOptions{.axis = options.axis, .chunk_size = arch.chunk_size});
        const std::vector<half> scales = chunker.compute_scales_by_rows(rows, cols, source.block_rows(), source.all_columns());
        const std::vector<std::uint8_t> levels(std::size_t(cols), 0);
        const std::int64_t span = columns_per_segment(rows, cols, options, arch), segment_symbols = span * chunker.chunks_per_column(rows) * latents;
        EncodedMatrix result;
        result.setting = knob_setting<NwcMethod>(options.alpha);
        begin_entry(result, options, span, arch, scales, levels);
        const int group = arch.prior_group(0);
        std::vector<std::int32_t> gathered;
        detail::ErrorMeasure measure;
        const detail::NwcChunkSource chunks{rows, cols, options.axis, scales, {}, options.alpha};
        detail::code_nwc_chunk_windows(
            codec, chunks, std::max(1, options.threads), options.measure,
            [&](std::int64_t first_row, std::int64_t row_count, std::int64_t first_col, std::int64_t col_count) {
                return source.read(first_row, row_count, first_col, col_count);
            },
            [&](std::int64_t, std::span<const std::int32_t> coded) {
                for (std::size_t taken = 0; taken < coded.size();) {
                    const std::size_t part = std::min(coded.size() - taken, std::size_t(segment_symbols) - gathered.size());
                    gathered.insert(gathered.end(), coded.begin() + std::ptrdiff_t(taken), coded.begin() + std::ptrdiff_t(taken + part));
                    taken += part;
                    if (gathered.size() == std::size_t(segment_symbols)) {
                        add_segment(result.tensor, gathered, codec, group);
                        gathered.clear();
                    }
                }
            },
            [&](std::int64_t, std::int64_t, float weight, float value) { detail::add_error(measure, weight, value); });
        if (!gathered.empty()) add_segment(result.tensor, gathered, codec, group);
        if (options.measure) result.measured = measure;
        return result;
    }

    static const NeuralCodec& codec_of(const MethodResources& resources) {
        require(resources.neural_codec != nullptr, errc::invalid_argument, "the nwc method needs a trained codec (--codec FILE)");
        return *resources.neural_codec;
    }
    /// Columns per segment: about options.weights_per_segment weights, at least one column.
    static std::int64_t columns_per_segment(std::int64_t rows, std::int64_t cols, const MethodOptions& options, const CodecArchitecture& arch) {
        const std::int64_t column_weights = (rows + arch.chunk_size - 1) / arch.chunk_size * arch.chunk_size;
        return std::min(cols, std::max<std::int64_t>(1, options.weights_per_segment / column_weights));
    }
    /// The entry's method and metadata (prefix, axis, alpha, d, M, scales, levels when one is not 0).
    static void begin_entry(EncodedMatrix& result, const MethodOptions& options, std::int64_t span, const CodecArchitecture& arch,
                            std::span<const half> scales, std::span<const std::uint8_t> levels) {
        ContainerTensor& tensor = result.tensor;
        tensor.method = std::string(name);
        ByteWriter metadata;
        detail::MethodPrefix prefix;
        // Levels are stored only when one is not 0: on a small model merge_small_levels leaves every
        // column at level 0, and 2 bits per column of zeros were 0.022 bits per weight of stories260K.
        const bool store_levels = std::any_of(levels.begin(), levels.end(), [](std::uint8_t level) { return level != 0; });
        prefix.flags = std::uint8_t((result.used_feedback ? detail::flag_feedback : 0) | (store_levels ? detail::flag_hessian_levels : 0));
        prefix.span = std::uint32_t(span);
        prefix.write(metadata);
        metadata.put_u8(std::uint8_t(options.axis));
        metadata.put_f32(options.alpha);
        detail::put_varint(metadata, std::uint64_t(arch.chunk_size));
        detail::put_varint(metadata, std::uint64_t(arch.latents));
        write_scales(metadata, scales);
        if (store_levels) write_levels(metadata, levels);
        tensor.metadata = metadata.take();
    }
    /// One segment: a rANS stream of `symbols` with prior group `group`'s tables.
    static void add_segment(ContainerTensor& tensor, std::span<const std::int32_t> symbols, const NeuralCodec& codec, int group) {
        RangeCoderOptions coder;
        coder.segment_size = std::uint32_t(symbols.size());
        tensor.add_segment(rans::encode(symbols, codec.decoder().all_tables()[std::size_t(group)], coder));
    }

    /// What the container holds for this method's tensors: a reference (codec_reference.hpp) when
    /// the codec ships with the library and resources.embed_codec is off, else the decoder half.
    static std::vector<std::uint8_t> codec_blob(const MethodResources& resources) {
        std::vector<std::uint8_t> decoder = serialize_codec_decoder(resources.neural_codec->decoder());
        if (!resources.embed_codec && codec_is_shipped(decoder)) return codec_reference_blob(decoder);
        return decoder;
    }
};

}  // namespace nwc
