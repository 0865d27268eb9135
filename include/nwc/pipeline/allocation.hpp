// Sensitivity-driven allocation: per-tensor settings (the method's knob and the normalization
// axis) chosen so the file's bytes go where they cut the model's loss most.
//
// Read me first:
// - The loss model: a tensor coded with per-weight mean squared error D costs the calibration NLL
//   S D, S its sensitivity (llm/sensitivity.hpp: antithetic noise on the calibration text). S is
//   measured for uniform noise and, optionally, for noise shaped as per-row and per-column
//   normalized quantization leaves it, so the axis whose error pattern the model minds least wins
//   (on stories260K: k_proj per row; most matrices one scale per tensor).
// - The curves: every coded tensor is coded ALONE at each knob value of a grid (continuous knobs:
//   `points_per_octave` points over +-`octaves` around the method's first guess for the target;
//   integer knobs: every value) and each axis the method uses, without a Hessian: the bytes are the
//   ones it writes, D the error it measures. Error feedback (LDLQ / GPTQ) lowers the error at the
//   same bytes for every tensor alike, so plain curves allocate as well as measured ones
//   (docs/bench/allocation.md); the file is then coded WITH feedback.
// - The choice: quant/rate_allocation.hpp's equal-slope allocation (reverse water-filling) with a
//   budget of the target's bytes less what the file spends outside the coded tensors (directory,
//   raw tensors, codec blobs), measured by one probe pass.
// - Then rate_control.hpp scales every continuous knob by one common factor until the file lands
//   on the target (the allocation's bytes are estimates once feedback and the container's varints
//   come in); integer knobs land as allocated.
// - Tensors without a sensitivity keep the codec's options (their bytes count as fixed).
// - Deterministic: curves are computed in parallel into fixed slots; same result for any thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/thread_pool.hpp"
#include "nwc/llm/sensitivity.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"
#include "nwc/quant/rate_allocation.hpp"

namespace nwc {

/// Sensitivities of a model's tensors by name: S for uniform noise, and for per-row / per-column
/// shaped noise where measured (NaN otherwise).
struct TensorSensitivities {
    struct Entry {
        double uniform = std::numeric_limits<double>::quiet_NaN();
        double per_row = std::numeric_limits<double>::quiet_NaN();
        double per_column = std::numeric_limits<double>::quiet_NaN();

        /// S for the error pattern of `axis` (per_tensor: uniform).
        double for_axis(NormalizationAxis axis) const noexcept {
            return axis == NormalizationAxis::per_row ? per_row : axis == NormalizationAxis::per_column ? per_column : uniform;
        }
    };
    std::map<std::string, Entry, std::less<>> by_name;

