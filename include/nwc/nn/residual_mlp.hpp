// ResidualMLP: the encoder g_a and the decoder g_s of the learned weight codec.
//
// Read me first:
// - Architecture (NWC-NOTES "Encode"): Linear(in -> W), then B blocks
//   `x = x + ReLU(LayerNorm(Linear(x)))`, each followed by `x = x * E[level]` (E: levels x W,
//   learned, initialized to ones, one table shared by all blocks), then Linear(W -> out).
//   Weights use torch's layout [out, in], so a layer is y = x W^T + b.
// - Two paths over the same Parameters:
//   * nn::forward(tape, network, ...) (nn/residual_mlp_tape.hpp) records the graph on an autograd
//     tape for training; this header includes no tape, so decoding compiles without autograd;
//   * infer(...) needs no tape: it cuts the rows (chunks) into tiles of `tile_rows`, runs one GEMM
//     per layer per tile (Eigen, noalias, the weight read transposed in place) and one fused pass
//     per block for bias + LayerNorm + ReLU + residual + level modulation (nn/residual_block.hpp).
//     Each row carries its own level, gathered per row, so a batch needs no grouping by level.
// - Cost per chunk (row), in FLOPs (a multiply-add counts 2):
//     GEMMs     2 (in W + B W^2 + W out)
//     epilogue  about 10 B W (bias, mean, variance, normalize, affine, ReLU, add, scale)
//   For the paper's size (16, 512, 4, 16) that is 2,129,920 + 20,480 = 2.15 MFLOP per chunk of 16
//   weights, i.e. about 134 kFLOP per decoded weight. flops_per_row() returns the sum.
// - Tiles are independent and each row's result depends only on its own inputs, so any thread
//   count gives the same output for the same tile size.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "nwc/autograd/parameter.hpp"
#include "nwc/core/backend.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/random.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/nn/mlp_kernels_simd.hpp"
#include "nwc/nn/residual_block.hpp"

namespace nwc {

namespace nn {
template <class Scalar>
struct ResidualMLPTape;
}

/// Sizes of a ResidualMLP, chosen at run time.
struct ResidualMLPShape {
    int input = 16;   ///< features in (chunk size for g_a, latents for g_s)
    int width = 512;  ///< hidden width W
    int blocks = 4;   ///< residual blocks B
    int output = 16;  ///< features out
    int levels = 4;   ///< rows of the level embedding

    /// Throws errc::invalid_argument unless every size is in a sane range.
    void validate() const {
        require(input >= 1 && input <= 4096 && output >= 1 && output <= 4096, errc::invalid_argument,
                "ResidualMLP: input ", input, " / output ", output, " outside 1..4096");
        require(width >= 1 && width <= 8192, errc::invalid_argument, "ResidualMLP: width ", width, " outside 1..8192");
        require(blocks >= 0 && blocks <= 64, errc::invalid_argument, "ResidualMLP: blocks ", blocks, " outside 0..64");
        require(levels >= 1 && levels <= 256, errc::invalid_argument, "ResidualMLP: levels ", levels, " outside 1..256");
    }
    /// Number of scalar parameters.
    std::int64_t parameter_count() const {
        const std::int64_t w = width;
        return w * input + w + blocks * (w * w + 3 * w) + levels * w + output * w + output;
    }
    /// FLOPs of the GEMMs per row (a multiply-add counts 2).
    double gemm_flops_per_row() const {
        const double w = width;
        return 2.0 * (input * w + blocks * w * w + w * output);
    }
    /// Total FLOPs per row of inference: GEMMs, biases and the block epilogues.
    double flops_per_row() const { return gemm_flops_per_row() + 10.0 * blocks * width + width + output; }

    friend bool operator==(const ResidualMLPShape&, const ResidualMLPShape&) = default;
};

/// The residual MLP with level modulation; Scalar is float for training and inference, double for
/// gradient checks.
template <class Scalar = float>
class ResidualMLP {
public:
    using Parameter = autograd::Parameter<Scalar>;
    using Matrix = RowMajorMatrix<Scalar>;
    /// Rows per inference tile: about 64K hidden values, so H and T (2 x 256 KiB) stay in L2 while
    /// narrow networks still get GEMMs tall enough to amortize Eigen's packing.
    static std::int64_t tile_rows_for(int width) noexcept { return std::clamp<std::int64_t>(65536 / std::max(width, 1), 64, 1024); }

    ResidualMLP() = default;
    /// All parameters zero; call initialize() or load values.
    explicit ResidualMLP(ResidualMLPShape shape) : m_shape(shape) {
        shape.validate();
        const Eigen::Index w = shape.width;
        m_input_weight = Parameter(w, shape.input, "input.weight");
        m_input_bias = Parameter(1, w, "input.bias");
        m_blocks.resize(std::size_t(shape.blocks));
        for (int k = 0; k < shape.blocks; ++k) {
            const std::string prefix = "block" + std::to_string(k) + ".";
            m_blocks[std::size_t(k)] = {Parameter(w, w, prefix + "weight"), Parameter(1, w, prefix + "bias"),
                                        Parameter(1, w, prefix + "norm.weight"), Parameter(1, w, prefix + "norm.bias")};
        }
        m_embedding = Parameter(shape.levels, w, "level_embedding");
        m_output_weight = Parameter(shape.output, w, "output.weight");
        m_output_bias = Parameter(1, shape.output, "output.bias");
    }

