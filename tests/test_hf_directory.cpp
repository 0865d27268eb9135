// io/hf_directory.hpp: a model written as a Hugging Face directory (config.json, safetensors shards,
// the index) reads back as the same model; shards respect their size; a directory is written
// whole or not at all and never over another model; the source directory's other files
// (tokenizer, generation config) travel through compression byte for byte.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "error_testing.hpp"
#include "llm_test_support.hpp"
#include "nwc/io/hf_directory.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/streaming_decompress.hpp"

namespace nwc_test_hf_directory {

using namespace nwc;
using nwc::testing::error_of;
using nwc::llm::testing::random_llama_weights;
using nwc::llm::testing::small_llama_config;
using nwc::llm::testing::TemporaryDirectory;

namespace {



std::set<std::string> entries_of(const std::filesystem::path& directory) {
    std::set<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(directory)) names.insert(entry.path().filename().string());
    return names;
}

// Every tensor of `a` is in `b` with the same dtype, shape and values (or bytes).
void check_same_tensors(const ModelFile& a, const ModelFile& b) {
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (const ModelTensor& tensor : a.tensors) {
        INFO(tensor.name);
        const ModelTensor* other = b.find(tensor.name);
        REQUIRE(other != nullptr);
        CHECK(other->original_dtype == tensor.original_dtype);
        CHECK(other->shape == tensor.shape);
        CHECK(other->values.values() == tensor.values.values());
        CHECK(other->raw_bytes == tensor.raw_bytes);
    }
}

ModelFile plain_model() {
    ModelFile model;
    model.format = ModelFormat::safetensors;
    model.source = {{"source_format", "safetensors"}, {"safetensors_metadata", {{"format", "pt"}}}};
    Random random(5);
    const auto floats = [&](std::string name, dtype type, Shape shape) {
        Tensor<float> values(shape);
        for (float& value : values.values()) value = type == dtype::f32 ? random.normal() : to_float(to_bfloat16(random.normal()));
        if (type == dtype::f16)
            for (float& value : values.values()) value = to_float(to_half(value));
        model.tensors.push_back({std::move(name), type, shape, std::move(values), {}});
    };
    floats("a.weight", dtype::f32, Shape{3, 5});  // 60 bytes
    floats("b.weight", dtype::bf16, Shape{40});   // 80 bytes: alone in its shard
    floats("c.weight", dtype::f16, Shape{4, 4});  // 32 bytes
    model.tensors.push_back({"d.ids", dtype::i32, Shape{4}, {}, {1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0}});  // 16 bytes
    floats("e.bias", dtype::f32, Shape{2});  // 8 bytes
    return model;
}

}  // namespace

TEST_CASE("hf_directory: shards of at most the given size, the index maps every tensor, reading gives the model back", "[hf_directory]") {
    const TemporaryDirectory temp("hf_directory_shards");
    const ModelFile model = plain_model();
    const auto out = temp.path() / "out";
    const HfDirectoryReport report = write_hf_directory(model, out, 64);
    // a (60) | b (80, alone) | c + d (48) | e (8: 48 + 8 = 56 <= 64, so with c and d)
    REQUIRE(report.shards == 3);
    CHECK(report.tensor_bytes == 60 + 80 + 32 + 16 + 8);
    CHECK(entries_of(out) == std::set<std::string>{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                                   "model-00003-of-00003.safetensors", "model.safetensors.index.json"});
    const nlohmann::json index = llm::detail::read_json_file(out / "model.safetensors.index.json");
    CHECK(index["metadata"]["total_size"] == report.tensor_bytes);
    const std::map<std::string, std::string> expected{{"a.weight", "model-00001-of-00003.safetensors"},
                                                      {"b.weight", "model-00002-of-00003.safetensors"},
                                                      {"c.weight", "model-00003-of-00003.safetensors"},
                                                      {"d.ids", "model-00003-of-00003.safetensors"},
                                                      {"e.bias", "model-00003-of-00003.safetensors"}};
    CHECK(index["weight_map"].get<std::map<std::string, std::string>>() == expected);
    detail::SafetensorsModel opened;
    for (const std::string shard : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}) {
        SafetensorsFile file = SafetensorsFile::open(out / shard);
        CHECK(file.metadata().at("format") == "pt");
        for (const auto& info : file.tensors()) CHECK(expected.at(info.name) == shard);
        detail::add_safetensors_outline(opened, std::move(file));
    }
    check_same_tensors(model, std::move(opened).read_all());

    // One shard: model.safetensors, no index.
    const auto single = temp.path() / "single";
    CHECK(write_hf_directory(model, single).shards == 1);
    CHECK(entries_of(single) == std::set<std::string>{"model.safetensors"});
    CHECK(error_of([&] { write_hf_directory(model, temp.path() / "zero", 0); }) == errc::invalid_argument);
}

