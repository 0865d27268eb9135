// nwc compress: a model file (safetensors, llama2.c, HF Llama directory) into a .nwc file.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arguments.hpp"
#include "commands.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

constexpr const char* compress_help = R"(usage: nwc compress IN -o OUT.nwc [options]

Compresses every tensor of a model into one .nwc file. IN is a safetensors file, a llama2.c model
(.bin) or a Hugging Face Llama directory (config.json + model.safetensors); the format is detected
from the content. Matrices with both sides >= 16 (embeddings included) are coded with the method;
1-D and small tensors are stored as they are. The output is written atomically: on any failure an
existing OUT is left untouched.

options:
  -o, --output FILE      the .nwc file to write (required)
  --method M             nwc (default), ecsq, gptq or rtn
  --codec FILE[,FILE..]  trained codec file(s) (.nwcc) for --method nwc (default: $NWC_CODEC, else
                         every codec shipped in codecs/); of several, the one whose file lands
                         nearest the target (--target-bpw, else 4 bits per weight) is used
  --target-bpw B         choose the rate so that the WHOLE file has B bits per weight
                         (8 x file bytes / weights of the input) within 1%: ecsq and nwc search
                         their knob, rtn and gptq choose integer bits per tensor
  --bits N               rtn, gptq: bits per code, 2..8 (default 4: Q4_0, 4.5 bits per weight)
  --group-size G         rtn, gptq: weights per fp16 scale (default 32)
  --step S               ecsq: quantizer step on normalized weights (default 0.5)
  --alpha A              nwc: rate knob, weights are scaled by A before the encoder (default 1)
  --calib TEXT           calibration text: compute Hessians X^T X / N of every linear layer
                         (llama2.c and HF Llama models), used for importance levels, LDLQ/GPTQ
                         feedback and the proxy loss
  --tokenizer FILE       the model's tokenizer (llama2.c tokenizer.bin), needed with --calib
  --calib-windows N      use only the first N windows of 512 tokens (default: all)
  --no-ldlq              no error feedback (levels still come from the Hessian)
  --no-finetune          with --calib: code every layer with the ORIGINAL model's Hessians and
                         no fine-tuning (faster). By default, --calib compresses sequentially:
                         each block's layers are coded with the Hessians of the compressed
                         model so far, and after each coding step the block's still-uncoded
                         layers are fine-tuned (Adam) so the block's output on calibration
                         windows matches the original block's
  --finetune-windows N   calibration windows of 256 tokens for sequential compression and
                         fine-tuning (default 32; the last 4 are held out for early stopping)
  --threads N            worker threads (default 0: all cores); the output never depends on it
  --json                 print the report as JSON on stdout
  --help                 this text

exit codes: 0 ok, 1 bad input (unreadable or corrupt file, unsupported model), 2 usage
)";

nlohmann::json report_json(const ModelReport& report) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const TensorReport& tensor : report.tensors) {
        TensorRow row{tensor.name, shape_text(tensor.shape), std::string(dtype_name(tensor.original_dtype)), tensor.method, tensor.setting,
                      tensor.bits_per_weight(), tensor.segments, tensor.relative_mse, tensor.proxy_loss};
        nlohmann::json item = row_json(row, tensor.shape);
        item["stored_bytes"] = tensor.stored_bytes;
        item["used_hessian"] = tensor.used_hessian;
        item["used_feedback"] = tensor.used_feedback;
        item["seconds"] = tensor.seconds;
        tensors.push_back(std::move(item));
    }
    return {{"method", report.method},
            {"setting", report.setting},
            {"file_bytes", report.file_bytes},
            {"weights", report.weight_count},
            {"bits_per_weight", report.bits_per_weight()},
            {"relative_mse", number_or_null(report.squared_norm > 0 ? report.relative_mse() : NAN)},
            {"target_bits_per_weight", number_or_null(report.target_bits_per_weight)},
            {"target_met", report.target_met},
            {"passes", report.passes},
            {"final_pass_seconds", report.seconds},
            {"note", report.note},
            {"tensors", std::move(tensors)}};
}

}  // namespace

