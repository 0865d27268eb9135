// The contract between LDLQCompensator and a quantizer policy (RoundToNearest,
// EntropyCodedScalar, and later the neural codec).
//
// Read me first:
// - LDLQ sweeps the input columns of W (m x n) in order, block by block, and hands the quantizer
//   the ERROR-COMPENSATED values of the columns it is about to code; the quantizer returns their
//   reconstruction and records whatever it stores (codes, scales, latents) at the positions given.
//   The compensator never looks at that state; it only needs the reconstruction.
// - Values are in W's own units. A policy that codes NORMALIZED weights divides by the Chunker's
//   fp16 scales itself and multiplies its reconstruction back (EntropyCodedScalar does; so must
//   the neural codec), so LDLQ's loss stays the one of W under H.
// - Values arrive as COLUMN-MAJOR blocks (rows x columns, column stride >= rows): a column is
//   contiguous, and when d divides the row count a block is exactly a run of chunks in the
//   Chunker's [chunk][d] layout (column-major over chunks), so a neural codec can encode it as is.
// - Rows of W never interact in LDLQ, so the compensator splits W into row blocks and codes them on
//   several threads. Calls for DIFFERENT row ranges may run concurrently; a quantizer must only
//   write state indexed by (row, column) inside the range it was given (preallocated by reset()).
//   Calls for one row range come in column order, from one thread at a time.
// - Row blocks start at multiples of the compensator's row block size, itself a multiple of
//   row_group(); only the last row block may be shorter (a neural codec pads its last chunks).
//   Column blocks start at multiples of column_group(): RTN's 32-weight groups never straddle two.
//
// The two feedback modes (LDLQOptions::feedback):
// - FeedbackMode::per_column (exact LDLQ / GPTQ, needs a ColumnQuantizer): inside a block every
//   column gets the feedback of all columns before it. For each group of column_group() columns
//   the compensator calls begin_group(position, group) with the group's current values (feedback of
//   every earlier column applied) so that group parameters (RTN's scale) are fixed, then
//   quantize_column(position, column, reconstructed) once per column of the group, in order.
// - FeedbackMode::per_block (needs only a BlockQuantizer): the columns of an LDLQ block are coded
//   together by one quantize_block(position, block, reconstructed) call; the feedback between
//   blocks is exact (block LDL), inside a block there is none. This is the mode for chunk-wise
//   codecs that code d rows x 1 column at once and cannot be interrupted column by column.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>

#include <Eigen/Core>

#include "nwc/core/tensor.hpp"

