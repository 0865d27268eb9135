// nwc train: train a codec on the 2-D tensors of safetensors files and write a codec file.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "nwc/codec/codec_evaluation.hpp"
#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/sha256.hpp"
#include "nwc/codec/trainer.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/entropy/cdf_table.hpp"

namespace nwc::cli {
namespace {

/// The storage types a codec's weights can have, as the command line spells them ("f16").
constexpr dtype codec_dtypes[] = {dtype::f32, dtype::f16, dtype::bf16};

std::string lowercase_name(dtype type) {
    std::string name(dtype_name(type));
    for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
    return name;
}

/// --holdout's rule: names in which the ECMAScript expression `pattern` is found (empty: none).
/// The regular expression lives here, not in the library (TrainingCorpus takes any predicate).
HoldoutRule holdout_matching(const std::string& pattern) {
    if (pattern.empty()) return {pattern, {}};
    try {
        return {pattern, [expression = std::regex(pattern, std::regex::ECMAScript)](std::string_view name) {
                    return std::regex_search(name.begin(), name.end(), expression);
                }};
    } catch (const std::regex_error& e) {
        fail(errc::invalid_argument, "hold-out regex '", pattern, "': ", e.what());
    }
}

dtype codec_dtype_named(const std::string& name) {
    for (dtype type : codec_dtypes)
        if (lowercase_name(type) == name) return type;
    throw UsageError("--dtype expects f32, f16 or bf16, got '" + name + "'");
}

struct TrainSettings {
    TrainingOptions training;
    std::string output;
    std::string holdout = default_holdout_regex;
    std::string storage = lowercase_name(default_codec_dtype);
    int precision = default_table_precision;
    double table_tail = default_table_tail_mass;
    std::optional<std::int64_t> log_every;
    std::string retable;  ///< a codec whose tables are rebuilt instead of training one
};

/// What the training loop reports: the metrics of every logged interval and of the last one.
struct TrainingLog {
    nlohmann::json entries = nlohmann::json::array();
    nlohmann::json final_metrics = nullptr;
    double seconds = 0.0;
};

struct TrainCommand {
    using Settings = TrainSettings;

    static CommandText text() {
        return {.name = "train",
                .usage = "FILES... -o CODEC [options]",
                .description = R"(Trains a learned weight codec on every 2-D tensor of the safetensors FILES (normalized and chunked
as the compressor does) and writes the codec file CODEC. Tensors matching --holdout are kept out of
training and used to measure the finished codec's real coded rate and distortion. Progress goes to
stderr; --json prints the summary with every progress entry as one JSON object at the end.
With --retable CODEC nothing is trained: CODEC's integer tables are rebuilt from the prior parameters
it stores, with --precision and --table-tail, its networks kept, and measured on the held-out FILES.)",
                .positional = "training FILES",
                .min_positional = 1,
                .max_positional = std::size_t(-1),
                .bad_input = "unreadable or corrupt training file, nothing to train on"};
    }

