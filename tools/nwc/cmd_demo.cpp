// nwc demo: the README's first command. Compresses the bundled stories260K model at the default
// target rate with calibration, decompresses it, and compares file sizes and perplexity.
//
// It runs the same code as `nwc compress`, `nwc decompress` and `nwc eval`: it invokes compress and
// decompress with the arguments a user would type, so the demo shows exactly what a user gets.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "method_options.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "pipeline_cli.hpp"

#ifndef NWC_DATA_DIR
#define NWC_DATA_DIR "../shared/data"
#endif

namespace nwc::cli {
namespace {

struct DemoSettings {
    std::string data = NWC_DATA_DIR;
    std::optional<std::string> codec, out;
    MethodOptions method;
    double target_bpw = RateTarget{}.bits_per_weight;
    int threads = 0;  // all cores
    llm::SensitivityOptions sensitivity;  // only windows and pairs: passed to compress

    // The library's default method (tcq): the small shipped neural codecs do not yet beat it at
    // 4 bits per weight on this model (README, Results); --method nwc runs them.
};

/// The files of one demo run.
struct DemoFiles {
    std::string model, tokenizer, calibration, evaluation, compressed, decoded;
    std::filesystem::path out;
};

struct Perplexity {
    double mean_nll = 0.0, perplexity = 0.0;
};

struct DemoCommand {
    using Settings = DemoSettings;

