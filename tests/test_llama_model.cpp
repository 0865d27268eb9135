// Llama model: llama2.c files (byte-exact round trip, hostile headers), the batched forward pass
// against a token-by-token transcription of run.c's transformer(), and the Hugging Face layout
// (RoPE row permutation, identical logits after write -> read).
// nwc-ctest-labels: data
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "llm_test_support.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/io/hf_llama.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/llm/llama_model.hpp"

namespace nwc_test_llama_model {

using nwc::errc;
using nwc::Shape;
using nwc::Tensor;
using namespace nwc::llm;
using namespace nwc::llm::testing;

namespace {

const Llama2cModel& stories() {
    static const Llama2cModel model = read_llama2c(data_path("stories260K.bin"));
    return model;
}

// run.c's transformer() for one token at position `pos`, with its KV cache: the reference the
// batched forward pass is checked against.
struct RunCReference {
    const LlamaWeights& w;
    std::vector<std::vector<float>> key_cache, value_cache;  // per layer: [seq_len * kv_dim]

    explicit RunCReference(const LlamaWeights& weights) : w(weights) {
        const auto& c = w.config;
        key_cache.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(c.seq_len * c.kv_dim())));
        value_cache = key_cache;
    }
    static void rmsnorm(float* o, const float* x, const float* weight, int size) {
        float ss = 0.0f;
        for (int j = 0; j < size; j++) ss += x[j] * x[j];
        ss /= float(size);
        ss += 1e-5f;
        ss = 1.0f / std::sqrt(ss);
        for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
    }
    static void matmul(float* xout, const float* x, const float* weight, int n, int d) {
        for (int i = 0; i < d; i++) {
            float val = 0.0f;
            for (int j = 0; j < n; j++) val += weight[i * n + j] * x[j];
            xout[i] = val;
        }
    }
    std::vector<float> step(int token, int pos) {
        const auto& p = w.config;
        const int dim = p.dim, kv_dim = p.kv_dim(), kv_mul = p.n_heads / p.n_kv_heads, hidden_dim = p.hidden_dim, head_size = p.head_size();
        const auto width = static_cast<std::size_t>(dim), hidden_width = static_cast<std::size_t>(hidden_dim);
        std::vector<float> x(width), xb(width), xb2(width), hb(hidden_width), hb2(hidden_width), q(width);
        std::vector<float> att(static_cast<std::size_t>(pos + 1)), logits(static_cast<std::size_t>(p.vocab_size));
        std::memcpy(x.data(), w.token_embedding.data() + token * dim, sizeof(float) * std::size_t(dim));
        for (int l = 0; l < p.n_layers; l++) {
            const auto& L = w.layers[std::size_t(l)];
            rmsnorm(xb.data(), x.data(), L.attention_norm.data(), dim);
            float* k = key_cache[std::size_t(l)].data() + pos * kv_dim;
            float* v = value_cache[std::size_t(l)].data() + pos * kv_dim;
            matmul(q.data(), xb.data(), L.wq.data(), dim, dim);
            matmul(k, xb.data(), L.wk.data(), dim, kv_dim);
            matmul(v, xb.data(), L.wv.data(), dim, kv_dim);
            for (int i = 0; i < dim; i += 2) {
                const int head_dim = i % head_size;
                const float freq = 1.0f / std::pow(10000.0f, float(head_dim) / float(head_size));
                const float val = float(pos) * freq, fcr = std::cos(val), fci = std::sin(val);
                const int rotn = i < kv_dim ? 2 : 1;
                for (int r = 0; r < rotn; r++) {
                    float* vec = r == 0 ? q.data() : k;
                    const float v0 = vec[i], v1 = vec[i + 1];
                    vec[i] = v0 * fcr - v1 * fci;
                    vec[i + 1] = v0 * fci + v1 * fcr;
                }
            }
            for (int h = 0; h < p.n_heads; h++) {
                const float* qh = q.data() + h * head_size;
                for (int t = 0; t <= pos; t++) {
                    const float* kt = key_cache[std::size_t(l)].data() + t * kv_dim + (h / kv_mul) * head_size;
                    float score = 0.0f;
                    for (int i = 0; i < head_size; i++) score += qh[i] * kt[i];
                    att[std::size_t(t)] = score / std::sqrt(float(head_size));
                }
                float max_val = att[0];
                for (int t = 1; t <= pos; t++) max_val = std::max(max_val, att[std::size_t(t)]);
                float sum = 0.0f;
                for (int t = 0; t <= pos; t++) sum += (att[std::size_t(t)] = std::exp(att[std::size_t(t)] - max_val));
                for (int t = 0; t <= pos; t++) att[std::size_t(t)] /= sum;
                float* out = xb.data() + h * head_size;
                std::fill(out, out + head_size, 0.0f);
                for (int t = 0; t <= pos; t++) {
                    const float* vt = value_cache[std::size_t(l)].data() + t * kv_dim + (h / kv_mul) * head_size;
                    for (int i = 0; i < head_size; i++) out[i] += att[std::size_t(t)] * vt[i];
                }
            }
            matmul(xb2.data(), xb.data(), L.wo.data(), dim, dim);
            for (int i = 0; i < dim; i++) x[std::size_t(i)] += xb2[std::size_t(i)];
            rmsnorm(xb.data(), x.data(), L.ffn_norm.data(), dim);
            matmul(hb.data(), xb.data(), L.w1.data(), dim, hidden_dim);
            matmul(hb2.data(), xb.data(), L.w3.data(), dim, hidden_dim);
            for (int i = 0; i < hidden_dim; i++) hb[std::size_t(i)] = hb[std::size_t(i)] * (1.0f / (1.0f + std::exp(-hb[std::size_t(i)]))) * hb2[std::size_t(i)];
            matmul(xb.data(), hb.data(), L.w2.data(), hidden_dim, dim);
            for (int i = 0; i < dim; i++) x[std::size_t(i)] += xb[std::size_t(i)];
        }
        rmsnorm(x.data(), x.data(), w.final_norm.data(), dim);
        matmul(logits.data(), x.data(), w.output_weight().data(), dim, p.vocab_size);
        return logits;
    }
};

