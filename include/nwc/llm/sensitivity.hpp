// Per-tensor sensitivity of a Llama model's calibration loss to noise in its weights: how much the
// mean NLL rises per unit of per-weight error variance, the number bit allocation needs
// (quant/rate_allocation.hpp: a tensor coded with per-weight MSE D_t is predicted to cost S_t D_t).
//
// Read me first:
// - Measurement: i.i.d. Gaussian noise e (standard deviation sigma = relative_noise x the tensor's
//   RMS) is added to ONE tensor; with antithetic pairs the gradient term cancels exactly:
//       S_t = ( (NLL(W + e) + NLL(W - e)) / 2 - NLL(W) ) / sigma^2,
//   averaged over `pairs` independent draws. For small sigma, S_t = tr(H_t) / 2 with H_t the
//   Hessian of the mean NLL with respect to W_t. NLL is the mean over the predictions of the first
//   `windows` complete windows of the calibration text, windowed as the perplexity protocol does
//   (llm/perplexity.hpp). Units: nats per token per (weight unit)^2.
// - The response must stay quadratic: sigma small enough that S does not depend on it (the tests
//   check S at sigma and 2 sigma), large enough that float rounding of the NLL does not swamp it.
//   Measured on stories260K (docs/bench/allocation.md): S at 0.01 and 0.02 x RMS agree within 3 %
//   for every matrix; against 0.01 the k_proj of blocks 0-1 read 12-20 % higher at 0.05 and 25-46 %
//   at 0.1 (the softmax of q.k), every other matrix stays within 1.1 % at 0.05.
//   The allocation built on S barely depends on these settings (0.05 vs 0.02, 4 vs 64 windows,
//   1 vs 16 pairs: within the spread of the outcome), so the defaults are the cheap quadratic ones.
// - A tied classifier is the embedding: its S counts both roles (noise in the table moves both).
// - Cost: 2 x pairs forward passes per tensor, but only from the tensor's block on: the clean
//   hidden states entering each block are computed once per window and reused (memory: one
//   [window, dim] matrix per window).
// - Determinism: the noise of pair p of the tensor with model index t (LlamaWeights::names order)
//   comes from Random(seed).split(t).split(p), drawn on the calling thread; windows run in
//   parallel and their NLLs are summed in window order. Same bits for any thread count.
// - Functions that run the model are `template <class = void>`: instantiated when a program calls
//   them, not by every translation unit that includes the header (docs/bench/headers.md).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/random.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/llm/llama_model.hpp"
#include "nwc/llm/perplexity.hpp"

namespace nwc::llm {

struct SensitivityOptions {
    int window = evaluation_window;  ///< tokens per calibration window
    /// The first complete windows of the calibration text. 8 windows x 4 pairs, chosen on calibration
    /// text the allocation never saw (stories260K, tcq at 4 bits per weight, `nwc compress --calib`;
    /// NLL on the calibration text after its first 200,000 bytes, fp32 subtracted): 4 x 2 +0.0433,
    /// 8 x 2 +0.0371, 8 x 4 +0.0340, 16 x 4 +0.0353, at 72 / 88 / 95 / 160 s for the whole run.
    /// The spread is near the allocation's resolution (~0.01, docs/bench/allocation.md); more
    /// windows and pairs mainly make S less noisy (rms log deviation 0.138 at 4 windows, 0.075 at 16).
    int windows = 8;
    int pairs = 4;                   ///< antithetic noise pairs per tensor
    double relative_noise = 0.02;    ///< sigma / RMS of the tensor (quadratic regime, see above)
    bool include_vectors = true;     ///< also the 1-D norm scales (when no names are given)
    /// Also measure, for matrices, noise shaped as per-row and per-column normalized quantization
    /// leaves it (standard deviation proportional to the row's / column's scale, same mean
    /// variance): which normalization axis costs the model least (3x the passes).
    bool shaped = false;
    std::uint64_t seed = 0x53656E73;
    int threads = 1;                 ///< windows in parallel (0: all hardware threads)
};

/// The sensitivity of one tensor.
struct TensorSensitivity {
    std::string name;
    std::int64_t weights = 0;
    double rms = 0.0;             ///< sqrt(mean W^2)
    double noise_std = 0.0;       ///< sigma used (absolute)
    double sensitivity = 0.0;     ///< S: mean NLL rise per unit of per-weight noise variance
    double standard_error = 0.0;  ///< of S over the pairs (0 with one pair)
    std::vector<double> per_pair; ///< S of each pair
    /// S for noise shaped per row / per column (options.shaped; NaN when not measured), per unit of
    /// MEAN per-weight variance, so each multiplies that axis's per-weight MSE like `sensitivity`.
    double per_row_sensitivity = std::numeric_limits<double>::quiet_NaN();
    double per_column_sensitivity = std::numeric_limits<double>::quiet_NaN();

