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
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/codec_reference.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/nwc_encoding.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/dechunk_kernels.hpp"
#include "nwc/quant/ldlq_compensator.hpp"

namespace nwc {

/// The nwc method.
struct NwcMethod {
    static constexpr std::string_view name = "nwc";
    /// Far below 1 the codec's distortion explodes long before its rate falls: pick another codec.
    static constexpr MethodKnob knob{.option = "alpha", .integer = false, .rate_grows = true, .lowest = 0.25, .highest = 16.0};
    static constexpr bool uses_codec_blob = true;
    static constexpr bool uses_normalization_axis = true;
    static double knob_value(const MethodOptions& options) noexcept { return options.alpha; }
    static void set_knob(MethodOptions& options, double value) noexcept { options.alpha = float(value); }
    /// The alpha stored in a coded tensor's metadata (NaN if it is too short to hold it).
    static double stored_knob(std::span<const std::uint8_t> metadata) noexcept {
        return detail::stored_after_prefix(metadata, [](ByteReader& in) {
            in.get_u8();
            return double(in.get_f32());
        });
    }

    /// Decoding parameters of one tensor.
    struct Layout {
        std::shared_ptr<const NeuralDecoder> decoder;  ///< the container's codec blob it refers to
        std::int64_t rows = 0, cols = 0, chunk_size = 16, latents = 16, chunks_per_column = 1;
        NormalizationAxis axis = NormalizationAxis::per_column;
        float alpha = 1.0f;
        std::int64_t columns_per_segment = 1;
        std::vector<half> scales;
        std::vector<std::uint8_t> levels;  ///< per column
        std::uint64_t scale_bytes = 0, level_bytes = 0;  ///< of the metadata (for accounting)
        /// Segment k: the columns of span `span` whose level uses prior group `group`.
        struct Segment {
            std::int64_t span = 0;
            int group = 0;
        };
        std::vector<Segment> segments;

        std::size_t segment_count() const noexcept { return segments.size(); }
        std::int64_t segment_weights(std::size_t segment) const noexcept {
            const CodecArchitecture& arch = decoder->architecture();
            const std::int64_t first = segments[segment].span * columns_per_segment;
            std::int64_t columns = 0;
            for (std::int64_t c = first; c < std::min(cols, first + columns_per_segment); ++c)
                columns += arch.prior_group(levels[std::size_t(c)]) == segments[segment].group ? 1 : 0;
            return columns * rows;
        }
    };

    /// The segments of a tensor: (span, prior group) pairs in payload order.
    static std::vector<Layout::Segment> segments_of(std::span<const std::uint8_t> levels, std::int64_t span, const CodecArchitecture& arch) {
        std::vector<Layout::Segment> segments;
        const std::int64_t cols = std::int64_t(levels.size());
        for (std::int64_t first = 0, k = 0; first < cols; first += span, ++k) {
            std::vector<bool> present(std::size_t(arch.prior_groups()), false);
            for (std::int64_t c = first; c < std::min(cols, first + span); ++c) present[std::size_t(arch.prior_group(levels[std::size_t(c)]))] = true;
            for (int group = 0; group < arch.prior_groups(); ++group)
                if (present[std::size_t(group)]) segments.push_back({k, group});
        }
        return segments;
    }

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
    static EncodedMatrix encode_rows(const MatrixRows& source, const MethodOptions& options, const MethodResources& resources) {
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

    /// Parses and validates the metadata of `entry` (and, once per container, the codec it refers to).
    static Layout parse(const ContainerEntry& entry, std::span<const std::uint8_t> metadata, DecodeResources& resources, const std::string& context) {
        detail::require_matrix(entry.shape, context);
        Layout layout;
        layout.decoder = resources.codec_blob<NeuralDecoder>(entry.codec_index, [](std::span<const std::uint8_t> blob, const std::string& where) {
            return resolve_codec_blob(blob, where);
        });
        const NeuralDecoder& decoder = *layout.decoder;
        ByteReader in(metadata, context + " metadata");
        const detail::MethodPrefix prefix = detail::MethodPrefix::read(in, detail::flag_feedback | detail::flag_hessian_levels);
        layout.rows = entry.shape[0];
        layout.cols = entry.shape[1];
        const std::size_t axis_at = in.offset();
        const std::uint8_t axis = in.get_u8();
        require(axis <= last_normalization_axis, errc::corrupt, context, ": normalization axis ", int(axis), " at offset ", axis_at);
        layout.axis = NormalizationAxis(axis);
        layout.alpha = in.get_f32();
        require(std::isfinite(layout.alpha) && layout.alpha > 0.0f, errc::corrupt, context, ": alpha ", layout.alpha, " at offset ", axis_at + 1,
                " is not finite and positive");
        layout.chunk_size = std::int64_t(std::min<std::uint64_t>(detail::get_varint(in, "chunk size"), 1u << 20));
        layout.latents = std::int64_t(std::min<std::uint64_t>(detail::get_varint(in, "latent count"), 1u << 20));
        const CodecArchitecture& arch = decoder.architecture();
        require(layout.chunk_size == arch.chunk_size && layout.latents == arch.latents, errc::corrupt, context, ": coded with chunks of ", layout.chunk_size,
                " and ", layout.latents, " latents, the embedded codec has ", arch.chunk_size, " and ", arch.latents);
        const std::size_t scales_at = in.offset();
        layout.scales = read_scales(in, std::size_t(scale_count(layout.axis, layout.rows, layout.cols)));
        const std::size_t levels_at = in.offset();
        layout.levels = (prefix.flags & detail::flag_hessian_levels) ? read_levels(in, std::size_t(layout.cols))
                                                                     : std::vector<std::uint8_t>(std::size_t(layout.cols), 0);
        layout.scale_bytes = levels_at - scales_at;
        layout.level_bytes = in.offset() - levels_at;
        for (std::uint8_t level : layout.levels)
            require(level < arch.levels, errc::corrupt, context, ": importance level ", int(level), " but the codec has ", arch.levels, " levels");
        in.expect_end();
        layout.chunks_per_column = (layout.rows + layout.chunk_size - 1) / layout.chunk_size;
        layout.columns_per_segment = std::min<std::int64_t>(prefix.span, layout.cols);
        layout.segments = segments_of(layout.levels, layout.columns_per_segment, arch);
        require(entry.segment_count() == layout.segment_count(), errc::corrupt, context, ": ", entry.segment_count(), " segments, ", layout.cols,
                " columns in spans of ", layout.columns_per_segment, " with their levels need ", layout.segment_count());
        return layout;
    }

    static void account_metadata(const Layout& layout, std::size_t size, ByteAccount& account) {
        account.add("scales", layout.scale_bytes);
        account.add("levels", layout.level_bytes);
        account.add("metadata", size - layout.scale_bytes - layout.level_bytes);
    }
    static void account_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, ByteAccount& account) {
        detail::account_rans_stream(bytes, layout.decoder->all_tables()[std::size_t(layout.segments[segment].group)], account);
    }