errc llama2c_error(const std::vector<std::uint8_t>& bytes) {
    try {
        parse_llama2c(bytes, "test model");
    } catch (const nwc::error& problem) {
        return problem.id();
    }
    FAIL("hostile model was accepted");
    return errc::io;
}

std::vector<std::uint8_t> with_header_field(std::vector<std::uint8_t> bytes, int field, std::int32_t value) {
    std::memcpy(bytes.data() + 4 * field, &value, 4);
    return bytes;
}

LlamaConfig small_config(bool shared) {
    LlamaConfig config;
    config.dim = 32;
    config.hidden_dim = 56;
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.vocab_size = 300;
    config.seq_len = 48;
    config.shared_classifier = shared;
    return config;
}

double max_difference(const Activations& a, const Activations& b) { return double((a - b).cwiseAbs().maxCoeff()); }

}  // namespace

TEST_CASE("llama2.c file: stories260K's header, names and shapes", "[llama2c][data]") {
    const LlamaConfig& c = stories().weights.config;
    CHECK(c.dim == 64);
    CHECK(c.hidden_dim == 172);
    CHECK(c.n_layers == 5);
    CHECK(c.n_heads == 8);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.vocab_size == 512);
    CHECK(c.seq_len == 512);
    CHECK(c.shared_classifier);
    const auto names = stories().weights.names();
    REQUIRE(names.size() == 1 + 5 * 9 + 1);
    CHECK(names.front() == "model.embed_tokens.weight");
    CHECK(names[2] == "model.layers.0.self_attn.q_proj.weight");
    CHECK(names.back() == "model.norm.weight");
    CHECK(stories().weights.tensor("model.layers.4.self_attn.k_proj.weight").shape() == Shape{32, 64});
    CHECK(stories().weights.tensor("model.layers.4.mlp.down_proj.weight").shape() == Shape{64, 172});
    CHECK_FALSE(stories().weights.contains("lm_head.weight"));
    CHECK_FALSE(stories().weights.contains("model.layers.5.mlp.down_proj.weight"));
    CHECK_FALSE(stories().weights.contains("model.layers.01.mlp.down_proj.weight"));
    CHECK_THROWS_AS(stories().weights.tensor("model.layers.x.mlp.down_proj.weight"), nwc::error);
}

