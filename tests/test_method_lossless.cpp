// The "lossless" pipeline method (pipeline/method_lossless.hpp): every F32 / F16 / BF16 tensor,
// vectors included, comes back through the .nwc container bit for bit (NaN payloads quiet and
// signalling, infinities, subnormals, -0); the 16-bit conversions are exact on every bit pattern;
// scalar and SIMD decoding agree; a safetensors file round-trips to the same bytes; damaged
// metadata and segments are nwc::errors; rate targets are refused; and on the real GPT-Neo BF16
// file the container is at most 0.68 of the input.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "error_testing.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/half_simd.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/io/tensor_bytes.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/rate_control.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
#include "requirements.hpp"

namespace nwc_test_method_lossless {

using namespace nwc;
using nwc::testing::error_of;

namespace {

/// Elements of `type` with Gaussian values and, at the front, the patterns floats make hard:
/// quiet and signalling NaNs of both signs with payloads, +-inf, subnormals, +-0, the extremes.
std::vector<std::uint8_t> tricky_elements(dtype type, std::int64_t count, std::uint64_t seed) {
    std::vector<std::uint32_t> special;
    if (type == dtype::bf16) special = {0x7FC1, 0x7F81, 0xFFA5, 0xFFC0, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x8000, 0x0000, 0x7F7F, 0x0080};
    if (type == dtype::f16) special = {0x7E05, 0x7C01, 0xFD23, 0xFE00, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x8000, 0x0000, 0x7BFF, 0x0400};
    if (type == dtype::f32)
        special = {0x7FC00123, 0x7F800001, 0xFFA5A5A5, 0x7FFFFFFF, 0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF, 0x80000000, 0x0, 0x7F7FFFFF};
    Random random(seed);
    Tensor<float> values(Shape{count});
    for (float& value : values.values()) value = 0.02f * float(random.normal());
    std::vector<std::uint8_t> bytes = encode_float32(values.view(), type);
    const std::size_t size = dtype_size(type);
    for (std::size_t k = 0; k < special.size() && k < std::size_t(count); ++k) std::memcpy(bytes.data() + (k * 7 % std::size_t(count)) * size, &special[k], size);
    return bytes;
}

ModelTensor tensor_of(std::string name, dtype type, Shape shape, const std::vector<std::uint8_t>& bytes) {
    return {std::move(name), type, shape, decode_float32(type, shape, bytes, "test"), {}};
}

/// A safetensors model of every dtype and shape the method sees: matrices, coded vectors, a short
/// raw vector, an F32 tensor whose values are all bf16 (coded in bf16 planes) and an I32 tensor.
ModelFile tricky_model() {
    ModelFile model;
    model.format = ModelFormat::safetensors;
    model.source = {{"source_format", "safetensors"}};
    const auto add = [&](std::string name, dtype type, Shape shape, std::uint64_t seed) {
        model.tensors.push_back(tensor_of(std::move(name), type, shape, tricky_elements(type, shape.numel(), seed)));
    };
    add("bf16.matrix", dtype::bf16, Shape{48, 64}, 1);
    add("f16.matrix", dtype::f16, Shape{24, 40}, 2);
    add("f32.matrix", dtype::f32, Shape{20, 30}, 3);
    add("f32_holding_bf16.matrix", dtype::f32, Shape{16, 16}, 4);
    for (float& value : model.tensors.back().values.values()) value = to_float(to_bfloat16(value));
    add("bf16.norm", dtype::bf16, Shape{64}, 5);
    add("f16.bias", dtype::f16, Shape{100}, 6);
    add("f32.short", dtype::f32, Shape{8}, 7);
    std::vector<std::uint8_t> ids(12);
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = std::uint8_t(i);
    model.tensors.push_back({"ids", dtype::i32, Shape{3}, {}, ids});
    return model;
}

MethodOptions lossless_options(std::int64_t weights_per_segment = 500) {
    MethodOptions options;
    options.method = "lossless";
    options.weights_per_segment = weights_per_segment;  // several segments per tensor
    options.threads = 1;
    return options;
}

/// The stored bytes of `tensor` in its own dtype (what a safetensors writer writes).
std::vector<std::uint8_t> stored_bytes(const ModelTensor& tensor) {
    return tensor.is_floating() ? encode_float32(tensor.values.view(), tensor.original_dtype) : tensor.raw_bytes;
}

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_lossless_test_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};


}  // namespace

