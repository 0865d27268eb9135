// .nwc container: round trips, determinism, streaming == in memory == size-only, the canonical
// layout, the byte accounting, lazy per-tensor checksums, every byte flipped and every truncation
// rejected, hostile directories with valid CRCs, atomic writes.
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

namespace nwc_test_container {

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

// The codec blobs, file metadata and tensors of many_tensors().
struct Content {
    std::vector<std::vector<std::uint8_t>> codecs;
    std::string file_metadata = R"({"source_format": "safetensors", "metadata": {"format": "pt"}})";
    std::vector<ContainerTensor> tensors;
};

// Many tensors of every kind: coded with a codec, raw, empty payloads, empty metadata, segmented,
// large payloads (aligned), names sharing long prefixes, a name of 4096 bytes.
Content many_tensors_content() {
    Random random(11);
    Content content;
    content.codecs = {random_bytes(random, 300), random_bytes(random, 77), {}};
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
            tensor.codec_index = index % 5 == 0 ? -1 : (index % 2 ? 0 : (index % 3 ? 1 : 2));
            tensor.metadata = random_bytes(random, index % 4 == 1 ? 0 : std::size_t(random.below(100)));
            const int segments = int(random.below(5));
            const std::size_t largest = index % 6 == 2 ? 50000 : 200;  // some payloads >= 64 KiB, aligned
            for (int k = 0; k < segments; ++k) tensor.add_segment(random_bytes(random, std::size_t(random.below(largest))));
        }
        content.tensors.push_back(std::move(tensor));
    }
    content.tensors.push_back(make_raw_tensor(std::string(4096, 'n'), dtype::u8, Shape{4097}, random_bytes(random, 4097)));
    content.tensors.push_back(make_raw_tensor(std::string(4094, 'n') + "\xC3\xA9", dtype::u8, Shape{0}, {}));
    return content;
}

template <class Writer>
void add_content(Writer& writer, const Content& content) {
    for (const auto& codec : content.codecs) writer.add_codec(codec);
    writer.set_file_metadata(content.file_metadata);
    for (const ContainerTensor& tensor : content.tensors) writer.add_tensor(tensor);
}

ContainerWriter many_tensors() {
    ContainerWriter writer;
    add_content(writer, many_tensors_content());
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
std::uint32_t u32_at(const std::vector<std::uint8_t>& bytes, std::size_t at) {
    std::uint32_t value;
    std::memcpy(&value, bytes.data() + at, 4);
    return value;
}
std::uint64_t directory_size_of(const std::vector<std::uint8_t>& bytes) { return u32_at(bytes, bytes.size() - 16); }

// What an attacker does: change the directory, then make the directory and footer CRCs match again.
void fix_crcs(std::vector<std::uint8_t>& bytes) {
    if (bytes.size() < 32) return;
    const std::size_t footer = bytes.size() - 16;
    const std::uint64_t directory = std::min<std::uint64_t>(u32_at(bytes, footer), footer - 16);
    put_u32_at(bytes, footer + 4, crc32c({bytes.data() + footer - directory, std::size_t(directory)}));
    put_u32_at(bytes, footer + 8, crc32c({bytes.data() + footer, 8}, crc32c({bytes.data(), 16})));
}

std::vector<std::uint8_t> varint(std::uint64_t value) {
    ByteWriter out;
    detail::put_varint(out, value);
    return out.take();
}
std::vector<std::uint8_t> text(std::string_view characters) { return {characters.begin(), characters.end()}; }
std::vector<std::uint8_t> u32(std::uint32_t value) {
    ByteWriter out;
    out.put_u32(value);
    return out.take();
}

// The directory of small_container(), field by field, as docs/format/container.md lists them.
using Fields = std::vector<std::pair<std::string, std::vector<std::uint8_t>>>;
Fields small_directory_fields(const ContainerReader& reader) {
    const std::string metadata(reader.file_metadata());
    return {{"codec count", varint(1)},
            {"method count", varint(2)},
            {"tensor count", varint(2)},
            {"file metadata size", varint(metadata.size())},
            {"file metadata", text(metadata)},
            {"method 0 size", varint(3)},
            {"method 0", text("nwc")},
            {"method 1 size", varint(3)},
            {"method 1", text("raw")},
            {"codec 0 size", varint(9)},
            {"codec 0 crc", u32(reader.codec_entry(0).crc)},
            {"w base", varint(0)},
            {"w prefix", varint(0)},
            {"w suffix", varint(0)},
            {"w middle size", varint(1)},
            {"w middle", text("w")},
            {"w type", {0x21}},  // F16, rank 2
            {"w dim 0", varint(4)},
            {"w dim 1", varint(8)},
            {"w method", varint(0)},
            {"w codec", varint(1)},
            {"w metadata size", varint(3)},
            {"w payload size", varint(4)},
            {"w segments", varint(2)},
            {"w segment 0", varint(3)},
            {"w crc", u32(reader.entry(0).crc)},
            {"norm base", varint(0)},
            {"norm prefix", varint(0)},
            {"norm suffix", varint(0)},
            {"norm middle size", varint(4)},
            {"norm middle", text("norm")},
            {"norm type", {0x10}},  // F32, rank 1
            {"norm dim 0", varint(3)},
            {"norm method", varint(1)},
            {"norm codec", varint(0)},
            {"norm metadata size", varint(0)},
            {"norm payload size", varint(12)},
            {"norm segments", varint(1)},
            {"norm crc", u32(reader.entry(1).crc)}};
}

// `original`'s header and regions with `fields` as the directory, and a footer that matches.
std::vector<std::uint8_t> with_directory(const std::vector<std::uint8_t>& original, const Fields& fields) {
    const std::size_t regions_end = original.size() - 16 - directory_size_of(original);
    std::vector<std::uint8_t> bytes(original.begin(), original.begin() + std::ptrdiff_t(regions_end));
    std::size_t directory = 0;
    for (const auto& field : fields) {
        bytes.insert(bytes.end(), field.second.begin(), field.second.end());
        directory += field.second.size();
    }
    const std::vector<std::uint8_t> footer = u32(std::uint32_t(directory));
    bytes.insert(bytes.end(), footer.begin(), footer.end());
    bytes.resize(bytes.size() + 8);
    bytes.insert(bytes.end(), std::begin(container_format::end_magic), std::end(container_format::end_magic));
    fix_crcs(bytes);
    return bytes;
}

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_test_container_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() { std::filesystem::remove_all(path); }
    int entries() const {
        int count = 0;
        for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(path)) ++count;
        return count;
    }
};

}  // namespace

