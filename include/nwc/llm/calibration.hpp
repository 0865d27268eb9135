// Calibration statistics: the Hessians H = X^T X / N of the inputs of every linear layer, and the
// inputs/outputs of transformer blocks for inter-layer fine-tuning.
//
// The calibration text is windowed exactly as the perplexity protocol windows the evaluation text
// (one BOS, complete windows of 512 tokens, each run from position 0), and every position of every
// window is one row of X, so N = windows * window. Products are accumulated in double.
//
// Determinism: windows are summed in fixed groups (`windows_per_group` consecutive windows, one
// group per task) and the group sums are added to the total in group order, so the Hessians are
// the same bits for any thread count. Memory: one set of partial Hessians per running thread.
//
// Functions that run the model are `template <class = void>`: instantiated when a program calls
// them, not by every translation unit that includes the header (docs/bench/headers.md).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <Eigen/Core>

#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/llm/llama_model.hpp"
#include "nwc/llm/perplexity.hpp"

namespace nwc::llm {

struct CalibrationOptions {
    int window = evaluation_window;  ///< tokens per window
    int threads = 1;                 ///< 0 = all hardware threads
    std::int64_t max_windows = -1;   ///< use only the first max_windows windows (-1: all)
    int windows_per_group = 4;       ///< windows summed per task before the ordered reduction
    bool include_classifier = true;  ///< also collect the classifier's input (final-normed states)
};

/// One shared input of linear layers and its Hessian.
struct LinearInputHessian {
    std::string input_name;                 ///< e.g. "model.layers.0.self_attn.qkv_input"
    std::vector<std::string> weight_names;  ///< the weights that read this input
    Tensor<double> hessian;                 ///< [in, in], symmetric positive semi-definite
};

/// H = X^T X / N per linear-layer input, looked up by the name of any weight reading it.
class LinearHessians {
public:
    LinearHessians() = default;
    LinearHessians(std::int64_t sample_count, std::vector<LinearInputHessian> inputs) : m_sample_count(sample_count), m_inputs(std::move(inputs)) {}

    /// N: the activation rows (token positions) summed.
    std::int64_t sample_count() const noexcept { return m_sample_count; }
    const std::vector<LinearInputHessian>& inputs() const noexcept { return m_inputs; }

