// nwc decompress: a .nwc file back into safetensors or a llama2.c model.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

struct DecompressSettings {
    std::string output;
    int threads = 0;  // all cores (the library's functions take the count explicitly)
};

struct DecompressCommand {
    using Settings = DecompressSettings;

    static CommandText text() {
        return {.name = "decompress",
                .usage = "IN.nwc -o OUT.safetensors|OUT.bin [options]",
                .description = R"(Decodes every tensor of a .nwc file (segments in parallel) and writes the model: OUT.safetensors
(the original names, shapes and dtypes) or OUT.bin (llama2.c, for files made from a llama2.c or
Hugging Face Llama model). The output is written atomically: on any failure an existing OUT is
left untouched.)",
                .positional = "input .nwc file",
                .min_positional = 1,
                .max_positional = 1,
                .bad_input = "unreadable, corrupt or unsupported file"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        table.value("output", "FILE", "OUT.safetensors or OUT.bin", settings.output).with_short('o').mark_required();
        table.value("threads", "N", "worker threads, 0 = all cores; the output never depends on it", settings.threads).at_least(0);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation&) {
        const std::string& input = positional[0];
        const std::string& output = settings.output;
        const std::string extension = std::filesystem::path(output).extension().string();
        if (extension != ".safetensors" && extension != ".bin") throw UsageError("the output must end in .safetensors or .bin, not '" + output + "'");

        const auto start = std::chrono::steady_clock::now();
        const ContainerReader reader = ContainerReader::open(input);
        ProgressBar progress;
        const ModelFile model = DefaultCodec::decompress_model(reader, settings.threads, progress.callback());
        const double decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        write_model_file(model, output);
        progress.finish();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

        Outcome outcome;
        outcome.json = {{"input", input},
                        {"output", output},
                        {"source_format", std::string(model_format_name(model.format))},
                        {"tensors", model.tensors.size()},
                        {"weights", model.weight_count()},
                        {"decode_seconds", decode_seconds},
                        {"seconds", seconds}};
        append_format(outcome.text, "%s -> %s: %zu tensors, %lld weights (%s), %.2f s\n", input.c_str(), output.c_str(), model.tensors.size(),
                      static_cast<long long>(model.weight_count()), std::string(model_format_name(model.format)).c_str(), seconds);
        return outcome;
    }
};

}  // namespace

int run_decompress(const std::vector<std::string>& arguments) { return command_main<DecompressCommand>(arguments); }
Outcome invoke_decompress(const std::vector<std::string>& arguments, const Invocation& invocation) {
    return invoke<DecompressCommand>(arguments, invocation);
}

}  // namespace nwc::cli
