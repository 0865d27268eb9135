// nwc::NeuralCodec and nwc::NeuralDecoder: a trained, frozen weight codec, ready to code chunks.
//
// Read me first:
// - A chunk is `chunk_size` (16) consecutive normalized weights of one column (nwc::Chunker), with
//   the importance level (0..3) of its column. Chunks are rows of an n x chunk_size matrix.
// - encode: y = g_a(chunk, level) (n x M latents), symbol = round(y - median_c) (nearest, ties to
//   even), n x M int32 laid out [chunk][channel]. rans::encode codes them with tables(level)
//   (symbol i uses table i % M).
// - Per-level priors (the default, CodecArchitecture::per_level_prior): each importance level has
//   its own medians and tables, so the symbols of chunks of different levels go into different
//   rANS streams (one per level present). With a shared prior all levels use tables(0).
// - decode: y_hat = symbol + median_c, chunk = g_s(y_hat, level). Only integers cross the
//   entropy coder; the medians are floats stored in the codec file, never recomputed.
// - NeuralDecoder is the half a .nwc file embeds (decoder weights, medians, tables); NeuralCodec adds the
//   encoder. Weights live in memory as float, already rounded to the storage dtype of the codec file
//   (f32, f16 or bf16), so a decoder loaded from a file computes exactly what the encoder side used.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/entropy/cdf_table_set.hpp"
#include "nwc/entropy/prior_kernels.hpp"
#include "nwc/nn/residual_mlp.hpp"

namespace nwc {

/// Sizes of a codec: g_a is chunk_size -> width x blocks -> latents, g_s the mirror image.
struct CodecArchitecture {
    int chunk_size = 16;  ///< d: weights per chunk
    int width = 512;      ///< hidden width W of g_a and g_s
    int blocks = 4;       ///< residual blocks B of g_a and g_s
    int latents = 16;     ///< M: latent channels per chunk
    int levels = 4;       ///< importance levels (rows of the level embeddings)
    /// One factorized prior (integer tables + medians) per level (true), or one shared by all
    /// levels as in the paper (false). A shared prior must cover the latents of every level at
    /// once and costs about 1 bit per weight at levels 2 and 3 (docs/bench/codec.md).
    bool per_level_prior = true;

    /// Number of prior groups: levels, or 1 for a shared prior.
    int prior_groups() const noexcept { return per_level_prior ? levels : 1; }
    /// The prior group that codes chunks of importance level `level`.
    int prior_group(int level) const noexcept { return per_level_prior ? level : 0; }

    ResidualMLPShape encoder_shape() const { return {chunk_size, width, blocks, latents, levels}; }
    ResidualMLPShape decoder_shape() const { return {latents, width, blocks, chunk_size, levels}; }
    /// Throws errc::invalid_argument for sizes outside the supported ranges.
    void validate() const {
        encoder_shape().validate();
        require(chunk_size <= 1024 && latents <= 1024, errc::invalid_argument, "codec: chunk size ", chunk_size, " / latents ",
                latents, " exceed 1024");
    }
    friend bool operator==(const CodecArchitecture&, const CodecArchitecture&) = default;
};

/// Rounds every weight of `network` to `storage` (f32: unchanged) and back to float.
inline void round_weights_to(ResidualMLP<float>& network, dtype storage) {
    require(storage == dtype::f32 || storage == dtype::f16 || storage == dtype::bf16, errc::unsupported,
            "codec weights: dtype ", dtype_name(storage), " (F32, F16, BF16 are supported)");
    if (storage == dtype::f32) return;
    for (auto* parameter : network.parameters())
        for (Eigen::Index i = 0; i < parameter->value.size(); ++i) {
            float& value = parameter->value.data()[i];
            value = storage == dtype::f16 ? to_float(to_half(value)) : to_float(to_bfloat16(value));
        }
}

/// The decoding half of a codec: g_s, the medians and the integer tables of every prior group.
class NeuralDecoder {
public:
    /// Chunks decoded per internal block, which bounds the latent buffer.
    static constexpr std::int64_t block_chunks = 65536;

    NeuralDecoder() = default;
    /// medians: prior_groups x latents floats (group-major); tables: one set of `latents` tables per group.
    NeuralDecoder(CodecArchitecture architecture, ResidualMLP<float> network, std::vector<float> medians, std::vector<CdfTableSet> tables,
                 dtype weight_dtype)
        : m_architecture(architecture), m_network(std::move(network)), m_medians(std::move(medians)), m_tables(std::move(tables)),
          m_weight_dtype(weight_dtype) {
        architecture.validate();
        require(m_network.shape() == architecture.decoder_shape(), errc::invalid_argument, "NeuralDecoder: network shape mismatch");
        const std::size_t groups = std::size_t(architecture.prior_groups());
        require(m_medians.size() == groups * std::size_t(architecture.latents) && m_tables.size() == groups, errc::invalid_argument,
                "NeuralDecoder: ", m_medians.size(), " medians and ", m_tables.size(), " table sets for ", groups, " prior groups of ",
                architecture.latents, " latents");
        for (const CdfTableSet& set : m_tables)
            require(set.channel_count() == std::size_t(architecture.latents), errc::invalid_argument, "NeuralDecoder: a table set has ",
                    set.channel_count(), " tables for ", architecture.latents, " latents");
    }

