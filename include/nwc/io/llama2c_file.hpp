// llama2.c model files (the legacy "version 0" format of karpathy/llama2.c), read and written.
//
// Layout, all little-endian:
//   7 x int32  dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//              (vocab_size < 0 means the classifier is stored separately at the end)
//   float32    token_embedding [vocab, dim]
//              rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim],
//              wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden],
//              w3 [L, hidden, dim], rms_final [dim],
//              freq_cis_real [seq_len, head_size/2], freq_cis_imag [seq_len, head_size/2],
//              wcls [vocab, dim] only when vocab_size < 0.
// This is the order of llama2.c's memory_map_weights(). Nothing else follows: the file size must be
// exactly what the header implies, which also bounds every allocation by the file's own size.
//
// The two RoPE tables are unused by llama2.c's forward pass (run.c recomputes the rotation); they
// are kept in Llama2cModel only so that read -> write reproduces a file byte for byte.
//
// The functions keep the nwc::llm namespace of the LlamaWeights they read and write; the header
// lives in io/ with the other file formats (docs/ARCHITECTURE.md, dependency order). To open a
// model whatever its format, use load_model_file or read_llama_weights (model_file.hpp).
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nwc/core/byte_io.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/llm/llama_weights.hpp"

namespace nwc::llm {

/// A llama2.c model: the weights and the RoPE tables the file carries.
struct Llama2cModel {
    LlamaWeights weights;
    Tensor<float> rope_real;  ///< freq_cis_real [seq_len, head_size/2] (cos), kept for byte-exact writes
    Tensor<float> rope_imag;  ///< freq_cis_imag [seq_len, head_size/2] (sin)
};

/// Fields of the int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) and its bytes.
inline constexpr std::size_t llama2c_header_fields = 7;
inline constexpr std::size_t llama2c_header_bytes = llama2c_header_fields * sizeof(std::int32_t);
/// What run.c hard-codes, so what every llama2.c file implies: RoPE base and RMSNorm epsilon.
inline constexpr float llama2c_rope_theta = 10000.0f;
inline constexpr float llama2c_norm_eps = 1e-5f;

/// The RoPE tables as llama2.c's export computes them (precompute_freqs_cis in float32):
/// angle(pos, i) = pos / theta^(2i / head_size). Used when writing weights that came without tables.
inline std::pair<Tensor<float>, Tensor<float>> llama2c_rope_tables(const LlamaConfig& config) {
    const std::int64_t half_head = config.head_size() / 2;
    Tensor<float> real(Shape{config.seq_len, half_head}), imag(Shape{config.seq_len, half_head});
    for (std::int64_t pair = 0; pair < half_head; ++pair) {
        const float frequency = 1.0f / std::pow(config.rope_theta, float(2 * pair) / float(config.head_size()));
        for (std::int64_t position = 0; position < config.seq_len; ++position) {
            const float angle = float(position) * frequency;
            real(position, pair) = std::cos(angle);
            imag(position, pair) = std::sin(angle);
        }
    }
    return {std::move(real), std::move(imag)};
}

namespace detail {

/// Calls visit(tensor) for every section of a llama2.c file, in file order.
template <class Weights, class Table, class Visitor>
void for_each_llama2c_section(Weights& weights, Table& rope_real, Table& rope_imag, Visitor&& visit) {
    visit(weights.token_embedding);
    for (auto member : {&LlamaLayerWeights::attention_norm, &LlamaLayerWeights::wq, &LlamaLayerWeights::wk, &LlamaLayerWeights::wv,
                        &LlamaLayerWeights::wo, &LlamaLayerWeights::ffn_norm, &LlamaLayerWeights::w1, &LlamaLayerWeights::w2,
                        &LlamaLayerWeights::w3})
        for (auto& layer : weights.layers) visit(layer.*member);
    visit(weights.final_norm);
    visit(rope_real);
    visit(rope_imag);
    if (!weights.config.shared_classifier) visit(weights.classifier);
}

/// Parses and fully validates the header; `file_size` must be exactly what it implies.
inline LlamaConfig parse_llama2c_header(std::span<const std::uint8_t> bytes, std::string_view context) {
    ByteReader reader(bytes, context);
    std::int32_t fields[llama2c_header_fields];
    for (auto& field : fields) field = reader.get_i32();
    LlamaConfig config;
    config.dim = fields[0];
    config.hidden_dim = fields[1];
    config.n_layers = fields[2];
    config.n_heads = fields[3];
    config.n_kv_heads = fields[4];
    const std::int64_t signed_vocab = fields[5];
    require(signed_vocab != 0, errc::corrupt, context, ": vocab_size is 0");
    require(std::abs(signed_vocab) <= LlamaLimits::max_vocab_size, errc::limit, context, ": vocab_size ", signed_vocab, " exceeds ",
            LlamaLimits::max_vocab_size);
    config.vocab_size = int(std::abs(signed_vocab));
    config.shared_classifier = signed_vocab > 0;
    config.seq_len = fields[6];
    config.validate(context);

    // Each factor is bounded by LlamaLimits, so these products cannot overflow int64.
    const std::int64_t dim = config.dim, hidden = config.hidden_dim, layers = config.n_layers, kv_dim = config.kv_dim();
    std::int64_t floats = std::int64_t(config.vocab_size) * dim;
    floats += layers * (2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim);
    floats += dim + std::int64_t(config.seq_len) * config.head_size();
    if (!config.shared_classifier) floats += std::int64_t(config.vocab_size) * dim;
    const std::uint64_t expected = llama2c_header_bytes + std::uint64_t(floats) * sizeof(float);
    if (bytes.size() < expected)
        fail(errc::truncated, context, ": the header (dim ", dim, ", hidden_dim ", hidden, ", n_layers ", layers, ", vocab_size ", signed_vocab,
             ", seq_len ", config.seq_len, ") implies ", expected, " bytes but the file has ", bytes.size());
    if (bytes.size() > expected)
        fail(errc::corrupt, context, ": the header implies ", expected, " bytes but the file has ", bytes.size(), " (", bytes.size() - expected,
             " unexpected trailing bytes)");
    return config;
}

}  // namespace detail

/// Parses a llama2.c model held in memory. Throws nwc::error (truncated, corrupt, limit) naming
/// `context` for a bad header or a size that disagrees with it.
inline Llama2cModel parse_llama2c(std::span<const std::uint8_t> bytes, std::string_view context = "llama2.c model") {
    Llama2cModel model;
    LlamaConfig config = detail::parse_llama2c_header(bytes, context);
    model.weights = LlamaWeights::zeros(config);
    const std::int64_t half_head = config.head_size() / 2;
    model.rope_real = Tensor<float>(Shape{config.seq_len, half_head});
    model.rope_imag = Tensor<float>(Shape{config.seq_len, half_head});
    ByteReader reader(bytes, context);
    reader.skip(llama2c_header_bytes);
    detail::for_each_llama2c_section(model.weights, model.rope_real, model.rope_imag, [&](Tensor<float>& tensor) {
        const auto section = reader.get_bytes(std::size_t(tensor.numel()) * sizeof(float));
        std::memcpy(tensor.data(), section.data(), section.size());
    });
    reader.expect_end();
    return model;
}

/// Reads a llama2.c model file (see parse_llama2c).
inline Llama2cModel read_llama2c(const std::filesystem::path& path) {
    MappedFile file(path);
    return parse_llama2c(file.bytes(), nwc::detail::concat("llama2.c model '", path.string(), "'"));
}

/// Streams the file's bytes to `sink(std::span<const std::uint8_t>)`, section by section.
template <class Sink>
void emit_llama2c(const LlamaWeights& weights, const Tensor<float>& rope_real, const Tensor<float>& rope_imag, Sink&& sink) {
    const LlamaConfig& config = weights.config;
    weights.validate_shapes("llama2.c writer");
    const Shape rope_shape{config.seq_len, config.head_size() / 2};
    require(rope_real.shape() == rope_shape && rope_imag.shape() == rope_shape, errc::invalid_argument,
            "llama2.c writer: RoPE tables must have ", LlamaWeights::describe(rope_shape));
    ByteWriter header;
    for (int field : {config.dim, config.hidden_dim, config.n_layers, config.n_heads, config.n_kv_heads,
                      config.shared_classifier ? config.vocab_size : -config.vocab_size, config.seq_len})
        header.put_i32(field);
    sink(std::span<const std::uint8_t>(header.bytes()));
    detail::for_each_llama2c_section(weights, rope_real, rope_imag, [&](const Tensor<float>& tensor) {
        sink(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(tensor.data()), std::size_t(tensor.numel()) * sizeof(float)));
    });
}

