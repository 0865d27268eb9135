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
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arguments.hpp"
#include "commands.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
#include "pipeline_cli.hpp"
#include "report_plot.hpp"

namespace nwc::cli {
namespace {

constexpr const char* report_help = R"(usage: nwc report MODEL --calib TEXT --text EVAL --tokenizer TOK [options]

The rate-distortion report: compresses MODEL (llama2.c or Hugging Face Llama) with every
configuration at every target rate, decodes each file from its bytes and measures perplexity on
EVAL (the `nwc eval` protocol). Bits per weight are those of the WHOLE .nwc file.

configurations (--configs, comma-separated; default all):
  nwc            neural codec, LDLQ feedback and inter-layer fine-tuning
  nwc-no-ft      neural codec, LDLQ feedback, no fine-tuning
  nwc-no-ldlq    neural codec, fine-tuning, no LDLQ feedback
  ecsq-ft        entropy-coded scalar quantization, LDLQ feedback and fine-tuning
  ecsq           entropy-coded scalar quantization, LDLQ feedback
  gptq           integer codes with a fp16 scale per 32 weights, GPTQ feedback
  rtn            integer codes with a fp16 scale per 32 weights, round to nearest
Every configuration runs at each --rates target; gptq and rtn also run at 4 bits per code
(llama.cpp's Q4_0 layout, 4.5 bits per weight plus the file's overhead).

options:
  --codec FILE[,FILE..]  codec files for the nwc configurations (default: codecs/*.nwcc); with
                         several, each rate uses the one nearest the target
  --rates R[,R..]        target bits per weight (default 3,4,5,6)
  --configs C[,C..]      configurations to run (default: all of the above)
  --finetune-windows N   calibration windows of 256 tokens for fine-tuning (default 32)
  --eval-windows N       evaluate only the first N windows of EVAL (default: all)
  --markdown FILE        write the table (default: print it)
  --svg FILE             write the plot
  --json FILE            write every row as JSON
  --threads N            worker threads (default 0: all cores)
)";

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
        {"gptq", "gptq", true, false, "GPTQ (scale per 32)"},
        {"rtn", "rtn", false, false, "RTN (scale per 32)"},
    };
    return configurations;
}

struct Row {
    std::string config, codec, setting;
    double target = NAN;  ///< NaN: a fixed setting (Q4_0 layout)
    double bits_per_weight = 0, mean_nll = 0, perplexity = 0, relative_mse = 0, seconds = 0;
    std::uint64_t file_bytes = 0;
    std::uint64_t decoder_bytes = 0;  ///< the embedded decoder half (nwc), part of file_bytes
};

/// The report as markdown: the table, then per-rate verdicts computed from the rows.
std::string markdown(const std::vector<Row>& rows, const llm::PerplexityResult& baseline, std::int64_t weights) {
    std::string text =
        "| configuration | target | bits/weight (file) | file bytes | of which decoder | perplexity | NLL - fp32 | relative MSE | setting | codec | seconds |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    text += "| fp32 (uncompressed) | - | 32 | " + std::to_string(weights * 4) + " | - | " + optional_number(baseline.perplexity, "%.4f") + " | 0 | 0 | - | - | - |\n";
    for (const Row& row : rows)
        text += "| " + row.config + " | " + (std::isnan(row.target) ? std::string("Q4_0") : optional_number(row.target, "%g")) + " | " +
                optional_number(row.bits_per_weight, "%.4f") + " | " + std::to_string(row.file_bytes) + " | " +
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

}  // namespace

int run_report(const std::vector<std::string>& raw_arguments) {
    const Arguments arguments(raw_arguments,
                              {"calib", "text", "tokenizer", "codec", "rates", "configs", "finetune-windows", "eval-windows", "markdown", "svg", "json",
                               "threads"},
                              {"help"});
    if (arguments.flag("help")) {
        std::fputs(report_help, stdout);
        return exit_ok;
    }
    if (arguments.positional().size() != 1) throw UsageError("expected one MODEL");
    for (const char* required : {"calib", "text", "tokenizer"})
        if (!arguments.has(required)) throw UsageError(std::string("--") + required + " is required");
    std::vector<double> rates;
    for (const std::string& item : split_list(arguments.get("rates", "3,4,5,6"))) {
        const double rate = std::strtod(item.c_str(), nullptr);
        if (!(rate > 0 && rate < 32)) throw UsageError("bad rate '" + item + "'");
        rates.push_back(rate);
    }
    std::vector<Configuration> configurations;
    for (const std::string& id : split_list(arguments.get("configs", "nwc,nwc-no-ft,nwc-no-ldlq,ecsq-ft,ecsq,gptq,rtn"))) {
        const auto& all = all_configurations();
        const auto found = std::find_if(all.begin(), all.end(), [&](const Configuration& c) { return c.id == id; });
        if (found == all.end()) throw UsageError("unknown configuration '" + id + "'");
        configurations.push_back(*found);
    }
    const int threads = int(arguments.get_integer("threads", 0));
    const std::string model_path = arguments.positional()[0];

    const ModelFile model = load_model_file(model_path);
    std::optional<llm::LlamaWeights> weights = llama_weights_of(model, model_path);
    require(weights.has_value(), errc::unsupported, "report: '", model_path, "' is not a Llama model");
    const llm::LlamaModel original(std::move(*weights));
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(arguments.get("tokenizer"), original.config().vocab_size);
    const auto tokens_of = [&](const std::string& path) {
        const std::vector<std::uint8_t> text = read_file(path);
        return llm::tokenize_for_evaluation(tokenizer, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
    };
    const std::vector<int> calibration_tokens = tokens_of(arguments.get("calib")), evaluation_tokens = tokens_of(arguments.get("text"));
    llm::PerplexityOptions evaluation;
    evaluation.threads = threads;
    evaluation.max_windows = arguments.get_integer("eval-windows", -1);
    const llm::PerplexityResult baseline = llm::evaluate_perplexity(original, evaluation_tokens, evaluation);
    llm::CalibrationOptions calibration;
    calibration.threads = threads;
    calibration.window = std::min(calibration.window, original.config().seq_len);
    const llm::LinearHessians hessians = llm::collect_hessians(original, calibration_tokens, calibration);
    const HessianLookup lookup = hessian_lookup(hessians);
    llm::SequentialCompressionOptions sequential;
    sequential.threads = threads;
    sequential.window = std::min(sequential.window, original.config().seq_len);
    sequential.windows = int(arguments.get_integer("finetune-windows", 32));

    std::vector<std::string> codec_paths = split_list(arguments.get("codec", default_codec_list()));
    std::vector<std::shared_ptr<const NeuralCodec>> codecs;
    for (const auto& path : codec_paths) codecs.push_back(std::make_shared<const NeuralCodec>(read_codec_file(path)));
    std::printf("fp32: perplexity %.4f (mean NLL %.6f) over %lld windows; %zu codec(s)\n", baseline.perplexity, baseline.mean_nll,
                static_cast<long long>(baseline.window_count), codecs.size());

    std::vector<Row> rows;
    const auto run = [&](const Configuration& configuration, double target) {
        const auto start = std::chrono::steady_clock::now();
        MethodOptions options;
        options.method = configuration.method;
        options.ldlq = configuration.ldlq;
        options.threads = threads;
        Row row;
        row.config = configuration.id;
        row.target = target;
        std::shared_ptr<const NeuralCodec> codec;
        if (configuration.method == "nwc") {
            require(!codecs.empty(), errc::invalid_argument, "report: the nwc configurations need --codec FILE(s)");
            const std::size_t chosen = nearest_codec(options, std::span(codecs), model, lookup, std::isnan(target) ? 4.0 : target);
            codec = codecs[chosen];
            row.codec = std::filesystem::path(codec_paths[chosen]).filename().string();
        }
        const DefaultCodec coder(options, codec);
        CompressedModel compressed;
        if (std::isnan(target)) {  // Q4_0 layout: 4-bit codes, a fp16 scale per 32 weights
            compressed = configuration.finetune ? compress_model_sequentially(coder, model, calibration_tokens, sequential) : coder.compress_model(model, lookup);
        } else {
            RateTarget rate;
            rate.bits_per_weight = target;
            compressed = configuration.finetune ? compress_sequentially_to_target(coder, model, lookup, calibration_tokens, rate, sequential)
                                                : compress_to_target(coder, model, lookup, rate);
        }
        // Decode from the bytes, exactly as a reader of the file would.
        std::vector<std::uint8_t> bytes = compressed.writer.serialize();
        row.file_bytes = bytes.size();
        if (codec) row.decoder_bytes = serialize_codec_decoder(codec->decoder()).size();
        const ContainerReader reader = ContainerReader::from_bytes(std::move(bytes));
        const ModelFile decoded = DefaultCodec::decompress_model(reader, threads);
        std::optional<llm::LlamaWeights> decoded_weights = llama_weights_of(decoded, "decoded model");
        const llm::PerplexityResult result = llm::evaluate_perplexity(llm::LlamaModel(std::move(*decoded_weights)), evaluation_tokens, evaluation);
        row.bits_per_weight = 8.0 * double(row.file_bytes) / double(model.weight_count());
        row.mean_nll = result.mean_nll;
        row.perplexity = result.perplexity;
        row.relative_mse = compressed.report.relative_mse();
        row.setting = compressed.report.setting;
        row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("%-12s target %-5s %.4f bits/weight  perplexity %.4f  rel.MSE %.4e  %s %s  %.1f s\n", row.config.c_str(),
                    std::isnan(target) ? "Q4_0" : optional_number(target, "%g").c_str(), row.bits_per_weight, row.perplexity, row.relative_mse, row.setting.c_str(),
                    row.codec.c_str(), row.seconds);
        std::fflush(stdout);
        rows.push_back(row);
    };
    for (const Configuration& configuration : configurations) {
        for (double rate : rates) run(configuration, rate);
        if (configuration.method == "gptq" || configuration.method == "rtn") run(configuration, NAN);
    }

    const std::string table = markdown(rows, baseline, model.weight_count());
    if (arguments.has("markdown")) write_file_atomic(arguments.get("markdown"), std::span(reinterpret_cast<const std::uint8_t*>(table.data()), table.size()));
    else std::printf("\n%s", table.c_str());
    if (arguments.has("svg")) {
        std::vector<PlotSeries> series;
        for (const Configuration& configuration : configurations) {
            PlotSeries line{configuration.description, {}};
            for (const Row& row : rows)
                if (row.config == configuration.id) line.points.push_back({row.bits_per_weight, row.perplexity});
            std::sort(line.points.begin(), line.points.end());
            if (!line.points.empty()) series.push_back(std::move(line));
        }
        const std::string svg = plot_svg(series, baseline.perplexity, "bits per weight (whole .nwc file)", "perplexity (log scale)");
        write_file_atomic(arguments.get("svg"), std::span(reinterpret_cast<const std::uint8_t*>(svg.data()), svg.size()));
    }
    if (arguments.has("json")) {
        nlohmann::json root = {{"model", model_path}, {"weights", model.weight_count()}, {"fp32_perplexity", baseline.perplexity},
                               {"fp32_mean_nll", baseline.mean_nll}, {"codecs", codec_paths}, {"rows", nlohmann::json::array()}};
        for (const Row& row : rows)
            root["rows"].push_back({{"config", row.config}, {"target", std::isnan(row.target) ? nlohmann::json("Q4_0") : nlohmann::json(row.target)},
                                    {"bits_per_weight", row.bits_per_weight}, {"file_bytes", row.file_bytes}, {"decoder_bytes", row.decoder_bytes}, {"mean_nll", row.mean_nll},
                                    {"perplexity", row.perplexity}, {"relative_mse", row.relative_mse}, {"setting", row.setting}, {"codec", row.codec},
                                    {"seconds", row.seconds}});
        const std::string text = root.dump(2) + "\n";
        write_file_atomic(arguments.get("json"), std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
    }
    return exit_ok;
}

}  // namespace nwc::cli
