// The decoding half of the "nwc" method (method_nwc.hpp has the format and the encoder):
// NwcDecoding parses a tensor's metadata (MethodPrefix, axis, alpha, chunk size, latents, scales,
// levels) and the codec blob it refers to (the container's embedded decoder half, or a shipped
// codec's reference), and decodes a segment: its rANS streams into latents, the NeuralDecoder's
// networks into chunks, dechunked and denormalized into its columns. Decoding-only programs
// include this, not the neural encoder, LDLQ or training.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/codec/codec_reference.hpp"
#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/pipeline/method.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/dechunk_kernels.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// The nwc method's decoder (NwcMethod adds the encoder).
struct NwcDecoding {
    static constexpr std::string_view name = "nwc";
    static constexpr bool uses_codec_blob = true;
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
