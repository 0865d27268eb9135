// The weights of a Llama-architecture language model, with Hugging Face names.
//
// One structure serves every file format: llama2.c's flat file (io/llama2c_file.hpp), Hugging Face's
// safetensors + config.json (io/hf_llama.hpp) and, through `named_tensors()`, the compression
// pipeline, which sees the model as a list of named 2-D and 1-D float tensors exactly as it sees a
// safetensors file. Matrices have torch.nn.Linear's layout [out, in].
//
// Read me first -- the one convention that differs between formats: the rows of q_proj and k_proj
// are stored here in llama2.c's (and Meta's) order, where RoPE rotates the pairs of rows (2i, 2i+1)
// of every head. Hugging Face checkpoints permute those rows for their `rotate_half` RoPE, which
// pairs (i, i + head_size/2); io/hf_llama.hpp applies that permutation on write and undoes it on read.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"

namespace nwc::llm {

/// Largest sizes a model header may announce; every reader checks them before allocating.
struct LlamaLimits {
    static constexpr std::int64_t max_dim = 1 << 16;
    static constexpr std::int64_t max_hidden_dim = 1 << 20;
    static constexpr std::int64_t max_layers = 1 << 12;
    static constexpr std::int64_t max_vocab_size = 1 << 24;
    static constexpr std::int64_t max_seq_len = 1 << 24;
};

/// Hyper-parameters of a Llama-architecture model (llama2.c's Config plus HF's theta and eps).
struct LlamaConfig {
    int dim = 0;                    ///< width of the residual stream (hidden_size)
    int hidden_dim = 0;             ///< width of the SwiGLU feed-forward layer (intermediate_size)
    int n_layers = 0;               ///< transformer blocks
    int n_heads = 0;                ///< query heads
    int n_kv_heads = 0;             ///< key/value heads (grouped-query attention when < n_heads)
    int vocab_size = 0;             ///< tokens
    int seq_len = 0;                ///< longest context the model was trained for
    bool shared_classifier = true;  ///< the output layer reuses the token embedding
    float rope_theta = 10000.0f;    ///< RoPE base
    float norm_eps = 1e-5f;         ///< RMSNorm epsilon

    int head_size() const noexcept { return dim / n_heads; }
    int kv_dim() const noexcept { return head_size() * n_kv_heads; }

    /// Throws errc::corrupt (or errc::limit) naming `context` unless every size is positive, within
    /// LlamaLimits, the heads divide dim into even head sizes and the kv heads divide the heads.
    void validate(std::string_view context) const {
        auto check_size = [&](std::int64_t value, std::int64_t limit, const char* name) {
            require(value > 0, errc::corrupt, context, ": ", name, " is ", value, ", must be positive");
            require(value <= limit, errc::limit, context, ": ", name, " ", value, " exceeds ", limit);
        };
        check_size(dim, LlamaLimits::max_dim, "dim");
        check_size(hidden_dim, LlamaLimits::max_hidden_dim, "hidden_dim");
        check_size(n_layers, LlamaLimits::max_layers, "n_layers");
        check_size(n_heads, LlamaLimits::max_dim, "n_heads");
        check_size(n_kv_heads, LlamaLimits::max_dim, "n_kv_heads");
        check_size(vocab_size, LlamaLimits::max_vocab_size, "vocab_size");
        check_size(seq_len, LlamaLimits::max_seq_len, "seq_len");
        require(n_heads <= dim && n_kv_heads <= n_heads, errc::corrupt, context, ": ", n_heads, " heads and ", n_kv_heads,
                " kv heads for dim ", dim, " (need kv heads <= heads <= dim)");
        require(dim % n_heads == 0, errc::corrupt, context, ": n_heads ", n_heads, " does not divide dim ", dim);
        require(head_size() % 2 == 0, errc::corrupt, context, ": head size ", head_size(), " is odd (RoPE rotates pairs)");
        require(n_heads % n_kv_heads == 0, errc::corrupt, context, ": n_kv_heads ", n_kv_heads, " does not divide n_heads ", n_heads);
        require(std::isfinite(rope_theta) && rope_theta > 1.0f, errc::corrupt, context, ": rope_theta ", rope_theta, " must be > 1");
        require(std::isfinite(norm_eps) && norm_eps > 0.0f, errc::corrupt, context, ": norm_eps ", norm_eps, " must be > 0");
    }