    static void declare(OptionTable& table, Settings& settings) {
        TrainingOptions& training = settings.training;
        table.value("output", "PATH", "codec file to write", settings.output).with_short('o').mark_required();
        table.value("lambda", "L", "distortion weight, larger = more bits", training.loss.lambda).above(0);
        table.value("steps", "N", "optimizer steps", training.steps).at_least(0);
        table.value("batch", "B", "chunks per step", training.batch).at_least(1);
        table.value("lr", "X", "Adam learning rate", training.learning_rate).above(0);
        table.value("final-lr-fraction", "F", "cosine decay of the learning rate to X*F; 1 = constant", training.final_learning_rate_fraction).at_least(0);
        table.value("warmup", "N", "linear warm-up steps", training.warmup_steps).at_least(0);
        table.value("width", "W", "hidden width of g_a and g_s", training.architecture.width);
        table.value("blocks", "B", "residual blocks of g_a and g_s", training.architecture.blocks);
        table.value("latents", "M", "latent channels per chunk", training.architecture.latents);
        table.value("chunk-size", "D", "weights per chunk", training.architecture.chunk_size);
        table.value("seed", "S", "random seed", training.seed);
        table.value("threads", "T", "threads, 0 = all cores; the result does not depend on it", training.threads).at_least(0);
        table.value("shard-rows", "R", "chunks per data-parallel shard; part of the result", training.shard_rows).at_least(1);
        table.value("holdout", "REGEX", "tensors to hold out, a regular expression; the default holds out GPT-Neo layer 11's attention and 4 MT3 matrices", settings.holdout);
        std::vector<std::string> dtypes;
        for (dtype type : codec_dtypes) dtypes.push_back(lowercase_name(type));
        table.choice("dtype", "T", "storage type of the codec's weights", settings.storage, dtypes);
        table.value("precision", "P", "bits of the integer CDF tables", settings.precision).at_least(CdfTable::min_precision).at_most(CdfTable::max_precision);
        table.value("table-tail", "T", "probability each table leaves to its escape bin; smaller: wider tables, a larger decoder half", settings.table_tail)
            .above(0)
            .below(0.5);
        table.flag("shared-prior", "one prior for all levels (the paper's); by default one prior per level", training.architecture.per_level_prior, false);
        table.flag("straight-through", "round the latents with a straight-through gradient instead of noise", training.loss.straight_through);
        table.value("log-every", "N", "steps between progress lines", settings.log_every).shows_default("steps / 50").at_least(1);
        table.value("retable", "CODEC", "rebuild CODEC's tables (--precision, --table-tail) instead of training; its networks are kept", settings.retable);
    }

    static Outcome run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation);
};

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

/// Runs every step; every `log_every` steps (and at the last) logs the metrics averaged over the
/// interval: a progress line on stderr (redrawn in place on a terminal, in text mode) and an entry.
TrainingLog train(CodecTrainer& trainer, const TrainSettings& settings, const Invocation& invocation) {
    const std::int64_t steps = settings.training.steps;
    const std::int64_t log_every = settings.log_every.value_or(std::max<std::int64_t>(1, steps / 50));
    const bool terminal = !invocation.json && ::isatty(STDERR_FILENO);
    TrainingLog log;
    const auto start = std::chrono::steady_clock::now();
    auto last_log = start;
    std::int64_t last_step = 0;
    StepMetrics sum{};
    int count = 0;
    for (std::int64_t step = 0; step < steps; ++step) {
        const StepMetrics m = trainer.step();
        sum.loss += m.loss;
        sum.mse += m.mse;
        sum.bits_per_weight += m.bits_per_weight;
        for (std::size_t l = 0; l < 4; ++l) sum.bits_per_weight_by_level[l] += m.bits_per_weight_by_level[l];
        ++count;
        if (m.step % log_every != 0 && m.step != steps) continue;
        const auto now = std::chrono::steady_clock::now();
        const double rate = double(m.step - last_step) / std::max(1e-9, std::chrono::duration<double>(now - last_log).count());
        last_log = now;
        last_step = m.step;
        StepMetrics average = m;
        average.loss = sum.loss / count;
        average.mse = sum.mse / count;
        average.bits_per_weight = sum.bits_per_weight / count;
        for (std::size_t l = 0; l < 4; ++l) average.bits_per_weight_by_level[l] = sum.bits_per_weight_by_level[l] / count;
        sum = {};
        count = 0;
        if (m.step == steps) log.final_metrics = metrics_json(average, 0.0);
        log.entries.push_back(metrics_json(average, rate));
        std::fprintf(stderr, "%sstep %lld/%lld  %.2f steps/s  %.3f bits/weight  mse %.5f  loss %.4f  lr %.2e%s", terminal ? "\r" : "", (long long)m.step,
                     (long long)steps, rate, average.bits_per_weight, average.mse, average.loss, m.learning_rate, terminal ? "   " : "\n");
        std::fflush(stderr);
    }
    if (terminal) std::fprintf(stderr, "\n");
    log.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return log;
}