int run_compress(const std::vector<std::string>& raw_arguments) {
    const Arguments arguments(expand_short_options(raw_arguments),
                              {"output", "method", "codec", "target-bpw", "bits", "group-size", "step", "alpha", "calib", "tokenizer", "calib-windows",
                               "finetune-windows", "threads"},
                              {"no-ldlq", "no-finetune", "json", "help"});
    if (arguments.flag("help")) {
        std::fputs(compress_help, stdout);
        return exit_ok;
    }
    if (arguments.positional().size() != 1) throw UsageError(std::string("expected one input model, got ") + std::to_string(arguments.positional().size()));
    if (!arguments.has("output")) throw UsageError("missing -o OUT.nwc");
    const std::string input = arguments.positional()[0], output = arguments.get("output");
    const bool json = arguments.flag("json");

    MethodOptions options;
    options.method = arguments.get("method", "nwc");
    if (!DefaultCodec::methods::contains(options.method))
        throw UsageError("unknown method '" + options.method + "' (" + DefaultCodec::method_names() + ")");
    const bool integer_bits = options.method == "rtn" || options.method == "gptq";
    if ((arguments.has("bits") || arguments.has("group-size")) && !integer_bits) throw UsageError("--bits and --group-size apply to rtn and gptq only");
    if (arguments.has("step") && options.method != "ecsq") throw UsageError("--step applies to ecsq only");
    if (arguments.has("alpha") && options.method != "nwc") throw UsageError("--alpha applies to nwc only");
    if (arguments.has("target-bpw") && (arguments.has("bits") || arguments.has("step") || arguments.has("alpha")))
        throw UsageError("--target-bpw chooses the rate itself: drop --bits, --step or --alpha");
    if (arguments.has("calib") != arguments.has("tokenizer")) throw UsageError("--calib and --tokenizer go together");
    if ((arguments.flag("no-finetune") || arguments.has("finetune-windows")) && !arguments.has("calib"))
        throw UsageError("--no-finetune and --finetune-windows apply with --calib only");
    const bool finetune = arguments.has("calib") && !arguments.flag("no-finetune");
    llm::SequentialCompressionOptions sequential;
    sequential.windows = int(arguments.get_integer("finetune-windows", 32));
    if (sequential.windows <= sequential.validation_windows) throw UsageError("--finetune-windows must be > 4");
    options.bits = int(arguments.get_integer("bits", 4));
    options.group_size = int(arguments.get_integer("group-size", 32));
    options.step = float(arguments.get_number("step", 0.5));
    options.alpha = float(arguments.get_number("alpha", 1.0));
    options.ldlq = !arguments.flag("no-ldlq");
    options.threads = int(arguments.get_integer("threads", 0));
    if (options.threads < 0) throw UsageError("--threads must be >= 0");
    try {
        options.validate();
    } catch (const error& problem) {
        throw UsageError(problem.message());
    }
    const double target = arguments.get_number("target-bpw", NAN);
    if (arguments.has("target-bpw") && !(target > 0.0 && std::isfinite(target))) throw UsageError("--target-bpw must be a positive number");

    std::vector<std::string> codec_paths;
    if (options.method == "nwc") {
        const char* environment = std::getenv("NWC_CODEC");
        codec_paths = split_list(arguments.get("codec", environment != nullptr ? environment : default_codec_list()));
        if (codec_paths.empty()) throw UsageError("--method nwc needs a trained codec: --codec FILE (or set NWC_CODEC); see docs/codecs.md");
    } else if (arguments.has("codec")) {
        throw UsageError("--codec applies to --method nwc only");
    }

    const auto start = std::chrono::steady_clock::now();
    const ModelFile model = load_model_file(input);
    std::vector<std::shared_ptr<const NeuralCodec>> codecs;
    for (const auto& path : codec_paths) codecs.push_back(std::make_shared<const NeuralCodec>(read_codec_file(path)));

    std::optional<llm::LinearHessians> hessians;
    std::vector<int> calibration_tokens;
    nlohmann::json calibration = nullptr;
    if (arguments.has("calib")) {
        std::optional<llm::LlamaWeights> weights = llama_weights_of(model, input);
        require(weights.has_value(), errc::unsupported, "--calib needs a llama2.c or Hugging Face Llama model; '", input, "' is a plain ",
                model_format_name(model.format), " file");
        const llm::LlamaModel network(std::move(*weights));
        const llm::Tokenizer tokenizer = llm::Tokenizer::read(arguments.get("tokenizer"), network.config().vocab_size);
        const std::vector<std::uint8_t> text = read_file(arguments.get("calib"));
        calibration_tokens = llm::tokenize_for_evaluation(tokenizer, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
        const std::vector<int>& tokens = calibration_tokens;
        llm::CalibrationOptions calibration_options;
        calibration_options.threads = options.threads;
        calibration_options.max_windows = arguments.get_integer("calib-windows", -1);
        calibration_options.window = std::min(calibration_options.window, network.config().seq_len);
        hessians = llm::collect_hessians(network, tokens, calibration_options);
        calibration = {{"text", arguments.get("calib")}, {"tokens", tokens.size()}, {"samples", hessians->sample_count()}, {"finetune", finetune}};
        sequential.threads = options.threads;
        sequential.window = std::min(sequential.window, network.config().seq_len);
        if (finetune && ::isatty(STDERR_FILENO) == 1 && !json)
            sequential.progress = [](const llm::SequentialStepReport& step) {
                if (step.layer >= 0)
                    std::fprintf(stderr, "sequential: block %d, %s: block output MSE %.4g coded -> %.4g fine-tuned\n", step.layer,
                                 step.tensors.front().name.c_str(), step.block_mse_coded, step.block_mse_finetuned);
            };
    }
    const HessianLookup lookup = hessians ? hessian_lookup(*hessians) : HessianLookup{};

    ProgressBar progress;
    // Of several codecs, the one nearest the target (without one, the default rate of 4 bits per weight).
    const bool has_target = arguments.has("target-bpw");
    const std::size_t chosen =
        codecs.size() > 1 ? nearest_codec(options, std::span(codecs), model, lookup, has_target ? target : 4.0, progress.callback()) : 0;
    if (!codec_paths.empty()) codec_paths = {codec_paths[chosen]};
    const DefaultCodec codec(options, codecs.empty() ? nullptr : codecs[chosen]);
    CompressedModel compressed;
    if (has_target) {
        RateTarget rate;
        rate.bits_per_weight = target;
        compressed = finetune ? compress_sequentially_to_target(codec, model, lookup, calibration_tokens, rate, sequential)
                              : compress_to_target(codec, model, lookup, rate, progress.callback());
    } else {
        compressed = finetune ? compress_model_sequentially(codec, model, calibration_tokens, sequential)
                              : codec.compress_model(model, lookup, progress.callback());
    }
    compressed.writer.write(output);
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const ModelReport& report = compressed.report;

    if (json) {
        nlohmann::json root = report_json(report);
        root["input"] = input;
        root["output"] = output;
        root["source_format"] = std::string(model_format_name(model.format));
        root["codec"] = codec_paths.empty() ? nlohmann::json(nullptr) : nlohmann::json(codec_paths[0]);
        root["calibration"] = calibration;
        root["seconds"] = seconds;
        std::printf("%s\n", root.dump(2).c_str());
    } else {
        std::vector<TensorRow> rows;
        for (const TensorReport& tensor : report.tensors)
            rows.push_back({tensor.name, shape_text(tensor.shape), std::string(dtype_name(tensor.original_dtype)), tensor.method, tensor.setting,
                            tensor.bits_per_weight(), tensor.segments, tensor.relative_mse, tensor.proxy_loss});
        print_table(rows);
        std::printf("\n%s -> %s (%s, %s)\n", input.c_str(), output.c_str(), std::string(model_format_name(model.format)).c_str(), report.method.c_str());
        std::printf("%llu bytes for %lld weights: %.4f bits per weight (whole file), relative MSE %s, %s, %.2f s\n",
                    static_cast<unsigned long long>(report.file_bytes), static_cast<long long>(report.weight_count), report.bits_per_weight(),
                    optional_number(report.squared_norm > 0 ? report.relative_mse() : NAN, "%.4e").c_str(), report.setting.c_str(), seconds);
        if (std::isfinite(report.target_bits_per_weight))
            std::printf("target %.4f bits per weight: %s after %d passes%s%s\n", report.target_bits_per_weight, report.target_met ? "met" : "MISSED",
                        report.passes, report.note.empty() ? "" : ": ", report.note.c_str());
    }
    if (!report.target_met) std::fprintf(stderr, "nwc compress: warning: %s\n", report.note.c_str());
    return exit_ok;
}

}  // namespace nwc::cli
