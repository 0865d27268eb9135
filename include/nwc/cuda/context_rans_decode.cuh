// Context-coded rANS decoding on the GPU (backend tag nwc::backend::cuda): the stream of
// entropy/context_rans.hpp, whose symbols take their table from a LaneStateMachine (tcq's trellis).
//
// Read me first (the format is docs/format/rans.md, section 3; the reference is
// entropy/context_rans_lanes.hpp):
// - The rANS work is cuda/rans_decode.cuh's kernel, one warp per rANS segment; only the table
//   choice differs, and that is this file's MachineChannels policy. Value i of a segment follows
//   machine path i % 32, whose state sits in shared memory (32 words per warp, state 0 at every
//   segment start). One step of the warp decodes `lanes` (1..32) consecutive values, so the paths
//   of one step are distinct: each lane reads its path's state, decodes with table
//   context(state), and writes the next state; a __syncwarp orders the steps.
// - An escaped value (outside its table's support) is read by lane 0 in symbol order, as in the
//   plain coder; the escaped SYMBOL's parity picks the path's transition (as the reference's
//   context_read_escape does), and a value outside int32 marks the segment corrupt.
// - The machine's tables (per state its context, per state and bin parity the next state, per
//   context the value offset and addend) are integer data built on the host by
//   nwc::detail::ContextDecodeTables, exactly what the CPU decoders use, and uploaded once.
// - The host validates header, index, fingerprints and CRC (context_rans::read_index) before
//   anything is launched; the symbols are then identical to the CPU's, or the call throws
//   nwc::error(corrupt).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device_buffer.cuh"
#include "nwc/cuda/rans_decode.cuh"
#include "nwc/entropy/context_rans.hpp"

namespace nwc::cuda {

namespace detail {

/// rans_decode_kernel's policy for context-coded streams (see the header comment).
struct MachineChannels {
    static constexpr std::uint32_t shared_words = 32;  // one state per path
    const std::uint16_t* state_contexts = nullptr;
    const std::uint16_t* symbol_transitions = nullptr;
    const std::uint32_t* bin_transitions = nullptr;
    const std::int32_t* value_offsets = nullptr;
    const std::int32_t* addends = nullptr;
    std::int32_t value_stride = 1;
    std::uint32_t* path_states = nullptr;

    __device__ void bind(std::uint32_t* shared) { path_states = shared; }
    __device__ void begin(const RansSegmentJob&) {
        path_states[threadIdx.x] = 0;
        __syncwarp();
    }
    __device__ std::uint32_t channel(std::uint32_t i) const { return state_contexts[path_states[i % 32]]; }
    __device__ std::int32_t value(std::uint32_t channel, std::uint32_t bin, const std::int32_t*) const {
        return std::int32_t(std::uint32_t(value_offsets[channel]) + std::uint32_t(value_stride) * bin);
    }
    /// The path of value i moves on by the decoded bin's parity (bin_transitions folds in the table offset's).
    __device__ void take(std::uint32_t i, std::uint32_t bin) {
        std::uint32_t& state = path_states[i % 32];
        state = bin_transitions[2 * state + (bin & 1u)] & 0xFFFFu;
    }
    /// An escaped symbol: its value and the path's next state by the symbol's own parity; false
    /// when the value leaves int32 (a corrupt stream).
    __device__ bool take_escape(std::uint32_t i, std::uint32_t channel, std::int32_t symbol, std::int32_t& value) {
        const std::int64_t decoded = std::int64_t(value_stride) * symbol + addends[channel];
        std::uint32_t& state = path_states[i % 32];
        state = symbol_transitions[2 * state + (std::uint32_t(symbol) & 1u)];
        value = std::int32_t(decoded);
        return decoded >= INT32_MIN && decoded <= INT32_MAX;
    }
    __device__ void end_step() { __syncwarp(); }
};

}  // namespace detail

/// A LaneStateMachine bound to its tables (nwc::detail::ContextDecodeTables) in device memory.
class DeviceLaneMachine {
public:
    /// Uploads the bound machine (from `memory`: a decoder's pool for a per-tensor machine).
    explicit DeviceLaneMachine(const nwc::detail::ContextDecodeTables& host, TemporaryMemory memory = {})
        : m_state_contexts(std::span<const std::uint16_t>(host.state_contexts), memory),
          m_symbol_transitions(std::span<const std::uint16_t>(host.symbol_transitions), memory),
          m_bin_transitions(std::span<const std::uint32_t>(host.bin_transitions), memory),
          m_value_offsets(std::span<const std::int32_t>(host.value_offsets), memory),
          m_addends(std::span<const std::int32_t>(host.addends), memory),
          m_value_stride(host.value_stride) {}

