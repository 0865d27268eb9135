// Calibration: Hessians X^T X / N of every linear input (exact on a tiny model, symmetric PSD on
// stories260K, identical for any thread count) and the block input/output hook.
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <map>

#include <Eigen/Eigenvalues>

#include "llm_test_support.hpp"
#include "nwc/llm/calibration.hpp"
#include "nwc/io/llama2c_file.hpp"

namespace nwc_test_calibration {

using nwc::Shape;
using nwc::Tensor;
using namespace nwc::llm;
using namespace nwc::llm::testing;

namespace {

LlamaConfig tiny_config() {
    LlamaConfig config;
    config.dim = 16;
    config.hidden_dim = 24;
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.vocab_size = 300;
    config.seq_len = 16;
    return config;
}

std::vector<int> random_tokens(std::size_t count, std::uint64_t seed) {
    nwc::Random random(seed);
    std::vector<int> tokens(count);
    for (int& token : tokens) token = int(random.below(300));
    return tokens;
}

}  // namespace

TEST_CASE("calibration: Hessians equal X^T X / N computed naively on a tiny model", "[calibration]") {
    const LlamaModel model(random_llama_weights(tiny_config(), 21));
    const std::vector<int> tokens = random_tokens(8 * 5 + 3, 22);  // 5 windows of 8, a partial tail
    CalibrationOptions options;
    options.window = 8;
    options.windows_per_group = 2;
    const LinearHessians hessians = collect_hessians(model, tokens, options);
    CHECK(hessians.sample_count() == 40);
    REQUIRE(hessians.inputs().size() == 2 * 4 + 1);

    // Naive sums over the rows the observer sees, in long double.
    std::map<std::string, std::vector<std::vector<long double>>> expected;
    auto add = [&](const std::string& weight, const Activations& x) {
        auto& sum = expected[weight];
        if (sum.empty()) sum.assign(std::size_t(x.cols()), std::vector<long double>(std::size_t(x.cols()), 0.0L));
        for (Eigen::Index r = 0; r < x.rows(); ++r)
            for (Eigen::Index i = 0; i < x.cols(); ++i)
                for (Eigen::Index j = 0; j < x.cols(); ++j) sum[std::size_t(i)][std::size_t(j)] += (long double)x(r, i) * (long double)x(r, j);
    };
    for (const auto& window : cut_windows(tokens, 8)) {
        Activations hidden = model.embed(window);
        for (int layer = 0; layer < 2; ++layer)
            model.forward_block(layer, hidden, [&](const BlockLinearInputs& in) {
                add(layer_tensor_name(in.layer, "self_attn.q_proj.weight"), in.attention_input);
                add(layer_tensor_name(in.layer, "self_attn.o_proj.weight"), in.attention_output);
                add(layer_tensor_name(in.layer, "mlp.gate_proj.weight"), in.ffn_input);
                add(layer_tensor_name(in.layer, "mlp.down_proj.weight"), in.ffn_hidden);
            });
        add("model.embed_tokens.weight", model.final_norm(hidden));
    }
    for (const auto& [weight, sum] : expected) {
        const Tensor<double>& h = hessians.at(weight);
        REQUIRE(h.rows() == std::int64_t(sum.size()));
        for (std::size_t i = 0; i < sum.size(); ++i)
            for (std::size_t j = 0; j < sum.size(); ++j)
                REQUIRE(h(std::int64_t(i), std::int64_t(j)) == Approx(double(sum[i][j] / 40.0L)).epsilon(1e-12).margin(1e-15));
    }
    // Shared inputs are shared.
    CHECK(&hessians.at("model.layers.1.self_attn.k_proj.weight") == &hessians.at("model.layers.1.self_attn.q_proj.weight"));
    CHECK(&hessians.at("model.layers.1.self_attn.v_proj.weight") == &hessians.at("model.layers.1.self_attn.q_proj.weight"));
    CHECK(&hessians.at("model.layers.0.mlp.up_proj.weight") == &hessians.at("model.layers.0.mlp.gate_proj.weight"));
    CHECK(hessians.at("model.layers.0.mlp.down_proj.weight").shape() == Shape{24, 24});
    CHECK_FALSE(hessians.contains("model.norm.weight"));
    CHECK_THROWS_AS(hessians.at("model.norm.weight"), nwc::error);
}

TEST_CASE("calibration: identical Hessians for any thread count", "[calibration]") {
    const LlamaModel model(random_llama_weights(tiny_config(), 31));
    const std::vector<int> tokens = random_tokens(16 * 11, 32);
    CalibrationOptions options;
    options.windows_per_group = 2;
    options.window = 16;
    options.threads = 1;
    const LinearHessians one = collect_hessians(model, tokens, options);
    options.threads = 3;
    const LinearHessians three = collect_hessians(model, tokens, options);
    for (std::size_t i = 0; i < one.inputs().size(); ++i) REQUIRE(one.inputs()[i].hessian.values() == three.inputs()[i].hessian.values());
}

TEST_CASE("calibration: stories260K Hessians on the calibration text are symmetric PSD", "[calibration][data]") {
    const LlamaModel model(read_llama2c(data_path("stories260K.bin")).weights);
    const std::vector<int> tokens =
        tokenize_for_evaluation(Tokenizer::read(data_path("tok512.bin"), 512), read_text("tinystories_calib.txt"));
    CalibrationOptions options;
    options.threads = 2;
    options.max_windows = full_size_checks ? 32 : 3;
    const LinearHessians hessians = collect_hessians(model, tokens, options);
    CHECK(hessians.sample_count() == options.max_windows * 512);
    CHECK(hessians.inputs().size() == 5 * 4 + 1);
    for (const auto& input : hessians.inputs()) {
        const auto h = input.hessian.matrix();
        REQUIRE(h.isApprox(h.transpose(), 0.0));  // exactly symmetric
        const Eigen::VectorXd eigenvalues = Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd>(h).eigenvalues();
        INFO(input.input_name);
        REQUIRE(eigenvalues.minCoeff() >= -1e-10 * eigenvalues.maxCoeff());
        REQUIRE(h.diagonal().minCoeff() > 0.0);
    }
    CHECK(hessians.at("model.layers.4.mlp.down_proj.weight").rows() == 172);
    CHECK(hessians.at("model.embed_tokens.weight").rows() == 64);  // the tied classifier's input
}

TEST_CASE("calibration: the block hook reproduces the forward pass", "[calibration]") {
    const LlamaModel model(random_llama_weights(tiny_config(), 41));
    const std::vector<int> tokens = random_tokens(16 * 3, 42);
    CalibrationOptions options;
    options.window = 16;
    options.threads = 2;
    const auto windows = cut_windows(tokens, 16);
    std::vector<Activations> states = embed_windows(model, windows);
    for (int layer = 0; layer < 2; ++layer) {
        const BlockActivations captured = capture_block_activations(model, tokens, layer, options);
        REQUIRE(captured.inputs.size() == 3);
        for (std::size_t w = 0; w < 3; ++w) REQUIRE(captured.inputs[w] == states[w]);
        states = run_block(model, layer, states, 2);
        for (std::size_t w = 0; w < 3; ++w) REQUIRE(captured.outputs[w] == states[w]);
    }
    for (std::size_t w = 0; w < 3; ++w) CHECK(model.classify(model.final_norm(states[w])) == model.forward(windows[w]));
    CHECK_THROWS_AS(run_block(model, 2, states), nwc::error);
    CHECK_THROWS_AS(run_block(model, 0, {Activations(4, 15)}), nwc::error);
}

}  // namespace nwc_test_calibration