TEST_CASE("container: many tensors round trip, and serialization is byte-identical on repeat", "[container]") {
    const Content content = many_tensors_content();
    const std::vector<ContainerTensor>& added = content.tensors;
    const ContainerWriter writer = many_tensors();
    const std::vector<std::uint8_t> bytes = writer.serialize();
    CHECK(writer.serialized_size() == bytes.size());
    CHECK(writer.serialize() == bytes);
    CHECK(many_tensors().serialize() == bytes);
    CHECK(writer.codec_count() == 3);
    CHECK(writer.tensor_count() == added.size());

    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    CHECK(reader.version() == 3);
    CHECK(reader.total_size() == bytes.size());
    CHECK(reader.file_metadata() == content.file_metadata);
    REQUIRE(reader.codec_count() == 3);
    for (std::size_t k = 0; k < 3; ++k) {
        const auto blob = reader.codec(k);
        CHECK(std::vector<std::uint8_t>(blob.begin(), blob.end()) == content.codecs[k]);
    }
    REQUIRE(reader.tensor_count() == added.size());
    int aligned = 0;
    for (std::size_t index = 0; index < added.size(); ++index) {
        const ContainerTensor& expected = added[index];
        INFO(expected.name);
        CHECK(reader.index_of(expected.name) == index);
        const ContainerEntry& entry = reader.entry(index);
        CHECK(entry.name == expected.name);
        CHECK(entry.original_dtype == expected.original_dtype);
        CHECK(entry.shape == expected.shape);
        CHECK(entry.method == expected.method);
        CHECK(entry.codec_index == expected.codec_index);
        // The layout rule: payloads of 64 KiB or more start at a multiple of 64, the rest are packed.
        if (entry.payload_size >= container_format::aligned_payload_bytes) {
            CHECK(entry.payload_offset % container_format::payload_alignment == 0);
            ++aligned;
        } else {
            CHECK(entry.payload_offset == entry.metadata_offset + entry.metadata_size);
        }
        if (index > 0) CHECK(entry.metadata_offset == reader.entry(index - 1).payload_offset + reader.entry(index - 1).payload_size);
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
    CHECK(aligned >= 3);
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

    // The empty container is valid too: header, a 4-byte directory, footer.
    const std::vector<std::uint8_t> empty = ContainerWriter().serialize();
    CHECK(empty.size() == 36);  // 16 + 4 + 16
    CHECK(ContainerReader::from_bytes(empty).tensor_count() == 0);
}

TEST_CASE("container: the streaming writer and the size-only layout agree with the in-memory writer", "[container]") {
    const Content content = many_tensors_content();
    const std::vector<std::uint8_t> bytes = many_tensors().serialize();
    TempDir temp;
    const auto path = temp.path / "streamed.nwc";
    {
        ContainerStreamWriter stream(path);
        ContainerLayout sizes;
        CHECK(stream.file_size() == sizes.file_size());
        for (const auto& codec : content.codecs) {
            CHECK(stream.add_codec(codec) == sizes.add_codec(codec.size()));
            CHECK(stream.file_size() == sizes.file_size());
        }
        CHECK(stream.add_codec(content.codecs[1]) == 1);  // deduplicated, as in memory
        stream.set_file_metadata(content.file_metadata);
        sizes.set_file_metadata(content.file_metadata);
        for (const ContainerTensor& tensor : content.tensors) {
            stream.add_tensor(tensor);
            // The size-only mode needs sizes alone: no bytes, no CRC.
            ContainerTensorInfo info{tensor.name, tensor.original_dtype, tensor.shape, tensor.method, tensor.codec_index, tensor.metadata.size(),
                                     tensor.payload.size(), tensor.segment_sizes};
            sizes.add_tensor(info);
            CHECK(stream.file_size() == sizes.file_size());
        }
        CHECK(sizes.file_size() == bytes.size());
        CHECK(!std::filesystem::exists(path));  // nothing at the target before commit
        stream.commit();
        CHECK(error_of([&] { stream.commit(); }) == errc::invalid_argument);
        CHECK(error_of([&] { stream.add_tensor(content.tensors[0]); }) == errc::invalid_argument);
    }
    CHECK(read_file(path) == bytes);
    CHECK(temp.entries() == 1);

    // The same rejections as in memory, and a rejected tensor changes nothing.
    ContainerStreamWriter stream(temp.path / "other.nwc");
    stream.add_codec({1, 2, 3});
    const ContainerTensor first{"w", dtype::f32, Shape{2}, "raw", -1, {}, std::vector<std::uint8_t>(8, 1), {}};
    ContainerTensor tensor = first;
    stream.add_tensor(tensor);
    CHECK(error_of([&] { stream.add_tensor(tensor); }) == errc::invalid_argument);  // twice
    CHECK(error_of([&] { stream.add_codec({4}); }) == errc::invalid_argument);      // a new codec after a tensor
    CHECK(stream.add_codec({1, 2, 3}) == 0);
    CHECK(error_of([&] { stream.add_tensor(ContainerTensorInfo::of(tensor), {}, {}); }) == errc::invalid_argument);  // sizes differ
    tensor.name = "v";
    stream.add_tensor(tensor);
    stream.commit();
    ContainerWriter memory;
    memory.add_codec({1, 2, 3});
    memory.add_tensor(first);
    memory.add_tensor(tensor);
    CHECK(read_file(temp.path / "other.nwc") == memory.serialize());
}

TEST_CASE("container: a name is coded against the same role a layer back", "[container]") {
    const char* roles[] = {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                           "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    ContainerWriter writer;
    std::vector<std::string> names;
    for (int layer = 0; layer < 12; ++layer)
        for (const char* role : roles) names.push_back("model.layers." + std::to_string(layer) + "." + role + ".weight");
    for (std::size_t k = 0; k < names.size(); ++k) {
        const std::vector<std::uint8_t> values{1, 2, 3, std::uint8_t(k)};
        writer.add_tensor(make_raw_tensor(names[k], dtype::u8, Shape{2, 2}, values));
    }
    const std::vector<std::uint8_t> bytes = writer.serialize();
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    const ContainerAccounting accounting = reader.accounting();
    REQUIRE(reader.tensor_count() == names.size());
    for (std::size_t k = 0; k < names.size(); ++k) {
        CHECK(reader.entry(k).name == names[k]);
        // From layer 1 on the base is 9 names back and the name costs 5 bytes (base, prefix, suffix,
        // middle size, the layer's last digit); the rest of the record is 12 (type, 2 dims, method,
        // codec, metadata and payload sizes, segments, CRC).
        if (k >= std::size(roles) && k < 10 * std::size(roles)) CHECK(accounting.tensors[k].directory == 17);
    }
}

TEST_CASE("container: the accounting covers every byte exactly once", "[container]") {
    for (const std::vector<std::uint8_t>& bytes : {many_tensors().serialize(), small_container(), ContainerWriter().serialize()}) {
        const ContainerReader reader = ContainerReader::from_bytes(bytes);
        const ContainerAccounting accounting = reader.accounting();
        CHECK(accounting.total() == bytes.size());
        CHECK(accounting.header_footer == 32);
        CHECK(accounting.directory == directory_size_of(bytes));
        CHECK(accounting.file_metadata == reader.file_metadata().size());
        REQUIRE(accounting.tensors.size() == reader.tensor_count());
        std::uint64_t records = 0, padding = 0;
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            const auto& tensor = accounting.tensors[index];
            CHECK(tensor.metadata == reader.entry(index).metadata_size);
            CHECK(tensor.payload == reader.entry(index).payload_size);
            CHECK(tensor.directory >= container_format::min_tensor_record_bytes);
            records += tensor.directory;
            padding += tensor.padding;
        }
        CHECK(padding == accounting.padding);
        CHECK(records < accounting.directory);
        // Marking each category's bytes covers the file with no byte twice.
        std::vector<int> cover(bytes.size(), 0);
        const auto mark = [&](std::uint64_t offset, std::uint64_t size) {
            for (std::uint64_t at = offset; at < offset + size; ++at) ++cover[std::size_t(at)];
        };
        mark(0, 16);
        mark(bytes.size() - 16 - accounting.directory, accounting.directory + 16);
        for (std::size_t k = 0; k < reader.codec_count(); ++k) mark(reader.codec_entry(k).offset, reader.codec_entry(k).size);
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            const ContainerEntry& entry = reader.entry(index);
            mark(entry.metadata_offset, entry.metadata_size + accounting.tensors[index].padding + entry.payload_size);
        }
        CHECK(std::count(cover.begin(), cover.end(), 1) == std::ptrdiff_t(bytes.size()));
    }
}