TEST_CASE("lossless: float -> 16 bits -> float -> 16 bits is the identity on all 65536 patterns", "[lossless][half]") {
    std::vector<half> halves(65536), halves_back(65536), halves_simd(65536);
    std::vector<bfloat16> bf16s(65536), bf16s_back(65536), bf16s_simd(65536);
    for (std::uint32_t bits = 0; bits < 65536; ++bits) halves[bits].bits = bf16s[bits].bits = std::uint16_t(bits);
    std::vector<float> wide(65536), wide_simd(65536);
    std::size_t mismatches = 0;
    // f16: scalar and SIMD widening agree bit for bit, and narrowing back gives the pattern.
    convert_to_float(std::span<const half>(halves), std::span<float>(wide), backend::scalar{});
    convert_to_float(std::span<const half>(halves), std::span<float>(wide_simd), backend::simd{});
    CHECK(std::memcmp(wide.data(), wide_simd.data(), wide.size() * 4) == 0);
    convert_from_float(std::span<const float>(wide), std::span<half>(halves_back), backend::scalar{});
    convert_from_float(std::span<const float>(wide), std::span<half>(halves_simd), backend::simd{});
    for (std::uint32_t bits = 0; bits < 65536; ++bits) mismatches += halves_back[bits].bits != bits || halves_simd[bits].bits != bits;
    // bf16 likewise.
    convert_to_float(std::span<const bfloat16>(bf16s), std::span<float>(wide), backend::scalar{});
    convert_to_float(std::span<const bfloat16>(bf16s), std::span<float>(wide_simd), backend::simd{});
    CHECK(std::memcmp(wide.data(), wide_simd.data(), wide.size() * 4) == 0);
    convert_from_float(std::span<const float>(wide), std::span<bfloat16>(bf16s_back), backend::scalar{});
    convert_from_float(std::span<const float>(wide), std::span<bfloat16>(bf16s_simd), backend::simd{});
    for (std::uint32_t bits = 0; bits < 65536; ++bits) mismatches += bf16s_back[bits].bits != bits || bf16s_simd[bits].bits != bits;
    CHECK(mismatches == 0);
    // The output writers' path (io/tensor_bytes.hpp) gives the same bits.
    for (const dtype type : {dtype::f16, dtype::bf16}) {
        std::vector<std::uint8_t> all(2 * 65536);
        for (std::uint32_t bits = 0; bits < 65536; ++bits) std::memcpy(all.data() + 2 * bits, &bits, 2);
        const Tensor<float> decoded = decode_float32(type, Shape{65536}, all, "all patterns");
        CHECK(encode_float32(decoded.view(), type) == all);
    }
    // A NaN whose payload the narrowing drops entirely stays a NaN (quiet), never an infinity.
    CHECK(to_bfloat16(float_from_bits(0x7F800001u)).bits == 0x7FC0);
    CHECK(to_half(float_from_bits(0xFF800001u)).bits == 0xFE00);
    CHECK(to_half(float_from_bits(0x7F802000u)).bits == 0x7C01);  // signalling, payload kept
}

