// Llama forward pass on the CPU: tokens/s and GFLOP/s of a whole-window forward pass, next to
// plain Eigen GEMMs of the model's own layer shapes measured in the same run (the ceiling the
// forward pass is built from), plus the tokenizer's and the perplexity protocol's throughput.
//
//   stories260K : the real model (dim 64, 5 layers), one 512-token window of the evaluation text
//   synthetic   : random weights at GPT-2-small-like sizes (dim 768, hidden 2048, 12 heads,
//                 2 layers, vocab 32000), where the GEMMs are large enough to run near peak
#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>
#include <vector>

#include "nwc/core/file_io.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/llm/perplexity.hpp"

namespace nwc_bench_llm {

using namespace nwc;
using namespace nwc::llm;

namespace {

std::filesystem::path data_path(const char* name) { return std::filesystem::path(NWC_DATA_DIR) / name; }

struct Stories {
    LlamaModel model;
    Tokenizer tokenizer;
    std::string text;
    std::vector<int> tokens;
};

const Stories& stories() {
    static const Stories data = [] {
        LlamaModel model(read_llama2c(data_path("stories260K.bin")).weights);
        Tokenizer tokenizer = Tokenizer::read(data_path("tok512.bin"), 512);
        const auto bytes = read_file(data_path("tinystories_eval.txt"));
        std::string text(bytes.begin(), bytes.end());
        std::vector<int> tokens = tokenize_for_evaluation(tokenizer, text);
        return Stories{std::move(model), std::move(tokenizer), std::move(text), std::move(tokens)};
    }();
    return data;
}

LlamaConfig synthetic_config() {
    LlamaConfig config;
    config.dim = 768;
    config.hidden_dim = 2048;
    config.n_layers = 2;
    config.n_heads = 12;
    config.n_kv_heads = 12;
    config.vocab_size = 32000;
    config.seq_len = 512;
    return config;
}

const LlamaModel& synthetic() {
    static const LlamaModel model = [] {
        LlamaWeights weights = LlamaWeights::zeros(synthetic_config());
        Random random(1);
        weights.for_each_tensor([&](const std::string&, Tensor<float>& tensor, const Shape& shape) {
            const float scale = shape.rank() == 1 ? 0.0f : 1.0f / std::sqrt(float(shape.cols()));
            for (auto& value : tensor.values()) value = shape.rank() == 1 ? 1.0f : scale * random.normal();
        });
        return LlamaModel(std::move(weights));
    }();
    return model;
}

void report_forward(benchmark::State& state, const LlamaModel& model, std::int64_t length) {
    state.SetItemsProcessed(std::int64_t(state.iterations()) * length);
    state.counters["GFLOP/s"] = benchmark::Counter(model.forward_flops(length) * double(state.iterations()) * 1e-9, benchmark::Counter::kIsRate);
}

// One window of the real model on real text.
void BM_Forward_Stories260K(benchmark::State& state) {
    const auto& data = stories();
    const std::span<const int> window(data.tokens.data(), std::size_t(state.range(0)));
    for (auto _ : state) benchmark::DoNotOptimize(data.model.forward(window).data());
    report_forward(state, data.model, state.range(0));
}
BENCHMARK(BM_Forward_Stories260K)->Arg(512)->Arg(128)->Unit(benchmark::kMillisecond);

void BM_Forward_Synthetic(benchmark::State& state) {
    const LlamaModel& model = synthetic();  // built (and its weights drawn) outside the timed loop
    std::vector<int> tokens(std::size_t(state.range(0)));
    Random random(2);
    for (int& token : tokens) token = int(random.below(32000));
    for (auto _ : state) benchmark::DoNotOptimize(model.forward(tokens).data());
    report_forward(state, model, state.range(0));
}
BENCHMARK(BM_Forward_Synthetic)->Arg(512)->Iterations(4)->Unit(benchmark::kMillisecond);

// The reference: X [T, in] * W^T for W [out, in], exactly the product the forward pass issues.
void BM_EigenGemm(benchmark::State& state) {
    const Eigen::Index tokens = state.range(0), out = state.range(1), in = state.range(2);
    Random random(3);
    RowMajorMatrix<float> x(tokens, in), w(out, in), y(tokens, out);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = random.normal();
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = random.normal();
    for (auto _ : state) {
        y.noalias() = x * w.transpose();
        benchmark::DoNotOptimize(y.data());
    }
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(tokens * out * in) * double(state.iterations()) * 1e-9, benchmark::Counter::kIsRate);
}
// stories260K's shapes: w1/w3 [172, 64], w2 [64, 172], wq/wo [64, 64], classifier [512, 64].
BENCHMARK(BM_EigenGemm)->Args({512, 172, 64})->Args({512, 64, 172})->Args({512, 64, 64})->Args({512, 512, 64});
// The synthetic model's shapes: w1/w3 [2048, 768], w2 [768, 2048], wq [768, 768], classifier [32000, 768].
BENCHMARK(BM_EigenGemm)->Args({512, 2048, 768})->Args({512, 768, 2048})->Args({512, 768, 768})->Args({512, 32000, 768})->Unit(benchmark::kMillisecond);

// Exactly the matrix products of one forward pass (same shapes and order, preallocated outputs,
// random operands) and nothing else: what the forward pass would cost if norms, RoPE, softmax,
// SwiGLU and allocation were free.
void run_forward_gemms(benchmark::State& state, const LlamaConfig& c) {
    const Eigen::Index length = state.range(0), head = c.head_size();
    Random random(4);
    auto random_matrix = [&](Eigen::Index rows, Eigen::Index cols) {
        RowMajorMatrix<float> m(rows, cols);
        for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = random.normal();
        return m;
    };
    const RowMajorMatrix<float> x = random_matrix(length, c.dim), g = random_matrix(length, c.hidden_dim);
    const RowMajorMatrix<float> wq = random_matrix(c.dim, c.dim), wk = random_matrix(c.kv_dim(), c.dim), w1 = random_matrix(c.hidden_dim, c.dim);
    const RowMajorMatrix<float> w2 = random_matrix(c.dim, c.hidden_dim), wcls = random_matrix(c.vocab_size, c.dim);
    RowMajorMatrix<float> q(length, c.dim), k(length, c.kv_dim()), h(length, c.hidden_dim), scores(length, length), out(length, c.dim);
    RowMajorMatrix<float> logits(length, c.vocab_size);
    for (auto _ : state) {
        for (int layer = 0; layer < c.n_layers; ++layer) {
            q.noalias() = x * wq.transpose();
            k.noalias() = x * wk.transpose();
            k.noalias() = x * wk.transpose();
            for (int head_index = 0; head_index < c.n_heads; ++head_index) {
                const int kv = head_index / (c.n_heads / c.n_kv_heads);
                scores.noalias() = q.middleCols(head_index * head, head) * k.middleCols(kv * head, head).transpose();
                out.middleCols(head_index * head, head).noalias() = scores * k.middleCols(kv * head, head);
            }
            q.noalias() = out * wq.transpose();
            h.noalias() = x * w1.transpose();
            h.noalias() = x * w1.transpose();
            out.noalias() = g * w2.transpose();
        }
        logits.noalias() = x * wcls.transpose();
        benchmark::DoNotOptimize(logits.data());
    }
    state.SetItemsProcessed(std::int64_t(state.iterations()) * length);
    const LlamaModel& shape_source = c.dim == 64 ? stories().model : synthetic();
    state.counters["GFLOP/s"] = benchmark::Counter(shape_source.forward_flops(length) * double(state.iterations()) * 1e-9, benchmark::Counter::kIsRate);
}
void BM_ForwardGemmsOnly_Stories260K(benchmark::State& state) { run_forward_gemms(state, stories().model.config()); }
BENCHMARK(BM_ForwardGemmsOnly_Stories260K)->Arg(512)->Arg(128)->Unit(benchmark::kMillisecond);
void BM_ForwardGemmsOnly_Synthetic(benchmark::State& state) { run_forward_gemms(state, synthetic().config()); }
BENCHMARK(BM_ForwardGemmsOnly_Synthetic)->Arg(512)->Iterations(4)->Unit(benchmark::kMillisecond);

// The whole protocol over the first 16 windows, with 1 and 2 threads.
void BM_Perplexity_Stories260K(benchmark::State& state) {
    const auto& data = stories();
    PerplexityOptions options;
    options.max_windows = 16;
    options.threads = int(state.range(0));
    for (auto _ : state) benchmark::DoNotOptimize(evaluate_perplexity(data.model, data.tokens, options).mean_nll);
    state.SetItemsProcessed(std::int64_t(state.iterations()) * 16 * 512);
}
BENCHMARK(BM_Perplexity_Stories260K)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// Tokenizing the whole 250 KB evaluation text in one call (the heap-based BPE merge).
void BM_Tokenize_EvalText(benchmark::State& state) {
    const auto& data = stories();
    for (auto _ : state) benchmark::DoNotOptimize(data.tokenizer.encode(data.text, true).size());
    state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(data.text.size()));
    state.counters["tokens"] = double(data.tokens.size());
}
BENCHMARK(BM_Tokenize_EvalText)->Unit(benchmark::kMillisecond);

}  // namespace

}  // namespace nwc_bench_llm
