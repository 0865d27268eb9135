// A CPU float32 forward pass of a Llama model over a whole window at once.
//
// Every linear layer runs as one GEMM over the window (X [T, in] times W^T), not token by token,
// so Eigen's blocked kernels do the work. The arithmetic follows llama2.c's run.c: RMSNorm with
// eps inside the square root, RoPE on the pairs (2i, 2i+1) of every head with frequency
// theta^(-2i/head_size) (computed in float as run.c does), grouped-query attention where query head
// h reads key/value head h / (n_heads / n_kv_heads), a causal softmax, SwiGLU
// w2(silu(w1 x) * w3 x), and the classifier (tied or separate) after a final RMSNorm.
//
// Blocks are exposed one at a time (`forward_block`) with an observer that sees the input of every
// linear layer: calibration (Hessians) and inter-layer fine-tuning are built on that hook.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include <Eigen/Core>

#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/llm/llama_weights.hpp"

namespace nwc::llm {

/// Activations of a window: one row per position, row-major.
using Activations = RowMajorMatrix<float>;

/// The inputs of the linear layers of one block, as the observer of forward_block sees them.
/// q/k/v share `attention_input`, gate/up (w1/w3) share `ffn_input`.
struct BlockLinearInputs {
    int layer;
    const Activations& attention_input;   ///< [T, dim]: input of q_proj, k_proj, v_proj
    const Activations& attention_output;  ///< [T, dim]: input of o_proj
    const Activations& ffn_input;         ///< [T, dim]: input of gate_proj (w1) and up_proj (w3)
    const Activations& ffn_hidden;        ///< [T, hidden]: input of down_proj (w2)
};

/// Called once per block with the inputs of its linear layers.
using BlockObserver = std::function<void(const BlockLinearInputs&)>;

namespace detail {

// These two and the model are templates only so that including the header instantiates none of
// their Eigen products until a program runs a model (docs/bench/headers.md).

/// Y = X W^T for a [out, in] weight.
template <class Matrix>
void linear(const Matrix& input, const Tensor<float>& weight, Matrix& output) {
    output.resize(input.rows(), weight.rows());
    output.noalias() = input * weight.matrix().transpose();
}

/// Row-wise RMSNorm: y = w * x / sqrt(mean(x^2) + eps).
template <class Matrix>
void rms_norm(const Matrix& input, const Tensor<float>& weight, float eps, Matrix& output) {
    output.resize(input.rows(), input.cols());
    const auto scale = Eigen::Map<const Eigen::RowVectorXf>(weight.data(), weight.numel());
    for (Eigen::Index row = 0; row < input.rows(); ++row) {
        const float mean_square = input.row(row).squaredNorm() / float(input.cols());
        const float inverse = 1.0f / std::sqrt(mean_square + eps);
        output.row(row) = (input.row(row) * inverse).cwiseProduct(scale);
    }
}

}  // namespace detail

/// A Llama model ready to run: owns its weights and its RoPE table. Use LlamaModel
/// (= BasicLlamaModel<>; a template for the reason above).
template <class = void>
class BasicLlamaModel {
public:
    /// Takes the weights (validated: errc::corrupt for shapes that disagree with the config).
    explicit BasicLlamaModel(LlamaWeights weights) : m_weights(std::move(weights)) {
        m_weights.validate_shapes("llama model");
        build_rope_table();
    }

    const LlamaConfig& config() const noexcept { return m_weights.config; }
    const LlamaWeights& weights() const noexcept { return m_weights; }

    /// Replaces one tensor by another of the same shape (errc::invalid_argument otherwise), e.g. a
    /// quantized or decompressed version of it.
    void replace_weight(std::string_view name, Tensor<float> value) {
        Tensor<float>& target = m_weights.tensor(name);
        require(value.shape() == target.shape(), errc::invalid_argument, "replace_weight '", name, "': ", LlamaWeights::describe(value.shape()),
                " instead of ", LlamaWeights::describe(target.shape()));
        target = std::move(value);
    }

    /// Hidden states [T, dim] of the tokens: rows of the embedding (errc::invalid_argument for an
    /// id outside the vocabulary or a window longer than seq_len).
    Activations embed(std::span<const int> tokens) const {
        const LlamaConfig& c = config();
        require(std::int64_t(tokens.size()) <= c.seq_len, errc::invalid_argument, "llama model: window of ", tokens.size(),
                " tokens exceeds seq_len ", c.seq_len);
        Activations hidden(Eigen::Index(tokens.size()), c.dim);
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            require(tokens[t] >= 0 && tokens[t] < c.vocab_size, errc::invalid_argument, "llama model: token id ", tokens[t], " at position ", t,
                    " outside [0, ", c.vocab_size, ")");
            hidden.row(Eigen::Index(t)) = m_weights.token_embedding.matrix().row(tokens[t]);
        }
        return hidden;
    }