    static CommandText text() {
        return {.name = "demo",
                .usage = "[options]",
                .description = R"(Compresses the stories260K model (llama2.c format) at a target rate, using Hessians from the
calibration text, writes the .nwc file, decompresses it back to a llama2.c file, and prints file
sizes, bits per weight and perplexity on the evaluation text before and after.)",
                .positional = "",
                .min_positional = 0,
                .max_positional = 0,
                .bad_input = "missing data or codec files"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        table.value("data", "DIR", "folder with stories260K.bin, tok512.bin, tinystories_calib.txt and tinystories_eval.txt",
                    settings.data);
        table.value("codec", "FILE[,..]", "codec file(s)", settings.codec).shows_default("every .nwcc file in the shipped codecs/ folder").for_methods(codec_methods());
        declare_method_choice(table, settings.method, "the per-tensor method; the library's default, tcq, measures best here (--method nwc: the shipped neural codecs)",
                              /*rate_only=*/true);
        table.value("target-bpw", "B", "target bits per weight of the whole file", settings.target_bpw).above(0);
        table.value("out", "DIR", "where the .nwc and decoded files go", settings.out).shows_default("nwc-demo in the temp folder");
        table.value("threads", "N", "worker threads, 0 = all cores", settings.threads).at_least(0);
        declare_sensitivity_options(table, settings.sensitivity);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation);
};

DemoFiles demo_files(const DemoSettings& settings) {
    const std::filesystem::path data = settings.data;
    DemoFiles files{(data / "stories260K.bin").string(), (data / "tok512.bin").string(), (data / "tinystories_calib.txt").string(),
                    (data / "tinystories_eval.txt").string(), "", "", settings.out.value_or((std::filesystem::temp_directory_path() / "nwc-demo").string())};
    for (const auto& path : {files.model, files.tokenizer, files.calibration, files.evaluation})
        require(std::filesystem::exists(path), errc::io, "demo: '", path, "' is missing (pass --data DIR, see shared/data/README.md)");
    std::filesystem::create_directories(files.out);
    files.compressed = (files.out / "stories260K.nwc").string();
    files.decoded = (files.out / "stories260K.decoded.bin").string();
    return files;
}

/// The arguments of the `nwc compress` a user would type for this demo.
std::vector<std::string> compress_arguments(const DemoSettings& settings, const DemoFiles& files) {
    std::vector<std::string> arguments = {files.model, "-o", files.compressed, "--method", settings.method.method, "--target-bpw",
                                          number_text(settings.target_bpw), "--calib", files.calibration, "--tokenizer", files.tokenizer,
                                          "--threads", std::to_string(settings.threads), "--sensitivity-windows",
                                          std::to_string(settings.sensitivity.windows), "--sensitivity-pairs", std::to_string(settings.sensitivity.pairs)};
    const std::vector<std::string>& needs_codec = codec_methods();
    if (std::find(needs_codec.begin(), needs_codec.end(), settings.method.method) != needs_codec.end()) {
        const std::string codecs = settings.codec.value_or(default_codec_list());
        if (codecs.empty()) fail(errc::io, "demo: no codec files in '", NWC_CODEC_DIR, "' (pass --codec FILE)");
        arguments.insert(arguments.end(), {"--codec", codecs});
    }
    return arguments;
}

Perplexity perplexity_of(const std::string& model_path, const std::string& tokenizer_path, const std::vector<std::uint8_t>& text, int threads) {
    const llm::LlamaModel model(read_llama_weights(model_path));
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(tokenizer_path, model.config().vocab_size);
    const std::vector<int> tokens = llm::tokenize_for_evaluation(tokenizer, {reinterpret_cast<const char*>(text.data()), text.size()});
    llm::PerplexityOptions options;
    options.threads = threads;
    const llm::PerplexityResult result = llm::evaluate_perplexity(model, tokens, options);
    return {result.mean_nll, result.perplexity};
}

std::int64_t weight_count(const std::string& model_path) {
    const llm::LlamaModel original(read_llama_weights(model_path));
    std::int64_t weights = 0;
    original.weights().for_each_tensor([&](const std::string&, const Tensor<float>& tensor, const Shape&) { weights += tensor.numel(); });
    return weights;
}

Outcome DemoCommand::run(const Settings& settings, const std::vector<std::string>&, const Invocation& invocation) {
    const DemoFiles files = demo_files(settings);
    const std::string method = settings.method.method, target = number_text(settings.target_bpw);
    const auto start = std::chrono::steady_clock::now();
    invocation.progress("== nwc compress (" + method + ", target " + target + " bits/weight, calibrated on " + files.calibration + ")\n");
    const Outcome compressed = invoke_compress(compress_arguments(settings, files), invocation);
    invocation.progress(compressed.text + "\n== nwc decompress\n");
    const Outcome decompressed = invoke_decompress({files.compressed, "-o", files.decoded, "--threads", std::to_string(settings.threads)}, invocation);
    invocation.progress(decompressed.text + "\n== perplexity on " + files.evaluation + "\n");

    const std::vector<std::uint8_t> text = read_file(files.evaluation);
    const Perplexity before = perplexity_of(files.model, files.tokenizer, text, settings.threads);
    const Perplexity after = perplexity_of(files.decoded, files.tokenizer, text, settings.threads);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const std::int64_t weights = weight_count(files.model);
    const auto original_bytes = std::filesystem::file_size(files.model), compressed_bytes = std::filesystem::file_size(files.compressed);
    const double original_bpw = 8.0 * double(original_bytes) / double(weights), compressed_bpw = 8.0 * double(compressed_bytes) / double(weights);

    Outcome outcome;
    outcome.json = {{"compress", compressed.json},
                    {"decompress", decompressed.json},
                    {"weights", weights},
                    {"original", {{"file", files.model}, {"bytes", original_bytes}, {"bits_per_weight", original_bpw}, {"mean_nll", before.mean_nll}, {"perplexity", before.perplexity}}},
                    {"compressed", {{"file", files.compressed}, {"bytes", compressed_bytes}, {"bits_per_weight", compressed_bpw}, {"mean_nll", after.mean_nll}, {"perplexity", after.perplexity}}},
                    {"perplexity_change", after.perplexity / before.perplexity - 1.0},
                    {"seconds", seconds}};
    std::string& out = outcome.text;
    append_format(out, "\n%-28s %12s %14s %12s %10s\n", "file", "bytes", "bits/weight", "mean NLL", "perplexity");
    append_format(out, "%-28s %12llu %14.4f %12.5f %10.4f\n", "stories260K.bin (fp32)", static_cast<unsigned long long>(original_bytes), original_bpw,
                  before.mean_nll, before.perplexity);
    append_format(out, "%-28s %12llu %14.4f %12.5f %10.4f\n", ("stories260K.nwc (" + method + ")").c_str(), static_cast<unsigned long long>(compressed_bytes),
                  compressed_bpw, after.mean_nll, after.perplexity);
    append_format(out, "\n%lld weights; compressed %.1fx smaller; perplexity %+.2f%%; %.1f s in all. Files in %s\n", static_cast<long long>(weights),
                  double(original_bytes) / double(compressed_bytes), 100.0 * (after.perplexity / before.perplexity - 1.0), seconds, files.out.string().c_str());
    return outcome;
}

}  // namespace

int run_demo(const std::vector<std::string>& arguments) { return command_main<DemoCommand>(arguments); }

}  // namespace nwc::cli
