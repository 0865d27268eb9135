// Rate control: compress a whole model so that the FILE lands on a target number of bits per
// weight, bpw = 8 x (every byte of the .nwc file) / (elements of every tensor of the input).
//
// Read me first:
// - Every method but a lossless one has one knob (method.hpp's MethodKnob); rate control refuses
//   a method without one (errc::invalid_argument). A continuous knob (ecsq's step Δ, nwc's
//   alpha) is searched for the whole file on u = log2(knob) with the ACTUAL serialized size of
//   full compressions (no estimate): KnobSearch starts at the knob's first guess, steps of
//   doubling width until the target is bracketed, then regula falsi with the Illinois
//   modification. It stops once the file is within half the tolerance (so rounding cannot push it
//   out), and keeps the best pass. Passes skip the error measurements; the chosen knob is
//   compressed once more with them (same bytes otherwise). The same search object also runs the
//   secant corrections of sequential compression (sequential_pipeline.hpp).
// - An integer knob (rtn, gptq bits): one measurement-free pass gives the container's fixed
//   overhead, every tensor's size at every bit width follows (from the shape alone with fp16
//   group scales, SizePredictingMethod; by coding the tensor alone, without a Hessian, with grid
//   scales; exactly, but for the container's alignment padding, counted at its most; a Hessian's
//   feedback moves grid scales a little, hence the file a little), and bits are chosen PER TENSOR: all at the
//   largest b whose file fits, then tensors, largest step first, move to b + 1 while the file still
//   fits. With one tensor, or a target outside the knob's range, the target may stay out of reach:
//   the report says so.
// - Memory: a pass keeps no coded bytes (ContainerSizer: the layout, so the file's exact size), and
//   the model may be a ModelReader, read again tensor by tensor in every pass; only the last pass
//   writes, into the caller's sink (compress_to_target_into). Allocation needs the model in memory.
// - Cost: ecsq needs ~5-8 passes of a cheap method; nwc as many encoder passes (g_a over every chunk).
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nwc/pipeline/allocation.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"

namespace nwc {

/// What the rate search aims at.
struct RateTarget {
    double bits_per_weight = 4.0;  ///< B: 8 x file bytes / input weights
    double tolerance = 0.01;       ///< relative: |achieved / B - 1| must stay below it
    int max_passes = 14;           ///< full compressions for a continuous knob
    /// Range of the knob searched; NaN: the method's own (MethodKnob::lowest / highest).
    double knob_min = std::numeric_limits<double>::quiet_NaN(), knob_max = std::numeric_limits<double>::quiet_NaN();
    /// With sensitivities: per-tensor settings by allocation.hpp, then one common factor on every
    /// continuous knob for the exact bytes. Without: one knob for the whole file (equal error).
    const TensorSensitivities* sensitivities = nullptr;
    AllocationOptions allocation = {};
};

namespace detail {

/// The root finder of every rate knob: solves ln(bytes(u) / target) = 0 on u = log2(knob), one
/// full compression per evaluation, remembering the evaluation nearest the target.
class KnobSearch {
public:
    /// `evaluate(u)` compresses at knob 2^u and returns the file's bytes.
    KnobSearch(double target_bytes, double tolerance, int max_passes, std::function<double(double)> evaluate)
        : m_target_bytes(target_bytes), m_tolerance(tolerance), m_max_passes(max_passes), m_evaluate(std::move(evaluate)) {}

    /// Brackets the root from `start` in steps of doubling width inside [lowest, highest] (the
    /// knob moves the rate up when `rate_grows`), then narrows it by Illinois regula falsi.
    void bracket_and_narrow(double start, double lowest, double highest, bool rate_grows) {
        double u_a = start, f_a = miss_at(u_a), u_b = u_a, f_b = f_a;
        for (double width = 1.0; !done() && (f_a > 0) == (f_b > 0); width *= 2.0) {
            const bool lower_rate = f_b > 0;
            const double direction = (lower_rate != rate_grows) ? 1.0 : -1.0;
            const double next = std::clamp(u_b + direction * width, lowest, highest);
            if (next == u_b) return;  // the knob's range cannot reach the target
            u_a = u_b, f_a = f_b;
            u_b = next, f_b = miss_at(u_b);
        }
        while (!done() && (f_a > 0) != (f_b > 0) && std::fabs(u_b - u_a) > 1e-4) {
            const double u = u_b - f_b * (u_b - u_a) / (f_b - f_a);
            const double f = miss_at(u);
            if ((f > 0) == (f_b > 0)) {
                f_a /= 2;  // Illinois: the end kept again pulls half as hard, so the bracket shrinks from both sides
            } else {
                u_a = u_b, f_a = f_b;
            }
            u_b = u, f_b = f;
        }
    }

