// Fuzzes the compact CDF table format (entropy/compact_cdf_table.hpp): the first byte chooses
// CompactCdfTable::read or read_compact_set, the rest is the table bytes. Invariants on success:
// the table is valid (every frequency >= 1, total 2^precision), writing the description again and
// reading it back gives the same table, and a set's tables share one precision.
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
    if (size == 0) return 0;
    const std::span<const std::uint8_t> bytes(data + 1, size - 1);
    nwc::fuzz::rejects_cleanly([&] {
        ByteReader reader(bytes, "fuzzed compact table");
        if (data[0] % 2 == 0) {
            const CompactCdfTable compact = CompactCdfTable::read(reader);
            const CdfTable table = compact.table();
            std::uint64_t total = 0;
            for (std::uint32_t frequency : table.frequencies()) {
                NWC_FUZZ_CHECK(frequency >= 1);
                total += frequency;
            }
            NWC_FUZZ_CHECK(total == (std::uint64_t(1) << table.precision()));
            ByteWriter again;
            compact.write(again);
            ByteReader reread(again.bytes(), "rewritten compact table");
            NWC_FUZZ_CHECK(CompactCdfTable::read(reread).table() == table);
            NWC_FUZZ_CHECK(reread.at_end());
        } else {
            const CdfTableSet set = read_compact_set(reader);
            NWC_FUZZ_CHECK(!set.empty());
            for (const CdfTable& table : set.tables()) NWC_FUZZ_CHECK(table.precision() == set.precision());
        }
    });
    return 0;
}