TEST_CASE("hf_directory: Llama models come back as a directory transformers and nwc read", "[hf_directory]") {
    const TemporaryDirectory temp("hf_directory_llama");
    const llm::LlamaWeights weights = random_llama_weights(small_llama_config(), 9);
    // From a Hugging Face directory: the same config.json, the same tensors, sharded.
    const auto source = temp.path() / "source";
    llm::write_hf_llama(source, weights, dtype::bf16);
    const ModelFile hf = load_model_file(source);
    const auto out = temp.path() / "hf_out";
    const HfDirectoryReport report = write_hf_directory(hf, out, 20000);
    CHECK(report.shards > 1);
    CHECK(llm::detail::read_json_file(out / "config.json") == llm::detail::read_json_file(source / "config.json"));
    const ModelFile hf_back = load_model_file(out);
    CHECK(hf_back.format == ModelFormat::hf_llama);
    check_same_tensors(hf, hf_back);

    // From a llama2.c file: config.json from its header, HF names and row order.
    const auto bin = temp.path() / "model.bin";
    llm::write_llama2c(bin, weights);
    const auto from_llama2c = temp.path() / "from_llama2c";
    write_hf_directory(load_model_file(bin), from_llama2c, 30000);
    const llm::LlamaWeights back = read_llama_weights(from_llama2c);
    REQUIRE(back.config == weights.config);
    weights.for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape&) { REQUIRE(tensor.values() == back.tensor(name).values()); });
}

