// Sequential compression of a Llama model through the pipeline: every linear layer is coded with
// the Hessian of the COMPRESSED model-so-far's inputs, and after each coding step the block's
// still-uncoded layers are fine-tuned to absorb the error (llm/sequential_compression.hpp), then
// the container is assembled exactly as Codec::compress_model() does.
//
// Read me first:
// - The codes of a fine-tuned layer are the codes of its FINE-TUNED weights: the file reproduces
//   the fine-tuned model, and the per-tensor relative MSE / proxy loss are measured against the
//   weights that were coded (not the original ones).
// - llama2.c models are coded in their own row order. Hugging Face models store q/k rows permuted
//   for their RoPE layout: the driver codes the tensor as the file holds it (so the container
//   decodes to the same file layout) and hands the reconstruction back in llama2.c order.
// - Rate control (compress_sequentially_to_target): the knob (or, with sensitivities, the
//   allocated per-tensor settings and their common factor) is searched with ordinary passes
//   (Hessians of the original model, no fine-tuning: cheap), then the sequential pass runs there.
//   Fine-tuned weights code to slightly different sizes, so continuous knobs are then corrected by
//   secant steps on sequential passes until the file is within the tolerance (at most
//   `max_corrections`). rtn / gptq keep their per-tensor bits: only their grid scale codes
//   depend on the values, a few bytes per tensor (fp16 scales: exactly the same size).
// - Determinism: everything is the same bits for any thread count (the parts guarantee it).
#pragma once

#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nwc/io/hf_llama.hpp"
#include "nwc/llm/sequential_compression.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"
#include "nwc/pipeline/rate_control.hpp"