    /// Secant steps from `start`, at most `max_steps` of them (for expensive evaluations that start
    /// next to the root); the first slope d ln(bytes) / du is `initial_slope()`, asked after the
    /// first evaluation (it may depend on what that pass measured).
    template <class InitialSlope>
    void secant(double start, InitialSlope&& initial_slope, int max_steps) {
        double u = start, f = miss_at(u);
        double slope = initial_slope();
        for (int step = 0; step < max_steps && !done(); ++step) {
            const double next = u - f / slope;
            const double g = miss_at(next);
            if (std::fabs(next - u) > 1e-9 && std::fabs(g - f) > 1e-12) slope = (g - f) / (next - u);
            u = next, f = g;
        }
    }

    double best_u() const noexcept { return m_best_u; }
    /// Relative miss of the best evaluation: bytes / target - 1.
    double best_miss() const noexcept { return m_best_miss; }
    int passes() const noexcept { return m_passes; }
    bool done() const noexcept { return std::fabs(m_best_miss) <= m_tolerance / 2 || m_passes >= m_max_passes; }

private:
    double miss_at(double u) {
        ++m_passes;
        const double bytes = m_evaluate(u);
        const double miss = bytes / m_target_bytes - 1.0;
        if (std::fabs(miss) < std::fabs(m_best_miss)) m_best_miss = miss, m_best_u = u;
        return std::log(bytes / m_target_bytes);  // > 0: too many bytes
    }

    double m_target_bytes, m_tolerance;
    int m_max_passes;
    std::function<double(double)> m_evaluate;
    int m_passes = 0;
    double m_best_u = 0.0, m_best_miss = INFINITY;
};

/// One measurement-free pass's report: only the file's size is kept (ContainerSizer).
template <class CodecType, class Model>
ModelReport sized_pass(const CodecType& codec, const Model& model, const HessianLookup& hessians, const ProgressCallback& progress,
                       std::span<const TensorSetting> settings = {}) {
    MethodOptions options = codec.options();
    options.measure = false;
    ContainerSizer sizer;
    return codec.with_options(options).compress_model_into(model, sizer, hessians, progress, settings);
}

/// Integer knob: the knob per tensor from exact predicted sizes (see the header comment).
template <class CodecType, class Model, class Sink>
ModelReport compress_to_integer_target(const CodecType& codec, const Model& model, Sink& sink, const HessianLookup& hessians, const RateTarget& target,
                                       const ProgressCallback& progress) {
    const ModelFile& outline = outline_of(model);
    const MethodKnob knob = codec.knob();
    MethodOptions probe = codec.options();
    probe.measure = false;
    const ModelReport first = sized_pass(codec, model, {}, progress);
    const double target_bytes = target.bits_per_weight * double(outline.weight_count()) / 8.0;
    const int lowest = int(std::ceil(std::isnan(target.knob_min) ? knob.lowest : target.knob_min));
    const int highest = int(std::floor(std::isnan(target.knob_max) ? knob.highest : target.knob_max));
    require(lowest <= highest, errc::invalid_argument, "rate control: empty ", knob.option, " range [", lowest, ", ", highest, "]");
    // Bytes of tensor i at knob k with the most padding the container can add before its payload:
    // predicted from the shape, or (sizes that depend on the values) measured by coding it alone.
    MethodOptions single = probe;
    single.threads = 1;
    const auto predicted_bytes = [&](const Shape& shape, double value) -> std::optional<std::uint64_t> {
        const std::optional<std::vector<std::uint64_t>> sizes = codec.predicted_sizes(shape, CodecType::options_with_knob(single, value));
        if (!sizes) return std::nullopt;
        std::uint64_t payload = 0;
        for (std::size_t k = 1; k < sizes->size(); ++k) payload += (*sizes)[k];
        return container_tensor_bytes_bound((*sizes)[0], payload);
    };
    // The sizes of tensor i at `values`, reading its values only when a size depends on them.
    const auto tensor_bytes = [&](std::size_t i, std::span<const double> values) {
        std::vector<std::uint64_t> bytes;
        for (double value : values)
            if (const std::optional<std::uint64_t> predicted = predicted_bytes(outline.tensors[i].shape, value)) bytes.push_back(*predicted);
        if (bytes.size() == values.size()) return bytes;
        bytes.clear();
        with_model_tensor(model, i, [&](const ModelTensor& tensor) {
            for (double value : values) {
                TensorReport report;
                const ContainerTensor coded = codec.with_options(CodecType::options_with_knob(single, value)).compress(tensor, nullptr, report);
                bytes.push_back(container_tensor_bytes_bound(coded.metadata.size(), coded.payload.size()));
            }
        });
        return bytes;
    };
    std::vector<double> range;
    for (int value = lowest; value <= highest; ++value) range.push_back(value);
    std::vector<std::vector<std::uint64_t>> sizes(outline.tensors.size());  // [tensor][knob - lowest]
    std::vector<std::size_t> coded;
    for (std::size_t i = 0; i < outline.tensors.size(); ++i)
        if (first.tensors[i].method == codec.options().method) coded.push_back(i);  // not raw, nor a vector coded by ecsq
    parallel_for(std::int64_t(coded.size()), resolve_thread_count(probe.threads), [&](std::int64_t slot) {
        const std::size_t i = coded[std::size_t(slot)];
        sizes[i] = tensor_bytes(i, range);
    });
    // The probe's share of the first pass, from the sizes above when its knob is in the range.
    const int probed = int(codec.knob_value());
    double overhead = double(first.file_bytes);
    for (std::size_t i : coded) {
        const double value = probed;
        overhead -= double(probed >= lowest && probed <= highest ? sizes[i][std::size_t(probed - lowest)] : tensor_bytes(i, std::span(&value, 1))[0]);
    }
    std::vector<int> chosen(outline.tensors.size(), int(codec.knob_value()));
    const auto size_at = [&](std::size_t i, int value) { return double(sizes[i][std::size_t(value - lowest)]); };
    const auto total = [&] {
        double bytes = overhead;
        for (std::size_t i : coded) bytes += size_at(i, chosen[i]);
        return bytes;
    };
    int low = lowest;
    for (int candidate = highest; candidate >= lowest; --candidate) {
        for (std::size_t i : coded) chosen[i] = candidate;
        if (total() <= target_bytes) {
            low = candidate;
            break;
        }
    }
    for (std::size_t i : coded) chosen[i] = low;
    if (low < highest) {
        std::vector<std::size_t> order = coded;
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return size_at(a, low + 1) - size_at(a, low) > size_at(b, low + 1) - size_at(b, low); });
        double bytes = total();
        for (std::size_t i : order) {
            const double step = size_at(i, low + 1) - size_at(i, low);
            if (bytes + step <= target_bytes) {
                chosen[i] = low + 1;
                bytes += step;
            }
        }
    }
    std::vector<TensorSetting> settings(chosen.size());
    for (std::size_t i = 0; i < chosen.size(); ++i) settings[i].knob = chosen[i];
    ModelReport result = codec.compress_model_into(model, sink, hessians, progress, settings);
    int high = low;
    for (std::size_t i : coded) high = std::max(high, chosen[i]);
    result.setting = low == high ? detail::concat(knob.option, "=", low) : detail::concat(knob.option, "=", low, "..", high);
    result.passes = 2;
    return result;
}

