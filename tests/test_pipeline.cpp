// The compression pipeline: model files in and out, the four methods, whole-model compression and
// decompression, determinism across runs and thread counts, rate control, corrupt input.
// nwc-ctest-labels: data slow
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nwc/codec/codec_file.hpp"
#include "nwc/codec/trainer.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/streaming_decompress.hpp"
#include "error_testing.hpp"
#include "reliability_support.hpp"
#include "requirements.hpp"

namespace nwc_test_pipeline {

using namespace nwc;
using nwc::testing::error_of;

namespace {

std::filesystem::path data(const std::string& name) { return nwc::testing::data_path(name); }

struct TempDir {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_pipeline_test_" + std::to_string(::getpid()));
    TempDir() { std::filesystem::create_directories(path); }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};
const TempDir& temp() {
    static TempDir directory;
    return directory;
}

/// A small codec trained for a few hundred steps on GPT-Neo chunks (never on stories260K).
std::shared_ptr<const NeuralCodec> tiny_codec() {
    static const std::shared_ptr<const NeuralCodec> codec = [] {
        const SafetensorsFile file = SafetensorsFile::open(data("gptneo125m_attn.safetensors"));
        const Chunker chunker;
        std::vector<float> chunks;
        for (std::size_t k = 0; k < 2; ++k) {
            const ChunkedWeights split = chunker.split(file.read_float32(file.tensors()[k].name).view());
            chunks.insert(chunks.end(), split.chunks.begin(), split.chunks.end());
        }
        const TrainingCorpus corpus = TrainingCorpus::from_chunks(std::move(chunks), 16);
        TrainingOptions options;
        options.architecture = CodecArchitecture{16, 32, 1, 16, 4};
        options.steps = 400;
        options.batch = 256;
        options.learning_rate = 3e-3;
        options.loss.lambda = 30;  // about 4 bits per weight on stories260K at alpha 1
        options.threads = 2;
        CodecTrainer trainer(options, corpus);
        for (int step = 0; step < options.steps; ++step) trainer.step();
        return std::make_shared<const NeuralCodec>(trainer.freeze());
    }();
    return codec;
}

const ModelFile& mt3() {
    static const ModelFile model = load_model_file(data("mt3.safetensors"));
    return model;
}

const ModelFile& stories() {
    static const ModelFile model = load_model_file(data("stories260K.bin"));
    return model;
}

/// Calibration Hessians of stories260K from 8 windows of the calibration text.
const llm::LinearHessians& stories_hessians() {
    static const llm::LinearHessians hessians = [] {
        const llm::LlamaModel network(*llama_weights_of(stories()));
        const llm::Tokenizer tokenizer = llm::Tokenizer::read(data("tok512.bin"), 512);
        const std::vector<std::uint8_t> text = read_file(data("tinystories_calib.txt"));
        const std::vector<int> tokens = llm::tokenize_for_evaluation(tokenizer, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
        llm::CalibrationOptions options;
        options.max_windows = 8;
        options.threads = 2;
        return llm::collect_hessians(network, tokens, options);
    }();
    return hessians;
}

/// The first `count` tensors of a file, as a ModelFile (keeps tests fast).
ModelFile first_tensors(const ModelFile& model, std::size_t count) {
    ModelFile subset;
    subset.format = model.format;
    subset.source = model.source;
    for (std::size_t k = 0; k < count && k < model.tensors.size(); ++k) subset.tensors.push_back(model.tensors[k]);
    return subset;
}

MethodOptions options_for(std::string method, int threads = 2) {
    MethodOptions options;
    options.method = method;
    options.threads = threads;
    return options;
}

double total_proxy(const ModelReport& report) {
    double sum = 0.0;
    for (const TensorReport& tensor : report.tensors)
        if (std::isfinite(tensor.proxy_loss)) sum += tensor.proxy_loss;
    return sum;
}

void check_same_tensors(const ModelFile& a, const ModelFile& b) {
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (std::size_t k = 0; k < a.tensors.size(); ++k) {
        CHECK(a.tensors[k].name == b.tensors[k].name);
        CHECK(a.tensors[k].shape == b.tensors[k].shape);
        CHECK(a.tensors[k].original_dtype == b.tensors[k].original_dtype);
    }
}

}  // namespace

TEST_CASE("codes pack and unpack at every width", "[pipeline]") {
    Random random(3);
    // Widths that divide 8 unpack whole bytes first, then the tail: counts that end mid-byte too.
    for (int bits = 1; bits <= 8; ++bits)
        for (const std::size_t count : {0, 1, 7, 1000, 1001, 1003}) {
            INFO(bits << " bits, " << count << " codes");
            std::vector<std::uint8_t> codes(count);
            for (auto& code : codes) code = std::uint8_t(random.below(1u << bits));
            const auto packed = detail::pack_codes(codes, bits);
            CHECK(packed.size() == (codes.size() * std::size_t(bits) + 7) / 8);
            std::vector<std::uint8_t> back(codes.size(), 0xEE);
            detail::unpack_codes(packed, bits, back, "test");
            CHECK(back == codes);
        }
    for (const int bits : {3, 4}) {
        std::vector<std::uint8_t> packed = detail::pack_codes(std::vector<std::uint8_t>{1, 2, 3}, bits);
        packed.back() |= 0x80;  // a padding bit
        std::vector<std::uint8_t> back(3);
        CHECK_THROWS_AS(detail::unpack_codes(packed, bits, back, "test"), error);
    }
}

TEST_CASE("model files are detected by content", "[pipeline][data]") {
    CHECK(detect_model_format(data("mt3.safetensors")) == ModelFormat::safetensors);
    CHECK(detect_model_format(data("stories260K.bin")) == ModelFormat::llama2c);
    CHECK_THROWS_AS(detect_model_format(data("tok512.bin")), error);
    const ModelFile& model = stories();
    CHECK(model.weight_count() == 260032);
    CHECK(model.tensors.front().name == "model.embed_tokens.weight");
    // An HF directory written from the same weights reads back as hf_llama with the same values.
    const auto directory = temp().path / "hf";
    llm::write_hf_llama(directory, *llama_weights_of(model));
    CHECK(detect_model_format(directory) == ModelFormat::hf_llama);
    const ModelFile hf = load_model_file(directory);
    CHECK(hf.format == ModelFormat::hf_llama);
    const llm::LlamaWeights a = *llama_weights_of(model), b = *llama_weights_of(hf);
    CHECK(a.tensor("model.layers.2.self_attn.q_proj.weight").values() == b.tensor("model.layers.2.self_attn.q_proj.weight").values());
    // HF -> .nwc -> .bin gives a llama2.c model of the same config.
    const CompressedModel compressed = DefaultCodec(options_for("rtn")).compress_model(hf);
    const auto bytes = compressed.writer.serialize();
    const ModelFile back = DefaultCodec::decompress_model(ContainerReader::from_bytes(bytes), 2);
    write_model_file(back, temp().path / "from_hf.bin");
    CHECK(llm::read_llama2c(temp().path / "from_hf.bin").weights.config == a.config);

    // The same directory under a config nwc cannot run (Qwen3: q/k norms) is an "hf" model: coded
    // without calibration, it comes back with its source format and config.json.
    const auto qwen3 = temp().path / "qwen3";
    std::filesystem::copy(directory, qwen3);
    nlohmann::json config = llm::detail::read_json_file(qwen3 / "config.json");
    config["architectures"] = {"Qwen3ForCausalLM"};
    config["model_type"] = "qwen3";
    const std::string text = config.dump();
    write_file_atomic(qwen3 / "config.json", {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    const ModelFile other = load_model_file(qwen3);
    REQUIRE(other.format == ModelFormat::hf);
    const auto other_bytes = DefaultCodec(options_for("ecsq")).compress_model(other).writer.serialize();
    const ModelFile other_back = DefaultCodec::decompress_model(ContainerReader::from_bytes(other_bytes), 2);
    CHECK(other_back.format == ModelFormat::hf);
    CHECK(other_back.source["hf_config"] == config);
    CHECK(other_back.tensors.size() == other.tensors.size());
    const std::vector<int> tokens(64, 1);
    try {
        (void)compress_model_sequentially(DefaultCodec(options_for("ecsq")), other, tokens, {});
        FAIL("sequential compression of a model without a forward pass");
    } catch (const error& problem) {
        CHECK(problem.id() == errc::unsupported);
        CHECK_THAT(problem.what(), Catch::Contains("Qwen3ForCausalLM"));
    }
}

TEST_CASE("llama2.c round trip is exact without compression loss in raw tensors and RoPE tables", "[pipeline][data]") {
    // The raw path (1-D norms) and the RoPE corrections must reproduce the source bytes exactly.
    const ModelFile& model = stories();
    const auto path = temp().path / "stories_copy.bin";
    write_model_file(model, path);
    CHECK(read_file(path) == read_file(data("stories260K.bin")));
    CHECK(!model.rope_corrections.values().empty());
}

TEST_CASE("llama2.c RoPE corrections are stored bit-packed; files with the older varint layout still decode", "[pipeline][data]") {
    const ModelFile& model = stories();
    const CompressedModel compressed = DefaultCodec(options_for("rtn")).compress_model(model);
    const std::vector<std::uint8_t> file = compressed.writer.serialize();
    const ContainerReader reader = ContainerReader::from_bytes(file);
    const nwc::llm::LlamaConfig config = detail::llama_config_from_json(model.source.at("llama2c"), "test");
    const std::size_t bits_index = reader.index_of(std::string(detail::rope_correction_bits_name));
    CHECK(reader.payload(bits_index).size() < detail::pack_rope_corrections(model.rope_corrections, config).size() * 6 / 10);
    CHECK(DefaultCodec::decompress_model(reader).rope_corrections.values() == model.rope_corrections.values());

    // The same file as an older writer made it: the corrections as varint pairs under the old name.
    ContainerWriter older;
    older.set_file_metadata(std::string(reader.file_metadata()));
    for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
        const ContainerEntry& entry = reader.entry(index);
        if (index == bits_index) continue;
        ContainerTensor tensor;
        tensor.name = entry.name;
        tensor.original_dtype = entry.original_dtype;
        tensor.shape = entry.shape;
        tensor.method = entry.method;
        tensor.metadata.assign(reader.metadata(index).begin(), reader.metadata(index).end());
        for (std::size_t k = 0; k < entry.segment_count(); ++k) tensor.add_segment(reader.segment(index, k));
        older.add_tensor(std::move(tensor));
    }
    const std::vector<std::uint8_t> varints = detail::pack_rope_corrections(model.rope_corrections, config);
    older.add_tensor(make_raw_tensor(std::string(detail::rope_corrections_name), dtype::u8, Shape{std::int64_t(varints.size())}, varints));
    const std::vector<std::uint8_t> older_file = older.serialize();
    const ModelFile decoded = DefaultCodec::decompress_model(ContainerReader::from_bytes(older_file));
    CHECK(decoded.rope_corrections.values() == model.rope_corrections.values());
    CHECK(decoded.tensors.size() == model.tensors.size());
    // The bit layout under the old name (or the reverse) is refused or decodes to other corrections, never crashes.
    ContainerWriter swapped;
    swapped.set_file_metadata(std::string(reader.file_metadata()));
    const std::vector<std::uint8_t> bits(reader.payload(bits_index).begin(), reader.payload(bits_index).end());
    swapped.add_tensor(make_raw_tensor(std::string(detail::rope_correction_bits_name), dtype::i32, Shape{std::int64_t(bits.size() / 8), 2},
                                       std::vector<std::uint8_t>(bits.begin(), bits.begin() + std::ptrdiff_t(bits.size() / 8 * 8))));
    CHECK(nwc::testing::error_of([&] { (void)DefaultCodec::decompress_model(ContainerReader::from_bytes(swapped.serialize())); }) == errc::corrupt);
}

TEST_CASE("llama2.c RoPE corrections of a tiny model: bit-packed, decoded in memory and streamed alike", "[pipeline]") {
    const std::vector<std::uint8_t> file = reliability::llama2c_container_with_rope_corrections();
    const ContainerReader reader = ContainerReader::from_bytes(file);
    const std::size_t index = reader.index_of(std::string(detail::rope_correction_bits_name));
    CHECK(reader.payload(index).size() <= 4);  // count 3, then 4 bits of k and ~3 x 5 bits
    const ModelFile decoded = DefaultCodec::decompress_model(reader);
    REQUIRE(decoded.rope_corrections.rows() == 3);
    const std::vector<std::int32_t> entries{decoded.rope_corrections(0, 0), decoded.rope_corrections(1, 0), decoded.rope_corrections(2, 0)};
    const nwc::llm::LlamaConfig config = detail::llama_config_from_json(decoded.source.at("llama2c"), "test");
    const auto [real, imag] = nwc::llm::llama2c_rope_tables(config);
    CHECK(entries == std::vector<std::int32_t>{1, 2, std::int32_t(real.numel()) + 3});
    CHECK(std::uint32_t(decoded.rope_corrections(1, 1)) == float_bits(real[2]) - 1);
    CHECK(std::uint32_t(decoded.rope_corrections(2, 1)) == float_bits(imag[3]) + 3);
    // The .bin written from memory holds the corrected tables; the streamed decode (which checks the
    // corrections while it writes a .safetensors, which has no RoPE tables) accepts them.
    nwc::StreamingDecompressor<>(reader).write_safetensors(temp().path / "rope.safetensors", 1);
    CHECK(std::filesystem::exists(temp().path / "rope.safetensors"));
    const auto bin = temp().path / "rope.bin";
    write_model_file(decoded, bin);
    const nwc::llm::Llama2cModel back = nwc::llm::read_llama2c(bin);
    CHECK(float_bits(back.rope_real[1]) == float_bits(real[1]) + 1);
    CHECK(float_bits(back.rope_imag[3]) == float_bits(imag[3]) + 3);
    CHECK(float_bits(back.rope_real[0]) == float_bits(real[0]));
}

TEST_CASE("whole real safetensors files round trip with rtn", "[pipeline][data]") {
    for (const char* name : {"mt3.safetensors", "gptneo125m_attn.safetensors"}) {
        INFO(name);
        const ModelFile gptneo = std::string(name) == "mt3.safetensors" ? ModelFile{} : load_model_file(data(name));
        const ModelFile& model = std::string(name) == "mt3.safetensors" ? mt3() : gptneo;
        const CompressedModel compressed = DefaultCodec(options_for("rtn")).compress_model(model);
        const auto nwc_path = temp().path / "whole.nwc";
        compressed.writer.write(nwc_path);
        const std::uint64_t file_bytes = std::filesystem::file_size(nwc_path);
        CHECK(compressed.report.file_bytes == file_bytes);
        CHECK(compressed.report.bits_per_weight() == 8.0 * double(file_bytes) / double(model.weight_count()));
        CHECK(compressed.report.bits_per_weight() > 4.0);  // 4-bit codes and ~4-bit grid codes per 32 (fp16 scales: 4.5)
        CHECK(compressed.report.bits_per_weight() < 4.25);
        CHECK(compressed.report.relative_mse() < 0.02);
        const ContainerReader reader = ContainerReader::open(nwc_path);
        const ModelFile back = DefaultCodec::decompress_model(reader, 2);
        check_same_tensors(model, back);
        const auto out = temp().path / "whole.safetensors";
        write_model_file(back, out);
        const SafetensorsFile reread = SafetensorsFile::open(out);
        REQUIRE(reread.tensor_count() == model.tensors.size());
        for (const ModelTensor& tensor : model.tensors) {
            const SafetensorsTensorInfo& info = reread.info(tensor.name);
            CHECK(info.shape == tensor.shape);
            CHECK(info.type == tensor.original_dtype);
        }
        // The decoder's reconstruction is what the report measured, up to the dtype's rounding.
        double error = 0.0, norm = 0.0;
        for (std::size_t k = 0; k < model.tensors.size(); ++k)
            for (std::int64_t i = 0; i < model.tensors[k].values.numel(); ++i) {
                const double d = double(model.tensors[k].values[i]) - back.tensors[k].values[i];
                error += d * d;
                norm += double(model.tensors[k].values[i]) * model.tensors[k].values[i];
            }
        CHECK(error / norm == Approx(compressed.report.relative_mse()).epsilon(1e-6));
        // One tensor alone decodes to the same values.
        const Tensor<float> single = DefaultCodec::decompress(reader, 3);
        CHECK(single.values() == back.tensors[3].values.values());
    }
}

TEST_CASE("every method gives the same bytes on repeated runs and for 1 or 2 threads", "[pipeline][data]") {
    const ModelFile subset = first_tensors(mt3(), 6);
    const HessianLookup none;
    for (std::string method : {"rtn", "gptq", "ecsq", "nwc"}) {
        INFO(method);
        const auto run = [&](int threads) {
            return DefaultCodec(options_for(method, threads), tiny_codec()).compress_model(subset, none).writer.serialize();
        };
        const auto one = run(1);
        CHECK(run(1) == one);
        CHECK(run(2) == one);
        const ModelFile a = DefaultCodec::decompress_model(ContainerReader::from_bytes(one), 1);
        const ModelFile b = DefaultCodec::decompress_model(ContainerReader::from_bytes(one), 2);
        for (std::size_t k = 0; k < a.tensors.size(); ++k) CHECK(a.tensors[k].values.values() == b.tensors[k].values.values());
    }
    // With Hessians (LDLQ, levels) too.
    const auto lookup = hessian_lookup(stories_hessians());
    for (std::string method : {"gptq", "ecsq", "nwc"}) {
        INFO(method);
        const auto one = DefaultCodec(options_for(method, 1), tiny_codec()).compress_model(stories(), lookup).writer.serialize();
        CHECK(DefaultCodec(options_for(method, 2), tiny_codec()).compress_model(stories(), lookup).writer.serialize() == one);
    }
}

TEST_CASE("error feedback lowers the proxy loss on real matrices with real Hessians", "[pipeline][data]") {
    const auto lookup = hessian_lookup(stories_hessians());
    const auto report = [&](std::string method, bool ldlq) {
        MethodOptions options = options_for(method);
        options.ldlq = ldlq;
        options.bits = 3;
        return DefaultCodec(options, tiny_codec()).compress_model(stories(), lookup).report;
    };
    const ModelReport rtn = report("rtn", true), gptq = report("gptq", true);
    CHECK(total_proxy(gptq) < total_proxy(rtn));
    for (std::size_t k = 0; k < gptq.tensors.size(); ++k) {
        if (gptq.tensors[k].method == "raw" || gptq.tensors[k].shape.rank() == 1) continue;  // vectors: ecsq, no Hessian
        INFO(gptq.tensors[k].name);
        CHECK(gptq.tensors[k].used_feedback);
        CHECK(std::isfinite(gptq.tensors[k].proxy_loss));
    }
    const ModelReport ecsq_plain = report("ecsq", false), ecsq = report("ecsq", true);
    CHECK(total_proxy(ecsq) < total_proxy(ecsq_plain));
    const ModelReport nwc_plain = report("nwc", false), nwc_ldlq = report("nwc", true);
    CHECK(total_proxy(nwc_ldlq) < total_proxy(nwc_plain));
    // Without LDLQ the levels still come from the Hessian; the file records both facts.
    REQUIRE(nwc_plain.tensors[2].name == "model.layers.0.self_attn.q_proj.weight");
    CHECK(nwc_plain.tensors[2].used_hessian);
    CHECK(!nwc_plain.tensors[2].used_feedback);
    CHECK(nwc_ldlq.tensors[2].used_feedback);
}

TEST_CASE("nwc stores importance levels only when one is not 0", "[pipeline][data]") {
    Random random(11);
    Tensor<float> weights(Shape{64, 48});
    for (auto& value : weights.values()) value = 0.02f * random.normal();
    Tensor<double> hessian(Shape{48, 48});
    for (std::int64_t c = 0; c < 48; ++c) hessian(c, c) = 1.0 + double((c * 7) % 48);  // distinct: the top 10% get levels
    std::size_t metadata_bytes[2] = {0, 0};
    for (const bool merge : {false, true}) {
        INFO((merge ? "levels merged down" : "levels kept"));
        MethodOptions options = options_for("nwc", 1);
        options.ldlq = false;
        // 64 rows = 4 chunks of 16 symbols per column: the 5 top columns hold 320 symbols, below the default 4096.
        options.nwc_min_level_symbols = merge ? MethodOptions{}.nwc_min_level_symbols : 0;
        const DefaultCodec codec(options, tiny_codec());
        TensorReport report;
        ContainerTensor tensor = codec.compress("w", weights.view(), &hessian, &report);
        const bool stored = (tensor.metadata[1] & 2) != 0;  // the prefix's flags: bit 1, levels stored
        CHECK(stored == !merge);
        metadata_bytes[merge] = tensor.metadata.size();
        ContainerWriter writer;
        writer.add_codec(codec.decoder_blob());
        writer.add_tensor(tensor);
        const auto bytes = writer.serialize();
        const ContainerReader reader = ContainerReader::from_bytes(bytes);
        const Tensor<float> decoded = DefaultCodec::decompress(reader, 0);
        // What the encoder measured is what the file decodes to, either way.
        double error = 0.0, energy = 0.0;
        for (std::size_t k = 0; k < weights.values().size(); ++k) {
            error += std::pow(double(decoded.values()[k]) - double(weights.values()[k]), 2);
            energy += std::pow(double(weights.values()[k]), 2);
        }
        CHECK(error / energy == Approx(report.relative_mse).epsilon(1e-3));
        CHECK(DefaultCodec::account(reader).total.of("levels") == (merge ? 0u : 12u));  // 48 levels, 4 to a byte
    }
    CHECK(metadata_bytes[0] == metadata_bytes[1] + 12);
}

TEST_CASE("stories260K at about 4 bits per weight with every method decompresses to a llama2.c model", "[pipeline][data]") {
    const auto lookup = hessian_lookup(stories_hessians());
    for (std::string method : {"rtn", "gptq", "ecsq", "nwc"}) {
        INFO(method);
        const CompressedModel compressed = compress_to_target(DefaultCodec(options_for(method), tiny_codec()), stories(), lookup, RateTarget{4.0});
        const auto path = temp().path / (std::string(method) + ".nwc");
        compressed.writer.write(path);
        const double bpw = 8.0 * double(std::filesystem::file_size(path)) / double(stories().weight_count());
        CHECK(compressed.report.bits_per_weight() == bpw);
        CHECK(std::fabs(bpw / 4.0 - 1.0) <= 0.01);
        CHECK(compressed.report.target_met);
        const ModelFile back = DefaultCodec::decompress_model(ContainerReader::open(path), 2);
        const auto bin = temp().path / (std::string(method) + ".bin");
        write_model_file(back, bin);
        const llm::Llama2cModel loaded = llm::read_llama2c(bin);
        const llm::Llama2cModel original = llm::read_llama2c(data("stories260K.bin"));
        CHECK(loaded.weights.config == original.weights.config);
        CHECK(loaded.rope_real.values() == original.rope_real.values());
        CHECK(loaded.rope_imag.values() == original.rope_imag.values());
        // Norm vectors are coded by ecsq at vector_step (1/64 of their RMS): within half a step.
        const auto& norm = original.weights.final_norm.values();
        const auto& norm_back = loaded.weights.final_norm.values();
        REQUIRE(norm_back.size() == norm.size());
        double square_sum = 0.0;
        for (float value : norm) square_sum += double(value) * value;
        const double rms = std::sqrt(square_sum / double(norm.size()));
        for (std::size_t i = 0; i < norm.size(); ++i) CHECK(std::fabs(norm_back[i] - norm[i]) <= 0.51 * MethodOptions{}.vector_step * rms);
    }
}

TEST_CASE("ecsq and nwc rate control land within 1% on a real safetensors file", "[pipeline][data]") {
    const ModelFile subset = first_tensors(mt3(), 12);
    for (double target : {3.0, 5.0}) {
        const CompressedModel compressed = compress_to_target(DefaultCodec(options_for("ecsq")), subset, {}, RateTarget{target});
        INFO(target << " -> " << compressed.report.bits_per_weight());
        CHECK(std::fabs(compressed.report.bits_per_weight() / target - 1.0) <= 0.01);
        CHECK(compressed.report.target_met);
    }
    // nwc's alpha search without Hessians (passes skip the decoder, the final pass measures).
    const CompressedModel neural = compress_to_target(DefaultCodec(options_for("nwc"), tiny_codec()), subset, {}, RateTarget{3.0});
    INFO("nwc -> " << neural.report.bits_per_weight() << " " << neural.report.setting);
    CHECK(std::fabs(neural.report.bits_per_weight() / 3.0 - 1.0) <= 0.01);
    CHECK(neural.report.squared_norm > 0.0);
    CHECK(neural.report.relative_mse() < 0.2);
    // An unreachable target is reported, not hidden.
    const CompressedModel low = compress_to_target(DefaultCodec(options_for("rtn")), subset, {}, RateTarget{1.0});
    CHECK(!low.report.target_met);
    CHECK(!low.report.note.empty());
}

TEST_CASE("corrupt or hostile method data gives nwc::error", "[pipeline][data]") {
    const ModelFile subset = first_tensors(mt3(), 2);
    for (std::string method : {"rtn", "ecsq", "nwc"}) {
        INFO(method);
        const CompressedModel compressed = DefaultCodec(options_for(method), tiny_codec()).compress_model(subset);
        const auto bytes = compressed.writer.serialize();
        const ContainerReader reader = ContainerReader::from_bytes(bytes);
        // Rebuild the container with one metadata byte or one payload byte changed (CRCs recomputed),
        // so the method's own checks must catch it.
        for (int trial = 0; trial < 24; ++trial) {
            ContainerWriter writer;
            writer.set_file_metadata(std::string(reader.file_metadata()));
            for (std::size_t k = 0; k < reader.codec_count(); ++k) {
                const auto blob = reader.codec(k);
                writer.add_codec({blob.begin(), blob.end()});
            }
            Random random(std::uint64_t(trial) + 100);
            for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
                const ContainerEntry& entry = reader.entry(index);
                ContainerTensor tensor{entry.name, entry.original_dtype, entry.shape, entry.method, entry.codec_index, {}, {}, {}};
                const auto metadata = reader.metadata(index);
                const auto payload = reader.payload(index);
                tensor.metadata.assign(metadata.begin(), metadata.end());
                tensor.payload.assign(payload.begin(), payload.end());
                for (std::size_t s = 0; s < entry.segment_count(); ++s) tensor.segment_sizes.push_back(entry.segment_bounds[s + 1] - entry.segment_bounds[s]);
                if (index == 0) {
                    auto& target = (trial % 2 == 0 && !tensor.metadata.empty()) ? tensor.metadata : tensor.payload;
                    target[random.below(target.size())] ^= std::uint8_t(1u << random.below(8));
                }
                writer.add_tensor(std::move(tensor));
            }
            const auto mutated = writer.serialize();
            try {
                DefaultCodec::decompress_model(ContainerReader::from_bytes(mutated), 1);
            } catch (const error&) {
                // expected for most mutations; the others decode to other values, never crash
            }
        }
        // Metadata cut short is truncated or corrupt.
        DecodeResources resources(reader);
        CHECK_THROWS_AS(RtnMethod::parse(reader.entry(0), reader.metadata(0).first(10), resources, "cut"), error);
    }
}

TEST_CASE("rtn and gptq scale layouts: grid codes or fp16, exact decode, sizes predicted for fp16 only, hostile scale sets", "[pipeline]") {
    Random random(7);
    Tensor<float> weights(Shape{40, 150});  // 150 = 2 groups of 64 + a tail of 22 (4 of 32 + 22)
    for (auto& value : weights.values()) value = 0.02f * random.normal();
    std::uint64_t scale_bytes[2] = {0, 0};
    for (const bool fp16 : {false, true})
        for (const std::string method : {"rtn", "gptq"}) {
            INFO(method << (fp16 ? " fp16" : " grid"));
            MethodOptions options = options_for(method, 1);
            options.fp16_group_scales = fp16;
            options.group_size = fp16 ? 32 : 64;
            options.weights_per_segment = 1000;  // 6 rows per segment: 7 segments
            const DefaultCodec codec(options);
            const ContainerTensor tensor = codec.compress("w", weights.view());
            REQUIRE(tensor.segment_sizes.size() == 7);
            const std::optional<std::vector<std::uint64_t>> predicted = codec.predicted_sizes(weights.shape(), options);
            CHECK(predicted.has_value() == fp16);
            if (predicted) {
                REQUIRE(predicted->size() == 8);
                CHECK((*predicted)[0] == tensor.metadata.size());
                for (std::size_t k = 0; k < 7; ++k) CHECK((*predicted)[k + 1] == tensor.segment_sizes[k]);
            }
            ContainerWriter writer;
            writer.add_tensor(tensor);
            const auto bytes = writer.serialize();
            const ContainerReader reader = ContainerReader::from_bytes(bytes);
            // Decodes to exactly what the quantizer reconstructs, in either layout.
            RoundToNearest quantizer({4, options.group_size, fp16 ? RoundingScheme::signed_max : RoundingScheme::grid});
            CHECK(DefaultCodec::decompress(reader, 0).values() == quantizer.quantize(weights.view()).values());
            scale_bytes[fp16] = DefaultCodec::account(reader).total.of("scales");
            if (method != "rtn" || fp16) continue;
            // Hostile grid scale sets: each a corrupt segment, never a crash.
            const auto with_segment_0 = [&](auto&& edit) {
                ContainerTensor changed = tensor;
                std::vector<std::uint8_t> first(changed.payload.begin(), changed.payload.begin() + std::ptrdiff_t(changed.segment_sizes[0]));
                edit(first);
                changed.payload.erase(changed.payload.begin(), changed.payload.begin() + std::ptrdiff_t(changed.segment_sizes[0]));
                changed.payload.insert(changed.payload.begin(), first.begin(), first.end());
                changed.segment_sizes[0] = first.size();
                ContainerWriter hostile;
                hostile.add_tensor(changed);
                const auto hostile_bytes = hostile.serialize();
                return error_of([&] { DefaultCodec::decompress(ContainerReader::from_bytes(hostile_bytes), 0); });
            };
            CHECK(with_segment_0([](std::vector<std::uint8_t>& b) { b[1] = 8; }) == errc::corrupt);   // width beyond 7
            CHECK(with_segment_0([](std::vector<std::uint8_t>& b) { b[0] = 0; }) == errc::corrupt);   // below the lowest grid code
            CHECK(with_segment_0([](std::vector<std::uint8_t>& b) { b[0] = 200; }) == errc::corrupt); // above the highest
            CHECK(with_segment_0([](std::vector<std::uint8_t>& b) { b.push_back(0); }) == errc::corrupt);
            const errc cut = with_segment_0([](std::vector<std::uint8_t>& b) { b.pop_back(); });
            CHECK((cut == errc::corrupt || cut == errc::truncated));
            CHECK(with_segment_0([](std::vector<std::uint8_t>& b) { b.resize(1); }) == errc::corrupt);
        }
    // The grid codes: 2 + ceil(K w / 8) + ceil(K / 8) bytes per segment of 6 rows (K = 18 groups of
    // 64, w ~ 3-5 bits), against 2 bytes per fp16 scale of 32 (30 per segment).
    CHECK(scale_bytes[0] * 3 < scale_bytes[1]);
}

TEST_CASE("outputs are written atomically", "[pipeline][data]") {
    const ModelFile subset = first_tensors(mt3(), 3);
    const CompressedModel compressed = DefaultCodec(options_for("rtn")).compress_model(subset);
    const auto path = temp().path / "atomic.nwc";
    write_file_atomic(path, std::vector<std::uint8_t>{'o', 'l', 'd'});
    CHECK_THROWS_AS(compressed.writer.write(path, 1000), error);  // a full disk after 1000 bytes
    CHECK(read_file(path) == std::vector<std::uint8_t>{'o', 'l', 'd'});
    CHECK_THROWS_AS(write_model_file(subset, path.string() + ".safetensors", 1000), error);
    CHECK(!std::filesystem::exists(path.string() + ".safetensors"));
    CHECK_THROWS_AS(write_model_file(subset, temp().path / "out.bin"), error);  // a plain safetensors model is no llama2.c model
    CHECK_THROWS_AS(write_model_file(subset, temp().path / "out.txt"), error);
}

TEST_CASE("a small file cannot ask for a huge allocation", "[pipeline]") {
    ContainerWriter writer;
    writer.set_file_metadata(R"({"format":"nwc-pipeline","version":1,"source":{"source_format":"safetensors"}})");
    writer.add_tensor(ContainerTensor{"bomb", dtype::f16, Shape{1 << 20, 1 << 20}, "ecsq", -1, std::vector<std::uint8_t>(64, 0),
                                      std::vector<std::uint8_t>(200, 0), {}});
    const auto bytes = writer.serialize();
    try {
        DefaultCodec::decompress_model(ContainerReader::from_bytes(bytes), 1);
        FAIL("no error");
    } catch (const error& problem) {
        CHECK(problem.id() == errc::limit);
    }
}

}  // namespace nwc_test_pipeline
