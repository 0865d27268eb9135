// nwc decompress: a .nwc file back into safetensors, a llama2.c model or a Hugging Face directory.
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "nwc/io/hf_directory.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/streaming_decompress.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

struct DecompressSettings {
    std::string output;
    std::string shard_size = "5GB";
    int threads = 0;  // all cores (the library's functions take the count explicitly)
    bool in_memory = false;
};

// "5GB", "500MB", "2GiB", "1e9": a size in bytes (UsageError for anything else).
std::uint64_t parse_byte_size(const std::string& text) {
    char* end = nullptr;
    const double number = std::strtod(text.c_str(), &end);
    std::string unit(end);
    for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
    double factor = 0.0;
    if (unit.empty() || unit == "B") factor = 1.0;
    else if (unit == "KB") factor = 1e3;
    else if (unit == "MB") factor = 1e6;
    else if (unit == "GB") factor = 1e9;
    else if (unit == "KIB") factor = 0x1p10;
    else if (unit == "MIB") factor = 0x1p20;
    else if (unit == "GIB") factor = 0x1p30;
    const double bytes = number * factor;
    if (end == text.c_str() || factor == 0.0 || !std::isfinite(bytes) || bytes < 1.0 || bytes > 0x1p62)
        throw UsageError("--shard-size '" + text + "' is not a size such as 5GB, 500MB or 2GiB");
    return std::uint64_t(bytes);
}

struct DecompressCommand {
    using Settings = DecompressSettings;

    static CommandText text() {
        return {.name = "decompress",
                .usage = "IN.nwc -o OUT.safetensors|OUT.bin|DIR/ [options]",
                .description = R"(Decodes every tensor of a .nwc file and writes the model: OUT.safetensors
(the original names, shapes and dtypes), OUT.bin (llama2.c, for files made from a llama2.c or
Hugging Face Llama model), or a Hugging Face directory when OUT ends in '/' or is an existing
empty directory: config.json (for Llama sources), the source directory's other files (tokenizer
files, generation_config.json: the file carries them), safetensors shards of at most --shard-size
and model.safetensors.index.json when there are several, as save_pretrained writes them. Safetensors
outputs (a file or a directory) are streamed: each tensor is decoded, converted and written in
turn, a few tensors in memory at a time; a .bin decodes the whole model first. Outputs are written atomically: on any failure an
existing OUT is left untouched, and a directory is only written when it is absent or empty.)",
                .positional = "input .nwc file",
                .min_positional = 1,
                .max_positional = 1,
                .bad_input = "unreadable, corrupt or unsupported file"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        table.value("output", "FILE", "OUT.safetensors, OUT.bin or DIR/", settings.output).with_short('o').mark_required();
        table.value("shard-size", "SIZE", "largest shard of a directory output: bytes, or with KB, MB, GB (1000s) or KiB, MiB, GiB", settings.shard_size);
        table.value("threads", "N", "worker threads, 0 = all cores; the output never depends on it", settings.threads).at_least(0);
        table.flag("in-memory", "decode the whole model before writing (~3x the model's memory; the same bytes as the streamed default)",
                   settings.in_memory);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation&) {
        const std::string& input = positional[0];
        const std::string& output = settings.output;
        const std::string extension = std::filesystem::path(output).extension().string();
        const bool directory = !output.empty() && (output.back() == '/' || std::filesystem::is_directory(output));
        if (!directory && extension != ".safetensors" && extension != ".bin")
            throw UsageError("the output must end in .safetensors, .bin or '/' (a directory), not '" + output + "'");
        const std::uint64_t shard_bytes = parse_byte_size(settings.shard_size);

        const auto start = std::chrono::steady_clock::now();
        const ContainerReader reader = ContainerReader::open(input);
        std::size_t files = 0;  // the source directory's files the container carries
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) files += nwc::detail::is_source_file(reader.entry(index).name) ? 1 : 0;
        ProgressBar progress;
        // A llama2.c .bin is not streamed (streaming_decompress.hpp): it decodes the whole model.
        const bool streamed = !settings.in_memory && (directory || extension == ".safetensors");
        ModelFormat format = ModelFormat::safetensors;
        std::size_t tensors = 0, shards = 0;
        std::int64_t weights = 0;
        double decode_seconds = 0.0;
        if (streamed) {
            StreamingDecompressor<> decompressor(reader);
            if (directory) shards = decompressor.write_hf_directory(output, shard_bytes, settings.threads, progress.callback()).shards;
            else decompressor.write_safetensors(output, settings.threads, progress.callback());
            format = decompressor.source_format();
            tensors = decompressor.tensor_count();
            weights = decompressor.weight_count();
            decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();  // decoding and writing overlap
        } else {
            const ModelFile model = DefaultCodec::decompress_model(reader, settings.threads, progress.callback());
            decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            if (directory) shards = write_hf_directory(model, output, shard_bytes).shards;
            else write_model_file(model, output);
            format = model.format;
            tensors = model.tensors.size();
            weights = model.weight_count();
        }
        progress.finish();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

        Outcome outcome;
        outcome.json = {{"input", input},
                        {"output", output},
                        {"source_format", std::string(model_format_name(format))},
                        {"tensors", tensors},
                        {"weights", weights},
                        {"decode_seconds", decode_seconds},
                        {"streamed", streamed},
                        {"shards", shards},
                        {"files", directory ? files : 0},
                        {"seconds", seconds}};
        append_format(outcome.text, "%s -> %s: %zu tensors, %lld weights (%s)%s, %.2f s\n", input.c_str(), output.c_str(), tensors,
                      static_cast<long long>(weights), std::string(model_format_name(format)).c_str(),
                      directory && files > 0 ? (", " + std::to_string(files) + " other files").c_str() : "", seconds);
        if (!directory && files > 0)
            append_format(outcome.text, "note: the %zu other files of the source directory (tokenizer, generation config) are written only to a directory output (-o DIR/)\n",
                          files);
        return outcome;
    }
};

}  // namespace

int run_decompress(const std::vector<std::string>& arguments) { return command_main<DecompressCommand>(arguments); }
Outcome invoke_decompress(const std::vector<std::string>& arguments, const Invocation& invocation) {
    return invoke<DecompressCommand>(arguments, invocation);
}

}  // namespace nwc::cli