/// "step=0.21..0.93": the range of the knobs `settings` set (the codec's setting if none).
template <class CodecType>
std::string settings_text(const CodecType& codec, std::span<const TensorSetting> settings) {
    double low = INFINITY, high = -INFINITY;
    for (const TensorSetting& setting : settings)
        if (!std::isnan(setting.knob)) low = std::min(low, setting.knob), high = std::max(high, setting.knob);
    if (!(low <= high)) return codec.setting();
    const std::string from = codec.with_knob(low).setting(), to = codec.with_knob(high).setting();
    return low == high ? from : from + ".." + to.substr(to.find('=') + 1);
}

/// Allocation (allocation.hpp), then one common factor 2^u on every allocated continuous knob,
/// searched like a global knob until the file lands on the target.
template <class CodecType, class Sink>
ModelReport compress_allocated(const CodecType& codec, const ModelFile& model, Sink& sink, const HessianLookup& hessians, const RateTarget& target,
                               const ProgressCallback& progress) {
    const MethodKnob knob = codec.knob();
    const std::vector<TensorSetting> allocated =
        allocate_settings(codec, model, *target.sensitivities, target.bits_per_weight, target.allocation, progress).settings;
    ModelReport result;
    if (knob.integer) {
        result = codec.compress_model_into(model, sink, hessians, progress, allocated);
        result.passes = 2;
    } else {
        const double target_bytes = target.bits_per_weight * double(model.weight_count()) / 8.0;
        KnobSearch search(target_bytes, target.tolerance, target.max_passes,
                          [&](double u) { return double(sized_pass(codec, model, hessians, progress, scaled_settings(allocated, u)).file_bytes); });
        search.bracket_and_narrow(0.0, -4.0, 4.0, knob.rate_grows);
        const std::vector<TensorSetting> settings = scaled_settings(allocated, search.best_u());
        result = codec.compress_model_into(model, sink, hessians, progress, settings);
        result.passes = search.passes() + 2;
        result.knob = std::exp2(search.best_u());
    }
    result.setting = settings_text(codec, result.tensor_settings) + " (allocated)";
    return result;
}

}  // namespace detail

