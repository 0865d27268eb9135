// .nwc container: round trips, determinism, lazy per-tensor checksums, every byte flipped and every
// truncation rejected, hostile directories with valid CRCs, atomic writes.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <unistd.h>

#include "nwc/core/random.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/container.hpp"

using namespace nwc;

namespace {

template <class Body>
std::optional<errc> error_of(Body&& body, std::string* message = nullptr) {
    try {
        body();
    } catch (const nwc::error& problem) {
        if (message != nullptr) *message = problem.message();
        return problem.id();
    }
    return std::nullopt;
}

std::vector<std::uint8_t> random_bytes(Random& random, std::size_t count) {
    std::vector<std::uint8_t> bytes(count);
    for (auto& byte : bytes) byte = std::uint8_t(random.below(256));
    return bytes;
}

// Many tensors of every kind: coded with a codec, raw, empty payloads, empty metadata, segmented.
ContainerWriter many_tensors(std::vector<ContainerTensor>* added = nullptr) {
    Random random(11);
    ContainerWriter writer;
    const std::int32_t codec_a = writer.add_codec(random_bytes(random, 300));
    const std::int32_t codec_b = writer.add_codec(random_bytes(random, 77));
    const std::int32_t codec_empty = writer.add_codec({});
    writer.set_file_metadata(R"({"source_format": "safetensors", "metadata": {"format": "pt"}})");
    const char* methods[] = {"nwc", "ecsq", "gptq", "rtn"};
    for (int index = 0; index < 40; ++index) {
        ContainerTensor tensor;
        tensor.name = "model.layers." + std::to_string(index) + ".weight";
        if (index % 7 == 3) {
            const Shape shape{std::int64_t(random.below(9))};
            const dtype type = index % 2 ? dtype::f16 : dtype::f32;
            tensor = make_raw_tensor("norm." + std::to_string(index), type, shape, random_bytes(random, std::size_t(shape.numel()) * dtype_size(type)));
        } else {
            tensor.original_dtype = index % 3 == 0 ? dtype::bf16 : dtype::f16;
            tensor.shape = Shape{std::int64_t(1 + random.below(64)), std::int64_t(1 + random.below(64))};
            tensor.method = methods[index % 4];
            tensor.codec_index = index % 5 == 0 ? -1 : (index % 2 ? codec_a : (index % 3 ? codec_b : codec_empty));
            tensor.metadata = random_bytes(random, index % 4 == 1 ? 0 : std::size_t(random.below(100)));
            const int segments = int(random.below(5));
            for (int k = 0; k < segments; ++k) tensor.add_segment(random_bytes(random, std::size_t(random.below(200))));
        }
        if (added != nullptr) added->push_back(tensor);
        writer.add_tensor(std::move(tensor));
    }
    return writer;
}

// A small container for the exhaustive byte-flip and truncation tests.
std::vector<std::uint8_t> small_container() {
    ContainerWriter writer;
    const std::int32_t codec = writer.add_codec({1, 2, 3, 4, 5, 6, 7, 8, 9});
    writer.set_file_metadata(R"({"source_format":"llama2c"})");
    ContainerTensor coded;
    coded.name = "w";
    coded.original_dtype = dtype::f16;
    coded.shape = Shape{4, 8};
    coded.method = "nwc";
    coded.codec_index = codec;
    coded.metadata = {10, 20, 30};
    coded.add_segment(std::vector<std::uint8_t>{0xAA, 0xBB, 0xCC});
    coded.add_segment(std::vector<std::uint8_t>{0xDD});
    writer.add_tensor(coded);
    const Tensor<float> norm(Shape{3}, std::vector<float>{1.0f, 2.0f, 0.5f});
    writer.add_tensor(make_raw_tensor("norm", norm.view(), dtype::f32));
    return writer.serialize();
}

void read_everything(const ContainerReader& reader) {
    reader.verify();
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        (void)reader.metadata(index);
        for (std::size_t k = 0; k < reader.entry(index).segment_count(); ++k) (void)reader.segment(index, k);
    }
    for (std::size_t index = 0; index < reader.codec_count(); ++index) (void)reader.codec(index);
}

void put_u32_at(std::vector<std::uint8_t>& bytes, std::size_t at, std::uint32_t value) { std::memcpy(bytes.data() + at, &value, 4); }
void put_u64_at(std::vector<std::uint8_t>& bytes, std::size_t at, std::uint64_t value) { std::memcpy(bytes.data() + at, &value, 8); }