/// Provenance: everything that determines the bytes, nothing that does not (no paths, threads, times).
nlohmann::json provenance_json(const TrainSettings& settings, const CodecTrainer& trainer, const TrainingCorpus& corpus, const TrainingLog& log) {
    const TrainingOptions& options = settings.training;
    nlohmann::json files = nlohmann::json::array();
    for (const CorpusFile& file : corpus.files())
        files.push_back({{"name", std::filesystem::path(file.path).filename().string()},
                         {"size", file.size},
                         {"sha256", file.sha256},
                         {"training_matrices", file.training_matrices},
                         {"held_out_matrices", file.held_out_matrices}});
    nlohmann::json provenance;
    provenance["data"] = files;
    provenance["holdout_regex"] = corpus.holdout_description();
    provenance["normalization"] = "per-column std, fp16 scales (nwc::Chunker)";
    provenance["architecture"] = {{"chunk_size", options.architecture.chunk_size}, {"width", options.architecture.width},
                                  {"blocks", options.architecture.blocks},         {"latents", options.architecture.latents},
                                  {"levels", options.architecture.levels},         {"prior_groups", options.architecture.prior_groups()}};
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
                              {"final", log.final_metrics}};
    provenance["weight_dtype"] = std::string(dtype_name(codec_dtype_named(settings.storage)));
    provenance["table_precision"] = settings.precision;
    provenance["table_tail_mass"] = settings.table_tail;
    return provenance;
}

/// The real coded rate and distortion of the frozen codec on the held-out matrices, per level.
nlohmann::json held_out_json(const NeuralCodec& codec, const TrainingCorpus& corpus, const TrainingOptions& options) {
    nlohmann::json held_out = nlohmann::json::array();
    for (int level = 0; level < options.architecture.levels && !corpus.held_out().empty(); ++level) {
        const RateDistortion rd = evaluate_codec(codec, corpus.held_out(), level, options.threads);
        held_out.push_back({{"level", level},
                            {"bits_per_weight", rd.bits_per_weight()},
                            {"ideal_bits_per_weight", rd.ideal_bits_per_weight()},
                            {"mse", rd.mse()},
                            {"weights", rd.weights}});
    }
    return held_out;
}

/// --retable: the codec's tables rebuilt from its stored prior parameters (the shipped codecs are
/// referenced by SHA-256, so their tables' size no longer costs a file anything, and a narrow
/// table's escapes did: docs/bench/codec.md, "Table tail"). The provenance keeps the training's
/// record, with the new table settings, the held-out figures measured again, and where it came from.
Outcome retable(const TrainSettings& settings, const std::vector<std::string>& positional) {
    const std::filesystem::path source = settings.retable;
    const std::vector<std::uint8_t> source_bytes = read_file(source);
    const NeuralCodec original = parse_codec(source_bytes, source.string());
    TrainingOptions options = settings.training;
    options.architecture = original.architecture();
    const TrainingCorpus corpus = TrainingCorpus::load(positional, holdout_matching(settings.holdout), options.architecture.chunk_size);
    NeuralCodec codec = CodecModel::from_codec(original).freeze(original.weight_dtype(), settings.precision, "{}", settings.table_tail);
    nlohmann::json provenance = nlohmann::json::parse(original.provenance(), nullptr, false);
    if (!provenance.is_object()) provenance = nlohmann::json::object();
    nlohmann::json origin = nlohmann::json::object();
    origin["file"] = source.filename().string();
    origin["sha256"] = nwc::detail::sha256_hex(source_bytes);
    for (const char* key : {"table_precision", "table_tail_mass", "held_out"})
        if (provenance.contains(key)) origin[key] = provenance[key];
    provenance["retabled_from"] = origin;
    provenance["table_precision"] = settings.precision;
    provenance["table_tail_mass"] = settings.table_tail;
    const nlohmann::json held_out = held_out_json(codec, corpus, options);
    provenance["held_out"] = held_out;
    codec.set_provenance(provenance.dump());
    write_codec_file(settings.output, codec);
    const std::size_t decoder_bytes = serialize_codec_decoder(codec.decoder()).size();
    std::fprintf(stderr, "nwc train: rebuilt the tables of %s into %s (decoder half %zu bytes)\n", source.string().c_str(), settings.output.c_str(),
                 decoder_bytes);
    for (const auto& row : held_out)
        std::fprintf(stderr, "  held out, level %d: %.4f bits/weight (ideal %.4f), mse %.6f\n", row["level"].get<int>(), row["bits_per_weight"].get<double>(),
                     row["ideal_bits_per_weight"].get<double>(), row["mse"].get<double>());
    Outcome outcome;
    outcome.json = {{"output", settings.output},
                    {"codec_bytes", std::filesystem::file_size(settings.output)},
                    {"decoder_half_bytes", decoder_bytes},
                    {"retabled_from", settings.retable},
                    {"held_out", held_out}};
    return outcome;
}