    /// Decodes segment `segment` into its columns of `output`.
    template <class Backend>
    static void decode_segment(const Layout& layout, std::size_t segment, std::span<const std::uint8_t> bytes, TensorView<float> output,
                               const std::string& context, Backend backend) {
        const NeuralDecoder& decoder = *layout.decoder;
        const Layout::Segment& where = layout.segments[segment];
        const CodecArchitecture& arch = decoder.architecture();
        // Scratch reused across segments: fresh large buffers per segment cost page faults and
        // zeroing that measured as much as the decoding itself.
        thread_local std::vector<std::int64_t> columns;
        thread_local std::vector<std::uint8_t> levels;
        thread_local std::vector<std::int32_t> symbols;
        thread_local std::vector<float> chunks;
        columns.clear();
        levels.clear();
        const std::int64_t first = where.span * layout.columns_per_segment, d = layout.chunk_size;
        for (std::int64_t c = first; c < std::min(layout.cols, first + layout.columns_per_segment); ++c)
            if (arch.prior_group(layout.levels[std::size_t(c)]) == where.group) {
                columns.push_back(c);
                levels.insert(levels.end(), std::size_t(layout.chunks_per_column), layout.levels[std::size_t(c)]);
            }
        const std::int64_t chunk_count = std::int64_t(levels.size());
        const CdfTableSet& tables = decoder.all_tables()[std::size_t(where.group)];
        const RansStreamIndex index = rans::read_index(bytes, tables);
        require(index.symbol_count == std::uint64_t(chunk_count * layout.latents), errc::corrupt, context, " segment ", segment, ": ", index.symbol_count,
                " symbols for ", chunk_count, " chunks of ", layout.latents, " latents");
        symbols.resize(std::size_t(chunk_count * layout.latents));
        for (std::size_t s = 0; s < index.segments.size(); ++s) {
            const RansSegment& info = index.segments[s];
            rans::decode_segment(bytes, index, tables, s, std::span<std::int32_t>(symbols).subspan(info.first_symbol, info.symbol_count), backend);
        }
        chunks.resize(std::size_t(chunk_count * d));
        decoder.decode(symbols, levels, TensorView<float>(chunks.data(), Shape{chunk_count, d}), 1, backend);
        const DechunkSource source{chunks, columns, layout.chunks_per_column * d, layout.alpha, layout.scales, layout.axis};
        dechunk_denormalize(source, output, backend);
    }
};

}  // namespace nwc