// What an attacker does: change the directory, then make both CRCs match again.
void fix_crcs(std::vector<std::uint8_t>& bytes) {
    std::uint64_t directory_size;
    std::memcpy(&directory_size, bytes.data() + 24, 8);
    directory_size = std::min<std::uint64_t>(directory_size, bytes.size() - 40);
    put_u32_at(bytes, 32, crc32c({bytes.data() + 40, std::size_t(directory_size)}));
    put_u32_at(bytes, 36, crc32c({bytes.data(), 36}));
}

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_test_container_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST_CASE("container: many tensors round trip, and serialization is byte-identical on repeat", "[container]") {
    std::vector<ContainerTensor> added;
    const ContainerWriter writer = many_tensors(&added);
    const std::vector<std::uint8_t> bytes = writer.serialize();
    CHECK(writer.serialized_size() == bytes.size());
    CHECK(writer.serialize() == bytes);
    CHECK(many_tensors().serialize() == bytes);
    CHECK(writer.codec_count() == 3);

    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    CHECK(reader.total_size() == bytes.size());
    CHECK(reader.file_metadata() == R"({"source_format": "safetensors", "metadata": {"format": "pt"}})");
    REQUIRE(reader.codec_count() == 3);
    CHECK(reader.codec(1).size() == 77);
    CHECK(reader.codec(2).empty());
    REQUIRE(reader.tensor_count() == added.size());
    for (std::size_t index = 0; index < added.size(); ++index) {
        const ContainerTensor& expected = added[index];
        const ContainerEntry& entry = reader.entry(index);
        INFO(expected.name);
        REQUIRE(entry.name == expected.name);
        CHECK(reader.find(expected.name) == index);
        CHECK(entry.original_dtype == expected.original_dtype);
        CHECK(entry.shape == expected.shape);
        CHECK(entry.method == expected.method);
        CHECK(entry.codec_index == expected.codec_index);
        CHECK(entry.payload_offset % container_format::region_alignment == 0);
        const auto metadata = reader.metadata(index);
        CHECK(std::vector<std::uint8_t>(metadata.begin(), metadata.end()) == expected.metadata);
        const auto payload = reader.payload(index);
        CHECK(std::vector<std::uint8_t>(payload.begin(), payload.end()) == expected.payload);
        const std::size_t segments = expected.segment_sizes.empty() ? 1 : expected.segment_sizes.size();
        REQUIRE(entry.segment_count() == segments);
        std::vector<std::uint8_t> joined;
        for (std::size_t k = 0; k < segments; ++k) {
            const auto segment = reader.segment(index, k);
            if (!expected.segment_sizes.empty()) CHECK(segment.size() == expected.segment_sizes[k]);
            joined.insert(joined.end(), segment.begin(), segment.end());
        }
        CHECK(joined == expected.payload);
    }
    CHECK_NOTHROW(reader.verify());
    CHECK(!reader.find("absent"));
    // Concurrent first reads from several threads (each CRC is checked once, under an atomic flag).
    const ContainerReader fresh = ContainerReader::from_bytes(bytes);
    std::vector<std::uint32_t> crcs(fresh.tensor_count());
    parallel_for(std::int64_t(crcs.size()) * 4, 4, [&](std::int64_t item) {
        const std::size_t index = std::size_t(item) % crcs.size();
        const std::uint32_t crc = crc32c(fresh.payload(index));
        if (item < std::int64_t(crcs.size())) crcs[index] = crc;
    });
    for (std::size_t index = 0; index < crcs.size(); ++index) CHECK(crcs[index] == crc32c(added[index].payload));
    CHECK(error_of([&] { (void)reader.index_of("absent"); }) == errc::invalid_argument);
    CHECK(error_of([&] { (void)reader.entry(added.size()); }) == errc::invalid_argument);
    CHECK(error_of([&] { (void)reader.segment(0, 99); }) == errc::invalid_argument);

    TempDir temp;
    writer.write(temp.path / "model.nwc");
    CHECK(read_file(temp.path / "model.nwc") == bytes);
    const ContainerReader from_file = ContainerReader::open(temp.path / "model.nwc");
    CHECK(from_file.tensor_count() == added.size());
    CHECK_NOTHROW(from_file.verify());

    // A reader built from a temporary owns it.
    const ContainerReader owning = ContainerReader::from_bytes(writer.serialize());
    CHECK_NOTHROW(owning.verify());
    CHECK(owning.file_metadata() == reader.file_metadata());

    // The empty container is valid too.
    const std::vector<std::uint8_t> empty = ContainerWriter().serialize();
    CHECK(ContainerReader::from_bytes(empty).tensor_count() == 0);
}

