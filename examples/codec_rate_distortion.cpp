// Rate-distortion of trained codec files on held-out real matrices, beside ECSQ and the Gaussian
// bound, with real rANS bitstreams. Prints a Markdown table (docs/bench/codec.md is made from it).
//
//   nwc_example_codec_rate_distortion [--threads T] [--holdout REGEX] [--dtype-study] --data A.safetensors,B.safetensors CODEC...
//
// --dtype-study: also evaluate each codec with its weights rounded to f16 and bf16 (give it codecs
// trained with --dtype f32) to measure what the storage type of the weights costs.
//
// For every codec and importance level: coded bits per weight (stream bytes only; the decoder half
// is listed apart), MSE of the normalized weights, the MSE ECSQ reaches at the same rate and the
// rate it needs for the same MSE (both interpolated on a fine sweep of steps, log-MSE vs rate), the
// codec's gain over ECSQ in dB at equal rate (positive: the codec is better) and its gap to the
// unit-variance Gaussian bound D(R) = 2^(-2R) in dB (always negative), and the decode speed
// (rANS decoding + g_s, in the given threads).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/codec/codec_evaluation.hpp"
#include "nwc/codec/codec_file.hpp"

namespace {

std::vector<std::string> split(const std::string& text, char separator) {
    std::vector<std::string> parts;
    std::size_t begin = 0;
    while (begin <= text.size()) {
        const std::size_t end = std::min(text.find(separator, begin), text.size());
        if (end > begin) parts.push_back(text.substr(begin, end - begin));
        begin = end + 1;
    }
    return parts;
}

struct Point {
    double rate, mse;
};

// ECSQ rate at a given MSE: linear interpolation of rate against log(MSE) on the sweep.
double ecsq_rate_at(const std::vector<Point>& sweep, double mse) {
    for (std::size_t i = 1; i < sweep.size(); ++i) {
        const Point &a = sweep[i - 1], &b = sweep[i];  // sweep: MSE decreasing
        if (mse <= a.mse && mse >= b.mse) {
            const double t = (std::log(mse) - std::log(a.mse)) / (std::log(b.mse) - std::log(a.mse));
            return a.rate + t * (b.rate - a.rate);
        }
    }
    return NAN;
}

// ECSQ MSE at a given rate: log(MSE) interpolated linearly in rate on the sweep.
double ecsq_mse_at(const std::vector<Point>& sweep, double rate) {
    for (std::size_t i = 1; i < sweep.size(); ++i) {
        const Point &a = sweep[i - 1], &b = sweep[i];  // sweep: rate increasing
        if (rate >= a.rate && rate <= b.rate) {
            const double t = (rate - a.rate) / (b.rate - a.rate);
            return std::exp(std::log(a.mse) + t * (std::log(b.mse) - std::log(a.mse)));
        }
    }
    return NAN;
}

}  // namespace