    /// The Hessian of the input of weight `weight_name` (errc::invalid_argument if none).
    const Tensor<double>& at(std::string_view weight_name) const {
        for (const auto& input : m_inputs)
            for (const auto& name : input.weight_names)
                if (name == weight_name) return input.hessian;
        fail(errc::invalid_argument, "no calibration Hessian for weight '", weight_name, "'");
    }
    bool contains(std::string_view weight_name) const {
        for (const auto& input : m_inputs)
            for (const auto& name : input.weight_names)
                if (name == weight_name) return true;
        return false;
    }

private:
    std::int64_t m_sample_count = 0;
    std::vector<LinearInputHessian> m_inputs;
};

namespace detail {

/// The linear-layer inputs of a model in a fixed order: 4 per block, then the classifier's.
inline std::vector<LinearInputHessian> linear_input_layout(const LlamaModel& model, bool include_classifier) {
    const LlamaConfig& config = model.config();
    std::vector<LinearInputHessian> layout;
    auto add = [&](std::string input, std::vector<std::string> weights, std::int64_t width) {
        layout.push_back({std::move(input), std::move(weights), Tensor<double>(Shape{width, width})});
    };
    for (int layer = 0; layer < config.n_layers; ++layer) {
        auto name = [&](std::string_view suffix) { return layer_tensor_name(layer, suffix); };
        add(name("self_attn.qkv_input"), {name("self_attn.q_proj.weight"), name("self_attn.k_proj.weight"), name("self_attn.v_proj.weight")},
            config.dim);
        add(name("self_attn.o_proj_input"), {name("self_attn.o_proj.weight")}, config.dim);
        add(name("mlp.gate_up_input"), {name("mlp.gate_proj.weight"), name("mlp.up_proj.weight")}, config.dim);
        add(name("mlp.down_proj_input"), {name("mlp.down_proj.weight")}, config.hidden_dim);
    }
    if (include_classifier) add("lm_head_input", {model.weights().output_weight_name()}, config.dim);
    return layout;
}

/// Adds X^T X (lower triangle only) of a float activation matrix to a double accumulator.
template <class = void>
void accumulate_gram(const Activations& activations, RowMajorMatrix<double>& gram) {
    const Eigen::MatrixXd wide = activations.cast<double>();
    gram.selfadjointView<Eigen::Lower>().rankUpdate(wide.transpose());
}

}  // namespace detail

/// Runs the model over the calibration tokens and returns every linear input's Hessian.
template <class = void>
LinearHessians collect_hessians(const LlamaModel& model, std::span<const int> tokens, const CalibrationOptions& options = {}) {
    require(options.window <= model.config().seq_len, errc::invalid_argument, "calibration: window ", options.window, " exceeds seq_len ",
            model.config().seq_len);
    require(options.windows_per_group > 0, errc::invalid_argument, "calibration: windows_per_group must be positive");
    std::vector<std::span<const int>> windows = cut_windows(tokens, options.window);
    if (options.max_windows >= 0 && std::int64_t(windows.size()) > options.max_windows) windows.resize(std::size_t(options.max_windows));
    require(!windows.empty(), errc::invalid_argument, "calibration: ", tokens.size(), " tokens do not fill one window of ", options.window);

    std::vector<LinearInputHessian> layout = detail::linear_input_layout(model, options.include_classifier);
    const std::size_t input_count = layout.size();
    using Gram = RowMajorMatrix<double>;
    auto zero_set = [&] {
        std::vector<Gram> set(input_count);
        for (std::size_t i = 0; i < input_count; ++i) set[i] = Gram::Zero(layout[i].hessian.rows(), layout[i].hessian.cols());
        return set;
    };
    std::vector<Gram> total = zero_set();

    const std::int64_t group_size = options.windows_per_group;
    const std::int64_t group_count = (std::int64_t(windows.size()) + group_size - 1) / group_size;
    const std::int64_t batch = resolve_thread_count(options.threads);
    for (std::int64_t first = 0; first < group_count; first += batch) {
        const std::int64_t in_batch = std::min(batch, group_count - first);
        std::vector<std::vector<Gram>> partial(static_cast<std::size_t>(in_batch));
        parallel_for(in_batch, options.threads, [&](std::int64_t slot) {
            std::vector<Gram> sums = zero_set();
            const std::int64_t group = first + slot;
            const std::int64_t end = std::min<std::int64_t>((group + 1) * group_size, std::int64_t(windows.size()));
            for (std::int64_t w = group * group_size; w < end; ++w) {
                Activations hidden = model.embed(windows[std::size_t(w)]);
                const BlockObserver observer = [&](const BlockLinearInputs& inputs) {
                    const std::size_t base = std::size_t(inputs.layer) * 4;
                    detail::accumulate_gram(inputs.attention_input, sums[base]);
                    detail::accumulate_gram(inputs.attention_output, sums[base + 1]);
                    detail::accumulate_gram(inputs.ffn_input, sums[base + 2]);
                    detail::accumulate_gram(inputs.ffn_hidden, sums[base + 3]);
                };
                for (int layer = 0; layer < model.config().n_layers; ++layer) model.forward_block(layer, hidden, observer);
                if (options.include_classifier) detail::accumulate_gram(model.final_norm(hidden), sums.back());
            }
            partial[std::size_t(slot)] = std::move(sums);
        });
        for (auto& sums : partial)
            for (std::size_t i = 0; i < input_count; ++i) total[i] += sums[i];
    }

    const std::int64_t sample_count = std::int64_t(windows.size()) * options.window;
    const double scale = 1.0 / double(sample_count);
    for (std::size_t i = 0; i < input_count; ++i) {
        Gram full = total[i].selfadjointView<Eigen::Lower>();
        layout[i].hessian.matrix() = full * scale;
    }
    return LinearHessians(sample_count, std::move(layout));
}

/// Inputs and outputs of one transformer block over calibration windows, for fine-tuning.
struct BlockActivations {
    int layer = 0;
    std::vector<Activations> inputs;   ///< per window, [T, dim]: hidden states entering the block
    std::vector<Activations> outputs;  ///< per window, [T, dim]: hidden states leaving it
};

/// The hidden states entering block 0 (the embeddings) of every window.
template <class = void>
std::vector<Activations> embed_windows(const LlamaModel& model, std::span<const std::span<const int>> windows) {
    std::vector<Activations> states;
    states.reserve(windows.size());
    for (const auto& window : windows) states.push_back(model.embed(window));
    return states;
}

/// The hook for inter-layer fine-tuning: runs block `layer` of `model` on given input states
/// (one matrix per window, positions from 0) and returns the output states. Windows run in
/// parallel; each result depends only on its own input.
template <class = void>
std::vector<Activations> run_block(const LlamaModel& model, int layer, const std::vector<Activations>& inputs, int threads = 1) {
    require(layer >= 0 && layer < model.config().n_layers, errc::invalid_argument, "run_block: layer ", layer, " outside [0, ",
            model.config().n_layers, ")");
    std::vector<Activations> outputs(inputs.size());
    parallel_for(std::int64_t(inputs.size()), threads, [&](std::int64_t index) {
        const Activations& input = inputs[std::size_t(index)];
        require(input.cols() == model.config().dim && input.rows() <= model.config().seq_len, errc::invalid_argument, "run_block: input ", index,
                " is ", input.rows(), " x ", input.cols());
        Activations state = input;
        model.forward_block(layer, state);
        outputs[std::size_t(index)] = std::move(state);
    });
    return outputs;
}

/// Runs blocks 0..layer-1 over the calibration windows and records block `layer`'s inputs and
/// outputs (memory: 2 * windows * window * dim floats; bound it with options.max_windows).
template <class = void>
BlockActivations capture_block_activations(const LlamaModel& model, std::span<const int> tokens, int layer, const CalibrationOptions& options = {}) {
    require(layer >= 0 && layer < model.config().n_layers, errc::invalid_argument, "capture_block_activations: layer ", layer, " outside [0, ",
            model.config().n_layers, ")");
    std::vector<std::span<const int>> windows = cut_windows(tokens, options.window);
    if (options.max_windows >= 0 && std::int64_t(windows.size()) > options.max_windows) windows.resize(std::size_t(options.max_windows));
    BlockActivations result;
    result.layer = layer;
    result.inputs = embed_windows(model, windows);
    for (int block = 0; block < layer; ++block) result.inputs = run_block(model, block, result.inputs, options.threads);
    result.outputs = run_block(model, layer, result.inputs, options.threads);
    return result;
}

}  // namespace nwc::llm
