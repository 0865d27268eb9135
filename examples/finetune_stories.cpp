// Sequential compression of a Llama model with a b-bit round-to-nearest encoder (group 32), with
// and without inter-layer fine-tuning, and the perplexity of each result.
//
//   nwc_example_finetune_stories MODEL TOKENIZER CALIBRATION.txt EVALUATION.txt [key=value ...]
//
// keys: bits (3), group (32), epochs (4), lr (3e-3), windows (32), validation (4), window (256),
//       step (4: windows per Adam step), threads (1), seed, target (block|model), grouped (1),
//       eval_windows (-1: all), verbose (0: 1 prints every step), runs (both|finetune|plain)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "nwc/core/error.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/sequential_compression.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/quant/round_to_nearest.hpp"

using namespace nwc::llm;

namespace {

std::string read_text(const char* path) {
    const std::vector<std::uint8_t> bytes = nwc::read_file(path);
    return std::string(bytes.begin(), bytes.end());
}

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s MODEL TOKENIZER CALIBRATION.txt EVALUATION.txt [key=value ...]\n", argv[0]);
        return 2;
    }
    std::map<std::string, std::string> settings;
    for (int i = 5; i < argc; ++i) {
        const std::string argument = argv[i];
        const std::size_t equals = argument.find('=');
        if (equals == std::string::npos) {
            std::fprintf(stderr, "expected key=value, got '%s'\n", argv[i]);
            return 2;
        }
        settings[argument.substr(0, equals)] = argument.substr(equals + 1);
    }
    auto get = [&](const std::string& key, const std::string& fallback) { return settings.count(key) ? settings[key] : fallback; };

    const LlamaWeights weights = nwc::read_llama_weights(argv[1]);
    const Tokenizer tokenizer = Tokenizer::read(argv[2], weights.config.vocab_size);
    const std::vector<int> calibration = tokenize_for_evaluation(tokenizer, read_text(argv[3]));
    const std::vector<int> evaluation = tokenize_for_evaluation(tokenizer, read_text(argv[4]));

    const int bits = std::stoi(get("bits", "3")), group = std::stoi(get("group", "32"));
    SequentialCompressionOptions options;
    options.window = std::stoi(get("window", "256"));
    options.windows = std::stoi(get("windows", "32"));
    options.validation_windows = std::stoi(get("validation", "4"));
    options.threads = std::stoi(get("threads", "1"));
    options.group_shared_inputs = get("grouped", "1") == "1";
    options.target = get("target", "block") == "model" ? FinetuneTarget::original_model : FinetuneTarget::original_block;
    options.finetune_options.epochs = std::stoi(get("epochs", "4"));
    options.finetune_options.learning_rate = std::stod(get("lr", "3e-3"));
    options.finetune_options.windows_per_step = std::stoi(get("step", "4"));
    options.finetune_options.seed = std::stoull(get("seed", "7235427"));
    const bool verbose = get("verbose", "0") == "1";
    const std::string runs = get("runs", "both");
    PerplexityOptions evaluation_options;
    evaluation_options.threads = options.threads;
    evaluation_options.max_windows = std::stoll(get("eval_windows", "-1"));

    const QuantizeFunction rtn = [&](const std::string&, const nwc::Tensor<float>& weight, const nwc::Tensor<double>*) {
        return nwc::RoundToNearest({bits, group, nwc::RoundingScheme::signed_max}).quantize(weight.view());
    };
    if (verbose)
        options.progress = [](const SequentialStepReport& step) {
            for (const SequentialTensorReport& tensor : step.tensors)
                std::printf("  %-44s proxy %.5f  rel.mse %.5f\n", tensor.name.c_str(), tensor.proxy_loss, tensor.relative_mse);
            if (step.layer >= 0)
                std::printf("    block %d output MSE (held-out): coded %.6g -> fine-tuned %.6g (%d epochs, best %d)\n", step.layer,
                            step.block_mse_coded, step.block_mse_finetuned, step.finetune.epochs_run, step.finetune.best_epoch);
        };

    const auto baseline = evaluate_perplexity(LlamaModel(weights), evaluation, evaluation_options);
    std::printf("fp32 baseline: perplexity %.4f over %lld windows of %d\n", baseline.perplexity, (long long)baseline.window_count,
                evaluation_options.window);
    for (const bool finetune : {false, true}) {
        if ((finetune && runs == "plain") || (!finetune && runs == "finetune")) continue;
        LlamaModel model{LlamaWeights(weights)};
        options.finetune = finetune;
        const auto start = std::chrono::steady_clock::now();
        const SequentialCompressionReport report = compress_sequentially(model, calibration, rtn, options);
        const double compress_seconds = seconds_since(start);
        double coded = 0.0, tuned = 0.0;
        for (const SequentialStepReport& step : report.steps)
            if (step.layer >= 0) coded += step.block_mse_coded, tuned += step.block_mse_finetuned;
        const auto result = evaluate_perplexity(model, evaluation, evaluation_options);
        std::printf("%d-bit RTN g%d, sequential, fine-tuning %s: perplexity %.4f (compression %.1f s; sum of held-out block MSEs coded %.5g, final %.5g)\n",
                    bits, group, finetune ? "on " : "off", result.perplexity, compress_seconds, coded, tuned);
    }
    return 0;
} catch (const nwc::error& failure) {
    std::fprintf(stderr, "error: %s\n", failure.what());
    return 1;
}
