// Decoding the tensors of a .nwc container: one validated plan per tensor (its method's parsed
// layout, chosen from the codec's method list by the entry's method name), then every (tensor,
// segment) pair as an independent work item, so a file decodes on any number of threads into the
// same values. Used by Codec::decompress*.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "nwc/core/config.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/container.hpp"
#include "nwc/pipeline/method.hpp"

namespace nwc {

/// Where a long operation stands (called from worker threads, one call at a time).
struct PipelineProgress {
    std::string_view phase;  ///< "compress", "decompress", "rate pass 3"
    std::size_t tensors_done = 0, tensors_total = 0;
    std::int64_t weights_done = 0, weights_total = 0;
};
using ProgressCallback = std::function<void(const PipelineProgress&)>;

namespace detail {

/// Runs work(item) -> (tensors done, weights done) for every item and reports progress in between;
/// lead() runs on the calling thread beside them (parallel_for_beside).
template <class Lead, class Work>
void run_with_progress(std::int64_t count, int threads, const ProgressCallback& progress, std::string_view phase, std::size_t tensors_total,
                       std::int64_t weights_total, Lead&& lead, Work&& work) {
    std::mutex mutex;
    PipelineProgress state{phase, 0, tensors_total, 0, weights_total};
    parallel_for_beside(count, threads, lead, [&](std::int64_t item) {
        const auto [tensors, weights] = work(item);
        if (!progress) return;
        std::lock_guard lock(mutex);
        state.tensors_done += tensors;
        state.weights_done += weights;
        progress(state);
    });
}

struct RawPlan {};

template <class Parsed>
struct method_of;

/// A parsed layout of method M (distinct types even where two methods share a Layout).
template <class M>
struct MethodLayout {
    typename M::Layout layout;
};

template <class M>
struct method_of<MethodLayout<M>> {
    using type = M;
};
template <class Parsed>
using method_of_t = typename method_of<Parsed>::type;

/// Everything needed to decode one tensor, validated before any output is allocated.
template <class... Methods>
struct DecodePlan {
    std::size_t index = 0;
    std::string context;
    std::variant<RawPlan, MethodLayout<Methods>...> layout;
    std::size_t segments = 1;
    std::int64_t weights = 0;
};

/// Validates tensor `index`'s metadata and prepares its decoding with the method of the list it
/// names (errc::unsupported for a method the list does not hold).
template <class... Methods>
DecodePlan<Methods...> make_decode_plan(const ContainerReader& reader, std::size_t index, DecodeResources& resources, MethodList<Methods...>) {
    const ContainerEntry& entry = reader.entry(index);
    DecodePlan<Methods...> plan;
    plan.index = index;
    plan.context = reader.context() + ": tensor '" + entry.name + "' (" + entry.method + ")";
    plan.weights = entry.shape.numel();
    if (entry.method == "raw") return plan;
    require(plan.weights <= std::int64_t(entry.payload_size) * max_weights_per_payload_byte, errc::limit, plan.context, ": ", plan.weights,
            " weights in ", entry.payload_size, " payload bytes (more than ", max_weights_per_payload_byte, " per byte)");
    const auto metadata = reader.metadata(index);
    const bool known = MethodList<Methods...>::visit(entry.method, [&]<class M>(std::type_identity<M>) {
        if constexpr (uses_codec_blob<M>)
            require(entry.codec_index >= 0, errc::corrupt, plan.context, ": a ", M::name, " tensor needs a codec");
        else
            require(entry.codec_index == -1, errc::corrupt, plan.context, ": refers to codec ", entry.codec_index);
        auto& parsed = plan.layout.template emplace<MethodLayout<M>>(MethodLayout<M>{M::parse(entry, metadata, resources, plan.context)});
        plan.segments = parsed.layout.segment_count();
    });
    require(known, errc::unsupported, plan.context, ": unknown method '", entry.method, "' (this build reads raw, ", MethodList<Methods...>::names(), ")");
    return plan;
}

/// Whether `plan` decodes a lossy coded tensor (not raw, not a lossless method's).
template <class Plan>
bool decodes_lossy(const Plan& plan) {
    return std::visit(
        []<class Parsed>(const Parsed&) {
            if constexpr (std::is_same_v<Parsed, RawPlan>) return false;
            else return !is_lossless<method_of_t<Parsed>>;
        },
        plan.layout);
}

/// Throws errc::corrupt unless the decoded weights [begin, end) of `values` are finite: metadata
/// with valid CRCs can still hold a step, scale or alpha whose product with the codes overflows
/// (found by fuzz_container).
inline void require_finite_range(std::span<const float> values, std::size_t begin, std::size_t end, const std::string& context) {
    // An integer test of the exponent bits, OR-reduced: it vectorizes (a branch per weight on
    // std::isfinite did not, and was a fifth of a whole `nwc decompress`); the index is looked for
    // only when the range holds a non-finite value.
    std::uint32_t non_finite = 0;
    for (std::size_t i = begin; i < end; ++i) {
        std::uint32_t bits;
        std::memcpy(&bits, values.data() + i, sizeof bits);
        non_finite |= std::uint32_t((bits & 0x7F800000u) == 0x7F800000u);
    }
    if (NWC_LIKELY(non_finite == 0)) return;
    for (std::size_t i = begin; i < end; ++i)
        if (!std::isfinite(values[i]))
            fail(errc::corrupt, context, ": decoded weight ", i, " is ", values[i], " (the metadata's step, scales or alpha overflow)");
}

/// Decodes segment `segment` of `plan` into `output` (the tensor's shape; a raw tensor has one
/// segment, its whole payload) and returns the weights it covered.
template <class Backend, class Plan>
std::int64_t decode_plan_segment(const ContainerReader& reader, const Plan& plan, std::size_t segment, TensorView<float> output) {
    const ContainerEntry& entry = reader.entry(plan.index);
    const auto bytes = std::holds_alternative<RawPlan>(plan.layout) ? reader.payload(plan.index) : reader.segment(plan.index, segment);
    std::int64_t weights = plan.weights;
    std::visit(
        [&]<class Parsed>(const Parsed& parsed) {
            if constexpr (std::is_same_v<Parsed, RawPlan>) {
                NWC_ASSERT(output.shape() == entry.shape);
                decode_float32_into(entry.original_dtype, entry.shape, bytes, output.span(), plan.context);
            } else {
                method_of_t<Parsed>::decode_segment(parsed.layout, segment, bytes, output, plan.context, Backend{});
                weights = parsed.layout.segment_weights(segment);
            }
        },
        plan.layout);
    return weights;
}

/// Whether a parsed layout's method is a StoredDecodingMethod (never a raw tensor's).
template <class Parsed>
inline constexpr bool decodes_to_stored_bytes = [] {
    if constexpr (std::is_same_v<Parsed, RawPlan>) return false;
    else return StoredDecodingMethod<method_of_t<Parsed>>;
}();

/// Whether `plan`'s method decodes straight into stored bytes of dtype `type`
/// (StoredDecodingMethod; decode_plan_segment_stored).
template <class Plan>
bool decodes_stored(const Plan& plan, dtype type) {
    return std::visit(
        [&]<class Parsed>(const Parsed& parsed) {
            if constexpr (decodes_to_stored_bytes<Parsed>) return method_of_t<Parsed>::stored_dtype(parsed.layout) == type;
            else return false;
        },
        plan.layout);
}

/// Decodes segment `segment` of `plan` into `output`, the tensor's stored bytes; only where
/// decodes_stored(plan, its dtype).
template <class Backend, class Plan>
void decode_plan_segment_stored(const ContainerReader& reader, const Plan& plan, std::size_t segment, std::span<std::uint8_t> output) {
    std::visit(
        [&]<class Parsed>(const Parsed& parsed) {
            if constexpr (decodes_to_stored_bytes<Parsed>)
                method_of_t<Parsed>::decode_segment_stored(parsed.layout, segment, reader.segment(plan.index, segment), output, plan.context, Backend{});
            else
                NWC_ASSERT(false);
        },
        plan.layout);
}

/// Gives `output` the shape of `plan`'s tensor unless it has it already (decode_plans).
template <class Plan>
void allocate_output(const ContainerReader& reader, const Plan& plan, Tensor<float>& output) {
    const Shape& shape = reader.entry(plan.index).shape;
    if (output.shape() != shape || std::int64_t(output.values().size()) != shape.numel()) output = Tensor<float>(shape);
}

/// Decodes every (plan, segment) pair as one work item into `outputs` (null: skip the tensor), and
/// checks every lossy coded tensor for non-finite weights (require_finite_range; raw tensors and
/// lossless methods' keep whatever the source held). An output that does not hold its plan's
/// weights yet (a default Tensor) is allocated by the calling thread, in order, while the other
/// threads already decode the tensors before it; the calling thread keeps about
/// allocation_lookahead weights allocated ahead of the items claimed and decodes items itself
/// meanwhile (with one thread, a tensor is decoded soon after it is allocated, while it is still in
/// cache). The worker that decodes a tensor's last segment checks it. Neither is a serial pass over
/// the whole model before or after the decoding: on MT3 (147 tensors), zero-filling every output
/// first and checking them all last kept 2 threads at 1.35-1.74x one (docs/bench/pipeline.md).
/// The allocation stays on the calling thread: allocated by the workers, the outputs came from
/// their malloc arenas, which give pages back to the kernel when freed, and every call then paid
/// the page faults again (2 threads 2.6x slower than one).
template <class Backend, class Plan>
void decode_plans(const ContainerReader& reader, const std::vector<Plan>& plans, const std::vector<Tensor<float>*>& outputs, int threads,
                  const ProgressCallback& progress, std::size_t tensors_total) {
    constexpr std::int64_t allocation_lookahead = std::int64_t(1) << 20;
    std::vector<std::pair<std::size_t, std::size_t>> items;  // (plan, segment)
    std::vector<std::int64_t> first_item(plans.size() + 1), weights_before(plans.size() + 1);
    for (std::size_t p = 0; p < plans.size(); ++p) {
        first_item[p] = std::int64_t(items.size());
        weights_before[p + 1] = weights_before[p] + plans[p].weights;
        for (std::size_t s = 0; s < plans[p].segments; ++s) items.emplace_back(p, s);
    }
    first_item[plans.size()] = std::int64_t(items.size());
    const std::int64_t weights_total = weights_before[plans.size()];
    // outputs [0, ready) are allocated; `failed` once the allocation threw (its error is rethrown).
    constexpr std::size_t failed = std::numeric_limits<std::size_t>::max();
    std::atomic<std::size_t> ready{0};
    const auto allocate_outputs = [&](BesideItems& pending) {
        try {
            for (std::size_t p = 0; p < plans.size(); ++p) {
                // Far enough ahead of the items claimed: decode one of the allocated tensors' meanwhile.
                for (std::int64_t claimed = pending.next(); claimed < std::int64_t(items.size()); claimed = pending.next()) {
                    const std::int64_t ahead = weights_before[p] - weights_before[items[std::size_t(claimed)].first];
                    if (ahead < allocation_lookahead || !pending.run_below(first_item[p])) break;
                }
                if (outputs[p] != nullptr) allocate_output(reader, plans[p], *outputs[p]);
                ready.store(p + 1, std::memory_order_release);
                ready.notify_all();
            }
        } catch (...) {
            ready.store(failed, std::memory_order_release);
            ready.notify_all();
            throw;
        }
    };
    const auto segments_left = std::make_unique<std::atomic<std::size_t>[]>(plans.size());
    for (std::size_t p = 0; p < plans.size(); ++p) segments_left[p].store(plans[p].segments, std::memory_order_relaxed);
    run_with_progress(std::int64_t(items.size()), threads, progress, "decompress", tensors_total, weights_total, allocate_outputs, [&](std::int64_t item) {
        // Not a structured binding: clang before 16 cannot capture one in the lambda below.
        const std::size_t p = items[std::size_t(item)].first, segment = items[std::size_t(item)].second;
        const Plan& plan = plans[p];
        const std::size_t done = segment + 1 == plan.segments ? 1 : 0;
        Tensor<float>* output = outputs[p];
        if (output == nullptr) return std::pair<std::size_t, std::int64_t>{done, plan.weights};
        std::size_t seen = ready.load(std::memory_order_acquire);
        while (seen <= p) {
            ready.wait(seen, std::memory_order_acquire);
            seen = ready.load(std::memory_order_acquire);
        }
        if (seen == failed) return std::pair<std::size_t, std::int64_t>{0, 0};
        const std::int64_t weights = decode_plan_segment<Backend>(reader, plan, segment, output->view());
        // acq_rel: the last worker sees every other segment's writes before it reads them.
        if (segments_left[p].fetch_sub(1, std::memory_order_acq_rel) == 1 && decodes_lossy(plan))
            require_finite_range(output->view().span(), 0, std::size_t(output->numel()), plan.context);
        return std::pair<std::size_t, std::int64_t>{done, weights};
    });
}

}  // namespace detail
}  // namespace nwc
