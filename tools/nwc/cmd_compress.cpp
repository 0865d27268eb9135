// nwc compress: a model file (safetensors, llama2.c, HF Llama directory) into a .nwc file.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "method_options.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/io/model_reader.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/sensitivity.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
#include "pipeline_cli.hpp"

namespace nwc::cli {
namespace {

struct CompressSettings {
    MethodOptions method;  ///< threads: 0 (all cores) on the command line, see below
    std::string output;
    std::optional<std::string> codec, calib, tokenizer;
    std::optional<double> target_bpw;
    llm::CalibrationOptions calibration;
    llm::SequentialCompressionOptions sequential;
    llm::SensitivityOptions sensitivity;
    bool finetune = true, allocate = true, in_memory = false;
    std::string axis;

    CompressSettings() {
        method.threads = 0;  // the tool uses every core unless told otherwise
        axis = method.axis == NormalizationAxis::per_row ? "row" : method.axis == NormalizationAxis::per_column ? "column" : "tensor";
    }
};

/// The calibration a --calib run computes once: Hessians, the tokens sequential coding reuses and,
/// for allocation, the sensitivity of every matrix.
struct Calibration {
    std::optional<llm::LinearHessians> hessians;
    std::optional<TensorSensitivities> sensitivities;
    std::vector<int> tokens;
    nlohmann::json json = nullptr;
    int seq_len = 0;
};

struct CompressCommand {
    using Settings = CompressSettings;

