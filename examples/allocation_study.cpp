// Sensitivity-driven rate allocation for entropy-coded scalar quantization (issue #16), on a real
// Llama model: which normalization, which loss model, which sensitivity protocol, and what it buys
// at 3 and 4 bits per weight against one global step and against GPTQ with a scale per 32 weights.
//
//   nwc_example_allocation_study MODEL TOKENIZER CALIBRATION.txt EVALUATION.txt [key=value ...]
//
// modes (mode=...): baselines | sensitivity | normalization | table | sequential | protocol
// keys: threads (2), targets (3,4), noise (0.05), windows (16), pairs (4), window (512),
//       hessian_windows (-1: all), grid (8 steps per octave), sensitivities (file to cache S in),
//       scales (column,row,tensor), ldlq (0,1), models (mse,hessian), finetune (0,1),
//       embed_ldlq (1), norms (fp16|fp32|int8), table (hist16|hist8), scale_for (per-tensor
//       overrides part:scale,... for every matrix whose name contains `part`, e.g.
//       scale_for=k_proj:row,embed:column), show_steps (0), closed_form (1), from_plain (1),
//       rates (4,3: normalization mode), sequential mode: scale, model, seq_ldlq (1),
//       seq_alloc (slope|global), seq_target (block|model), seq_windows (32), seq_window (256)
//
// Everything that is tuned (Hessians, sensitivities, steps) uses the calibration text; the
// evaluation text is only scored. Rates are IDEAL symbol entropies plus side information, all of
// it counted (see `rate_of`): per coded matrix a 32-bit step, its fp16 scales (one per column, per
// row, or one for the tensor), and its probability table (8 bytes of header, 2 bytes per bin,
// tails beyond the table escaped at 16 raw bits each); the 1-D norm scales at 16 bits (fp16) each.
// Bits per weight are over ALL weights of the model (norms included).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/half.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/sensitivity.hpp"
#include "nwc/llm/sequential_compression.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/entropy_coded_scalar.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/rate_allocation.hpp"
#include "nwc/quant/round_to_nearest.hpp"

using namespace nwc;
using namespace nwc::llm;

