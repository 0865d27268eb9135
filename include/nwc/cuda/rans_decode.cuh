// rANS decoding on the GPU (backend tag nwc::backend::cuda): one warp per segment.
//
// Read me first (the format is docs/format/rans.md; the reference is entropy/rans_lanes.hpp):
// - A segment has n = 1..32 interleaved states (rans::lane_count_for): lane l < n of the warp holds
//   state l and decodes symbols n t + l, t = 0, 1, ...; the other lanes idle. Lanes that need a
//   word after their symbol take consecutive words in lane order: ballot(need) and
//   popc(ballot & lanemask_lt) give each lane its word, exactly the lane-ordered renormalization
//   the encoder assumed. A lane does not renormalize on its tail (its last symbols, coded while
//   its state was below 2^16) and must end at state 1. The partial last step works the same way
//   with only the lanes that have a symbol.
// - The host parses each segment's bit-packed lane block (initial states, tails) into its job.
// - Tables: bin entries, bin bases, offsets and supports of all channels sit in shared memory
//   (a few KiB); the slot -> bin table (channels << precision u16, up to 2 MiB at precision 16)
//   goes to shared memory when it fits the budget, else it is read from global memory through the
//   read-only cache.
// - Escapes (values outside a channel's support) are rare: lane 0 reads their Elias-gamma codes
//   from the segment's escape bit stream in symbol order, exactly as EscapeBitReader does.
// - Which table codes a symbol, and what value a bin stands for, is a policy of the kernel: the
//   plain stream's channels cycle (CyclicChannels, here); the context-coded stream's follow each
//   path's state machine (MachineChannels, cuda/context_rans_decode.cuh). Everything else is shared.
// - The host validates the stream's header, index and CRC (rans::read_index) before anything is
//   launched; every check that needs the decoded data (word overrun, final states, escape stream
//   used up) is a status per segment that the host turns into nwc::error(corrupt). No read ever
//   leaves the segment's bytes: word and bit positions are clamped and flagged.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/cuda/cuda_check.cuh"
#include "nwc/cuda/device_buffer.cuh"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/rans_format.hpp"
#include "nwc/entropy/rans_lanes.hpp"

namespace nwc::cuda {

/// One segment to decode: where its words are in the device byte buffer, where its symbols go,
/// and its lanes' initial states and tails (parsed on the host from the lane block).
struct RansSegmentJob {
    std::uint64_t words_offset = 0;   ///< start of its 16-bit words in the device byte buffer
    std::uint64_t first_output = 0;   ///< index of its first symbol in the output
    std::uint32_t symbol_count = 0;
    std::uint32_t word_count = 0;
    std::uint32_t escape_bytes = 0;   ///< the escape bit stream follows the words
    std::uint32_t first_channel = 0;  ///< channel of its first symbol (0: segments start at channel 0)
    std::uint32_t table_set = 0;      ///< which of the launch's table sets (and symbol policies) it uses
    std::uint32_t lane_count = 0;
    std::uint32_t states[rans::max_lane_count] = {};
    std::uint32_t renormalized[rans::max_lane_count] = {};  ///< per lane, its symbols before its tail
};

/// The job of segment `segment` of a stream whose index read_index() returned; the stream's first
/// byte sits at `stream_offset` in the device byte buffer. Throws nwc::error(corrupt) for a bad lane block.
inline RansSegmentJob make_rans_job(std::span<const std::uint8_t> stream, const RansStreamIndex& index, std::size_t segment,
                                    std::uint64_t stream_offset, std::uint64_t first_output) {
    const RansSegment& info = index.segments[segment];
    RansSegmentJob job;
    job.words_offset = stream_offset + info.words_offset;
    job.first_output = first_output;
    job.symbol_count = info.symbol_count;
    job.word_count = info.word_count;
    job.escape_bytes = info.escape_bytes;
    nwc::detail::RansLaneStart start;
    nwc::detail::read_lane_block(stream.subspan(info.lanes_offset, info.lane_bytes), info.symbol_count, info.lanes_offset, segment, start);
    job.lane_count = start.lane_count;
    std::copy(std::begin(start.states), std::end(start.states), job.states);
    std::copy(std::begin(start.renormalized), std::end(start.renormalized), job.renormalized);
    return job;
}

/// Per-segment outcome written by the kernel.
enum class RansSegmentStatus : std::uint32_t { ok = 0, word_overrun, bad_end, bad_escape };

/// The decode tables of one CdfTableSet in device memory.
class DeviceRansTables {
public:
    /// Shared memory the slot table may use (the rest of the tables are small).
    static constexpr std::size_t shared_slot_budget_bytes = 96 * 1024;