    const std::uint16_t* state_contexts() const noexcept { return m_state_contexts.data(); }
    const std::uint16_t* symbol_transitions() const noexcept { return m_symbol_transitions.data(); }
    const std::uint32_t* bin_transitions() const noexcept { return m_bin_transitions.data(); }
    const std::int32_t* value_offsets() const noexcept { return m_value_offsets.data(); }
    const std::int32_t* addends() const noexcept { return m_addends.data(); }
    std::int32_t value_stride() const noexcept { return m_value_stride; }
    /// The kernel's policy for this machine.
    detail::MachineChannels policy() const noexcept {
        return {state_contexts(), symbol_transitions(), bin_transitions(), value_offsets(), addends(), value_stride()};
    }

private:
    DeviceBuffer<std::uint16_t> m_state_contexts, m_symbol_transitions;
    DeviceBuffer<std::uint32_t> m_bin_transitions;
    DeviceBuffer<std::int32_t> m_value_offsets, m_addends;
    std::int32_t m_value_stride = 1;
};

/// Decodes the segments `jobs` (make_rans_job on streams validated with context_rans::read_index
/// against the same tables and machine, already in `device_bytes`) into `out` (device memory) on
/// `stream`. Waits, then throws nwc::error(corrupt) naming `context` and the segment if one is
/// inconsistent (the values are then unspecified). `memory` as for rans_decode_segments.
inline void context_rans_decode_segments(const std::uint8_t* device_bytes, std::span<const RansSegmentJob> jobs, const DeviceRansTables& tables,
                                         const DeviceLaneMachine& machine, std::int32_t* out, TemporaryMemory memory, const std::string& context) {
    const DeviceRansTables* const sets[] = {&tables};
    const detail::MachineChannels policies[] = {machine.policy()};
    const std::string contexts[] = {context};
    detail::launch_rans_decode<detail::MachineChannels>(device_bytes, jobs, sets, policies, out, memory, contexts);
}

/// Convenience: decodes a whole host stream on the GPU and returns its values on the host (tests
/// compare them with context_rans::decode). Throws what context_rans::read_index throws.
inline std::vector<std::int32_t> context_rans_decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, const LaneStateMachine& machine,
                                                     cudaStream_t cuda_stream = nullptr) {
    const RansStreamIndex index = context_rans::read_index(stream, tables, machine);
    std::vector<RansSegmentJob> jobs;
    for (std::size_t s = 0; s < index.segments.size(); ++s) jobs.push_back(make_rans_job(stream, index, s, 0, index.segments[s].first_symbol));
    DeviceBuffer<std::uint8_t> bytes(stream);
    DeviceBuffer<std::int32_t> values(index.symbol_count);
    const DeviceRansTables device_tables(tables);
    const DeviceLaneMachine device_machine(nwc::detail::ContextDecodeTables(tables, machine));
    context_rans_decode_segments(bytes.data(), jobs, device_tables, device_machine, values.data(), cuda_stream, "context rANS stream (GPU)");
    return values.to_host();
}

}  // namespace nwc::cuda
