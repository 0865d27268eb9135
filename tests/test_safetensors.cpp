// safetensors: round trips on the real model files, deterministic writing, and hostile headers
// (every one an nwc::error with the right id, never a crash).
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <unistd.h>

#include "nwc/core/random.hpp"
#include "nwc/io/safetensors.hpp"
#include "requirements.hpp"

namespace nwc_test_safetensors {

using namespace nwc;

namespace {

// The id of the nwc::error `body` throws, or nothing; any other exception escapes and fails the test.
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

std::vector<std::uint8_t> bytes_of(const std::string& text) { return {text.begin(), text.end()}; }

// 8-byte length, the JSON text as given, then the buffer.
std::vector<std::uint8_t> make_file(const std::string& json, const std::vector<std::uint8_t>& buffer, std::optional<std::uint64_t> length = {}) {
    ByteWriter out;
    out.put_u64(length.value_or(json.size()));
    out.put_bytes(bytes_of(json));
    out.put_bytes(buffer);
    return out.take();
}

// A small valid file: F32 [2,2], F16 [3], U8 [5], I32 [] and metadata.
std::vector<std::uint8_t> small_file() {
    SafetensorsWriter writer;
    Tensor<float> matrix(Shape{2, 2}, std::vector<float>{1.0f, -2.5f, 3.25f, 1e-3f});
    writer.add_float32("layer.weight", matrix.view(), dtype::f32);
    Tensor<float> vector(Shape{3}, std::vector<float>{0.5f, 65504.0f, -0.0f});
    writer.add_float32("layer.bias", vector.view(), dtype::f16);
    writer.add_raw("ids", dtype::u8, Shape{5}, std::vector<std::uint8_t>{1, 2, 3, 4, 5});
    writer.add_raw("count", dtype::i32, Shape{}, std::vector<std::uint8_t>{7, 0, 0, 0});
    writer.set_metadata("format", "pt");
    return writer.serialize();
}

void check_same_tensors(const SafetensorsFile& a, const SafetensorsFile& b) {
    REQUIRE(a.tensor_count() == b.tensor_count());
    for (std::size_t i = 0; i < a.tensor_count(); ++i) {
        const auto& left = a.tensors()[i];
        const auto& right = b.tensors()[i];
        REQUIRE(left.name == right.name);
        REQUIRE(left.type == right.type);
        REQUIRE(left.shape == right.shape);
        const auto left_bytes = a.raw_bytes(left.name);
        const auto right_bytes = b.raw_bytes(right.name);
        REQUIRE(left_bytes.size() == right_bytes.size());
        REQUIRE(std::memcmp(left_bytes.data(), right_bytes.data(), left_bytes.size()) == 0);
    }
    CHECK(a.metadata() == b.metadata());
}

SafetensorsWriter copy_of(const SafetensorsFile& file) {
    SafetensorsWriter writer;
    for (const auto& info : file.tensors()) writer.add_raw(info.name, info.type, info.shape, file.raw_bytes(info.name));
    for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
    return writer;
}

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_test_safetensors_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST_CASE("safetensors: the real model files open, round trip and rewrite byte-identically", "[safetensors][data]") {
    struct Expected {
        const char* file;
        std::size_t tensors;
        dtype type;
    };
    for (const Expected expected : {Expected{"gptneo125m_attn.safetensors", 48, dtype::bf16}, Expected{"mt3.safetensors", 147, dtype::f16}}) {
        const auto path = nwc::testing::data_path(expected.file);
        INFO(expected.file);
        const SafetensorsFile original = SafetensorsFile::open(path);
        REQUIRE(original.tensor_count() == expected.tensors);
        CHECK(original.file_size() == std::filesystem::file_size(path));
        CHECK(!original.metadata().empty());
        for (const auto& info : original.tensors()) {
            REQUIRE(info.type == expected.type);
            REQUIRE(info.shape.rank() == 2);
        }
        const auto& first = original.tensors().front();
        const Tensor<float> values = original.read_float32(first.name);
        const auto raw = original.raw_bytes(first.name);
        REQUIRE(values.numel() == first.shape.numel());
        for (std::int64_t i = 0; i < values.numel(); i += 997) {
            std::uint16_t bits;
            std::memcpy(&bits, raw.data() + 2 * i, 2);
            REQUIRE(values[i] == (expected.type == dtype::bf16 ? to_float(bfloat16{bits}) : to_float(half{bits})));
        }

        const std::vector<std::uint8_t> written = copy_of(original).serialize();
        const SafetensorsFile reread = SafetensorsFile::from_bytes(written);
        check_same_tensors(original, reread);
        CHECK(reread.data_offset() % 8 == 0);
        CHECK(copy_of(reread).serialize() == written);

        TempDir temp;
        copy_of(reread).write(temp.path / "copy.safetensors");
        check_same_tensors(original, SafetensorsFile::open(temp.path / "copy.safetensors"));
        CHECK(read_file(temp.path / "copy.safetensors") == written);
    }
}

TEST_CASE("safetensors: writer output is deterministic, aligned and independent of insertion order", "[safetensors]") {
    const std::vector<std::uint8_t> bytes = small_file();
    const SafetensorsFile file = SafetensorsFile::from_bytes(bytes);
    CHECK(file.data_offset() % 8 == 0);
    REQUIRE(file.tensor_count() == 4);
    CHECK(file.tensors()[0].name == "count");  // sorted by name
    CHECK(file.metadata().at("format") == "pt");
    for (const auto& info : file.tensors()) CHECK(info.data_begin % dtype_size(info.type) == 0);
    CHECK(file.read_float32("layer.weight").values() == std::vector<float>{1.0f, -2.5f, 3.25f, 1e-3f});
    const Tensor<float> bias = file.read_float32("layer.bias");
    CHECK(bias[0] == 0.5f);
    CHECK(bias[1] == 65504.0f);
    CHECK(std::signbit(bias[2]));
    const auto ids = file.raw_bytes("ids");
    CHECK(std::vector<std::uint8_t>(ids.begin(), ids.end()) == std::vector<std::uint8_t>{1, 2, 3, 4, 5});
    CHECK(file.info("count").shape.rank() == 0);
    CHECK(error_of([&] { (void)file.read_float32("ids"); }) == errc::unsupported);
    CHECK(error_of([&] { (void)file.raw_bytes("missing"); }) == errc::invalid_argument);
    CHECK(file.find("missing") == nullptr);

    // Same content added in another order: same bytes.
    SafetensorsWriter reversed;
    for (auto it = file.tensors().rbegin(); it != file.tensors().rend(); ++it) reversed.add_raw(it->name, it->type, it->shape, file.raw_bytes(it->name));
    reversed.set_metadata("format", "pt");
    CHECK(reversed.serialize() == bytes);
    CHECK(reversed.serialized_size() == bytes.size());

    // No tensors at all is a valid file.
    const SafetensorsFile empty = SafetensorsFile::from_bytes(SafetensorsWriter().serialize());
    CHECK(empty.tensor_count() == 0);
    CHECK(empty.file_size() == 16);
}

TEST_CASE("safetensors: writer rejects what the format cannot hold", "[safetensors]") {
    SafetensorsWriter writer;
    writer.add_raw("a", dtype::u8, Shape{2}, std::vector<std::uint8_t>{1, 2});
    CHECK(error_of([&] { writer.add_raw("a", dtype::u8, Shape{2}, std::vector<std::uint8_t>{1, 2}); }) == errc::invalid_argument);
    CHECK(error_of([&] { writer.add_raw("__metadata__", dtype::u8, Shape{1}, std::vector<std::uint8_t>{1}); }) == errc::invalid_argument);
    CHECK(error_of([&] { writer.add_raw("b", dtype::f32, Shape{2}, std::vector<std::uint8_t>{1, 2}); }) == errc::invalid_argument);
    CHECK(error_of([&] { writer.add_float32("c", Tensor<float>(Shape{2}).view(), dtype::i32); }) == errc::invalid_argument);
    writer.add_raw("bad\xff name", dtype::u8, Shape{1}, std::vector<std::uint8_t>{1});
    CHECK(error_of([&] { (void)writer.serialize(); }) == errc::invalid_argument);
}

TEST_CASE("safetensors: hostile headers give the right nwc::error", "[safetensors][hostile]") {
    const std::vector<std::uint8_t> four(4, 0);
    const std::string good_entry = R"("t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})";
    struct Case {
        const char* what;
        std::vector<std::uint8_t> file;
        errc expected;
        const char* mentions;
    };
    const std::vector<Case> cases = {
        {"empty file", {}, errc::truncated, "too short"},
        {"7 bytes", std::vector<std::uint8_t>(7, 0), errc::truncated, "too short"},
        {"N = 2^64 - 1", make_file("{}", {}, UINT64_MAX), errc::limit, "exceeds the limit"},
        {"N just over the limit", make_file("{}", {}, safetensors_max_header_bytes + 1), errc::limit, "exceeds the limit"},
        {"N past the end of the file", make_file("{}", {}, 3), errc::truncated, "only 2 bytes"},
        {"N = 0", make_file("", {}), errc::corrupt, "'{'"},
        {"header is an array", make_file("[1, 2]", {}), errc::corrupt, "'{'"},
        {"unterminated JSON", make_file("{\"t\": {", {}), errc::corrupt, "not valid JSON"},
        {"garbage after JSON", make_file("{} x", {}), errc::corrupt, "not valid JSON"},
        {"NUL padding", make_file(std::string("{}\0\0", 4), {}), errc::corrupt, "not valid JSON"},
        {"invalid UTF-8", make_file("{\"\xff\": 1}", {}), errc::corrupt, "not valid JSON"},
        {"entry is not an object", make_file(R"({"t": [1]})", {}), errc::corrupt, "tensor 't'"},
        {"missing dtype", make_file(R"({"t": {"shape": [1], "data_offsets": [0, 4]}})", four), errc::corrupt, "missing \"dtype\""},
        {"missing shape", make_file(R"({"t": {"dtype": "F32", "data_offsets": [0, 4]}})", four), errc::corrupt, "missing \"shape\""},
        {"missing offsets", make_file(R"({"t": {"dtype": "F32", "shape": [1]}})", four), errc::corrupt, "missing \"data_offsets\""},
        {"dtype not a string", make_file(R"({"t": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}})", four), errc::corrupt, "\"dtype\" must be a string"},
        {"unknown dtype", make_file(R"({"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", std::vector<std::uint8_t>(8)), errc::unsupported, "F64"},
        {"shape not an array", make_file(R"({"t": {"dtype": "F32", "shape": 3, "data_offsets": [0, 4]}})", four), errc::corrupt, "\"shape\" must be"},
        {"dimension is a string", make_file(R"({"t": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", four), errc::corrupt, "unsigned integer"},
        {"dimension is a float", make_file(R"({"t": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}})", four), errc::corrupt, "unsigned integer"},
        {"negative dimension", make_file(R"({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", four), errc::corrupt, "negative"},
        {"dimension past int64", make_file(R"({"t": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 4]}})", four), errc::limit, "too large"},
        {"dimension past uint64", make_file(R"({"t": {"dtype": "F32", "shape": [18446744073709551616], "data_offsets": [0, 4]}})", four), errc::corrupt, "unsigned integer"},
        {"shape product overflows", make_file(R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", four), errc::limit, "shape needs"},
        {"overflow only through the element size", make_file(R"({"t": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 4]}})", four), errc::limit, "shape needs"},
        {"rank 5", make_file(R"({"t": {"dtype": "U8", "shape": [1,1,1,1,1], "data_offsets": [0, 1]}})", {1}), errc::unsupported, "rank 5"},
        {"offsets with 3 numbers", make_file(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", four), errc::corrupt, "[begin, end]"},
        {"offsets not numbers", make_file(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}})", four), errc::corrupt, "data_offsets[0]"},
        {"negative offset", make_file(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", four), errc::corrupt, "negative"},
        {"offsets backwards", make_file(R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})", four), errc::corrupt, "backwards"},
        {"end past the buffer", make_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", four), errc::truncated, "buffer has only 4"},
        {"end near 2^64", make_file(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 18446744073709551615]}})", four), errc::truncated, "buffer has only"},
        {"bytes do not match the shape", make_file(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", four), errc::corrupt, "needs 8"},
        {"overlap", make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", std::vector<std::uint8_t>(8)), errc::corrupt, "overlaps"},
        {"aliasing (same range twice)", make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", four), errc::corrupt, "overlaps"},
        {"gap", make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", std::vector<std::uint8_t>(8)), errc::corrupt, "belong to no tensor"},
        {"trailing bytes", make_file("{" + good_entry + "}", std::vector<std::uint8_t>(6)), errc::corrupt, "trailing bytes"},
        {"duplicate tensor", make_file("{" + good_entry + ", " + good_entry + "}", four), errc::corrupt, "twice"},
        {"duplicate field", make_file(R"({"t": {"dtype": "F32", "dtype": "U8", "shape": [1], "data_offsets": [0, 4]}})", four), errc::corrupt, "twice"},
        {"deep nesting", make_file("{\"t\": {\"shape\": " + std::string(100000, '[') + std::string(100000, ']') + "}}", {}), errc::corrupt, "nests deeper"},
        {"entry with an object field", make_file(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": {}}})", four), errc::corrupt, "nests deeper"},
        {"shape of 65 dimensions", make_file([] { std::string text = "{\"t\": {\"shape\": [1"; for (int i = 1; i < 65; ++i) text += ",1"; return text + "]}}"; }(), four), errc::corrupt, "more than 64"},
        {"65 fields", make_file([] { std::string text = "{\"t\": {"; for (int i = 0; i < 65; ++i) text += "\"f" + std::to_string(i) + "\": 0, "; return text + "\"z\": 0}}"; }(), four), errc::corrupt, "more than 64 fields"},
        {"50000 ones in an array entry", make_file("{\"t\": [" + std::string(50000, '1') + "]}", four), errc::corrupt, "found an array"},
        {"metadata not an object", make_file(R"({"__metadata__": "x"})", {}), errc::corrupt, "__metadata__"},
        {"metadata value not a string", make_file(R"({"__metadata__": {"a": 1}})", {}), errc::corrupt, "'a'"},
    };
    for (const Case& hostile : cases) {
        INFO(hostile.what);
        std::string message;
        const auto id = error_of([&] { (void)SafetensorsFile::from_bytes(hostile.file); }, &message);
        INFO(message);
        REQUIRE(id.has_value());
        CHECK(*id == hostile.expected);
        CHECK(message.find(hostile.mentions) != std::string::npos);
    }
    // Byte offsets are reported as file offsets.
    std::string message;
    (void)error_of([&] { (void)SafetensorsFile::from_bytes(make_file("{} x", {})); }, &message);
    CHECK(message.find("file offset 11") != std::string::npos);
    // Names from the file reach messages with control bytes escaped (no terminal escape sequences).
    (void)error_of([&] { (void)SafetensorsFile::from_bytes(make_file(R"({"evil\u001b[2J": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", four)); }, &message);
    CHECK(message.find("tensor 'evil\\x1b[2J'") != std::string::npos);
    CHECK(message.find('\x1b') == std::string::npos);
    // Padding with spaces, which the format allows, is fine; so is an empty tensor anywhere.
    CHECK_NOTHROW(SafetensorsFile::from_bytes(make_file("{" + good_entry + "}   ", four)));
    CHECK_NOTHROW(SafetensorsFile::from_bytes(
        make_file(R"({"e": {"dtype": "BF16", "shape": [0, 3], "data_offsets": [4, 4]}, )" + good_entry + "}", four)));
    CHECK(error_of([] { (void)SafetensorsFile::open("/nonexistent/file.safetensors"); }) == errc::io);
}

TEST_CASE("safetensors: truncation at every length and random corruption never crash", "[safetensors][hostile]") {
    const std::vector<std::uint8_t> file = small_file();
    std::map<errc, int> truncation_outcomes;
    for (std::size_t length = 0; length < file.size(); ++length) {
        const auto id = error_of([&] { (void)SafetensorsFile::from_bytes({file.begin(), file.begin() + std::ptrdiff_t(length)}); });
        INFO("length " << length);
        REQUIRE(id.has_value());
        ++truncation_outcomes[*id];
    }
    std::printf("safetensors truncation at %zu lengths: truncated %d, corrupt %d, other %d\n", file.size(), truncation_outcomes[errc::truncated],
                truncation_outcomes[errc::corrupt], int(file.size()) - truncation_outcomes[errc::truncated] - truncation_outcomes[errc::corrupt]);

    // Every single-byte change to the header: either still a valid file or an nwc::error.
    const SafetensorsFile reference = SafetensorsFile::from_bytes(file);
    const std::size_t header_end = std::size_t(reference.data_offset());
    std::map<std::string, int> flip_outcomes;
    for (std::size_t at = 0; at < header_end; ++at) {
        for (std::uint8_t mask : {std::uint8_t(0x01), std::uint8_t(0x20), std::uint8_t(0xFF)}) {
            std::vector<std::uint8_t> changed = file;
            changed[at] ^= mask;
            const auto id = error_of([&] {
                const SafetensorsFile opened = SafetensorsFile::from_bytes(changed);
                for (const auto& info : opened.tensors())
                    if (is_floating_dtype(info.type)) (void)opened.read_float32(info.name);
            });
            ++flip_outcomes[id ? std::string(to_string(*id)) : "accepted"];
        }
    }
    for (const auto& [outcome, count] : flip_outcomes) std::printf("safetensors header byte flips: %s %d\n", outcome.c_str(), count);
    CHECK(flip_outcomes["accepted"] < int(header_end));

    // Random multi-byte damage to the header.
    Random random(2024);
    int errors = 0;
    for (int round = 0; round < 5000; ++round) {
        std::vector<std::uint8_t> changed = file;
        const int edits = 1 + int(random.below(4));
        for (int edit = 0; edit < edits; ++edit) changed[std::size_t(random.below(header_end))] = std::uint8_t(random.below(256));
        if (error_of([&] { (void)SafetensorsFile::from_bytes(changed); })) ++errors;
    }
    std::printf("safetensors random header damage: %d of 5000 rejected, the rest still valid\n", errors);
}

TEST_CASE("safetensors: a failed write leaves the existing file and no temporary", "[safetensors]") {
    TempDir temp;
    const auto target = temp.path / "model.safetensors";
    const std::vector<std::uint8_t> good = small_file();
    write_file_atomic(target, good);
    SafetensorsWriter big;
    big.add_raw("x", dtype::u8, Shape{1000}, std::vector<std::uint8_t>(1000, 9));
    CHECK(error_of([&] { big.write(target, 100); }) == errc::io);
    CHECK(read_file(target) == good);
    int entries = 0;
    for (const auto& entry : std::filesystem::directory_iterator(temp.path)) ++entries, (void)entry;
    CHECK(entries == 1);
    big.write(target);
    CHECK(SafetensorsFile::open(target).info("x").byte_size() == 1000);
}

}  // namespace nwc_test_safetensors