namespace nwc {

/// How LDLQ feeds quantization errors forward inside a block of columns.
enum class FeedbackMode : std::uint8_t {
    per_column = 0,  ///< exact LDLQ: column by column (ColumnQuantizer)
    per_block = 1,   ///< block LDLQ: a block of columns is coded at once (BlockQuantizer)
};

/// Where a block handed to a quantizer lies in W, and the importance levels of its columns.
struct BlockPosition {
    std::int64_t first_row = 0;            ///< row of W of the block's row 0
    std::int64_t first_column = 0;         ///< column of W of the block's column 0
    std::span<const std::uint8_t> levels;  ///< one level (0..3) per block column, or empty (no levels)
};

/// A read-only rows x columns block, column-major, any column stride.
using ConstColumnBlock = Eigen::Ref<const Eigen::MatrixXf, 0, Eigen::OuterStride<>>;
/// A writable rows x columns block, column-major, any column stride.
using ColumnBlock = Eigen::Ref<Eigen::MatrixXf, 0, Eigen::OuterStride<>>;

/// A quantizer LDLQ can drive in FeedbackMode::per_block.
///
///  - `column_group()`: LDLQ block sizes must be multiples of it (RTN: its group size; 1 otherwise).
///  - `row_group()`: row blocks are multiples of it (a chunk codec: its chunk size d; 1 otherwise).
///  - `reset(rows, cols)`: called once per matrix, single-threaded, before any other call; sizes
///    the state so that later calls only write preallocated, position-indexed storage.
///  - `quantize_block(position, block, reconstructed)`: codes the block (the compensated values),
///    writes the decoder's reconstruction of every value into `reconstructed` (same shape) and
///    stores codes for rows [first_row, first_row + block.rows()) and the block's columns. Must
///    give the same result whatever other row ranges are processed concurrently.
template <class Q>
concept BlockQuantizer = requires(Q& quantizer, const Q& const_quantizer, std::int64_t count, const BlockPosition& position,
                                  ConstColumnBlock block, ColumnBlock reconstructed) {
    { const_quantizer.column_group() } -> std::convertible_to<int>;
    { const_quantizer.row_group() } -> std::convertible_to<int>;
    quantizer.reset(count, count);
    quantizer.quantize_block(position, block, reconstructed);
};

/// A quantizer LDLQ can drive column by column (FeedbackMode::per_column, exact LDLQ / GPTQ).
///
///  - `begin_group(position, group)`: position.first_column is a multiple of column_group(); `group`
///    holds the current values of the group's min(column_group(), n - first_column) columns with
///    the feedback of every earlier column applied; fixes the group's parameters (scales).
///  - `quantize_column(position, column, reconstructed)`: codes one column (position.first_column
///    is its index, position.levels its one level or empty) with the parameters of its group and
///    writes the reconstruction (column.size() == reconstructed.size() == rows of the range).
template <class Q>
concept ColumnQuantizer = BlockQuantizer<Q> && requires(Q& quantizer, const BlockPosition& position, ConstColumnBlock group,
                                                        std::span<const float> column, std::span<float> reconstructed) {
    quantizer.begin_group(position, group);
    quantizer.quantize_column(position, column, reconstructed);
};

namespace detail {
/// quantize_block for a ColumnQuantizer: groups, then columns, no feedback inside the block.
template <class Q>
void quantize_block_by_columns(Q& quantizer, const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
    const std::int64_t columns = block.cols(), group = quantizer.column_group();
    for (std::int64_t start = 0; start < columns; start += group) {
        const std::int64_t width = std::min(group, columns - start);
        auto levels_of = [&](std::int64_t first, std::int64_t count) {
            return position.levels.empty() ? position.levels : position.levels.subspan(std::size_t(first), std::size_t(count));
        };
        quantizer.begin_group(BlockPosition{position.first_row, position.first_column + start, levels_of(start, width)}, block.middleCols(start, width));
        for (std::int64_t c = start; c < start + width; ++c)
            quantizer.quantize_column(BlockPosition{position.first_row, position.first_column + c, levels_of(c, 1)},
                                      std::span<const float>(block.col(c).data(), std::size_t(block.rows())),
                                      std::span<float>(reconstructed.col(c).data(), std::size_t(block.rows())));
    }
}

/// Plain quantization of a whole matrix (no feedback), in row blocks of `row_block` rows (rounded
/// up to row_group()) so that the column-major working copy and the quantizer's row-major state
/// of one block stay in cache. Returns the reconstruction, row-major.
template <class Q>
Tensor<float> quantize_plain(Q& quantizer, TensorView<const float> weights, std::span<const std::uint8_t> levels = {},
                             std::int64_t row_block = 64) {
    const std::int64_t rows = weights.rows(), cols = weights.cols(), row_group = std::max(1, int(quantizer.row_group()));
    row_block = (row_block + row_group - 1) / row_group * row_group;
    quantizer.reset(rows, cols);
    Tensor<float> result(weights.shape());
    Eigen::MatrixXf block, reconstructed;
    for (std::int64_t first = 0; first < rows; first += row_block) {
        const std::int64_t count = std::min(row_block, rows - first);
        block = weights.matrix().middleRows(first, count);
        reconstructed.resize(count, cols);
        quantizer.quantize_block(BlockPosition{first, 0, levels}, block, reconstructed);
        result.matrix().middleRows(first, count) = reconstructed;
    }
    return result;
}
}  // namespace detail

}  // namespace nwc