    /// The predicted rise of the mean NLL for a coding error of per-weight mean square `mse`.
    double predicted_loss(double mse) const noexcept { return sensitivity * mse; }
};

struct SensitivityReport {
    double base_nll = 0.0;             ///< mean NLL of the unperturbed model on the windows
    std::int64_t windows = 0;
    std::int64_t predictions = 0;      ///< windows x (window - 1)
    std::vector<TensorSensitivity> tensors;  ///< in model order

    /// errc::invalid_argument for a tensor that was not measured.
    const TensorSensitivity& at(std::string_view name) const {
        for (const TensorSensitivity& tensor : tensors)
            if (tensor.name == name) return tensor;
        fail(errc::invalid_argument, "no sensitivity was measured for tensor '", name, "'");
    }
};

namespace detail {

/// Where noise in a tensor first acts: -1 the embedding, 0..L-1 a block, L the final norm/classifier.
inline int sensitivity_stage(const LlamaConfig& config, std::string_view name) {
    if (name == "model.embed_tokens.weight") return -1;
    if (name == "model.norm.weight" || name == "lm_head.weight") return config.n_layers;
    const std::string_view prefix = "model.layers.";
    NWC_ASSERT(name.starts_with(prefix));
    return std::stoi(std::string(name.substr(prefix.size())));
}

/// Sum of the NLL of one window's predictions from the hidden states entering block `first_layer`.
template <class = void>
double window_nll_from(const LlamaModel& model, Activations hidden, int first_layer, std::span<const int> window) {
    for (int layer = first_layer; layer < model.config().n_layers; ++layer) model.forward_block(layer, hidden);
    const Activations logits = model.classify(model.final_norm(hidden));
    double total = 0.0;
    Eigen::ArrayXd row;
    for (Eigen::Index t = 0; t + 1 < logits.rows(); ++t) {  // the arithmetic of window_nll (perplexity.hpp)
        row = logits.row(t).transpose().cast<double>().array();
        const double max = row.maxCoeff();
        total += max + std::log((row - max).exp().sum()) - row(window[std::size_t(t) + 1]);
    }
    return total;
}

/// Per-weight noise gains of per-row and per-column shaped noise for matrix `weights`: the row's
/// (column's) standard deviation over the root mean square of all of them, so the mean variance
/// stays that of uniform noise (a zero row gets no noise, as its quantization has no error).
inline std::vector<std::vector<double>> shape_gains(const Tensor<float>& weights) {
    const std::int64_t rows = weights.rows(), cols = weights.cols();
    std::vector<std::vector<double>> gains;
    for (const bool by_row : {true, false}) {
        const std::int64_t groups = by_row ? rows : cols, members = by_row ? cols : rows;
        std::vector<double> mean(std::size_t(groups), 0.0), variance(std::size_t(groups), 0.0);
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) mean[std::size_t(by_row ? r : c)] += double(weights(r, c)) / double(members);
        for (std::int64_t r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < cols; ++c) {
                const std::size_t g = std::size_t(by_row ? r : c);
                variance[g] += (double(weights(r, c)) - mean[g]) * (double(weights(r, c)) - mean[g]) / double(members);
            }
        double mean_variance = 0.0;
        for (double value : variance) mean_variance += value / double(groups);
        std::vector<double> gain(std::size_t(rows * cols), 1.0);
        if (mean_variance > 0.0)
            for (std::int64_t r = 0; r < rows; ++r)
                for (std::int64_t c = 0; c < cols; ++c) gain[std::size_t(r * cols + c)] = std::sqrt(variance[std::size_t(by_row ? r : c)] / mean_variance);
        gains.push_back(std::move(gain));
    }
    return gains;
}

}  // namespace detail