namespace {

// ---------------------------------------------------------------- settings and shared state

std::map<std::string, std::string> g_settings;
std::string g_table = "hist16";  // probability table format (see symbol_bits)
std::string get(const std::string& key, const std::string& fallback) { return g_settings.count(key) ? g_settings[key] : fallback; }
std::vector<std::string> get_list(const std::string& key, const std::string& fallback) {
    std::vector<std::string> items;
    std::stringstream stream(get(key, fallback));
    for (std::string item; std::getline(stream, item, ',');)
        if (!item.empty()) items.push_back(item);
    return items;
}

std::string read_text(const char* path) {
    const std::vector<std::uint8_t> bytes = read_file(path);
    return std::string(bytes.begin(), bytes.end());
}

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// How a matrix is normalized before one step applies to it.
enum class Scale { column, row, tensor };
const char* scale_name(Scale scale) { return scale == Scale::column ? "column" : scale == Scale::row ? "row" : "tensor"; }
Scale scale_from(const std::string& text) {
    if (text == "column") return Scale::column;
    if (text == "row") return Scale::row;
    require(text == "tensor", errc::invalid_argument, "scale '", text, "' (column, row, tensor)");
    return Scale::tensor;
}

/// The predicted loss of a coded tensor: S x per-weight MSE, or S x per-weight H-weighted MSE
/// (H normalized to mean diagonal 1, so that white noise gives the same number under both).
enum class LossModel { mse, hessian };
const char* model_name(LossModel model) { return model == LossModel::mse ? "S*mse" : "S*mseH"; }

struct Study {
    LlamaWeights weights;
    std::vector<int> calibration, evaluation;
    std::vector<std::string> matrices, vectors;  // 2-D (coded) and 1-D tensors, model order
    std::int64_t total_weights = 0, vector_weights = 0;
    LinearHessians hessians;
    std::map<std::string, LDLFeedback> feedback;  // per matrix: LDLQ factorization of its Hessian
    SensitivityReport sensitivity;
    SensitivityOptions sensitivity_options;
    int threads = 2;
    int grid = 8;
    std::string norms = "fp16";
    std::map<std::string, Scale> scale_override;
};
Study g;

// ---------------------------------------------------------------- rates

/// Bits of the symbols of a histogram with the probability table counted: the table covers a
/// window [low, high] of symbol values plus one escape bin; symbols outside are the escape symbol
/// followed by 16 raw bits. The window is trimmed from the ends while that lowers the total.
/// Returns entropy bits (symbols + escapes) and sets `table_bits`.
double symbol_bits(const SymbolHistogram& histogram, double& table_bits) {
    const std::vector<std::uint64_t>& counts = histogram.counts;
    const double total = double(histogram.total());
    std::size_t low = 0, high = counts.size();  // window [low, high)
    while (low < high && counts[low] == 0) ++low;
    while (high > low && counts[high - 1] == 0) --high;
    // hist16: the empirical distribution itself (16-bit frequencies, 2 bytes per bin), ideal code
    // length. hist8: counts scaled so that the largest is 255 (a nonzero count stays >= 1), one byte
    // per bin; the code length is the cross-entropy under that coarser distribution.
    const bool compact = g_table == "hist8";
    const auto cost = [&](std::size_t a, std::size_t b, double& table) {
        double inside = 0.0, largest = 0.0;
        for (std::size_t i = a; i < b; ++i) inside += double(counts[i]), largest = std::max(largest, double(counts[i]));
        const double escaped = total - inside;
        largest = std::max(largest, escaped);
        const auto stored = [&](double count) { return compact && count > 0.0 ? std::max(1.0, std::round(255.0 * count / largest)) : count; };
        double stored_total = stored(escaped);
        for (std::size_t i = a; i < b; ++i) stored_total += stored(double(counts[i]));
        double bits = 0.0;
        for (std::size_t i = a; i < b; ++i)
            if (counts[i] != 0) bits -= double(counts[i]) * std::log2(stored(double(counts[i])) / stored_total);
        if (escaped > 0.0) bits += escaped * (16.0 - std::log2(stored(escaped) / stored_total));
        table = 8.0 * (8.0 + (compact ? 1.0 : 2.0) * double(b - a + (escaped > 0.0 ? 1 : 0)));
        return bits;
    };
    double table = 0.0, best = cost(low, high, table) + table;
    for (bool improved = true; improved && high - low > 1;) {
        improved = false;
        double table_a = 0.0, table_b = 0.0;
        const double drop_low = cost(low + 1, high, table_a) + table_a, drop_high = cost(low, high - 1, table_b) + table_b;
        if (std::min(drop_low, drop_high) < best) {
            if (drop_low <= drop_high) ++low;
            else --high;
            best = std::min(drop_low, drop_high);
            improved = true;
        }
    }
    const double bits = cost(low, high, table_bits);
    return bits;
}

// ---------------------------------------------------------------- coding one matrix

struct Coded {
    Tensor<float> reconstruction;
    double symbol_bits = 0.0, side_bits = 0.0;  // side: step + scales + table
    double mse = 0.0, mse_h = 0.0;              // per weight; mse_h under H / mean(diag H)
    double bits() const { return symbol_bits + side_bits; }
};

double rms_of(const Tensor<float>& tensor) {
    double squares = 0.0;
    for (float value : tensor.values()) squares += double(value) * value;
    return std::sqrt(squares / double(tensor.numel()));
}

void measure_error(const Tensor<float>& weight, const Tensor<double>& hessian, Coded& coded) {
    const Eigen::MatrixXd error = weight.matrix().cast<double>() - coded.reconstruction.matrix().cast<double>();
    const double n = double(weight.numel());
    coded.mse = error.squaredNorm() / n;
    const auto h = hessian.matrix();
    coded.mse_h = (error * h).cwiseProduct(error).sum() / (h.diagonal().mean() * n);
}

/// ECSQ of `weight` with normalized step `step`; LDLQ with `feedback` when given.
Coded code_ecsq(const Tensor<float>& weight, Scale scale, double step, const Tensor<double>& hessian, const LDLFeedback* feedback) {
    std::vector<half> scales;
    NormalizationAxis axis = NormalizationAxis::per_row;
    if (scale == Scale::tensor) {
        scales.assign(std::size_t(weight.rows()), to_half(float(rms_of(weight))));
    } else {
        axis = scale == Scale::column ? NormalizationAxis::per_column : NormalizationAxis::per_row;
        scales = Chunker(ChunkerOptions{.axis = axis}).compute_scales(weight.view());
    }
    EntropyCodedScalar quantizer(EntropyCodedScalarOptions{float(step), axis, scales});
    Coded coded;
    if (feedback != nullptr) {
        LDLQOptions options;
        options.threads = 1;
        options.compute_proxy_loss = false;
        coded.reconstruction = LDLQCompensator<EntropyCodedScalar>(options).compress(weight.view(), *feedback, hessian.matrix(), quantizer).reconstructed;
    } else {
        coded.reconstruction = quantizer.quantize(weight.view());
    }
    double table_bits = 0.0;
    coded.symbol_bits = symbol_bits(quantizer.histogram(), table_bits);
    coded.side_bits = 32.0 + table_bits + 16.0 * double(scale == Scale::tensor ? 1 : scales.size());
    measure_error(weight, hessian, coded);
    return coded;
}

/// A configuration of the coder for every matrix.
struct Config {
    Scale scale = Scale::tensor;
    bool ldlq = false;
    Scale scale_of(const std::string& name) const {
        for (const auto& [part, chosen] : g.scale_override)
            if (name.find(part) != std::string::npos) return chosen;
        return scale;
    }
};

const Tensor<float>& weight_of(const std::string& name) { return g.weights.tensor(name); }
const LDLFeedback* feedback_of(const std::string& name, bool ldlq) {
    if (!ldlq) return nullptr;
    if (name == "model.embed_tokens.weight" && get("embed_ldlq", "1") != "1") return nullptr;
    return &g.feedback.at(name);
}
Coded code_matrix(const std::string& name, const Config& config, double step) {
    return code_ecsq(weight_of(name), config.scale_of(name), step, g.hessians.at(name), feedback_of(name, config.ldlq));
}

// ---------------------------------------------------------------- the model and its losses

double norm_bits() {
    if (g.norms == "fp32") return 32.0 * double(g.vector_weights);
    if (g.norms == "int8") return 8.0 * double(g.vector_weights) + 64.0 * double(g.vectors.size());  // u8 codes + fp32 min, step
    return 16.0 * double(g.vector_weights);
}

/// The norm scales as stored (fp16, fp32, or 8-bit uniform between min and max).
Tensor<float> stored_vector(const Tensor<float>& vector) {
    Tensor<float> result = vector;
    if (g.norms == "fp16") {
        for (float& value : result.values()) value = to_float(to_half(value));
    } else if (g.norms == "int8") {
        const auto [low, high] = std::minmax_element(vector.values().begin(), vector.values().end());
        const float step = (*high - *low) / 255.0f;
        for (float& value : result.values()) value = step > 0.0f ? *low + step * std::round((value - *low) / step) : value;
    }
    return result;
}

LlamaModel model_with(const std::map<std::string, Tensor<float>>& replaced) {
    LlamaWeights weights = g.weights;
    for (const std::string& name : g.vectors) weights.tensor(name) = stored_vector(g.weights.tensor(name));
    for (const auto& [name, tensor] : replaced) weights.tensor(name) = tensor;
    return LlamaModel(std::move(weights));
}

double evaluation_nll(const LlamaModel& model) {
    PerplexityOptions options;
    options.threads = g.threads;
    return evaluate_perplexity(model, g.evaluation, options).mean_nll;
}

/// Mean NLL on the sensitivity windows of the calibration text.
double calibration_nll(const LlamaModel& model) {
    PerplexityOptions options;
    options.threads = g.threads;
    options.window = g.sensitivity_options.window;
    options.max_windows = g.sensitivity_options.windows;
    return evaluate_perplexity(model, g.calibration, options).mean_nll;
}

double sensitivity_of(const std::string& name) { return g.sensitivity.at(name).sensitivity; }
double predicted_loss(const std::string& name, const Coded& coded, LossModel model) {
    return sensitivity_of(name) * (model == LossModel::mse ? coded.mse : coded.mse_h);
}

// ---------------------------------------------------------------- curves and allocation

double grid_step(int index) { return std::exp2(double(index) / g.grid); }
int grid_low() { return -5 * g.grid; }   // step 1/32 of the scale
int grid_high() { return 2 * g.grid; }   // step 4 scales: nearly everything rounds to 0

struct CurvePoint {
    double step, bits, mse, mse_h;
};
std::map<std::string, std::vector<CurvePoint>> g_curves;  // key: config + name

std::string config_key(const Config& config, const std::string& name) {
    return std::string(scale_name(config.scale_of(name))) + (config.ldlq ? "+ldlq:" : ":") + name;
}

const std::vector<CurvePoint>& curve_of(const Config& config, const std::string& name) {
    const std::string key = config_key(config, name);
    auto found = g_curves.find(key);
    if (found != g_curves.end()) return found->second;
    std::vector<CurvePoint> curve;
    for (int index = grid_low(); index <= grid_high(); ++index) {
        const Coded coded = code_matrix(name, config, grid_step(index));
        curve.push_back({grid_step(index), coded.bits(), coded.mse, coded.mse_h});
    }
    return g_curves.emplace(key, std::move(curve)).first->second;
}

struct Allocation {
    std::map<std::string, double> steps;
    double predicted = 0.0;  // sum of predicted losses
};

double matrix_budget_bits(double target_bpw) { return target_bpw * double(g.total_weights) - norm_bits(); }

/// Per-tensor steps at equal slope on the curves of `curve_config` with loss model `model`.
Allocation allocate(const Config& curve_config, LossModel model, double budget_bits) {
    std::vector<OperatingCurve> curves;
    for (const std::string& name : g.matrices) {
        OperatingCurve curve;
        for (const CurvePoint& point : curve_of(curve_config, name)) {
            const double loss = sensitivity_of(name) * (model == LossModel::mse ? point.mse : point.mse_h);
            curve.push_back({std::ceil(point.bits), loss});
        }
        curves.push_back(std::move(curve));
    }
    const RateAllocation chosen = allocate_rate(curves, std::floor(budget_bits));
    Allocation result;
    for (std::size_t i = 0; i < g.matrices.size(); ++i) result.steps[g.matrices[i]] = grid_step(grid_low() + int(chosen.choice[i]));
    result.predicted = chosen.loss;
    return result;
}

/// Steps for all matrices: one global step (normalized units).
Allocation global_step(double step) {
    Allocation result;
    for (const std::string& name : g.matrices) result.steps[name] = step;
    return result;
}

struct Outcome {
    std::map<std::string, Tensor<float>> reconstructions;
    double matrix_bits = 0.0, side_bits = 0.0, predicted_mse = 0.0, predicted_h = 0.0;
    double bpw() const { return (matrix_bits + norm_bits()) / double(g.total_weights); }
    double side_bpw() const { return (side_bits + norm_bits()) / double(g.total_weights); }
};

Outcome code_all(const Config& config, const Allocation& allocation, double factor = 1.0) {
    Outcome outcome;
    for (const std::string& name : g.matrices) {
        Coded coded = code_matrix(name, config, allocation.steps.at(name) * factor);
        outcome.matrix_bits += coded.bits();
        outcome.side_bits += coded.side_bits;
        outcome.predicted_mse += predicted_loss(name, coded, LossModel::mse);
        outcome.predicted_h += predicted_loss(name, coded, LossModel::hessian);
        outcome.reconstructions[name] = std::move(coded.reconstruction);
    }
    return outcome;
}

/// Codes with the allocation's steps times a common factor 2^u, the smallest u >= 0 that fits the
/// budget (u = 0 when it already fits): the correction when the coder differs from the curves.
Outcome code_within(const Config& config, const Allocation& allocation, double budget_bits, double* factor_out = nullptr) {
    Outcome outcome = code_all(config, allocation);
    double low = 0.0, high = 0.0, factor = 1.0;
    if (outcome.matrix_bits > budget_bits) {
        high = 1.0 / 64;
        while (code_all(config, allocation, std::exp2(high)).matrix_bits > budget_bits) low = high, high *= 2.0;
        for (int iteration = 0; iteration < 12; ++iteration) {
            const double middle = 0.5 * (low + high);
            (code_all(config, allocation, std::exp2(middle)).matrix_bits > budget_bits ? low : high) = middle;
        }
        factor = std::exp2(high);
        outcome = code_all(config, allocation, factor);
    }
    if (factor_out) *factor_out = factor;
    return outcome;
}

/// The high-rate closed form: absolute steps c sqrt(n_t / S_t) (equal slope when the error is
/// step^2 / 12 and the rate falls one bit per doubling), c set by bisection to fill the budget.
Allocation closed_form(const Config& config, double budget_bits) {
    const auto steps_for = [&](double c) {
        Allocation allocation;
        for (const std::string& name : g.matrices) {
            const Tensor<float>& weight = weight_of(name);
            allocation.steps[name] = c * std::sqrt(double(weight.numel()) / sensitivity_of(name)) / rms_of(weight);
        }
        return allocation;
    };
    double low = -16.0, high = 4.0;  // log2 c
    for (int iteration = 0; iteration < 24; ++iteration) {
        const double middle = 0.5 * (low + high);
        (code_all(config, steps_for(std::exp2(middle))).matrix_bits > budget_bits ? low : high) = middle;
    }
    return steps_for(std::exp2(high));
}

/// The global step that fills the budget (bisection on log2 step).
double global_step_for(const Config& config, double budget_bits) {
    double low = -6.0, high = 3.0;  // log2 step
    for (int iteration = 0; iteration < 24; ++iteration) {
        const double middle = 0.5 * (low + high);
        (code_all(config, global_step(std::exp2(middle))).matrix_bits > budget_bits ? low : high) = middle;
    }
    return std::exp2(high);
}

void print_outcome(const char* label, const Outcome& outcome, double base_calibration) {
    const LlamaModel model = model_with(outcome.reconstructions);
    const double calibration = calibration_nll(model) - base_calibration;
    const double evaluation = evaluation_nll(model);
    std::printf("%-46s bpw %.4f (side %.4f)  eval NLL %.5f  calib dNLL %.4f  predicted S*mse %.4f S*mseH %.4f\n", label, outcome.bpw(),
                outcome.side_bpw(), evaluation, calibration, outcome.predicted_mse, outcome.predicted_h);
    std::fflush(stdout);
}

// ---------------------------------------------------------------- sensitivities (cached on disk)

void save_sensitivities(const std::string& path, const SensitivityReport& report) {
    std::ofstream out(path);
    out.precision(17);
    out << report.base_nll << " " << report.windows << " " << report.predictions << "\n";
    for (const TensorSensitivity& t : report.tensors) out << t.name << " " << t.weights << " " << t.rms << " " << t.noise_std << " " << t.sensitivity << " " << t.standard_error << "\n";
}

bool load_sensitivities(const std::string& path, SensitivityReport& report) {
    std::ifstream in(path);
    if (!in) return false;
    in >> report.base_nll >> report.windows >> report.predictions;
    for (TensorSensitivity t; in >> t.name >> t.weights >> t.rms >> t.noise_std >> t.sensitivity >> t.standard_error;) report.tensors.push_back(t);
    return !report.tensors.empty();
}

SensitivityReport sensitivities_with(const SensitivityOptions& options, const std::string& cache) {
    SensitivityReport report;
    if (!cache.empty() && load_sensitivities(cache, report)) return report;
    const auto start = std::chrono::steady_clock::now();
    report = measure_sensitivities(LlamaModel(g.weights), g.calibration, options);
    std::printf("# sensitivities: noise %.3g x RMS, %d windows of %d, %d pairs: %.1f s\n", options.relative_noise, options.windows, options.window,
                options.pairs, seconds_since(start));
    if (!cache.empty()) save_sensitivities(cache, report);
    return report;
}

// ---------------------------------------------------------------- modes

void run_baselines() {
    std::printf("\n## Baselines (eval NLL; norms stored as %s)\n", g.norms.c_str());
    std::printf("fp32 (norms fp32)                              eval NLL %.5f\n", evaluation_nll(LlamaModel(g.weights)));
    std::printf("matrices fp32, norms as stored                 eval NLL %.5f  (norms cost %.4f bpw)\n", evaluation_nll(model_with({})),
                norm_bits() / double(g.total_weights));
    for (int bits : {3, 4}) {
        for (bool gptq : {false, true}) {
            std::map<std::string, Tensor<float>> replaced;
            double matrix_bits = 0.0;
            for (const std::string& name : g.matrices) {
                RoundToNearest quantizer({bits, 32, RoundingScheme::signed_max});
                const Tensor<float>& weight = weight_of(name);
                if (gptq) {
                    LDLQOptions options;
                    options.threads = 1;
                    options.compute_proxy_loss = false;
                    replaced[name] = LDLQCompensator<RoundToNearest>(options).compress(weight.view(), g.hessians.at(name).matrix(), quantizer).reconstructed;
                } else {
                    replaced[name] = quantizer.quantize(weight.view());
                }
                matrix_bits += double(weight.numel()) * quantizer.bits_per_weight();
            }
            const double bpw = (matrix_bits + norm_bits()) / double(g.total_weights);
            std::printf("%s-g32 %d bits                                  bpw %.4f  eval NLL %.5f\n", gptq ? "GPTQ" : "RTN ", bits, bpw,
                        evaluation_nll(model_with(replaced)));
            std::fflush(stdout);
        }
    }
}

void print_sensitivities() {
    std::printf("\n## Sensitivities (calibration NLL %.5f over %lld windows; S = dNLL per unit per-weight variance)\n", g.sensitivity.base_nll,
                (long long)g.sensitivity.windows);
    std::printf("%-44s %7s %9s %11s %9s %11s\n", "tensor", "weights", "rms", "S", "+-", "S*rms^2");
    for (const TensorSensitivity& t : g.sensitivity.tensors)
        std::printf("%-44s %7lld %9.5f %11.4g %9.2g %11.4g\n", t.name.c_str(), (long long)t.weights, t.rms, t.sensitivity, t.standard_error,
                    t.sensitivity * t.rms * t.rms);
}

/// The step at which one matrix codes to `bits_per_weight` (its own rate, side information included).
double step_for_rate(const std::string& name, const Config& config, double bits_per_weight) {
    const double target = bits_per_weight * double(weight_of(name).numel());
    double low = -7.0, high = 3.0;
    for (int iteration = 0; iteration < 22; ++iteration) {
        const double middle = 0.5 * (low + high);
        (code_matrix(name, config, std::exp2(middle)).bits() > target ? low : high) = middle;
    }
    return std::exp2(high);
}

/// Per matrix, at equal bits: measured single-tensor calibration dNLL for each normalization, with
/// and without LDLQ, beside the predictions S*mse and S*mseH.
void run_normalization() {
    const double base = calibration_nll(model_with({}));
    for (const std::string& rate_text : get_list("rates", "4,3")) {
        const double rate = std::stod(rate_text);
        std::printf("\n## Single-tensor calibration dNLL at %.1f bits per weight of the tensor (x1e-4)\n", rate);
        std::printf("%-40s", "tensor");
        for (const char* scale : {"col", "row", "tensor"})
            for (const char* mode : {"", "+L"}) std::printf(" %6s%-2s", scale, mode);
        std::printf("  | pred mse/mseH (tensor, tensor+L)\n");
        std::vector<double> log_measured[2], log_mse[2], log_h[2];
        for (const std::string& name : g.matrices) {
            std::printf("%-40s", name.c_str());
            double prediction[2][2] = {};
            for (Scale scale : {Scale::column, Scale::row, Scale::tensor})
                for (bool ldlq : {false, true}) {
                    const Config config{scale, ldlq};
                    g.scale_override.clear();
                    const Coded coded = code_matrix(name, config, step_for_rate(name, config, rate));
                    const double measured = calibration_nll(model_with({{name, coded.reconstruction}})) - base;
                    std::printf(" %8.2f", 1e4 * measured);
                    if (scale == Scale::tensor) {
                        prediction[ldlq][0] = predicted_loss(name, coded, LossModel::mse);
                        prediction[ldlq][1] = predicted_loss(name, coded, LossModel::hessian);
                        if (measured > 0) {
                            log_measured[ldlq].push_back(std::log(measured));
                            log_mse[ldlq].push_back(std::log(prediction[ldlq][0]));
                            log_h[ldlq].push_back(std::log(prediction[ldlq][1]));
                        }
                    }
                }
            std::printf("  | %.2f/%.2f %.2f/%.2f\n", 1e4 * prediction[0][0], 1e4 * prediction[0][1], 1e4 * prediction[1][0], 1e4 * prediction[1][1]);
            std::fflush(stdout);
        }
        // How well each loss model predicts the measured single-tensor losses (one scale per tensor).
        const auto fit = [](const std::vector<double>& x, const std::vector<double>& y) {
            double mx = 0, my = 0;
            for (std::size_t i = 0; i < x.size(); ++i) mx += x[i] / double(x.size()), my += y[i] / double(x.size());
            double sxy = 0, sxx = 0, syy = 0, rms = 0;
            for (std::size_t i = 0; i < x.size(); ++i) {
                sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx), syy += (y[i] - my) * (y[i] - my);
                rms += (y[i] - x[i]) * (y[i] - x[i]) / double(x.size());
            }
            return std::pair<double, double>(sxy / std::sqrt(sxx * syy), std::sqrt(rms));
        };
        for (int ldlq = 0; ldlq < 2; ++ldlq) {
            const auto [r_mse, e_mse] = fit(log_measured[ldlq], log_mse[ldlq]);
            const auto [r_h, e_h] = fit(log_measured[ldlq], log_h[ldlq]);
            std::printf("# one scale per tensor%s: log-log correlation with measured: S*mse %.3f (rms log error %.3f), S*mseH %.3f (%.3f)\n",
                        ldlq ? " + LDLQ" : "", r_mse, e_mse, r_h, e_h);
        }
    }
}