    /// Uploads `tables`' decode tables (from `memory`: a decoder's pool for per-tensor tables).
    explicit DeviceRansTables(const CdfTableSet& tables, TemporaryMemory memory = {}) : m_checksum(tables.checksum()) {
        const nwc::detail::RansDecodeTables& host = tables.decode_tables();
        m_precision = host.precision;
        m_channels = host.channel_count;
        m_slot_count = std::size_t(host.channel_count) << host.precision;
        m_bin_count = host.bin_entries.size();
        m_slot_bins = DeviceBuffer<std::uint16_t>(std::span<const std::uint16_t>(host.slot_bins.data(), m_slot_count), memory);
        m_bin_entries = DeviceBuffer<std::uint32_t>(std::span<const std::uint32_t>(host.bin_entries), memory);
        m_bin_bases = DeviceBuffer<std::uint32_t>(std::span<const std::uint32_t>(host.bin_bases), memory);
        m_offsets = DeviceBuffer<std::int32_t>(std::span<const std::int32_t>(host.offsets), memory);
        m_supports = DeviceBuffer<std::uint32_t>(std::span<const std::uint32_t>(host.supports), memory);
    }

    int precision() const noexcept { return m_precision; }
    std::uint32_t channel_count() const noexcept { return m_channels; }
    std::uint32_t checksum() const noexcept { return m_checksum; }
    bool slots_in_shared_memory() const noexcept { return m_slot_count * 2 <= shared_slot_budget_bytes; }
    /// Dynamic shared memory of one decoding block.
    std::size_t shared_bytes() const noexcept {
        const std::size_t small = 4 * (m_bin_count + 3 * std::size_t(m_channels));
        return (small + 3) / 4 * 4 + (slots_in_shared_memory() ? m_slot_count * 2 : 0);
    }

    const std::uint16_t* slot_bins() const noexcept { return m_slot_bins.data(); }
    const std::uint32_t* bin_entries() const noexcept { return m_bin_entries.data(); }
    const std::uint32_t* bin_bases() const noexcept { return m_bin_bases.data(); }
    const std::int32_t* offsets() const noexcept { return m_offsets.data(); }
    const std::uint32_t* supports() const noexcept { return m_supports.data(); }
    std::size_t bin_count() const noexcept { return m_bin_count; }
    std::size_t slot_count() const noexcept { return m_slot_count; }

private:
    int m_precision = 0;
    std::uint32_t m_channels = 0, m_checksum = 0;
    std::size_t m_slot_count = 0, m_bin_count = 0;
    DeviceBuffer<std::uint16_t> m_slot_bins;
    DeviceBuffer<std::uint32_t> m_bin_entries, m_bin_bases, m_supports;
    DeviceBuffer<std::int32_t> m_offsets;
};

namespace detail {

struct RansKernelTables {
    int precision;
    std::uint32_t channels;
    std::uint32_t bin_count;
    bool slots_shared;
    const std::uint16_t* slot_bins;
    const std::uint32_t* bin_entries;
    const std::uint32_t* bin_bases;
    const std::int32_t* offsets;
    const std::uint32_t* supports;
};

/// Lane 0's reader of one segment's escape bits (MSB first), clamped to the segment's bytes.
struct EscapeBits {
    const std::uint8_t* bytes;
    std::uint64_t bit_count;
    std::uint64_t position = 0;
    bool failed = false;
    __device__ std::uint32_t get() {
        if (position >= bit_count) {
            failed = true;
            return 1;  // ends any code; the segment is reported corrupt
        }
        const std::uint32_t bit = (bytes[position >> 3] >> (7 - (position & 7))) & 1u;
        ++position;
        return bit;
    }
    /// EscapeBitReader::read_value on the device.
    __device__ std::int32_t read_value(std::int32_t offset, std::uint32_t support) {
        int zeros = 0;
        while (get() == 0)
            if (++zeros > 33) {
                failed = true;
                return 0;
            }
        std::uint64_t value = 1;
        for (int bit = 0; bit < zeros; ++bit) value = (value << 1) | get();
        const std::uint64_t code = value - 1;
        const std::int64_t distance = std::int64_t(code >> 1);
        const std::int64_t decoded = (code & 1u) ? std::int64_t(offset) + support + distance : std::int64_t(offset) - 1 - distance;
        if (decoded < INT32_MIN || decoded > INT32_MAX) failed = true;
        return std::int32_t(decoded);
    }
};

__device__ inline std::uint32_t load_u32(const std::uint8_t* at) {
    return std::uint32_t(at[0]) | (std::uint32_t(at[1]) << 8) | (std::uint32_t(at[2]) << 16) | (std::uint32_t(at[3]) << 24);
}
__device__ inline std::uint32_t load_u16(const std::uint8_t* at) { return std::uint32_t(at[0]) | (std::uint32_t(at[1]) << 8); }

/// The plain stream's symbols: symbol i of a job uses channel (first_channel + i) % channels and
/// is its table's value offset + bin (escapes: the escaped value itself).
struct CyclicChannels {
    static constexpr std::uint32_t shared_words = 0;
    std::uint32_t channels = 1;
    std::uint32_t first = 0;