    friend bool operator==(const LlamaConfig&, const LlamaConfig&) = default;
};

/// The tensors of one transformer block; comments give the Hugging Face name after
/// `model.layers.N.` and the llama2.c name.
struct LlamaLayerWeights {
    Tensor<float> attention_norm;  ///< input_layernorm.weight [dim] (rms_att)
    Tensor<float> wq;              ///< self_attn.q_proj.weight [dim, dim], llama2.c row order
    Tensor<float> wk;              ///< self_attn.k_proj.weight [kv_dim, dim], llama2.c row order
    Tensor<float> wv;              ///< self_attn.v_proj.weight [kv_dim, dim]
    Tensor<float> wo;              ///< self_attn.o_proj.weight [dim, dim]
    Tensor<float> ffn_norm;        ///< post_attention_layernorm.weight [dim] (rms_ffn)
    Tensor<float> w1;              ///< mlp.gate_proj.weight [hidden, dim]
    Tensor<float> w2;              ///< mlp.down_proj.weight [dim, hidden]
    Tensor<float> w3;              ///< mlp.up_proj.weight [hidden, dim]
};

namespace detail {
struct LayerTensorName {
    const char* suffix;
    Tensor<float> LlamaLayerWeights::*member;
};
/// Per-layer names in the order Hugging Face checkpoints list them.
inline constexpr std::array<LayerTensorName, 9> layer_tensor_names{{
    {"input_layernorm.weight", &LlamaLayerWeights::attention_norm},
    {"self_attn.q_proj.weight", &LlamaLayerWeights::wq},
    {"self_attn.k_proj.weight", &LlamaLayerWeights::wk},
    {"self_attn.v_proj.weight", &LlamaLayerWeights::wv},
    {"self_attn.o_proj.weight", &LlamaLayerWeights::wo},
    {"post_attention_layernorm.weight", &LlamaLayerWeights::ffn_norm},
    {"mlp.gate_proj.weight", &LlamaLayerWeights::w1},
    {"mlp.up_proj.weight", &LlamaLayerWeights::w3},
    {"mlp.down_proj.weight", &LlamaLayerWeights::w2},
}};
inline constexpr std::string_view layer_prefix = "model.layers.";
}  // namespace detail

/// Name of a per-layer tensor, e.g. layer_tensor_name(3, "self_attn.q_proj.weight").
inline std::string layer_tensor_name(int layer, std::string_view suffix) {
    return std::string(detail::layer_prefix) + std::to_string(layer) + "." + std::string(suffix);
}

/// All weights of a Llama model. Shapes always agree with `config` (see validate_shapes()).
struct LlamaWeights {
    LlamaConfig config;
    Tensor<float> token_embedding;  ///< model.embed_tokens.weight [vocab, dim]
    std::vector<LlamaLayerWeights> layers;
    Tensor<float> final_norm;  ///< model.norm.weight [dim]
    Tensor<float> classifier;  ///< lm_head.weight [vocab, dim]; empty when config.shared_classifier

    /// Zero-filled weights of the right shapes for a validated config.
    static LlamaWeights zeros(const LlamaConfig& config) {
        config.validate("llama config");
        LlamaWeights weights;
        weights.config = config;
        weights.layers.resize(std::size_t(config.n_layers));
        weights.for_each_tensor([&](const std::string&, Tensor<float>& tensor, const Shape& shape) { tensor = Tensor<float>(shape); });
        return weights;
    }

    /// The matrix the output logits are computed with (the embedding when shared).
    const Tensor<float>& output_weight() const noexcept { return config.shared_classifier ? token_embedding : classifier; }
    /// Name of output_weight(): "lm_head.weight" or "model.embed_tokens.weight".
    std::string output_weight_name() const { return config.shared_classifier ? "model.embed_tokens.weight" : "lm_head.weight"; }

    /// Calls visit(name, tensor, expected_shape) for every tensor, in Hugging Face checkpoint order
    /// (the classifier only when it is not shared); the expected shape follows from the config.
    template <class Visitor>
    void for_each_tensor(Visitor&& visit) {
        for_each_impl(*this, visit);
    }
    template <class Visitor>
    void for_each_tensor(Visitor&& visit) const {
        for_each_impl(*this, visit);
    }

