// Fuzzes the rANS stream format: rans::read_index on the bytes after the first (which picks a CDF
// table set, fuzz/rans_fuzz_tables.hpp), then every segment through rans::decode_segment with
// the scalar and the SIMD decoder. Invariant on success: both decoders give the same symbols.
// Segments are decoded until 2^18 symbols in all (a 136-byte segment may announce 2^24, which
// would only slow the fuzzer down: real callers bound the count by the tensor shape first, as the
// method decoders do, and the decoders are linear in it).
#include <algorithm>
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "rans_fuzz_tables.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
    if (size == 0) return 0;
    const auto& sets = nwc::fuzz::rans_table_sets();
    const CdfTableSet& tables = sets[data[0] % sets.size()];
    const std::span<const std::uint8_t> stream(data + 1, size - 1);
    nwc::fuzz::rejects_cleanly([&] {
        const RansStreamIndex index = rans::read_index(stream, tables);
        NWC_FUZZ_CHECK(index.segments.size() <= stream.size());
        std::uint64_t budget = 1u << 18;
        for (std::size_t segment = 0; segment < index.segments.size(); ++segment) {
            const RansSegment& info = index.segments[segment];
            NWC_FUZZ_CHECK(info.byte_offset + info.byte_size <= stream.size());
            if (info.symbol_count > budget) continue;
            budget -= info.symbol_count;
            std::vector<std::int32_t> scalar(info.symbol_count), simd(info.symbol_count);
            const bool scalar_ok = nwc::fuzz::rejects_cleanly([&] { rans::decode_segment(stream, index, tables, segment, scalar, backend::scalar{}); });
            const bool simd_ok = nwc::fuzz::rejects_cleanly([&] { rans::decode_segment(stream, index, tables, segment, simd, backend::simd{}); });
            NWC_FUZZ_CHECK(scalar_ok == simd_ok);
            if (scalar_ok) NWC_FUZZ_CHECK(scalar == simd);
        }
    });
    return 0;
}