/// The main table: per normalization and LDLQ, one global step vs per-tensor steps at equal slope.
void run_table() {
    const double base_calibration = calibration_nll(model_with({}));
    for (const std::string& target_text : get_list("targets", "4,3")) {
        const double target = std::stod(target_text), budget = matrix_budget_bits(target);
        std::printf("\n## Target %.2f bits per weight (matrices get %.0f bits; calibration NLL %.5f)\n", target, budget, base_calibration);
        for (const std::string& scale_text : get_list("scales", "column,row,tensor"))
            for (const std::string& ldlq_text : get_list("ldlq", "0,1")) {
                const Config config{scale_from(scale_text), ldlq_text == "1"};
                const std::string prefix = std::string(scale_name(config.scale)) + (g.scale_override.empty() ? "" : "*") + (config.ldlq ? " +LDLQ" : "");
                const double step = global_step_for(config, budget);
                char label[128];
                std::snprintf(label, sizeof label, "%s, global step %.4f", prefix.c_str(), step);
                print_outcome(label, code_all(config, global_step(step)), base_calibration);
                if (get("closed_form", "1") == "1") {
                    std::snprintf(label, sizeof label, "%s, closed form c sqrt(n/S)", prefix.c_str());
                    print_outcome(label, code_all(config, closed_form(config, budget)), base_calibration);
                }
                for (const std::string& model_text : get_list("models", "mse,hessian")) {
                    const LossModel model = model_text == "mse" ? LossModel::mse : LossModel::hessian;
                    // Curves measured with the coder itself; for LDLQ also predicted from plain curves.
                    for (bool from_plain : config.ldlq ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
                        if (from_plain && get("from_plain", "1") != "1") continue;
                        const Config curves{config.scale, config.ldlq && !from_plain};
                        const Allocation allocation = allocate(curves, model, budget);
                        double factor = 1.0;
                        const Outcome outcome = code_within(config, allocation, budget, &factor);
                        std::snprintf(label, sizeof label, "%s, %s%s%s", prefix.c_str(), model_name(model), from_plain ? " (plain curves)" : "",
                                      factor > 1.0 ? " *" : "");
                        print_outcome(label, outcome, base_calibration);
                        if (get("show_steps", "0") == "1")
                            for (const std::string& name : g.matrices)
                                std::printf("    %-44s step %.4f\n", name.c_str(), allocation.steps.at(name) * factor);
                    }
                }
            }
    }
}

