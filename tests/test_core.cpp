// Core: half/bfloat16 conversion, tensors, byte I/O, CRC-32C, atomic files, mapped pages handed
// back, random, parallel_for.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "nwc/nwc.hpp"

namespace nwc_test_core {

using namespace nwc;

TEST_CASE("half: every one of the 65536 bit patterns survives half -> float -> half", "[half]") {
    for (std::uint32_t bits = 0; bits < 65536; ++bits) {
        const half value{std::uint16_t(bits)};
        const float wide = to_float(value);
        if (std::isnan(wide)) {
            CHECK(std::isnan(to_float(to_half(wide))));
            continue;
        }
        REQUIRE(to_half(wide).bits == value.bits);
    }
}

TEST_CASE("half: rounding to nearest even, overflow, subnormals", "[half]") {
    CHECK(to_half(1.0f).bits == 0x3C00);
    CHECK(to_half(65504.0f).bits == 0x7BFF);
    CHECK(to_half(65520.0f).bits == 0x7C00);     // halfway to the next binade rounds to infinity
    CHECK(to_half(1.0f + 0x1.0p-11f).bits == 0x3C00);   // tie, rounds to even
    CHECK(to_half(1.0f + 0x1.8p-11f).bits == 0x3C01);
    CHECK(to_half(0x1.0p-24f).bits == 0x0001);  // smallest subnormal
    CHECK(to_half(0x1.0p-26f).bits == 0x0000);
    CHECK(to_half(-0.0f).bits == 0x8000);
    CHECK(to_float(half{0x0001}) == 0x1.0p-24f);
    // Against a double-precision reference on a sweep of values.
    Random random(7);
    for (int i = 0; i < 100000; ++i) {
        const float value = random.normal() * 100.0f;
        const float rounded = to_float(to_half(value));
        CHECK(std::abs(rounded - value) <= std::abs(value) * 0x1.0p-11f + 0x1.0p-25f);
    }
}

TEST_CASE("half: is_finite is false exactly for infinities and NaNs", "[half]") {
    for (std::uint32_t bits = 0; bits < 65536; ++bits) {
        const half value{std::uint16_t(bits)};
        REQUIRE(is_finite(value) == std::isfinite(to_float(value)));
    }
    CHECK(is_finite(half{half_max_finite_bits}));
    CHECK(to_float(half{half_max_finite_bits}) == 65504.0f);
    CHECK_FALSE(is_finite(to_half(65520.0f)));
}

TEST_CASE("bfloat16: round trip and rounding", "[half]") {
    for (std::uint32_t bits = 0; bits < 65536; ++bits) {
        const bfloat16 value{std::uint16_t(bits)};
        const float wide = to_float(value);
        if (!std::isnan(wide)) REQUIRE(to_bfloat16(wide).bits == value.bits);
    }
    CHECK(to_bfloat16(1.0f + 0x1.0p-8f).bits == 0x3F80);  // tie to even
    CHECK(to_bfloat16(1.0f + 0x1.8p-8f).bits == 0x3F81);
    CHECK(std::isnan(to_float(to_bfloat16(std::nanf("")))));
}

TEST_CASE("tensor: shapes, views, Eigen maps and conversion", "[tensor]") {
    Tensor<float> matrix(Shape{3, 4});
    std::iota(matrix.values().begin(), matrix.values().end(), 0.0f);
    CHECK(matrix.rows() == 3);
    CHECK(matrix.cols() == 4);
    CHECK(matrix(2, 1) == 9.0f);
    TensorView<const float> view = matrix;
    CHECK(view.matrix()(1, 3) == 7.0f);
    CHECK(view.row(2)[3] == 11.0f);

    Tensor<bfloat16> narrow(matrix.shape());
    convert<float, bfloat16>(view, narrow.view());
    const Tensor<float> back = to_float32<bfloat16>(narrow);
    CHECK(back.values() == matrix.values());  // small integers are exact in bf16

    const std::int64_t huge[] = {1ll << 40, 1ll << 40};
    CHECK_THROWS_AS(checked_numel(huge), error);
    CHECK_THROWS_AS(Shape({1, 2, 3, 4, 5}), error);
    CHECK(dtype_from_name("BF16") == dtype::bf16);
    CHECK_THROWS_WITH(dtype_from_name("F64"), Catch::Contains("F64"));
}

TEST_CASE("byte_io: round trip, and every short read is an error naming the offset", "[byte_io]") {
    ByteWriter writer;
    writer.put_u8(7);
    writer.put_u16(0xBEEF);
    writer.put_u32(0xDEADBEEF);
    writer.put_u64(1ull << 40);
    writer.put_f32(1.5f);
    writer.put_string("tensor.weight");
    const std::vector<float> values{1.0f, 2.0f, 3.0f};
    writer.put_array(std::span<const float>(values));
    const auto bytes = writer.take();

    ByteReader reader(bytes, "test stream");
    CHECK(reader.get_u8() == 7);
    CHECK(reader.get_u16() == 0xBEEF);
    CHECK(reader.get_u32() == 0xDEADBEEF);
    CHECK(reader.get_u64() == (1ull << 40));
    CHECK(reader.get_f32() == 1.5f);
    CHECK(reader.get_string() == "tensor.weight");
    CHECK(reader.get_array<float>(3) == values);
    CHECK(reader.at_end());

    for (std::size_t length = 0; length < bytes.size(); ++length) {
        ByteReader cut(std::span<const std::uint8_t>(bytes).first(length), "cut stream");
        CHECK_THROWS_AS((cut.get_u8(), cut.get_u16(), cut.get_u32(), cut.get_u64(), cut.get_f32(), cut.get_string(), cut.get_array<float>(3)), error);
    }
    // Zero elements, also from an empty (null) span: found by fuzz_codec_file (a codec file with
    // no prior parameters), where UBSan reported memcpy(nullptr, nullptr, 0).
    ByteReader empty(std::span<const std::uint8_t>{}, "empty stream");
    CHECK(empty.get_array<float>(0).empty());
    ByteReader at_end(bytes, "stream at its end");
    at_end.skip(bytes.size());
    CHECK(at_end.get_array<std::uint32_t>(0).empty());
    CHECK_THROWS_AS(at_end.get_array<std::uint8_t>(1), error);

    ByteReader hostile(bytes, "hostile");
    hostile.skip(1);
    try {
        hostile.get_array<float>(1ull << 60);
        FAIL("no error");
    } catch (const error& e) {
        CHECK(e.id() == errc::truncated);
        CHECK_THAT(e.what(), Catch::Contains("hostile") && Catch::Contains("offset 1"));
    }
}

TEST_CASE("crc32c: standard check value and incremental use", "[checksum]") {
    const std::string text = "123456789";
    const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
    CHECK(crc32c(bytes) == 0xE3069283u);
    CHECK(crc32c(bytes.subspan(4), crc32c(bytes.first(4))) == 0xE3069283u);
    CHECK(crc32c({}) == 0u);
}

TEST_CASE("crc32c: the instruction-based version equals the table version", "[checksum]") {
    std::vector<std::uint8_t> bytes(300);
    Random random(11);
    for (auto& byte : bytes) byte = std::uint8_t(random.next_u32());
    const std::span<const std::uint8_t> all(bytes);
    for (std::size_t first = 0; first < 9; ++first)
        for (std::size_t size = 0; first + size <= bytes.size(); size += 1 + size / 7) {
            const auto part = all.subspan(first, size);
            REQUIRE(crc32c(part) == detail::crc32c_portable(part));
            REQUIRE(crc32c(part, 0x12345678u) == detail::crc32c_portable(part, 0x12345678u));
        }
}

TEST_CASE("file_io: atomic writes never clobber a good file", "[file_io]") {
    const auto folder = std::filesystem::temp_directory_path() / "nwc_test_core_files";
    std::filesystem::remove_all(folder);
    std::filesystem::create_directories(folder);
    const auto target = folder / "out.bin";
    const std::vector<std::uint8_t> good(1000, 0xAB);
    write_file_atomic(target, good);
    CHECK(read_file(target) == good);

    const std::vector<std::uint8_t> bigger(5000, 0xCD);
    CHECK_THROWS_AS(write_file_atomic(target, bigger, 4096), error);  // "disk full"
    CHECK(read_file(target) == good);
    {
        AtomicFileWriter writer(target);
        writer.write(bigger);
        // destroyed without commit, as when an exception unwinds
    }
    CHECK(read_file(target) == good);
    CHECK(std::distance(std::filesystem::directory_iterator(folder), std::filesystem::directory_iterator{}) == 1);
    CHECK_THROWS_AS(MappedFile(folder / "missing"), error);
    std::filesystem::remove_all(folder);
}

TEST_CASE("file_io: a file written in many pieces past the write-behind span reads back as written", "[file_io]") {
    const auto folder = std::filesystem::temp_directory_path() / "nwc_test_core_write_behind";
    std::filesystem::remove_all(folder);
    std::filesystem::create_directories(folder);
    std::vector<std::uint8_t> bytes(std::size_t(21) << 20);  // 21 MiB: two whole write-behind spans of 8 MiB and a tail
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::uint8_t((i * 2654435761u) >> 13);
    {
        AtomicFileWriter writer(folder / "big.bin");
        for (std::size_t begin = 0, piece = 1; begin < bytes.size(); begin += piece, piece = piece * 3 + 7)
            writer.write(std::span<const std::uint8_t>(bytes).subspan(begin, std::min(piece, bytes.size() - begin)));
        writer.commit();
    }
    CHECK(read_file(folder / "big.bin") == bytes);
    std::filesystem::remove_all(folder);
}

/// Resident kilobytes of the mapping that holds `address` (/proc/self/smaps), or -1 if not listed.
long resident_kib_of_mapping(const void* address) {
    std::ifstream smaps("/proc/self/smaps");
    const auto where = reinterpret_cast<std::uintptr_t>(address);
    bool inside = false;
    for (std::string line; std::getline(smaps, line);) {
        unsigned long begin = 0, end = 0;
        if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find(':') > line.find(' ')) inside = begin <= where && where < end;
        else if (inside && line.rfind("Rss:", 0) == 0) return std::stol(line.substr(4));
    }
    return -1;
}

