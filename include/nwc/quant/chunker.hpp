// nwc::Chunker: scale normalization, fixed-size chunks and per-column importance levels
// (steps 1-3 of the NWC pipeline, docs/format/quant.md for the serialized side data).
//
// Read me first:
// - W is m x n (out x in, torch.nn.Linear layout, row-major); "column" j is input feature j.
// - Normalization only SCALES: each column (default) or row is divided by its standard deviation
//   (population std about the mean); no mean is subtracted. The scale is stored as fp16 and the
//   fp16-ROUNDED value is the one that divides, so the decoder multiplies by exactly the number the
//   encoder divided by. A scale that would round to zero in fp16 (a zero or constant column, or a
//   std below 2^-25) is replaced by 1, so a zero column stays zero; one above 65504 is clamped.
// - Row and column scales (more than one per matrix) are snapped to a quarter-octave grid and
//   stored in ~4 bits each (scale_grid.hpp says why that costs no accuracy). A single per-tensor
//   scale stays full fp16.
// - Chunks: every normalized column is cut into chunks of `chunk_size` (16) consecutive rows,
//   the tail chunk padded with 0.0f (the padding is dropped by dechunk). Chunks are laid out
//   [chunk][chunk_size], column-major over chunks: all ceil(m / d) chunks of column 0, then those of
//   column 1, ... That is exactly the memory of a column-major m x n matrix when d divides m, and
//   it lets LDLQ hand a block of columns to the neural codec as one contiguous run of chunks.
// - Importance levels come from diag(H): the top 0.1% / 1% / 10% of columns get levels 3 / 2 / 1,
//   the rest 0; "top f" means the ceil(f n) columns with the largest H_jj, ties broken by the lower
//   column index. Levels are stored 2 bits per column.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/quant/scale_grid.hpp"

namespace nwc {

/// Which axis shares one normalization scale.
enum class NormalizationAxis : std::uint8_t {
    per_column = 0,  ///< one scale per input feature (the paper's choice)
    per_row = 1,     ///< one scale per output row (the reference scripts' --row_normalize)
    per_tensor = 2,  ///< one scale for the whole matrix (uniform absolute precision: the least MSE)
};
inline constexpr std::uint8_t last_normalization_axis = std::uint8_t(NormalizationAxis::per_tensor);

/// Scales an m x n matrix normalized along `axis` needs: n, m or 1.
constexpr std::int64_t scale_count(NormalizationAxis axis, std::int64_t rows, std::int64_t cols) noexcept {
    return axis == NormalizationAxis::per_column ? cols : axis == NormalizationAxis::per_row ? rows : 1;
}
/// Which scale weight (row, col) uses.
NWC_HOST_DEVICE constexpr std::int64_t scale_index(NormalizationAxis axis, std::int64_t row, std::int64_t col) noexcept {
    return axis == NormalizationAxis::per_column ? col : axis == NormalizationAxis::per_row ? row : 0;
}
/// "per column", "per row", "per tensor".
constexpr const char* axis_name(NormalizationAxis axis) noexcept {
    return axis == NormalizationAxis::per_column ? "per column" : axis == NormalizationAxis::per_row ? "per row" : "per tensor";
}

/// Fractions of columns promoted to each importance level (nested: level 3 columns are also in the
/// top fraction of levels 2 and 1).
struct ImportanceQuantiles {
    /// top_fractions[k - 1]: fraction of columns with level >= k, for k = 1, 2, 3.
    std::array<double, 3> top_fractions{0.10, 0.01, 0.001};
};

/// Options of a Chunker.
struct ChunkerOptions {
    NormalizationAxis axis = NormalizationAxis::per_column;
    int chunk_size = 16;  ///< d, values per chunk
    ImportanceQuantiles quantiles{};
};

/// A normalized, chunked weight matrix together with what is needed to undo it.
struct ChunkedWeights {
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    NormalizationAxis axis = NormalizationAxis::per_column;
    std::vector<half> scales;   ///< one per column (per_column) or per row (per_row)
    std::vector<float> chunks;  ///< [chunk][chunk_size], column-major over chunks
};

/// Normalizes, chunks and de-chunks weight matrices; assigns importance levels from diag(H).
class Chunker {
public:
    static constexpr int max_level = 3;

