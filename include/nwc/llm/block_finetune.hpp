// Inter-layer error compensation (NWC-NOTES section 7): after some linear layers of a transformer
// block are coded (frozen), fine-tune the block's still-uncoded linears with Adam so the block's
// output on calibration inputs matches the ORIGINAL block's output (mean squared error).
//
// Read me first:
// - Windows are split by the caller into training windows (Adam steps) and validation windows
//   (early stopping). The validation MSE is measured before the first step and after every
//   epoch; the weights of the best epoch are kept, so fine-tuning never makes the validation
//   error worse (if no epoch helps, the weights come back unchanged).
// - Loss of a step: the mean over its windows of the per-window MSE (mean over T x dim).
// - Cost: when q/k/v (and o) are frozen, the values entering the first trainable layer never
//   change, so they are computed once per window (TapeBlock::stage_values) and each step records
//   only the rest of the block.
// - Determinism: every window of a step runs on its own tape with its own copy (replica) of the
//   trainable weights, and the replicas' gradients are summed in window order; the epoch order of
//   the windows comes from nwc::Random(seed). Results are the same bits for any thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "nwc/autograd/autograd.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/random.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/llm/block_tape.hpp"

namespace nwc::llm {

/// Calibration windows of one block: inputs and the outputs to match, one [T, dim] per window.
struct BlockWindows {
    std::vector<Activations> inputs;
    std::vector<Activations> targets;
    std::size_t size() const noexcept { return inputs.size(); }
};

struct BlockFinetuneOptions {
    int epochs = 4;                  ///< most passes over the training windows
    double learning_rate = 3e-3;     ///< Adam (reference: 3e-6 at 7B scale; 3e-3 measured best for stories260K: docs/bench/finetune.md)
    int windows_per_step = 4;        ///< windows averaged into one Adam step
    int patience = 1;                ///< epochs without a validation improvement before stopping
    double max_gradient_norm = 0.0;  ///< clip the step's gradient norm to this (0: no clipping)
    int threads = 1;                 ///< windows of a step run in parallel (0: all hardware threads)
    std::uint64_t seed = 0x6E7763;   ///< epoch order of the training windows
};

struct BlockFinetuneResult {
    double validation_mse_before = 0.0;      ///< before any step
    double validation_mse_after = 0.0;       ///< with the kept (best) weights
    std::vector<double> validation_history;  ///< [0] before, [e] after epoch e
    std::vector<double> training_loss;       ///< mean step loss of every epoch run
    int epochs_run = 0;
    int best_epoch = 0;  ///< 0: no epoch improved, the weights are unchanged
    std::int64_t steps = 0;
};

/// Fine-tunes the trainable linears of a TapeBlock (see the header comment).
/// Use BlockFinetuner (= BasicBlockFinetuner<>): a template for the reason TapeBlock is one.
template <class = void>
class BasicBlockFinetuner {
public:
    using Matrix = TapeBlock::Matrix;

    BasicBlockFinetuner(const LlamaConfig& config, const LlamaLayerWeights& weights) : m_block(config, weights) {}

    TapeBlock& block() noexcept { return m_block; }
    const TapeBlock& block() const noexcept { return m_block; }

    /// Replaces a linear's weight (e.g. by its coded reconstruction) and freezes it.
    void set_coded(BlockLinear linear, const Tensor<float>& reconstruction) {
        Matrix& value = m_block.parameter(linear).value;
        require(reconstruction.rows() == value.rows() && reconstruction.cols() == value.cols(), errc::invalid_argument, "block fine-tuning: ",
                block_linear_suffix(linear), " reconstruction is ", reconstruction.rows(), " x ", reconstruction.cols(), ", expected ", value.rows(),
                " x ", value.cols());
        value = reconstruction.matrix();
        m_block.set_trainable(linear, false);
    }

    /// Mean over windows of the per-window output MSE (double), with the current weights.
    double output_mse(const BlockWindows& windows, int threads = 1) const {
        check_windows(windows, "output_mse");
        std::vector<double> errors(windows.size());
        parallel_for(std::int64_t(windows.size()), threads, [&](std::int64_t index) {
            const std::size_t w = std::size_t(index);
            errors[w] = window_mse(m_block.forward(windows.inputs[w]), windows.targets[w]);
        });
        return mean(errors);
    }

