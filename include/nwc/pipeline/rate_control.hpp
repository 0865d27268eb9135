// Rate control: compress a whole model so that the FILE lands on a target number of bits per
// weight, bpw = 8 x (every byte of the .nwc file) / (elements of every tensor of the input).
//
// Read me first:
// - ecsq and nwc have one continuous global knob: the step Δ (ecsq; rate falls as Δ grows) or
//   alpha (nwc; rate grows with alpha). The search runs on u = log2(knob) with the ACTUAL serialized
//   size of full compressions (no estimate): first steps of doubling width until the target is
//   bracketed, then regula falsi with the Illinois modification. It stops once the file is within
//   half the tolerance (so rounding cannot push it out), and keeps the best pass. Passes skip the
//   error measurements; the chosen knob is compressed once more with them (same bytes otherwise).
// - rtn and gptq have integer bits only. Their sizes do not depend on the values, so one rtn pass
//   at 4 bits gives the fixed overhead and every tensor's size at any bits follows exactly
//   (RtnMethod::stored_bytes). Bits are then chosen PER TENSOR: all at the largest b whose file
//   fits, then tensors, largest first, move to b + 1 while the file still fits. With one tensor,
//   or a target below 2 or above 8 bits, the target may stay out of reach: the report says so.
// - Cost: ecsq needs ~5-8 passes of a cheap method; nwc as many encoder passes (g_a over every chunk).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "nwc/pipeline/pipeline_codec.hpp"

namespace nwc {

/// What the rate search aims at.
struct RateTarget {
    double bits_per_weight = 4.0;  ///< B: 8 x file bytes / input weights
    double tolerance = 0.01;       ///< relative: |achieved / B - 1| must stay below it
    int max_passes = 14;           ///< full compressions for ecsq / nwc
    /// Range of Δ (ecsq) or alpha (nwc) searched; NaN: [2^-12, 16] for Δ, [1/4, 16] for alpha (far
    /// below 1 the codec's distortion explodes long before its rate falls: pick another codec).
    double knob_min = std::numeric_limits<double>::quiet_NaN(), knob_max = std::numeric_limits<double>::quiet_NaN();
};

namespace detail {

template <class CodecType>
CompressedModel compress_to_bits_target(const CodecType& codec, const ModelFile& model, const HessianLookup& hessians, const RateTarget& target,
                                        const ProgressCallback& progress) {
    const MethodOptions& base = codec.options();
    MethodOptions probe = base;
    probe.method = CompressionMethod::rtn;
    probe.bits = 4;
    probe.measure = false;
    const CompressedModel first = codec.with_options(probe).compress_model(model, {}, progress);
    const double target_bytes = target.bits_per_weight * double(model.weight_count()) / 8.0;
    // Sizes per tensor and bits, with the most padding the container can add before the payload.
    constexpr std::uint64_t rtn_metadata_bytes = 24;
    std::vector<std::array<std::uint64_t, 9>> sizes(model.tensors.size());
    std::vector<std::size_t> coded;
    double overhead = double(first.report.file_bytes);
    for (std::size_t i = 0; i < model.tensors.size(); ++i) {
        if (first.report.tensors[i].method == "raw") continue;
        coded.push_back(i);
        const Shape& shape = model.tensors[i].shape;
        for (int bits = 2; bits <= 8; ++bits)
            sizes[i][std::size_t(bits)] = container_tensor_bytes_bound(
                rtn_metadata_bytes, RtnMethod::stored_bytes(shape[0], shape[1], bits, base.group_size, base.weights_per_segment) - rtn_metadata_bytes);
        overhead -= double(sizes[i][4]);
    }
    std::vector<int> bits(model.tensors.size(), 4);
    const auto total = [&] {
        double bytes = overhead;
        for (std::size_t i : coded) bytes += double(sizes[i][std::size_t(bits[i])]);
        return bytes;
    };
    int low = 2;
    for (int candidate = 8; candidate >= 2; --candidate) {
        for (std::size_t i : coded) bits[i] = candidate;
        if (total() <= target_bytes) {
            low = candidate;
            break;
        }
    }
    for (std::size_t i : coded) bits[i] = low;
    if (low < 8) {
        std::vector<std::size_t> order = coded;
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return sizes[a][std::size_t(low + 1)] - sizes[a][std::size_t(low)] > sizes[b][std::size_t(low + 1)] - sizes[b][std::size_t(low)];
        });
        double bytes = total();
        for (std::size_t i : order) {
            const double step = double(sizes[i][std::size_t(low + 1)] - sizes[i][std::size_t(low)]);
            if (bytes + step <= target_bytes) {
                bits[i] = low + 1;
                bytes += step;
            }
        }
    }
    CompressedModel result = codec.compress_model(model, hessians, progress, bits);
    int high = low;
    for (std::size_t i : coded) high = std::max(high, bits[i]);
    result.report.setting = low == high ? detail::concat("bits=", low) : detail::concat("bits=", low, "..", high);
    result.report.passes = 2;
    return result;
}

}  // namespace detail