Outcome TrainCommand::run(const Settings& settings, const std::vector<std::string>& positional, const Invocation& invocation) {
    try {
        settings.training.validate();
    } catch (const error& problem) {
        throw UsageError(problem.message());
    }
    if (!settings.retable.empty()) return retable(settings, positional);
    const auto load_start = std::chrono::steady_clock::now();
    const TrainingCorpus corpus = TrainingCorpus::load(positional, holdout_matching(settings.holdout), settings.training.architecture.chunk_size);
    const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    std::fprintf(stderr, "nwc train: %lld training chunks, %zu held-out matrices, variance %.4f (loaded in %.1f s)\n", (long long)corpus.chunk_count(),
                 corpus.held_out().size(), corpus.variance(), load_seconds);

    CodecTrainer trainer(settings.training, corpus);
    const TrainingLog log = train(trainer, settings, invocation);
    nlohmann::json provenance = provenance_json(settings, trainer, corpus, log);
    NeuralCodec codec = trainer.freeze(codec_dtype_named(settings.storage), settings.precision, provenance.dump(), settings.table_tail);
    const nlohmann::json held_out = held_out_json(codec, corpus, settings.training);
    provenance["held_out"] = held_out;
    codec.set_provenance(provenance.dump());
    write_codec_file(settings.output, codec);
    const std::uint64_t codec_bytes = std::filesystem::file_size(settings.output);
    const std::size_t decoder_bytes = serialize_codec_decoder(codec.decoder()).size();

    std::fprintf(stderr, "nwc train: wrote %s (%llu bytes, decoder half %zu bytes) after %.1f s\n", settings.output.c_str(), (unsigned long long)codec_bytes,
                 decoder_bytes, log.seconds);
    for (const auto& row : held_out)
        std::fprintf(stderr, "  held out, level %d: %.4f bits/weight (ideal %.4f), mse %.6f\n", row["level"].get<int>(), row["bits_per_weight"].get<double>(),
                     row["ideal_bits_per_weight"].get<double>(), row["mse"].get<double>());
    Outcome outcome;  // the text went to stderr as it happened; stdout stays empty in text mode
    outcome.json = {{"output", settings.output},   {"codec_bytes", codec_bytes},        {"decoder_half_bytes", decoder_bytes},
                    {"train_seconds", log.seconds}, {"training_chunks", corpus.chunk_count()}, {"final", log.final_metrics},
                    {"held_out", held_out},         {"log", log.entries}};
    return outcome;
}

}  // namespace

int run_train(const std::vector<std::string>& arguments) { return command_main<TrainCommand>(arguments); }

}  // namespace nwc::cli