TEST_CASE("hf_directory: tokenizer files and the other small files of the directory travel through compression", "[hf_directory][pipeline]") {
    const TemporaryDirectory temp("hf_directory_files");
    const auto source = temp.path() / "source";
    llm::write_hf_llama(source, random_llama_weights(small_llama_config(), 4), dtype::bf16);
    const auto put = [&](const std::string& name, std::vector<std::uint8_t> bytes) { write_file_atomic(source / name, bytes); };
    const std::string tokenizer = R"({"model": {"type": "BPE", "vocab": {"a": 0}}})";
    put("tokenizer.json", {tokenizer.begin(), tokenizer.end()});
    put("tokenizer.model", {0x0A, 0x00, 0xFF, 0x80, 0x00});  // binary: NUL and high bytes
    put("generation_config.json", {'{', '}'});
    put("added_tokens.json", {});  // empty
    put(".gitattributes", {'*'});  // hidden: left behind
    put("pytorch_model.bin", {1, 2, 3});  // weights in another format: left behind
    std::filesystem::create_directory(source / "original");
    put("original/params.json", {'{', '}'});  // not top-level: left behind
    {
        std::ofstream large(source / "large.txt", std::ios::binary);  // one byte over the limit (sparse)
        large.seekp(std::streamoff(detail::max_source_file_bytes));
        large.put('x');
    }
    const ModelFile model = load_model_file(source);
    std::vector<std::string> names;
    for (const SourceFile& file : model.files) names.push_back(file.name);
    CHECK(names == std::vector<std::string>{"added_tokens.json", "generation_config.json", "tokenizer.json", "tokenizer.model"});
    CHECK(model.files[3].bytes == std::vector<std::uint8_t>{0x0A, 0x00, 0xFF, 0x80, 0x00});

    // Through a .nwc file: decoded in memory, written as a directory from memory and streamed.
    MethodOptions options;
    options.method = "ecsq";
    const CompressedModel compressed = DefaultCodec(options).compress_model(model);
    const std::vector<std::uint8_t> bytes = compressed.writer.serialize();
    CHECK(compressed.report.file_bytes == bytes.size());
    const ContainerReader reader = ContainerReader::from_bytes(bytes);
    const ModelFile back = DefaultCodec::decompress_model(reader);
    CHECK(back.files == model.files);
    CHECK(back.tensors.size() == model.tensors.size());
    const auto expect_files = [&](const std::filesystem::path& directory) {
        for (const SourceFile& file : model.files) CHECK(read_file(directory / file.name) == file.bytes);
        CHECK(entries_of(directory).size() == model.files.size() + 2);  // + config.json, model.safetensors
    };
    write_hf_directory(back, temp.path() / "from_memory");
    expect_files(temp.path() / "from_memory");
    StreamingDecompressor<>(reader).write_hf_directory(temp.path() / "streamed");
    expect_files(temp.path() / "streamed");
    // A .safetensors output has no place for them: the tensors alone.
    StreamingDecompressor<>(reader).write_safetensors(temp.path() / "alone.safetensors");
    CHECK(SafetensorsFile::open(temp.path() / "alone.safetensors").tensors().size() == model.tensors.size());

    // A hostile file name never leaves the directory: a corrupt file, whichever path reads it.
    for (const std::string name : {"../escape", "sub/dir", ".hidden", "config.json", ""}) {
        INFO(name);
        ContainerWriter writer;
        writer.set_file_metadata(std::string(reader.file_metadata()));
        writer.add_tensor(make_raw_tensor(std::string(detail::source_file_prefix) + name, dtype::u8, Shape{1}, std::vector<std::uint8_t>{1}));
        const std::vector<std::uint8_t> hostile = writer.serialize();
        const ContainerReader bad = ContainerReader::from_bytes(hostile);
        CHECK(error_of([&] { (void)DefaultCodec::decompress_model(bad); }) == errc::corrupt);
        CHECK(error_of([&] { StreamingDecompressor<>(bad).write_hf_directory(temp.path() / "hostile"); }) == errc::corrupt);
        CHECK(error_of([&] { StreamingDecompressor<>(bad).write_safetensors(temp.path() / "hostile.safetensors"); }) == errc::corrupt);
        CHECK(!std::filesystem::exists(temp.path() / "hostile"));
        CHECK(!std::filesystem::exists(temp.path() / "hostile.safetensors"));
        CHECK(!std::filesystem::exists(temp.path() / "escape"));
    }
}

TEST_CASE("hf_directory: written whole or not at all, never over another model", "[hf_directory]") {
    const TemporaryDirectory temp("hf_directory_atomic");
    const ModelFile model = plain_model();
    // A non-empty directory, a file: refused, untouched.
    const auto occupied = temp.path() / "occupied";
    std::filesystem::create_directory(occupied);
    write_file_atomic(occupied / "keep.txt", std::vector<std::uint8_t>{1, 2, 3});
    CHECK(error_of([&] { write_hf_directory(model, occupied); }) == errc::invalid_argument);
    CHECK(entries_of(occupied) == std::set<std::string>{"keep.txt"});
    const auto file = temp.path() / "a_file";
    write_file_atomic(file, std::vector<std::uint8_t>{7});
    CHECK(error_of([&] { write_hf_directory(model, file); }) == errc::invalid_argument);
    CHECK(read_file(file) == std::vector<std::uint8_t>{7});
    // A missing parent: nothing is created.
    CHECK(error_of([&] { write_hf_directory(model, temp.path() / "no" / "such"); }) == errc::io);
    // An existing empty directory is filled; a trailing slash names the directory.
    const auto empty = temp.path() / "empty";
    std::filesystem::create_directory(empty);
    write_hf_directory(model, empty.string() + "/", 64);
    CHECK(entries_of(empty).size() == 4);
    // A failure half-way (in the third shard: the fourth tensor's name is reserved by safetensors) leaves nothing behind.
    ModelFile broken = model;
    broken.tensors[3].name = "__metadata__";
    CHECK(error_of([&] { write_hf_directory(broken, temp.path() / "broken", 64); }) == errc::invalid_argument);
    CHECK(entries_of(temp.path()) == std::set<std::string>{"occupied", "a_file", "empty"});
}