TEST_CASE("container: passthrough tensors keep their dtype and values", "[container]") {
    const Tensor<float> values(Shape{5}, std::vector<float>{1.0f, -0.5f, 3.0f, 1e-4f, 65504.0f});
    for (dtype type : {dtype::f32, dtype::f16, dtype::bf16}) {
        ContainerWriter writer;
        writer.add_tensor(make_raw_tensor("bias", values.view(), type));
        const std::vector<std::uint8_t> bytes = writer.serialize();
        const ContainerReader reader = ContainerReader::from_bytes(bytes);
        CHECK(reader.entry(0).original_dtype == type);
        CHECK(reader.entry(0).payload_size == 5 * dtype_size(type));
        const Tensor<float> back = reader.read_raw_float32(0);
        for (std::int64_t i = 0; i < 5; ++i) CHECK(back[i] == (type == dtype::f32 ? values[i] : type == dtype::f16 ? to_float(to_half(values[i])) : to_float(to_bfloat16(values[i]))));
    }
}

TEST_CASE("container: reading one tensor checks only its own CRC", "[container]") {
    const ContainerWriter writer = many_tensors();
    std::vector<std::uint8_t> bytes = writer.serialize();
    const ContainerReader clean = ContainerReader::from_bytes(bytes);
    std::size_t victim = 0;
    while (clean.entry(victim).payload_size == 0 || clean.entry(victim).metadata_size == 0) ++victim;
    const ContainerEntry entry = clean.entry(victim);
    const std::uint64_t codec_offset = clean.codec_entry(1).offset;

    bytes[std::size_t(entry.payload_offset + entry.payload_size / 2)] ^= 0x10;
    bytes[std::size_t(codec_offset)] ^= 0x01;
    const ContainerReader reader = ContainerReader::from_bytes(bytes);  // opening reads no payload
    for (std::size_t index = 0; index < reader.tensor_count(); ++index)
        if (index != victim) CHECK_NOTHROW(reader.payload(index));
    CHECK_NOTHROW(reader.metadata(victim));
    std::string message;
    CHECK(error_of([&] { (void)reader.payload(victim); }, &message) == errc::corrupt);
    CHECK(message.find("tensor '" + entry.name + "'") != std::string::npos);
    CHECK(message.find(std::to_string(entry.payload_offset)) != std::string::npos);
    CHECK(error_of([&] { (void)reader.segment(victim, 0); }) == errc::corrupt);
    CHECK_NOTHROW(reader.codec(0));
    CHECK(error_of([&] { (void)reader.codec(1); }) == errc::corrupt);
    CHECK(error_of([&] { reader.verify(); }) == errc::corrupt);

    // Padding is part of the file too: verify() insists on zeros.
    std::vector<std::uint8_t> padded = writer.serialize();
    const ContainerReader layout = ContainerReader::from_bytes(padded);
    std::uint64_t gap = 0;
    for (std::size_t index = 1; index < layout.tensor_count() && gap == 0; ++index) {
        const std::uint64_t end = layout.entry(index - 1).payload_offset + layout.entry(index - 1).payload_size;
        if (layout.entry(index).metadata_offset > end) gap = end;
    }
    REQUIRE(gap != 0);
    padded[std::size_t(gap)] = 1;
    CHECK(error_of([&] { ContainerReader::from_bytes(padded).verify(); }) == errc::corrupt);
}