    __device__ void bind(std::uint32_t*) {}
    __device__ void begin(const RansSegmentJob& job) { first = job.first_channel; }
    __device__ std::uint32_t channel(std::uint32_t i) const { return (first + i) % channels; }
    __device__ std::int32_t value(std::uint32_t channel, std::uint32_t bin, const std::int32_t* offsets) const {
        return std::int32_t(std::uint32_t(offsets[channel]) + bin);
    }
    __device__ void take(std::uint32_t, std::uint32_t) {}
    /// The value of an escaped symbol; false when it cannot be one (never, here).
    __device__ bool take_escape(std::uint32_t, std::uint32_t, std::int32_t symbol, std::int32_t& value) {
        value = symbol;
        return true;
    }
    __device__ void end_step() {}
};

/// One warp per job; blockDim.x = 32 (one warp per block keeps the shared tables per warp simple).
/// `Symbols` picks each symbol's channel and value (CyclicChannels; context_rans_decode.cuh's
/// MachineChannels); the rANS steps, renormalization, escapes and end checks are the same for both.
/// Job j uses table set jobs[j].table_set (its tables and its policy): a launch may decode the
/// segments of many tensors, each with tables of its own; a warp loads a set into shared memory
/// when its next job needs another one. Dynamic shared memory: `Symbols::shared_words` u32 for the
/// policy, then the largest set's tables.
template <class Symbols>
__global__ void rans_decode_kernel(const std::uint8_t* bytes, const RansSegmentJob* jobs, std::uint32_t job_count,
                                   const RansKernelTables* table_sets, const Symbols* policies, std::int32_t* out, RansSegmentStatus* status) {
    extern __shared__ std::uint32_t shared[];
    const std::uint32_t lane = threadIdx.x;
    std::uint32_t loaded = UINT32_MAX;  // the same in every lane: all lanes take the same jobs
    RansKernelTables tables{};
    Symbols symbols{};
    std::uint32_t* const bin_entries = shared + Symbols::shared_words;
    std::uint32_t* bin_bases = nullptr;
    std::int32_t* offsets = nullptr;
    std::uint32_t* supports = nullptr;
    const std::uint16_t* slot_bins = nullptr;

    for (std::uint32_t j = blockIdx.x; j < job_count; j += gridDim.x) {
        const RansSegmentJob& job = jobs[j];
        if (job.table_set != loaded) {
            __syncwarp();  // every lane is done with the tables loaded before
            loaded = job.table_set;
            tables = table_sets[loaded];
            symbols = policies[loaded];
            symbols.bind(shared);
            bin_bases = bin_entries + tables.bin_count;
            offsets = reinterpret_cast<std::int32_t*>(bin_bases + tables.channels);
            supports = reinterpret_cast<std::uint32_t*>(offsets + tables.channels);
            std::uint16_t* shared_slots = reinterpret_cast<std::uint16_t*>(supports + tables.channels);
            for (std::uint32_t i = lane; i < tables.bin_count; i += 32) bin_entries[i] = tables.bin_entries[i];
            for (std::uint32_t i = lane; i < tables.channels; i += 32) {
                bin_bases[i] = tables.bin_bases[i];
                offsets[i] = tables.offsets[i];
                supports[i] = tables.supports[i];
            }
            const std::uint64_t slot_count = std::uint64_t(tables.channels) << tables.precision;
            if (tables.slots_shared)
                for (std::uint64_t i = lane; i < slot_count; i += 32) shared_slots[i] = tables.slot_bins[i];
            slot_bins = tables.slots_shared ? shared_slots : tables.slot_bins;
            __syncwarp();
        }
        const std::uint32_t lanes = job.lane_count, symbol_count = job.symbol_count, word_count = job.word_count;
        const std::uint64_t first_output = job.first_output;
        symbols.begin(job);
        const bool active = lane < lanes;
        std::uint32_t x = active ? job.states[lane] : rans::initial_state;
        const std::uint32_t renormalized = active ? job.renormalized[lane] : 0;
        const std::uint8_t* words = bytes + job.words_offset;
        EscapeBits escapes{words + 2 * std::uint64_t(word_count), 8 * std::uint64_t(job.escape_bytes)};
        std::uint64_t position = 0;
        bool overrun = false;
        const std::uint32_t slot_mask = (1u << tables.precision) - 1;
        const std::uint32_t steps = (symbol_count + lanes - 1) / lanes;
        for (std::uint32_t step = 0; step < steps; ++step) {
            const std::uint32_t i = step * lanes + lane;
            const bool valid = active && i < symbol_count;
            const std::uint32_t channel = valid ? symbols.channel(i) : 0;
            std::uint32_t bin = 0;
            if (valid) {
                const std::uint32_t slot = x & slot_mask;
                bin = slot_bins[(std::size_t(channel) << tables.precision) | slot];
                const std::uint32_t entry = bin_entries[bin_bases[channel] + bin];
                x = (entry >> 16) * (x >> tables.precision) + slot - (entry & 0xFFFFu);
                // Escaped symbols are written by lane 0 below (one writer per element).
                if (bin != supports[channel]) {
                    out[first_output + i] = symbols.value(channel, bin, offsets);
                    symbols.take(i, bin);
                }
            }
            const std::uint32_t escaped = __ballot_sync(0xFFFFFFFFu, valid && bin == supports[channel]);
            if (escaped != 0 && lane == 0) {  // in symbol order, as the reference reads them
                for (std::uint32_t mask = escaped; mask != 0; mask &= mask - 1) {
                    const std::uint32_t k = step * lanes + (__ffs(mask) - 1), c = symbols.channel(k);
                    std::int32_t value = 0;
                    if (!symbols.take_escape(k, c, escapes.read_value(offsets[c], supports[c]), value)) escapes.failed = true;
                    out[first_output + k] = value;
                }
            }
            symbols.end_step();
            const bool need = valid && x < rans::state_lower_bound && step < renormalized;
            const std::uint32_t needing = __ballot_sync(0xFFFFFFFFu, need);
            if (need) {
                const std::uint64_t word = position + __popc(needing & ((1u << lane) - 1u));
                if (word < word_count)
                    x = (x << 16) | load_u16(words + 2 * word);
                else
                    overrun = true;
            }
            position += __popc(needing);
        }
        // The end: every word used, every lane back at state 1, the escape stream used up with zero padding.
        bool bad_end = position != word_count || x != rans::initial_state;
        bool bad_escape = false;
        if (lane == 0) {
            bad_escape = escapes.failed || (escapes.position + 7) / 8 != job.escape_bytes;
            if (!bad_escape && escapes.position % 8 != 0)
                bad_escape = (escapes.bytes[job.escape_bytes - 1] & (0xFFu >> (escapes.position % 8))) != 0;
        }
        overrun = __any_sync(0xFFFFFFFFu, overrun);
        bad_end = __any_sync(0xFFFFFFFFu, bad_end);
        bad_escape = __any_sync(0xFFFFFFFFu, bad_escape);
        if (lane == 0)
            status[j] = overrun      ? RansSegmentStatus::word_overrun
                        : bad_end    ? RansSegmentStatus::bad_end
                        : bad_escape ? RansSegmentStatus::bad_escape
                                     : RansSegmentStatus::ok;
        __syncwarp();  // the policy's shared state is reset by the next job's begin()
    }
}

/// Launches rans_decode_kernel<Symbols> over `jobs` with table set k = (*table_sets[k], policies[k]),
/// waits, and turns a bad segment's status into nwc::error(corrupt) naming contexts[its set] and
/// the job.
template <class Symbols>
void launch_rans_decode(const std::uint8_t* device_bytes, std::span<const RansSegmentJob> jobs, std::span<const DeviceRansTables* const> table_sets,
                        std::span<const Symbols> policies, std::int32_t* out, TemporaryMemory memory, std::span<const std::string> contexts) {
    if (jobs.empty()) return;
    NWC_ASSERT(table_sets.size() == policies.size() && table_sets.size() == contexts.size());
    const cudaStream_t stream = memory.stream;
    std::vector<RansKernelTables> kernel_tables;
    std::size_t shared = 0;
    for (const DeviceRansTables* tables : table_sets) {
        kernel_tables.push_back({tables->precision(), tables->channel_count(), std::uint32_t(tables->bin_count()), tables->slots_in_shared_memory(),
                                 tables->slot_bins(), tables->bin_entries(), tables->bin_bases(), tables->offsets(), tables->supports()});
        shared = std::max(shared, 4 * std::size_t(Symbols::shared_words) + tables->shared_bytes());
    }
    const DeviceBuffer<RansKernelTables> device_tables(std::span<const RansKernelTables>(kernel_tables), memory);
    const DeviceBuffer<Symbols> device_policies(policies, memory);
    const DeviceBuffer<RansSegmentJob> device_jobs(jobs, memory);
    DeviceBuffer<RansSegmentStatus> status(jobs.size(), memory);
    {
        // The limit is one attribute of the kernel for the whole process (per device): decoders on
        // several threads must only ever raise it, or one would launch above another's lower value.
        static std::mutex mutex;
        static std::map<int, std::size_t> allowed;  // device -> bytes allowed so far
        int device = 0;
        NWC_CUDA_CHECK(cudaGetDevice(&device));
        const std::lock_guard lock(mutex);
        std::size_t& limit = allowed.try_emplace(device, std::size_t(48) << 10).first->second;  // the default limit
        if (shared > limit) {
            NWC_CUDA_CHECK(cudaFuncSetAttribute(rans_decode_kernel<Symbols>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)));
            limit = shared;
        }
    }
    const unsigned blocks = unsigned(std::min<std::size_t>(jobs.size(), 65535));
    rans_decode_kernel<Symbols><<<blocks, 32, shared, stream>>>(device_bytes, device_jobs.data(), std::uint32_t(jobs.size()), device_tables.data(),
                                                                device_policies.data(), out, status.data());
    NWC_CUDA_CHECK_LAUNCH("rans_decode_kernel");
    std::vector<RansSegmentStatus> outcome(jobs.size());
    status.download_async(outcome, stream);
    NWC_CUDA_CHECK(cudaStreamSynchronize(stream));
    static constexpr const char* reasons[] = {"", "it needs more words than the index announces",
                                              "it does not end with all words used and every lane at state 1", "its escape stream is corrupt"};
    for (std::size_t j = 0; j < outcome.size(); ++j)
        require(outcome[j] == RansSegmentStatus::ok, errc::corrupt, contexts[jobs[j].table_set], ": rANS segment job ", j, " (words at byte ",
                jobs[j].words_offset, "): ", reasons[std::min<std::uint32_t>(std::uint32_t(outcome[j]), 3)]);
}

}  // namespace detail

