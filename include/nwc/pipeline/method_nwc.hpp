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
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/dechunk_kernels.hpp"
#include "nwc/quant/ldlq_compensator.hpp"

namespace nwc {

/// The neural codec as an LDLQ BlockQuantizer (quantizer_concept.hpp, FeedbackMode::per_block).
/// Writes symbols into caller storage laid out as the nwc payload: chunk (c, i) of column c is
/// chunk c * chunks_per_column + i, M symbols each.
template <class Backend>
class NeuralBlockQuantizer {
public:
    NeuralBlockQuantizer(const NeuralCodec& codec, float alpha, std::int64_t chunks_per_column, std::span<std::int32_t> symbols)
        : m_codec(&codec), m_alpha(alpha), m_chunks_per_column(chunks_per_column), m_symbols(symbols) {}

    int column_group() const noexcept { return 1; }
    int row_group() const noexcept { return m_codec->architecture().chunk_size; }
    void reset(std::int64_t rows, std::int64_t cols) {
        NWC_ASSERT(std::int64_t(m_symbols.size()) == cols * m_chunks_per_column * m_codec->architecture().latents);
        NWC_ASSERT((rows + row_group() - 1) / row_group() == m_chunks_per_column);
    }
    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        const std::int64_t d = row_group(), latents = m_codec->architecture().latents;
        const std::int64_t rows = block.rows(), width = block.cols(), local = (rows + d - 1) / d;
        NWC_ASSERT(position.first_row % d == 0);
        RowMajorMatrix<float> chunks = RowMajorMatrix<float>::Zero(width * local, d);
        std::vector<std::uint8_t> levels(std::size_t(width * local), 0);
        for (std::int64_t j = 0; j < width; ++j) {
            if (!position.levels.empty()) std::fill_n(levels.begin() + j * local, local, position.levels[std::size_t(j)]);
            for (std::int64_t r = 0; r < rows; ++r) chunks(j * local + r / d, r % d) = block(r, j) * m_alpha;
        }
        std::vector<std::int32_t> symbols(std::size_t(width * local * latents));
        m_codec->encode(TensorView<const float>(chunks.data(), Shape{width * local, d}), levels, symbols, 1, Backend{});
        m_codec->decode(symbols, levels, TensorView<float>(chunks.data(), Shape{width * local, d}), 1, Backend{});
        for (std::int64_t j = 0; j < width; ++j) {
            for (std::int64_t r = 0; r < rows; ++r) reconstructed(r, j) = chunks(j * local + r / d, r % d) / m_alpha;
            const std::int64_t global = (position.first_column + j) * m_chunks_per_column + position.first_row / d;
            std::copy_n(symbols.begin() + j * local * latents, local * latents, m_symbols.begin() + global * latents);
        }
    }

private:
    const NeuralCodec* m_codec;
    float m_alpha;
    std::int64_t m_chunks_per_column;
    std::span<std::int32_t> m_symbols;
};

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
    template <class Resources>
    static EncodedMatrix encode(TensorView<const float> weights, const Tensor<double>* hessian, const MethodOptions& options, const Resources& resources) {
        require(resources.neural_codec != nullptr, errc::invalid_argument, "the nwc method needs a trained codec (--codec FILE)");
        const NeuralCodec& codec = *resources.neural_codec;
        const backend::scalar reference{};
        const CodecArchitecture& arch = codec.architecture();
        const std::int64_t rows = weights.rows(), cols = weights.cols(), d = arch.chunk_size, latents = arch.latents;
        const Chunker chunker(ChunkerOptions{.axis = options.axis, .chunk_size = arch.chunk_size});
        const std::vector<half> scales = chunker.compute_scales(weights);
        Tensor<float> normalized(weights.shape());
        chunker.normalize(weights, scales, normalized.view());
        std::vector<std::uint8_t> levels(std::size_t(cols), 0);
        if (hessian != nullptr) {
            const Eigen::VectorXd diagonal = hessian->matrix().diagonal();
            levels = chunker.importance_levels(std::span<const double>(diagonal.data(), std::size_t(diagonal.size())));
            for (auto& level : levels) level = std::uint8_t(std::min<int>(level, arch.levels - 1));
        }
        const std::int64_t per_column = chunker.chunks_per_column(rows);
        const std::int64_t span = std::min(cols, std::max<std::int64_t>(1, options.weights_per_segment / (per_column * d)));
        merge_small_levels(levels, span, per_column * latents, options.nwc_min_level_symbols, arch);
        std::vector<std::int32_t> symbols(std::size_t(cols * per_column * latents));
        EncodedMatrix result;
        result.used_hessian = hessian != nullptr;
        result.setting = knob_setting<NwcMethod>(options.alpha);
        Tensor<float> normalized_reconstruction;
        if (options.ldlq && hessian != nullptr) {
            Eigen::MatrixXd moved = hessian->matrix();
            if (options.axis == NormalizationAxis::per_column)
                for (std::int64_t i = 0; i < cols; ++i)
                    for (std::int64_t j = 0; j < cols; ++j) moved(i, j) *= double(to_float(scales[std::size_t(i)])) * double(to_float(scales[std::size_t(j)]));
            NeuralBlockQuantizer<backend::scalar> quantizer(codec, options.alpha, per_column, symbols);
            const LDLQOptions ldlq = detail::ldlq_options(options, options.nwc_block_columns, FeedbackMode::per_block);
            LDLQResult coded = LDLQCompensator<NeuralBlockQuantizer<backend::scalar>>(ldlq).compress(normalized.view(), moved, quantizer, levels);
            result.used_feedback = coded.report.used_feedback;
            normalized_reconstruction = std::move(coded.reconstructed);
        } else {
            std::vector<float> chunks = chunker.chunk(normalized.view());
            normalized = Tensor<float>();  // copies of the tensor not held at once: memory for the largest tensor of a model
            for (float& value : chunks) value *= options.alpha;
            std::vector<std::uint8_t> chunk_levels(std::size_t(cols * per_column));
            for (std::int64_t c = 0; c < cols; ++c) std::fill_n(chunk_levels.begin() + c * per_column, per_column, levels[std::size_t(c)]);
            const TensorView<const float> chunk_view(chunks.data(), Shape{cols * per_column, d});
            codec.encode(chunk_view, chunk_levels, symbols, std::max(1, options.threads), reference);
            if (options.measure) {
                codec.decode(symbols, chunk_levels, TensorView<float>(chunks.data(), Shape{cols * per_column, d}), std::max(1, options.threads), reference);
                for (float& value : chunks) value /= options.alpha;
                normalized_reconstruction = Tensor<float>(weights.shape());
                chunker.dechunk(chunks, normalized_reconstruction.view());
            }
        }
        if (!normalized_reconstruction.values().empty()) {
            result.reconstruction = Tensor<float>(weights.shape());
            chunker.denormalize(normalized_reconstruction.view(), scales, result.reconstruction.view());
            normalized_reconstruction = Tensor<float>();
        }

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
        detail::put_varint(metadata, std::uint64_t(d));
        detail::put_varint(metadata, std::uint64_t(latents));
        write_scales(metadata, scales);
        if (store_levels) write_levels(metadata, levels);
        tensor.metadata = metadata.take();
        const std::int64_t column_symbols = per_column * latents;
        std::vector<std::int32_t> gathered;
        for (const Layout::Segment& segment : segments_of(levels, span, arch)) {
            gathered.clear();
            for (std::int64_t c = segment.span * span; c < std::min(cols, (segment.span + 1) * span); ++c)
                if (arch.prior_group(levels[std::size_t(c)]) == segment.group)
                    gathered.insert(gathered.end(), symbols.begin() + c * column_symbols, symbols.begin() + (c + 1) * column_symbols);
            RangeCoderOptions coder;
            coder.segment_size = std::uint32_t(gathered.size());
            tensor.add_segment(rans::encode(gathered, codec.decoder().all_tables()[std::size_t(segment.group)], coder));
        }
        return result;
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