TEST_CASE("container: the worked example of docs/format/container.md, byte for byte", "[container]") {
    ContainerWriter writer;
    writer.add_codec({1, 2, 3, 4});
    writer.set_file_metadata(R"({"source_format":"llama2c"})");
    ContainerTensor coded{"w", dtype::f16, Shape{4, 8}, "nwc", 0, {0x0A, 0x14, 0x1E}, {}, {}};
    coded.add_segment(std::vector<std::uint8_t>{0xAA, 0xBB, 0xCC});
    coded.add_segment(std::vector<std::uint8_t>{0xDD});
    writer.add_tensor(coded);
    const Tensor<float> norm(Shape{2}, std::vector<float>{1.0f, 0.5f});
    writer.add_tensor(make_raw_tensor("norm", norm.view(), dtype::f32));
    const std::vector<std::uint8_t> expected = {
        0x89, 0x4e, 0x57, 0x43, 0x0d, 0x0a, 0x1a, 0x0a, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  //
        0x01, 0x02, 0x03, 0x04, 0x0a, 0x14, 0x1e, 0xaa, 0xbb, 0xcc, 0xdd, 0x00, 0x00, 0x80, 0x3f, 0x00,  //
        0x00, 0x00, 0x3f, 0x01, 0x02, 0x02, 0x1b, 0x7b, 0x22, 0x73, 0x6f, 0x75, 0x72, 0x63, 0x65, 0x5f,  //
        0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x22, 0x3a, 0x22, 0x6c, 0x6c, 0x61, 0x6d, 0x61, 0x32, 0x63,  //
        0x22, 0x7d, 0x03, 0x6e, 0x77, 0x63, 0x03, 0x72, 0x61, 0x77, 0x04, 0xf4, 0x8c, 0x30, 0x29, 0x00,  //
        0x00, 0x00, 0x01, 0x77, 0x21, 0x04, 0x08, 0x00, 0x01, 0x03, 0x04, 0x02, 0x03, 0x14, 0x63, 0x67,  //
        0x32, 0x00, 0x00, 0x00, 0x04, 0x6e, 0x6f, 0x72, 0x6d, 0x10, 0x02, 0x01, 0x00, 0x00, 0x08, 0x01,  //
        0x98, 0xa1, 0x4b, 0x07, 0x51, 0x00, 0x00, 0x00, 0xc6, 0xf9, 0x3f, 0x0a, 0x74, 0xf4, 0xd1, 0x45,  //
        0x4e, 0x57, 0x43, 0x1a};
    CHECK(writer.serialize() == expected);
    CHECK(crc32c(std::vector<std::uint8_t>{0x0A, 0x14, 0x1E, 0xAA, 0xBB, 0xCC, 0xDD}) == 0x32676314u);
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
    const ContainerReader reader = ContainerReader::from_bytes(bytes);  // opening reads no region
    for (std::size_t index = 0; index < reader.tensor_count(); ++index)
        if (index != victim) CHECK_NOTHROW(reader.payload(index));
    std::string message;
    CHECK(error_of([&] { (void)reader.payload(victim); }, &message) == errc::corrupt);
    CHECK(message.find("tensor '" + entry.name + "'") != std::string::npos);
    CHECK(message.find(std::to_string(entry.payload_offset)) != std::string::npos);
    CHECK(error_of([&] { (void)reader.metadata(victim); }) == errc::corrupt);  // one CRC covers both
    CHECK(error_of([&] { (void)reader.segment(victim, 0); }) == errc::corrupt);
    CHECK_NOTHROW(reader.codec(0));
    CHECK(error_of([&] { (void)reader.codec(1); }) == errc::corrupt);
    CHECK(error_of([&] { reader.verify(); }) == errc::corrupt);

    // Padding is part of the file too: verify() insists on zeros.
    std::vector<std::uint8_t> padded = writer.serialize();
    const ContainerReader layout = ContainerReader::from_bytes(padded);
    std::uint64_t gap = 0;
    for (std::size_t index = 0; index < layout.tensor_count() && gap == 0; ++index)
        if (layout.accounting().tensors[index].padding > 0) gap = layout.entry(index).payload_offset - 1;
    REQUIRE(gap != 0);
    padded[std::size_t(gap)] = 1;
    CHECK_NOTHROW(read_everything(ContainerReader::from_bytes(std::vector<std::uint8_t>(writer.serialize()))));
    std::string padding_message;
    CHECK(error_of([&] { ContainerReader::from_bytes(padded).verify(); }, &padding_message) == errc::corrupt);
    CHECK(padding_message.find("padding byte at offset " + std::to_string(gap)) != std::string::npos);
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
    CHECK(cuts[errc::truncated] == int(bytes.size()));
    // Bytes appended after the footer are caught too.
    std::vector<std::uint8_t> longer = bytes;
    longer.push_back(0);
    CHECK(error_of([&] { (void)ContainerReader::from_bytes(longer); }) == errc::truncated);
}

