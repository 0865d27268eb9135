// io/model_file.hpp, the one loader of a model file: the format comes from the content (never the
// name), read_llama_weights equals each format's own reader, and anything that is not a model is
// an nwc::error with the right id. Synthetic models only (the real files: tests/test_pipeline.cpp).
#include <catch2/catch.hpp>

#include <filesystem>
#include <optional>
#include <string>

#include "error_testing.hpp"
#include "llm_test_support.hpp"
#include "nwc/io/model_file.hpp"

namespace nwc_test_model_file {

using namespace nwc;
using nwc::llm::testing::random_llama_weights;
using nwc::llm::testing::small_llama_config;
using nwc::llm::testing::TemporaryDirectory;

namespace {


void check_same_weights(const llm::LlamaWeights& a, const llm::LlamaWeights& b) {
    REQUIRE(a.config == b.config);
    a.for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape&) { REQUIRE(tensor.values() == b.tensor(name).values()); });
}

template <class Body>
std::optional<errc> error_of(Body&& body) {
    try {
        body();
    } catch (const nwc::error& problem) {
        return problem.id();
    }
    return std::nullopt;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
    write_file_atomic(path, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

}  // namespace

TEST_CASE("model_file: the format comes from the content, never from the name", "[model_file]") {
    const TemporaryDirectory directory("model_file_detect");
    const llm::LlamaWeights weights = random_llama_weights(small_llama_config(), 3);

    // A llama2.c file named like a safetensors file, and a safetensors file named like a llama2.c one.
    const auto llama2c = directory.path() / "looks_like.safetensors";
    llm::write_llama2c(llama2c, weights);
    CHECK(detect_model_format(llama2c) == ModelFormat::llama2c);
    check_same_weights(read_llama_weights(llama2c), llm::read_llama2c(llama2c).weights);

    const auto plain = directory.path() / "plain" / "weights.bin";
    std::filesystem::create_directories(plain.parent_path());
    SafetensorsWriter writer;
    writer.add_float32("encoder.weight", weights.layers[0].wq.view(), dtype::bf16);
    writer.write(plain);
    CHECK(detect_model_format(plain) == ModelFormat::safetensors);
    const ModelFile loaded = load_model_file(plain);
    REQUIRE(loaded.tensors.size() == 1);
    CHECK(loaded.tensors[0].original_dtype == dtype::bf16);
    CHECK_FALSE(llama_weights_of(loaded).has_value());
    CHECK(error_of([&] { read_llama_weights(plain); }) == errc::unsupported);  // not a Llama model

    // Hugging Face: the directory, or its safetensors file with config.json beside it.
    const auto hf = directory.path() / "hf";
    llm::write_hf_llama(hf, weights, dtype::f16);
    CHECK(detect_model_format(hf) == ModelFormat::hf_llama);
    CHECK(detect_model_format(hf / "model.safetensors") == ModelFormat::hf_llama);
    for (const auto& path : {hf, hf / "model.safetensors"}) check_same_weights(read_llama_weights(path), llm::read_hf_llama(path));
}

TEST_CASE("model_file: what is not a model is an nwc::error naming it", "[model_file][hostile]") {
    const TemporaryDirectory directory("model_file_bad");
    const llm::LlamaWeights weights = random_llama_weights(small_llama_config(), 4);
    const auto llama2c = directory.path() / "model.bin";
    llm::write_llama2c(llama2c, weights);

    CHECK(error_of([&] { detect_model_format(directory.path() / "missing.bin"); }) == errc::io);
    const auto empty_directory = directory.path() / "empty";
    std::filesystem::create_directories(empty_directory);
    CHECK(error_of([&] { load_model_file(empty_directory); }) == errc::unsupported);  // no config.json
    for (const std::string& text : {std::string(), std::string("{\"dim\": 32}"), std::string(64, 'x')}) {
        write_text(directory.path() / "text.bin", text);
        CHECK(error_of([&] { load_model_file(directory.path() / "text.bin"); }) == errc::unsupported);
    }
    // A llama2.c file cut short or with a byte too many no longer matches its header.
    std::vector<std::uint8_t> bytes = read_file(llama2c);
    bytes.pop_back();
    write_file_atomic(directory.path() / "cut.bin", bytes);
    CHECK(error_of([&] { load_model_file(directory.path() / "cut.bin"); }) == errc::unsupported);
    bytes.push_back(0);
    bytes.push_back(0);
    write_file_atomic(directory.path() / "long.bin", bytes);
    CHECK(error_of([&] { load_model_file(directory.path() / "long.bin"); }) == errc::unsupported);

    // An HF directory whose config.json is not a Llama model reads as tensors (format hf), not as
    // Llama weights; one without weights is an error.
    const auto hf = directory.path() / "hf";
    llm::write_hf_llama(hf, weights);
    write_text(hf / "config.json", R"({"model_type": "gpt2", "hidden_size": 32})");
    CHECK(load_model_file(hf).format == ModelFormat::hf);
    CHECK(error_of([&] { (void)read_llama_weights(hf); }) == errc::unsupported);
    std::filesystem::remove(hf / "model.safetensors");
    CHECK(error_of([&] { load_model_file(hf); }) == errc::io);
}

TEST_CASE("model_file: RoPE corrections pack against the recomputed tables and unpack exactly", "[model_file]") {
    const llm::LlamaConfig config = small_llama_config();
    const auto [real, imag] = llm::llama2c_rope_tables(config);
    // Corrections a few ulps off the computed values, one far off, the last entry of imag included.
    const std::int64_t all = real.numel() + imag.numel();
    const std::vector<std::int64_t> entries{0, 3, 4, real.numel() - 1, real.numel(), all - 1};
    std::vector<std::int32_t> values;
    for (std::size_t k = 0; k < entries.size(); ++k) {
        const std::int64_t index = entries[k];
        const float computed = index < real.numel() ? real[index] : imag[index - real.numel()];
        const std::int64_t offset = k == 2 ? 1000000 : std::int64_t(k % 3) - 1;
        values.push_back(std::int32_t(index));
        values.push_back(std::int32_t(std::uint32_t(std::int64_t(float_bits(computed)) + offset)));
    }
    const Tensor<std::int32_t> corrections(Shape{std::int64_t(entries.size()), 2}, values);
    const std::vector<std::uint8_t> packed = detail::pack_rope_corrections(corrections, config);
    CHECK(packed.size() < 8 * entries.size() / 2);  // small gaps and ulp differences: bytes, not words
    CHECK(detail::unpack_rope_corrections(packed, config, "test").values() == corrections.values());
    CHECK(detail::unpack_rope_corrections({}, config, "test").values().empty());
    // Hostile bytes: a gap beyond the tables, a difference leaving 32 bits, a cut varint.
    auto error_of = [&](std::vector<std::uint8_t> bytes) {
        try {
            detail::unpack_rope_corrections(bytes, config, "hostile");
        } catch (const nwc::error& failure) {
            return failure.id();
        }
        return errc::io;
    };
    CHECK(error_of({0xFF, 0xFF, 0x03, 0x00}) == errc::corrupt);
    CHECK(error_of({0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}) == errc::corrupt);
    CHECK(error_of({0x00, 0x80}) == errc::truncated);

    // The bit-packed layout (what files hold now): the same corrections, in fewer bytes.
    // A "correction" equal to the computed value changes nothing: it is not written.
    const std::vector<std::uint8_t> bits = detail::pack_rope_correction_bits(corrections, config);
    CHECK(bits.size() < packed.size());
    std::vector<std::int32_t> kept;
    for (std::size_t k = 0; k < entries.size(); ++k) {
        const std::int64_t index = entries[k];
        const float computed = index < real.numel() ? real[index] : imag[index - real.numel()];
        if (std::uint32_t(values[2 * k + 1]) != float_bits(computed)) kept.insert(kept.end(), {values[2 * k], values[2 * k + 1]});
    }
    CHECK(kept.size() == 2 * entries.size() - 4);  // entries 3 and real.numel() were no corrections
    CHECK(detail::unpack_rope_correction_bits(bits, config, "test").values() == kept);
    const std::vector<std::uint8_t> none = detail::pack_rope_correction_bits(Tensor<std::int32_t>(), config);
    CHECK(none == std::vector<std::uint8_t>{0});
    CHECK(detail::unpack_rope_correction_bits(none, config, "test").values().empty());
    auto bits_error_of = [&](std::vector<std::uint8_t> bytes) {
        return nwc::testing::error_of([&] { (void)detail::unpack_rope_correction_bits(bytes, config, "hostile"); });
    };
    // Every cut and every single-bit flip is an nwc::error or decodes to valid corrections.
    for (std::size_t size = 0; size < bits.size(); ++size) {
        INFO("cut to " << size << " bytes");
        const errc id = bits_error_of(std::vector<std::uint8_t>(bits.begin(), bits.begin() + std::ptrdiff_t(size)));
        CHECK((id == errc::corrupt || id == errc::truncated));
    }
    for (std::size_t bit = 0; bit < 8 * bits.size(); ++bit) {
        std::vector<std::uint8_t> damaged = bits;
        damaged[bit / 8] ^= std::uint8_t(0x80u >> (bit % 8));
        try {
            const Tensor<std::int32_t> decoded = detail::unpack_rope_correction_bits(damaged, config, "hostile");
            for (std::int64_t k = 1; k < (decoded.values().empty() ? 0 : decoded.rows()); ++k) CHECK(decoded(k, 0) > decoded(k - 1, 0));
        } catch (const nwc::error& failure) {
            CHECK((failure.id() == errc::corrupt || failure.id() == errc::truncated));
        }
    }
    CHECK(bits_error_of({0x01}) == errc::corrupt);                  // a count without its bits
    CHECK(bits_error_of({0x00, 0x00}) == errc::corrupt);            // bytes after a count of 0
    CHECK(bits_error_of({0x40, 0x00}) == errc::corrupt);            // 64 corrections in one byte
    std::vector<std::uint8_t> padded = bits;
    padded.push_back(0);
    CHECK(bits_error_of(padded) == errc::corrupt);                  // a byte left over
}

}  // namespace nwc_test_model_file