    /// Every tensor with its name (pointers into this object), in checkpoint order.
    std::vector<std::pair<std::string, const Tensor<float>*>> named_tensors() const {
        std::vector<std::pair<std::string, const Tensor<float>*>> result;
        for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape&) { result.emplace_back(name, &tensor); });
        return result;
    }
    std::vector<std::string> names() const {
        std::vector<std::string> result;
        for_each_tensor([&](const std::string& name, const Tensor<float>&, const Shape&) { result.push_back(name); });
        return result;
    }

    /// The tensor called `name`; errc::invalid_argument for a name this model does not have.
    Tensor<float>& tensor(std::string_view name) { return *found_or_fail(find_impl(*this, name), name); }
    const Tensor<float>& tensor(std::string_view name) const { return *found_or_fail(find_impl(*this, name), name); }
    bool contains(std::string_view name) const { return find_impl(*this, name) != nullptr; }

    /// Throws errc::corrupt naming `context` and the tensor unless every shape matches the config.
    void validate_shapes(std::string_view context) const {
        config.validate(context);
        require(layers.size() == std::size_t(config.n_layers), errc::corrupt, context, ": ", layers.size(), " layers, config says ", config.n_layers);
        for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape& expected) {
            require(tensor.shape() == expected, errc::corrupt, context, ": tensor '", name, "' has ", describe(tensor.shape()), ", expected ",
                    describe(expected));
        });
        require(config.shared_classifier == classifier.values().empty(), errc::corrupt, context,
                ": classifier presence disagrees with shared_classifier");
    }

    /// "[a, b]" for error messages.
    static std::string describe(const Shape& shape) {
        std::string text = "shape [";
        for (int axis = 0; axis < shape.rank(); ++axis) text += (axis ? ", " : "") + std::to_string(shape[axis]);
        return text + "]";
    }

private:
    template <class Self, class Visitor>
    static void for_each_impl(Self& self, Visitor& visit) {
        const LlamaConfig& config = self.config;
        const std::int64_t dim = config.dim, hidden = config.hidden_dim, kv_dim = std::int64_t(config.dim / std::max(config.n_heads, 1)) * config.n_kv_heads;
        const std::array<Shape, 9> layer_shapes{Shape{dim}, Shape{dim, dim}, Shape{kv_dim, dim}, Shape{kv_dim, dim}, Shape{dim, dim},
                                                Shape{dim}, Shape{hidden, dim}, Shape{hidden, dim}, Shape{dim, hidden}};
        visit(std::string("model.embed_tokens.weight"), self.token_embedding, Shape{config.vocab_size, dim});
        for (std::size_t index = 0; index < self.layers.size(); ++index)
            for (std::size_t entry = 0; entry < detail::layer_tensor_names.size(); ++entry)
                visit(layer_tensor_name(int(index), detail::layer_tensor_names[entry].suffix),
                      self.layers[index].*detail::layer_tensor_names[entry].member, layer_shapes[entry]);
        visit(std::string("model.norm.weight"), self.final_norm, Shape{dim});
        if (!config.shared_classifier) visit(std::string("lm_head.weight"), self.classifier, Shape{config.vocab_size, dim});
    }

    template <class Pointer>
    static Pointer found_or_fail(Pointer tensor, std::string_view name) {
        if (tensor == nullptr) fail(errc::invalid_argument, "llama model has no tensor named '", name, "'");
        return tensor;
    }

    // The tensor called `name`, or nullptr. Layer numbers are plain decimals ("model.layers.07" is no name).
    template <class Self, class Pointer = std::conditional_t<std::is_const_v<Self>, const Tensor<float>*, Tensor<float>*>>
    static Pointer find_impl(Self& self, std::string_view name) {
        if (name == "model.embed_tokens.weight") return &self.token_embedding;
        if (name == "model.norm.weight") return &self.final_norm;
        if (name == "lm_head.weight" && !self.config.shared_classifier) return &self.classifier;
        if (name.starts_with(detail::layer_prefix)) {
            std::string_view rest = name.substr(detail::layer_prefix.size());
            int layer = -1;
            const auto [end, status] = std::from_chars(rest.data(), rest.data() + rest.size(), layer);
            const std::size_t digits = std::size_t(end - rest.data());
            if (status == std::errc{} && layer >= 0 && std::size_t(layer) < self.layers.size() && digits < rest.size() && rest[digits] == '.' &&
                (digits == 1 || rest[0] != '0')) {
                const std::string_view suffix = rest.substr(digits + 1);
                for (const auto& entry : detail::layer_tensor_names)
                    if (suffix == entry.suffix) return &(self.layers[std::size_t(layer)].*entry.member);
            }
        }
        return nullptr;
    }
};

}  // namespace nwc::llm
