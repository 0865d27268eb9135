// nwc::CodecModel: the trainable codec (g_a, g_s, factorized prior) and its freezing into a NeuralCodec.
//
// Read me first:
// - g_a: ResidualMLP(chunk_size -> W x B -> M), g_s: ResidualMLP(M -> W x B -> chunk_size), both
//   with their own level embedding; FactorizedPrior over the M latents, one per importance level
//   (levels x M channels) unless the architecture asks for the paper's shared prior.
// - training_loss() records, for one batch of chunks, the loss of NWC-NOTES "Training the codec":
//     lambda * SSE(x, x_hat) / (sigma^2 * numel) + sum_i c[level_i] * bits_i / numel
//   where numel is the number of weights of the WHOLE batch. A batch split into shards therefore
//   gets exactly the full-batch gradient by summing the shards' gradients (trainer.hpp).
// - freeze() builds the prior's integer tables once and rounds the weights to their storage dtype;
//   what comes out is all a codec file holds.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

// One include for the ops used here: the autograd owner moves ops between its ops_*.hpp files.
#include "nwc/autograd/autograd.hpp"
#include "nwc/codec/codec.hpp"
#include "nwc/entropy/factorized_prior.hpp"
#include "nwc/nn/residual_mlp_tape.hpp"

namespace nwc {

/// What freeze() builds unless told otherwise (and `nwc train`'s defaults): f16 weights, 16-bit
/// integer CDF tables, and each table leaving 1e-3 of its probability to the escape bin. Not the
/// notes' 1e-9: the tables grow with the tail they cover, and a .nwc file embeds a codec that does
/// not ship with nwc. The shipped codecs, which files reference by hash, have theirs rebuilt at
/// 1e-5 (`nwc train --retable`: wider tables, no escapes when alpha moves; docs/codecs.md).
inline constexpr dtype default_codec_dtype = dtype::f16;
inline constexpr int default_table_precision = 16;
inline constexpr double default_table_tail_mass = 1e-3;

/// What the loss weighs (NWC-NOTES: c = [3.4, 1.2, 0.1, 0.05]).
struct CodecLossWeights {
    double lambda = 100.0;                                    ///< distortion weight: larger = more bits
    std::vector<double> level_rate_weights{3.4, 1.2, 0.1, 0.05};  ///< c[level], scales the rate term
    double data_variance = 1.0;                               ///< sigma^2 of the normalized training chunks
    bool straight_through = false;                            ///< round (STE) instead of additive noise
};

/// Loss parts of one batch (sums over its rows, so shards add up).
struct CodecLossParts {
    autograd::Var loss;          ///< the scalar to minimize (1 x 1)
    double squared_error = 0.0;  ///< SSE(x, x_hat) of these rows
    double bits = 0.0;           ///< sum of -log2 p over these rows' latents
    std::array<double, 8> bits_per_level{};  ///< the same split by level (levels < 8)
};

/// The trainable codec. Use CodecModel (= BasicCodecModel<>): a class template only so that a
/// translation unit that includes this header and never trains instantiates none of the autograd
/// ops (docs/bench/headers.md).
template <class = void>
class BasicCodecModel {
public:
    using Parameter = autograd::Parameter<float>;

    BasicCodecModel() = default;
    explicit BasicCodecModel(CodecArchitecture architecture)
        : m_architecture(architecture), m_encoder(architecture.encoder_shape()), m_decoder(architecture.decoder_shape()),
          m_prior(architecture.prior_groups() * architecture.latents) {
        architecture.validate();
    }

    /// torch-default initialization of both networks, CompressAI's of the prior (independent streams).
    void initialize(const Random& random) {
        Random encoder_random = random.split(1), decoder_random = random.split(2), prior_random = random.split(3);
        m_encoder.initialize(encoder_random);
        m_decoder.initialize(decoder_random);
        m_prior.initialize(prior_random);
    }

    const CodecArchitecture& architecture() const noexcept { return m_architecture; }
    ResidualMLP<float>& encoder() noexcept { return m_encoder; }
    ResidualMLP<float>& decoder() noexcept { return m_decoder; }
    FactorizedPrior& prior() noexcept { return m_prior; }
    const ResidualMLP<float>& encoder() const noexcept { return m_encoder; }
    const ResidualMLP<float>& decoder() const noexcept { return m_decoder; }
    const FactorizedPrior& prior() const noexcept { return m_prior; }

    /// Every trainable parameter: encoder, decoder, prior (each in its own fixed order).
    std::vector<Parameter*> parameters() {
        std::vector<Parameter*> all = m_encoder.parameters();
        for (Parameter* p : m_decoder.parameters()) all.push_back(p);
        for (Parameter* p : m_prior.parameters()) all.push_back(p);
        return all;
    }