TEST_CASE("container: version 1 files are refused, naming the version", "[container]") {
    // The first 40 bytes of the version-1 worked example (magic, version 1, flags, sizes, CRCs).
    std::vector<std::uint8_t> version1 = {0x89, 0x4e, 0x57, 0x43, 0x0d, 0x0a, 0x1a, 0x0a, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
                                          0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe0, 0x00, 0x00, 0x00,
                                          0x00, 0x00, 0x00, 0x00, 0x70, 0x9d, 0x11, 0x42, 0xc0, 0x1a, 0xa2, 0xb5};
    version1.resize(520);
    std::string message;
    CHECK(error_of([&] { (void)ContainerReader::from_bytes(version1); }, &message) == errc::unsupported);
    CHECK(message.find("container version 1") != std::string::npos);
    CHECK(message.find("reads version 3") != std::string::npos);
}

TEST_CASE("container: hostile directories with valid CRCs give clean errors", "[container][hostile]") {
    const std::vector<std::uint8_t> bytes = small_container();
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    const Fields fields = small_directory_fields(reader);
    REQUIRE(with_directory(bytes, fields) == bytes);  // the field list is the directory, byte for byte

    struct Case {
        const char* what;
        std::map<std::string, std::vector<std::uint8_t>> replace;
        errc expected;
    };
    const std::vector<std::uint8_t> overlong_4 = {0x84, 0x00};
    const std::vector<std::uint8_t> eleven_bytes = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    const std::vector<std::uint8_t> ten_bytes_over = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02};
    const std::vector<Case> cases = {
        {"2^32 codecs", {{"codec count", varint(1ull << 32)}}, errc::limit},
        {"codec records past the directory", {{"codec count", varint(1000)}}, errc::truncated},
        {"257 methods", {{"method count", varint(257)}}, errc::limit},
        {"method records past the directory", {{"method count", varint(200)}}, errc::truncated},
        {"2^20 + 1 tensors", {{"tensor count", varint((1u << 20) + 1)}}, errc::limit},
        {"tensor records past the directory", {{"tensor count", varint(1000)}}, errc::truncated},
        {"3 tensors", {{"tensor count", varint(3)}}, errc::truncated},
        {"1 tensor", {{"tensor count", varint(1)}}, errc::corrupt},
        {"file metadata of 2^40 bytes", {{"file metadata size", varint(1ull << 40)}}, errc::limit},
        {"file metadata past the directory", {{"file metadata size", varint(10000)}}, errc::truncated},
        {"count with an overlong varint", {{"codec count", {0x81, 0x00}}}, errc::corrupt},
        {"varint of 11 bytes", {{"codec count", eleven_bytes}}, errc::corrupt},
        {"varint over 64 bits", {{"codec count", ten_bytes_over}}, errc::corrupt},
        {"method with capitals", {{"method 0", text("NWC")}}, errc::corrupt},
        {"method of 0 bytes", {{"method 0 size", varint(0)}, {"method 0", {}}}, errc::corrupt},
        {"method of 33 bytes", {{"method 0 size", varint(33)}}, errc::corrupt},
        {"method listed twice", {{"method 1", text("nwc")}}, errc::corrupt},
        {"method never used", {{"method count", varint(3)}, {"method 1", {'r', 'a', 'w', 3, 'r', 't', 'n'}}}, errc::corrupt},
        {"codec larger by one", {{"codec 0 size", varint(10)}}, errc::corrupt},
        {"codec smaller by one", {{"codec 0 size", varint(8)}}, errc::corrupt},
        {"codec of 2^62 bytes", {{"codec 0 size", varint(1ull << 62)}}, errc::corrupt},
        {"first name with a base", {{"w base", varint(1)}}, errc::corrupt},
        {"name based on one not yet read", {{"norm base", varint(1)}}, errc::corrupt},
        {"name base of 2^40", {{"norm base", varint(1ull << 40)}}, errc::corrupt},
        {"first name sharing a prefix byte", {{"w prefix", varint(1)}}, errc::corrupt},
        {"first name sharing a suffix byte", {{"w suffix", varint(1)}}, errc::corrupt},
        {"name sharing more than the previous has", {{"norm prefix", varint(2)}}, errc::corrupt},
        {"prefix and suffix overlapping", {{"norm prefix", varint(1)}, {"norm suffix", varint(1)}}, errc::corrupt},
        {"name not sharing the prefix it could", {{"norm middle size", varint(2)}, {"norm middle", text("wx")}}, errc::corrupt},
        {"name not sharing the suffix it could", {{"norm middle size", varint(2)}, {"norm middle", text("xw")}}, errc::corrupt},
        {"name of 4097 bytes", {{"w middle size", varint(4097)}}, errc::corrupt},
        {"name past the directory", {{"w middle size", varint(4000)}}, errc::truncated},
        {"empty name", {{"w middle size", varint(0)}, {"w middle", {}}}, errc::corrupt},
        {"name with a control character", {{"w middle", {0x07}}}, errc::corrupt},
        {"name that is not UTF-8", {{"w middle", {0xC0}}}, errc::corrupt},
        {"the same name twice", {{"norm prefix", varint(1)}, {"norm middle size", varint(0)}, {"norm middle", {}}}, errc::corrupt},
        {"unknown dtype", {{"w type", {0x2F}}}, errc::unsupported},
        {"rank 9", {{"w type", {0x91}}}, errc::unsupported},
        {"dimension of 2^63", {{"w dim 0", varint(1ull << 63)}}, errc::corrupt},
        {"dimension product overflows", {{"w dim 0", varint(1ull << 62)}}, errc::limit},
        {"more than 2^40 elements", {{"w dim 0", varint(1ull << 35)}, {"w dim 1", varint(1ull << 6)}}, errc::limit},
        {"dimension with an overlong varint", {{"w dim 0", overlong_4}}, errc::corrupt},
        {"method index 2", {{"w method", varint(2)}}, errc::corrupt},
        {"method 1 before method 0", {{"w method", varint(1)}}, errc::corrupt},
        {"codec reference 2", {{"w codec", varint(2)}}, errc::corrupt},
        {"raw tensor with a codec", {{"norm codec", varint(1)}}, errc::corrupt},
        {"raw payload of the wrong size", {{"norm payload size", varint(11)}, {"norm metadata size", varint(1)}}, errc::corrupt},
        {"metadata larger by one", {{"w metadata size", varint(4)}}, errc::corrupt},
        {"payload of 2^40 bytes", {{"w payload size", varint(1ull << 40)}}, errc::corrupt},
        {"regions end before the directory", {{"norm payload size", varint(8)}, {"norm dim 0", varint(2)}}, errc::corrupt},
        {"no segments", {{"w segments", varint(0)}, {"w segment 0", {}}}, errc::corrupt},
        {"2^26 + 1 segments", {{"w segments", varint((1u << 26) + 1)}}, errc::limit},
        {"segments past the directory", {{"w segments", varint(1000)}}, errc::truncated},
        {"segment past the payload", {{"w segment 0", varint(5)}}, errc::corrupt},
        {"a trailing directory byte", {{"norm crc", {0, 0, 0, 0, 0}}}, errc::corrupt},
    };
    for (const Case& hostile : cases) {
        INFO(hostile.what);
        Fields changed = fields;
        for (const auto& [name, value] : hostile.replace) {
            const auto field = std::find_if(changed.begin(), changed.end(), [&name = name](const auto& f) { return f.first == name; });
            REQUIRE(field != changed.end());
            field->second = value;
        }
        std::string message;
        const auto id = error_of([&] { read_everything(ContainerReader::from_bytes(with_directory(bytes, changed))); }, &message);
        INFO(message);
        REQUIRE(id.has_value());
        CHECK(*id == hostile.expected);
    }

    // The header and the footer.
    struct Edit {
        const char* what;
        std::size_t at;  // from the end when >= bytes.size()
        std::uint32_t value;
        errc expected;
    };
    const std::size_t footer = bytes.size() - 16;
    for (const Edit& edit : std::vector<Edit>{{"version 2", 8, 2, errc::unsupported},
                                              {"version 4", 8, 4, errc::unsupported},
                                              {"unknown flags", 12, 1, errc::unsupported},
                                              {"directory of 2^31 bytes", footer, 1u << 31, errc::limit},
                                              {"directory larger than the file", footer, std::uint32_t(bytes.size()), errc::corrupt},
                                              {"directory reaching into the header", footer, std::uint32_t(footer - 15), errc::corrupt},
                                              {"directory smaller by one", footer, std::uint32_t(directory_size_of(bytes) - 1), errc::truncated},
                                              {"end marker", footer + 12, 0, errc::truncated}}) {
        INFO(edit.what);
        std::vector<std::uint8_t> changed = bytes;
        put_u32_at(changed, edit.at, edit.value);
        fix_crcs(changed);
        CHECK(error_of([&] { read_everything(ContainerReader::from_bytes(changed)); }) == edit.expected);
    }
    std::vector<std::uint8_t> bad_magic = bytes;
    bad_magic[1] = 'X';
    CHECK(error_of([&] { (void)ContainerReader::from_bytes(bad_magic); }) == errc::corrupt);
    CHECK(error_of([] { (void)ContainerReader::open("/nonexistent/model.nwc"); }) == errc::io);

    // Random damage anywhere in the directory and footer with the CRCs fixed up: valid or an nwc::error.
    const std::uint64_t directory_size = directory_size_of(bytes);
    Random random(99);
    std::map<std::string, int> outcomes;
    for (int round = 0; round < 20000; ++round) {
        std::vector<std::uint8_t> changed = bytes;
        const int edits = 1 + int(random.below(3));
        for (int edit = 0; edit < edits; ++edit) changed[footer - directory_size + std::size_t(random.below(directory_size + 4))] = std::uint8_t(random.below(256));
        fix_crcs(changed);
        const auto id = error_of([&] { read_everything(ContainerReader::from_bytes(changed)); });
        ++outcomes[id ? std::string(to_string(*id)) : "accepted"];
    }
    for (const auto& [outcome, count] : outcomes) std::printf("container directory damage with fixed CRCs (20000 rounds): %s %d\n", outcome.c_str(), count);
}