    explicit Chunker(ChunkerOptions options = {}) : m_options(options) {
        require(options.chunk_size >= 1 && options.chunk_size <= 4096, errc::invalid_argument, "Chunker: chunk size ", options.chunk_size,
                " is outside [1, 4096]");
        const auto& f = options.quantiles.top_fractions;
        for (std::size_t k = 0; k < f.size(); ++k)
            require(f[k] >= 0.0 && f[k] <= 1.0, errc::invalid_argument, "Chunker: importance fraction for level ", k + 1, " is ", f[k],
                    " (must be in [0, 1])");
        require(f[0] >= f[1] && f[1] >= f[2], errc::invalid_argument, "Chunker: importance fractions must shrink with the level (got ", f[0],
                ", ", f[1], ", ", f[2], ")");
    }

    const ChunkerOptions& options() const noexcept { return m_options; }
    int chunk_size() const noexcept { return m_options.chunk_size; }
    NormalizationAxis axis() const noexcept { return m_options.axis; }
    /// ceil(rows / chunk_size): chunks that hold one column.
    std::int64_t chunks_per_column(std::int64_t rows) const noexcept { return (rows + chunk_size() - 1) / chunk_size(); }
    /// Chunks of an m x n matrix.
    std::int64_t chunk_count(std::int64_t rows, std::int64_t cols) const noexcept { return chunks_per_column(rows) * cols; }
    /// Scales an m x n matrix needs: n (per_column), m (per_row) or 1 (per_tensor).
    std::int64_t scale_count(std::int64_t rows, std::int64_t cols) const noexcept { return nwc::scale_count(axis(), rows, cols); }

    /// The fp16 scale of every column (or row, or the whole matrix): its population standard deviation, rounded to fp16
    /// (see the header comment for zero and huge values). Throws invalid_argument on a non-finite weight.
    std::vector<half> compute_scales(TensorView<const float> weights) const {
        return compute_scales_by_rows(weights.rows(), weights.cols(), weights.rows(), [&](std::int64_t, std::int64_t) { return weights; });
    }
    /// compute_scales() of an m x n matrix read `block` rows at a time: read(first, count) returns
    /// rows [first, first + count) as a view (a streamed tensor: no float32 copy of it). The same
    /// sums in the same order, so the same scales.
    template <class ReadRows>
    std::vector<half> compute_scales_by_rows(std::int64_t rows, std::int64_t cols, std::int64_t block, ReadRows&& read) const {
        const std::int64_t groups = scale_count(rows, cols), members = rows * cols / std::max<std::int64_t>(groups, 1);
        block = std::max<std::int64_t>(block, 1);
        // Two passes (mean, then squared deviations) in double: no cancellation when |mean| >> std.
        std::vector<double> mean(std::size_t(groups), 0.0), squares(std::size_t(groups), 0.0);
        for (std::int64_t first = 0; first < rows; first += block) {
            const TensorView<const float> part = read(first, std::min(block, rows - first));
            for (std::int64_t r = 0; r < part.rows(); ++r)
                for (std::int64_t c = 0; c < cols; ++c) {
                    const double value = part(r, c);
                    require(std::isfinite(value), errc::invalid_argument, "Chunker: weight (", first + r, ", ", c, ") is not finite");
                    mean[std::size_t(scale_index(axis(), first + r, c))] += value;
                }
        }
        for (double& value : mean) value /= double(std::max<std::int64_t>(members, 1));
        for (std::int64_t first = 0; first < rows; first += block) {
            const TensorView<const float> part = read(first, std::min(block, rows - first));
            for (std::int64_t r = 0; r < part.rows(); ++r)
                for (std::int64_t c = 0; c < cols; ++c) {
                    const std::size_t group = std::size_t(scale_index(axis(), first + r, c));
                    const double deviation = double(part(r, c)) - mean[group];
                    squares[group] += deviation * deviation;
                }
        }
        std::vector<half> scales(static_cast<std::size_t>(groups));
        for (std::size_t g = 0; g < scales.size(); ++g)
            scales[g] = scale_from_std(std::sqrt(squares[g] / double(std::max<std::int64_t>(members, 1))));
        snap_scales(scales);
        return scales;
    }