    /// torch defaults: Linear ~ U(+-1/sqrt(in)); LayerNorm gamma 1, beta 0; embedding 1.
    void initialize(Random& random) {
        autograd::init_linear(m_input_weight, &m_input_bias, random);
        for (Block& block : m_blocks) {
            autograd::init_linear(block.weight, &block.bias, random);
            block.gamma.value.setOnes();
            block.beta.value.setZero();
        }
        m_embedding.value.setOnes();
        autograd::init_linear(m_output_weight, &m_output_bias, random);
        for (Parameter* parameter : parameters()) parameter->zero_grad();
    }

    const ResidualMLPShape& shape() const noexcept { return m_shape; }

    /// Every parameter in the fixed order used by optimizers and codec files: input weight, input
    /// bias, per block (weight, bias, norm weight, norm bias), level embedding, output weight, bias.
    std::vector<Parameter*> parameters() {
        std::vector<Parameter*> all{&m_input_weight, &m_input_bias};
        for (Block& block : m_blocks) all.insert(all.end(), {&block.weight, &block.bias, &block.gamma, &block.beta});
        all.insert(all.end(), {&m_embedding, &m_output_weight, &m_output_bias});
        return all;
    }
    std::vector<const Parameter*> parameters() const {
        auto all = const_cast<ResidualMLP*>(this)->parameters();
        return {all.begin(), all.end()};
    }

    /// Inference path without a tape: output (n x out) = network(input (n x in), levels (n)).
    /// Levels must be < shape().levels (checked: they may come from a file).
    template <class Backend = backend::default_backend>
    void infer(TensorView<const Scalar> input, std::span<const std::uint8_t> levels, TensorView<Scalar> output,
               int threads = 1, Backend backend_tag = {}) const {
        const std::int64_t rows = input.rows();
        NWC_ASSERT(input.cols() == m_shape.input && output.cols() == m_shape.output && output.rows() == rows);
        NWC_ASSERT(std::int64_t(levels.size()) == rows);
        for (std::uint8_t level : levels)
            require(level < m_shape.levels, errc::corrupt, "ResidualMLP: level ", int(level), " but the codec has ",
                    m_shape.levels, " levels");
        const std::int64_t tile_rows = tile_rows_for(m_shape.width);
        const std::int64_t tiles = (rows + tile_rows - 1) / tile_rows;
        const int workers = int(std::min<std::int64_t>(resolve_thread_count(threads), std::max<std::int64_t>(tiles, 1)));
        parallel_for(workers, workers, [&](std::int64_t worker) {
            Matrix hidden, product;
            for (std::int64_t tile = worker; tile < tiles; tile += workers) {
                const std::int64_t begin = tile * tile_rows, count = std::min(tile_rows, rows - begin);
                infer_tile(input.data() + begin * m_shape.input, levels.data() + begin, count,
                           output.data() + begin * m_shape.output, hidden, product, backend_tag);
            }
        });
    }

private:
    template <class>
    friend struct nn::ResidualMLPTape;  // the training path reads the layers

    struct Block {
        Parameter weight, bias, gamma, beta;
    };

    template <class Backend>
    void infer_tile(const Scalar* input, const std::uint8_t* levels, std::int64_t count, Scalar* output, Matrix& hidden,
                    Matrix& product, Backend backend_tag) const {
        using ConstMap = Eigen::Map<const Matrix>;
        const int width = m_shape.width;
        ConstMap x(input, count, m_shape.input);
        hidden.resize(count, width);
        hidden.rowwise() = m_input_bias.value.row(0);
        hidden.noalias() += x * m_input_weight.value.transpose();
        product.resize(count, width);
        // The using-declaration keeps argument-dependent lookup on: a user's backend tag may overload it.
        using detail::block_epilogue_row;
        for (const Block& block : m_blocks) {
            product.noalias() = hidden * block.weight.value.transpose();
            for (std::int64_t row = 0; row < count; ++row)
                block_epilogue_row<Scalar>(product.row(row).data(), block.bias.value.data(),
                                                   block.gamma.value.data(), block.beta.value.data(),
                                                   m_embedding.value.row(levels[row]).data(), hidden.row(row).data(),
                                                   width, backend_tag);
        }
        Eigen::Map<Matrix> y(output, count, m_shape.output);
        y.rowwise() = m_output_bias.value.row(0);
        y.noalias() += hidden * m_output_weight.value.transpose();
    }

    ResidualMLPShape m_shape{};
    Parameter m_input_weight, m_input_bias;
    std::vector<Block> m_blocks;
    Parameter m_embedding;
    Parameter m_output_weight, m_output_bias;
};

}  // namespace nwc