TEST_CASE("container: a layout other than the canonical one is rejected", "[container][hostile]") {
    // One aligned payload (>= 64 KiB) after a small region, and a packed one after it.
    ContainerWriter writer;
    writer.add_tensor(ContainerTensor{"a", dtype::f32, Shape{3}, "rtn", -1, {1, 2, 3}, std::vector<std::uint8_t>(65536, 7), {}});
    writer.add_tensor(ContainerTensor{"b", dtype::f32, Shape{3}, "rtn", -1, {4}, std::vector<std::uint8_t>(65535, 8), {}});
    const std::vector<std::uint8_t> bytes = writer.serialize();
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    REQUIRE(reader.entry(0).payload_offset == 64);  // 16 + 3 = 19, aligned up to 64
    REQUIRE(reader.entry(1).payload_offset == 64 + 65536 + 1);  // 65535 bytes: packed
    read_everything(reader);

    const std::size_t directory_at = bytes.size() - 16 - directory_size_of(bytes);
    const auto spliced = [&](std::size_t at, std::ptrdiff_t change) {
        std::vector<std::uint8_t> changed = bytes;
        if (change < 0) changed.erase(changed.begin() + std::ptrdiff_t(at), changed.begin() + std::ptrdiff_t(at) - change);
        else changed.insert(changed.begin() + std::ptrdiff_t(at), std::size_t(change), std::uint8_t(0));
        return changed;
    };
    // Padding removed, padding added before a packed region, the directory moved: the directory
    // still describes the canonical layout, so the regions no longer end where it starts.
    for (const auto& [what, changed] : std::vector<std::pair<std::string, std::vector<std::uint8_t>>>{
             {"no padding before the aligned payload", spliced(19, -45)},
             {"64 more bytes of padding", spliced(19, 64)},
             {"padding before a packed payload", spliced(64 + 65536 + 1, 3)},
             {"a gap before the directory", spliced(directory_at, 1)}}) {
        INFO(what);
        std::string message;
        CHECK(error_of([&changed = changed] { read_everything(ContainerReader::from_bytes(changed)); }, &message) == errc::corrupt);
        CHECK(message.find("directory starts at offset") != std::string::npos);
    }
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
    CHECK(rejected([](ContainerTensor& t) { t.name = std::string(4097, 'x'); }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.name = "a\nb"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.name = "bad\xc0\x80"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.method = "NWC"; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.method = std::string(33, 'a'); }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.codec_index = 1; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.codec_index = -2; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.method = "raw"; }) == errc::invalid_argument);  // raw with a codec
    CHECK(rejected([](ContainerTensor& t) { t.method = "raw", t.codec_index = -1; }) == errc::invalid_argument);  // 0 bytes for 4 floats
    CHECK(rejected([](ContainerTensor& t) { t.payload = {1, 2, 3}, t.segment_sizes = {1, 1}; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.payload = {1, 2, 3}, t.segment_sizes = {2, 2}; }) == errc::invalid_argument);
    CHECK(rejected([](ContainerTensor& t) { t.shape = Shape{1 << 21, 1 << 20}; }) == errc::limit);
    CHECK(error_of([&] { writer.add_codec({4, 5}); }) == errc::invalid_argument);  // codecs come before the tensors
    CHECK(error_of([&] { writer.set_file_metadata(std::string(container_format::max_file_metadata_bytes + 1, 'x')); }) == errc::limit);
    CHECK(writer.tensor_count() == 1);
    CHECK(writer.codec_count() == 1);
    CHECK_NOTHROW(ContainerReader::from_bytes(writer.serialize()).verify());
    ContainerLayout sizes;
    CHECK(error_of([&] { sizes.add_tensor({"big", dtype::u8, Shape{8}, "rtn", -1, 1ull << 62, 1, {}}); }) == errc::limit);
    CHECK(sizes.tensor_count() == 0);
}

