// De-normalization of decoded chunks into a row-major weight matrix, per backend: the last step of
// decoding an nwc segment (pipeline/method_nwc.hpp).
//
// Read me first:
// - Input: the decoded chunks of some columns of an m x n matrix, column k of the list at
//   chunks[k * column_stride .. + rows) (column_stride = chunks_per_column * chunk_size, the tail
//   padding of the last chunk is skipped). Output: weight(r, c) = (value / alpha) * scale, with the
//   fp16 scale of column c (per_column) or row r (per_row), stored as T (float, half or bfloat16:
//   from_float<T> of that float).
// - backend::scalar is the reference: that formula, column by column. backend::simd computes the
//   same IEEE operations in the same order (a division, then a multiplication, no FMA), so it is
//   bit-identical; it only changes the memory order. The reference writes down a column of a
//   row-major matrix (one cache line per value); the simd kernel takes `tile_columns` columns
//   that are adjacent in the output, transposes a tile of them through a small buffer and writes
//   whole row pieces. Columns that are not in such a run (a segment holds the columns of one
//   prior group only) go through the reference.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include <xsimd/xsimd.hpp>

#include "nwc/core/backend.hpp"
#include "nwc/core/config.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/half_simd.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/quant/chunker.hpp"

namespace nwc {

/// Where the decoded values of a segment lie and how to scale them back.
struct DechunkSource {
    std::span<const float> chunks;         ///< the decoded chunks, column after column
    std::span<const std::int64_t> columns; ///< output column of each chunk column, increasing
    std::int64_t column_stride = 0;        ///< values per chunk column (chunks_per_column * chunk_size >= rows)
    float alpha = 1.0f;                    ///< the rate knob the encoder multiplied by
    std::span<const half> scales;          ///< one per output column (per_column), row (per_row) or one (per_tensor)
    NormalizationAxis axis = NormalizationAxis::per_column;
};

/// Reference: output(r, c) = from_float<T>((value / alpha) * scale) for every listed column c.
template <class T>
void dechunk_denormalize(const DechunkSource& source, TensorView<T> output, backend::scalar) {
    const std::int64_t rows = output.rows();
    NWC_ASSERT(source.column_stride >= rows && std::int64_t(source.chunks.size()) >= std::int64_t(source.columns.size()) * source.column_stride);
    for (std::size_t k = 0; k < source.columns.size(); ++k) {
        const std::int64_t c = source.columns[k];
        const float* values = source.chunks.data() + std::int64_t(k) * source.column_stride;
        for (std::int64_t r = 0; r < rows; ++r) {
            const float scale = to_float(source.scales[std::size_t(scale_index(source.axis, r, c))]);
            output(r, c) = from_float<T>((values[r] / source.alpha) * scale);
        }
    }
}

namespace detail::dechunk_simd {

inline constexpr std::int64_t tile_columns = 16;
inline constexpr std::int64_t tile_rows = 64;

/// Writes `count` floats to output row `row` from column `column` on, converted to T.
template <class T>
NWC_FORCE_INLINE void store_row(const float* values, std::int64_t count, T* destination) {
    if constexpr (std::is_same_v<T, float>)
        std::copy_n(values, count, destination);
    else
        convert_from_float(std::span<const float>(values, std::size_t(count)), std::span<T>(destination, std::size_t(count)), backend::simd{});
}

/// One run of tile_columns adjacent output columns starting at chunk column k.
template <class T>
void tile_run(const DechunkSource& source, std::size_t k, TensorView<T> output) {
    using Batch = xsimd::batch<float>;
    constexpr std::int64_t lanes = std::int64_t(Batch::size);
    static_assert(tile_columns % lanes == 0);
    const std::int64_t rows = output.rows(), first_column = source.columns[k];
    const bool by_column = source.axis == NormalizationAxis::per_column, by_row = source.axis == NormalizationAxis::per_row;
    alignas(64) float column_scales[tile_columns];
    for (std::int64_t j = 0; j < tile_columns; ++j)
        column_scales[j] = to_float(source.scales[std::size_t(by_column ? first_column + j : 0)]);  // per_tensor: the one scale
    alignas(64) float tile[tile_rows][tile_columns];
    const float* base = source.chunks.data() + std::int64_t(k) * source.column_stride;
    const Batch alpha(source.alpha);
    for (std::int64_t row0 = 0; row0 < rows; row0 += tile_rows) {
        const std::int64_t count = std::min(tile_rows, rows - row0);
        for (std::int64_t j = 0; j < tile_columns; ++j) {
            const float* values = base + j * source.column_stride + row0;
            for (std::int64_t r = 0; r < count; ++r) tile[r][j] = values[r];
        }
        for (std::int64_t r = 0; r < count; ++r) {
            for (std::int64_t j = 0; j < tile_columns; j += lanes) {
                const Batch scale = by_row ? Batch(to_float(source.scales[std::size_t(row0 + r)])) : Batch::load_aligned(column_scales + j);
                ((Batch::load_aligned(&tile[r][j]) / alpha) * scale).store_aligned(&tile[r][j]);
            }
            store_row(&tile[r][0], tile_columns, &output(row0 + r, first_column));
        }
    }
}

}  // namespace detail::dechunk_simd

/// SIMD version: bit-identical to the reference (see the header comment).
template <class T>
void dechunk_denormalize(const DechunkSource& source, TensorView<T> output, backend::simd) {
    if constexpr (std::is_same_v<xsimd::default_arch, xsimd::unavailable>) {
        dechunk_denormalize(source, output, backend::scalar{});
    } else {
        using detail::dechunk_simd::tile_columns;
        const std::size_t count = source.columns.size();
        std::size_t k = 0;
        while (k < count) {
            const bool run = k + tile_columns <= count && source.columns[k + tile_columns - 1] - source.columns[k] == tile_columns - 1;
            if (run) {
                detail::dechunk_simd::tile_run(source, k, output);
                k += tile_columns;
                continue;
            }
            // The reference on this one column.
            DechunkSource single = source;
            single.chunks = source.chunks.subspan(k * std::size_t(source.column_stride), std::size_t(source.column_stride));
            single.columns = source.columns.subspan(k, 1);
            dechunk_denormalize(single, output, backend::scalar{});
            ++k;
        }
    }
}

}  // namespace nwc