    static CommandText text() {
        return {.name = "compress",
                .usage = "IN -o OUT.nwc [options]",
                .description = R"(Compresses every tensor of a model into one .nwc file. IN is a safetensors file, a llama2.c model
(.bin) or a Hugging Face Llama directory (config.json + model.safetensors; its tokenizer files and
other small files travel in the .nwc file byte for byte); the format is detected from the content. Matrices with both sides >= 16 (embeddings included) are coded with the method,
vectors of 16 or more (norm scales) with ecsq at a fine step; smaller tensors are stored as they
are. --method lossless stores every tensor bit for bit (vectors too): no knob, no rate target, no
calibration; decompress gives back the very bits of the input. With --calib and --target-bpw, each matrix's setting (step, bits or alpha, and its
normalization axis) is chosen by how much its error costs the model (its sensitivity, measured by
noise on the calibration text), so the bytes go where they cut the loss most. The output is written atomically: on any failure an
existing OUT is left untouched. Without --calib the model is read, coded and written one tensor at a time, so memory holds the
tensors in flight, not the model (--in-memory reads it whole first; the bytes are the same). With --calib, layers are coded sequentially: each block's layers
are coded with the Hessians of the compressed model so far, and after each coding step the block's
still-uncoded layers are fine-tuned (Adam) so the block's output on calibration windows matches the
original block's.)",
                .positional = "input model",
                .min_positional = 1,
                .max_positional = 1,
                .bad_input = "unreadable or corrupt file, unsupported model"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        const std::string rate_default = number_text(RateTarget{}.bits_per_weight);
        table.value("output", "FILE", "the .nwc file to write", settings.output).with_short('o').mark_required();
        declare_method_choice(table, settings.method, "the per-tensor method");
        table.value("codec", "FILE[,FILE..]",
                    "trained codec file(s), .nwcc; of several, the one whose file lands nearest the target is used: --target-bpw, else " +
                        rate_default + " bits per weight",
                    settings.codec)
            .shows_default("$NWC_CODEC, else every codec shipped in codecs/")
            .for_methods(codec_methods());
        std::vector<std::string> knobs = knob_options();
        table.value("target-bpw", "B",
                    "choose the rate so that the WHOLE file has B bits per weight, 8 x file bytes / weights of the input, within " +
                        number_text(100 * RateTarget{}.tolerance) + "%: methods with a continuous knob search it, integer ones choose it per tensor",
                    settings.target_bpw)
            .above(0)
            .excluding(knobs, "--target-bpw chooses the rate itself")
            .for_methods(rate_methods());
        declare_knob_options(table, settings.method);
        table.value("calib", "TEXT",
                    "calibration text: Hessians X^T X / N of every linear layer of a llama2.c or HF Llama model, for importance levels, "
                    "LDLQ/GPTQ feedback, the proxy loss and sequential coding",
                    settings.calib)
            .needing("tokenizer")
            .for_methods(lossy_methods());
        table.value("tokenizer", "FILE", "the model's tokenizer, a llama2.c tokenizer.bin", settings.tokenizer).needing("calib");
        table.value("calib-windows", "N", "Hessians from the first N windows of " + std::to_string(settings.calibration.window) + " tokens only",
                    settings.calibration.max_windows)
            .shows_default("all")
            .at_least(1)
            .needing("calib");
        table.choice("axis", "A", "normalization of ecsq / nwc weights (with allocation, chosen per matrix by its measured sensitivity)",
                     settings.axis, {"tensor", "row", "column"});
        table.flag("embed-codec", "a self-contained file: embed the codec's decoder even when it ships with nwc (else referenced by SHA-256)",
                   settings.method.embed_codec)
            .for_methods(codec_methods());
        table.flag("no-allocation",
                   "with --calib and --target-bpw: one knob for every tensor instead of per-tensor settings chosen by each matrix's measured "
                   "sensitivity (noise injected on the calibration text)",
                   settings.allocate, false)
            .needing("calib");
        declare_sensitivity_options(table, settings.sensitivity, "calib");
        table.value("tcq-states", "S", "trellis states of tcq (4..256, a power of two): more gain more, at more encoding time",
                    settings.method.tcq_states)
            .for_methods({"tcq"});
        table.flag("no-ldlq", "no error feedback; importance levels still come from the Hessian", settings.method.ldlq, false);
        table.flag("no-finetune", "faster: code every layer with the ORIGINAL model's Hessians, without fine-tuning", settings.finetune, false)
            .needing("calib");
        table.value("finetune-windows", "N",
                    "calibration windows of " + std::to_string(settings.sequential.window) + " tokens for sequential coding and fine-tuning; the last " +
                        std::to_string(settings.sequential.validation_windows) + " are held out for early stopping",
                    settings.sequential.windows)
            .above(settings.sequential.validation_windows)
            .needing("calib");
        table.value("threads", "N", "worker threads, 0 = all cores; the output never depends on it", settings.method.threads).at_least(0);
        table.flag("in-memory",
                   "read the whole model before coding (~3x the model's memory; the same bytes as the default, which reads and writes one tensor "
                   "at a time; --calib always reads the whole model)",
                   settings.in_memory);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation);
};

std::vector<std::string> codec_paths_of(const CompressSettings& settings) {
    const std::vector<std::string> needs_codec = codec_methods();
    if (std::find(needs_codec.begin(), needs_codec.end(), settings.method.method) == needs_codec.end()) return {};
    const char* environment = std::getenv("NWC_CODEC");
    const std::vector<std::string> paths = split_list(settings.codec.value_or(environment != nullptr ? environment : default_codec_list()));
    if (paths.empty())
        throw UsageError("--method " + settings.method.method + " needs a trained codec: --codec FILE (or set NWC_CODEC); see docs/codecs.md");
    return paths;
}

Calibration calibrate(const CompressSettings& settings, const ModelFile& model, const std::string& input) {
    Calibration calibration;
    if (!settings.calib) return calibration;
    std::optional<llm::LlamaWeights> weights = llama_weights_of(model, input);
    require(weights.has_value(), errc::unsupported, "--calib needs a model whose forward pass nwc has (llama2.c, Hugging Face Llama or Mistral); '",
            input, "' ", why_not_llama(model), ": compress it without --calib");
    const llm::LlamaModel network(std::move(*weights));
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(*settings.tokenizer, network.config().vocab_size);
    const std::vector<std::uint8_t> text = read_file(*settings.calib);
    calibration.tokens = llm::tokenize_for_evaluation(tokenizer, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
    llm::CalibrationOptions options = settings.calibration;
    options.threads = settings.method.threads;
    options.window = std::min(options.window, network.config().seq_len);
    calibration.hessians = llm::collect_hessians(network, calibration.tokens, options);
    calibration.seq_len = network.config().seq_len;
    calibration.json = {{"text", *settings.calib}, {"tokens", calibration.tokens.size()}, {"samples", calibration.hessians->sample_count()},
                        {"finetune", settings.finetune}, {"allocation", settings.allocate && settings.target_bpw.has_value()}};
    if (settings.allocate && settings.target_bpw) {
        llm::SensitivityOptions options = settings.sensitivity;
        options.threads = settings.method.threads;
        options.window = std::min(options.window, network.config().seq_len);
        options.include_vectors = false;
        options.shaped = true;
        const llm::SensitivityReport report = llm::measure_sensitivities(network, calibration.tokens, options);
        calibration.sensitivities = TensorSensitivities::from(report);
        calibration.json["sensitivity_windows"] = report.windows;
    }
    return calibration;
}

llm::SequentialCompressionOptions sequential_options(const CompressSettings& settings, const Calibration& calibration, const Invocation& invocation) {
    llm::SequentialCompressionOptions sequential = settings.sequential;
    sequential.threads = settings.method.threads;
    sequential.window = std::min(sequential.window, calibration.seq_len);
    if (::isatty(STDERR_FILENO) == 1 && !invocation.json)
        sequential.progress = [](const llm::SequentialStepReport& step) {
            if (step.layer >= 0)
                std::fprintf(stderr, "sequential: block %d, %s: block output MSE %.4g coded -> %.4g fine-tuned\n", step.layer,
                             step.tensors.front().name.c_str(), step.block_mse_coded, step.block_mse_finetuned);
        };
    return sequential;
}

nlohmann::json report_json(const ModelReport& report) {
    nlohmann::json tensors = nlohmann::json::array();
    for (const TensorReport& tensor : report.tensors) {
        nlohmann::json item = row_json(tensor_row(tensor), tensor.shape);
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

std::string report_text(const ModelReport& report, const std::string& input, const std::string& output, const ModelFile& model, double seconds) {
    std::vector<TensorRow> rows;
    for (const TensorReport& tensor : report.tensors) rows.push_back(tensor_row(tensor));
    std::string text = table_text(rows);
    append_format(text, "\n%s -> %s (%s, %s)\n", input.c_str(), output.c_str(), std::string(model_format_name(model.format)).c_str(), report.method.c_str());
    append_format(text, "%llu bytes for %lld weights: %.4f bits per weight (whole file), relative MSE %s, %s, %.2f s\n",
                  static_cast<unsigned long long>(report.file_bytes), static_cast<long long>(report.weight_count), report.bits_per_weight(),
                  optional_number(report.squared_norm > 0 ? report.relative_mse() : NAN, "%.4e").c_str(),
                  report.setting.empty() ? "no rate knob" : report.setting.c_str(), seconds);
    if (std::isfinite(report.target_bits_per_weight))
        append_format(text, "target %.4f bits per weight: %s after %d passes%s%s\n", report.target_bits_per_weight, report.target_met ? "met" : "MISSED",
                      report.passes, report.note.empty() ? "" : ": ", report.note.c_str());
    if (model.format == ModelFormat::hf)  // say what the user does not get
        append_format(text, "note: the model %s: its tensors were coded without calibration (no Hessians, sensitivities or fine-tuning)\n",
                      why_not_llama(model).c_str());
    return text;
}

/// One compression of `model` with the chosen codec: sequential (with --calib, unless
/// --no-finetune) or not, at the target rate or at the knob given.
CompressedModel compress_with(const CompressSettings& settings, const DefaultCodec& codec, const ModelFile& model, const Calibration& calibration,
                              const HessianLookup& lookup, const RateTarget& rate, ProgressBar& progress, const Invocation& invocation) {
    if (calibration.hessians && settings.finetune) {
        const llm::SequentialCompressionOptions sequential = sequential_options(settings, calibration, invocation);
        return settings.target_bpw ? compress_sequentially_to_target(codec, model, lookup, calibration.tokens, rate, sequential)
                                   : compress_model_sequentially(codec, model, calibration.tokens, sequential);
    }
    return settings.target_bpw ? compress_to_target(codec, model, lookup, rate, progress.callback()) : codec.compress_model(model, lookup, progress.callback());
}

Outcome CompressCommand::run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation) {
    MethodOptions method = settings.method;
    method.axis = settings.axis == "row" ? NormalizationAxis::per_row : settings.axis == "column" ? NormalizationAxis::per_column : NormalizationAxis::per_tensor;
    try {
        method.validate();
    } catch (const error& problem) {
        throw UsageError(problem.message());
    }
    std::vector<std::string> codec_paths = codec_paths_of(settings);
    const std::string& input = positional[0];
    const auto start = std::chrono::steady_clock::now();
    // Without calibration the model is read and the container written one tensor at a time
    // (memory for the tensors in flight); calibration runs the whole model, so it reads it whole.
    const bool streamed = !settings.calib && !settings.in_memory;
    std::optional<ModelReader> reader;
    std::optional<ModelFile> loaded;
    if (streamed)
        reader.emplace(ModelReader::open(input));
    else
        loaded.emplace(load_model_file(input));
    const ModelFile& model = streamed ? reader->outline() : *loaded;
    const auto with_model = [&](auto&& f) { return streamed ? f(*reader) : f(*loaded); };
    std::vector<std::shared_ptr<const NeuralCodec>> codecs;
    for (const auto& path : codec_paths) codecs.push_back(std::make_shared<const NeuralCodec>(read_codec_file(path)));
    const Calibration calibration = calibrate(settings, model, input);
    const HessianLookup lookup = calibration.hessians ? hessian_lookup(*calibration.hessians) : HessianLookup{};

    ProgressBar progress;
    RateTarget rate;
    if (settings.target_bpw) rate.bits_per_weight = *settings.target_bpw;
    if (calibration.sensitivities) rate.sensitivities = &*calibration.sensitivities;
    // Of several codecs, the one nearest the target (without one, RateTarget's default rate).
    const std::size_t chosen = codecs.size() > 1 ? with_model([&](const auto& source) {
        return nearest_codec(method, std::span(codecs), source, lookup, rate.bits_per_weight, progress.callback());
    })
                                                 : 0;
    if (!codec_paths.empty()) codec_paths = {codec_paths[chosen]};
    const DefaultCodec codec(method, codecs.empty() ? nullptr : codecs[chosen]);
    ModelReport report;
    if (streamed) {
        ContainerStreamWriter output(settings.output);
        report = settings.target_bpw ? compress_to_target_into(codec, *reader, output, lookup, rate, progress.callback())
                                     : codec.compress_model_into(*reader, output, lookup, progress.callback());
        output.commit();
    } else {
        CompressedModel compressed = compress_with(settings, codec, *loaded, calibration, lookup, rate, progress, invocation);
        compressed.writer.write(settings.output);
        report = std::move(compressed.report);
    }
    progress.finish();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!report.target_met) std::fprintf(stderr, "nwc compress: warning: %s\n", report.note.c_str());

    Outcome outcome{report_json(report), report_text(report, input, settings.output, model, seconds)};
    outcome.json["input"] = input;
    outcome.json["output"] = settings.output;
    outcome.json["source_format"] = std::string(model_format_name(model.format));
    if (model.format == ModelFormat::hf) outcome.json["forward_pass_missing"] = why_not_llama(model);
    outcome.json["codec"] = codec_paths.empty() ? nlohmann::json(nullptr) : nlohmann::json(codec_paths[0]);
    outcome.json["calibration"] = calibration.json;
    outcome.json["seconds"] = seconds;
    return outcome;
}

}  // namespace

int run_compress(const std::vector<std::string>& arguments) { return command_main<CompressCommand>(arguments); }
Outcome invoke_compress(const std::vector<std::string>& arguments, const Invocation& invocation) { return invoke<CompressCommand>(arguments, invocation); }

}  // namespace nwc::cli