TEST_CASE("lossless: a model of every dtype round-trips through the container bit for bit", "[lossless]") {
    const ModelFile model = tricky_model();
    const DefaultCodec codec(lossless_options());
    const CompressedModel compressed = codec.compress_model(model);
    CHECK(compressed.report.setting.empty());
    const ContainerReader reader = ContainerReader::from_bytes(compressed.writer.serialize());
    std::map<std::string, std::string> methods;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) methods[reader.entry(index).name] = reader.entry(index).method;
    // Vectors of 16 or more are lossless too (not ecsq); the short one and the I32 one are raw.
    CHECK(methods == std::map<std::string, std::string>{{"bf16.matrix", "lossless"},  {"f16.matrix", "lossless"}, {"f32.matrix", "lossless"},
                                                        {"f32_holding_bf16.matrix", "lossless"}, {"bf16.norm", "lossless"}, {"f16.bias", "lossless"},
                                                        {"f32.short", "raw"},        {"ids", "raw"}});
    CHECK(reader.entry(reader.index_of("bf16.matrix")).segment_count() == 7);  // 3072 weights in segments of 500

    // Each tensor is coded in the narrowest dtype that holds it exactly.
    DecodeResources resources(reader);
    const auto plane_type = [&](const std::string& name) {
        const std::size_t index = reader.index_of(name);
        return LosslessMethod::parse(reader.entry(index), reader.metadata(index), resources, name).codec.type;
    };
    CHECK(plane_type("bf16.matrix") == dtype::bf16);
    CHECK(plane_type("f16.matrix") == dtype::f16);
    CHECK(plane_type("f32.matrix") == dtype::f32);
    CHECK(plane_type("f32_holding_bf16.matrix") == dtype::bf16);
    CHECK(plane_type("bf16.norm") == dtype::bf16);

    for (const int threads : {1, 3}) {
        const ModelFile decoded = DefaultCodec::decompress_model(reader, threads);
        REQUIRE(decoded.tensors.size() == model.tensors.size());
        for (std::size_t k = 0; k < model.tensors.size(); ++k) {
            INFO(model.tensors[k].name << ", " << threads << " threads");
            CHECK(decoded.tensors[k].name == model.tensors[k].name);
            CHECK(decoded.tensors[k].original_dtype == model.tensors[k].original_dtype);
            CHECK(decoded.tensors[k].shape == model.tensors[k].shape);
            CHECK(stored_bytes(decoded.tensors[k]) == stored_bytes(model.tensors[k]));
        }
    }
}

TEST_CASE("lossless: scalar and SIMD decoding give the same bytes", "[lossless][backend]") {
    const ContainerReader reader = ContainerReader::from_bytes(DefaultCodec(lossless_options()).compress_model(tricky_model()).writer.serialize());
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        if (reader.entry(index).method != "lossless") continue;
        INFO(reader.entry(index).name);
        const Tensor<float> scalar = Codec<backend::scalar>::decompress(reader, index);
        const Tensor<float> simd = Codec<backend::simd>::decompress(reader, index, 2);
        REQUIRE(scalar.numel() == simd.numel());
        CHECK(std::memcmp(scalar.data(), simd.data(), std::size_t(scalar.numel()) * 4) == 0);
    }
}

// A streamed decompress (streaming_decompress.hpp) decodes lossless tensors straight into their
// stored bytes (StoredDecodingMethod): the source's bytes, NaN payloads and all, on every backend;
// a tensor whose planes are narrower than its dtype goes through float32 instead.
TEST_CASE("lossless: decoding into the stored dtype gives the source's bytes", "[lossless][backend]") {
    const ModelFile model = tricky_model();
    const ContainerReader reader = ContainerReader::from_bytes(DefaultCodec(lossless_options()).compress_model(model).writer.serialize());
    DecodeResources resources(reader);
    std::size_t stored = 0, multi_segment = 0;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (entry.method != "lossless") continue;
        INFO(entry.name);
        const auto plan = detail::make_decode_plan(reader, index, resources, DefaultCodec::methods{});
        const auto source = std::find_if(model.tensors.begin(), model.tensors.end(), [&](const ModelTensor& tensor) { return tensor.name == entry.name; });
        REQUIRE(source != model.tensors.end());
        if (entry.name == "f32_holding_bf16.matrix") {  // bf16 planes for an F32 tensor
            CHECK(!detail::decodes_stored(plan, dtype::f32));
            continue;
        }
        REQUIRE(detail::decodes_stored(plan, entry.original_dtype));
        CHECK(!detail::decodes_stored(plan, entry.original_dtype == dtype::f32 ? dtype::bf16 : dtype::f32));
        ++stored;
        std::vector<std::uint8_t> scalar(std::size_t(entry.shape.numel()) * dtype_size(entry.original_dtype), 0x5A), simd = scalar;
        multi_segment += plan.segments > 1 ? 1 : 0;
        for (std::size_t segment = plan.segments; segment-- > 0;) {  // any order: segments are independent
            detail::decode_plan_segment_stored<backend::scalar>(reader, plan, segment, scalar);
            detail::decode_plan_segment_stored<backend::simd>(reader, plan, segment, simd);
        }
        CHECK(scalar == stored_bytes(*source));
        CHECK(simd == scalar);
    }
    CHECK(stored >= 3);  // a BF16, an F16 and an F32 matrix at least
    CHECK(multi_segment >= 2);
}