TEST_CASE("file_io: pages handed back as a walk goes stay readable and leave none behind", "[file_io]") {
    // What the pipeline's strip reads rely on: release_pages_until over consecutive uneven ranges
    // hands back every page the walk has passed (none left between two ranges), and the mapped
    // bytes read the same afterwards (MADV_DONTNEED on a file mapping reads the file again).
    const auto folder = std::filesystem::temp_directory_path() / "nwc_test_core_release";
    std::filesystem::remove_all(folder);
    std::filesystem::create_directories(folder);
    std::vector<std::uint8_t> bytes(std::size_t(4) << 20);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::uint8_t((i * 2654435761u) >> 11);
    write_file_atomic(folder / "mapped.bin", bytes);
    {
        const MappedFile file(folder / "mapped.bin");
        const std::uint8_t* data = file.bytes().data();
        const std::uintptr_t page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
        std::uint64_t sum = 0;
        const std::uint8_t* from = data;
        for (std::size_t done = 0, step = 1000; done < bytes.size(); step = step * 2 + 333) {
            const std::size_t next = std::min(bytes.size(), done + step);
            for (std::size_t i = done; i < next; ++i) sum += data[i];  // fault the range in
            const std::uint8_t* after = release_pages_until(from, data + next);
            CHECK(after >= from);
            CHECK(after <= data + next);
            CHECK((after == from || reinterpret_cast<std::uintptr_t>(after) % page == 0));
            from = after;
            done = next;
        }
        CHECK(sum == std::accumulate(bytes.begin(), bytes.end(), std::uint64_t(0)));
        CHECK(from == data + bytes.size());  // the file is a whole number of pages: all handed back
        const long resident = resident_kib_of_mapping(data);
        INFO("resident " << resident << " KiB of the 4 MiB mapping");
        CHECK((resident >= 0 && resident * 1024 < long(2 * page)));
        CHECK(std::equal(bytes.begin(), bytes.end(), data));  // read again from the file
        CHECK(release_pages_until(from, from) == from);
    }
    std::filesystem::remove_all(folder);
}