TEST_CASE("llama2.c file: stories260K round-trips byte for byte, in memory and on disk", "[llama2c][data]") {
    const std::vector<std::uint8_t> original = nwc::read_file(data_path("stories260K.bin"));
    CHECK(serialize_llama2c(stories()) == original);
    TemporaryDirectory directory("llama2c");
    const auto path = directory.path() / "copy.bin";
    write_llama2c(path, stories());
    CHECK(nwc::read_file(path) == original);
    // A full disk leaves the target untouched.
    CHECK_THROWS_AS(write_llama2c(path, stories().weights, 1000), nwc::error);
    CHECK(nwc::read_file(path) == original);
    // Weights alone: the RoPE tables are recomputed the way llama2.c's export computes them.
    write_llama2c(path, stories().weights);
    const Llama2cModel again = read_llama2c(path);
    CHECK(again.weights.token_embedding.values() == stories().weights.token_embedding.values());
    const auto [real, imag] = llama2c_rope_tables(stories().weights.config);
    for (std::int64_t i = 0; i < real.numel(); ++i) {
        REQUIRE(std::abs(real[i] - stories().rope_real[i]) < 2e-4f);
        REQUIRE(std::abs(imag[i] - stories().rope_imag[i]) < 2e-4f);
    }
}

TEST_CASE("llama2.c file: a separate classifier is written with a negative vocab_size", "[llama2c]") {
    const LlamaWeights weights = random_llama_weights(small_config(false), 5);
    Llama2cModel model{weights, {}, {}};
    std::tie(model.rope_real, model.rope_imag) = llama2c_rope_tables(weights.config);
    const auto bytes = serialize_llama2c(model);
    std::int32_t vocab = 0;
    std::memcpy(&vocab, bytes.data() + 20, 4);
    CHECK(vocab == -300);
    const Llama2cModel back = parse_llama2c(bytes);
    CHECK_FALSE(back.weights.config.shared_classifier);
    CHECK(back.weights.classifier.values() == weights.classifier.values());
    CHECK(serialize_llama2c(back) == bytes);
}

TEST_CASE("llama2.c file: hostile headers and sizes are refused", "[llama2c][hostile][data]") {
    const std::vector<std::uint8_t> good = nwc::read_file(data_path("stories260K.bin"));
    CHECK(llama2c_error({}) == errc::truncated);
    CHECK(llama2c_error({good.begin(), good.begin() + 27}) == errc::truncated);
    CHECK(llama2c_error({good.begin(), good.end() - 1}) == errc::truncated);
    auto longer = good;
    longer.push_back(0);
    CHECK(llama2c_error(longer) == errc::corrupt);
    for (int field = 0; field < 7; ++field) {
        CHECK(llama2c_error(with_header_field(good, field, 0)) == errc::corrupt);
        CHECK(llama2c_error(with_header_field(good, field, 0x7FFFFFFF)) == errc::limit);
        // 70000 exceeds the limits of dim, n_layers and the head counts; hidden_dim, vocab_size and
        // seq_len may be that large, but then the file is too short.
        CHECK(llama2c_error(with_header_field(good, field, 70000)) == (field == 1 || field == 5 || field == 6 ? errc::truncated : errc::limit));
        if (field != 5) CHECK(llama2c_error(with_header_field(good, field, -3)) == errc::corrupt);
    }
    CHECK(llama2c_error(with_header_field(good, 5, std::numeric_limits<std::int32_t>::min())) == errc::limit);
    CHECK(llama2c_error(with_header_field(good, 5, -512)) == errc::truncated);  // a classifier the file lacks
    CHECK(llama2c_error(with_header_field(good, 3, 7)) == errc::corrupt);       // 7 heads do not divide 64
    CHECK(llama2c_error(with_header_field(good, 3, 64)) == errc::corrupt);      // head size 1 is odd
    CHECK(llama2c_error(with_header_field(good, 4, 3)) == errc::corrupt);       // 3 kv heads do not divide 8
    CHECK(llama2c_error(with_header_field(good, 4, 16)) == errc::corrupt);      // more kv heads than heads
    CHECK(llama2c_error(with_header_field(good, 6, 513)) == errc::truncated);   // RoPE tables grow
    CHECK(llama2c_error(with_header_field(good, 1, 1 << 20)) == errc::truncated);
    CHECK_THROWS_AS(read_llama2c(data_path("no_such_model.bin")), nwc::error);
}

