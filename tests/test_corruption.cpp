// Damaged .nwc files through the WHOLE decode (open, then every tensor through its method's
// decoder: raw, rtn, gptq, ecsq, tcq, lossless, nwc with the embedded codec; the whole-model path too for the
// directory damage, where tensors can swap or vanish): every
// byte flipped three ways, every truncation, random damage to the directory with its CRCs fixed
// up. Each case must end in an nwc::error, or (where the format cannot tell, e.g. a padding byte
// nobody reads) in a decode with the directory's shapes and finite coded values. The outcome of
// every case is counted by category and printed (WARN) for the reliability report. Last, "nothing
// lost": failed model writes (disk full, bad model) keep an existing output and leave no temporary.
// Under a sanitizer a deterministic subsample of the positions runs (every 7th), so the test
// stays reasonable there; the Release run covers every byte.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>

#include "nwc/core/file_io.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/model_file.hpp"
#include "reliability_support.hpp"

namespace nwc_test_corruption {

using namespace nwc;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::size_t position_stride = 7;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr std::size_t position_stride = 7;
#else
constexpr std::size_t position_stride = 1;
#endif
#else
constexpr std::size_t position_stride = 1;
#endif

const std::vector<std::uint8_t>& original() {
    static const std::vector<std::uint8_t> bytes = reliability::mixed_container();
    return bytes;
}

const std::vector<Tensor<float>>& reference() {
    static const std::vector<Tensor<float>> tensors = reliability::decode_every_tensor(ContainerReader::from_bytes(original()));
    return tensors;
}

/// The directory's size, from the footer (the last 16 bytes: u32 size, u32 CRC, u32 CRC, end marker).
std::uint64_t directory_size(const std::vector<std::uint8_t>& bytes) {
    std::uint32_t size;
    std::memcpy(&size, bytes.data() + bytes.size() - 16, 4);
    return size;
}

/// True for the bytes of original() that only align regions (zero, covered by no CRC).
const std::vector<bool>& padding() {
    static const std::vector<bool> mask = [] {
        std::vector<bool> unused(original().size(), true);
        const ContainerReader reader = ContainerReader::from_bytes(original());
        const auto cover = [&](std::uint64_t offset, std::uint64_t size) {
            for (std::uint64_t at = offset; at < offset + size; ++at) unused[std::size_t(at)] = false;
        };
        cover(0, 16);  // the header; then the directory and the footer, at the end
        cover(original().size() - 16 - directory_size(original()), directory_size(original()) + 16);
        for (std::size_t index = 0; index < reader.codec_count(); ++index) cover(reader.codec_entry(index).offset, reader.codec_entry(index).size);
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            const ContainerEntry& entry = reader.entry(index);
            cover(entry.metadata_offset, entry.metadata_size);
            cover(entry.payload_offset, entry.payload_size);
        }
        return unused;
    }();
    return mask;
}

template <class Body>
std::string error_of(Body&& body) {
    try {
        body();
        return "no error";
    } catch (const nwc::error& caught) {
        return "error:" + std::string(to_string(caught.id()));
    }
}

bool same_values(const Tensor<float>& a, const Tensor<float>& b) {
    return a.values().size() == b.values().size() && std::memcmp(a.data(), b.data(), a.values().size() * sizeof(float)) == 0;
}

/// Decodes `bytes` completely and names the outcome: "error:<id>", "decoded:identical" (the
/// damage went unread or undetectable but harmless), "decoded:different" (values changed, shapes
/// right, finite), or "BAD:..." for anything the contract forbids.
std::string outcome_of(std::vector<std::uint8_t> bytes, bool whole_model = false) {
    try {
        const ContainerReader reader = ContainerReader::from_bytes(std::move(bytes), "damaged");
        const std::vector<Tensor<float>> decoded = reliability::decode_every_tensor(reader);
        bool identical = decoded.size() == reference().size();
        for (std::size_t index = 0; index < decoded.size(); ++index) {
            const ContainerEntry& entry = reader.entry(index);
            if (!is_floating_dtype(entry.original_dtype) && entry.method == "raw") continue;
            if (decoded[index].shape() != entry.shape) return "BAD:wrong shape";
            if (entry.method != "raw")
                for (float value : decoded[index].values())
                    if (!std::isfinite(value)) return "BAD:non-finite value in '" + entry.name + "'";
            if (identical && !same_values(decoded[index], reference()[index])) identical = false;
        }
        if (whole_model) {
            const ModelFile model = DefaultCodec::decompress_model(reader, 1);
            for (const ModelTensor& tensor : model.tensors)
                if (tensor.is_floating() && !same_values(tensor.values, decoded[reader.index_of(tensor.name)]))
                    return "BAD:the whole-model decode disagrees with the tensor-by-tensor one";
        }
        return identical ? "decoded:identical" : "decoded:different";
    } catch (const nwc::error& caught) {
        if (caught.message().empty()) return "BAD:error without a message";
        return "error:" + std::string(to_string(caught.id()));
    } catch (const std::exception& caught) {
        return std::string("BAD:std::exception: ") + caught.what();
    }
}

