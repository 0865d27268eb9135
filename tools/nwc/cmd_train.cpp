// nwc train: train a codec on the 2-D tensors of safetensors files and write a codec file.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "arguments.hpp"
#include "commands.hpp"
#include "nwc/codec/codec_evaluation.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/trainer.hpp"

namespace nwc::cli {
namespace {

constexpr const char* train_help = R"(usage: nwc train FILES... -o CODEC [options]

Trains a learned weight codec on every 2-D tensor of the safetensors FILES (normalized and chunked
as the compressor does) and writes the codec file CODEC. Tensors matching --holdout are kept out of
training and used to measure the finished codec's real coded rate and distortion.

options:
  -o, --output PATH        codec file to write (required)
  --lambda L               distortion weight, larger = more bits (default 100)
  --steps N                optimizer steps (default 1000)
  --batch B                chunks per step (default 2048)
  --lr X                   Adam learning rate (default 1e-4)
  --final-lr-fraction F    cosine decay of the learning rate to X*F (default 1 = constant)
  --warmup N               linear warm-up steps (default 0)
  --width W                hidden width of g_a and g_s (default 512)
  --blocks B               residual blocks of g_a and g_s (default 4)
  --latents M              latent channels per chunk (default 16)
  --chunk-size D           weights per chunk (default 16)
  --seed S                 random seed (default 1)
  --threads T              threads (default 1; 0 = all); the result does not depend on it
  --shard-rows R           chunks per data-parallel shard (default 256); part of the result
  --holdout REGEX          tensors to hold out (default: GPT-Neo layer 11 attention, 4 MT3 matrices)
  --dtype f32|f16|bf16     storage type of the codec's weights (default f16)
  --precision P            bits of the integer CDF tables, 12..16 (default 16)
  --table-tail T           probability each table leaves to its escape bin (default 1e-3: narrower
                           tables, a smaller decoder half, no measurable rate cost; the notes' 1e-9
                           doubles the tables of small codecs)
  --shared-prior           one prior for all levels (the paper's); default: one prior per level
  --straight-through       round the latents with a straight-through gradient instead of noise
  --log-every N            steps between progress lines (default: steps / 50)
  --json                   print one JSON object per progress line and a final summary
)";

dtype parse_dtype(const std::string& text) {
    if (text == "f32") return dtype::f32;
    if (text == "f16") return dtype::f16;
    if (text == "bf16") return dtype::bf16;
    throw UsageError("--dtype expects f32, f16 or bf16, got '" + text + "'");
}

nlohmann::json metrics_json(const StepMetrics& m, double steps_per_second) {
    return {{"step", m.step},
            {"loss", m.loss},
            {"mse", m.mse},
            {"bits_per_weight", m.bits_per_weight},
            {"bits_per_weight_by_level", std::vector<double>(m.bits_per_weight_by_level.begin(), m.bits_per_weight_by_level.begin() + 4)},
            {"gradient_norm", m.gradient_norm},
            {"learning_rate", m.learning_rate},
            {"steps_per_second", steps_per_second}};
}

}  // namespace

int run_train(const std::vector<std::string>& raw_arguments) {
    std::vector<std::string> arguments;
    for (const std::string& argument : raw_arguments) arguments.push_back(argument == "-o" ? "--output" : argument);
    for (const std::string& argument : arguments)
        if (argument == "--help" || argument == "-h") {
            std::printf("%s", train_help);
            return exit_ok;
        }
    const Arguments args(arguments,
                         {"output", "lambda", "steps", "batch", "lr", "final-lr-fraction", "warmup", "width", "blocks", "latents", "chunk-size",
                          "seed", "threads", "shard-rows", "holdout", "dtype", "precision", "table-tail", "log-every"},
                         {"json", "straight-through", "shared-prior"});
    if (args.positional().empty()) throw UsageError("no training files given");
    if (!args.has("output")) throw UsageError("-o CODEC is required");
    const bool json = args.flag("json");

    TrainingOptions options;
    options.architecture.width = int(args.get_integer("width", 512));
    options.architecture.blocks = int(args.get_integer("blocks", 4));
    options.architecture.latents = int(args.get_integer("latents", 16));
    options.architecture.chunk_size = int(args.get_integer("chunk-size", 16));
    options.architecture.per_level_prior = !args.flag("shared-prior");
    options.loss.lambda = args.get_number("lambda", 100.0);
    options.loss.straight_through = args.flag("straight-through");
    options.steps = args.get_integer("steps", 1000);
    options.batch = int(args.get_integer("batch", 2048));
    options.shard_rows = int(args.get_integer("shard-rows", 256));
    options.learning_rate = args.get_number("lr", 1e-4);
    options.final_learning_rate_fraction = args.get_number("final-lr-fraction", 1.0);
    options.warmup_steps = args.get_integer("warmup", 0);
    options.seed = std::uint64_t(args.get_integer("seed", 1));
    options.threads = int(args.get_integer("threads", 1));
    const dtype storage = parse_dtype(args.get("dtype", "f16"));
    const int precision = int(args.get_integer("precision", 16));
    const double table_tail = args.get_number("table-tail", 1e-3);
    if (!(table_tail > 0.0 && table_tail < 0.5)) throw UsageError("--table-tail must be in (0, 0.5)");
    if (precision < CdfTable::min_precision || precision > CdfTable::max_precision) throw UsageError("--precision must be in 12..16");
    const std::int64_t log_every = std::max<std::int64_t>(1, args.get_integer("log-every", std::max<std::int64_t>(1, options.steps / 50)));
    try {
        options.validate();
    } catch (const error& e) {
        throw UsageError(e.message());
    }

    const auto load_start = std::chrono::steady_clock::now();
    const TrainingCorpus corpus = TrainingCorpus::load(args.positional(), args.get("holdout", default_holdout_regex), options.architecture.chunk_size);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    if (!json)
        std::fprintf(stderr, "nwc train: %lld training chunks, %zu held-out matrices, variance %.4f (loaded in %.1f s)\n",
                     (long long)corpus.chunk_count(), corpus.held_out().size(), corpus.variance(), load_seconds);

    CodecTrainer trainer(options, corpus);
    const bool terminal = !json && ::isatty(STDERR_FILENO);
    const auto start = std::chrono::steady_clock::now();
    auto last_log = start;
    std::int64_t last_step = 0;
    StepMetrics tail{};  // averaged over the last log interval
    int tail_count = 0;
    nlohmann::json final_training;
    for (std::int64_t step = 0; step < options.steps; ++step) {
        const StepMetrics m = trainer.step();
        tail.loss += m.loss;
        tail.mse += m.mse;
        tail.bits_per_weight += m.bits_per_weight;
        for (std::size_t l = 0; l < 4; ++l) tail.bits_per_weight_by_level[l] += m.bits_per_weight_by_level[l];
        ++tail_count;
        if (m.step % log_every != 0 && m.step != options.steps) continue;
        const auto now = std::chrono::steady_clock::now();
        const double rate = double(m.step - last_step) / std::max(1e-9, std::chrono::duration<double>(now - last_log).count());
        last_log = now;
        last_step = m.step;
        StepMetrics average = m;
        average.loss = tail.loss / tail_count;
        average.mse = tail.mse / tail_count;
        average.bits_per_weight = tail.bits_per_weight / tail_count;
        for (std::size_t l = 0; l < 4; ++l) average.bits_per_weight_by_level[l] = tail.bits_per_weight_by_level[l] / tail_count;
        tail = {};
        tail_count = 0;
        if (m.step == options.steps) final_training = metrics_json(average, 0.0);
        if (json) {
            std::printf("%s\n", metrics_json(average, rate).dump().c_str());
            std::fflush(stdout);
        } else {
            std::fprintf(stderr, "%sstep %lld/%lld  %.2f steps/s  %.3f bits/weight  mse %.5f  loss %.4f  lr %.2e%s", terminal ? "\r" : "",
                         (long long)m.step, (long long)options.steps, rate, average.bits_per_weight, average.mse, average.loss, m.learning_rate,
                         terminal ? "   " : "\n");
            std::fflush(stderr);
        }
    }
    if (terminal) std::fprintf(stderr, "\n");
    const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Provenance: everything that determines the bytes, nothing that does not (no paths, threads, times).
    nlohmann::json provenance;
    nlohmann::json files = nlohmann::json::array();
    for (const CorpusFile& file : corpus.files())
        files.push_back({{"name", std::filesystem::path(file.path).filename().string()},
                         {"size", file.size},
                         {"sha256", file.sha256},
                         {"training_matrices", file.training_matrices},
                         {"held_out_matrices", file.held_out_matrices}});
    provenance["data"] = files;
    provenance["holdout_regex"] = corpus.holdout_regex();
    provenance["normalization"] = "per-column std, fp16 scales (nwc::Chunker)";
    provenance["architecture"] = {{"chunk_size", options.architecture.chunk_size}, {"width", options.architecture.width},
                                  {"blocks", options.architecture.blocks}, {"latents", options.architecture.latents},
                                  {"levels", options.architecture.levels},
                                  {"prior_groups", options.architecture.prior_groups()}};
    provenance["training"] = {{"lambda", options.loss.lambda},
                              {"level_rate_weights", options.loss.level_rate_weights},
                              {"data_variance", trainer.options().loss.data_variance},
                              {"quantization_proxy", options.loss.straight_through ? "straight-through rounding" : "uniform noise"},
                              {"steps", options.steps},
                              {"batch", options.batch},
                              {"shard_rows", options.shard_rows},
                              {"learning_rate", options.learning_rate},
                              {"final_learning_rate_fraction", options.final_learning_rate_fraction},
                              {"warmup_steps", options.warmup_steps},
                              {"gradient_clip", options.gradient_clip},
                              {"seed", options.seed},
                              {"final", final_training}};
    provenance["weight_dtype"] = std::string(dtype_name(storage));
    provenance["table_precision"] = precision;
    provenance["table_tail_mass"] = table_tail;

    NeuralCodec codec = trainer.freeze(storage, precision, provenance.dump(), table_tail);
    nlohmann::json held_out = nlohmann::json::array();
    for (int level = 0; level < options.architecture.levels && !corpus.held_out().empty(); ++level) {
        const RateDistortion rd = evaluate_codec(codec, corpus.held_out(), level, options.threads);
        held_out.push_back({{"level", level},
                            {"bits_per_weight", rd.bits_per_weight()},
                            {"ideal_bits_per_weight", rd.ideal_bits_per_weight()},
                            {"mse", rd.mse()},
                            {"weights", rd.weights}});
    }
    provenance["held_out"] = held_out;
    codec.set_provenance(provenance.dump());
    write_codec_file(args.get("output"), codec);
    const std::uint64_t codec_bytes = std::filesystem::file_size(args.get("output"));
    const std::size_t decoder_bytes = serialize_codec_decoder(codec.decoder()).size();

    nlohmann::json summary = {{"output", args.get("output")},
                              {"codec_bytes", codec_bytes},
                              {"decoder_half_bytes", decoder_bytes},
                              {"train_seconds", train_seconds},
                              {"training_chunks", corpus.chunk_count()},
                              {"final", final_training},
                              {"held_out", held_out}};
    if (json) {
        std::printf("%s\n", summary.dump().c_str());
    } else {
        std::fprintf(stderr, "nwc train: wrote %s (%llu bytes, decoder half %zu bytes) after %.1f s\n", args.get("output").c_str(),
                     (unsigned long long)codec_bytes, decoder_bytes, train_seconds);
        for (const auto& row : held_out)
            std::fprintf(stderr, "  held out, level %d: %.4f bits/weight (ideal %.4f), mse %.6f\n", row["level"].get<int>(),
                         row["bits_per_weight"].get<double>(), row["ideal_bits_per_weight"].get<double>(), row["mse"].get<double>());
    }
    return exit_ok;
}

}  // namespace nwc::cli