TEST_CASE("llama model: the batched forward pass matches run.c token by token", "[forward][data]") {
    for (const bool shared : {true, false}) {
        const LlamaWeights weights = random_llama_weights(small_config(shared), shared ? 1 : 2);
        const LlamaModel model(weights);
        std::vector<int> tokens;
        nwc::Random random(3);
        for (int i = 0; i < 40; ++i) tokens.push_back(int(random.below(300)));
        const Activations logits = model.forward(tokens);
        RunCReference reference(weights);
        for (int pos = 0; pos < int(tokens.size()); ++pos) {
            const std::vector<float> expected = reference.step(tokens[std::size_t(pos)], pos);
            for (int v = 0; v < 300; ++v) REQUIRE(logits(pos, v) == Approx(expected[std::size_t(v)]).margin(2e-4));
        }
    }
    // stories260K on real text, first 64 positions.
    const LlamaModel model(stories().weights);
    const std::vector<int> tokens{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
    const Activations logits = model.forward(tokens);
    RunCReference reference(stories().weights);
    for (int pos = 0; pos < int(tokens.size()); ++pos) {
        const std::vector<float> expected = reference.step(tokens[std::size_t(pos)], pos);
        for (int v = 0; v < 512; ++v) REQUIRE(logits(pos, v) == Approx(expected[std::size_t(v)]).margin(2e-4));
    }
}

TEST_CASE("llama model: a prefix of a window gives the same logits (causality)", "[forward]") {
    const LlamaModel model(random_llama_weights(small_config(true), 9));
    std::vector<int> tokens;
    nwc::Random random(4);
    for (int i = 0; i < 48; ++i) tokens.push_back(int(random.below(300)));
    const Activations full = model.forward(tokens);
    const Activations prefix = model.forward(std::span<const int>(tokens).first(17));
    CHECK(max_difference(full.topRows(17), prefix) < 1e-5);
}

TEST_CASE("llama model: bad arguments are refused", "[forward][hostile]") {
    LlamaModel model(random_llama_weights(small_config(true), 9));
    CHECK_THROWS_AS(model.forward(std::vector<int>{1, 300}), nwc::error);
    CHECK_THROWS_AS(model.forward(std::vector<int>{-1}), nwc::error);
    CHECK_THROWS_AS(model.forward(std::vector<int>(49, 1)), nwc::error);
    CHECK_THROWS_AS(model.replace_weight("model.layers.0.mlp.up_proj.weight", Tensor<float>(Shape{32, 56})), nwc::error);
    CHECK_THROWS_AS(model.replace_weight("model.layers.2.mlp.up_proj.weight", Tensor<float>(Shape{56, 32})), nwc::error);
    model.replace_weight("model.layers.0.mlp.up_proj.weight", Tensor<float>(Shape{56, 32}));
    CHECK(model.weights().layers[0].w3.values() == std::vector<float>(56 * 32, 0.0f));
    LlamaWeights broken = random_llama_weights(small_config(true), 9);
    broken.layers[1].wk = Tensor<float>(Shape{32, 32});
    CHECK_THROWS_AS(LlamaModel(broken), nwc::error);
}

TEST_CASE("HF layout: the q/k permutation is transformers' and inverts exactly", "[hf]") {
    Tensor<float> rows(Shape{16, 3});  // 2 heads of size 8, row r holds r
    for (std::int64_t r = 0; r < 16; ++r)
        for (std::int64_t c = 0; c < 3; ++c) rows(r, c) = float(r);
    const Tensor<float> hf = permute_rows_to_hf(rows.view(), 2);
    // HF row j * 4 + r of a head holds Meta row 2r + j.
    const std::vector<float> expected_order{0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15};
    for (std::int64_t r = 0; r < 16; ++r) CHECK(hf(r, 1) == expected_order[std::size_t(r)]);
    CHECK(permute_rows_from_hf(hf.view(), 2).values() == rows.values());
}

TEST_CASE("HF layout: stories260K written as safetensors + config.json reads back to identical logits", "[hf][data]") {
    TemporaryDirectory directory("hf");
    write_hf_llama(directory.path(), stories().weights);
    const nlohmann::json config = nlohmann::json::parse(std::ifstream(directory.path() / "config.json"));
    CHECK(config["hidden_size"] == 64);
    CHECK(config["num_key_value_heads"] == 4);
    CHECK(config["tie_word_embeddings"] == true);
    CHECK(config["rms_norm_eps"].get<double>() == 1e-5);
    const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(directory.path() / "model.safetensors");
    CHECK(file.tensor_count() == 47);
    const Tensor<float> stored_q = file.read_float32("model.layers.0.self_attn.q_proj.weight");
    CHECK(stored_q.values() != stories().weights.layers[0].wq.values());  // permuted on disk
    CHECK(permute_rows_from_hf(stored_q.view(), 8).values() == stories().weights.layers[0].wq.values());

    for (const auto& path : {directory.path(), directory.path() / "model.safetensors"}) {
        const LlamaWeights back = read_hf_llama(path);
        CHECK(back.config == stories().weights.config);
        back.for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape&) {
            REQUIRE(tensor.values() == stories().weights.tensor(name).values());
        });
        const std::vector<int> tokens{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426};
        CHECK(max_difference(LlamaModel(back).forward(tokens), LlamaModel(stories().weights).forward(tokens)) == 0.0);
    }
    // A separate classifier and F16 storage also go through.
    const LlamaWeights untied = random_llama_weights(small_config(false), 8);
    write_hf_llama(directory.path() / "untied", untied, nwc::dtype::f16);
    const LlamaWeights untied_back = read_hf_llama(directory.path() / "untied");
    CHECK(untied_back.classifier.numel() == 300 * 32);
    CHECK(untied_back.classifier[5] == nwc::to_float(nwc::to_half(untied.classifier[5])));
}