/// Allocation, then sequential coding with those steps (llm/sequential_compression.hpp), with and
/// without inter-layer fine-tuning.
void run_sequential() {
    const Config config{scale_from(get("scale", "tensor")), get("seq_ldlq", "1") == "1"};
    const LossModel model = get("model", "hessian") == "mse" ? LossModel::mse : LossModel::hessian;
    for (const std::string& target_text : get_list("targets", "4,3")) {
        const double target = std::stod(target_text), budget = matrix_budget_bits(target);
        const bool global = get("seq_alloc", "slope") == "global";
        const Allocation allocation = global ? global_step(global_step_for(config, budget)) : allocate(config, model, budget);
        std::printf("\n## Sequential coding at %.2f bits per weight: %s%s, %s\n", target, scale_name(config.scale), config.ldlq ? " +LDLQ" : "",
                    global ? "one global step" : model_name(model));
        for (const std::string& finetune_text : get_list("finetune", "0,1")) {
            double factor = 1.0;
            for (int pass = 0; pass < 2; ++pass) {
                double bits = 0.0;
                const QuantizeFunction quantize = [&](const std::string& name, const Tensor<float>& weight, const Tensor<double>* hessian) {
                    // The sequential Hessian (compressed model-so-far) drives LDLQ; the embedding's is the classifier input.
                    const Tensor<double>& h = hessian != nullptr ? *hessian : g.hessians.at(name);
                    std::optional<LDLFeedback> feedback;
                    if (config.ldlq && !(name == "model.embed_tokens.weight" && get("embed_ldlq", "1") != "1")) {
                        LDLQOptions options;
                        feedback = LDLQCompensator<EntropyCodedScalar>(options).factorize(h.matrix());
                    }
                    Coded coded = code_ecsq(weight, config.scale_of(name), allocation.steps.at(name) * factor, h, feedback ? &*feedback : nullptr);
                    bits += coded.bits();
                    return std::move(coded.reconstruction);
                };
                SequentialCompressionOptions options;
                options.threads = g.threads;
                options.finetune = finetune_text == "1";
                options.window = std::stoi(get("seq_window", "256"));
                options.windows = std::stoi(get("seq_windows", "32"));
                options.target = get("seq_target", "block") == "model" ? FinetuneTarget::original_model : FinetuneTarget::original_block;
                LlamaModel network = model_with({});
                const auto start = std::chrono::steady_clock::now();
                compress_sequentially(network, g.calibration, quantize, options);
                const double bpw = (bits + norm_bits()) / double(g.total_weights);
                std::printf("fine-tuning %-3s pass %d (steps x %.4f): bpw %.4f  eval NLL %.5f  (%.1f s)\n", options.finetune ? "on" : "off", pass + 1,
                            factor, bpw, evaluation_nll(network), seconds_since(start));
                std::fflush(stdout);
                // One correction: about one bit per coded weight per doubling of every step.
                const double miss = bits - budget;
                if (std::fabs(miss) <= 0.002 * budget) break;
                double coded_weights = 0.0;
                for (const std::string& name : g.matrices) coded_weights += double(weight_of(name).numel());
                factor *= std::exp2(miss / coded_weights);
            }
        }
    }
}

