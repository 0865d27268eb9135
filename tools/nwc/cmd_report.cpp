// nwc report: the rate-distortion report of a Llama model. For every configuration (a method, with
// or without LDLQ feedback and inter-layer fine-tuning) and every target rate, the model is
// compressed in memory exactly as `nwc compress` does it, decoded back from the container bytes as
// `nwc decompress` does, and evaluated under the perplexity protocol of `nwc eval`. Writes a
// markdown table, an SVG plot (bits per weight on x, perplexity on y, one line per configuration)
// and the raw numbers as JSON.
//
// Every figure comes from the run: nothing is assumed, and the summary lines that compare nwc to
// the baselines are computed from the rows.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "method_options.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/sensitivity.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
#include "pipeline_cli.hpp"
#include "report_plot.hpp"

namespace nwc::cli {
namespace {

struct Configuration {
    std::string id;
    std::string method;
    bool ldlq;
    bool finetune;
    std::string description;
};

const std::vector<Configuration>& all_configurations() {
    static const std::vector<Configuration> configurations = {
        {"nwc", "nwc", true, true, "nwc + LDLQ + fine-tuning"},
        {"nwc-no-ft", "nwc", true, false, "nwc + LDLQ"},
        {"nwc-no-ldlq", "nwc", false, true, "nwc + fine-tuning"},
        {"ecsq-ft", "ecsq", true, true, "ECSQ + LDLQ + fine-tuning"},
        {"ecsq", "ecsq", true, false, "ECSQ + LDLQ"},
        {"tcq-ft", "tcq", true, true, "TCQ (8 states) + LDLQ + fine-tuning"},
        {"tcq", "tcq", true, false, "TCQ (8 states) + LDLQ"},
        {"gptq", "gptq", true, false, "GPTQ (a coded scale per 32)"},
        {"rtn", "rtn", false, false, "RTN (a coded scale per 32)"},
    };
    return configurations;
}

struct Row {
    std::string config, codec, setting;
    double target = NAN;  ///< NaN: a fixed setting (Q4_0 layout)
    double bits_per_weight = 0, mean_nll = 0, perplexity = 0, relative_mse = 0, seconds = 0;
    std::uint64_t file_bytes = 0;
    std::uint64_t decoder_bytes = 0;  ///< the embedded decoder half (nwc), part of file_bytes
    std::uint64_t side_bytes = 0;     ///< everything but the payload (Codec::account), part of file_bytes
};

/// The report as markdown: the table, then per-rate verdicts computed from the rows.
std::string markdown(const std::vector<Row>& rows, const llm::PerplexityResult& baseline, std::int64_t weights) {
    std::string text =
        "| configuration | target | bits/weight (file) | side info (bits/weight) | file bytes | of which decoder | perplexity | NLL - fp32 | relative MSE | setting | codec | seconds |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    text += "| fp32 (uncompressed) | - | 32 | 0 | " + std::to_string(weights * 4) + " | - | " + optional_number(baseline.perplexity, "%.4f") + " | 0 | 0 | - | - | - |\n";
    for (const Row& row : rows)
        text += "| " + row.config + " | " + (std::isnan(row.target) ? std::string("Q4_0") : optional_number(row.target, "%g")) + " | " +
                optional_number(row.bits_per_weight, "%.4f") + " | " + optional_number(8.0 * double(row.side_bytes) / double(weights), "%.4f") + " | " +
                std::to_string(row.file_bytes) + " | " +
                (row.decoder_bytes > 0 ? std::to_string(row.decoder_bytes) : std::string("-")) + " | " + optional_number(row.perplexity, "%.4f") + " | " +
                optional_number(row.mean_nll - baseline.mean_nll, "%+.5f") + " | " + optional_number(row.relative_mse, "%.4e") + " | " + row.setting + " | " +
                (row.codec.empty() ? "-" : row.codec) + " | " + optional_number(row.seconds, "%.1f") + " |\n";
    // Verdicts: at each target, is the full nwc configuration below every baseline?
    const auto find = [&](const std::string& config, double target) -> const Row* {
        for (const Row& row : rows)
            if (row.config == config && ((std::isnan(target) && std::isnan(row.target)) || row.target == target)) return &row;
        return nullptr;
    };
    std::string verdicts;
    std::vector<double> targets;
    for (const Row& row : rows)
        if (!std::isnan(row.target) && std::find(targets.begin(), targets.end(), row.target) == targets.end()) targets.push_back(row.target);
    for (double target : targets) {
        const Row* ours = find("nwc", target);
        if (ours == nullptr) continue;
        std::string beaten, not_beaten;
        for (const char* baseline_id : {"ecsq", "gptq", "rtn"})
            if (const Row* other = find(baseline_id, target)) {
                std::string& list = ours->perplexity < other->perplexity ? beaten : not_beaten;
                list += (list.empty() ? "" : ", ") + std::string(baseline_id) + " " + optional_number(other->perplexity, "%.4f");
            }
        verdicts += "- target " + optional_number(target, "%g") + ": nwc perplexity " + optional_number(ours->perplexity, "%.4f") + " at " +
                    optional_number(ours->bits_per_weight, "%.3f") + " bits/weight; " + (not_beaten.empty() ? "below every baseline" : "NOT below every baseline") +
                    " (" + (beaten.empty() ? "" : "beats " + beaten) + (beaten.empty() || not_beaten.empty() ? "" : "; ") +
                    (not_beaten.empty() ? "" : "loses to " + not_beaten) + ")\n";
    }
    if (const Row* ours = find("nwc", 4.0); ours != nullptr)
        if (const Row* q4 = find("gptq", NAN); q4 != nullptr)
            verdicts += "- nwc at " + optional_number(ours->bits_per_weight, "%.3f") + " bits/weight loses " + optional_number(ours->mean_nll - baseline.mean_nll, "%.5f") +
                        " nats/token; GPTQ at " + optional_number(q4->bits_per_weight, "%.3f") + " (Q4_0 layout) loses " +
                        optional_number(q4->mean_nll - baseline.mean_nll, "%.5f") + ": " + (ours->mean_nll < q4->mean_nll ? "nwc loses less" : "nwc loses MORE") + "\n";
    return text + "\n" + verdicts;
}

struct ReportSettings {
    std::string calib, text, tokenizer;
    std::optional<std::string> codec, markdown, svg, json_file;
    std::vector<double> rates{3, 4, 5, 6};
    std::vector<std::string> configs;
    llm::SequentialCompressionOptions sequential;
    llm::SensitivityOptions sensitivity;
    bool allocate = true;
    std::int64_t eval_windows = llm::PerplexityOptions{}.max_windows;
    int threads = 0;  // all cores

