// nwc eval: perplexity of a plain model (llama2.c .bin, or HF safetensors + config.json) on a text
// file, under the project's fixed protocol (include/nwc/llm/perplexity.hpp).
#include <chrono>
#include <filesystem>
#include <optional>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arguments.hpp"
#include "commands.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/pipeline/pipeline.hpp"

namespace nwc::cli {
namespace {

constexpr const char* eval_help = R"(usage: nwc eval MODEL --text FILE --tokenizer TOK [options]

Perplexity of MODEL on the text FILE: the whole file is tokenized once (llama2.c's tokenizer TOK,
one BOS at the start), cut into windows of 512 tokens (the partial last window is dropped), every
window is run on its own and predicts its tokens 2..512. Reports the mean negative log-likelihood
in nats per predicted token and the perplexity exp(NLL).

MODEL is a compressed .nwc file (decoded on the fly), a llama2.c file (.bin), a Hugging Face model directory (config.json + model.safetensors
or a sharded model.safetensors.index.json) or a .safetensors file with config.json beside it.

options:
  --text FILE            text to evaluate (required)
  --tokenizer TOK        llama2.c tokenizer.bin matching the model's vocabulary (required)
  --threads N            worker threads, 0 = all (default 0); results do not depend on it
  --window N             tokens per window (default 512, at most the model's seq_len)
  --max-windows N        evaluate only the first N windows
  --json                 print one JSON object instead of text
)";

}  // namespace

int run_eval(const std::vector<std::string>& arguments) {
    for (const auto& argument : arguments) {
        if (argument == "--help" || argument == "-h") {
            std::printf("%s", eval_help);
            return exit_ok;
        }
    }
    const Arguments args(arguments, {"text", "tokenizer", "threads", "window", "max-windows"}, {"json"});
    if (args.positional().size() != 1) throw UsageError(args.positional().empty() ? "no MODEL given" : "exactly one MODEL expected");
    if (!args.has("text")) throw UsageError("--text FILE is required");
    if (!args.has("tokenizer")) throw UsageError("--tokenizer TOK is required");
    llm::PerplexityOptions options;
    options.threads = int(args.get_integer("threads", 0));
    options.window = int(args.get_integer("window", llm::evaluation_window));
    options.max_windows = args.get_integer("max-windows", -1);
    if (options.threads < 0) throw UsageError("--threads must be >= 0");
    if (options.window < 2) throw UsageError("--window must be at least 2");
    if (args.has("max-windows") && options.max_windows < 1) throw UsageError("--max-windows must be at least 1");

    const auto start = std::chrono::steady_clock::now();
    const std::string model_path = args.positional().front();
    // A .nwc file is decoded in memory first, with the decoder embedded in it: `nwc eval x.nwc`
    // equals `nwc eval` of its decompressed output (tests/test_pipeline.cpp checks it).
    const bool compressed = std::filesystem::path(model_path).extension() == ".nwc";
    const auto load = [&]() -> llm::LlamaWeights {
        if (!compressed) return read_llama_weights(model_path);
        const ContainerReader reader = ContainerReader::open(model_path);
        const ModelFile decoded = DefaultCodec::decompress_model(reader, options.threads);
        std::optional<llm::LlamaWeights> weights = llama_weights_of(decoded, model_path);
        require(weights.has_value(), errc::unsupported, "'", model_path, "' does not hold a Llama model");
        return std::move(*weights);
    };
    const char* format_text = compressed ? "nwc" : model_format_name(detect_model_format(model_path)).data();
    const llm::LlamaModel model(load());
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(args.get("tokenizer"), model.config().vocab_size);
    const std::vector<std::uint8_t> text = read_file(args.get("text"));
    const std::vector<int> tokens = llm::tokenize_for_evaluation(tokenizer, {reinterpret_cast<const char*>(text.data()), text.size()});
    const auto tokenized = std::chrono::steady_clock::now();
    const llm::PerplexityResult result = llm::evaluate_perplexity(model, tokens, options);
    const auto done = std::chrono::steady_clock::now();
    const double total_seconds = std::chrono::duration<double>(done - start).count();
    const double eval_seconds = std::chrono::duration<double>(done - tokenized).count();

    const llm::LlamaConfig& c = model.config();
    if (args.flag("json")) {
        const nlohmann::json report = {{"model", model_path},
                                       {"format", format_text},
                                       {"text", args.get("text")},
                                       {"tokens", result.token_count},
                                       {"window", options.window},
                                       {"windows", result.window_count},
                                       {"predictions", result.prediction_count},
                                       {"mean_nll", result.mean_nll},
                                       {"perplexity", result.perplexity},
                                       {"threads", resolve_thread_count(options.threads)},
                                       {"seconds", total_seconds},
                                       {"eval_seconds", eval_seconds}};
        std::printf("%s\n", report.dump().c_str());
    } else {
        std::printf("model        %s (%s: %d layers, dim %d, %d heads / %d kv, vocab %d)\n", model_path.c_str(), format_text, c.n_layers,
                    c.dim, c.n_heads, c.n_kv_heads, c.vocab_size);
        std::printf("tokens       %lld\n", static_cast<long long>(result.token_count));
        std::printf("windows      %lld of %d tokens\n", static_cast<long long>(result.window_count), options.window);
        std::printf("predictions  %lld\n", static_cast<long long>(result.prediction_count));
        std::printf("mean NLL     %.6f nats/token\n", result.mean_nll);
        std::printf("perplexity   %.5f\n", result.perplexity);
        std::printf("time         %.2f s (%.2f s evaluating, %d threads)\n", total_seconds, eval_seconds, resolve_thread_count(options.threads));
    }
    return exit_ok;
}

}  // namespace nwc::cli