/// The sensitivity protocol: S under several settings, how far each is from the most careful one,
/// and what the allocation built on each gives at the targets.
void run_protocol() {
    struct Variant {
        double noise;
        int windows, pairs;
    };
    // The last variant is the reference the others are compared with.
    std::vector<Variant> variants{{0.01, 16, 4}, {0.02, 16, 4}, {0.05, 16, 4}, {0.1, 16, 4}, {0.2, 16, 4},
                                  {0.05, 4, 4},  {0.05, 64, 4}, {0.05, 16, 1}, {0.05, 16, 16}};
    std::vector<SensitivityReport> reports;
    for (const Variant& variant : variants) {
        SensitivityOptions options = g.sensitivity_options;
        options.relative_noise = variant.noise, options.windows = variant.windows, options.pairs = variant.pairs, options.include_vectors = false;
        char cache[160];
        std::snprintf(cache, sizeof cache, "%s.n%g_w%d_p%d", get("protocol_cache", "nwc_sensitivity").c_str(), variant.noise, variant.windows,
                      variant.pairs);
        reports.push_back(sensitivities_with(options, cache));
    }
    const SensitivityReport& reference = reports.back();
    const Config config{scale_from(get("scale", "tensor")), get("seq_ldlq", "1") == "1"};
    const LossModel model = get("model", "hessian") == "mse" ? LossModel::mse : LossModel::hessian;
    const double base_calibration = calibration_nll(model_with({}));
    std::printf("\n## Sensitivity protocol (%s%s, %s allocation); deviation from noise 0.05, 16 windows, 16 pairs\n", scale_name(config.scale),
                config.ldlq ? " +LDLQ" : "", model_name(model));
    const SensitivityReport kept = g.sensitivity;
    for (std::size_t v = 0; v < variants.size(); ++v) {
        double log_error = 0.0, worst = 0.0;
        int negative = 0;
        for (std::size_t i = 0; i < reference.tensors.size(); ++i) {
            const double s = reports[v].tensors[i].sensitivity;
            if (s <= 0) {
                ++negative;
                continue;
            }
            const double e = std::log(s / reference.tensors[i].sensitivity);
            log_error += e * e / double(reference.tensors.size());
            worst = std::max(worst, std::fabs(e));
        }
        std::printf("noise %.2f windows %2d pairs %2d: rms log deviation %.3f, worst %.3f, %d not positive\n", variants[v].noise, variants[v].windows,
                    variants[v].pairs, std::sqrt(log_error), worst, negative);
        g.sensitivity = reports[v];
        for (auto& t : g.sensitivity.tensors) t.sensitivity = std::max(t.sensitivity, 1e-12);
        for (const std::string& target_text : get_list("targets", "4,3")) {
            const double target = std::stod(target_text), budget = matrix_budget_bits(target);
            char label[96];
            std::snprintf(label, sizeof label, "    target %.1f", target);
            print_outcome(label, code_within(config, allocate(config, model, budget), budget), base_calibration);
        }
    }
    g.sensitivity = kept;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s MODEL TOKENIZER CALIBRATION.txt EVALUATION.txt [key=value ...]\n", argv[0]);
        return 2;
    }
    for (int i = 5; i < argc; ++i) {
        const std::string argument = argv[i];
        const std::size_t equals = argument.find('=');
        if (equals == std::string::npos) {
            std::fprintf(stderr, "expected key=value, got '%s'\n", argv[i]);
            return 2;
        }
        g_settings[argument.substr(0, equals)] = argument.substr(equals + 1);
    }
    const auto start = std::chrono::steady_clock::now();
    g.weights = read_llama_weights(argv[1]);
    const Tokenizer tokenizer = Tokenizer::read(argv[2], g.weights.config.vocab_size);
    g.calibration = tokenize_for_evaluation(tokenizer, read_text(argv[3]));
    g.evaluation = tokenize_for_evaluation(tokenizer, read_text(argv[4]));
    g.threads = std::stoi(get("threads", "2"));
    g.grid = std::stoi(get("grid", "8"));
    g.norms = get("norms", "fp16");
    g_table = get("table", "hist16");
    for (const std::string& item : get_list("scale_for", "")) {
        const std::size_t colon = item.rfind(':');
        g.scale_override[item.substr(0, colon)] = scale_from(item.substr(colon + 1));
    }
    for (const auto& [name, tensor] : g.weights.named_tensors()) {
        (tensor->shape().rank() == 2 ? g.matrices : g.vectors).push_back(name);
        g.total_weights += tensor->numel();
        if (tensor->shape().rank() == 1) g.vector_weights += tensor->numel();
    }
    const LlamaModel original(g.weights);
    CalibrationOptions calibration;
    calibration.threads = g.threads;
    calibration.max_windows = std::stoll(get("hessian_windows", "-1"));
    g.hessians = collect_hessians(original, g.calibration, calibration);
    for (const std::string& name : g.matrices) g.feedback[name] = LDLQCompensator<EntropyCodedScalar>().factorize(g.hessians.at(name).matrix());
    SensitivityOptions& options = g.sensitivity_options;
    options.relative_noise = std::stod(get("noise", "0.05"));
    options.windows = std::stoi(get("windows", "16"));
    options.pairs = std::stoi(get("pairs", "4"));
    options.window = std::stoi(get("window", "512"));
    options.threads = g.threads;
    g.sensitivity = sensitivities_with(options, get("sensitivities", ""));
    std::printf("# %lld weights (%lld in %zu matrices, %lld in %zu norm vectors); %zu calibration tokens (Hessians over %lld positions); setup %.1f s\n",
                (long long)g.total_weights, (long long)(g.total_weights - g.vector_weights), g.matrices.size(), (long long)g.vector_weights,
                g.vectors.size(), g.calibration.size(), (long long)g.hessians.sample_count(), seconds_since(start));

    const std::string mode = get("mode", "table");
    if (mode == "baselines") run_baselines();
    else if (mode == "sensitivity") print_sensitivities();
    else if (mode == "normalization") run_normalization();
    else if (mode == "table") run_table();
    else if (mode == "sequential") run_sequential();
    else if (mode == "protocol") run_protocol();
    else {
        std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
        return 2;
    }
    std::printf("# total %.1f s\n", seconds_since(start));
    return 0;
} catch (const nwc::error& failure) {
    std::fprintf(stderr, "error: %s\n", failure.what());
    return 1;
}