TEST_CASE("container: every byte flipped and every truncation is an nwc::error", "[container][hostile]") {
    const std::vector<std::uint8_t> bytes = small_container();
    REQUIRE_NOTHROW(read_everything(ContainerReader::from_bytes(bytes)));
    std::map<errc, int> flips;
    for (std::size_t at = 0; at < bytes.size(); ++at) {
        for (std::uint8_t mask : {std::uint8_t(0xFF), std::uint8_t(0x01)}) {
            std::vector<std::uint8_t> changed = bytes;
            changed[at] ^= mask;
            const auto id = error_of([&] { read_everything(ContainerReader::from_bytes(changed)); });
            INFO("byte " << at << " mask " << int(mask));
            REQUIRE(id.has_value());
            ++flips[*id];
        }
    }
    std::map<errc, int> cuts;
    for (std::size_t length = 0; length < bytes.size(); ++length) {
        const std::vector<std::uint8_t> prefix(bytes.begin(), bytes.begin() + std::ptrdiff_t(length));
        const auto id = error_of([&] { read_everything(ContainerReader::from_bytes(prefix)); });
        INFO("length " << length);
        REQUIRE(id.has_value());
        ++cuts[*id];
    }
    std::printf("container of %zu bytes: %zu byte flips (x2 masks): corrupt %d, truncated %d, unsupported %d, limit %d\n", bytes.size(), bytes.size(),
                flips[errc::corrupt], flips[errc::truncated], flips[errc::unsupported], flips[errc::limit]);
    std::printf("container of %zu bytes: %zu truncations: truncated %d, corrupt %d\n", bytes.size(), bytes.size(), cuts[errc::truncated], cuts[errc::corrupt]);
    CHECK(flips[errc::corrupt] + flips[errc::truncated] + flips[errc::unsupported] + flips[errc::limit] == int(2 * bytes.size()));
    CHECK(cuts[errc::truncated] + cuts[errc::corrupt] == int(bytes.size()));
}

TEST_CASE("container: hostile directories with valid CRCs give clean errors", "[container][hostile]") {
    const std::vector<std::uint8_t> bytes = small_container();
    // Directory of small_container(): codec count @40, tensor count @44, metadata text @48, one codec
    // record @52+metadata, then tensor "w": name size, name, dtype, rank, 2 dims, method size, "nwc", ...
    const std::size_t metadata_size = std::string(R"({"source_format":"llama2c"})").size();
    const std::size_t codec_record = 52 + metadata_size;
    const std::size_t record = codec_record + 20;
    const std::size_t dims_at = record + 5, method_at = record + 21, codec_index_at = record + 25;
    const std::size_t metadata_offset_at = record + 29, payload_size_at = record + 57, segments_at = record + 69;
    struct Case {
        const char* what;
        std::size_t at;
        int width;
        std::uint64_t value;
        errc expected;
    };
    const std::vector<Case> cases = {
        {"version 2", 8, 4, 2, errc::unsupported},
        {"unknown flags", 12, 4, 1, errc::unsupported},
        {"file size larger than the file", 16, 8, bytes.size() + 1, errc::truncated},
        {"file size 2^64 - 1", 16, 8, UINT64_MAX, errc::truncated},
        {"directory size 2^63", 24, 8, 1ull << 63, errc::limit},
        {"directory larger than the file", 24, 8, bytes.size(), errc::corrupt},
        {"2^32 - 1 codecs", 40, 4, UINT32_MAX, errc::limit},
        {"codecs past the directory", 40, 4, 1000, errc::truncated},
        {"2^20 tensors", 44, 4, 1u << 20, errc::truncated},
        {"file metadata of 4 GiB", 48, 4, UINT32_MAX, errc::limit},
        {"codec offset elsewhere", codec_record, 8, 40, errc::corrupt},
        {"codec size past the file", codec_record + 8, 8, UINT64_MAX - 8, errc::truncated},
        {"name of 60000 bytes", record, 2, 60000, errc::truncated},
        {"empty name", record, 2, 0, errc::corrupt},
        {"unknown dtype", record + 3, 1, 200, errc::unsupported},
        {"rank 9", record + 4, 1, 9, errc::unsupported},
        {"negative dimension", dims_at, 8, std::uint64_t(-5), errc::corrupt},
        {"dimension product overflows", dims_at, 8, 1ull << 62, errc::limit},
        {"method with capitals", method_at + 1, 1, 'N', errc::corrupt},
        {"method size 0", method_at, 1, 0, errc::corrupt},
        {"codec index 5", codec_index_at, 4, 5, errc::corrupt},
        {"codec index -2", codec_index_at, 4, std::uint32_t(-2), errc::corrupt},
        {"metadata offset into the directory", metadata_offset_at, 8, 40, errc::corrupt},
        {"payload size past the file", payload_size_at, 8, 1ull << 40, errc::truncated},
        {"no segments", segments_at, 4, 0, errc::corrupt},
        {"2^28 segments", segments_at, 4, 1u << 28, errc::truncated},
        {"segment past the payload", segments_at + 4, 8, 100, errc::corrupt},
    };
    for (const Case& hostile : cases) {
        INFO(hostile.what);
        std::vector<std::uint8_t> changed = bytes;
        if (hostile.width == 1) changed[hostile.at] = std::uint8_t(hostile.value);
        if (hostile.width == 2) changed[hostile.at] = std::uint8_t(hostile.value), changed[hostile.at + 1] = std::uint8_t(hostile.value >> 8);
        if (hostile.width == 4) put_u32_at(changed, hostile.at, std::uint32_t(hostile.value));
        if (hostile.width == 8) put_u64_at(changed, hostile.at, hostile.value);
        fix_crcs(changed);
        std::string message;
        const auto id = error_of([&] { read_everything(ContainerReader::from_bytes(changed)); }, &message);
        INFO(message);
        REQUIRE(id.has_value());
        CHECK(*id == hostile.expected);
    }
    std::vector<std::uint8_t> bad_magic = bytes;
    bad_magic[1] = 'X';
    CHECK(error_of([&] { (void)ContainerReader::from_bytes(bad_magic); }) == errc::corrupt);
    CHECK(error_of([] { (void)ContainerReader::open("/nonexistent/model.nwc"); }) == errc::io);

    // Random damage anywhere in the directory with the CRCs fixed up: valid or an nwc::error.
    std::uint64_t directory_size;
    std::memcpy(&directory_size, bytes.data() + 24, 8);
    Random random(99);
    std::map<std::string, int> outcomes;
    for (int round = 0; round < 20000; ++round) {
        std::vector<std::uint8_t> changed = bytes;
        const int edits = 1 + int(random.below(3));
        for (int edit = 0; edit < edits; ++edit) changed[40 + std::size_t(random.below(directory_size))] = std::uint8_t(random.below(256));
        fix_crcs(changed);
        const auto id = error_of([&] { read_everything(ContainerReader::from_bytes(changed)); });
        ++outcomes[id ? std::string(to_string(*id)) : "accepted"];
    }
    for (const auto& [outcome, count] : outcomes) std::printf("container directory damage with fixed CRCs (20000 rounds): %s %d\n", outcome.c_str(), count);
}

