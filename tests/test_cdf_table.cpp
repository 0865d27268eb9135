// CdfTable / CdfTableSet: quantization (exact totals, every bin >= 1, determinism, cost close to the
// entropy), escape costs, slot lookup, and serialization with full validation of untrusted bytes;
// compact tables (CompactCdfTable): exact round trips of every kind, integer derivation pinned,
// the fit's choice and its cost accounting, and safe failure on every corruption.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <numeric>

#include "nwc/entropy/range_coder.hpp"

#include "nwc/core/random.hpp"
#include "nwc/entropy/cdf_table_fit.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"

namespace nwc_test_cdf_table {

using namespace nwc;

namespace {

/// A random distribution of one of several shapes (smooth, peaked, flat, noisy, with zeros).
std::vector<double> random_distribution(Random& random, std::size_t bins) {
    std::vector<double> probabilities(bins);
    const int shape = int(random.below(5));
    const double center = random.uniform() * double(bins), scale = 0.3 + random.uniform() * double(bins) / 4;
    for (std::size_t i = 0; i < bins; ++i) {
        const double distance = std::abs(double(i) - center);
        switch (shape) {
            case 0: probabilities[i] = std::exp(-distance / scale); break;                                   // Laplace
            case 1: probabilities[i] = std::exp(-0.5 * distance * distance / (scale * scale)); break;      // Gaussian
            case 2: probabilities[i] = 1.0; break;                                                           // flat
            case 3: probabilities[i] = random.uniform() < 0.3 ? 0.0 : double(random.uniform()); break;     // noisy, zeros
            default: probabilities[i] = std::pow(10.0, -12.0 * random.uniform()); break;                   // huge range
        }
    }
    if (std::all_of(probabilities.begin(), probabilities.end(), [](double p) { return p == 0.0; })) probabilities[0] = 1.0;
    return probabilities;
}

double entropy_bits(std::span<const double> probabilities) {
    const double total = std::accumulate(probabilities.begin(), probabilities.end(), 0.0);
    double bits = 0.0;
    for (double p : probabilities)
        if (p > 0) bits -= p / total * std::log2(p / total);
    return bits;
}

/// Expected code length of the true distribution under the table, in bits per symbol.
double cross_entropy_bits(std::span<const double> probabilities, std::span<const std::uint32_t> frequencies, int precision) {
    const double total = std::accumulate(probabilities.begin(), probabilities.end(), 0.0);
    double bits = 0.0;
    for (std::size_t i = 0; i < probabilities.size(); ++i)
        if (probabilities[i] > 0) bits += probabilities[i] / total * (precision - std::log2(double(frequencies[i])));
    return bits;
}

void check_invariants(const CdfTable& table) {
    const auto frequencies = table.frequencies();
    REQUIRE(frequencies.size() == table.bin_count());
    REQUIRE(table.bin_count() == table.support() + 1);
    std::uint64_t total = 0;
    bool all_positive = true;
    for (std::uint32_t f : frequencies) {
        all_positive = all_positive && f >= 1;
        total += f;
    }
    REQUIRE(all_positive);
    REQUIRE(total == (std::uint64_t(1) << table.precision()));
    const auto cumulative = table.cumulative();
    REQUIRE(cumulative.front() == 0);
    REQUIRE(cumulative.back() == total);
    bool slots_match = true;  // one REQUIRE per slot would dominate the run time
    for (std::uint32_t slot = 0; slot < total; ++slot) {
        const std::uint32_t bin = table.bin_at_slot(slot);
        slots_match = slots_match && cumulative[bin] <= slot && slot < cumulative[bin + 1];
    }
    REQUIRE(slots_match);
}

CdfTable random_table(Random& random) {
    const int precision = 12 + int(random.below(5));
    const std::size_t support = 1 + random.below(random.below(4) == 0 ? 2000 : 100);
    const auto probabilities = random_distribution(random, support);
    const double escape = random.below(3) == 0 ? 0.0 : double(random.uniform()) * 1e-3;
    return CdfTable::from_probabilities(std::int32_t(random.below(2000)) - 1000, probabilities, escape, precision);
}

}  // namespace

TEST_CASE("cdf_table: quantization keeps every bin >= 1 and the total exact, over many seeds", "[cdf_table]") {
    Random random(11);
    for (int trial = 0; trial < 400; ++trial) {
        const CdfTable table = random_table(random);
        check_invariants(table);
    }
}

TEST_CASE("cdf_table: quantization is deterministic and pinned", "[cdf_table]") {
    Random random(12);
    std::vector<CdfTable> first, second;
    for (int trial = 0; trial < 16; ++trial) {
        Random copy = random;
        first.push_back(random_table(random));
        second.push_back(random_table(copy));
        REQUIRE(first.back() == second.back());
    }
    // Tables are built once (at training time) and stored; still, the same probabilities must give
    // the same table on every IEEE-754 machine. These frequencies were computed by this algorithm.
    const std::vector<double> laplace{0.01, 0.03, 0.1, 0.3, 0.9, 0.3, 0.1, 0.03, 0.01};
    const CdfTable table = CdfTable::from_probabilities(-4, laplace, 1e-6, 12);
    const std::vector<std::uint32_t> expected{23, 69, 230, 690, 2071, 690, 230, 69, 23, 1};
    CHECK(std::vector<std::uint32_t>(table.frequencies().begin(), table.frequencies().end()) == expected);
}

TEST_CASE("cdf_table: quantized cost is close to the entropy", "[cdf_table]") {
    Random random(13);
    for (int trial = 0; trial < 200; ++trial) {
        const int precision = 12 + int(random.below(5));
        const std::size_t support = 2 + random.below(60);
        std::vector<double> probabilities = random_distribution(random, support);
        const CdfTable table = CdfTable::from_probabilities(0, probabilities, 0.0, precision);
        probabilities.push_back(0.0);  // the escape bin
        const double entropy = entropy_bits(probabilities);
        const double cost = cross_entropy_bits(probabilities, table.frequencies(), precision);
        INFO("trial " << trial << " precision " << precision << " support " << support << " entropy " << entropy << " cost " << cost);
        CHECK(cost >= entropy - 1e-9);
        // Each bin >= 1 costs at most bins / 2^precision of probability mass; rounding adds ~bins^2/2^(2p).
        CHECK(cost - entropy <= 2.0 * double(support + 1) / double(1 << precision) + 1e-3);
        // Local optimality: moving one unit between two bins never helps by more than a rounding error.
        const auto frequencies = table.frequencies();
        double best_gain = 0.0;
        const double total = std::accumulate(probabilities.begin(), probabilities.end(), 0.0);
        for (std::size_t from = 0; from < frequencies.size(); ++from) {
            if (frequencies[from] <= 1) continue;
            const double loss = probabilities[from] / total * std::log2(double(frequencies[from]) / (frequencies[from] - 1));
            for (std::size_t to = 0; to < frequencies.size(); ++to)
                if (to != from)
                    best_gain = std::max(best_gain, probabilities[to] / total * std::log2((frequencies[to] + 1.0) / frequencies[to]) - loss);
        }
        CHECK(best_gain <= 1e-4 * std::max(cost, 1e-3));
    }
}

TEST_CASE("cdf_table: edge cases of shape and value range", "[cdf_table]") {
    const std::vector<double> one{1.0};
    const CdfTable single = CdfTable::from_probabilities(7, one, 0.0, 16);
    CHECK(single.support() == 1);
    CHECK(single.frequencies()[0] == 65535);
    CHECK(single.frequencies()[1] == 1);
    check_invariants(single);

    // Extremely skewed: the tiny bins get exactly 1.
    std::vector<double> skewed(50, 1e-300);
    skewed[3] = 1.0;
    const CdfTable peaked = CdfTable::from_probabilities(0, skewed, 1e-300, 12);
    CHECK(peaked.frequencies()[3] == 4096 - 50);
    check_invariants(peaked);

    // As many bins as slots: every frequency is 1.
    const CdfTable full = CdfTable::uniform(0, 4095, 12);
    for (std::uint32_t f : full.frequencies()) CHECK(f == 1);
    // Uniform over a support: the escape bin stays at 1, the rest differs by at most 1.
    const CdfTable flat = CdfTable::uniform(-10, 21, 14);
    CHECK(flat.frequencies().back() == 1);
    const auto [low, high] = std::minmax_element(flat.frequencies().begin(), flat.frequencies().end() - 1);
    CHECK(*high - *low <= 1);
    check_invariants(flat);

    // The ends of the int32 range.
    CHECK(CdfTable::uniform(std::numeric_limits<std::int32_t>::max(), 1, 12).in_support(std::numeric_limits<std::int32_t>::max()));
    CHECK(CdfTable::uniform(std::numeric_limits<std::int32_t>::min(), 3, 12).bin_of(std::numeric_limits<std::int32_t>::min()) == 0);
    CHECK_THROWS_AS(CdfTable::uniform(std::numeric_limits<std::int32_t>::max(), 2, 12), nwc::error);

    auto id_of = [](auto&& make) {
        try {
            make();
        } catch (const nwc::error& failure) {
            return failure.id();
        }
        return errc::io;  // "did not throw"
    };
    const std::vector<double> negative{0.5, -0.1}, nan{0.5, std::nan("")}, zeros{0.0, 0.0};
    CHECK(id_of([&] { CdfTable::from_probabilities(0, negative, 0.0, 12); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::from_probabilities(0, nan, 0.0, 12); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::from_probabilities(0, zeros, 0.0, 12); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::from_probabilities(0, one, 0.0, 11); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::from_probabilities(0, one, 0.0, 17); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::uniform(0, 4096, 12); }) == errc::invalid_argument);  // 4097 bins > 2^12
    CHECK(id_of([&] { CdfTable::uniform(0, 0, 12); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::uniform(0, 65536, 16); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::from_frequencies(0, {4095, 0, 1}, 12); }) == errc::invalid_argument);
    CHECK(id_of([&] { CdfTable::from_frequencies(0, {4000, 1}, 12); }) == errc::invalid_argument);
    CHECK(CdfTable::from_frequencies(0, {4095, 1}, 12).support() == 1);
}

TEST_CASE("cdf_table: ideal_bits counts the escape code", "[cdf_table]") {
    const CdfTable table = CdfTable::from_frequencies(-2, {1024, 2048, 512, 256, 256}, 12);  // values -2..1, escape 256
    CHECK(table.ideal_bits(-1) == Approx(1.0));
    CHECK(table.ideal_bits(1) == Approx(4.0));
    // Escape: 4 bits for the escape bin plus Elias-gamma of (code + 1); code = 2 d below, 2 d + 1 above.
    CHECK(table.ideal_bits(-3) == Approx(4.0 + 1));   // d = 0 below: code 0, gamma(1) = 1 bit
    CHECK(table.ideal_bits(2) == Approx(4.0 + 3));    // d = 0 above: code 1, gamma(2) = 3 bits
    // INT32_MIN: d = -3 - INT32_MIN = 2^31 - 3, code + 1 = 2^32 - 5 has 32 bits: 63 bits of gamma code.
    CHECK(table.ideal_bits(std::numeric_limits<std::int32_t>::min()) == Approx(4.0 + 63));
    CHECK(table.ideal_bits(std::numeric_limits<std::int32_t>::max()) == Approx(4.0 + 63));
}

TEST_CASE("cdf_table: a table set round-trips and rejects every corruption", "[cdf_table]") {
    Random random(14);
    std::vector<CdfTable> tables;
    for (int channel = 0; channel < 5; ++channel) {
        const auto probabilities = random_distribution(random, 3 + random.below(40));
        tables.push_back(CdfTable::from_probabilities(-int(probabilities.size() / 2), probabilities, 1e-5, 14));
    }
    const CdfTableSet set(tables);
    ByteWriter writer;
    set.write(writer);
    const std::vector<std::uint8_t> bytes = writer.take();
    ByteReader reader(bytes, "test tables");
    const CdfTableSet back = CdfTableSet::read(reader);
    CHECK(reader.at_end());
    CHECK(back == set);
    CHECK(back.checksum() == set.checksum());
    // The derived decoder tables are rebuilt identically.
    CHECK(back.decode_tables().slot_bins == set.decode_tables().slot_bins);
    CHECK(back.decode_tables().bin_entries == set.decode_tables().bin_entries);
    // The slot tables: every slot's bin, as the table's own cumulative frequencies say; built on
    // first use only (an encoder's tables have none), and shared by copies.
    const CdfTableSet fresh(tables), copy = fresh;
    CHECK((fresh.encode_tables().slot_bins.empty() && fresh.encode_tables().slot_bins_u8.empty() && fresh.encode_tables().slot_packed.empty()));
    CHECK(fresh.encode_tables().bin_entries == set.decode_tables().bin_entries);
    const detail::RansDecodeTables& built = fresh.decode_tables();
    CHECK(&copy.decode_tables() == &built);
    CHECK(&fresh.decode_tables() == &built);
    bool slots_match = true;
    for (std::size_t channel = 0; channel < tables.size(); ++channel)
        for (std::uint32_t slot = 0; slot < (1u << built.precision); ++slot)
            slots_match = slots_match && built.slot_bins[(channel << built.precision) | slot] == tables[channel].bin_at_slot(slot);
    CHECK(slots_match);
    CHECK(built.slot_bins.size() == (tables.size() << built.precision) + 2);

    for (std::size_t length = 0; length < bytes.size(); ++length) {
        const std::vector<std::uint8_t> cut(bytes.begin(), bytes.begin() + std::ptrdiff_t(length));
        ByteReader cut_reader(cut, "cut tables");
        CHECK_THROWS_AS(CdfTableSet::read(cut_reader), nwc::error);
    }
    for (int trial = 0; trial < 300; ++trial) {
        std::vector<std::uint8_t> flipped = bytes;
        flipped[random.below(flipped.size())] ^= std::uint8_t(1 + random.below(255));
        ByteReader flipped_reader(flipped, "flipped tables");
        CHECK_THROWS_AS(CdfTableSet::read(flipped_reader), nwc::error);
    }
}

TEST_CASE("cdf_table: structurally invalid tables with a valid checksum are rejected", "[cdf_table]") {
    // Builds a set's bytes by hand, with a correct CRC, so that only the structure is wrong.
    auto build = [](int precision, std::uint32_t channels, const std::vector<std::pair<std::int32_t, std::vector<std::uint32_t>>>& tables) {
        ByteWriter body;
        for (const auto& [offset, frequencies] : tables) {
            body.put_i32(offset);
            body.put_u32(std::uint32_t(frequencies.size()));
            for (std::uint32_t f : frequencies) body.put_u16(std::uint16_t(f));
        }
        ByteWriter head;
        head.put_u32(CdfTableSet::magic);
        head.put_u16(CdfTableSet::version);
        head.put_u8(std::uint8_t(precision));
        head.put_u8(0);
        head.put_u32(channels);
        head.put_u32(std::uint32_t(body.size()));
        ByteWriter all;
        all.put_bytes(head.bytes());
        all.put_bytes(body.bytes());
        all.put_u32(crc32c(body.bytes(), crc32c(head.bytes())));
        return all.take();
    };
    auto id_of = [](const std::vector<std::uint8_t>& bytes) {
        try {
            ByteReader reader(bytes, "crafted tables");
            CdfTableSet::read(reader);
        } catch (const nwc::error& failure) {
            return failure.id();
        }
        return errc::io;  // "did not throw"
    };
    CHECK(id_of(build(12, 1, {{0, {4095, 1}}})) == errc::io);                 // the valid baseline
    CHECK(id_of(build(12, 1, {{0, {4094, 1}}})) == errc::corrupt);            // sum 4095
    CHECK(id_of(build(12, 1, {{0, {4096, 0}}})) == errc::corrupt);            // zero frequency
    CHECK(id_of(build(12, 1, {{0, {4096}}})) == errc::corrupt);               // escape bin only
    CHECK(id_of(build(11, 1, {{0, {2047, 1}}})) == errc::corrupt);            // precision 11
    CHECK(id_of(build(17, 1, {{0, {65535, 1}}})) == errc::corrupt);           // precision 17
    CHECK(id_of(build(12, 2, {{0, {4095, 1}}})) == errc::truncated);          // one table missing
    CHECK(id_of(build(12, 1, {{0, {4095, 1}}, {0, {4095, 1}}})) == errc::corrupt);  // trailing table
    CHECK(id_of(build(12, 0, {})) == errc::limit);                            // no channels
    CHECK(id_of(build(12, 5000, {})) == errc::limit);                         // too many channels
    CHECK(id_of(build(16, 1, {{std::numeric_limits<std::int32_t>::max(), {65534, 1, 1}}})) == errc::corrupt);  // past INT32_MAX
    std::vector<std::uint8_t> bad_version = build(12, 1, {{0, {4095, 1}}});
    bad_version[4] = 9;
    CHECK(id_of(bad_version) == errc::unsupported);
}

TEST_CASE("cdf_table: a set needs one precision and at least one table", "[cdf_table]") {
    CHECK_THROWS_AS(CdfTableSet(std::vector<CdfTable>{}), nwc::error);
    CHECK_THROWS_AS(CdfTableSet({CdfTable::uniform(0, 4, 12), CdfTable::uniform(0, 4, 13)}), nwc::error);
    const CdfTableSet set({CdfTable::uniform(0, 4, 12), CdfTable::uniform(-3, 300, 12)});
    CHECK(set.channel_count() == 2);
    CHECK(set.precision() == 12);
    CHECK(set.decode_tables().layout != detail::RansSlotLayout::byte_bins);  // 301 bins do not fit a byte
    const std::vector<std::int32_t> symbols{0, -3, 3, 296, 9, 297};
    double expected = 0.0;
    for (std::size_t i = 0; i < symbols.size(); ++i) expected += set[i % 2].ideal_bits(symbols[i]);
    CHECK(set.ideal_bits(symbols) == Approx(expected));
}

TEST_CASE("cdf_table: set fingerprints tell tables apart", "[cdf_table]") {
    // The fingerprint is the CRC write() stores; a CRC over bytes ending in their own CRC would be
    // one constant for every set.
    const CdfTableSet a({CdfTable::uniform(0, 5, 14)}), b({CdfTable::uniform(0, 6, 14)}), c({CdfTable::uniform(1, 5, 14)});
    CHECK(a.checksum() != b.checksum());
    CHECK(a.checksum() != c.checksum());
    CHECK(a.checksum() == CdfTableSet({CdfTable::uniform(0, 5, 14)}).checksum());
}

namespace {

/// Writes `compact`, reads it back (with trailing bytes after it) and checks the table is the same.
CompactCdfTable round_trip(const CompactCdfTable& compact) {
    ByteWriter writer;
    compact.write(writer);
    REQUIRE(writer.size() == compact.byte_size());
    writer.put_u8(0xA5);  // the table delimits itself
    const std::vector<std::uint8_t> bytes = writer.take();
    ByteReader reader(bytes, "compact test");
    const CompactCdfTable back = CompactCdfTable::read(reader);
    REQUIRE(reader.remaining() == 1);
    REQUIRE(back.table() == compact.table());
    return back;
}

CompactCdfTable random_compact(Random& random) {
    CompactCdfTable compact;
    compact.kind = CompactCdfTable::Kind(1 + random.below(2));
    compact.precision = 12 + int(random.below(5));
    compact.support = std::uint32_t(1 + random.below(random.below(4) == 0 ? 3000 : 60));
    compact.offset = std::int32_t(random.below(4000)) - 2000;
    compact.has_escape_length = random.below(2) != 0;
    if (compact.kind == CompactCdfTable::Kind::code_lengths) {
        compact.resolution = int(random.below(9));
        const double slope = 0.05 + 4.0 * random.uniform();
        const std::size_t mode = random.below(compact.support);
        for (std::uint32_t bin = 0; bin < compact.support; ++bin) {
            const double distance = std::abs(double(bin) - double(mode));
            const double bits = random.below(2) ? slope * distance : slope * distance * distance / 8;
            compact.lengths.push_back(std::uint32_t(std::min(bits, 80.0) * (1 << compact.resolution)) + std::uint32_t(random.below(3)));
        }
        compact.escape_length = std::uint32_t(random.below(40u << compact.resolution));
    } else {
        compact.center = std::uint32_t(random.below(4 * compact.support));
        compact.quadratic = std::uint32_t(random.below(detail::max_float_code + 1));
        compact.linear = random.below(3) == 0 ? 0 : std::uint32_t(random.below(detail::max_float_code + 1));
        if (compact.quadratic == 0 && compact.linear == 0) compact.linear = 500;
        compact.escape_length = std::uint32_t(random.below(40 * 16));
    }
    try {
        (void)compact.table();
    } catch (const nwc::error&) {  // e.g. a center far from a steep shape: every weight 0
        return random_compact(random);
    }
    return compact;
}

}  // namespace

TEST_CASE("compact_cdf_table: every kind round-trips to the exact same integer table", "[cdf_table][compact]") {
    Random random(15);
    for (int trial = 0; trial < 300; ++trial) {
        // Any table, kept exactly (kind frequencies).
        const CdfTable table = random_table(random);
        const CompactCdfTable back = round_trip(CompactCdfTable::exact(table));
        CHECK(back.table() == table);
        // Derived kinds: the reader derives the encoder's table from the stored integers.
        const CompactCdfTable derived = random_compact(random);
        INFO("trial " << trial << " kind " << int(derived.kind) << " support " << derived.support << " precision " << derived.precision);
        const CdfTable derived_table = derived.table();
        check_invariants(derived_table);
        round_trip(derived);
    }
    // A whole set, compactly.
    std::vector<CdfTable> tables;
    for (int channel = 0; channel < 6; ++channel) {
        const auto probabilities = random_distribution(random, 3 + random.below(40));
        tables.push_back(CdfTable::from_probabilities(-int(probabilities.size() / 2), probabilities, 1e-5, 16));
    }
    const CdfTableSet set(tables);
    ByteWriter writer;
    write_compact(set, writer);
    ByteWriter full;
    set.write(full);
    std::printf("compact_cdf_table: 6 tables of precision 16, exact: %zu bytes compact, %zu bytes with CdfTableSet::write\n", writer.size(),
                full.size());
    CHECK(writer.size() < full.size());
    ByteReader reader(writer.bytes(), "compact set");
    CHECK(read_compact_set(reader) == set);
    CHECK(reader.at_end());
}

TEST_CASE("compact_cdf_table: the integer derivation is pinned", "[cdf_table][compact]") {
    // Stored tables must decode to the same integers forever: 2^62 2^(-j/256) from integer square roots.
    CHECK(detail::exp2_fractions[0] == 4611686018427387904ull);
    CHECK(detail::exp2_fractions[1] == 4599216278082138665ull);
    CHECK(detail::exp2_fractions[128] == 3260954456333195525ull);
    CHECK(detail::exp2_fractions[255] == 2312094783834258822ull);
    for (std::size_t j = 0; j < 256; ++j) CHECK(std::abs(double(detail::exp2_fractions[j]) / std::exp2(62.0 - double(j) / 256) - 1) < 1e-15);
    CHECK(detail::code_length_weight(256 * 3 + 128, 8) == detail::exp2_fractions[128] >> 3);
    CHECK(detail::code_length_weight(63 * 4, 2) == 0);
    CHECK(detail::log2_q16(1) == 0);
    CHECK(detail::log2_q16(3) == 103872);  // 1.58496 in Q16, truncated
    CHECK(detail::log2_q16(std::uint64_t(1) << 40) == std::uint64_t(40) << 16);
    CHECK(detail::float_code_value(0) == 0);
    CHECK(detail::float_code_value(1) == 32);
    CHECK(detail::float_code_value(32 * 5 + 7 + 1) == std::uint64_t(39) << 5);
    // A parametric Laplace table, pinned: center 3 bins in, B = 48 << 17 (1.5 bits per bin), escape at 8 bits.
    CompactCdfTable laplace;
    laplace.kind = CompactCdfTable::Kind::parametric;
    laplace.precision = 12;
    laplace.offset = -3;
    laplace.support = 7;
    laplace.center = 12;
    laplace.linear = 32 * 17 + 16 + 1;
    laplace.has_escape_length = true;
    laplace.escape_length = 8 * 16;
    const std::vector<std::uint32_t> expected{88, 250, 707, 1998, 707, 250, 88, 8};  // ratios 2^1.5, escape 2^-8 of the mode
    const CdfTable table = laplace.table();
    CHECK(std::vector<std::uint32_t>(table.frequencies().begin(), table.frequencies().end()) == expected);
}

TEST_CASE("compact_cdf_table: the fit minimizes table bytes + payload and accounts for it exactly", "[cdf_table][compact]") {
    Random random(16);
    for (int trial = 0; trial < 40; ++trial) {
        // ECSQ-like counts: rounded Gaussian or Laplace samples with a few outliers.
        const std::size_t samples = std::size_t(500) << random.below(8);
        const double scale = 1.0 + 12.0 * random.uniform();
        const bool gaussian = random.below(2) != 0;
        std::vector<std::int32_t> symbols(samples);
        for (auto& symbol : symbols) {
            const double u = double(random.uniform()) - 0.5;
            const double value = gaussian ? scale * random.normal() : -scale * std::copysign(std::log(1 - 2 * std::abs(u) + 1e-12), u);
            symbol = std::int32_t(std::lround(value));
        }
        for (int outlier = 0; outlier < int(random.below(4)); ++outlier) symbols[random.below(samples)] = std::int32_t(random.below(400)) - 200;
        const auto [low, high] = std::minmax_element(symbols.begin(), symbols.end());
        std::vector<std::uint64_t> counts(std::size_t(*high - *low + 1));
        for (std::int32_t symbol : symbols) ++counts[std::size_t(symbol - *low)];

        const CompactTableFit fit = fit_compact_table(*low, counts, {.precisions = {14, 16}});
        INFO("trial " << trial << ": " << samples << " samples, scale " << scale << (gaussian ? " gaussian" : " laplace") << ", kind "
                      << int(fit.compact.kind));
        CHECK(fit.table == fit.compact.table());
        CHECK(fit.table_bytes == fit.compact.byte_size());
        round_trip(fit.compact);
        // The payload it reports is the symbols' code length under its table (escapes included),
        // plus the coder's estimated loss at its precision.
        const CdfTableSet set({fit.table});
        const auto coder_loss = [&](int precision) { return double(samples * detail::coder_loss_q16[precision - 12]) / 65536; };
        CHECK(std::abs(fit.payload_bits() - coder_loss(fit.table.precision()) - set.ideal_bits(symbols)) <= 1e-4 * set.ideal_bits(symbols) + 1.0);
        // No candidate it considered does better: the exact histogram table and the full support.
        const detail::FitWindow window = detail::make_window(*low, counts, 0, counts.size() - 1);
        std::vector<std::uint64_t> weights(counts.begin(), counts.end());
        weights.push_back(0);
        for (int precision : {14, 16}) {
            const CdfTable exact = CdfTable::from_weights(*low, weights, precision);
            const double exact_total =
                8.0 * double(CompactCdfTable::exact(exact).byte_size()) + double(detail::payload_q16(window, exact)) / 65536 + coder_loss(precision);
            CHECK(fit.total_bits() <= exact_total + 1e-9);
        }
        // And the stream it codes decodes back.
        CHECK(rans::decode(rans::encode(symbols, set), set) == symbols);
    }
    CHECK_THROWS_AS(fit_compact_table(0, std::vector<std::uint64_t>{0, 0}), nwc::error);
    CHECK_THROWS_AS(fit_compact_table(0, std::vector<std::uint64_t>{1}, {.precisions = {17}}), nwc::error);
}

TEST_CASE("compact_cdf_table: the fitter's shortcuts agree with the full computations", "[cdf_table][compact]") {
    // fit_compact_table prices candidates by table_frequencies(), a counted byte_size() and a table
    // of log2_q16: each must give exactly what the table, the written bytes and log2_q16 give.
    for (std::uint64_t f = 1; f <= (std::uint64_t(1) << 16); ++f)
        if (detail::log2_q16_of_frequency(std::uint32_t(f)) != detail::log2_q16(f)) FAIL("log2_q16_of_frequency(" << f << ")");
    Random random(17);
    for (int trial = 0; trial < 300; ++trial) {
        const CompactCdfTable derived = random_compact(random);
        const CdfTable table = derived.table();
        CHECK(derived.table_frequencies() == std::vector<std::uint32_t>(table.frequencies().begin(), table.frequencies().end()));
        const CompactCdfTable exact = CompactCdfTable::exact(random_table(random));
        for (const CompactCdfTable* compact : {&derived, &exact}) {
            ByteWriter writer;
            compact->write(writer);
            CHECK(compact->byte_size() == writer.size());
        }
        const std::vector<std::uint64_t> weights = derived.weights();
        CHECK(CdfTable::frequencies_from_weights(derived.offset, weights, derived.precision) == derived.table_frequencies());
    }
    CHECK_THROWS_AS(CdfTable::frequencies_from_weights(0, std::vector<std::uint64_t>{0, 0}, 12), nwc::error);
    // The fits themselves, pinned (values of the version that built a CdfTable per candidate):
    // a Gaussian-shaped histogram with two outliers, a tiny one, and a large irregular one.
    std::vector<std::uint64_t> gaussian(61);
    for (int i = 0; i < 61; ++i) gaussian[std::size_t(i)] = std::uint64_t(std::llround(3000.0 * std::exp(-double((i - 25) * (i - 25)) / 60.0)));
    gaussian[0] = 2;
    gaussian[60] = 1;
    std::vector<std::uint64_t> irregular(81);
    for (int i = 0; i < 81; ++i)
        irregular[std::size_t(i)] = std::uint64_t(std::llround(1e5 * std::exp(-double((i - 40) * (i - 40)) / 200.0))) + std::uint64_t(i % 7) * 50;
    struct Pinned {
        std::int32_t offset;
        std::vector<std::uint64_t> counts;
        std::vector<int> precisions;
        int kind, precision;
        std::int32_t table_offset;
        std::uint32_t support;
        std::uint64_t bytes, payload_q16;
    };
    const Pinned cases[] = {
        {-25, gaussian, {12, 13, 14, 15, 16}, 2, 13, -20, 40, 8, 12151618927ull},
        {-25, gaussian, {14}, 2, 14, -22, 44, 8, 12151778732ull},
        {7, {0, 3, 9, 4, 0, 0, 1}, {12, 13, 14, 15, 16}, 2, 14, 8, 6, 5, 2104755ull},
        {-40, irregular, {12, 13, 14, 15, 16}, 1, 14, -40, 81, 43, 888328393750ull},
    };
    for (const Pinned& pinned : cases) {
        const CompactTableFit fit = fit_compact_table(pinned.offset, pinned.counts, {.precisions = pinned.precisions});
        CHECK(int(fit.compact.kind) == pinned.kind);
        CHECK(fit.compact.precision == pinned.precision);
        CHECK(fit.compact.offset == pinned.table_offset);
        CHECK(fit.compact.support == pinned.support);
        CHECK(fit.table_bytes == pinned.bytes);
        CHECK(fit.payload_q16 == pinned.payload_q16);
        CHECK(fit.table == fit.compact.table());
    }
}

TEST_CASE("compact_cdf_table: truncated, corrupt and hostile bytes give nwc::error", "[cdf_table][compact]") {
    Random random(17);
    int accepted = 0, rejected = 0;
    for (int trial = 0; trial < 60; ++trial) {
        const CompactCdfTable compact = trial % 3 == 0 ? CompactCdfTable::exact(random_table(random)) : random_compact(random);
        ByteWriter writer;
        compact.write(writer);
        const std::vector<std::uint8_t> bytes = writer.take();
        for (std::size_t length = 0; length < bytes.size(); length += 1 + bytes.size() / 50) {
            const std::vector<std::uint8_t> cut(bytes.begin(), bytes.begin() + std::ptrdiff_t(length));
            ByteReader reader(cut, "cut compact table");
            CHECK_THROWS_AS(CompactCdfTable::read(reader), nwc::error);
        }
        for (int flip = 0; flip < 20; ++flip) {
            std::vector<std::uint8_t> flipped = bytes;
            flipped[random.below(flipped.size())] ^= std::uint8_t(1 + random.below(255));
            ByteReader reader(flipped, "flipped compact table");
            try {
                const CompactCdfTable back = CompactCdfTable::read(reader);
                check_invariants(back.table());  // a different but valid table
                ++accepted;
            } catch (const nwc::error&) {
                ++rejected;
            }
        }
    }
    std::printf("compact_cdf_table corruption: %d flips rejected, %d read as other valid tables\n", rejected, accepted);
    auto id_of = [](std::initializer_list<std::uint8_t> bytes) {
        const std::vector<std::uint8_t> data(bytes);
        try {
            ByteReader reader(data, "crafted compact table");
            CompactCdfTable::read(reader);
        } catch (const nwc::error& failure) {
            return failure.id();
        }
        return errc::io;  // "did not throw"
    };
    // Bits: kind (2), precision - 12 (3), Exp-Golomb(3) zigzag offset, Exp-Golomb(3) support - 1, ...
    CHECK(id_of({0b11000000, 0xFF}) == errc::corrupt);  // kind 3
    CHECK(id_of({0b00101000, 0xFF}) == errc::corrupt);  // precision 17
    // A support of 2^20 bins (far beyond 2^precision) announced in 4 bytes: rejected before allocating.
    CHECK(id_of({0b01000100, 0b00000000, 0b00000000, 0b01000000, 0, 0, 0}) == errc::corrupt);
    // code_lengths, support 1, every weight zero (length 2^20 in bin 0, no escape length): corrupt.
    CompactCdfTable zero;
    zero.kind = CompactCdfTable::Kind::code_lengths;
    zero.support = 1;
    zero.lengths = {std::uint32_t(detail::max_code_length)};
    ByteWriter writer;
    zero.write(writer);
    ByteReader reader(writer.bytes(), "zero weights");
    CHECK_THROWS_AS(CompactCdfTable::read(reader), nwc::error);
    const std::vector<std::uint8_t> no_tables{0};
    ByteReader set_reader(no_tables, "no tables");
    CHECK_THROWS_AS(read_compact_set(set_reader), nwc::error);
}

}  // namespace nwc_test_cdf_table