/// Measures S for the tensors named in `names` (all tensors when empty; 2-D only unless
/// options.include_vectors) of `model` on `tokens` (tokenize_for_evaluation). Throws
/// errc::invalid_argument for bad options, too few tokens or an unknown name.
template <class = void>
SensitivityReport measure_sensitivities(const LlamaModel& model, std::span<const int> tokens, const SensitivityOptions& options = {},
                                               std::span<const std::string> names = {}) {
    const LlamaConfig& config = model.config();
    require(options.window >= 2 && options.window <= config.seq_len, errc::invalid_argument, "sensitivity: window ", options.window, " outside [2, ",
            config.seq_len, "]");
    require(options.windows >= 1 && options.pairs >= 1, errc::invalid_argument, "sensitivity: ", options.windows, " windows and ", options.pairs,
            " pairs (need at least one of each)");
    require(std::isfinite(options.relative_noise) && options.relative_noise > 0.0, errc::invalid_argument, "sensitivity: relative noise ",
            options.relative_noise, " must be positive");
    std::vector<std::span<const int>> windows = cut_windows(tokens, options.window);
    require(std::int64_t(windows.size()) >= options.windows, errc::invalid_argument, "sensitivity: ", tokens.size(), " tokens give ",
            windows.size(), " windows of ", options.window, ", ", options.windows, " requested");
    windows.resize(std::size_t(options.windows));

    // The tensors to measure, with their model index (the noise stream) and stage.
    const std::vector<std::string> all_names = model.weights().names();
    struct Job {
        std::string name;
        std::uint64_t index;
        int stage;
    };
    std::vector<Job> jobs;
    for (std::size_t index = 0; index < all_names.size(); ++index) {
        const std::string& name = all_names[index];
        const bool wanted = names.empty() ? (options.include_vectors || model.weights().tensor(name).shape().rank() == 2)
                                          : std::find(names.begin(), names.end(), name) != names.end();
        if (wanted) jobs.push_back({name, index, detail::sensitivity_stage(config, name)});
    }
    for (const std::string& name : names)
        require(model.weights().contains(name), errc::invalid_argument, "sensitivity: the model has no tensor '", name, "'");
    std::stable_sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) { return a.stage < b.stage; });

    SensitivityReport report;
    report.windows = options.windows;
    report.predictions = std::int64_t(windows.size()) * (options.window - 1);
    LlamaModel working = model;  // perturbed one tensor at a time, restored after each
    const Random root(options.seed);
    std::vector<double> per_window(windows.size());
    // Mean NLL of `m` from the states entering `stage` (-1: from the tokens).
    const auto mean_nll = [&](const LlamaModel& m, const std::vector<Activations>& states, int stage) {
        parallel_for(std::int64_t(windows.size()), options.threads, [&](std::int64_t w) {
            const std::size_t i = std::size_t(w);
            per_window[i] = stage < 0 ? detail::window_nll_from(m, m.embed(windows[i]), 0, windows[i])
                                      : detail::window_nll_from(m, states[i], stage, windows[i]);
        });
        double total = 0.0;
        for (double value : per_window) total += value;  // window order: thread-count independent
        return total / double(report.predictions);
    };

    std::vector<Activations> states;  // clean hidden states entering block `stage` (unused for -1)
    int states_stage = -1;
    report.base_nll = mean_nll(model, states, -1);
    for (std::size_t first = 0; first < jobs.size();) {
        const int stage = jobs[first].stage;
        if (stage >= 0) {  // advance the clean states to this stage
            if (states_stage < 0) {
                states.resize(windows.size());
                for (std::size_t i = 0; i < windows.size(); ++i) states[i] = model.embed(windows[i]);
                states_stage = 0;
            }
            for (; states_stage < stage; ++states_stage)
                parallel_for(std::int64_t(windows.size()), options.threads,
                             [&](std::int64_t w) { model.forward_block(states_stage, states[std::size_t(w)]); });
        }
        // The base on the same arithmetic path as the perturbed runs, so their difference is exact.
        const double base = stage < 0 ? report.base_nll : mean_nll(model, states, stage);
        for (; first < jobs.size() && jobs[first].stage == stage; ++first) {
            const Job& job = jobs[first];
            const Tensor<float>& original = model.weights().tensor(job.name);
            TensorSensitivity result;
            result.name = job.name;
            result.weights = original.numel();
            double squares = 0.0;
            for (float value : original.values()) squares += double(value) * double(value);
            result.rms = std::sqrt(squares / double(std::max<std::int64_t>(result.weights, 1)));
            result.noise_std = options.relative_noise * (result.rms > 0.0 ? result.rms : 1.0);
            const double variance = result.noise_std * result.noise_std;
            Tensor<float> noise(original.shape()), perturbed(original.shape());
            // Noise shapes: uniform, then (matrices, options.shaped) per row and per column, all from
            // the same draws so their differences are measured with little noise of their own.
            const bool shaped = options.shaped && original.shape().rank() == 2;
            const std::vector<std::vector<double>> gains = shaped ? detail::shape_gains(original) : std::vector<std::vector<double>>{};
            std::vector<double> shaped_sums(gains.size(), 0.0);
            for (int pair = 0; pair < options.pairs; ++pair) {
                Random random = root.split(job.index).split(std::uint64_t(pair));
                for (float& value : noise.values()) value = float(result.noise_std * double(random.normal()));
                const auto pair_response = [&](const std::vector<double>* gain) {
                    double sum = 0.0;
                    for (const float sign : {1.0f, -1.0f}) {
                        for (std::int64_t i = 0; i < result.weights; ++i)
                            perturbed.data()[i] = original.data()[i] + sign * noise.data()[i] * (gain ? float((*gain)[std::size_t(i)]) : 1.0f);
                        working.replace_weight(job.name, perturbed);
                        sum += mean_nll(working, states, stage);
                    }
                    return (sum / 2.0 - base) / variance;
                };
                result.per_pair.push_back(pair_response(nullptr));
                for (std::size_t g = 0; g < gains.size(); ++g) shaped_sums[g] += pair_response(&gains[g]) / double(options.pairs);
            }
            if (shaped) result.per_row_sensitivity = shaped_sums[0], result.per_column_sensitivity = shaped_sums[1];
            working.replace_weight(job.name, original);
            double mean = 0.0, spread = 0.0;
            for (double value : result.per_pair) mean += value / double(options.pairs);
            for (double value : result.per_pair) spread += (value - mean) * (value - mean);
            result.sensitivity = mean;
            result.standard_error = options.pairs > 1 ? std::sqrt(spread / double(options.pairs - 1) / double(options.pairs)) : 0.0;
            report.tensors.push_back(std::move(result));
        }
    }
    // Back to model order.
    std::vector<TensorSensitivity> ordered;
    for (const std::string& name : all_names)
        for (TensorSensitivity& tensor : report.tensors)
            if (tensor.name == name) ordered.push_back(std::move(tensor));
    report.tensors = std::move(ordered);
    return report;
}

}  // namespace nwc::llm
