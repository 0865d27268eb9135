// The two ways the nwc method (method_nwc.hpp) runs the codec's encoder over a matrix.
// - With LDLQ, NeuralBlockQuantizer: the chunks of a block of columns at a time, as the
//   compensator hands them over, returning the decoder's reconstruction.
// - Without, code_nwc_chunk_windows: the chunk array a piece at a time instead of all at once, so
//   that a tensor read a strip of columns at a time from a mapped file (NwcMethod::encode_rows) is
//   coded without its chunk array, symbols and reconstruction (16 bytes per weight); the in-memory
//   NwcMethod::encode runs it too, so both write one file.
//
// Why pieces give the symbols of one pass over the whole array: the encoder network runs in tiles
// of ResidualMLP::tile_rows_for(width) chunks counted from the array's start, and a chunk's
// latents depend on the tile it shares (Eigen's GEMM takes a row's sums in an order that depends
// on the tile's height and the row's place in it). Every encoded piece starts at a multiple of the
// tile height, so its tiles are the whole array's. The decoder (for the measured error) runs in
// blocks of NeuralDecoder::block_chunks from the array's start, tiled from each block's start: a
// decoded piece lies in one block and starts at one of its tile boundaries. The number of threads
// only changes which worker runs a tile.
//
// Three stages run as far ahead as the next needs: strips of columns are read (nwc_window_chunks
// at a time: a strip touches every row, so fewer strips mean fewer passes over a tall matrix's
// pages), pieces encoded, pieces decoded and measured. Held at once: the weights of about one
// strip and the symbols of about two pieces.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/quantizer_concept.hpp"

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

}  // namespace nwc