    const CodecArchitecture& architecture() const noexcept { return m_architecture; }
    const ResidualMLP<float>& network() const noexcept { return m_network; }
    /// The medians of the prior that codes level `level` (latents floats).
    std::span<const float> medians(int level) const {
        NWC_ASSERT(level >= 0 && level < m_architecture.levels);
        return std::span<const float>(m_medians).subspan(std::size_t(m_architecture.prior_group(level) * m_architecture.latents),
                                                          std::size_t(m_architecture.latents));
    }
    /// The tables rans::encode / rans::decode take for the symbols of chunks of level `level`.
    const CdfTableSet& tables(int level) const {
        NWC_ASSERT(level >= 0 && level < m_architecture.levels);
        return m_tables[std::size_t(m_architecture.prior_group(level))];
    }
    /// All medians (prior_groups x latents) and table sets (prior_groups), for serialization.
    std::span<const float> all_medians() const noexcept { return m_medians; }
    std::span<const CdfTableSet> all_tables() const noexcept { return m_tables; }
    /// Storage type of the weights in codec files.
    dtype weight_dtype() const noexcept { return m_weight_dtype; }

    /// chunks (n x chunk_size) = g_s(symbols + medians(level), levels); symbols n x latents, [chunk][channel].
    /// Levels must be < architecture().levels (checked: they come from files).
    template <class Backend = backend::default_backend>
    void decode(std::span<const std::int32_t> symbols, std::span<const std::uint8_t> levels, TensorView<float> chunks,
                int threads = 1, Backend backend_tag = {}) const {
        const std::int64_t count = std::int64_t(levels.size()), latents = m_architecture.latents;
        require(std::int64_t(symbols.size()) == count * latents && chunks.rows() == count &&
                    chunks.cols() == m_architecture.chunk_size,
                errc::invalid_argument, "NeuralDecoder::decode: ", symbols.size(), " symbols, ", count, " levels and a ",
                chunks.rows(), " x ", chunks.cols(), " output do not match ", latents, " latents per chunk");
        for (std::uint8_t level : levels)
            require(level < m_architecture.levels, errc::corrupt, "NeuralDecoder::decode: level ", int(level), " but the codec has ",
                    m_architecture.levels);
        RowMajorMatrix<float> latent_block;
        for (std::int64_t begin = 0; begin < count; begin += block_chunks) {
            const std::int64_t rows = std::min(block_chunks, count - begin);
            latent_block.resize(rows, latents);
            for (std::int64_t row = 0; row < rows; ++row) {
                const float* median = m_medians.data() + m_architecture.prior_group(levels[std::size_t(begin + row)]) * latents;
                for (std::int64_t c = 0; c < latents; ++c)
                    latent_block(row, c) = float(symbols[std::size_t((begin + row) * latents + c)]) + median[c];
            }
            m_network.infer(TensorView<const float>(latent_block.data(), {rows, latents}), levels.subspan(std::size_t(begin), std::size_t(rows)),
                            TensorView<float>(chunks.data() + begin * m_architecture.chunk_size, {rows, m_architecture.chunk_size}),
                            threads, backend_tag);
        }
    }

private:
    CodecArchitecture m_architecture{};
    ResidualMLP<float> m_network;
    std::vector<float> m_medians;
    std::vector<CdfTableSet> m_tables;
    dtype m_weight_dtype = dtype::f32;
};

/// A complete codec: g_a plus the decoding half, and the training provenance (a JSON string).
class NeuralCodec {
public:
    NeuralCodec() = default;
    NeuralCodec(ResidualMLP<float> encoder, NeuralDecoder decoder, std::string provenance = "{}")
        : m_encoder(std::move(encoder)), m_decoder(std::move(decoder)), m_provenance(std::move(provenance)) {
        require(m_encoder.shape() == m_decoder.architecture().encoder_shape(), errc::invalid_argument,
                "NeuralCodec: encoder shape does not match the decoder's architecture");
    }