void report(const std::string& what, const std::map<std::string, int>& outcomes, double seconds) {
    std::ostringstream text;
    text << what << " (" << original().size() << "-byte container, every " << position_stride << (position_stride == 1 ? "st" : "th")
         << " position, " << seconds << " s):";
    int total = 0;
    for (const auto& [outcome, count] : outcomes) {
        text << "\n    " << outcome << ": " << count;
        total += count;
    }
    text << "\n    total: " << total;
    WARN(text.str());
    for (const auto& [outcome, count] : outcomes) {
        INFO(outcome);
        CHECK(outcome.rfind("BAD", 0) != 0);
    }
}

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void put_u32_at(std::vector<std::uint8_t>& bytes, std::size_t at, std::uint32_t value) { std::memcpy(bytes.data() + at, &value, 4); }

/// Recomputes the directory's and the footer's CRCs, so damage reaches the directory parser.
void fix_container_crcs(std::vector<std::uint8_t>& bytes) {
    const std::size_t footer = bytes.size() - 16;
    if (directory_size(bytes) > footer - 16) return;
    put_u32_at(bytes, footer + 4, crc32c({bytes.data() + footer - directory_size(bytes), std::size_t(directory_size(bytes))}));
    put_u32_at(bytes, footer + 8, crc32c({bytes.data() + footer, 8}, crc32c({bytes.data(), 16})));
}

}  // namespace

TEST_CASE("corruption: the undamaged mixed container decodes every method", "[corruption]") {
    const ContainerReader reader = ContainerReader::from_bytes(original());
    REQUIRE(reader.tensor_count() == 9);
    std::map<std::string, int> methods;
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) ++methods[reader.entry(index).method];
    // The norm vector goes to ecsq (vectors of 16 or more are coded at MethodOptions::vector_step).
    CHECK(methods == std::map<std::string, int>{{"ecsq", 2}, {"gptq", 1}, {"lossless", 1}, {"nwc", 1}, {"raw", 1}, {"rtn", 2}, {"tcq", 1}});
    CHECK(outcome_of(original(), true) == "decoded:identical");
    reader.verify();
}

TEST_CASE("corruption: every byte flipped, through the whole decode", "[corruption][hostile]") {
    const auto start = std::chrono::steady_clock::now();
    std::map<std::string, int> outcomes;
    for (const auto& [name, damage] : std::vector<std::pair<std::string, std::uint8_t (*)(std::uint8_t)>>{
             {"xor 0xFF", [](std::uint8_t b) { return std::uint8_t(b ^ 0xFF); }},
             {"xor 0x01", [](std::uint8_t b) { return std::uint8_t(b ^ 0x01); }},
             {"set 0x80", [](std::uint8_t) { return std::uint8_t(0x80); }}}) {
        std::size_t padding_seen = 0;
        for (std::size_t at = 0; at < original().size(); at += position_stride) {
            std::vector<std::uint8_t> bytes = original();
            bytes[at] = damage(bytes[at]);
            if (bytes[at] == original()[at]) continue;
            if (padding()[at]) {
                // Alignment padding: no decoder reads it, verify() must report it. Every such
                // byte is alike, so one in 16 goes through the (slow, successful) whole decode.
                CHECK(error_of([&] { ContainerReader::from_bytes(bytes).verify(); }) == "error:corrupt");
                if (padding_seen++ % 16 != 0) {
                    ++outcomes["padding: verify() reports it (decode skipped)"];
                    continue;
                }
            }
            ++outcomes[outcome_of(std::move(bytes))];
        }
    }
    report("every byte damaged (xor 0xFF, xor 0x01, set 0x80)", outcomes, seconds_since(start));
}