int main(int argc, char** argv) {
    int threads = 1;
    bool dtype_study = false;
    std::string holdout = nwc::default_holdout_regex;
    std::vector<std::string> data, codecs;
    for (int i = 1; i < argc; ++i) {
        const std::string argument = argv[i];
        if (argument == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (argument == "--holdout" && i + 1 < argc) holdout = argv[++i];
        else if (argument == "--dtype-study") dtype_study = true;
        else if (argument == "--data" && i + 1 < argc) data = split(argv[++i], ',');
        else codecs.push_back(argument);
    }
    if (data.empty() || codecs.empty()) {
        std::fprintf(stderr, "usage: %s --data A.safetensors[,B...] [--threads T] [--holdout REGEX] CODEC...\n", argv[0]);
        return 2;
    }
    try {
        // The hold-out rule of `nwc train --holdout`: tensors whose name the expression is found in.
        const std::regex expression(holdout, std::regex::ECMAScript);
        const nwc::HoldoutRule rule{holdout, [&](std::string_view name) { return std::regex_search(name.begin(), name.end(), expression); }};
        const nwc::TrainingCorpus corpus = nwc::TrainingCorpus::load(data, rule, 16, false);
        double weights = 0;
        for (const auto& matrix : corpus.held_out()) weights += double(matrix.rows) * double(matrix.cols);
        std::printf("held-out matrices: %zu (%.0f weights)\n\n", corpus.held_out().size(), weights);

        std::vector<Point> sweep;
        std::printf("| ECSQ step | bits/weight (coded) | entropy | MSE | Gaussian bound at that MSE |\n|---|---|---|---|---|\n");
        for (double step = 2.0; step >= 0.004; step /= std::pow(2.0, 0.125)) {
            const nwc::RateDistortion rd = nwc::evaluate_ecsq(corpus.held_out(), float(step), threads);
            sweep.push_back({rd.bits_per_weight(), rd.mse()});
            if (std::abs(std::log2(step) - std::round(std::log2(step))) < 1e-6)
                std::printf("| %.4g | %.3f | %.3f | %.3g | %.3f |\n", step, rd.bits_per_weight(), rd.ideal_bits_per_weight(), rd.mse(),
                            0.5 * std::log2(1.0 / rd.mse()));
        }
        std::printf("\n| codec | decoder half (bytes) | level | bits/weight (coded) | MSE | SNR dB | ECSQ MSE at same rate | gain over ECSQ dB | "
                    "gap to D(R) dB | ECSQ bits at same MSE | codec - ECSQ bits | decode Mweights/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        std::vector<std::pair<std::string, nwc::NeuralCodec>> variants;
        for (const std::string& path : codecs) {
            nwc::NeuralCodec codec = nwc::read_codec_file(path);
            const std::string name = std::filesystem::path(path).filename().string();
            if (dtype_study) {
                for (nwc::dtype storage : {nwc::dtype::f16, nwc::dtype::bf16}) {
                    nwc::ResidualMLP<float> encoder = codec.encoder(), decoder = codec.decoder().network();
                    nwc::round_weights_to(encoder, storage);
                    nwc::round_weights_to(decoder, storage);
                    const auto medians = codec.decoder().all_medians();
                    const auto tables = codec.decoder().all_tables();
                    nwc::NeuralDecoder half(codec.architecture(), std::move(decoder), std::vector<float>(medians.begin(), medians.end()),
                                           std::vector<nwc::CdfTableSet>(tables.begin(), tables.end()), storage);
                    variants.emplace_back(name + " as " + std::string(nwc::dtype_name(storage)), nwc::NeuralCodec(std::move(encoder), std::move(half)));
                }
            }
            variants.emplace_back(name, std::move(codec));
        }
        for (const auto& [name, codec] : variants) {
            const std::size_t half = nwc::serialize_codec_decoder(codec.decoder()).size();
            for (int level = 0; level < codec.architecture().levels; ++level) {
                const nwc::RateDistortion rd = nwc::evaluate_codec(codec, corpus.held_out(), level, threads);
                const double ecsq = ecsq_rate_at(sweep, rd.mse());
                const double ecsq_mse = ecsq_mse_at(sweep, rd.bits_per_weight());
                const double gain_db = 10.0 * std::log10(ecsq_mse / rd.mse());
                const double bound_db = 10.0 * std::log10(std::pow(2.0, -2.0 * rd.bits_per_weight()) / rd.mse());
                std::printf("| %s | %zu | %d | %.3f | %.4g | %.2f | %.4g | %+.2f | %+.2f | %.3f | %+.3f | %.2f |\n",
                            name.c_str(), half, level, rd.bits_per_weight(), rd.mse(), rd.snr_db(), ecsq_mse, gain_db, bound_db, ecsq,
                            rd.bits_per_weight() - ecsq, rd.weights / rd.decode_seconds * 1e-6);
                std::fflush(stdout);
            }
        }
    } catch (const nwc::error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    } catch (const std::regex_error& e) {
        std::fprintf(stderr, "--holdout '%s': %s\n", holdout.c_str(), e.what());
        return 2;
    }
    return 0;
}