TEST_CASE("random: fixed sequence, plausible moments, independent splits", "[random]") {
    Random a(42), b(42);
    for (int i = 0; i < 100; ++i) REQUIRE(a.next_u64() == b.next_u64());
    CHECK(Random(0).next_u64() == 0xE220A8397B1DCDAFull);  // SplitMix64 reference output for seed 0
    Random normal(1);
    double sum = 0, sum_squares = 0;
    const int count = 200000;
    for (int i = 0; i < count; ++i) {
        const double x = normal.normal();
        sum += x;
        sum_squares += x * x;
    }
    CHECK(std::abs(sum / count) < 0.01);
    CHECK(std::abs(sum_squares / count - 1.0) < 0.02);
    CHECK(Random(5).split(1).next_u64() != Random(5).split(2).next_u64());
}

TEST_CASE("parallel_for: every index once, exceptions propagate", "[thread_pool]") {
    for (int threads : {1, 2, 4}) {
        std::vector<int> hits(1000, 0);
        parallel_for(1000, threads, [&](std::int64_t i) { hits[std::size_t(i)] += 1; });
        CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
        CHECK_THROWS_AS(parallel_for(100, threads, [](std::int64_t i) { if (i == 50) fail(errc::corrupt, "item 50"); }), error);
    }
}

}  // namespace nwc_test_core