    /// normalized = weights / scale (the fp16 scale of the value's column or row).
    void normalize(TensorView<const float> weights, std::span<const half> scales, TensorView<float> normalized) const {
        apply_scales(weights, scales, normalized, /*divide=*/true);
    }
    /// weights = normalized * scale: the exact inverse the decoder computes.
    void denormalize(TensorView<const float> normalized, std::span<const half> scales, TensorView<float> weights) const {
        apply_scales(normalized, scales, weights, /*divide=*/false);
    }

    /// Cuts a (normalized) m x n matrix into chunks, layout [chunk][d], column-major over chunks.
    std::vector<float> chunk(TensorView<const float> matrix) const {
        const std::int64_t rows = matrix.rows(), cols = matrix.cols(), per_column = chunks_per_column(rows);
        const std::int64_t d = chunk_size();
        std::vector<float> chunks(std::size_t(per_column * cols * d), 0.0f);  // 0.0f is the tail padding
        for (std::int64_t c = 0; c < cols; ++c)
            for (std::int64_t r = 0; r < rows; ++r) chunks[std::size_t(c * per_column * d + r)] = matrix(r, c);
        return chunks;
    }
    /// Reassembles the m x n matrix (`matrix` gives the shape); the tail padding is dropped.
    void dechunk(std::span<const float> chunks, TensorView<float> matrix) const {
        const std::int64_t rows = matrix.rows(), cols = matrix.cols(), per_column = chunks_per_column(rows);
        require(std::int64_t(chunks.size()) == per_column * cols * chunk_size(), errc::invalid_argument, "Chunker::dechunk: ", chunks.size(),
                " values for a ", rows, " x ", cols, " matrix in chunks of ", chunk_size(), " (expected ", per_column * cols * chunk_size(), ")");
        for (std::int64_t c = 0; c < cols; ++c)
            for (std::int64_t r = 0; r < rows; ++r) matrix(r, c) = chunks[std::size_t(c * per_column * chunk_size() + r)];
    }

    /// compute_scales + normalize + chunk.
    ChunkedWeights split(TensorView<const float> weights) const {
        ChunkedWeights result{weights.rows(), weights.cols(), axis(), compute_scales(weights), {}};
        Tensor<float> normalized(weights.shape());
        normalize(weights, result.scales, normalized.view());
        result.chunks = chunk(normalized.view());
        return result;
    }
    /// dechunk + denormalize: the decoder's side of split().
    Tensor<float> merge(const ChunkedWeights& chunked) const {
        require(chunked.axis == axis(), errc::invalid_argument, "Chunker::merge: chunked weights use the other normalization axis");
        Tensor<float> normalized(Shape{chunked.rows, chunked.cols});
        dechunk(chunked.chunks, normalized.view());
        Tensor<float> weights(normalized.shape());
        denormalize(normalized.view(), chunked.scales, weights.view());
        return weights;
    }

    /// Importance level (0..3) of every column from the Hessian diagonal H_jj (see header comment).
    /// Throws invalid_argument on a non-finite H_jj.
    std::vector<std::uint8_t> importance_levels(std::span<const float> hessian_diagonal) const { return levels_from(hessian_diagonal); }
    std::vector<std::uint8_t> importance_levels(std::span<const double> hessian_diagonal) const { return levels_from(hessian_diagonal); }