    /// Runs Adam on the trainable linears toward `training`'s targets, early-stopping on
    /// `validation` (at least one window each).
    BlockFinetuneResult finetune(const BlockWindows& training, const BlockWindows& validation, const BlockFinetuneOptions& options = {}) {
        check_windows(training, "training");
        check_windows(validation, "validation");
        require(options.epochs >= 0 && options.windows_per_step > 0 && options.patience > 0 && options.learning_rate > 0.0, errc::invalid_argument,
                "block fine-tuning: epochs ", options.epochs, ", windows_per_step ", options.windows_per_step, ", patience ", options.patience,
                ", learning_rate ", options.learning_rate, " out of range");
        std::vector<BlockLinear> trainable;
        for (BlockLinear linear : block_linears)
            if (m_block.trainable(linear)) trainable.push_back(linear);

        const BlockStage stage = m_block.frozen_prefix();
        const std::vector<BlockStageValues> training_values = stage_values(training, stage, options.threads);
        const std::vector<BlockStageValues> validation_values = stage_values(validation, stage, options.threads);

        BlockFinetuneResult result;
        result.validation_mse_before = evaluate(validation_values, validation.targets, stage, options.threads);
        result.validation_history.push_back(result.validation_mse_before);
        double best_mse = result.validation_mse_before;
        std::vector<Matrix> best_weights = snapshot(trainable);
        if (trainable.empty() || options.epochs == 0) {
            result.validation_mse_after = best_mse;
            return result;
        }

        std::vector<autograd::Parameter<float>*> masters;
        for (BlockLinear linear : trainable) masters.push_back(&m_block.parameter(linear));
        autograd::Adam<float> adam(masters, autograd::AdamOptions{options.learning_rate});
        const std::size_t batch = std::size_t(options.windows_per_step);
        std::vector<TapeBlock::Parameters> replicas(batch);
        std::vector<TapeBlock::Tape> tapes(batch);
        std::vector<double> losses(batch);
        std::vector<std::size_t> order(training.size());
        std::iota(order.begin(), order.end(), std::size_t(0));
        Random random(options.seed);

        for (int epoch = 1; epoch <= options.epochs; ++epoch) {
            for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[std::size_t(random.below(i))]);
            double loss_sum = 0.0;
            std::int64_t step_count = 0;
            for (std::size_t first = 0; first < order.size(); first += batch) {
                const std::size_t count = std::min(batch, order.size() - first);
                for (std::size_t slot = 0; slot < count; ++slot)
                    for (BlockLinear linear : trainable) {
                        auto& replica = replicas[slot][std::size_t(linear)];
                        replica.value = m_block.parameter(linear).value;
                        replica.grad.setZero(replica.value.rows(), replica.value.cols());
                    }
                parallel_for(std::int64_t(count), options.threads, [&](std::int64_t slot_index) {
                    const std::size_t slot = std::size_t(slot_index), window = order[first + slot];
                    TapeBlock::Tape& tape = tapes[slot];
                    tape.clear();
                    const autograd::Var output = m_block.record(tape, stage, training_values[window], &replicas[slot]);
                    const autograd::Var loss = autograd::mse_loss(tape, output, tape.constant_ref(training.targets[window]));
                    tape.backward(loss);
                    losses[slot] = double(tape.item(loss));
                });
                const float inverse = 1.0f / float(count);
                for (BlockLinear linear : trainable) {
                    Matrix& gradient = m_block.parameter(linear).grad;
                    gradient = replicas[0][std::size_t(linear)].grad;
                    for (std::size_t slot = 1; slot < count; ++slot) gradient += replicas[slot][std::size_t(linear)].grad;
                    gradient *= inverse;
                }
                if (options.max_gradient_norm > 0.0) autograd::clip_gradient_norm(masters, options.max_gradient_norm);
                adam.step();
                for (std::size_t slot = 0; slot < count; ++slot) loss_sum += losses[slot] / double(count);
                ++step_count;
            }
            result.steps += step_count;
            result.epochs_run = epoch;
            result.training_loss.push_back(loss_sum / double(step_count));
            const double mse = evaluate(validation_values, validation.targets, stage, options.threads);
            result.validation_history.push_back(mse);
            if (mse < best_mse) {
                best_mse = mse;
                best_weights = snapshot(trainable);
                result.best_epoch = epoch;
            } else if (epoch - result.best_epoch >= options.patience) {
                break;
            }
        }
        for (std::size_t i = 0; i < trainable.size(); ++i) m_block.parameter(trainable[i]).value = best_weights[i];
        result.validation_mse_after = best_mse;
        return result;
    }

private:
    static void check_windows(const BlockWindows& windows, const char* what) {
        require(!windows.inputs.empty() && windows.inputs.size() == windows.targets.size(), errc::invalid_argument, "block fine-tuning: ", what,
                " has ", windows.inputs.size(), " inputs and ", windows.targets.size(), " targets");
    }

    static double window_mse(const Matrix& output, const Matrix& target) {
        NWC_ASSERT(output.rows() == target.rows() && output.cols() == target.cols());
        return (output.cast<double>() - target.cast<double>()).squaredNorm() / double(output.size());
    }

    static double mean(const std::vector<double>& values) {
        double sum = 0.0;
        for (double value : values) sum += value;
        return sum / double(values.size());
    }

    std::vector<Matrix> snapshot(const std::vector<BlockLinear>& linears) const {
        std::vector<Matrix> values;
        for (BlockLinear linear : linears) values.push_back(m_block.parameter(linear).value);
        return values;
    }

    std::vector<BlockStageValues> stage_values(const BlockWindows& windows, BlockStage stage, int threads) const {
        std::vector<BlockStageValues> values(windows.size());
        parallel_for(std::int64_t(windows.size()), threads,
                     [&](std::int64_t index) { values[std::size_t(index)] = m_block.stage_values(windows.inputs[std::size_t(index)], stage); });
        return values;
    }

    double evaluate(const std::vector<BlockStageValues>& values, const std::vector<Activations>& targets, BlockStage stage, int threads) const {
        std::vector<double> errors(values.size());
        parallel_for(std::int64_t(values.size()), threads, [&](std::int64_t index) {
            const std::size_t w = std::size_t(index);
            TapeBlock::Tape tape;
            const autograd::Var output = m_block.record(tape, stage, values[w]);
            errors[w] = window_mse(tape.value(output), targets[w]);
        });
        return mean(errors);
    }

    TapeBlock m_block;
};

using BlockFinetuner = BasicBlockFinetuner<>;

}  // namespace nwc::llm