TEST_CASE("hf_directory: an index that disagrees with its shards is an error naming the file and the tensor", "[hf_directory]") {
    const TemporaryDirectory temp("hf_directory_bad");
    const llm::LlamaWeights weights = random_llama_weights(small_llama_config(), 4);
    const auto good = temp.path() / "good";
    llm::write_hf_llama(temp.path() / "source", weights, dtype::f32);
    REQUIRE(write_hf_directory(load_model_file(temp.path() / "source"), good, 30000).shards >= 3);
    const nlohmann::json index = llm::detail::read_json_file(good / "model.safetensors.index.json");
    const auto message_of = [](const std::filesystem::path& directory, bool as_llama) {
        try {
            if (as_llama) (void)read_llama_weights(directory);
            else (void)load_model_file(directory);
        } catch (const nwc::error& problem) {
            return std::pair<errc, std::string>{problem.id(), problem.what()};
        }
        return std::pair<errc, std::string>{errc::io, "no error"};
    };
    const auto variant = [&](const std::string& name, auto&& edit) {
        const auto directory = temp.path() / name;
        std::filesystem::copy(good, directory);
        nlohmann::json changed = index;
        edit(changed, directory);
        const std::string text = changed.dump();
        write_file_atomic(directory / "model.safetensors.index.json", {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
        return directory;
    };
    // A shard the index names is missing.
    const std::string last_shard = index["weight_map"]["model.norm.weight"];
    const auto missing = variant("missing", [&](nlohmann::json&, const std::filesystem::path& directory) { std::filesystem::remove(directory / last_shard); });
    for (const bool as_llama : {false, true}) {
        const auto [id, message] = message_of(missing, as_llama);
        CHECK(id == errc::io);
        CHECK_THAT(message, Catch::Contains(last_shard));
    }
    // A tensor in another shard than the index says.
    const std::string& norm_shard = last_shard;
    REQUIRE(index["weight_map"]["model.embed_tokens.weight"] != norm_shard);  // the first and the last tensor
    const auto moved = variant("moved", [](nlohmann::json& changed, const std::filesystem::path&) {
        changed["weight_map"]["model.norm.weight"] = changed["weight_map"]["model.embed_tokens.weight"];
    });
    for (const bool as_llama : {false, true}) {
        const auto [id, message] = message_of(moved, as_llama);
        CHECK(id == errc::corrupt);
        CHECK_THAT(message, Catch::Contains("model.norm.weight") && Catch::Contains(norm_shard));
    }
    // An index entry no shard holds.
    const auto extra = variant("extra", [&](nlohmann::json& changed, const std::filesystem::path&) { changed["weight_map"]["model.extra.weight"] = norm_shard; });
    for (const bool as_llama : {false, true}) {
        const auto [id, message] = message_of(extra, as_llama);
        CHECK(id == errc::corrupt);
        CHECK_THAT(message, Catch::Contains("model.extra.weight") && Catch::Contains("index"));
    }
    // A tensor the index does not list.
    const auto unlisted = variant("unlisted", [](nlohmann::json& changed, const std::filesystem::path&) { changed["weight_map"].erase("model.norm.weight"); });
    for (const bool as_llama : {false, true}) {
        const auto [id, message] = message_of(unlisted, as_llama);
        CHECK(id == errc::corrupt);
        CHECK_THAT(message, Catch::Contains("model.norm.weight") && Catch::Contains("not in the index"));
    }
    // A config that contradicts the tensors' shapes.
    const auto wrong_config = temp.path() / "wrong_config";
    std::filesystem::copy(good, wrong_config);
    nlohmann::json config = llm::detail::read_json_file(good / "config.json");
    config["intermediate_size"] = 60;
    const std::string text = config.dump();
    write_file_atomic(wrong_config / "config.json", {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    const auto [id, message] = message_of(wrong_config, true);
    CHECK(id == errc::corrupt);
    CHECK_THAT(message, Catch::Contains("mlp"));
}

namespace {
// A Qwen2-style directory: the Llama layout plus q/k/v biases, which nwc's forward pass lacks.
std::filesystem::path write_qwen2_directory(const std::filesystem::path& directory) {
    std::filesystem::create_directories(directory);
    const llm::LlamaConfig llama = small_llama_config();
    nlohmann::json config = llm::hf_config_json(llama);
    config["architectures"] = {"Qwen2ForCausalLM"};
    config["model_type"] = "qwen2";
    const std::string text = config.dump(2);
    write_file_atomic(directory / "config.json", {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    SafetensorsWriter writer;
    writer.set_metadata("format", "pt");
    Random random(3);
    const auto add = [&](const std::string& name, Shape shape) {
        Tensor<float> values(shape);
        for (float& value : values.values()) value = to_float(to_bfloat16(random.normal()));
        writer.add_float32(name, values.view(), dtype::bf16);
    };
    add("model.embed_tokens.weight", Shape{llama.vocab_size, llama.dim});
    add("model.layers.0.self_attn.q_proj.weight", Shape{llama.dim, llama.dim});
    add("model.layers.0.self_attn.q_proj.bias", Shape{llama.dim});
    add("model.norm.weight", Shape{llama.dim});
    writer.write(directory / "model.safetensors");
    return directory;
}
}  // namespace

TEST_CASE("hf_directory: an architecture without nwc's forward pass is kept as tensors and config, and says why", "[hf_directory]") {
    const TemporaryDirectory temp("hf_directory_qwen2");
    const auto source = write_qwen2_directory(temp.path() / "qwen2");
    CHECK(detect_model_format(source) == ModelFormat::hf);
    CHECK(detect_model_format(source / "model.safetensors") == ModelFormat::hf);
    const ModelFile model = load_model_file(source);
    REQUIRE(model.format == ModelFormat::hf);
    CHECK(model.source["source_format"] == "hf");
    CHECK(model.tensors.size() == 4);
    CHECK_FALSE(llama_weights_of(model).has_value());
    CHECK_THAT(why_not_llama(model), Catch::Contains("Qwen2ForCausalLM") && Catch::Contains("\"qwen2\""));
    try {
        (void)read_llama_weights(source);
        FAIL("read a Qwen2 model as Llama weights");
    } catch (const nwc::error& problem) {
        CHECK(problem.id() == errc::unsupported);
        CHECK_THAT(problem.what(), Catch::Contains("Qwen2ForCausalLM"));
    }
    // Written back: the same config.json and tensors; never as a llama2.c file.
    const auto out = temp.path() / "out";
    write_hf_directory(model, out);
    CHECK(llm::detail::read_json_file(out / "config.json") == llm::detail::read_json_file(source / "config.json"));
    check_same_tensors(model, load_model_file(out));
    CHECK(error_of([&] { write_model_file(model, temp.path() / "qwen2.bin"); }) == errc::unsupported);
    CHECK_FALSE(std::filesystem::exists(temp.path() / "qwen2.bin"));
}

TEST_CASE("hf_directory: Mistral configs read as Llama with seq_len capped at the sliding window; Llama with biases is not runnable",
          "[hf_directory]") {
    nlohmann::json mistral = llm::hf_config_json(small_llama_config());
    mistral["architectures"] = {"MistralForCausalLM"};
    mistral["model_type"] = "mistral";
    mistral["max_position_embeddings"] = 4096;
    mistral["sliding_window"] = 128;
    CHECK_FALSE(llm::hf_forward_pass_missing(mistral, "mistral").has_value());
    CHECK(llm::parse_hf_config(mistral, "mistral").seq_len == 128);
    mistral["sliding_window"] = nullptr;
    CHECK(llm::parse_hf_config(mistral, "mistral").seq_len == 4096);

    nlohmann::json biased = llm::hf_config_json(small_llama_config());
    biased["attention_bias"] = true;
    const auto missing = llm::hf_forward_pass_missing(biased, "biased");
    REQUIRE(missing.has_value());
    CHECK_THAT(*missing, Catch::Contains("biases"));
    nlohmann::json gemma = llm::hf_config_json(small_llama_config());
    gemma["model_type"] = "gemma";
    CHECK(llm::hf_forward_pass_missing(gemma, "gemma").has_value());
    nlohmann::json broken = llm::hf_config_json(small_llama_config());
    broken.erase("hidden_size");  // a Llama config with a field missing is corrupt, not another architecture
    CHECK(error_of([&] { (void)llm::hf_forward_pass_missing(broken, "broken"); }) == errc::corrupt);
}

}  // namespace nwc_test_hf_directory
