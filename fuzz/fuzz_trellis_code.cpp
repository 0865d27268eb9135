// Fuzzes the trellis code (quant/trellis_quantizer.hpp): TrellisCode::read (header, union tables,
// context-coded rANS stream index), then the decode with the scalar and the SIMD decoder.
// Invariant on success: both decoders give the same grid indices, and every index lies on the
// union its lane's trellis state allows. Codes announcing more than 2^18 values are read but not
// decoded (callers bound the count by the tensor shape before they allocate, as for fuzz_rans).
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/quant/trellis_quantizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
    nwc::fuzz::rejects_cleanly([&] {
        ByteReader reader(std::span<const std::uint8_t>(data, size), "fuzz");
        const TrellisCode code = TrellisCode::read(reader);
        if (code.symbol_count() > (1u << 18)) return;
        std::vector<std::int32_t> scalar(code.symbol_count()), simd(code.symbol_count());
        const bool scalar_ok = nwc::fuzz::rejects_cleanly([&] { code.decode(std::span<std::int32_t>(scalar), backend::scalar{}); });
        const bool simd_ok = nwc::fuzz::rejects_cleanly([&] { code.decode(std::span<std::int32_t>(simd), backend::simd{}, 2); });
        NWC_FUZZ_CHECK(scalar_ok == simd_ok);
        if (!scalar_ok) return;
        NWC_FUZZ_CHECK(scalar == simd);
        // Paths restart at every segment: find the segment size from the stream's index.
        const LaneStateMachine machine = code.trellis().lane_machine();
        const std::uint64_t segment_size = context_rans::read_index(code.stream(), code.tables(), machine).segment_size;
        std::vector<unsigned> states(32, 0);
        for (std::size_t i = 0; i < scalar.size(); ++i) {
            if (i % segment_size == 0) std::fill(states.begin(), states.end(), 0u);
            unsigned& state = states[i % 32];
            NWC_FUZZ_CHECK((std::uint32_t(scalar[i]) & 1u) == code.trellis().union_of(state));
            state = code.trellis().next(state, scalar[i]);
        }
    });
    return 0;
}
