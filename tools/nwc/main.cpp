// nwc: compress, decompress, inspect and evaluate language-model weights; train codecs.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "options.hpp"
#include "commands.hpp"
#include "nwc/core/error.hpp"
#include "nwc/version.hpp"

namespace nwc::cli {

const std::vector<Command>& commands() {
    static const std::vector<Command> all = {
        {"compress", "compress a model file (safetensors, llama2.c) into a .nwc file", run_compress},
        {"decompress", "decode a .nwc file back into safetensors or llama2.c", run_decompress},
        {"inspect", "list the tensors of a .nwc file with their rates", run_inspect},
        {"train", "train a codec on the matrices of weight files", run_train},
        {"eval", "perplexity of a model (plain or .nwc) on a text file", run_eval},
        {"report", "rate-distortion report: bits per weight against perplexity per method", run_report},
        {"demo", "compress stories260K, decompress, compare perplexity", run_demo},
    };
    return all;
}

}  // namespace nwc::cli

static void print_help() {
    std::printf("nwc %s: neural weight compression for language models\n\nusage: nwc <command> [options]  (nwc <command> --help for details)\n\ncommands:\n",
                nwc::version_string);
    for (const auto& command : nwc::cli::commands()) std::printf("  %-11s %s\n", command.name, command.summary);
    std::printf("\nexit codes: 0 ok, 1 bad input, 2 usage\n");
}

int main(int argc, char** argv) {
    std::vector<std::string> arguments(argv + 1, argv + argc);
    if (arguments.empty() || arguments[0] == "--help" || arguments[0] == "-h") {
        print_help();
        return arguments.empty() ? nwc::cli::exit_usage : nwc::cli::exit_ok;
    }
    if (arguments[0] == "--version") {
        std::printf("nwc %s\n", nwc::version_string);
        return nwc::cli::exit_ok;
    }
    for (const auto& command : nwc::cli::commands()) {
        if (arguments[0] != command.name) continue;
        try {
            return command.run(std::vector<std::string>(arguments.begin() + 1, arguments.end()));
        } catch (const nwc::cli::UsageError& e) {
            std::fprintf(stderr, "nwc %s: %s (see nwc %s --help)\n", command.name, e.what(), command.name);
            return nwc::cli::exit_usage;
        } catch (const nwc::error& e) {
            std::fprintf(stderr, "nwc %s: %s\n", command.name, e.what());
            return nwc::cli::exit_bad_input;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "nwc %s: %s\n", command.name, e.what());
            return nwc::cli::exit_bad_input;
        }
    }
    std::fprintf(stderr, "nwc: unknown command '%s'\n\n", arguments[0].c_str());
    print_help();
    return nwc::cli::exit_usage;
}