/// The whole file in memory.
inline std::vector<std::uint8_t> serialize_llama2c(const Llama2cModel& model) {
    std::vector<std::uint8_t> bytes;
    emit_llama2c(model.weights, model.rope_real, model.rope_imag, [&](std::span<const std::uint8_t> part) { bytes.insert(bytes.end(), part.begin(), part.end()); });
    return bytes;
}

/// Writes a llama2.c model file atomically (temporary file + rename; the target is untouched on
/// failure). `max_bytes` simulates a full disk in tests.
inline void write_llama2c(const std::filesystem::path& path, const Llama2cModel& model, std::uint64_t max_bytes = UINT64_MAX) {
    AtomicFileWriter writer(path, max_bytes);
    emit_llama2c(model.weights, model.rope_real, model.rope_imag, [&](std::span<const std::uint8_t> part) { writer.write(part); });
    writer.commit();
}

/// Writes weights that came without RoPE tables (from a Hugging Face checkpoint, say); the tables
/// are computed as llama2.c's export computes them. llama2.c itself supports only rope_theta 10000
/// and norm_eps 1e-5, so other values are refused (errc::unsupported).
inline void write_llama2c(const std::filesystem::path& path, const LlamaWeights& weights, std::uint64_t max_bytes = UINT64_MAX) {
    require(weights.config.rope_theta == llama2c_rope_theta && weights.config.norm_eps == llama2c_norm_eps, errc::unsupported,
            "llama2.c files imply rope_theta ", llama2c_rope_theta, " and norm_eps ", llama2c_norm_eps, "; this model has ",
            weights.config.rope_theta, " and ", weights.config.norm_eps);
    const auto [real, imag] = llama2c_rope_tables(weights.config);
    AtomicFileWriter writer(path, max_bytes);
    emit_llama2c(weights, real, imag, [&](std::span<const std::uint8_t> part) { writer.write(part); });
    writer.commit();
}

}  // namespace nwc::llm
