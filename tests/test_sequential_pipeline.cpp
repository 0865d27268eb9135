// Sequential compression through the pipeline (pipeline/sequential_pipeline.hpp): the container it
// writes decodes to the fine-tuned model it coded, fine-tuning helps, results do not depend on the
// thread count, rate control lands on the target, and Hugging Face files keep their layout.
// nwc-ctest-labels: data slow
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "nwc/io/hf_llama.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/pipeline/pipeline.hpp"
#include "nwc/pipeline/sequential_pipeline.hpp"
#include "requirements.hpp"

namespace nwc_test_sequential_pipeline {

using namespace nwc;

namespace {

std::filesystem::path data(const std::string& name) { return nwc::testing::data_path(name); }

const ModelFile& stories() {
    static const ModelFile model = load_model_file(data("stories260K.bin"));
    return model;
}

std::vector<int> tokens_of(const std::string& file) {
    const llm::Tokenizer tokenizer = llm::Tokenizer::read(data("tok512.bin"), 512);
    const std::vector<std::uint8_t> text = read_file(data(file));
    return llm::tokenize_for_evaluation(tokenizer, std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
}

const std::vector<int>& calibration_tokens() {
    static const std::vector<int> tokens = tokens_of("tinystories_calib.txt");
    return tokens;
}

/// Mean NLL of a decoded container on the first windows of the evaluation text.
double decoded_nll(const CompressedModel& compressed) {
    static const std::vector<int> evaluation = tokens_of("tinystories_eval.txt");
    const ContainerReader reader = ContainerReader::from_bytes(compressed.writer.serialize());
    const ModelFile decoded = DefaultCodec::decompress_model(reader, 2);
    llm::PerplexityOptions options;
    options.threads = 2;
    options.max_windows = 12;
    return llm::evaluate_perplexity(llm::LlamaModel(*llama_weights_of(decoded)), evaluation, options).mean_nll;
}

llm::SequentialCompressionOptions small_run(int threads) {
    llm::SequentialCompressionOptions options;
    options.window = 128;
    options.windows = 12;
    options.validation_windows = 3;
    options.finetune_options.epochs = 2;
    options.threads = threads;
    return options;
}

MethodOptions method(std::string which, int bits = 3) {
    MethodOptions options;
    options.method = which;
    options.bits = bits;
    options.threads = 1;
    return options;
}

}  // namespace

TEST_CASE("sequential compression writes a container that decodes to the coded model", "[sequential][data]") {
    llm::SequentialCompressionReport details;
    const DefaultCodec codec(method("rtn"));
    const CompressedModel compressed = compress_model_sequentially(codec, stories(), calibration_tokens(), small_run(2), {}, &details);
    // Every 2-D weight was coded, in the driver's order, and the report counts the whole file.
    CHECK(details.steps.size() == 1 + 5 * 4);
    const std::vector<std::uint8_t> bytes = compressed.writer.serialize();
    CHECK(compressed.report.file_bytes == bytes.size());
    CHECK(compressed.report.tensors.size() == stories().tensors.size());
    for (const TensorReport& tensor : compressed.report.tensors)
        if (tensor.shape.rank() == 2) CHECK(tensor.method == "rtn");
    // Decoded weights are the codes of the fine-tuned weights: close to the originals, not equal.
    const ContainerReader reader = ContainerReader::from_bytes(std::vector<std::uint8_t>(bytes));
    const ModelFile decoded = DefaultCodec::decompress_model(reader, 1);
    REQUIRE(decoded.tensors.size() == stories().tensors.size());
    for (std::size_t i = 0; i < decoded.tensors.size(); ++i) {
        const ModelTensor& original = stories().tensors[i];
        const ModelTensor& copy = decoded.tensors[i];
        REQUIRE(copy.name == original.name);
        REQUIRE(copy.shape == original.shape);
        double error = 0, norm = 0;
        for (std::int64_t k = 0; k < original.shape.numel(); ++k) {
            error += std::pow(double(copy.values[k]) - double(original.values[k]), 2);
            norm += std::pow(double(original.values[k]), 2);
        }
        INFO(original.name);
        if (original.shape.rank() == 1) CHECK(error / norm < 1e-4);  // norm scales: ecsq at 1/64 of their std
        else CHECK(error / norm < 0.2);
    }
    // Fine-tuning never made a block's held-out output worse than coding left it.
    for (const auto& step : details.steps)
        if (step.finetuned) CHECK(step.block_mse_finetuned <= step.block_mse_coded);
}

TEST_CASE("sequential compression gives the same bytes for any thread count", "[sequential][data]") {
    const DefaultCodec codec(method("ecsq"));
    const auto one = compress_model_sequentially(codec, stories(), calibration_tokens(), small_run(1)).writer.serialize();
    MethodOptions threaded = method("ecsq");
    threaded.threads = 2;
    const auto two = compress_model_sequentially(DefaultCodec(threaded), stories(), calibration_tokens(), small_run(2)).writer.serialize();
    CHECK(one == two);
}

TEST_CASE("fine-tuning lowers the perplexity of a 3-bit model", "[sequential][data]") {
    const DefaultCodec codec(method("rtn", 3));
    llm::SequentialCompressionOptions with = small_run(2), without = small_run(2);
    without.finetune = false;
    const double tuned = decoded_nll(compress_model_sequentially(codec, stories(), calibration_tokens(), with));
    const double plain = decoded_nll(compress_model_sequentially(codec, stories(), calibration_tokens(), without));
    INFO("NLL with fine-tuning " << tuned << ", without " << plain);
    CHECK(tuned < plain);
}

TEST_CASE("sequential rate control lands within 1% of the target", "[sequential][data]") {
    const llm::LlamaModel network(*llama_weights_of(stories()));
    llm::CalibrationOptions calibration;
    calibration.threads = 2;
    calibration.max_windows = 8;
    const llm::LinearHessians hessians = llm::collect_hessians(network, calibration_tokens(), calibration);
    for (std::string which : {"ecsq", "gptq"}) {
        RateTarget target;
        target.bits_per_weight = 4.0;
        const CompressedModel compressed = compress_sequentially_to_target(DefaultCodec(method(which)), stories(), hessian_lookup(hessians),
                                                                           calibration_tokens(), target, small_run(2));
        INFO(compressed.report.method << " " << compressed.report.bits_per_weight() << " " << compressed.report.setting << " " << compressed.report.note);
        CHECK(std::fabs(compressed.report.bits_per_weight() / 4.0 - 1.0) <= 0.01);
        CHECK(compressed.report.target_met);
        CHECK(compressed.report.file_bytes == compressed.writer.serialize().size());
    }
}

TEST_CASE("a Hugging Face model is compressed in its own layout", "[sequential][data]") {
    const std::filesystem::path directory = std::filesystem::temp_directory_path() / ("nwc_sequential_hf_" + std::to_string(::getpid()));
    llm::write_hf_llama(directory, *llama_weights_of(stories()));
    const ModelFile hf = load_model_file(directory);
    std::filesystem::remove_all(directory);
    REQUIRE(hf.format == ModelFormat::hf_llama);
    const DefaultCodec codec(method("rtn", 4));
    const CompressedModel from_hf = compress_model_sequentially(codec, hf, calibration_tokens(), small_run(2));
    const CompressedModel from_llama2c = compress_model_sequentially(codec, stories(), calibration_tokens(), small_run(2));
    // The decoded HF file is a working model of the same quality (rows are chunked in another
    // order, so the bytes differ), and its tensors keep the HF names and shapes.
    const double hf_nll = decoded_nll(from_hf), llama2c_nll = decoded_nll(from_llama2c);
    INFO("HF " << hf_nll << ", llama2.c " << llama2c_nll);
    CHECK(std::fabs(hf_nll - llama2c_nll) < 0.02);
    const ModelFile decoded = DefaultCodec::decompress_model(ContainerReader::from_bytes(from_hf.writer.serialize()), 1);
    REQUIRE(decoded.tensors.size() == hf.tensors.size());
    for (std::size_t i = 0; i < hf.tensors.size(); ++i) {
        CHECK(decoded.tensors[i].name == hf.tensors[i].name);
        CHECK(decoded.tensors[i].shape == hf.tensors[i].shape);
    }
}

}  // namespace nwc_test_sequential_pipeline