    ReportSettings() {
        for (const Configuration& configuration : all_configurations()) configs.push_back(configuration.id);
    }
};

/// What every configuration shares: the model, its tokens, the uncompressed baseline, the Hessians.
struct ReportInputs {
    ModelFile model;
    std::vector<int> calibration_tokens, evaluation_tokens;
    llm::PerplexityOptions evaluation;
    llm::PerplexityResult baseline;
    llm::LinearHessians hessians;
    std::optional<TensorSensitivities> sensitivities;  ///< with allocation: every matrix's, measured once
    llm::SequentialCompressionOptions sequential;
    std::vector<std::string> codec_paths;
    std::vector<std::shared_ptr<const NeuralCodec>> codecs;
};

/// A configuration of an integer knob also runs at llama.cpp's Q4_0 layout (4 bits per code, a
/// fp16 scale per 32 weights: q4_0_options) besides the target rates.
bool runs_at_fixed_setting(const Configuration& configuration) { return DefaultCodec::knob_of(configuration.method).integer; }

/// `options` at llama.cpp's Q4_0 layout: 4 bits, a fp16 scale per 32 weights chosen as ggml does.
MethodOptions q4_0_options(MethodOptions options) {
    options.bits = 4;
    options.group_size = 32;
    options.fp16_group_scales = true;
    return options;
}

struct ReportCommand {
    using Settings = ReportSettings;