TEST_CASE("container: writer rejects what a reader would", "[container]") {
    ContainerWriter writer;
    const std::int32_t codec = writer.add_codec({1, 2, 3});
    CHECK(writer.add_codec({1, 2, 3}) == codec);  // stored once
    ContainerTensor tensor;
    tensor.name = "w";
    tensor.shape = Shape{2, 2};
    tensor.method = "nwc";
    tensor.codec_index = codec;
    writer.add_tensor(tensor);
    const auto rejected = [&](auto change) {
        ContainerTensor copy = tensor;
        copy.name = "other";
        change(copy);
        return error_of([&] { writer.add_tensor(copy); });
    };
    CHECK(rejected([](ContainerTensor& t) { t.name = "w"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.name = ""; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.name = "a\nb"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.name = "bad\xc0\x80"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.method = "NWC"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.codec_index = 1; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.method = "raw"; }) == errc::invalid_argument);  // raw with a codec
    CHECK(rejected([](ContainerTensor& t) { t.method = "raw", t.codec_index = -1; }) == errc::invalid_argument);  // 0 bytes for 4 floats
    CHECK(rejected([](ContainerTensor& t) { t.payload = {1, 2, 3}, t.segment_sizes = {1, 1}; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.payload = {1, 2, 3}, t.segment_sizes = {2, 2}; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.shape = Shape{1 << 21, 1 << 20}; }) == errc::limit);
    CHECK(writer.tensor_count() == 1);
    CHECK_NOTHROW(ContainerReader::from_bytes(writer.serialize()).verify());
}

TEST_CASE("container: a failed write leaves the existing file and no temporary", "[container]") {
    TempDir temp;
    const auto target = temp.path / "model.nwc";
    const std::vector<std::uint8_t> good = small_container();
    write_file_atomic(target, good);
    const ContainerWriter big = many_tensors();
    for (std::uint64_t limit : {std::uint64_t(0), std::uint64_t(39), std::uint64_t(1000), big.serialized_size() - 1}) {
        INFO("limit " << limit);
        CHECK(error_of([&] { big.write(target, limit); }) == errc::io);
        CHECK(read_file(target) == good);
        int entries = 0;
        for (const auto& entry : std::filesystem::directory_iterator(temp.path)) entries += entry.path().filename() == "model.nwc" ? 1 : 100;
        CHECK(entries == 1);
    }
    big.write(target, big.serialized_size());
    CHECK(ContainerReader::open(target).tensor_count() == big.tensor_count());
}