/// Decodes the segments `jobs` of streams already copied to `device_bytes` (validated on the host
/// with rans::read_index against the same tables) into `out` (device memory), on `memory`'s
/// stream (a plain stream converts to it; a pool there serves the job list). Waits for the
/// stream, then throws nwc::error(corrupt) naming `context` and the segment if one is
/// inconsistent (the symbols are then unspecified).
inline void rans_decode_segments(const std::uint8_t* device_bytes, std::span<const RansSegmentJob> jobs, const DeviceRansTables& tables,
                                 std::int32_t* out, TemporaryMemory memory, const std::string& context) {
    const DeviceRansTables* const sets[] = {&tables};
    const detail::CyclicChannels policies[] = {{tables.channel_count()}};
    const std::string contexts[] = {context};
    detail::launch_rans_decode<detail::CyclicChannels>(device_bytes, jobs, sets, policies, out, memory, contexts);
}

/// Convenience: decodes a whole host stream on the GPU and returns the symbols on the host
/// (tests compare them with rans::decode).
inline std::vector<std::int32_t> rans_decode(std::span<const std::uint8_t> stream, const CdfTableSet& tables, cudaStream_t cuda_stream = nullptr) {
    const RansStreamIndex index = rans::read_index(stream, tables);
    std::vector<RansSegmentJob> jobs;
    for (std::size_t s = 0; s < index.segments.size(); ++s) jobs.push_back(make_rans_job(stream, index, s, 0, index.segments[s].first_symbol));
    DeviceBuffer<std::uint8_t> bytes(stream);
    DeviceBuffer<std::int32_t> symbols(index.symbol_count);
    const DeviceRansTables device_tables(tables);
    rans_decode_segments(bytes.data(), jobs, device_tables, symbols.data(), cuda_stream, "rANS stream (GPU)");
    return symbols.to_host();
}

}  // namespace nwc::cuda