    const CodecArchitecture& architecture() const noexcept { return m_decoder.architecture(); }
    const ResidualMLP<float>& encoder() const noexcept { return m_encoder; }
    const NeuralDecoder& decoder() const noexcept { return m_decoder; }
    /// Tables for the symbols of level-`level` chunks (see NeuralDecoder::tables).
    const CdfTableSet& tables(int level) const { return m_decoder.tables(level); }
    std::span<const float> medians(int level) const { return m_decoder.medians(level); }
    dtype weight_dtype() const noexcept { return m_decoder.weight_dtype(); }
    /// Training provenance: data files, lambda, steps, seed, final metrics (JSON object text).
    const std::string& provenance() const noexcept { return m_provenance; }
    void set_provenance(std::string provenance) { m_provenance = std::move(provenance); }
    /// The trained prior's parameters (FactorizedPrior::parameters() order, each tensor row-major;
    /// prior_groups x latents x prior_parameters_per_channel (58) floats), or empty. Not needed to
    /// code: they let the integer tables be rebuilt (another precision or tail mass) without retraining.
    std::span<const float> prior_parameters() const noexcept { return m_prior_parameters; }
    void set_prior_parameters(std::vector<float> values) {
        const std::size_t expected = std::size_t(architecture().prior_groups() * architecture().latents * detail::prior_parameters_per_channel);
        require(values.empty() || values.size() == expected, errc::invalid_argument, "NeuralCodec: ", values.size(), " prior parameters for ",
                architecture().prior_groups(), " x ", architecture().latents, " channels of ", detail::prior_parameters_per_channel);
        m_prior_parameters = std::move(values);
    }

    /// latents (n x M) = g_a(chunks (n x chunk_size), levels), before rounding.
    template <class Backend = backend::default_backend>
    void analyze(TensorView<const float> chunks, std::span<const std::uint8_t> levels, TensorView<float> latents,
                 int threads = 1, Backend backend_tag = {}) const {
        const auto& arch = architecture();
        require(chunks.cols() == arch.chunk_size && chunks.rows() == std::int64_t(levels.size()) &&
                    latents.rows() == chunks.rows() && latents.cols() == arch.latents,
                errc::invalid_argument, "NeuralCodec::analyze: a ", chunks.rows(), " x ", chunks.cols(), " input with ", levels.size(),
                " levels does not fit chunk size ", arch.chunk_size, " and ", arch.latents, " latents");
        m_encoder.infer(chunks, levels, latents, threads, backend_tag);
    }

    /// symbols (n x M, [chunk][channel]) = round(g_a(chunks, levels) - medians(level)). Throws
    /// errc::invalid_argument if a latent is not finite (a NaN or infinite weight came in).
    template <class Backend = backend::default_backend>
    void encode(TensorView<const float> chunks, std::span<const std::uint8_t> levels, std::span<std::int32_t> symbols,
                int threads = 1, Backend backend_tag = {}) const {
        const auto& arch = architecture();
        require(std::int64_t(symbols.size()) == chunks.rows() * arch.latents, errc::invalid_argument, "NeuralCodec::encode: ",
                symbols.size(), " symbols for ", chunks.rows(), " chunks of ", arch.latents, " latents");
        RowMajorMatrix<float> latents(chunks.rows(), arch.latents);
        analyze(chunks, levels, TensorView<float>(latents.data(), {chunks.rows(), arch.latents}), threads, backend_tag);
        constexpr double limit = double(std::numeric_limits<std::int32_t>::max() / 2);
        for (Eigen::Index row = 0; row < latents.rows(); ++row) {
            const auto medians = this->medians(levels[std::size_t(row)]);
            for (Eigen::Index c = 0; c < latents.cols(); ++c) {
                const double shifted = double(latents(row, c)) - double(medians[std::size_t(c)]);
                require(std::isfinite(shifted), errc::invalid_argument, "NeuralCodec::encode: chunk ", row,
                        " gives a non-finite latent (is a weight NaN or infinite?)");
                symbols[std::size_t(row * latents.cols() + c)] = std::int32_t(std::nearbyint(std::clamp(shifted, -limit, limit)));
            }
        }
    }
    /// The same into a new vector (a template, so that including this header instantiates no encoder).
    template <class Backend = backend::default_backend>
    std::vector<std::int32_t> encode(TensorView<const float> chunks, std::span<const std::uint8_t> levels, int threads = 1) const {
        std::vector<std::int32_t> symbols(std::size_t(chunks.rows() * architecture().latents));
        encode<Backend>(chunks, levels, symbols, threads);
        return symbols;
    }

    /// chunks = g_s(symbols + medians, levels): see NeuralDecoder::decode.
    template <class Backend = backend::default_backend>
    void decode(std::span<const std::int32_t> symbols, std::span<const std::uint8_t> levels, TensorView<float> chunks,
                int threads = 1, Backend backend_tag = {}) const {
        m_decoder.decode(symbols, levels, chunks, threads, backend_tag);
    }

private:
    ResidualMLP<float> m_encoder;
    NeuralDecoder m_decoder;
    std::string m_provenance = "{}";
    std::vector<float> m_prior_parameters;
};

}  // namespace nwc