/// Compresses `model` with `codec`'s method and options, choosing the rate so that the whole file
/// lands within target.tolerance of target.bits_per_weight (see the header comment). The report's
/// target_met / note say whether it did.
template <class CodecType>
CompressedModel compress_to_target(const CodecType& codec, const ModelFile& model, const HessianLookup& hessians, const RateTarget& target,
                                   const ProgressCallback& progress = {}) {
    require(std::isfinite(target.bits_per_weight) && target.bits_per_weight > 0.0, errc::invalid_argument, "target of ", target.bits_per_weight,
            " bits per weight must be positive");
    require(model.weight_count() > 0, errc::invalid_argument, "the model has no weights");
    const MethodOptions& base = codec.options();
    const double target_bytes = target.bits_per_weight * double(model.weight_count()) / 8.0;
    const auto relative_miss = [&](std::uint64_t bytes) { return double(bytes) / target_bytes - 1.0; };
    CompressedModel result;
    if (base.method == CompressionMethod::rtn || base.method == CompressionMethod::gptq) {
        result = detail::compress_to_bits_target(codec, model, hessians, target, progress);
    } else {
        const bool grows = base.method == CompressionMethod::nwc;  // alpha: more bits as it grows
        const double lowest = std::isnan(target.knob_min) ? (grows ? -2.0 : -12.0) : std::log2(target.knob_min);
        const double highest = std::isnan(target.knob_max) ? 4.0 : std::log2(target.knob_max);
        int passes = 0;
        double best_u = 0.0, best_miss = INFINITY;
        const auto evaluate = [&](double u) {
            MethodOptions options = base;
            options.measure = false;
            (grows ? options.alpha : options.step) = float(std::exp2(u));
            ++passes;
            const CompressedModel pass = codec.with_options(options).compress_model(model, hessians, progress);
            const double miss = relative_miss(pass.report.file_bytes);
            if (std::fabs(miss) < std::fabs(best_miss)) best_miss = miss, best_u = u;
            return std::log(double(pass.report.file_bytes) / target_bytes);  // > 0: too many bytes
        };
        // Start: alpha 1 (the codec as trained); for ecsq the high-rate Gaussian guess h = 2.05 - log2 Δ.
        double u_a = grows ? 0.0 : std::clamp(2.047 - target.bits_per_weight, lowest, highest);
        double f_a = evaluate(u_a), u_b = u_a, f_b = f_a;
        const auto done = [&] { return std::fabs(best_miss) <= target.tolerance / 2 || passes >= target.max_passes; };
        // Bracket: move towards the target in steps of doubling width.
        for (double width = 1.0; !done() && (f_a > 0) == (f_b > 0); width *= 2.0) {
            const bool lower_rate = f_b > 0;
            const double direction = (lower_rate != grows) ? 1.0 : -1.0;
            const double next = std::clamp(u_b + direction * width, lowest, highest);
            if (next == u_b) break;  // the knob's range cannot reach the target
            u_a = u_b, f_a = f_b;
            u_b = next, f_b = evaluate(u_b);
        }
        while (!done() && (f_a > 0) != (f_b > 0) && std::fabs(u_b - u_a) > 1e-4) {
            const double u = u_b - f_b * (u_b - u_a) / (f_b - f_a);
            const double f = evaluate(u);
            if ((f > 0) == (f_b > 0)) {
                f_a /= 2;  // Illinois: the end kept again pulls half as hard, so the bracket shrinks from both sides
            } else {
                u_a = u_b, f_a = f_b;
            }
            u_b = u, f_b = f;
        }
        MethodOptions chosen = base;
        (grows ? chosen.alpha : chosen.step) = float(std::exp2(best_u));
        result = codec.with_options(chosen).compress_model(model, hessians, progress);
        result.report.passes = passes + 1;
        result.report.knob = std::exp2(best_u);
    }
    ModelReport& report = result.report;
    report.target_bits_per_weight = target.bits_per_weight;
    const double miss = relative_miss(report.file_bytes);
    report.target_met = std::fabs(miss) <= target.tolerance;
    if (!report.target_met) {
        const bool integer_bits = base.method == CompressionMethod::rtn || base.method == CompressionMethod::gptq;
        report.note = detail::concat("achieved ", report.bits_per_weight(), " bits per weight, ", 100.0 * miss, "% from the target",
                                     integer_bits ? ": integer bits per tensor (2..8) cannot land within the tolerance"
                                                  : ": the knob's range (or the fixed overhead of headers, scales, the codec and raw tensors) cannot reach it");
    }
    return result;
}

/// Of several trained codecs, the one whose file at alpha = 1 lands nearest `bits_per_weight` (in
/// log size): it needs the least stretching by alpha, which the decoder was not trained for. One
/// measurement-free pass per codec.
template <class CodecType = DefaultCodec>
std::size_t nearest_codec(const MethodOptions& options, std::span<const std::shared_ptr<const NeuralCodec>> candidates, const ModelFile& model,
                          const HessianLookup& hessians, double bits_per_weight, const ProgressCallback& progress = {}) {
    require(!candidates.empty(), errc::invalid_argument, "nearest_codec: no candidate codecs");
    std::size_t chosen = 0;
    double nearest = INFINITY;
    for (std::size_t k = 0; candidates.size() > 1 && k < candidates.size(); ++k) {
        MethodOptions probe = options;
        probe.measure = false;
        probe.alpha = 1.0f;
        const CompressedModel pass = CodecType(probe, candidates[k]).compress_model(model, hessians, progress);
        const double distance = std::fabs(std::log(pass.report.bits_per_weight() / bits_per_weight));
        if (distance < nearest) nearest = distance, chosen = k;
    }
    return chosen;
}

}  // namespace nwc
