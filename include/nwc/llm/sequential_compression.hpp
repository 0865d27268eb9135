// Sequential (GPTQ-style) compression of a Llama model, block by block, with inter-layer
// fine-tuning (NWC-NOTES section 7).
//
// Read me first:
// - The caller supplies the encoder as a QuantizeFunction: it codes one 2-D weight (given its
//   Hugging Face name and, when one applies, the Hessian H = X^T X / N of its input), keeps the
//   compressed bytes on its side, and returns the decoder's reconstruction (same shape). The
//   driver calls it exactly once per 2-D tensor, in this order:
//     1. model.embed_tokens.weight, with the classifier-input Hessian (final-normed states of the
//        ORIGINAL model) when the classifier is tied to it, else without a Hessian;
//     2. block 0..L-1, per block in groups that share an input: {q,k,v}, o, {gate(w1), up(w3)},
//        down(w2) (or one at a time: q, k, v, o, gate, up, down);
//     3. lm_head.weight (untied models only), with the Hessian of the COMPRESSED model's states.
//   The 1-D norm scales are never passed: they stay as they are (the pipeline stores them raw).
// - Block b's calibration inputs are the compressed model-so-far's hidden states (embedding and
//   blocks 0..b-1 already replaced by reconstructions). Before each group is coded, its input's
//   Hessian is recomputed with the block's current weights (coded + fine-tuned), so o, w1/w3 and
//   w2 see the errors of the layers coded before them.
// - Fine-tuning target (FinetuneTarget): the ORIGINAL block b applied to those same inputs
//   (default), or the original model's own hidden states after block b (then the fine-tuned
//   layers also absorb the error of earlier blocks).
// - Window split: the first `windows` complete windows of `window` tokens of the calibration
//   text; the last `validation_windows` of them are held out for early stopping and for the
//   reported block MSEs, the others train. Hessians use all of them.
// - Every result is the same bits for any thread count (see block_finetune.hpp, calibration.hpp).
// - Functions that run the model are `template <class = void>`: instantiated when a program calls
//   them, not by every translation unit that includes the header (docs/bench/headers.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/llm/block_finetune.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/llama_model.hpp"