/// Compresses `model` (a ModelFile, or a ModelReader that reads it tensor by tensor) into `sink`
/// (see compress_model_into) with `codec`'s method and options, choosing the rate so that the
/// whole file lands within target.tolerance of target.bits_per_weight (see the header comment).
/// Every pass but the last only sizes the file. The report's target_met / note say whether it did.
/// Allocation (target.sensitivities) needs the model in memory.
template <class CodecType, class Model, class Sink>
ModelReport compress_to_target_into(const CodecType& codec, const Model& model, Sink& sink, const HessianLookup& hessians, const RateTarget& target,
                                    const ProgressCallback& progress = {}) {
    const ModelFile& outline = outline_of(model);
    require(std::isfinite(target.bits_per_weight) && target.bits_per_weight > 0.0, errc::invalid_argument, "target of ", target.bits_per_weight,
            " bits per weight must be positive");
    require(outline.weight_count() > 0, errc::invalid_argument, "the model has no weights");
    codec.require_rate_knob("rate control");
    const MethodKnob knob = codec.knob();
    const double target_bytes = target.bits_per_weight * double(outline.weight_count()) / 8.0;
    ModelReport report;
    if (target.sensitivities != nullptr) {
        if constexpr (std::is_same_v<Model, ModelFile>)
            report = detail::compress_allocated(codec, model, sink, hessians, target, progress);
        else
            fail(errc::invalid_argument, "rate control: allocation by sensitivities needs the model in memory (a ModelFile)");
    } else if (knob.integer) {
        report = detail::compress_to_integer_target(codec, model, sink, hessians, target, progress);
    } else {
        const double lowest = std::log2(std::isnan(target.knob_min) ? knob.lowest : target.knob_min);
        const double highest = std::log2(std::isnan(target.knob_max) ? knob.highest : target.knob_max);
        detail::KnobSearch search(target_bytes, target.tolerance, target.max_passes,
                                  [&](double u) { return double(detail::sized_pass(codec.with_knob(std::exp2(u)), model, hessians, progress).file_bytes); });
        search.bracket_and_narrow(std::clamp(knob.guess_intercept + knob.guess_slope * target.bits_per_weight, lowest, highest), lowest, highest,
                                  knob.rate_grows);
        report = codec.with_knob(std::exp2(search.best_u())).compress_model_into(model, sink, hessians, progress);
        report.passes = search.passes() + 1;
        report.knob = std::exp2(search.best_u());
    }
    report.target_bits_per_weight = target.bits_per_weight;
    const double miss = double(report.file_bytes) / target_bytes - 1.0;
    report.target_met = std::fabs(miss) <= target.tolerance;
    if (!report.target_met)
        report.note = detail::concat("achieved ", report.bits_per_weight(), " bits per weight, ", 100.0 * miss, "% from the target",
                                     knob.integer ? ": integer knob values per tensor cannot land within the tolerance"
                                                  : ": the knob's range (or the fixed overhead of headers, scales, the codec and raw tensors) cannot reach it");
    return report;
}

/// compress_to_target_into() a container in memory.
template <class CodecType>
CompressedModel compress_to_target(const CodecType& codec, const ModelFile& model, const HessianLookup& hessians, const RateTarget& target,
                                   const ProgressCallback& progress = {}) {
    CompressedModel result;
    result.report = compress_to_target_into(codec, model, result.writer, hessians, target, progress);
    return result;
}

/// Of several trained codecs, the one whose file at alpha = 1 lands nearest `bits_per_weight` (in
/// log size): it needs the least stretching by alpha, which the decoder was not trained for. One
/// measurement-free pass per codec.
template <class CodecType = DefaultCodec, class Model = ModelFile>
std::size_t nearest_codec(const MethodOptions& options, std::span<const std::shared_ptr<const NeuralCodec>> candidates, const Model& model,
                          const HessianLookup& hessians, double bits_per_weight, const ProgressCallback& progress = {}) {
    require(!candidates.empty(), errc::invalid_argument, "nearest_codec: no candidate codecs");
    std::size_t chosen = 0;
    double nearest = INFINITY;
    for (std::size_t k = 0; candidates.size() > 1 && k < candidates.size(); ++k) {
        MethodOptions probe = options;
        probe.measure = false;
        probe.alpha = 1.0f;
        const ModelReport pass = detail::sized_pass(CodecType(probe, candidates[k]), model, hessians, progress);
        const double distance = std::fabs(std::log(pass.bits_per_weight() / bits_per_weight));
        if (distance < nearest) nearest = distance, chosen = k;
    }
    return chosen;
}

}  // namespace nwc