namespace nwc::detail {

/// Where a tensor's chunks come from and how they are normalized: an m x n matrix, its scales
/// (Chunker::compute_scales), the importance level of each column (empty: all 0) and the rate knob alpha.
struct NwcChunkSource {
    std::int64_t rows = 0, cols = 0;
    NormalizationAxis axis = NormalizationAxis::per_column;
    std::span<const half> scales;
    std::span<const std::uint8_t> levels;
    float alpha = 1.0f;
};

/// Chunks read per strip of columns (2^20 weights at d = 16).
inline constexpr std::int64_t nwc_window_chunks = 65536;
/// Chunks per encoded or decoded piece, rounded to whole tiles.
inline constexpr std::int64_t nwc_piece_chunks = 8192;

/// Codes every chunk of `source` with `codec`, a piece at a time.
/// - read(first_row, row_count, first_col, col_count) returns that block of the matrix as a view
///   (anything with operator()(row, col) relative to the block, valid until the next call);
/// - symbols(first_chunk, span) receives the symbols of chunks [first_chunk, first_chunk + n) in
///   order, latents per chunk, every chunk once;
/// - when `decode` is set, reconstructed(row, col, weight, value) receives each weight and what the
///   decoder makes of it ((decoded / alpha) * scale, as dechunk_denormalize computes it) in chunk
///   order: down each column, column after column.
/// The networks run on the scalar reference (see NwcMethod::encode); `threads` share a piece's tiles.
template <class Read, class Symbols, class Reconstructed>
void code_nwc_chunk_windows(const NeuralCodec& codec, const NwcChunkSource& source, int threads, bool decode, Read&& read, Symbols&& symbols,
                            Reconstructed&& reconstructed) {
    const backend::scalar reference{};
    const CodecArchitecture& arch = codec.architecture();
    const std::int64_t d = arch.chunk_size, latents = arch.latents, rows = source.rows;
    const std::int64_t per_column = (rows + d - 1) / d, total = per_column * source.cols;
    const std::int64_t encoder_tile = ResidualMLP<float>::tile_rows_for(codec.encoder().shape().width);
    const std::int64_t decoder_tile = ResidualMLP<float>::tile_rows_for(arch.decoder_shape().width), block = NeuralDecoder::block_chunks;
    const std::int64_t encode_piece = std::max<std::int64_t>(1, nwc_piece_chunks / encoder_tile) * encoder_tile;
    const std::int64_t decode_piece = std::max<std::int64_t>(1, nwc_piece_chunks / decoder_tile) * decoder_tile;
    const auto scale_of = [&](std::int64_t r, std::int64_t c) { return to_float(source.scales[std::size_t(scale_index(source.axis, r, c))]); };
    const auto level_of = [&](std::int64_t c) { return source.levels.empty() ? std::uint8_t(0) : source.levels[std::size_t(c)]; };

    // Chunks [weights_first, read_end): their weights in chunk layout (the tail padding 0), of which
    // those before held_first are done with (dropped when the next strip is read); chunks
    // [held_first, encoded_end): their symbols, kept to be decoded (only when decoding).
    std::vector<float> weights, input, decoded;
    std::vector<std::int32_t> held_symbols;
    std::vector<std::uint8_t> piece_levels;
    std::int64_t weights_first = 0, held_first = 0, read_end = 0, encoded_end = 0;
    const auto weight_at = [&](std::int64_t chunk) { return weights.data() + (chunk - weights_first) * d; };
    const auto read_strip = [&] {  // chunks [read_end, read_end + window)
        weights.erase(weights.begin(), weights.begin() + (held_first - weights_first) * d);
        weights_first = held_first;
        const std::int64_t first = read_end, end = std::min(total, first + nwc_window_chunks);
        const std::int64_t first_col = first / per_column, last_col = (end - 1) / per_column;
        const bool one_column = first_col == last_col;
        const std::int64_t first_row = one_column ? (first % per_column) * d : 0;
        const std::int64_t row_end = one_column ? std::min(rows, ((end - 1) % per_column + 1) * d) : rows;
        const auto part = read(first_row, row_end - first_row, first_col, last_col - first_col + 1);
        weights.resize(std::size_t((end - weights_first) * d));
        for (std::int64_t k = first; k < end; ++k) {
            const std::int64_t c = k / per_column, row0 = (k % per_column) * d;
            float* chunk = weight_at(k);
            for (std::int64_t r = row0; r < row0 + d; ++r) chunk[r - row0] = r < rows ? part(r - first_row, c - first_col) : 0.0f;
        }
        read_end = end;
    };
    const auto drop_before = [&](std::int64_t chunk) {  // the chunks before `chunk` are done with
        if (decode) held_symbols.erase(held_symbols.begin(), held_symbols.begin() + (chunk - held_first) * latents);
        held_first = chunk;
    };
    const auto encode_next = [&] {  // chunks [encoded_end, encoded_end + encode_piece)
        const std::int64_t first = encoded_end, end = std::min(total, first + encode_piece), count = end - first;
        while (read_end < end) read_strip();
        input.resize(std::size_t(count * d));
        piece_levels.resize(std::size_t(count));
        for (std::int64_t k = first; k < end; ++k) {
            const std::int64_t c = k / per_column, row0 = (k % per_column) * d, local = (k - first) * d;
            piece_levels[std::size_t(k - first)] = level_of(c);
            const float* chunk = weight_at(k);
            for (std::int64_t r = row0; r < row0 + d; ++r)  // Chunker::normalize, then * alpha; the padding stays 0
                input[std::size_t(local + r - row0)] = r < rows ? (chunk[r - row0] / scale_of(r, c)) * source.alpha : 0.0f;
        }
        const std::size_t kept = held_symbols.size();
        held_symbols.resize(kept + std::size_t(count * latents));
        const std::span<std::int32_t> coded = std::span<std::int32_t>(held_symbols).subspan(kept);
        codec.encode(TensorView<const float>(input.data(), Shape{count, d}), piece_levels, coded, threads, reference);
        symbols(first, std::span<const std::int32_t>(coded));
        encoded_end = end;
        if (!decode) {
            held_symbols.clear();
            drop_before(end);
        }
    };
    if (!decode) {
        while (encoded_end < total) encode_next();
        return;
    }
    while (held_first < total) {
        // The next decoded piece: within the block of held_first, from one of its tile boundaries.
        const std::int64_t first = held_first, block_end = std::min(total, (first / block + 1) * block);
        const std::int64_t end = std::min(block_end, first + decode_piece), count = end - first;
        while (encoded_end < end) encode_next();
        decoded.resize(std::size_t(count * d));
        piece_levels.resize(std::size_t(count));
        for (std::int64_t k = first; k < end; ++k) piece_levels[std::size_t(k - first)] = level_of(k / per_column);
        codec.decode(std::span<const std::int32_t>(held_symbols).first(std::size_t(count * latents)), piece_levels,
                     TensorView<float>(decoded.data(), Shape{count, d}), threads, reference);
        for (std::int64_t k = first; k < end; ++k) {
            const std::int64_t c = k / per_column, row0 = (k % per_column) * d, local = (k - first) * d;
            const float* chunk = weight_at(k);
            for (std::int64_t r = row0; r < std::min(rows, row0 + d); ++r)
                reconstructed(r, c, chunk[r - row0], (decoded[std::size_t(local + r - row0)] / source.alpha) * scale_of(r, c));
        }
        drop_before(end);
    }
}

}  // namespace nwc::detail