namespace nwc::llm {

/// The encoder: codes `weight` (named `name`), stores the bytes on its side, returns the
/// decoder's reconstruction of the same shape. `hessian` ([cols, cols]) may be null.
using QuantizeFunction = std::function<Tensor<float>(const std::string& name, const Tensor<float>& weight, const Tensor<double>* hessian)>;

/// What the fine-tuned block output is pulled toward (see the header comment).
enum class FinetuneTarget { original_block, original_model };

/// One coded tensor.
struct SequentialTensorReport {
    std::string name;
    double proxy_loss = std::numeric_limits<double>::quiet_NaN();  ///< tr(dW H dW^T) / tr(W H W^T); NaN without a Hessian
    double relative_mse = 0.0;                                      ///< ||dW||^2 / ||W||^2
};

/// One coding step: a group of tensors of one block (layer -1: embedding / classifier).
struct SequentialStepReport {
    int layer = -1;
    std::vector<SequentialTensorReport> tensors;
    double block_mse_coded = 0.0;      ///< validation block-output MSE after coding, before fine-tuning
    double block_mse_finetuned = 0.0;  ///< after fine-tuning (= coded when not fine-tuned)
    bool finetuned = false;
    BlockFinetuneResult finetune;
};

struct SequentialCompressionReport {
    std::vector<SequentialStepReport> steps;
    std::int64_t calibration_windows = 0;
};

struct SequentialCompressionOptions {
    int window = 256;            ///< tokens per calibration window (<= seq_len)
    int windows = 32;            ///< calibration windows used (the first complete ones)
    int validation_windows = 4;  ///< of those, held out for early stopping and the reported MSEs
    bool finetune = true;        ///< inter-layer fine-tuning after every coding step
    BlockFinetuneOptions finetune_options;  ///< epochs, learning_rate, seed, ... (threads: see below)
    FinetuneTarget target = FinetuneTarget::original_block;
    bool group_shared_inputs = true;  ///< {q,k,v}, o, {w1,w3}, w2; false: one linear per step
    int threads = 1;                  ///< for everything (overrides finetune_options.threads)
    std::function<void(const SequentialStepReport&)> progress;  ///< called after every step
};

namespace detail {

/// Which input of a block (BlockLinearInputs order) a linear reads.
inline int block_input_slot(BlockLinear linear) noexcept {
    switch (linear) {
        case BlockLinear::query: case BlockLinear::key: case BlockLinear::value: return 0;
        case BlockLinear::output: return 1;
        case BlockLinear::gate: case BlockLinear::up: return 2;
        case BlockLinear::down: return 3;
    }
    return 0;
}

inline std::vector<std::vector<BlockLinear>> coding_groups(bool group_shared_inputs) {
    using L = BlockLinear;
    if (group_shared_inputs) return {{L::query, L::key, L::value}, {L::output}, {L::gate, L::up}, {L::down}};
    std::vector<std::vector<BlockLinear>> groups;
    for (BlockLinear linear : block_linears) groups.push_back({linear});
    return groups;
}

/// H = X^T X / N of one input of block `layer` (slot as in block_input_slot; 4: the classifier
/// input, i.e. final-normed states, with `layer` ignored) over the windows' states. Windows are
/// summed in window order, whatever the thread count.
template <class = void>
Tensor<double> block_input_hessian(const LlamaModel& model, int layer, int slot, const std::vector<Activations>& states, int threads) {
    const std::int64_t width = slot == 3 ? model.config().hidden_dim : model.config().dim;
    RowMajorMatrix<double> total = RowMajorMatrix<double>::Zero(width, width);
    const std::int64_t batch = resolve_thread_count(threads);
    std::int64_t rows = 0;
    for (std::int64_t first = 0; first < std::int64_t(states.size()); first += batch) {
        const std::int64_t count = std::min<std::int64_t>(batch, std::int64_t(states.size()) - first);
        std::vector<RowMajorMatrix<double>> grams(std::size_t(count), RowMajorMatrix<double>::Zero(width, width));
        parallel_for(count, threads, [&](std::int64_t index) {
            const Activations& input = states[std::size_t(first + index)];
            RowMajorMatrix<double>& gram = grams[std::size_t(index)];
            if (slot == 4) {
                accumulate_gram(model.final_norm(input), gram);
                return;
            }
            Activations hidden = input;
            model.forward_block(layer, hidden, [&](const BlockLinearInputs& inputs) {
                const Activations* seen[4] = {&inputs.attention_input, &inputs.attention_output, &inputs.ffn_input, &inputs.ffn_hidden};
                accumulate_gram(*seen[slot], gram);
            });
        });
        for (const auto& gram : grams) total += gram;
        for (std::int64_t i = 0; i < count; ++i) rows += states[std::size_t(first + i)].rows();
    }
    Tensor<double> hessian(Shape{width, width});
    hessian.matrix() = RowMajorMatrix<double>(total.selfadjointView<Eigen::Lower>()) / double(rows);
    return hessian;
}

/// Calls the encoder, checks the shape, and measures the error against `weight`.
template <class = void>
Tensor<float> code_tensor(const QuantizeFunction& quantize, const std::string& name, const Tensor<float>& weight, const Tensor<double>* hessian,
                                 SequentialTensorReport& report) {
    Tensor<float> reconstruction = quantize(name, weight, hessian);
    require(reconstruction.shape() == weight.shape(), errc::invalid_argument, "sequential compression: the encoder returned ",
            LlamaWeights::describe(reconstruction.shape()), " for '", name, "' of shape ", LlamaWeights::describe(weight.shape()));
    const Eigen::MatrixXd original = weight.matrix().cast<double>();
    const Eigen::MatrixXd error = original - reconstruction.matrix().cast<double>();
    report.name = name;
    report.relative_mse = error.squaredNorm() / std::max(original.squaredNorm(), std::numeric_limits<double>::min());
    if (hessian != nullptr) {
        const auto h = hessian->matrix();
        const double denominator = (original * h).cwiseProduct(original).sum();
        report.proxy_loss = (error * h).cwiseProduct(error).sum() / std::max(denominator, std::numeric_limits<double>::min());
    }
    return reconstruction;
}

}  // namespace detail

/// Compresses `model` in place (every 2-D weight replaced by the encoder's reconstruction, in the
/// order of the header comment), calibrating on `calibration_tokens` (tokenized with one BOS, as
/// tokenize_for_evaluation does). Throws errc::invalid_argument for too few calibration tokens.
template <class = void>
SequentialCompressionReport compress_sequentially(LlamaModel& model, std::span<const int> calibration_tokens, const QuantizeFunction& quantize,
                                                         const SequentialCompressionOptions& options = {}) {
    const LlamaConfig& config = model.config();
    require(options.window >= 2 && options.window <= config.seq_len, errc::invalid_argument, "sequential compression: window ", options.window,
            " outside [2, ", config.seq_len, "]");
    require(options.validation_windows >= 1 && options.windows > options.validation_windows, errc::invalid_argument,
            "sequential compression: ", options.windows, " windows with ", options.validation_windows, " held out leave none to train on");
    std::vector<std::span<const int>> windows = cut_windows(calibration_tokens, options.window);
    require(std::int64_t(windows.size()) >= options.windows, errc::invalid_argument, "sequential compression: ", calibration_tokens.size(),
            " calibration tokens give ", windows.size(), " windows of ", options.window, ", ", options.windows, " requested");
    windows.resize(std::size_t(options.windows));
    const int threads = options.threads;
    BlockFinetuneOptions finetune_options = options.finetune_options;
    finetune_options.threads = threads;

    SequentialCompressionReport report;
    report.calibration_windows = options.windows;
    auto finish_step = [&](SequentialStepReport step) {
        if (options.progress) options.progress(step);
        report.steps.push_back(std::move(step));
    };

    // 1. The embedding (and with it a tied classifier), calibrated on the original model.
    std::vector<Activations> original_states = embed_windows(model, windows);
    {
        Tensor<double> classifier_hessian;
        if (config.shared_classifier) {
            std::vector<Activations> final_states = original_states;
            for (int layer = 0; layer < config.n_layers; ++layer) final_states = run_block(model, layer, final_states, threads);
            classifier_hessian = detail::block_input_hessian(model, 0, 4, final_states, threads);
        }
        SequentialStepReport step;
        step.tensors.emplace_back();
        const std::string name = "model.embed_tokens.weight";
        model.replace_weight(name, detail::code_tensor(quantize, name, model.weights().token_embedding,
                                                       config.shared_classifier ? &classifier_hessian : nullptr, step.tensors.back()));
        finish_step(std::move(step));
    }
    std::vector<Activations> states = embed_windows(model, windows);

    // 2. The blocks, in order.
    const std::size_t training_count = windows.size() - std::size_t(options.validation_windows);
    for (int layer = 0; layer < config.n_layers; ++layer) {
        BlockWindows training, validation;
        {
            // Targets come from the tape block itself (not LlamaModel), so that an exact encoder
            // gives an exactly zero error and fine-tuning leaves the weights alone.
            const TapeBlock original_block(config, model.weights().layers[std::size_t(layer)]);
            auto run_original = [&](const std::vector<Activations>& inputs) {
                std::vector<Activations> outputs(inputs.size());
                parallel_for(std::int64_t(inputs.size()), threads,
                             [&](std::int64_t w) { outputs[std::size_t(w)] = original_block.forward(inputs[std::size_t(w)]); });
                return outputs;
            };
            std::vector<Activations> targets;
            if (options.target == FinetuneTarget::original_model) {
                original_states = run_original(original_states);
                targets = original_states;
            } else {
                targets = run_original(states);
            }
            for (std::size_t w = 0; w < windows.size(); ++w) {
                BlockWindows& part = w < training_count ? training : validation;
                part.inputs.push_back(states[w]);
                part.targets.push_back(std::move(targets[w]));
            }
        }
        BlockFinetuner finetuner(config, model.weights().layers[std::size_t(layer)]);
        auto sync_model = [&] {
            for (BlockLinear linear : block_linears) {
                const auto& value = finetuner.block().parameter(linear).value;
                model.replace_weight(layer_tensor_name(layer, block_linear_suffix(linear)),
                                     Tensor<float>(Shape{value.rows(), value.cols()}, std::vector<float>(value.data(), value.data() + value.size())));
            }
        };
        for (const std::vector<BlockLinear>& group : detail::coding_groups(options.group_shared_inputs)) {
            const Tensor<double> hessian = detail::block_input_hessian(model, layer, detail::block_input_slot(group.front()), states, threads);
            SequentialStepReport step;
            step.layer = layer;
            for (BlockLinear linear : group) {
                const std::string name = layer_tensor_name(layer, block_linear_suffix(linear));
                step.tensors.emplace_back();
                finetuner.set_coded(linear, detail::code_tensor(quantize, name, model.weights().tensor(name), &hessian, step.tensors.back()));
            }
            step.block_mse_coded = finetuner.output_mse(validation, threads);
            step.block_mse_finetuned = step.block_mse_coded;
            if (options.finetune && finetuner.block().any_trainable()) {
                step.finetune = finetuner.finetune(training, validation, finetune_options);
                step.block_mse_finetuned = step.finetune.validation_mse_after;
                step.finetuned = true;
            }
            sync_model();
            finish_step(std::move(step));
        }
        states = run_block(model, layer, states, threads);
    }

    // 3. A separate classifier, calibrated on the compressed model's final states.
    if (!config.shared_classifier) {
        const Tensor<double> hessian = detail::block_input_hessian(model, 0, 4, states, threads);
        SequentialStepReport step;
        step.tensors.emplace_back();
        const std::string name = "lm_head.weight";
        model.replace_weight(name, detail::code_tensor(quantize, name, model.weights().classifier, &hessian, step.tensors.back()));
        finish_step(std::move(step));
    }
    return report;
}

}  // namespace nwc::llm