    static TensorSensitivities from(const llm::SensitivityReport& report) {
        TensorSensitivities result;
        for (const llm::TensorSensitivity& tensor : report.tensors)
            result.by_name[tensor.name] = {tensor.sensitivity, tensor.per_row_sensitivity, tensor.per_column_sensitivity};
        return result;
    }
    const Entry* find(std::string_view name) const {
        const auto found = by_name.find(name);
        return found == by_name.end() ? nullptr : &found->second;
    }
};

/// How the operating points are laid out.
struct AllocationOptions {
    int points_per_octave = 8;  ///< continuous knobs: grid density (the study's steps 2^(k/8))
    double octaves = 4.0;       ///< continuous knobs: +- around the first guess for the target
    bool choose_axis = true;    ///< try per row / per column where shaped sensitivities exist
};

/// What the allocation chose, and what it predicted.
struct AllocationResult {
    std::vector<TensorSetting> settings;  ///< per model tensor (unset for tensors it left alone)
    double budget_bytes = 0.0;            ///< for the allocated tensors
    double allocated_bytes = 0.0;         ///< their bytes as coded alone, at the chosen points
    double predicted_loss = 0.0;          ///< sum of S D at the chosen points (nats per token)
};

/// Chooses per-tensor settings for `codec` on `model` for a whole file of `bits_per_weight` (see
/// the header comment).
template <class CodecType>
AllocationResult allocate_settings(const CodecType& codec, const ModelFile& model, const TensorSensitivities& sensitivities, double bits_per_weight,
                                   const AllocationOptions& options = {}, const ProgressCallback& progress = {}) {
    require(options.points_per_octave >= 1 && options.octaves > 0.0, errc::invalid_argument, "allocation: ", options.points_per_octave,
            " points per octave over ", options.octaves, " octaves");
    codec.require_rate_knob("allocation");
    const MethodKnob knob = codec.knob();
    const double target_bytes = bits_per_weight * double(model.weight_count()) / 8.0;
    MethodOptions base = codec.options();
    base.measure = false;
    // The first guess for the target, where the probe pass runs and the grid is centred.
    double guess = codec.knob_value();
    if (!knob.integer) guess = std::exp2(std::clamp(knob.guess_intercept + knob.guess_slope * bits_per_weight, std::log2(knob.lowest), std::log2(knob.highest)));
    const CodecType probe = codec.with_options(CodecType::options_with_knob(base, guess));
    const CompressedModel first = probe.compress_model(model, {}, progress);

    // The knob values and axes every allocated tensor may take.
    std::vector<double> values;
    if (knob.integer) {
        for (double value = std::ceil(knob.lowest); value <= knob.highest; value += 1.0) values.push_back(value);
    } else {
        const int half = int(std::lround(options.octaves * options.points_per_octave));
        for (int k = -half; k <= half; ++k) {
            const double value = guess * std::exp2(double(k) / options.points_per_octave);
            if (value >= knob.lowest && value <= knob.highest) values.push_back(value);
        }
    }
    std::vector<NormalizationAxis> axes{base.axis};
    if (codec.uses_normalization_axis()) axes = {NormalizationAxis::per_tensor, NormalizationAxis::per_row, NormalizationAxis::per_column};

    struct Candidate {
        TensorSetting setting;
        OperatingPoint point;
    };
    std::vector<std::size_t> allocated;  // model tensor indices
    double fixed_bytes = double(first.report.file_bytes);
    for (std::size_t i = 0; i < model.tensors.size(); ++i) {
        const TensorReport& report = first.report.tensors[i];
        if (report.method != base.method || sensitivities.find(model.tensors[i].name) == nullptr) continue;
        allocated.push_back(i);
        fixed_bytes -= double(report.stored_bytes);
    }
    std::vector<std::vector<Candidate>> candidates(allocated.size());
    const int threads = resolve_thread_count(base.threads);
    MethodOptions single = base;
    single.threads = 1;
    single.measure = true;
    parallel_for(std::int64_t(allocated.size()), threads, [&](std::int64_t slot) {
        const ModelTensor& tensor = model.tensors[allocated[std::size_t(slot)]];
        const TensorSensitivities::Entry& entry = *sensitivities.find(tensor.name);
        for (NormalizationAxis axis : axes) {
            const double sensitivity = codec.uses_normalization_axis() ? entry.for_axis(axis) : entry.uniform;
            if (!std::isfinite(sensitivity) || (!options.choose_axis && axis != base.axis && codec.uses_normalization_axis())) continue;
            for (double value : values) {
                TensorSetting setting{value, codec.uses_normalization_axis() ? std::optional(axis) : std::nullopt, sensitivity};
                TensorReport report;
                codec.with_options(CodecType::options_with(single, setting)).compress(tensor, nullptr, report);
                const double mse = report.squared_error / double(std::max<std::int64_t>(tensor.shape.numel(), 1));
                candidates[std::size_t(slot)].push_back({setting, {double(report.stored_bytes), std::max(sensitivity, 0.0) * mse}});
            }
        }
    });

    AllocationResult result;
    result.settings.assign(model.tensors.size(), TensorSetting{});
    std::vector<OperatingCurve> curves;
    std::vector<std::size_t> curve_slot;
    for (std::size_t slot = 0; slot < allocated.size(); ++slot) {
        if (candidates[slot].empty()) {  // no finite sensitivity for any axis: fixed at the guess
            fixed_bytes += double(first.report.tensors[allocated[slot]].stored_bytes);
            continue;
        }
        OperatingCurve curve;
        for (const Candidate& candidate : candidates[slot]) curve.push_back(candidate.point);
        curves.push_back(std::move(curve));
        curve_slot.push_back(slot);
    }
    result.budget_bytes = target_bytes - fixed_bytes;
    if (curves.empty()) return result;
    const RateAllocation chosen = allocate_rate(curves, result.budget_bytes);
    for (std::size_t c = 0; c < curves.size(); ++c) {
        const Candidate& pick = candidates[curve_slot[c]][chosen.choice[c]];
        result.settings[allocated[curve_slot[c]]] = pick.setting;
    }
    result.allocated_bytes = chosen.bytes;
    result.predicted_loss = chosen.loss;
    return result;
}

/// `settings` with every set continuous knob multiplied by 2^u (rate control's common correction).
inline std::vector<TensorSetting> scaled_settings(std::span<const TensorSetting> settings, double u) {
    std::vector<TensorSetting> scaled(settings.begin(), settings.end());
    for (TensorSetting& setting : scaled)
        if (!std::isnan(setting.knob)) setting.knob *= std::exp2(u);
    return scaled;
}

}  // namespace nwc