    static CommandText text() {
        std::string description = R"(The rate-distortion report: compresses MODEL (llama2.c or Hugging Face Llama) with every
configuration at every target rate, decodes each file from its bytes and measures perplexity on
EVAL (the `nwc eval` protocol). Bits per weight are those of the WHOLE .nwc file.

configurations (--configs):
)";
        for (const Configuration& configuration : all_configurations()) append_format(description, "  %-14s %s\n", configuration.id.c_str(), configuration.description.c_str());
        const MethodOptions q4_0 = q4_0_options(MethodOptions{});
        append_format(description, "Every configuration runs at each --rates target; those of an integer knob also run at %d bits per\n"
                                   "code with a fp16 scale per %d weights (llama.cpp's Q4_0 layout).", q4_0.bits, q4_0.group_size);
        return {.name = "report",
                .usage = "MODEL --calib TEXT --text EVAL --tokenizer TOK [options]",
                .description = description,
                .positional = "MODEL",
                .min_positional = 1,
                .max_positional = 1,
                .bad_input = "unreadable or corrupt model, tokenizer, text or codec; not a Llama model"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        std::vector<std::string> ids;
        for (const Configuration& configuration : all_configurations()) ids.push_back(configuration.id);
        table.value("calib", "TEXT", "calibration text, for Hessians and fine-tuning", settings.calib).mark_required();
        table.value("text", "EVAL", "evaluation text, for perplexity", settings.text).mark_required();
        table.value("tokenizer", "TOK", "llama2.c tokenizer.bin matching the model's vocabulary", settings.tokenizer).mark_required();
        table.value("codec", "FILE[,FILE..]", "codec files for the nwc configurations; with several, each rate uses the one nearest the target", settings.codec)
            .shows_default("every codec shipped in codecs/");
        table.list("rates", "R[,R..]", "target bits per weight", settings.rates).above(0).below(32);
        table.list("configs", "C[,C..]", "configurations to run", settings.configs, ids);
        table.value("finetune-windows", "N",
                    "calibration windows of " + std::to_string(settings.sequential.window) + " tokens for fine-tuning; the last " +
                        std::to_string(settings.sequential.validation_windows) + " are held out for early stopping",
                    settings.sequential.windows)
            .above(settings.sequential.validation_windows);
        declare_sensitivity_options(table, settings.sensitivity);
        table.flag("no-allocation", "one knob for every tensor at each target instead of per-tensor settings chosen by measured sensitivity",
                   settings.allocate, false);
        table.value("eval-windows", "N", "evaluate only the first N windows of EVAL", settings.eval_windows).shows_default("all").at_least(1);
        table.value("markdown", "FILE", "write the table to FILE instead of printing it", settings.markdown);
        table.value("svg", "FILE", "write the plot", settings.svg);
        table.value("json-file", "FILE", "also write the result to FILE, as --json prints it", settings.json_file);
        table.value("threads", "N", "worker threads, 0 = all cores", settings.threads).at_least(0);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation);
};

std::vector<int> tokens_of(const llm::Tokenizer& tokenizer, const std::string& path) {
    const std::vector<std::uint8_t> text = read_file(path);
    return llm::tokenize_for_evaluation(tokenizer, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
}

ReportInputs load_inputs(const ReportSettings& settings, const std::string& model_path) {
    ReportInputs inputs;
    inputs.model = load_model_file(model_path);
    std::optional<llm::LlamaWeights> weights = llama_weights_of(inputs.model, model_path);
    require(weights.has_value(), errc::unsupported, "report: '", model_path, "' is not a Llama model");
    const llm::LlamaModel original(std::move(*weights));
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(settings.tokenizer, original.config().vocab_size);
    inputs.calibration_tokens = tokens_of(tokenizer, settings.calib);
    inputs.evaluation_tokens = tokens_of(tokenizer, settings.text);
    inputs.evaluation.threads = settings.threads;
    inputs.evaluation.max_windows = settings.eval_windows;
    inputs.baseline = llm::evaluate_perplexity(original, inputs.evaluation_tokens, inputs.evaluation);
    llm::CalibrationOptions calibration;
    calibration.threads = settings.threads;
    calibration.window = std::min(calibration.window, original.config().seq_len);
    inputs.hessians = llm::collect_hessians(original, inputs.calibration_tokens, calibration);
    if (settings.allocate) {  // as nwc compress --calib --target-bpw measures them: calibration text only
        llm::SensitivityOptions options = settings.sensitivity;
        options.threads = settings.threads;
        options.window = std::min(options.window, original.config().seq_len);
        options.include_vectors = false;
        options.shaped = true;
        inputs.sensitivities = TensorSensitivities::from(llm::measure_sensitivities(original, inputs.calibration_tokens, options));
    }
    inputs.sequential = settings.sequential;
    inputs.sequential.threads = settings.threads;
    inputs.sequential.window = std::min(inputs.sequential.window, original.config().seq_len);
    inputs.codec_paths = split_list(settings.codec.value_or(default_codec_list()));
    for (const auto& path : inputs.codec_paths) inputs.codecs.push_back(std::make_shared<const NeuralCodec>(read_codec_file(path)));
    return inputs;
}

/// One row: compress as `nwc compress` does (NaN target: the fixed Q4_0 setting), decode from the
/// bytes as a reader of the file would, evaluate as `nwc eval` does.
Row run_configuration(const Configuration& configuration, double target, const ReportInputs& inputs, int threads) {
    const auto start = std::chrono::steady_clock::now();
    MethodOptions options;
    options.method = configuration.method;
    options.ldlq = configuration.ldlq;
    options.threads = threads;
    if (std::isnan(target)) options = q4_0_options(options);
    Row row;
    row.config = configuration.id;
    row.target = target;
    const HessianLookup lookup = hessian_lookup(inputs.hessians);
    std::shared_ptr<const NeuralCodec> codec;
    const std::vector<std::string>& needs_codec = codec_methods();
    if (std::find(needs_codec.begin(), needs_codec.end(), configuration.method) != needs_codec.end()) {
        require(!inputs.codecs.empty(), errc::invalid_argument, "report: the nwc configurations need --codec FILE(s)");
        const std::size_t chosen = nearest_codec(options, std::span(inputs.codecs), inputs.model, lookup, std::isnan(target) ? RateTarget{}.bits_per_weight : target);
        codec = inputs.codecs[chosen];
        row.codec = std::filesystem::path(inputs.codec_paths[chosen]).filename().string();
    }
    const DefaultCodec coder(options, codec);
    CompressedModel compressed;
    if (std::isnan(target)) {
        compressed = configuration.finetune ? compress_model_sequentially(coder, inputs.model, inputs.calibration_tokens, inputs.sequential)
                                            : coder.compress_model(inputs.model, lookup);
    } else {
        RateTarget rate;
        rate.bits_per_weight = target;
        if (inputs.sensitivities) rate.sensitivities = &*inputs.sensitivities;
        compressed = configuration.finetune ? compress_sequentially_to_target(coder, inputs.model, lookup, inputs.calibration_tokens, rate, inputs.sequential)
                                            : compress_to_target(coder, inputs.model, lookup, rate);
    }
    std::vector<std::uint8_t> bytes = compressed.writer.serialize();
    row.file_bytes = bytes.size();
    if (codec) row.decoder_bytes = serialize_codec_decoder(codec->decoder()).size();
    const ContainerReader reader = ContainerReader::from_bytes(std::move(bytes));
    row.side_bytes = DefaultCodec::account(reader).total.side_information();
    const ModelFile decoded = DefaultCodec::decompress_model(reader, threads);
    std::optional<llm::LlamaWeights> decoded_weights = llama_weights_of(decoded, "decoded model");
    const llm::PerplexityResult result = llm::evaluate_perplexity(llm::LlamaModel(std::move(*decoded_weights)), inputs.evaluation_tokens, inputs.evaluation);
    row.bits_per_weight = 8.0 * double(row.file_bytes) / double(inputs.model.weight_count());
    row.mean_nll = result.mean_nll;
    row.perplexity = result.perplexity;
    row.relative_mse = compressed.report.relative_mse();
    row.setting = compressed.report.setting;
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return row;
}

std::string row_line(const Row& row) {
    std::string line;
    append_format(line, "%-12s target %-5s %.4f bits/weight  perplexity %.4f  rel.MSE %.4e  %s %s  %.1f s\n", row.config.c_str(),
                  std::isnan(row.target) ? "Q4_0" : optional_number(row.target, "%g").c_str(), row.bits_per_weight, row.perplexity, row.relative_mse,
                  row.setting.c_str(), row.codec.c_str(), row.seconds);
    return line;
}

std::string plot(const std::vector<Configuration>& configurations, const std::vector<Row>& rows, double baseline_perplexity) {
    std::vector<PlotSeries> series;
    for (const Configuration& configuration : configurations) {
        PlotSeries line{configuration.description, {}};
        for (const Row& row : rows)
            if (row.config == configuration.id) line.points.push_back({row.bits_per_weight, row.perplexity});
        std::sort(line.points.begin(), line.points.end());
        if (!line.points.empty()) series.push_back(std::move(line));
    }
    return plot_svg(series, baseline_perplexity, "bits per weight (whole .nwc file)", "perplexity (log scale)");
}

nlohmann::json report_json(const std::string& model_path, const ReportInputs& inputs, const std::vector<Row>& rows) {
    nlohmann::json root = {{"model", model_path},
                           {"weights", inputs.model.weight_count()},
                           {"fp32_perplexity", inputs.baseline.perplexity},
                           {"fp32_mean_nll", inputs.baseline.mean_nll},
                           {"codecs", inputs.codec_paths},
                           {"rows", nlohmann::json::array()}};
    for (const Row& row : rows)
        root["rows"].push_back({{"config", row.config}, {"target", std::isnan(row.target) ? nlohmann::json("Q4_0") : nlohmann::json(row.target)},
                                {"bits_per_weight", row.bits_per_weight}, {"file_bytes", row.file_bytes}, {"decoder_bytes", row.decoder_bytes},
                                {"mean_nll", row.mean_nll}, {"perplexity", row.perplexity}, {"relative_mse", row.relative_mse}, {"setting", row.setting},
                                {"codec", row.codec}, {"seconds", row.seconds}, {"side_information_bytes", row.side_bytes},
                                {"side_information_bits_per_weight", 8.0 * double(row.side_bytes) / double(inputs.model.weight_count())}});
    return root;
}

void write_text(const std::string& path, const std::string& text) {
    write_file_atomic(path, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

Outcome ReportCommand::run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation) {
    std::vector<Configuration> configurations;  // in the order given (the declaration checked the names)
    for (const std::string& id : settings.configs)
        configurations.push_back(*std::find_if(all_configurations().begin(), all_configurations().end(), [&](const Configuration& c) { return c.id == id; }));
    const std::string& model_path = positional[0];
    const ReportInputs inputs = load_inputs(settings, model_path);
    std::string line;
    append_format(line, "fp32: perplexity %.4f (mean NLL %.6f) over %lld windows; %zu codec(s)\n", inputs.baseline.perplexity, inputs.baseline.mean_nll,
                  static_cast<long long>(inputs.baseline.window_count), inputs.codecs.size());
    invocation.progress(line);

    std::vector<Row> rows;
    for (const Configuration& configuration : configurations) {
        std::vector<double> targets = settings.rates;
        if (runs_at_fixed_setting(configuration)) targets.push_back(NAN);
        for (double target : targets) {
            rows.push_back(run_configuration(configuration, target, inputs, settings.threads));
            invocation.progress(row_line(rows.back()));
        }
    }

    Outcome outcome{report_json(model_path, inputs, rows), ""};
    const std::string table = markdown(rows, inputs.baseline, inputs.model.weight_count());
    if (settings.markdown) write_text(*settings.markdown, table);
    else outcome.text = "\n" + table;
    if (settings.svg) write_text(*settings.svg, plot(configurations, rows, inputs.baseline.perplexity));
    if (settings.json_file) write_text(*settings.json_file, outcome.json.dump(2) + "\n");
    return outcome;
}

}  // namespace

int run_report(const std::vector<std::string>& arguments) { return command_main<ReportCommand>(arguments); }

}  // namespace nwc::cli