TEST_CASE("corruption: every truncation, through the whole decode", "[corruption][hostile]") {
    const auto start = std::chrono::steady_clock::now();
    std::map<std::string, int> outcomes;
    for (std::size_t length = 0; length < original().size(); length += position_stride)
        ++outcomes[outcome_of(std::vector<std::uint8_t>(original().begin(), original().begin() + std::ptrdiff_t(length)))];
    // A truncated file padded back to its size with zeros: its size no longer says "short" (its footer is gone).
    for (std::size_t length = 0; length < original().size(); length += 61 * position_stride) {
        std::vector<std::uint8_t> bytes = original();
        std::fill(bytes.begin() + std::ptrdiff_t(length), bytes.end(), std::uint8_t(0));
        ++outcomes[outcome_of(std::move(bytes))];
    }
    report("every truncation (and some zero-filled tails)", outcomes, seconds_since(start));
    CHECK(outcomes.count("decoded:identical") == 0);
}

TEST_CASE("corruption: directory damage with recomputed CRCs, through the whole decode", "[corruption][hostile]") {
    const auto start = std::chrono::steady_clock::now();
    const std::uint64_t directory_bytes = directory_size(original());
    const std::size_t directory_at = original().size() - 16 - std::size_t(directory_bytes);
    REQUIRE(directory_bytes > 0);
    Random random(99);
    std::map<std::string, int> outcomes;
    const int rounds = int(6000 / position_stride);
    for (int round = 0; round < rounds; ++round) {
        std::vector<std::uint8_t> bytes = original();
        const int hits = 1 + int(random.below(3));
        for (int hit = 0; hit < hits; ++hit) {
            const std::size_t at = directory_at + std::size_t(random.below(directory_bytes));
            bytes[at] = random.below(2) ? std::uint8_t(random.below(256)) : std::uint8_t(bytes[at] ^ (1u << random.below(8)));
        }
        fix_container_crcs(bytes);
        ++outcomes[outcome_of(std::move(bytes), true)];
    }
    report("random directory damage, directory and footer CRCs fixed up", outcomes, seconds_since(start));
}

namespace {

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_test_corruption_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    /// Names of the folder's entries (a leftover temporary shows up here).
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& entry : std::filesystem::directory_iterator(path)) names.push_back(entry.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }
};

}  // namespace

TEST_CASE("nothing lost: failed model writes leave the existing output and no temporary", "[corruption][atomic]") {
    const TempDir temp;
    // A llama2.c model and a safetensors model, each through compress -> decompress.
    write_file_atomic(temp.path / "tiny.bin", reliability::tiny_llama2c());
    const ModelFile llama = load_model_file(temp.path / "tiny.bin");
    const ContainerReader llama_container =
        ContainerReader::from_bytes(DefaultCodec(reliability::small_options("rtn")).compress_model(llama).writer.serialize());
    const ModelFile llama_back = DefaultCodec::decompress_model(llama_container);
    const ModelFile plain_back = DefaultCodec::decompress_model(ContainerReader::from_bytes(reliability::small_container("ecsq")));
    std::filesystem::remove(temp.path / "tiny.bin");

    const std::vector<std::uint8_t> previous(3000, 0x5A);  // what a user already had at the output path
    for (const auto& [model, name] : std::vector<std::pair<const ModelFile*, std::string>>{
             {&llama_back, "out.bin"}, {&llama_back, "out.safetensors"}, {&plain_back, "out.safetensors"}}) {
        INFO(name);
        const auto target = temp.path / name;
        write_file_atomic(target, previous);
        // Disk full at every kind of place: before the header, inside it, inside the data, at the last byte.
        CHECK_THROWS_AS(write_model_file(*model, temp.path / "probe"), nwc::error);  // no known extension
        std::uint64_t full_size = 0;
        {
            const auto probe = temp.path / ("probe" + target.extension().string());
            write_model_file(*model, probe);
            full_size = std::filesystem::file_size(probe);
            std::filesystem::remove(probe);
        }
        for (std::uint64_t limit : {std::uint64_t(0), std::uint64_t(5), std::uint64_t(100), full_size / 2, full_size - 1}) {
            INFO("disk full after " << limit << " of " << full_size << " bytes");
            try {
                write_model_file(*model, target, limit);
                FAIL("no error");
            } catch (const nwc::error& caught) {
                CHECK(caught.id() == errc::io);
            }
            CHECK(read_file(target) == previous);
            CHECK(temp.entries() == std::vector<std::string>{name});
        }
        write_model_file(*model, target, full_size);  // exactly enough room
        CHECK(std::filesystem::file_size(target) == full_size);
        std::filesystem::remove(target);
    }

    // Failures before and during the write: a model llama2.c cannot hold, a model missing a tensor.
    const auto target = temp.path / "model.bin";
    write_file_atomic(target, previous);
    CHECK_THROWS_AS(write_model_file(plain_back, target), nwc::error);
    ModelFile broken = llama_back;
    broken.tensors.pop_back();
    CHECK_THROWS_AS(write_model_file(broken, target), nwc::error);
    CHECK(read_file(target) == previous);
    CHECK(temp.entries() == std::vector<std::string>{"model.bin"});
}