    /// Runs block `layer` on the hidden states [T, dim] in place (position t is row t, starting at
    /// position 0), reporting the inputs of its linear layers to `observer` if given.
    void forward_block(int layer, Activations& hidden, const BlockObserver& observer = {}) const {
        NWC_ASSERT(layer >= 0 && layer < config().n_layers);
        NWC_ASSERT(hidden.cols() == config().dim && hidden.rows() <= config().seq_len);
        const LlamaConfig& c = config();
        const LlamaLayerWeights& w = m_weights.layers[std::size_t(layer)];
        Activations attention_input, query, key, value, attention_output(hidden.rows(), c.dim), projected;
        detail::rms_norm(hidden, w.attention_norm, c.norm_eps, attention_input);
        detail::linear(attention_input, w.wq, query);
        detail::linear(attention_input, w.wk, key);
        detail::linear(attention_input, w.wv, value);
        apply_rope(query, c.n_heads);
        apply_rope(key, c.n_kv_heads);
        attend(query, key, value, attention_output);
        detail::linear(attention_output, w.wo, projected);
        hidden += projected;

        Activations ffn_input, gate, up;
        detail::rms_norm(hidden, w.ffn_norm, c.norm_eps, ffn_input);
        detail::linear(ffn_input, w.w1, gate);
        detail::linear(ffn_input, w.w3, up);
        // silu(g) * u with silu(g) = g / (1 + exp(-g)), vectorized by Eigen.
        gate.array() = gate.array() / (1.0f + (-gate.array()).exp()) * up.array();
        if (observer) observer(BlockLinearInputs{layer, attention_input, attention_output, ffn_input, gate});
        detail::linear(gate, w.w2, projected);
        hidden += projected;
    }

    /// The input of the classifier: final RMSNorm of the hidden states.
    Activations final_norm(const Activations& hidden) const {
        Activations normed;
        detail::rms_norm(hidden, m_weights.final_norm, config().norm_eps, normed);
        return normed;
    }

    /// Logits [T, vocab] from final-normed hidden states.
    Activations classify(const Activations& normed) const {
        Activations logits;
        detail::linear(normed, m_weights.output_weight(), logits);
        return logits;
    }

    /// Logits [T, vocab] of a window of tokens (position 0 is the first token).
    Activations forward(std::span<const int> tokens, const BlockObserver& observer = {}) const {
        Activations hidden = embed(tokens);
        for (int layer = 0; layer < config().n_layers; ++layer) forward_block(layer, hidden, observer);
        return classify(final_norm(hidden));
    }

    /// Multiply-adds x2 of one forward pass over `length` tokens (GEMMs plus the causal attention
    /// as computed: the full T x T score and value products of every head).
    double forward_flops(std::int64_t length) const {
        const LlamaConfig& c = config();
        const double linear = double(c.dim) * (2.0 * c.dim + 2.0 * c.kv_dim() + 3.0 * c.hidden_dim);
        const double attention = 2.0 * double(length) * c.dim;  // QK^T and PV per token
        return 2.0 * double(length) * (c.n_layers * (linear + attention) + double(c.vocab_size) * c.dim);
    }

private:
    // llama2.c computes the angle in float: freq = 1 / powf(theta, head_dim / (float)head_size).
    void build_rope_table() {
        const LlamaConfig& c = config();
        const int half_head = c.head_size() / 2;
        m_rope_cos.resize(c.seq_len, half_head);
        m_rope_sin.resize(c.seq_len, half_head);
        for (int pair = 0; pair < half_head; ++pair) {
            const float frequency = 1.0f / std::pow(c.rope_theta, float(2 * pair) / float(c.head_size()));
            for (int position = 0; position < c.seq_len; ++position) {
                const float angle = float(position) * frequency;
                m_rope_cos(position, pair) = std::cos(angle);
                m_rope_sin(position, pair) = std::sin(angle);
            }
        }
    }

    void apply_rope(Activations& vectors, int heads) const {
        const int head_size = config().head_size(), half_head = head_size / 2;
        for (Eigen::Index position = 0; position < vectors.rows(); ++position) {
            float* row = vectors.row(position).data();
            const float* cos = &m_rope_cos(position, 0);
            const float* sin = &m_rope_sin(position, 0);
            for (int head = 0; head < heads; ++head) {
                float* pairs = row + head * head_size;
                for (int pair = 0; pair < half_head; ++pair) {
                    const float v0 = pairs[2 * pair], v1 = pairs[2 * pair + 1];
                    pairs[2 * pair] = v0 * cos[pair] - v1 * sin[pair];
                    pairs[2 * pair + 1] = v0 * sin[pair] + v1 * cos[pair];
                }
            }
        }
    }

    // Causal grouped-query attention, head by head: S = Q_h K_g^T / sqrt(hs), softmax over the
    // positions <= t of row t, O_h = P V_g.
    void attend(const Activations& query, const Activations& key, const Activations& value, Activations& output) const {
        const LlamaConfig& c = config();
        const int head_size = c.head_size(), group = c.n_heads / c.n_kv_heads;
        const Eigen::Index length = query.rows();
        const float scale = 1.0f / std::sqrt(float(head_size));
        RowMajorMatrix<float> scores(length, length);
        for (int head = 0; head < c.n_heads; ++head) {
            const int kv_head = head / group;
            scores.noalias() = query.middleCols(head * head_size, head_size) * key.middleCols(kv_head * head_size, head_size).transpose();
            for (Eigen::Index t = 0; t < length; ++t) {
                auto row = scores.row(t).head(t + 1).array();
                row *= scale;
                const float max = row.maxCoeff();
                row = (row - max).exp();
                row /= row.sum();
                scores.row(t).tail(length - t - 1).setZero();
            }
            output.middleCols(head * head_size, head_size).noalias() = scores * value.middleCols(kv_head * head_size, head_size);
        }
    }

    LlamaWeights m_weights;
    RowMajorMatrix<float> m_rope_cos, m_rope_sin;  // [seq_len, head_size/2]
};

using LlamaModel = BasicLlamaModel<>;

}  // namespace nwc::llm
