// Inter-layer fine-tuning and the sequential compression driver: the tape block equals
// LlamaModel's block, fine-tuning lowers the block error on held-out windows, an identity encoder
// leaves the model unchanged, and results are the same bits for any thread count.
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <map>

#include "llm_test_support.hpp"
#include "nwc/llm/block_finetune.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/llm/sequential_compression.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/quant/round_to_nearest.hpp"

namespace nwc_test_block_finetune {

using nwc::Tensor;
using namespace nwc::llm;
using namespace nwc::llm::testing;

namespace {

LlamaConfig tiny_config(bool tied = true) {
    LlamaConfig config;
    config.shared_classifier = tied;
    config.dim = 32;
    config.hidden_dim = 40;
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.vocab_size = 300;
    config.seq_len = 24;
    return config;
}

Activations random_states(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    nwc::Random random(seed);
    Activations states(rows, cols);
    for (Eigen::Index i = 0; i < states.size(); ++i) states.data()[i] = random.normal();
    return states;
}

double max_abs_difference(const Activations& a, const Activations& b) { return (a - b).cwiseAbs().maxCoeff(); }

struct Stories {
    LlamaModel model;
    std::vector<int> calibration;
};

const Stories& stories() {
    static const Stories loaded = [] {
        LlamaModel model(read_llama2c(data_path("stories260K.bin")).weights);
        const Tokenizer tokenizer = Tokenizer::read(data_path("tok512.bin"), model.config().vocab_size);
        std::vector<int> tokens = tokenize_for_evaluation(tokenizer, read_text("tinystories_calib.txt"));
        return Stories{std::move(model), std::move(tokens)};
    }();
    return loaded;
}

Tensor<float> rtn3(const Tensor<float>& weight) { return nwc::RoundToNearest({3, 32, nwc::RoundingScheme::signed_max}).quantize(weight.view()); }

}  // namespace

TEST_CASE("block fine-tuning: the tape block equals LlamaModel::forward_block", "[block_finetune][data]") {
    SECTION("random tiny model with grouped-query attention") {
        const LlamaModel model(random_llama_weights(tiny_config(), 5));
        for (int layer = 0; layer < 2; ++layer) {
            const Activations input = random_states(24, 32, 40 + std::uint64_t(layer));
            Activations expected = input;
            model.forward_block(layer, expected);
            const TapeBlock block(model.config(), model.weights().layers[std::size_t(layer)]);
            const Activations output = block.forward(input);
            CHECK(max_abs_difference(output, expected) < 1e-5);
            // Every stage's shortcut gives the same bits as the full recording.
            for (BlockStage stage : {BlockStage::input, BlockStage::attention_output, BlockStage::attention_residual, BlockStage::ffn_hidden}) {
                TapeBlock::Tape tape;
                const BlockStageValues values = block.stage_values(input, stage);
                CHECK(tape.value(block.record(tape, stage, values)) == output);
            }
        }
    }
    SECTION("stories260K on real tokens, every block") {
        const LlamaModel& model = stories().model;
        const std::span<const int> window(stories().calibration.data(), 256);
        Activations hidden = model.embed(window);
        for (int layer = 0; layer < model.config().n_layers; ++layer) {
            const Activations output = TapeBlock(model.config(), model.weights().layers[std::size_t(layer)]).forward(hidden);
            model.forward_block(layer, hidden);
            CHECK(max_abs_difference(output, hidden) < 1e-5 * std::max(1.0f, hidden.cwiseAbs().maxCoeff()));
        }
    }
}

TEST_CASE("block fine-tuning: lowers the block error on held-out windows after 3-bit q/k/v", "[block_finetune][data]") {
    const LlamaModel& model = stories().model;
    const int window = full_size_checks ? 128 : 32, training_count = full_size_checks ? 16 : 4, held_out = 4;
    std::vector<std::span<const int>> windows = cut_windows(stories().calibration, window);
    windows.resize(std::size_t(training_count + 2 * held_out));
    const int layer = 1;
    std::vector<Activations> inputs = run_block(model, 0, embed_windows(model, windows));
    std::vector<Activations> targets = run_block(model, layer, inputs);
    BlockWindows training, validation, test;
    for (std::size_t w = 0; w < windows.size(); ++w) {
        BlockWindows& part = w < std::size_t(training_count) ? training : w < std::size_t(training_count + held_out) ? validation : test;
        part.inputs.push_back(inputs[w]);
        part.targets.push_back(targets[w]);
    }

    BlockFinetuner finetuner(model.config(), model.weights().layers[layer]);
    CHECK(finetuner.output_mse(test) < 1e-10);
    for (BlockLinear linear : {BlockLinear::query, BlockLinear::key, BlockLinear::value})
        finetuner.set_coded(linear, rtn3(block_linear_weight(model.weights().layers[layer], linear)));
    CHECK(finetuner.block().frozen_prefix() == BlockStage::attention_output);
    const double test_before = finetuner.output_mse(test);
    REQUIRE(test_before > 1e-6);

    BlockFinetuneOptions options;
    options.epochs = 4;
    options.learning_rate = 1e-3;
    const BlockFinetuneResult result = finetuner.finetune(training, validation, options);
    const double test_after = finetuner.output_mse(test);
    INFO("test MSE " << test_before << " -> " << test_after << ", validation " << result.validation_mse_before << " -> "
                     << result.validation_mse_after << ", best epoch " << result.best_epoch);
    CHECK(result.best_epoch > 0);
    CHECK(result.validation_mse_after < result.validation_mse_before);
    CHECK(test_after < test_before);
    // Frozen layers kept their coded values; the validation error never gets worse.
    CHECK(finetuner.block().parameter(BlockLinear::query).value == rtn3(model.weights().layers[layer].wq).matrix());
    CHECK(result.validation_mse_after <= result.validation_history.front());
}

TEST_CASE("sequential compression: an identity encoder leaves the model unchanged", "[block_finetune][data]") {
    const LlamaWeights original = random_llama_weights(tiny_config(/*tied=*/false), 77);
    LlamaModel model{LlamaWeights(original)};
    nwc::Random random(78);
    std::vector<int> tokens(24 * 6);
    for (int& token : tokens) token = int(random.below(300));

    std::vector<std::string> names;
    std::map<std::string, std::int64_t> hessian_width;
    const QuantizeFunction identity = [&](const std::string& name, const Tensor<float>& weight, const Tensor<double>* hessian) {
        names.push_back(name);
        hessian_width[name] = hessian != nullptr ? hessian->rows() : 0;
        return weight;
    };
    SequentialCompressionOptions options;
    options.window = 24;
    options.windows = 6;
    options.validation_windows = 2;
    options.finetune_options.epochs = 2;
    const SequentialCompressionReport report = compress_sequentially(model, tokens, identity, options);

    std::vector<std::string> expected{"model.embed_tokens.weight"};
    for (int layer = 0; layer < 2; ++layer)
        for (BlockLinear linear : block_linears) expected.push_back(layer_tensor_name(layer, block_linear_suffix(linear)));
    expected.push_back("lm_head.weight");
    CHECK(names == expected);
    CHECK(hessian_width["model.embed_tokens.weight"] == 0);  // untied: no Hessian for a lookup table
    CHECK(hessian_width["model.layers.1.mlp.down_proj.weight"] == 40);
    CHECK(hessian_width["lm_head.weight"] == 32);
    CHECK(report.steps.size() == 1 + 2 * 4 + 1);
    for (const auto& [name, tensor] : original.named_tensors()) {
        INFO(name);
        CHECK(model.weights().tensor(name).values() == tensor->values());
    }
    for (const SequentialStepReport& step : report.steps) {
        CHECK(step.block_mse_coded == 0.0);
        for (const SequentialTensorReport& tensor : step.tensors) CHECK(tensor.relative_mse == 0.0);
    }
}

TEST_CASE("sequential compression: 3-bit RTN with fine-tuning is the same for 1 and 2 threads", "[block_finetune][data]") {
    const QuantizeFunction rtn = [](const std::string&, const Tensor<float>& weight, const Tensor<double>*) { return rtn3(weight); };
    auto run = [&](int threads) {
        LlamaModel model(random_llama_weights(tiny_config(/*tied=*/true), 91));
        nwc::Random random(92);
        std::vector<int> tokens(24 * 8);
        for (int& token : tokens) token = int(random.below(300));
        SequentialCompressionOptions options;
        options.window = 24;
        options.windows = 8;
        options.validation_windows = 2;
        options.finetune_options.epochs = 3;
        options.finetune_options.windows_per_step = 3;
        options.threads = threads;
        const SequentialCompressionReport report = compress_sequentially(model, tokens, rtn, options);
        return std::make_pair(model.weights(), report);
    };
    const auto [one, report_one] = run(1);
    const auto [two, report_two] = run(2);
    for (const auto& [name, tensor] : one.named_tensors()) {
        INFO(name);
        CHECK(two.tensor(name).values() == tensor->values());
    }
    REQUIRE(report_one.steps.size() == report_two.steps.size());
    int improved = 0;
    for (std::size_t i = 0; i < report_one.steps.size(); ++i) {
        CHECK(report_one.steps[i].block_mse_finetuned == report_two.steps[i].block_mse_finetuned);
        CHECK(report_one.steps[i].block_mse_finetuned <= report_one.steps[i].block_mse_coded);
        if (report_one.steps[i].block_mse_finetuned < report_one.steps[i].block_mse_coded) ++improved;
    }
    CHECK(improved > 0);
    CHECK(std::isfinite(report_one.steps.front().tensors.front().proxy_loss));  // tied embedding: classifier Hessian
}

}  // namespace nwc_test_block_finetune