TEST_CASE("corruption: a llama2c source without its llama2.c header is an error and not a JSON exception", "[corruption][hostile]") {
    // Found by fuzz_container (fuzz/corpus/container/crash-llama2c-header-renamed): a container whose
    // source says llama2c but whose "llama2c" key was renamed made write_model_file throw nlohmann's
    // out_of_range (source.at("llama2c")), which no caller expects; the streamed decompression and
    // the compressor read the same key.
    const TempDir temp;
    ModelFile model = DefaultCodec::decompress_model(ContainerReader::from_bytes(reliability::llama2c_container_with_rope_corrections()));
    REQUIRE(model.format == ModelFormat::llama2c);
    model.source["llama0c"] = model.source["llama2c"];
    model.source.erase("llama2c");
    CHECK(error_of([&] { write_model_file(model, temp.path / "out.safetensors"); }) == "error:corrupt");
    CHECK(error_of([&] { write_model_file(model, temp.path / "out.bin"); }) == "error:corrupt");
    CHECK(error_of([&] { (void)DefaultCodec(reliability::small_options("rtn")).compress_model(model); }) == "error:corrupt");
    CHECK(!std::filesystem::exists(temp.path / "out.safetensors"));
    CHECK(!std::filesystem::exists(temp.path / "out.bin"));
}

TEST_CASE("corruption: metadata with valid CRCs whose step, scales or alpha overflow is an error", "[corruption][hostile]") {
    // Reported by fuzz_container's invariant on a crafted input (fuzz/corpus/container/
    // crash-ecsq-overflow): ECSQ step 3e38 with fp16 scales of 65504 decoded to infinities. Every
    // field is valid on its own and the CRCs here are the writer's, so only the decoder's
    // finiteness check (detail::require_finite_range, in decode_plans) can catch it.
    const ModelFile model = reliability::small_model();
    const TensorView<const float> weights = model.tensors[0].values.view();
    const auto decode_patched = [&](std::string method, auto&& patch) {
        const DefaultCodec coder(reliability::small_options(method), method == "nwc" ? reliability::tiny_random_codec() : nullptr);
        ContainerTensor tensor = coder.compress("w", weights);
        patch(tensor.metadata);
        ContainerWriter writer;
        if (method == "nwc") writer.add_codec(coder.decoder_blob());
        writer.add_tensor(std::move(tensor));
        const ContainerReader reader = ContainerReader::from_bytes(writer.serialize());
        try {
            const Tensor<float> decoded = DefaultCodec::decompress(reader, 0);
            for (float value : decoded.values()) REQUIRE(std::isfinite(value));
            return std::string("decoded");
        } catch (const nwc::error& caught) {
            return "error:" + std::string(to_string(caught.id()));
        }
    };
    const auto put_f32 = [](std::vector<std::uint8_t>& bytes, std::size_t at, float value) { std::memcpy(bytes.data() + at, &value, 4); };
    // The method prefix is 6 bytes and a one-byte span here (small segments), so u8 axis at 7, then
    // ECSQ: fp16 step at 8 and (one scale per tensor) its fp16 scale at 10; nwc: f32 alpha at 8.
    // An fp16 step times an fp16 scale is always a finite float, so ecsq's hostile case is a step
    // of infinity (or NaN, or a negative one).
    constexpr std::size_t knob_at = detail::diagnostics_offset + detail::diagnostics_bytes + 1 + 1;
    CHECK(decode_patched("ecsq", [](std::vector<std::uint8_t>&) {}) == "decoded");
    for (const std::uint16_t bad_step : {std::uint16_t(0x7C00), std::uint16_t(0x7E00), std::uint16_t(0xBC00), std::uint16_t(0x0000)})
        CHECK(decode_patched("ecsq", [&](std::vector<std::uint8_t>& metadata) {
                  REQUIRE(metadata[knob_at - 1] == std::uint8_t(NormalizationAxis::per_tensor));
                  std::memcpy(metadata.data() + knob_at, &bad_step, 2);
              }) == "error:corrupt");
    // nwc: a positive subnormal alpha divides the chunks to infinity.
    CHECK(decode_patched("nwc", [](std::vector<std::uint8_t>&) {}) == "decoded");
    CHECK(decode_patched("nwc", [&](std::vector<std::uint8_t>& metadata) { put_f32(metadata, knob_at, 1e-44f); }) == "error:corrupt");
}

}  // namespace nwc_test_corruption
