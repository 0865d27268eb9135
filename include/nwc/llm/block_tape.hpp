// One Llama transformer block recorded on the autograd tape, for inter-layer fine-tuning.
//
// Read me first:
// - The arithmetic is LlamaModel::forward_block's (llama_model.hpp), op for op in float: RMSNorm
//   with eps inside the square root, llama2.c RoPE on the pairs (2i, 2i+1) of every head,
//   grouped-query attention (query head h reads key/value head h / (n_heads / n_kv_heads)),
//   scores scaled by 1/sqrt(head_size) AFTER the product, causal softmax, SwiGLU
//   w2(silu(w1 x) * w3 x), two residual additions. The results agree to float rounding (~1e-6).
// - Only the seven linear weights can be trained; the two norm scales are constants.
// - A forward may start at a later BlockStage: when every weight before a stage is frozen, the
//   values entering that stage are the same in every epoch, so the fine-tuner computes them once
//   (stage_values) and records only the rest. After q/k/v/o are coded, only the FFN is recorded.
#pragma once

#include <array>
#include <cmath>
#include <string_view>
#include <vector>

#include "nwc/autograd/autograd.hpp"
#include "nwc/llm/llama_model.hpp"

namespace nwc::llm {

/// The seven linear layers of a block, in the order the sequential compressor codes them.
enum class BlockLinear : int { query = 0, key, value, output, gate, up, down };
inline constexpr int block_linear_count = 7;
inline constexpr std::array<BlockLinear, 7> block_linears{BlockLinear::query, BlockLinear::key, BlockLinear::value, BlockLinear::output,
                                                          BlockLinear::gate,  BlockLinear::up,  BlockLinear::down};

/// The Hugging Face name of a block linear after "model.layers.N.".
inline std::string_view block_linear_suffix(BlockLinear linear) noexcept {
    constexpr std::array<std::string_view, 7> suffixes{"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                                       "self_attn.o_proj.weight", "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                                       "mlp.down_proj.weight"};
    return suffixes[std::size_t(linear)];
}

/// The weight of a block linear inside LlamaLayerWeights.
inline Tensor<float>& block_linear_weight(LlamaLayerWeights& weights, BlockLinear linear) noexcept {
    constexpr std::array<Tensor<float> LlamaLayerWeights::*, 7> members{&LlamaLayerWeights::wq, &LlamaLayerWeights::wk, &LlamaLayerWeights::wv,
                                                                        &LlamaLayerWeights::wo, &LlamaLayerWeights::w1, &LlamaLayerWeights::w3,
                                                                        &LlamaLayerWeights::w2};
    return weights.*members[std::size_t(linear)];
}
inline const Tensor<float>& block_linear_weight(const LlamaLayerWeights& weights, BlockLinear linear) noexcept {
    return block_linear_weight(const_cast<LlamaLayerWeights&>(weights), linear);
}

/// Where a recorded forward starts. Each stage needs the values listed (BlockStageValues).
enum class BlockStage : int {
    input = 0,               ///< residual = block input x
    attention_output = 1,    ///< residual = x, activation = attention heads (input of o_proj)
    attention_residual = 2,  ///< residual = h = x + o_proj(attention)
    ffn_hidden = 3,          ///< residual = h, activation = silu(w1 n) * w3 n (input of down_proj)
};

/// The values a forward starting at a stage reads ([T, dim], activation [T, dim | hidden]).
struct BlockStageValues {
    RowMajorMatrix<float> residual;
    RowMajorMatrix<float> activation;
};

/// A block's weights as tape parameters plus the forward that uses them. Use TapeBlock
/// (= BasicTapeBlock<>): a class template only so that a translation unit that includes this header
/// and never records a block instantiates none of the autograd ops (docs/bench/headers.md).
template <class = void>
class BasicTapeBlock {
public:
    using Matrix = RowMajorMatrix<float>;
    using Tape = autograd::Tape<float>;
    using Parameter = autograd::Parameter<float>;
    using Parameters = std::array<Parameter, 7>;  ///< indexed by BlockLinear

    /// Copies the block's weights (shapes must agree with `config`: LlamaModel validated them).
    BasicTapeBlock(const LlamaConfig& config, const LlamaLayerWeights& weights) : m_config(config) {
        for (BlockLinear linear : block_linears) {
            const Tensor<float>& weight = block_linear_weight(weights, linear);
            m_weights[std::size_t(linear)] = Parameter(Matrix(weight.matrix()), std::string(block_linear_suffix(linear)));
        }
        m_attention_norm = Eigen::Map<const Matrix>(weights.attention_norm.data(), 1, m_config.dim);
        m_ffn_norm = Eigen::Map<const Matrix>(weights.ffn_norm.data(), 1, m_config.dim);
    }

    const LlamaConfig& config() const noexcept { return m_config; }
    Parameters& parameters() noexcept { return m_weights; }
    const Parameters& parameters() const noexcept { return m_weights; }
    Parameter& parameter(BlockLinear linear) noexcept { return m_weights[std::size_t(linear)]; }
    const Parameter& parameter(BlockLinear linear) const noexcept { return m_weights[std::size_t(linear)]; }

    bool trainable(BlockLinear linear) const noexcept { return m_trainable[std::size_t(linear)]; }
    void set_trainable(BlockLinear linear, bool trainable) noexcept { m_trainable[std::size_t(linear)] = trainable; }

    bool any_trainable() const noexcept {
        for (bool flag : m_trainable)
            if (flag) return true;
        return false;
    }