    /// ceil(fraction * n), robust to the representation error of fractions such as 0.001.
    static std::size_t top_count(double fraction, std::size_t n) noexcept {
        const double exact = fraction * double(n);
        return std::min(n, std::size_t(std::max(0.0, std::ceil(exact - 1e-9 * std::max(1.0, exact)))));
    }

private:
    template <std::floating_point T>
    std::vector<std::uint8_t> levels_from(std::span<const T> hessian_diagonal) const {
        const std::size_t n = hessian_diagonal.size();
        for (std::size_t j = 0; j < n; ++j)
            require(std::isfinite(hessian_diagonal[j]), errc::invalid_argument, "Chunker::importance_levels: H[", j, ", ", j, "] is not finite");
        std::vector<std::uint32_t> order(n);
        std::iota(order.begin(), order.end(), 0u);
        // stable_sort keeps ascending indices among equal values: the deterministic tie-break.
        std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return hessian_diagonal[a] > hessian_diagonal[b]; });
        std::vector<std::uint8_t> levels(n, 0);
        for (int level = 1; level <= max_level; ++level) {
            const std::size_t count = top_count(m_options.quantiles.top_fractions[std::size_t(level - 1)], n);
            for (std::size_t rank = 0; rank < count; ++rank) levels[order[rank]] = std::uint8_t(level);
        }
        return levels;
    }

    static half scale_from_std(double standard_deviation) {
        half scale = to_half(float(standard_deviation));
        if ((scale.bits & half_magnitude_mask) == 0) return to_half(1.0f);  // zero, constant or tiny column
        if (!is_finite(scale)) scale.bits = half_max_finite_bits;            // beyond fp16: the largest finite half
        return scale;
    }

    void apply_scales(TensorView<const float> input, std::span<const half> scales, TensorView<float> output, bool divide) const {
        const std::int64_t rows = input.rows(), cols = input.cols();
        NWC_ASSERT(output.rows() == rows && output.cols() == cols);
        require(std::int64_t(scales.size()) == scale_count(rows, cols), errc::invalid_argument, "Chunker: ", scales.size(), " scales for a ", rows,
                " x ", cols, " matrix normalized ", axis_name(axis()));
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) {
                const float scale = to_float(scales[std::size_t(scale_index(axis(), r, c))]);
                output(r, c) = divide ? input(r, c) / scale : input(r, c) * scale;
            }
    }

    ChunkerOptions m_options;
};

/// Bits of one packed importance level (0..Chunker::max_level), and levels per byte.
inline constexpr int level_bits = 2;
inline constexpr std::size_t levels_per_byte = 8 / level_bits;
static_assert(Chunker::max_level < (1 << level_bits));

/// Bytes of `count` packed levels.
constexpr std::size_t packed_level_bytes(std::size_t count) noexcept { return (count + levels_per_byte - 1) / levels_per_byte; }

/// Packs levels (0..3) four to a byte: column j in byte j / 4, bits 2 (j % 4) .. 2 (j % 4) + 1.
inline std::vector<std::uint8_t> pack_levels(std::span<const std::uint8_t> levels) {
    std::vector<std::uint8_t> packed(packed_level_bytes(levels.size()), 0);
    for (std::size_t j = 0; j < levels.size(); ++j) {
        NWC_ASSERT(levels[j] <= Chunker::max_level);
        packed[j / levels_per_byte] = std::uint8_t(packed[j / levels_per_byte] | (levels[j] << (level_bits * (j % levels_per_byte))));
    }
    return packed;
}

/// Unpacks `count` levels; throws errc::corrupt if the unused bits of the last byte are not zero
/// and errc::truncated if `packed` is not exactly ceil(count / 4) bytes.
inline std::vector<std::uint8_t> unpack_levels(std::span<const std::uint8_t> packed, std::size_t count) {
    require(packed.size() == packed_level_bytes(count), errc::truncated, "importance levels: ", packed.size(), " bytes for ", count,
            " levels (expected ", packed_level_bytes(count), ")");
    constexpr unsigned level_mask = (1u << level_bits) - 1;
    std::vector<std::uint8_t> levels(count);
    for (std::size_t j = 0; j < count; ++j) levels[j] = std::uint8_t((packed[j / levels_per_byte] >> (level_bits * (j % levels_per_byte))) & level_mask);
    if (count % levels_per_byte != 0)
        require((packed.back() >> (level_bits * (count % levels_per_byte))) == 0, errc::corrupt, "importance levels: padding bits of the last byte are not zero (byte ",
                packed.size() - 1, " is ", int(packed.back()), ")");
    return levels;
}

/// Writes levels: ceil(count / 4) packed bytes (the count follows from the shape).
inline void write_levels(ByteWriter& writer, std::span<const std::uint8_t> levels) { writer.put_bytes(pack_levels(levels)); }

/// Reads `count` levels written by write_levels.
inline std::vector<std::uint8_t> read_levels(ByteReader& reader, std::size_t count) {
    const std::size_t bytes_at = reader.offset();
    try {
        return unpack_levels(reader.get_bytes(packed_level_bytes(count)), count);
    } catch (const error& failure) {
        fail(failure.id(), reader.context(), " at offset ", bytes_at, ": ", failure.message());
    }
}

}  // namespace nwc
