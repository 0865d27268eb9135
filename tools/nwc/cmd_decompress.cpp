// nwc decompress: a .nwc file back into safetensors or a llama2.c model.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arguments.hpp"
#include "commands.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

constexpr const char* decompress_help = R"(usage: nwc decompress IN.nwc -o OUT.safetensors|OUT.bin [options]

Decodes every tensor of a .nwc file (segments in parallel) and writes the model: OUT.safetensors
(the original names, shapes and dtypes) or OUT.bin (llama2.c, for files made from a llama2.c or
Hugging Face Llama model). The output is written atomically: on any failure an existing OUT is
left untouched.

options:
  -o, --output FILE   OUT.safetensors or OUT.bin (required)
  --threads N         worker threads (default 0: all cores); the output never depends on it
  --json              print a summary as JSON on stdout
  --help              this text

exit codes: 0 ok, 1 bad input (unreadable, corrupt or unsupported file), 2 usage
)";

}  // namespace

int run_decompress(const std::vector<std::string>& raw_arguments) {
    const Arguments arguments(expand_short_options(raw_arguments), {"output", "threads"}, {"json", "help"});
    if (arguments.flag("help")) {
        std::fputs(decompress_help, stdout);
        return exit_ok;
    }
    if (arguments.positional().size() != 1) throw UsageError(std::string("expected one input .nwc file, got ") + std::to_string(arguments.positional().size()));
    if (!arguments.has("output")) throw UsageError("missing -o OUT.safetensors or -o OUT.bin");
    const std::string input = arguments.positional()[0], output = arguments.get("output");
    const std::string extension = std::filesystem::path(output).extension().string();
    if (extension != ".safetensors" && extension != ".bin") throw UsageError("the output must end in .safetensors or .bin, not '" + output + "'");
    const int threads = int(arguments.get_integer("threads", 0));
    if (threads < 0) throw UsageError("--threads must be >= 0");

    const auto start = std::chrono::steady_clock::now();
    const ContainerReader reader = ContainerReader::open(input);
    ProgressBar progress;
    const ModelFile model = DefaultCodec::decompress_model(reader, threads, progress.callback());
    const double decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    write_model_file(model, output);
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (arguments.flag("json")) {
        const nlohmann::json root = {{"input", input},       {"output", output},         {"source_format", std::string(model_format_name(model.format))},
                                     {"tensors", model.tensors.size()}, {"weights", model.weight_count()}, {"decode_seconds", decode_seconds},
                                     {"seconds", seconds}};
        std::printf("%s\n", root.dump(2).c_str());
    } else {
        std::printf("%s -> %s: %zu tensors, %lld weights (%s), %.2f s\n", input.c_str(), output.c_str(), model.tensors.size(),
                    static_cast<long long>(model.weight_count()), std::string(model_format_name(model.format)).c_str(), seconds);
    }
    return exit_ok;
}

}  // namespace nwc::cli