TEST_CASE("container: a failed write leaves the existing file and no temporary", "[container]") {
    TempDir temp;
    const auto target = temp.path / "model.nwc";
    const std::vector<std::uint8_t> good = small_container();
    write_file_atomic(target, good);
    const ContainerWriter big = many_tensors();
    const Content content = many_tensors_content();
    for (std::uint64_t limit : {std::uint64_t(0), std::uint64_t(15), std::uint64_t(1000), big.serialized_size() - 17, big.serialized_size() - 1}) {
        INFO("limit " << limit);
        CHECK(error_of([&] { big.write(target, limit); }) == errc::io);
        CHECK(read_file(target) == good);
        CHECK(temp.entries() == 1);
        // Streamed: the write that crosses the limit fails, the writer refuses to go on, and
        // dropping it removes its temporary.
        const auto id = error_of([&] {
            ContainerStreamWriter stream(target, limit);
            try {
                add_content(stream, content);
            } catch (const nwc::error&) {
                CHECK(error_of([&] { stream.add_tensor(content.tensors.back()); }) == errc::io);
                CHECK(error_of([&] { stream.commit(); }) == errc::io);
                throw;
            }
            stream.commit();
        });
        CHECK(id == errc::io);
        CHECK(read_file(target) == good);
        CHECK(temp.entries() == 1);
    }
    {
        ContainerStreamWriter abandoned(target);
        add_content(abandoned, content);
        CHECK(temp.entries() == 2);  // the target and the temporary
    }
    CHECK(temp.entries() == 1);
    CHECK(read_file(target) == good);
    big.write(target, big.serialized_size());
    CHECK(ContainerReader::open(target).tensor_count() == big.tensor_count());
    ContainerStreamWriter exact(target, big.serialized_size());
    add_content(exact, content);
    exact.commit();
    CHECK(read_file(target) == big.serialize());
}

}  // namespace nwc_test_container
