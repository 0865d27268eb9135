// Perplexity protocol: windowing, thread-count invariance, and the two correctness anchors on
// stories260K / tinystories_eval.txt (fp32 NLL 1.83765, llama.cpp Q4_0 NLL 1.95774). Optimized
// builds evaluate the whole text (about 3 s of CPU per evaluation); sanitizer and debug builds a
// 2-window slice (about 1 s of CPU per window there).
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <vector>

#include "llm_test_support.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/llm/perplexity.hpp"
#include "nwc/quant/round_to_nearest.hpp"

namespace nwc_test_perplexity {

using nwc::RoundToNearest;
using nwc::Shape;
using nwc::Tensor;
using namespace nwc::llm;
using namespace nwc::llm::testing;

namespace {

const LlamaWeights& stories_weights() {
    static const LlamaWeights weights = read_llama2c(data_path("stories260K.bin")).weights;
    return weights;
}

const std::vector<int>& evaluation_tokens() {
    static const std::vector<int> tokens =
        tokenize_for_evaluation(Tokenizer::read(data_path("tok512.bin"), 512), read_text("tinystories_eval.txt"));
    return tokens;
}

// Sanitizer and debug builds run about 1 s per window: they evaluate a slice of 2 windows.
constexpr std::int64_t slice_windows = 2;

PerplexityOptions protocol_options() {
    PerplexityOptions options;
    options.threads = 2;
    if (!full_size_checks) options.max_windows = slice_windows;
    return options;
}

// llama.cpp's Q4_0 round trip of a [rows, cols] matrix: blocks of 32 along every row, a shorter
// last block with a scale of its own (stories260K's down_proj has 172 columns; ggml would refuse).
Tensor<float> q4_0_round_trip(const Tensor<float>& matrix) { return RoundToNearest::q4_0().quantize(matrix.view()); }
std::int64_t q4_0_bits(std::int64_t rows, std::int64_t cols) { return RoundToNearest::q4_0().payload_bits(rows, cols); }

const PerplexityResult& fp32_result() {
    static const PerplexityResult result = evaluate_perplexity(LlamaModel(stories_weights()), evaluation_tokens(), protocol_options());
    return result;
}

}  // namespace

TEST_CASE("perplexity: windows of 512, the partial tail dropped", "[perplexity][data]") {
    std::vector<int> tokens(1300, 7);
    const auto windows = cut_windows(tokens, 512);
    REQUIRE(windows.size() == 2);
    CHECK(windows[1].data() == tokens.data() + 512);
    CHECK(windows[1].size() == 512);
    CHECK(cut_windows(std::vector<int>(511, 1), 512).empty());
    CHECK_THROWS_AS(cut_windows(tokens, 1), nwc::error);
    const LlamaModel model(stories_weights());
    CHECK_THROWS_AS(evaluate_perplexity(model, std::vector<int>(511, 1)), nwc::error);  // no complete window
    PerplexityOptions too_long;
    too_long.window = 513;
    CHECK_THROWS_AS(evaluate_perplexity(model, tokens, too_long), nwc::error);
}

TEST_CASE("perplexity: the result does not depend on the thread count", "[perplexity][data]") {
    const LlamaModel model(stories_weights());
    PerplexityOptions options;
    options.max_windows = 3;
    options.threads = 1;
    const PerplexityResult one = evaluate_perplexity(model, evaluation_tokens(), options);
    options.threads = 3;
    const PerplexityResult three = evaluate_perplexity(model, evaluation_tokens(), options);
    CHECK(one.total_nll == three.total_nll);  // bit for bit
    CHECK(one.window_count == 3);
    CHECK(one.prediction_count == 3 * 511);
}

TEST_CASE("perplexity: fp32 anchor, 127,512 tokens, 249 windows, NLL 1.83765", "[perplexity][anchor][data]") {
    const PerplexityResult& result = fp32_result();
    CHECK(result.token_count == 127512);
    if (full_size_checks) {
        CHECK(result.window_count == 249);
        CHECK(result.prediction_count == 127239);
        CHECK(std::abs(result.mean_nll - 1.83765) < 1e-3);
        CHECK(std::abs(result.perplexity - 6.2818) < 6.2818e-3);
    } else {
        CHECK(result.prediction_count == slice_windows * 511);
        CHECK(result.mean_nll > 1.5);  // a slice: only a sanity range
        CHECK(result.mean_nll < 2.3);
    }
}

TEST_CASE("Q4_0 reference: ggml's rounding on hand-checked blocks", "[q4_0]") {
    // max = -4 (largest magnitude) -> d = 0.5; x / d + 8.5 truncated, clamped to 15.
    Tensor<float> block(Shape{1, 32});
    for (int i = 0; i < 32; ++i) block[i] = 0.0f;
    block[0] = -4.0f;
    block[1] = 3.9f;   // 7.8 + 8.5 = 16.3 -> 16 -> clamped to 15 -> (15 - 8) * 0.5 = 3.5
    block[2] = 0.26f;  // 0.52 + 8.5 = 9.02 -> 9 -> 0.5
    block[3] = 0.24f;  // 0.48 + 8.5 = 8.98 -> 8 -> 0
    block[4] = -0.76f; // -1.52 + 8.5 = 6.98 -> 6 -> -1
    // max is the FIRST value of largest magnitude: 4 (second) does not replace -4.
    block[5] = 4.0f;   // 8 + 8.5 -> 15 -> 3.5
    const Tensor<float> q = q4_0_round_trip(block);
    CHECK(q[0] == -4.0f);
    CHECK(q[1] == 3.5f);
    CHECK(q[2] == 0.5f);
    CHECK(q[3] == 0.0f);
    CHECK(q[4] == -1.0f);
    CHECK(q[5] == 3.5f);
    CHECK(q[6] == 0.0f);
    // An all-zero block stays zero; a short tail block (12 values) gets its own scale.
    Tensor<float> tail(Shape{2, 44});
    for (int i = 0; i < 88; ++i) tail[i] = i < 44 ? 0.0f : (i % 44 < 32 ? 100.0f : 0.125f * float(i % 44 - 32));
    const Tensor<float> tail_q = q4_0_round_trip(tail);
    for (int i = 0; i < 44; ++i) CHECK(tail_q[i] == 0.0f);
    CHECK(tail_q[44 + 43] == Approx(11 * 0.125f).epsilon(1e-3));  // the tail's max maps exactly to -8 d
    CHECK(q4_0_bits(4096, 4096) * 2 == 9 * 4096 * 4096);          // 4.5 bits per weight
    CHECK(q4_0_bits(64, 172) == 64 * (6 * 16 + 172 * 4));
}

TEST_CASE("perplexity: Q4_0 anchor, every 2-D matrix (tied embedding included), NLL 1.95774", "[perplexity][anchor][q4_0][data]") {
    LlamaWeights weights = stories_weights();
    std::int64_t bits = 0, quantized = 0;
    weights.for_each_tensor([&](const std::string&, Tensor<float>& tensor, const Shape& shape) {
        if (shape.rank() != 2) return;
        tensor = q4_0_round_trip(tensor);
        bits += q4_0_bits(shape.rows(), shape.cols());
        quantized += shape.numel();
    });
    CHECK(quantized == 259328);  // 36 linear layers + the 512 x 64 embedding = classifier
    CHECK(double(bits) / double(quantized) == Approx(4.5124).margin(1e-4));
    const PerplexityResult result = evaluate_perplexity(LlamaModel(std::move(weights)), evaluation_tokens(), protocol_options());
    if (full_size_checks) {
        CHECK(std::abs(result.mean_nll - 1.95774) < 1e-3);
    } else {
        CHECK(result.mean_nll > fp32_result().mean_nll);  // a slice: quantization must cost something
    }
}

}  // namespace nwc_test_perplexity