TEST_CASE("lossless: a BF16 safetensors file comes back as the same bytes", "[lossless][safetensors]") {
    const TempDir temp;
    SafetensorsWriter writer;
    writer.set_metadata("format", "pt");
    writer.add_raw("model.layers.0.mlp.up_proj.weight", dtype::bf16, Shape{64, 32}, tricky_elements(dtype::bf16, 64 * 32, 11));
    writer.add_raw("model.layers.0.input_layernorm.weight", dtype::bf16, Shape{32}, tricky_elements(dtype::bf16, 32, 12));
    writer.add_raw("model.norm.weight", dtype::bf16, Shape{4}, tricky_elements(dtype::bf16, 4, 13));
    const std::filesystem::path input = temp.path / "in.safetensors", packed = temp.path / "in.nwc", output = temp.path / "out.safetensors";
    writer.write(input);
    const ModelFile model = load_model_file(input);
    DefaultCodec(lossless_options(1000)).compress_model(model).writer.write(packed);
    write_model_file(DefaultCodec::decompress_model(ContainerReader::open(packed), 2), output);
    CHECK(read_file(output) == read_file(input));
}

TEST_CASE("lossless: the byte account covers the file", "[lossless]") {
    const std::vector<std::uint8_t> bytes = DefaultCodec(lossless_options()).compress_model(tricky_model()).writer.serialize();
    const auto account = DefaultCodec::account(ContainerReader::from_bytes(bytes));
    CHECK(account.total.total() == bytes.size());
    for (const char* category : {"payload", "tables", "framing", "metadata", "passthrough"}) {
        INFO(category);
        CHECK(account.total.of(category) > 0);
    }
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    CHECK(DefaultCodec::stored_setting(reader.entry(0), reader.metadata(0)).empty());
}