TEST_CASE("HF layout: bad configs and missing or misshapen tensors are refused", "[hf][hostile][data]") {
    auto config_error = [](nlohmann::json root) {
        try {
            parse_hf_config(root, "test config");
        } catch (const nwc::error& problem) {
            return problem.id();
        }
        FAIL("bad config accepted");
        return errc::io;
    };
    const nlohmann::json good = hf_config_json(stories().weights.config);
    CHECK(parse_hf_config(good, "good") == stories().weights.config);
    auto edited = [&](const char* key, nlohmann::json value) {
        nlohmann::json copy = good;
        if (value.is_discarded())
            copy.erase(key);
        else
            copy[key] = value;
        return copy;
    };
    CHECK(config_error(edited("hidden_size", nlohmann::json(nlohmann::json::value_t::discarded))) == errc::corrupt);
    CHECK(config_error(edited("hidden_size", "64")) == errc::corrupt);
    CHECK(config_error(edited("hidden_size", -64)) == errc::corrupt);
    CHECK(config_error(edited("num_attention_heads", 7)) == errc::corrupt);
    CHECK(config_error(edited("model_type", "gpt2")) == errc::unsupported);
    CHECK(config_error(edited("hidden_act", "gelu")) == errc::unsupported);
    CHECK(config_error(edited("rope_scaling", {{"type", "linear"}, {"factor", 2.0}})) == errc::unsupported);
    CHECK(config_error(edited("attention_bias", true)) == errc::unsupported);
    CHECK(config_error(edited("tie_word_embeddings", 1)) == errc::corrupt);
    CHECK(config_error(nlohmann::json::array()) == errc::corrupt);

    TemporaryDirectory directory("hf_bad");
    auto read_error = [&](const std::filesystem::path& path) {
        try {
            read_hf_llama(path);
        } catch (const nwc::error& problem) {
            return problem.id();
        }
        FAIL("bad HF model accepted");
        return errc::io;
    };
    CHECK(read_error(directory.path()) == errc::io);  // no config.json
    write_hf_llama(directory.path(), stories().weights);
    // Drop one tensor.
    nwc::SafetensorsWriter writer;
    const nwc::SafetensorsFile file = nwc::SafetensorsFile::open(directory.path() / "model.safetensors");
    for (const auto& info : file.tensors())
        if (info.name != "model.layers.3.mlp.up_proj.weight") writer.add_raw(info.name, info.type, info.shape, file.raw_bytes(info.name));
    writer.write(directory.path() / "model.safetensors");
    CHECK(read_error(directory.path()) == errc::corrupt);
    // Add a misshapen one and a foreign one.
    writer.add_raw("model.layers.3.mlp.up_proj.weight", nwc::dtype::f32, Shape{64, 172}, std::vector<std::uint8_t>(64 * 172 * 4));
    writer.write(directory.path() / "model.safetensors");
    CHECK(read_error(directory.path()) == errc::corrupt);
    nwc::SafetensorsWriter foreign;
    foreign.add_raw("transformer.wte.weight", nwc::dtype::f32, Shape{2}, std::vector<std::uint8_t>(8));
    foreign.write(directory.path() / "model.safetensors");
    CHECK(read_error(directory.path()) == errc::unsupported);
}

}  // namespace nwc_test_llama_model
