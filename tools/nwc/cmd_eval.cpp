// nwc eval: perplexity of a plain model (llama2.c .bin, or HF safetensors + config.json) on a text
// file, under the project's fixed protocol (include/nwc/llm/perplexity.hpp).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

struct EvalSettings {
    llm::PerplexityOptions perplexity;
    std::string text, tokenizer;

    EvalSettings() { perplexity.threads = 0; }  // the tool uses every core unless told otherwise
};

struct EvalCommand {
    using Settings = EvalSettings;

    static CommandText text() {
        return {.name = "eval",
                .usage = "MODEL --text FILE --tokenizer TOK [options]",
                .description = R"(Perplexity of MODEL on the text FILE: the whole file is tokenized once (llama2.c's tokenizer TOK,
one BOS at the start), cut into windows (the partial last window is dropped), every window is run
on its own and predicts its tokens 2..window. Reports the mean negative log-likelihood in nats per
predicted token and the perplexity exp(NLL).

MODEL is a compressed .nwc file (decoded on the fly), a llama2.c file (.bin), a Hugging Face model
directory (config.json + model.safetensors or a sharded model.safetensors.index.json) or a
.safetensors file with config.json beside it.)",
                .positional = "MODEL",
                .min_positional = 1,
                .max_positional = 1,
                .bad_input = "unreadable or corrupt model, tokenizer or text"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        table.value("text", "FILE", "text to evaluate", settings.text).mark_required();
        table.value("tokenizer", "TOK", "llama2.c tokenizer.bin matching the model's vocabulary", settings.tokenizer).mark_required();
        table.value("threads", "N", "worker threads, 0 = all cores; results do not depend on it", settings.perplexity.threads).at_least(0);
        table.value("window", "N", "tokens per window, at most the model's seq_len", settings.perplexity.window).at_least(2);
        table.value("max-windows", "N", "evaluate only the first N windows", settings.perplexity.max_windows).shows_default("all").at_least(1);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation);
};

/// Whether `path` holds an .nwc container (by its magic bytes, not its name).
bool is_container(const std::string& path) {
    std::uint8_t head[sizeof container_format::magic] = {};
    if (FILE* file = std::fopen(path.c_str(), "rb")) {
        const std::size_t read = std::fread(head, 1, sizeof head, file);
        std::fclose(file);
        return read == sizeof head && std::memcmp(head, container_format::magic, sizeof head) == 0;
    }
    return false;
}

/// The weights of MODEL. A .nwc file is decoded in memory first, with the decoder embedded in it:
/// `nwc eval x.nwc` equals `nwc eval` of its decompressed output (tests/test_pipeline.cpp checks it).
llm::LlamaWeights load_weights(const std::string& model_path, bool compressed, int threads) {
    if (!compressed) return read_llama_weights(model_path);
    const ContainerReader reader = ContainerReader::open(model_path);
    const ModelFile decoded = DefaultCodec::decompress_model(reader, threads);
    std::optional<llm::LlamaWeights> weights = llama_weights_of(decoded, model_path);
    require(weights.has_value(), errc::unsupported, "'", model_path, "' does not hold a Llama model");
    return std::move(*weights);
}

Outcome EvalCommand::run(const Settings& settings, const std::vector<std::string>& positional, const Invocation&) {
    const auto start = std::chrono::steady_clock::now();
    const std::string& model_path = positional.front();
    const bool compressed = is_container(model_path);
    const std::string format_text = compressed ? "nwc" : std::string(model_format_name(detect_model_format(model_path)));
    const llm::LlamaModel model(load_weights(model_path, compressed, settings.perplexity.threads));
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(settings.tokenizer, model.config().vocab_size);
    const std::vector<std::uint8_t> text = read_file(settings.text);
    const std::vector<int> tokens = llm::tokenize_for_evaluation(tokenizer, {reinterpret_cast<const char*>(text.data()), text.size()});
    const auto tokenized = std::chrono::steady_clock::now();
    const llm::PerplexityResult result = llm::evaluate_perplexity(model, tokens, settings.perplexity);
    const auto done = std::chrono::steady_clock::now();
    const double total_seconds = std::chrono::duration<double>(done - start).count();
    const double eval_seconds = std::chrono::duration<double>(done - tokenized).count();
    const int threads = resolve_thread_count(settings.perplexity.threads);
    const int window = settings.perplexity.window;

    Outcome outcome;
    outcome.json = {{"model", model_path},         {"format", format_text},
                    {"text", settings.text},        {"tokens", result.token_count},
                    {"window", window},             {"windows", result.window_count},
                    {"predictions", result.prediction_count}, {"mean_nll", result.mean_nll},
                    {"perplexity", result.perplexity}, {"threads", threads},
                    {"seconds", total_seconds},     {"eval_seconds", eval_seconds}};
    const llm::LlamaConfig& c = model.config();
    std::string& out = outcome.text;
    append_format(out, "model        %s (%s: %d layers, dim %d, %d heads / %d kv, vocab %d)\n", model_path.c_str(), format_text.c_str(), c.n_layers, c.dim,
                  c.n_heads, c.n_kv_heads, c.vocab_size);
    append_format(out, "tokens       %lld\n", static_cast<long long>(result.token_count));
    append_format(out, "windows      %lld of %d tokens\n", static_cast<long long>(result.window_count), window);
    append_format(out, "predictions  %lld\n", static_cast<long long>(result.prediction_count));
    append_format(out, "mean NLL     %.6f nats/token\n", result.mean_nll);
    append_format(out, "perplexity   %.5f\n", result.perplexity);
    append_format(out, "time         %.2f s (%.2f s evaluating, %d threads)\n", total_seconds, eval_seconds, threads);
    return outcome;
}

}  // namespace

int run_eval(const std::vector<std::string>& arguments) { return command_main<EvalCommand>(arguments); }

}  // namespace nwc::cli