TEST_CASE("lossless: damaged metadata and segments are nwc::errors", "[lossless][hostile]") {
    const ModelFile model = tricky_model();
    const DefaultCodec codec(lossless_options());
    ContainerWriter writer;
    TensorReport report;
    writer.add_tensor(codec.compress(model.tensors[0], nullptr, report));  // bf16 planes
    writer.add_tensor(codec.compress(model.tensors[2], nullptr, report));  // f32 planes
    const ContainerReader reader = ContainerReader::from_bytes(writer.serialize());
    DecodeResources resources(reader);
    const ContainerEntry& entry = reader.entry(0);
    const std::vector<std::uint8_t> metadata(reader.metadata(0).begin(), reader.metadata(0).end());
    const auto parse = [&](const ContainerEntry& e, std::span<const std::uint8_t> bytes) { return LosslessMethod::parse(e, bytes, resources, "t"); };
    REQUIRE(entry.method == "lossless");
    REQUIRE_NOTHROW(parse(entry, metadata));

    for (std::size_t size = 0; size < metadata.size(); ++size) {
        INFO("metadata cut to " << size << " bytes");
        const errc id = error_of([&] { parse(entry, std::span(metadata).first(size)); });
        CHECK((id == errc::truncated || id == errc::corrupt));
    }
    // Every byte but the informational diagnostics: the prefix is checked field by field, the rest
    // by the lossless metadata's CRC-32C.
    for (std::size_t at = 0; enforce_checksums && at < metadata.size(); ++at) {
        if (at >= detail::diagnostics_offset && at < detail::diagnostics_offset + detail::diagnostics_bytes) continue;
        std::vector<std::uint8_t> damaged = metadata;
        damaged[at] ^= 0x10;
        INFO("metadata byte " << at << " flipped");
        error_of([&] { parse(entry, damaged); });
    }
    const auto refused = [&](auto&& change) {
        ContainerEntry other = entry;
        change(other);
        return error_of([&] { parse(other, metadata); });
    };
    CHECK(refused([](ContainerEntry& e) { e.shape = Shape{48, 63}; }) == errc::corrupt);
    CHECK(refused([](ContainerEntry& e) { e.shape = Shape{}; }) == errc::corrupt);
    CHECK(refused([](ContainerEntry& e) { e.original_dtype = dtype::i32; }) == errc::corrupt);
    CHECK(refused([](ContainerEntry& e) { e.segment_bounds.pop_back(); }) == errc::corrupt);
    ContainerEntry flat = entry;  // the same elements as a vector: a lossless tensor has any rank
    flat.shape = Shape{48 * 64};
    CHECK_NOTHROW(parse(flat, metadata));
    ContainerEntry narrowed = reader.entry(1);  // f32 planes cannot hold a bf16 tensor
    narrowed.original_dtype = dtype::bf16;
    CHECK(error_of([&] { parse(narrowed, reader.metadata(1)); }) == errc::corrupt);

    const LosslessMethod::Layout layout = parse(entry, metadata);
    Tensor<float> output(entry.shape);
    const std::vector<std::uint8_t> segment(reader.segment(0, 1).begin(), reader.segment(0, 1).end());
    for (std::size_t size : {std::size_t(0), std::size_t(3), std::size_t(8), segment.size() / 2, segment.size() - 1}) {
        INFO("segment cut to " << size << " bytes");
        const errc id = error_of([&] { LosslessMethod::decode_segment(layout, 1, std::span(segment).first(size), output.view(), "t", backend::simd{}); });
        CHECK((id == errc::truncated || id == errc::corrupt));
    }
    // A segment decoded in another segment's place holds the wrong element count or stream.
    error_of([&] { LosslessMethod::decode_segment(layout, 6, segment, output.view(), "t", backend::scalar{}); });
}

TEST_CASE("lossless: rate targets, allocation and sequential coding are refused", "[lossless]") {
    const ModelFile model = tricky_model();
    const DefaultCodec codec(lossless_options());
    CHECK(!codec.has_rate_knob());
    CHECK(codec.is_lossless());
    CHECK(DefaultCodec(MethodOptions{}).has_rate_knob());
    RateTarget target;
    target.bits_per_weight = 4.0;
    CHECK(error_of([&] { compress_to_target(codec, model, {}, target); }) == errc::invalid_argument);
    const TensorSensitivities sensitivities;
    CHECK(error_of([&] { allocate_settings(codec, model, sensitivities, 4.0); }) == errc::invalid_argument);
    CHECK(error_of([&] { compress_model_sequentially(codec, model, std::vector<int>{1, 2, 3}, llm::SequentialCompressionOptions{}); }) ==
          errc::invalid_argument);
}

TEST_CASE("lossless: the GPT-Neo BF16 file shrinks to at most 0.68 of its size, bit for bit", "[lossless][data]") {
    const std::filesystem::path input = testing::data_path("gptneo125m_attn.safetensors");
    const ModelFile model = load_model_file(input);
    MethodOptions options = lossless_options(MethodOptions{}.weights_per_segment);
    options.threads = 0;
    const CompressedModel compressed = DefaultCodec(options).compress_model(model);
    const double ratio = double(compressed.report.file_bytes) / double(std::filesystem::file_size(input));
    WARN("gptneo125m_attn.safetensors: lossless file " << compressed.report.file_bytes << " bytes, " << ratio << " of the input");
    CHECK(ratio <= 0.68);
    const ModelFile decoded = DefaultCodec::decompress_model(ContainerReader::from_bytes(compressed.writer.serialize()), 0);
    REQUIRE(decoded.tensors.size() == model.tensors.size());
    std::size_t different = 0;
    for (std::size_t k = 0; k < model.tensors.size(); ++k) different += stored_bytes(decoded.tensors[k]) != stored_bytes(model.tensors[k]);
    CHECK(different == 0);
}

}  // namespace nwc_test_method_lossless