    /// Records the loss of `chunks` (rows x chunk_size, kept alive by the caller until the tape is
    /// cleared) with one level per row. `batch_weights` is the number of weights in the whole batch
    /// the rows belong to. `noise` draws the additive uniform noise (unused with straight_through).
    CodecLossParts training_loss(autograd::Tape<float>& tape, const RowMajorMatrix<float>& chunks, std::span<const std::uint8_t> levels,
                                 double batch_weights, const CodecLossWeights& weights, Random& noise) {
        using namespace autograd;
        NWC_ASSERT(chunks.cols() == m_architecture.chunk_size && std::int64_t(levels.size()) == chunks.rows());
        const Var x = tape.constant_ref(chunks);
        const Var y = nn::forward(tape, m_encoder, x, levels);
        const Var y_tilde = weights.straight_through ? round_ste(tape, y) : add_uniform_noise(tape, y, noise);
        const Var bits = m_prior.bits(tape, y_tilde, m_architecture.per_level_prior ? levels : std::span<const std::uint8_t>());
        const Var x_hat = nn::forward(tape, m_decoder, y_tilde, levels);

        CodecLossParts parts;
        // Rate: sum_i c[level_i] * sum_c bits_ic / numel, one fused node.
        std::vector<float> row_weights(levels.size());
        const auto& bit_values = tape.value(bits);
        for (std::size_t row = 0; row < levels.size(); ++row) {
            NWC_ASSERT(levels[row] < weights.level_rate_weights.size());
            row_weights[row] = float(weights.level_rate_weights[levels[row]] / batch_weights);
            const double row_bits = double(bit_values.row(Eigen::Index(row)).template cast<double>().sum());
            parts.bits += row_bits;
            parts.bits_per_level[std::min<std::size_t>(levels[row], 7)] += row_bits;
        }
        RowMajorMatrix<float> rate_value(1, 1);
        rate_value(0, 0) = 0.0f;
        for (std::size_t row = 0; row < levels.size(); ++row)
            rate_value(0, 0) += row_weights[row] * bit_values.row(Eigen::Index(row)).sum();
        const Var rate = custom(tape, {bits}, std::move(rate_value), [row_weights](Tape<float>& t, Node<float>& node) {
            auto& grad = t.grad(node.inputs[0]);
            const float upstream = node.grad(0, 0);
            for (Eigen::Index row = 0; row < grad.rows(); ++row) grad.row(row).array() += upstream * row_weights[std::size_t(row)];
        }, "weighted_rate");

        // Distortion: lambda / sigma^2 * SSE / numel = mse_loss * (lambda rows d / (sigma^2 numel)).
        const Var mse = mse_loss(tape, x_hat, x);
        parts.squared_error = double(tape.item(mse)) * double(chunks.size());
        const double distortion_scale = weights.lambda * double(chunks.size()) / (weights.data_variance * batch_weights);
        parts.loss = add(tape, scale(tape, mse, float(distortion_scale)), rate);
        return parts;
    }

    /// The frozen codec: tables from the prior (`precision` bits), weights rounded to `storage`.
    /// `tail_mass`: probability each channel's table leaves to its escape bin (FactorizedPrior::build_tables).
    NeuralCodec freeze(dtype storage = default_codec_dtype, int precision = default_table_precision, std::string provenance = "{}",
                       double tail_mass = default_table_tail_mass) const {
        ResidualMLP<float> encoder = m_encoder, decoder = m_decoder;
        round_weights_to(encoder, storage);
        round_weights_to(decoder, storage);
        std::vector<float> medians;
        std::vector<CdfTableSet> tables;
        for (int group = 0; group < m_architecture.prior_groups(); ++group) {
            PriorTables frozen = m_prior.build_tables(precision, group * m_architecture.latents, m_architecture.latents, tail_mass);
            medians.insert(medians.end(), frozen.medians.begin(), frozen.medians.end());
            tables.push_back(std::move(frozen.tables));
        }
        NeuralCodec codec(std::move(encoder), NeuralDecoder(m_architecture, std::move(decoder), std::move(medians), std::move(tables), storage),
                    std::move(provenance));
        std::vector<float> prior_values;
        for (const auto* parameter : m_prior.parameters())
            prior_values.insert(prior_values.end(), parameter->value.data(), parameter->value.data() + parameter->value.size());
        codec.set_prior_parameters(std::move(prior_values));
        return codec;
    }

    /// The model of a codec that kept its prior parameters (NeuralCodec::prior_parameters()), e.g. to
    /// rebuild its tables with another precision or tail mass, or to train it further. Weights are
    /// the codec's (already rounded to its storage dtype). Throws errc::invalid_argument if the
    /// codec has no prior parameters.
    static BasicCodecModel from_codec(const NeuralCodec& codec) {
        require(!codec.prior_parameters().empty(), errc::invalid_argument, "CodecModel::from_codec: the codec file has no prior parameters");
        BasicCodecModel model(codec.architecture());
        model.m_encoder = codec.encoder();
        model.m_decoder = codec.decoder().network();
        const auto values = codec.prior_parameters();
        std::size_t at = 0;
        for (auto* parameter : model.m_prior.parameters()) {
            NWC_ASSERT(at + std::size_t(parameter->value.size()) <= values.size());
            std::copy_n(values.data() + at, parameter->value.size(), parameter->value.data());
            at += std::size_t(parameter->value.size());
        }
        for (auto* parameter : model.parameters()) parameter->zero_grad();
        return model;
    }

private:
    CodecArchitecture m_architecture{};
    ResidualMLP<float> m_encoder;
    ResidualMLP<float> m_decoder;
    FactorizedPrior m_prior;
};

using CodecModel = BasicCodecModel<>;

}  // namespace nwc