namespace nwc {

/// Compresses a llama2.c or Hugging Face Llama `model` sequentially with `codec` (its method and
/// options; LDLQ feedback follows codec.options().ldlq), calibrating on `calibration_tokens`
/// (tokenize_for_evaluation). `settings` (model tensor order), when not empty, override the
/// method's knob and normalization per tensor (rtn / gptq bits, allocated steps). `details`, when given,
/// receives the per-step block errors and fine-tuning results.
template <class CodecType>
CompressedModel compress_model_sequentially(const CodecType& codec, const ModelFile& model, std::span<const int> calibration_tokens,
                                            const llm::SequentialCompressionOptions& options, std::span<const TensorSetting> settings = {},
                                            llm::SequentialCompressionReport* details = nullptr) {
    const auto start = std::chrono::steady_clock::now();
    require(!codec.is_lossless(), errc::invalid_argument, "sequential compression fine-tunes the layers it has not coded yet; method '",
            codec.options().method, "' must keep every weight as it is (compress without calibration)");
    std::optional<llm::LlamaWeights> weights = llama_weights_of(model);
    require(weights.has_value(), errc::unsupported, "sequential compression needs a model whose forward pass nwc has (llama2.c, Hugging Face Llama "
            "or Mistral); this one ", why_not_llama(model));
    require(settings.empty() || settings.size() == model.tensors.size(), errc::invalid_argument, "sequential compression: ", settings.size(),
            " tensor settings for ", model.tensors.size(), " tensors");
    const llm::LlamaConfig config = weights->config;
    llm::LlamaModel network(std::move(*weights));
    const bool hf_layout = model.format == ModelFormat::hf_llama;

    const std::size_t count = model.tensors.size();
    std::vector<ContainerTensor> tensors(count);
    std::vector<TensorReport> reports(count);
    std::vector<bool> coded(count, false);
    const auto index_of = [&](const std::string& name) {
        const ModelTensor* tensor = model.find(name);
        require(tensor != nullptr, errc::invalid_argument, "sequential compression: the model has no tensor '", name, "'");
        return std::size_t(tensor - model.tensors.data());
    };
    const auto coder_for = [&](std::size_t index) {
        MethodOptions chosen = settings.empty() ? codec.options() : CodecType::options_with(codec.options(), settings[index]);
        chosen.measure = true;  // the reconstruction is what the next layers are tuned against
        return codec.with_options(chosen);
    };

    const llm::QuantizeFunction quantize = [&](const std::string& name, const Tensor<float>& weight, const Tensor<double>* hessian) {
        const std::size_t index = index_of(name);
        const ModelTensor& tensor = model.tensors[index];
        require(tensor.is_floating() && tensor.shape == weight.shape(), errc::invalid_argument, "sequential compression: tensor '", name,
                "' does not match the model file");
        const int heads = hf_layout ? llm::detail::rope_heads_of(config, name) : 0;
        Tensor<float> reconstruction;
        if (heads > 0) {
            const Tensor<float> stored = llm::permute_rows_to_hf(weight.view(), heads);
            tensors[index] = coder_for(index).compress(name, stored.view(), hessian, &reports[index], tensor.original_dtype, &reconstruction);
            reconstruction = llm::permute_rows_from_hf(reconstruction.view(), heads);
        } else {
            tensors[index] = coder_for(index).compress(name, weight.view(), hessian, &reports[index], tensor.original_dtype, &reconstruction);
        }
        require(reconstruction.shape() == weight.shape(), errc::invalid_argument, "sequential compression: no reconstruction of '", name, "'");
        if (!settings.empty()) CodecType::record_sensitivity(tensors[index], settings[index]);
        coded[index] = true;
        return reconstruction;
    };
    llm::SequentialCompressionReport report = llm::compress_sequentially(network, calibration_tokens, quantize, options);
    if (details != nullptr) *details = std::move(report);

    // Whatever the driver did not visit (norm scales, a tied lm_head a Hugging Face file still
    // carries) is coded as compress_model() would, without a Hessian.
    for (std::size_t index = 0; index < count; ++index)
        if (!coded[index]) tensors[index] = coder_for(index).compress(model.tensors[index], nullptr, reports[index]);
    return codec.assemble_model(model, std::move(tensors), std::move(reports), start, settings);
}

/// Sequential compression landing within target.tolerance of target.bits_per_weight (see the
/// header comment). `hessians`: the original model's (llm::collect_hessians), for the search.
template <class CodecType>
CompressedModel compress_sequentially_to_target(const CodecType& codec, const ModelFile& model, const HessianLookup& hessians,
                                                std::span<const int> calibration_tokens, const RateTarget& target,
                                                const llm::SequentialCompressionOptions& options, int max_corrections = 3,
                                                llm::SequentialCompressionReport* details = nullptr) {
    CompressedModel searched = compress_to_target(codec, model, hessians, target);
    const double target_bytes = target.bits_per_weight * double(model.weight_count()) / 8.0;
    const auto finish = [&](CompressedModel result, int passes) {
        ModelReport& report = result.report;
        report.target_bits_per_weight = target.bits_per_weight;
        report.passes = passes;
        const double miss = double(report.file_bytes) / target_bytes - 1.0;
        report.target_met = std::fabs(miss) <= target.tolerance;
        if (!report.target_met)
            report.note = detail::concat("achieved ", report.bits_per_weight(), " bits per weight after fine-tuning, ", 100.0 * miss, "% from the target");
        return result;
    };
    const MethodKnob knob = codec.knob();
    if (knob.integer) {
        CompressedModel result = compress_model_sequentially(codec, model, calibration_tokens, options, searched.report.tensor_settings, details);
        result.report.setting = searched.report.setting;
        return finish(std::move(result), searched.report.passes + 1);
    }
    // Fine-tuned weights code to slightly different sizes: secant corrections on sequential passes,
    // from the searched knob and the slope d ln(bytes) / du of about +-(coded share of the weights)
    // / bits per weight (one bit per coded weight per doubling of the knob), known after one pass.
    std::optional<CompressedModel> best;
    llm::SequentialCompressionReport best_details, candidate_details;
    double slope = 0.0;
    // Allocated settings move by one common factor 2^u from those the search chose; a global knob is u itself.
    const std::vector<TensorSetting>& allocated = searched.report.tensor_settings;
    const bool per_tensor = !allocated.empty();
    detail::KnobSearch search(target_bytes, target.tolerance, max_corrections + 1, [&](double u) {
        CompressedModel result = per_tensor ? compress_model_sequentially(codec, model, calibration_tokens, options, scaled_settings(allocated, u),
                                                                          &candidate_details)
                                            : compress_model_sequentially(codec.with_knob(std::exp2(u)), model, calibration_tokens, options, {},
                                                                          &candidate_details);
        result.report.knob = per_tensor ? searched.report.knob * std::exp2(u) : std::exp2(u);
        if (per_tensor) result.report.setting = detail::settings_text(codec, result.report.tensor_settings) + " (allocated)";
        const double bytes = double(result.report.file_bytes);
        if (!best || std::fabs(bytes / target_bytes - 1.0) < std::fabs(double(best->report.file_bytes) / target_bytes - 1.0)) {
            if (!best) {
                double coded_weights = 0.0;
                for (const TensorReport& tensor : result.report.tensors)
                    if (tensor.method != "raw") coded_weights += double(tensor.weights());
                slope = (knob.rate_grows ? 1.0 : -1.0) * coded_weights / double(model.weight_count()) / result.report.bits_per_weight();
            }
            best = std::move(result), best_details = std::move(candidate_details);
        }
        return bytes;
    });
    search.secant(per_tensor ? 0.0 : std::log2(searched.report.knob), [&] { return slope; }, max_corrections);
    if (details != nullptr) *details = std::move(best_details);
    return finish(std::move(*best), searched.report.passes + search.passes());
}

}  // namespace nwc