    /// The latest stage whose values depend on frozen weights only.
    BlockStage frozen_prefix() const noexcept {
        auto frozen = [&](std::initializer_list<BlockLinear> list) {
            for (BlockLinear linear : list)
                if (trainable(linear)) return false;
            return true;
        };
        if (!frozen({BlockLinear::query, BlockLinear::key, BlockLinear::value})) return BlockStage::input;
        if (trainable(BlockLinear::output)) return BlockStage::attention_output;
        if (!frozen({BlockLinear::gate, BlockLinear::up})) return BlockStage::attention_residual;
        return BlockStage::ffn_hidden;
    }

    /// Records the block from `stage` on `tape`; returns the block output [T, dim]. Trainable
    /// linears read `replicas` (the fine-tuner's per-window copies) as parameters, so gradients
    /// land in the replicas; frozen ones, and all of them when `replicas` is null, are constants
    /// reading this block's weights.
    autograd::Var record(Tape& tape, BlockStage stage, const BlockStageValues& values, Parameters* replicas = nullptr) const {
        std::array<autograd::Var, 7> vars = constant_vars(tape);
        if (replicas != nullptr)
            for (BlockLinear linear : block_linears)
                if (trainable(linear)) vars[std::size_t(linear)] = tape.parameter((*replicas)[std::size_t(linear)]);
        return record_vars(tape, stage, values.residual, values.activation, vars).output;
    }

    /// The values entering `stage` for a block input [T, dim] (all weights read as constants).
    BlockStageValues stage_values(const Matrix& input, BlockStage stage) const {
        Tape tape;
        const Pieces pieces = record_vars(tape, BlockStage::input, input, input, constant_vars(tape));
        switch (stage) {
            case BlockStage::input: return {input, {}};
            case BlockStage::attention_output: return {input, tape.value(pieces.attention_output)};
            case BlockStage::attention_residual: return {tape.value(pieces.attention_residual), {}};
            case BlockStage::ffn_hidden: return {tape.value(pieces.attention_residual), tape.value(pieces.ffn_hidden)};
        }
        return {};
    }

    /// The block output [T, dim] for an input [T, dim] (no gradients).
    Matrix forward(const Matrix& input) const {
        Tape tape;
        return tape.value(record_vars(tape, BlockStage::input, input, input, constant_vars(tape)).output);
    }

private:
    struct Pieces {
        autograd::Var attention_output, attention_residual, ffn_hidden, output;
    };

    std::array<autograd::Var, 7> constant_vars(Tape& tape) const {
        std::array<autograd::Var, 7> vars;
        for (BlockLinear linear : block_linears) vars[std::size_t(linear)] = tape.constant_ref(m_weights[std::size_t(linear)].value);
        return vars;
    }

    autograd::Var attention(Tape& tape, autograd::Var x, const std::array<autograd::Var, 7>& w) const {
        using namespace autograd;
        const int head_size = m_config.head_size(), group = m_config.n_heads / m_config.n_kv_heads;
        const Var normed = rms_norm(tape, x, tape.constant_ref(m_attention_norm), m_config.norm_eps);
        const Var query = rope(tape, linear(tape, normed, w[0]), head_size, 0, m_config.rope_theta);
        const Var key = rope(tape, linear(tape, normed, w[1]), head_size, 0, m_config.rope_theta);
        const Var value = linear(tape, normed, w[2]);
        const float scale_factor = 1.0f / std::sqrt(float(head_size));
        std::vector<Var> keys(std::size_t(m_config.n_kv_heads)), values(keys.size()), heads(std::size_t(m_config.n_heads));
        for (int kv = 0; kv < m_config.n_kv_heads; ++kv) {
            keys[std::size_t(kv)] = slice_cols(tape, key, Index(kv) * head_size, head_size);
            values[std::size_t(kv)] = slice_cols(tape, value, Index(kv) * head_size, head_size);
        }
        for (int head = 0; head < m_config.n_heads; ++head) {
            const std::size_t kv = std::size_t(head / group);
            const Var scores = scale(tape, matmul_nt(tape, slice_cols(tape, query, Index(head) * head_size, head_size), keys[kv]), scale_factor);
            heads[std::size_t(head)] = matmul(tape, softmax_rows(tape, scores, /*causal=*/true), values[kv]);
        }
        return concat_cols(tape, std::span<const Var>(heads));
    }

    // `activation` is read only when the stage needs one (attention_output, ffn_hidden).
    Pieces record_vars(Tape& tape, BlockStage stage, const Matrix& residual_input, const Matrix& activation, const std::array<autograd::Var, 7>& w) const {
        using namespace autograd;
        Pieces pieces;
        Var residual = tape.constant_ref(residual_input);
        if (stage <= BlockStage::attention_output) {
            pieces.attention_output = stage == BlockStage::input ? attention(tape, residual, w) : tape.constant_ref(activation);
            residual = add(tape, residual, linear(tape, pieces.attention_output, w[3]));
        }
        pieces.attention_residual = residual;
        if (stage <= BlockStage::attention_residual) {
            const Var normed = rms_norm(tape, residual, tape.constant_ref(m_ffn_norm), m_config.norm_eps);
            pieces.ffn_hidden = mul(tape, silu(tape, linear(tape, normed, w[4])), linear(tape, normed, w[5]));
        } else {
            pieces.ffn_hidden = tape.constant_ref(activation);
        }
        pieces.output = add(tape, residual, linear(tape, pieces.ffn_hidden, w[6]));
        return pieces;
    }

    LlamaConfig m_config;
    Parameters m_weights;
    std::array<bool, 7> m_trainable{true, true, true, true, true, true, true};
    Matrix m_attention_norm, m_ffn_norm;  // 1 x dim
};

using TapeBlock = BasicTapeBlock<>;

}  // namespace nwc::llm
