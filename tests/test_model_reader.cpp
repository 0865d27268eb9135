// io/model_reader.hpp: a model opened tensor by tensor gives what load_model_file() gives (the
// outline at once, each tensor on demand, from any thread), for every source format, and rejects
// what load_model_file() rejects; the pipeline compresses from it into a file as it goes, with the
// bytes of the in-memory path, for any thread count and with rate control, and codes a tensor
// from the mapped file's bytes where the method can (lossless, rtn, gptq, ecsq, tcq, nwc), with the
// in-memory path's bytes and report for every stored dtype.
// nwc-ctest-labels: slow
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "error_testing.hpp"
#include "llm_test_support.hpp"
#include "nwc/core/random.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/io/hf_directory.hpp"
#include "nwc/io/model_reader.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "reliability_support.hpp"

namespace nwc_test_model_reader {

using namespace nwc;
using nwc::llm::testing::random_llama_weights;
using nwc::llm::testing::small_llama_config;
using nwc::llm::testing::TemporaryDirectory;
using nwc::testing::error_of;

namespace {

bool same_tensor(const ModelTensor& a, const ModelTensor& b) {
    return a.name == b.name && a.original_dtype == b.original_dtype && a.shape == b.shape && a.values.values() == b.values.values() &&
           a.raw_bytes == b.raw_bytes;
}

// Equal sums, or both NaN (which NaN a sum of NaN and infinity gives depends on the code generated).
bool same_sum(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// The three source formats of one small Llama model: a sharded BF16 Hugging Face directory with a
// tokenizer file, a plain safetensors file with an I32 tensor, a llama2.c file.
struct Sources {
    TemporaryDirectory temp{"model_reader"};
    std::filesystem::path directory = temp.path() / "hf", safetensors = temp.path() / "plain.safetensors", llama2c = temp.path() / "model.bin";

    Sources() {
        const llm::LlamaWeights weights = random_llama_weights(small_llama_config(), 3);
        llm::write_hf_llama(temp.path() / "one_shard", weights, dtype::bf16);
        write_file_atomic(temp.path() / "one_shard" / "tokenizer.json", std::vector<std::uint8_t>{'{', '}'});
        write_hf_directory(load_model_file(temp.path() / "one_shard"), directory, 20000);
        ModelFile plain = load_model_file(temp.path() / "one_shard");
        plain.format = ModelFormat::safetensors;
        plain.source = {{"source_format", "safetensors"}, {"safetensors_metadata", {{"format", "pt"}}}};
        plain.files.clear();
        plain.tensors.push_back({"ids", dtype::i32, Shape{2}, {}, {7, 0, 0, 0, 9, 0, 0, 0}});
        write_model_file(plain, safetensors);
        llm::write_llama2c(llama2c, weights);
    }
};

}  // namespace

TEST_CASE("model_reader: the outline at once, every tensor as load_model_file holds it, from any thread", "[model_reader]") {
    const Sources sources;
    for (const auto& path : {sources.directory, sources.safetensors, sources.llama2c}) {
        INFO(path.string());
        const ModelFile whole = load_model_file(path);
        const ModelReader reader = ModelReader::open(path);
        const ModelFile& outline = reader.outline();
        CHECK(outline.format == whole.format);
        CHECK(outline.source == whole.source);
        CHECK(outline.files == whole.files);
        CHECK(outline.rope_corrections.values() == whole.rope_corrections.values());
        REQUIRE(reader.tensor_count() == whole.tensors.size());
        CHECK(reader.weight_count() == whole.weight_count());
        for (std::size_t i = 0; i < whole.tensors.size(); ++i) {
            const ModelTensor& tensor = outline.tensors[i];
            CHECK((tensor.name == whole.tensors[i].name && tensor.shape == whole.tensors[i].shape && tensor.original_dtype == whole.tensors[i].original_dtype));
            CHECK((tensor.values.values().empty() && tensor.raw_bytes.empty()));
        }
        // Several workers at once, each tensor read twice.
        std::vector<char> same(2 * whole.tensors.size(), 0);
        parallel_for(std::int64_t(same.size()), 3, [&](std::int64_t k) {
            const std::size_t i = std::size_t(k) % whole.tensors.size();
            same[std::size_t(k)] = same_tensor(reader.read(i), whole.tensors[i]) ? 1 : 0;
        });
        CHECK(std::count(same.begin(), same.end(), 1) == std::ptrdiff_t(same.size()));
        const ModelFile all = reader.read_all();
        REQUIRE(all.tensors.size() == whole.tensors.size());
        for (std::size_t i = 0; i < whole.tensors.size(); ++i) CHECK(same_tensor(all.tensors[i], whole.tensors[i]));
        CHECK(error_of([&] { (void)reader.read(whole.tensors.size()); }) == errc::invalid_argument);
    }
    CHECK(std::filesystem::exists(sources.directory / "model.safetensors.index.json"));  // the sharded layout was exercised
    CHECK(!ModelReader::open(sources.directory).outline().files.empty());
}

TEST_CASE("model_reader: a bad directory is refused at open as load_model_file refuses it", "[model_reader][hostile]") {
    const Sources sources;
    const auto broken = sources.temp.path() / "broken";
    std::filesystem::copy(sources.directory, broken);
    std::size_t removed = 0;
    for (const auto& entry : std::filesystem::directory_iterator(broken))
        if (entry.path().filename().string().starts_with("model-00002-of-")) removed += std::filesystem::remove(entry.path()) ? 1 : 0;
    REQUIRE(removed == 1);
    const errc expected = error_of([&] { (void)load_model_file(broken); });  // error_of fails the case if nothing is thrown
    CHECK(error_of([&] { (void)ModelReader::open(broken); }) == expected);
    CHECK(error_of([&] { (void)ModelReader::open(sources.temp.path() / "absent"); }) == error_of([&] { (void)load_model_file(sources.temp.path() / "absent"); }));
}

TEST_CASE("model_reader: compressed from a reader straight into the file, the bytes of the in-memory path", "[model_reader][pipeline]") {
    const Sources sources;
    const auto output = sources.temp.path() / "out.nwc";
    for (const auto& path : {sources.directory, sources.safetensors, sources.llama2c}) {
        const ModelFile model = load_model_file(path);
        const ModelReader reader = ModelReader::open(path);
        for (const std::string method : {"ecsq", "rtn", "tcq", "lossless"}) {
            for (const int threads : {1, 3}) {
                INFO(path.string() << ", " << method << ", " << threads << " threads");
                MethodOptions options;
                options.method = method;
                options.threads = threads;
                const DefaultCodec codec(options);
                const CompressedModel in_memory = codec.compress_model(model);
                const std::vector<std::uint8_t> expected = in_memory.writer.serialize();
                ContainerStreamWriter stream(output);
                const ModelReport report = codec.compress_model_into(reader, stream);
                stream.commit();
                CHECK(read_file(output) == expected);
                CHECK(report.file_bytes == expected.size());
                CHECK(report.relative_mse() == in_memory.report.relative_mse());
                ContainerSizer sizer;
                CHECK(codec.compress_model_into(reader, sizer).file_bytes == expected.size());
                if (method == "lossless") continue;
                // Rate control: a continuous knob (ecsq's step) and an integer one (rtn's bits).
                RateTarget target;
                target.bits_per_weight = 4.0;
                const CompressedModel targeted = compress_to_target(codec, model, {}, target);
                ContainerStreamWriter targeted_stream(output);
                const ModelReport targeted_report = compress_to_target_into(codec, reader, targeted_stream, {}, target);
                targeted_stream.commit();
                CHECK(read_file(output) == targeted.writer.serialize());
                CHECK(targeted_report.passes == targeted.report.passes);
                CHECK(targeted_report.target_met == targeted.report.target_met);
                // Allocation measures each tensor at many settings: it needs the model in memory.
                const TensorSensitivities sensitivities;
                target.sensitivities = &sensitivities;
                CHECK(error_of([&] { (void)compress_to_target_into(codec, reader, sizer, {}, target); }) == errc::invalid_argument);
            }
        }
    }
}

TEST_CASE("model_reader: lossless, ecsq, tcq, rtn, gptq and nwc code a tensor from its mapped bytes, with the in-memory path's bytes and report",
          "[model_reader][pipeline]") {
    // Every stored dtype, plane dtypes narrower than the stored one, special values, vectors, small
    // tensors left raw, matrices larger than one block of rows, every ecsq axis, 1 and 3 threads.
    const TemporaryDirectory temp("model_reader_stored");
    Random random(41);
    const auto gaussian = [&](std::int64_t rows, std::int64_t cols, float scale) {
        Tensor<float> values(cols > 0 ? Shape{rows, cols} : Shape{rows});
        for (float& value : values.values()) value = scale * random.normal();
        return values;
    };
    ModelFile model;
    model.source = {{"source_format", "safetensors"}};
    const auto add = [&](std::string name, dtype type, Tensor<float> values) { model.tensors.push_back({std::move(name), type, values.shape(), std::move(values), {}}); };
    add("f32.gaussian", dtype::f32, gaussian(300, 270, 0.02f));  // 81,000 weights: two blocks of rows
    Tensor<float> bf16_values = gaussian(40, 64, 1.0f);
    for (float& value : bf16_values.values()) value = to_float(to_bfloat16(value));
    add("f32.of_bf16_values", dtype::f32, bf16_values);
    add("f16.gaussian", dtype::f16, gaussian(64, 48, 0.5f));
    Tensor<float> halves_of_bf16 = gaussian(32, 32, 1.0f);
    for (float& value : halves_of_bf16.values()) value = to_float(to_bfloat16(to_float(to_half(value))));  // also exact halves
    add("f16.of_bf16_values", dtype::f16, halves_of_bf16);
    add("bf16.gaussian", dtype::bf16, gaussian(520, 160, 0.05f));
    Tensor<float> special = gaussian(32, 24, 1.0f);
    const float nan_with_payload = std::bit_cast<float>(std::uint32_t(0x7FC50000u));
    special[0] = nan_with_payload, special[1] = -std::numeric_limits<float>::infinity(), special[2] = -0.0f;
    special[3] = std::bit_cast<float>(std::uint32_t(0x00010000u));  // a bf16 subnormal
    add("bf16.special", dtype::bf16, special);
    add("bf16.vector", dtype::bf16, gaussian(96, 0, 1.0f));
    add("f32.small_vector", dtype::f32, gaussian(8, 0, 1.0f));
    add("f16.small_matrix", dtype::f16, gaussian(8, 40, 1.0f));
    const auto path = temp.path() / "mixed.safetensors";
    write_model_file(model, path);
    const ModelFile loaded = load_model_file(path);
    const ModelReader reader = ModelReader::open(path);
    const auto output = temp.path() / "out.nwc";
    for (const int threads : {1, 3}) {
        INFO("lossless, " << threads << " threads");
        MethodOptions options;
        options.method = "lossless";
        options.threads = threads;
        options.weights_per_segment = 5000;  // several segments per tensor
        const DefaultCodec codec(options);
        const CompressedModel in_memory = codec.compress_model(loaded);
        ContainerStreamWriter stream(output);
        const ModelReport report = codec.compress_model_into(reader, stream);
        stream.commit();
        CHECK(read_file(output) == in_memory.writer.serialize());
        REQUIRE(report.tensors.size() == in_memory.report.tensors.size());
        for (std::size_t i = 0; i < report.tensors.size(); ++i) {
            const TensorReport &a = report.tensors[i], &b = in_memory.report.tensors[i];
            INFO(a.name);
            CHECK((a.name == b.name && a.shape == b.shape && a.method == b.method && a.stored_bytes == b.stored_bytes && a.segments == b.segments));
            CHECK(same_sum(a.squared_norm, b.squared_norm));  // NaN for bf16.special
            CHECK(same_sum(a.squared_error, b.squared_error));
        }
    }
    {  // ecsq refuses bf16.special's non-finite weights through either path alike.
        MethodOptions options;
        options.method = "ecsq";
        const DefaultCodec codec(options);
        ContainerSizer sizer;
        CHECK(error_of([&] { (void)codec.compress_model_into(reader, sizer); }) == error_of([&] { (void)codec.compress_model(loaded); }));
    }
    // The block-by-block methods on a file of finite weights: the same bytes and sums, every axis.
    ModelFile finite = loaded;
    std::erase_if(finite.tensors, [](const ModelTensor& tensor) { return tensor.name == "bf16.special"; });
    REQUIRE(finite.tensors.size() + 1 == loaded.tensors.size());
    const auto finite_path = temp.path() / "finite.safetensors";
    write_model_file(finite, finite_path);
    const ModelReader finite_reader = ModelReader::open(finite_path);
    for (const std::string method : {"ecsq", "tcq", "rtn", "gptq", "nwc"}) {
        for (const NormalizationAxis axis : {NormalizationAxis::per_tensor, NormalizationAxis::per_row, NormalizationAxis::per_column}) {
            if ((method == "rtn" || method == "gptq") && axis != NormalizationAxis::per_tensor) continue;  // no normalization axis
            for (const int threads : {1, 3}) {
                INFO(method << ", axis " << int(axis) << ", " << threads << " threads");
                MethodOptions options;
                options.method = method;
                options.axis = axis;
                options.threads = threads;
                options.weights_per_segment = 5000;
                options.alpha = 1.5f;
                const DefaultCodec codec(options, method == "nwc" ? reliability::tiny_random_codec() : nullptr);
                const CompressedModel in_memory = codec.compress_model(load_model_file(finite_path));
                ContainerStreamWriter stream(output);
                const ModelReport report = codec.compress_model_into(finite_reader, stream);
                stream.commit();
                CHECK(read_file(output) == in_memory.writer.serialize());
                REQUIRE(report.tensors.size() == in_memory.report.tensors.size());
                for (std::size_t i = 0; i < report.tensors.size(); ++i) {
                    INFO(report.tensors[i].name);
                    CHECK(report.tensors[i].squared_norm == in_memory.report.tensors[i].squared_norm);
                    CHECK(report.tensors[i].squared_error == in_memory.report.tensors[i].squared_error);
                    CHECK(report.tensors[i].relative_mse == in_memory.report.tensors[i].relative_mse);
                }
            }
        }
    }
    // A llama2.c model is held whole: it has no mapped bytes to hand out.
    const auto llama2c = temp.path() / "model.bin";
    llm::write_llama2c(llama2c, random_llama_weights(small_llama_config(), 5));
    const ModelReader whole = ModelReader::open(llama2c);
    CHECK(!whole.maps_tensors());
    CHECK(reader.maps_tensors());
    CHECK(error_of([&] { whole.with_stored_bytes(0, [](std::span<const std::uint8_t>) {}); }) == errc::invalid_argument);
}

}  // namespace nwc_test_model_reader
