// Perplexity under the project's fixed protocol.
//
//  1. Tokenize the whole text once, llama2.c's way, with a single BOS at the start (no EOS).
//  2. Cut the tokens into windows of `window` (512) tokens; drop the partial last window.
//  3. Run every window on its own, from position 0, with no extra BOS.
//  4. Score tokens 2..window of every window (window - 1 predictions per window): the negative
//     log-likelihood of token t+1 under the logits at position t, in double.
// Windows run in parallel; per-window sums are reduced in window order, so the result is the
// same for any thread count.
//
// Functions that run the model are `template <class = void>`: instantiated when a program calls
// them, not by every translation unit that includes the header (docs/bench/headers.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/llm/llama_model.hpp"
#include "nwc/llm/tokenizer.hpp"

namespace nwc::llm {

/// The protocol's window length.
inline constexpr int evaluation_window = 512;

/// The token ids of a text under the protocol: the whole text, one BOS at the start.
inline std::vector<int> tokenize_for_evaluation(const Tokenizer& tokenizer, std::string_view text) {
    return tokenizer.encode(text, /*bos=*/true, /*eos=*/false);
}

/// The complete windows of `window` tokens (the partial tail is dropped).
inline std::vector<std::span<const int>> cut_windows(std::span<const int> tokens, int window) {
    require(window >= 2, errc::invalid_argument, "window length ", window, " must be at least 2");
    std::vector<std::span<const int>> windows;
    for (std::size_t start = 0; start + std::size_t(window) <= tokens.size(); start += std::size_t(window))
        windows.push_back(tokens.subspan(start, std::size_t(window)));
    return windows;
}

struct PerplexityOptions {
    int window = evaluation_window;  ///< tokens per window (<= the model's seq_len)
    int threads = 1;                 ///< 0 = all hardware threads
    std::int64_t max_windows = -1;   ///< evaluate only the first max_windows windows (-1: all)
};

struct PerplexityResult {
    std::int64_t token_count = 0;       ///< tokens of the whole text (BOS included)
    std::int64_t window_count = 0;      ///< windows evaluated
    std::int64_t prediction_count = 0;  ///< window_count * (window - 1)
    double total_nll = 0.0;             ///< nats
    double mean_nll = 0.0;              ///< nats per predicted token
    double perplexity = 0.0;            ///< exp(mean_nll)
};

/// Sum of -log p(token[t+1] | tokens[0..t]) over t = 0..T-2 of one window, in double.
template <class = void>
double window_nll(const LlamaModel& model, std::span<const int> window) {
    const Activations logits = model.forward(window);
    double total = 0.0;
    Eigen::ArrayXd row;
    for (Eigen::Index t = 0; t + 1 < logits.rows(); ++t) {
        row = logits.row(t).transpose().cast<double>().array();
        const double max = row.maxCoeff();
        const double log_sum = max + std::log((row - max).exp().sum());
        total += log_sum - row(window[std::size_t(t) + 1]);
    }
    return total;
}

/// Evaluates `tokens` (already tokenized under the protocol). Throws errc::invalid_argument when
/// the text has no complete window, errc::numerical when the model produces a non-finite loss.
template <class = void>
PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int> tokens, const PerplexityOptions& options = {}) {
    require(options.window <= model.config().seq_len, errc::invalid_argument, "perplexity: window ", options.window, " exceeds the model's seq_len ",
            model.config().seq_len);
    std::vector<std::span<const int>> windows = cut_windows(tokens, options.window);
    if (options.max_windows >= 0 && std::int64_t(windows.size()) > options.max_windows) windows.resize(std::size_t(options.max_windows));
    require(!windows.empty(), errc::invalid_argument, "perplexity: ", tokens.size(), " tokens do not fill one window of ", options.window);
    std::vector<double> per_window(windows.size());
    parallel_for(std::int64_t(windows.size()), options.threads, [&](std::int64_t index) {
        per_window[std::size_t(index)] = window_nll(model, windows[std::size_t(index)]);
    });
    PerplexityResult result;
    result.token_count = std::int64_t(tokens.size());
    result.window_count = std::int64_t(windows.size());
    result.prediction_count = result.window_count * (options.window - 1);
    for (double value : per_window) result.total_nll += value;
    result.mean_nll = result.total_nll / double(result.prediction_count);
    result.perplexity = std::exp(result.mean_nll);
    require(std::isfinite(result.mean_nll), errc::numerical, "perplexity: the model produced a non-finite loss");
    return result;
}

/// Tokenizes `text` under the protocol and evaluates it.
template <class = void>
PerplexityResult evaluate_perplexity(const LlamaModel& model, const Tokenizer& tokenizer, std::string_view text,
                                     const PerplexityOptions& options = {}) {
    const std::vector<int> tokens = tokenize_for_evaluation(tokenizer, text);
    return evaluate_perplexity(model, tokens, options);
}

}  // namespace nwc::llm
