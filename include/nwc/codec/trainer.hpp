// nwc::CodecTrainer: trains a CodecModel on a TrainingCorpus.
//
// Read me first:
// - One step: draw `batch` chunk indices and levels (uniform over 0..levels-1) from the step's own
//   random stream (seed, step), split the batch into shards of `shard_rows`, run forward + backward
//   of each shard on its own replica of the model (data parallel on `threads` threads), add the
//   shards' gradients in shard order, clip the global norm, take one Adam step.
// - The shard size is fixed, never derived from the thread count, and every random draw is made
//   from a stream named by (seed, step, shard): the trained weights are the same bits for ANY
//   thread count, not only for the same one.
// - Additive uniform noise on the latents (default) or straight-through rounding. The prior's
//   quantiles need no auxiliary loss: freezing finds them by bisection (FactorizedPrior).
// - Learning rate: linear warm-up, then cosine decay from `learning_rate` to
//   `learning_rate * final_learning_rate_fraction` (1 = constant, as the paper's Adam at 1e-4).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "nwc/autograd/optimizer.hpp"
#include "nwc/codec/codec_model.hpp"
#include "nwc/codec/training_corpus.hpp"
#include "nwc/core/random.hpp"
#include "nwc/core/thread_pool.hpp"

namespace nwc {

/// Everything that determines a training run (with the corpus).
struct TrainingOptions {
    CodecArchitecture architecture{};
    CodecLossWeights loss{};
    std::int64_t steps = 1000;
    int batch = 2048;                          ///< chunks per step
    int shard_rows = 256;                      ///< chunks per data-parallel shard (fixed: see header)
    double learning_rate = 1e-4;               ///< Adam's (peak) learning rate
    double final_learning_rate_fraction = 1.0;  ///< cosine decay target as a fraction of the peak
    std::int64_t warmup_steps = 0;
    double gradient_clip = 1.0;                ///< max global gradient norm (0 = no clipping)
    std::uint64_t seed = 1;
    int threads = 1;

    /// Throws errc::invalid_argument for out-of-range values.
    void validate() const {
        architecture.validate();
        require(steps >= 0 && batch >= 1 && shard_rows >= 1, errc::invalid_argument, "training: steps ", steps, ", batch ", batch,
                ", shard rows ", shard_rows, " must be positive");
        require(learning_rate > 0 && std::isfinite(learning_rate) && final_learning_rate_fraction >= 0, errc::invalid_argument,
                "training: learning rate ", learning_rate, " must be positive");
        require(loss.lambda > 0 && std::isfinite(loss.lambda), errc::invalid_argument, "training: lambda ", loss.lambda, " must be positive");
        require(loss.level_rate_weights.size() == std::size_t(architecture.levels), errc::invalid_argument, "training: ",
                loss.level_rate_weights.size(), " level rate weights for ", architecture.levels, " levels");
    }
};

/// Metrics of one step (estimated from the noisy/STE latents, i.e. the training objective's view).
struct StepMetrics {
    std::int64_t step = 0;            ///< 1-based index of the step just taken
    double loss = 0.0;
    double mse = 0.0;                 ///< of the normalized chunks
    double bits_per_weight = 0.0;     ///< -log2 p of the latents per weight, all levels
    std::array<double, 8> bits_per_weight_by_level{};
    double gradient_norm = 0.0;       ///< before clipping
    double learning_rate = 0.0;
};

/// Use CodecTrainer (= BasicCodecTrainer<>): a template for the reason CodecModel is one.
template <class = void>
class BasicCodecTrainer {
public:
    BasicCodecTrainer(TrainingOptions options, const TrainingCorpus& corpus)
        : m_options(std::move(options)), m_corpus(&corpus), m_random(m_options.seed) {
        m_options.validate();
        require(corpus.chunk_size() == m_options.architecture.chunk_size, errc::invalid_argument, "training: corpus chunk size ",
                corpus.chunk_size(), " but the architecture's is ", m_options.architecture.chunk_size);
        m_options.loss.data_variance = corpus.variance();
        m_model = CodecModel(m_options.architecture);
        m_model.initialize(m_random.split(0));
        m_parameters = m_model.parameters();
        m_adam = std::make_unique<autograd::Adam<float>>(m_parameters, autograd::AdamOptions{.learning_rate = m_options.learning_rate});
        const int shards = int((m_options.batch + m_options.shard_rows - 1) / m_options.shard_rows);
        m_replicas.resize(std::size_t(shards));
        for (auto& replica : m_replicas) {
            replica = std::make_unique<Replica>();
            replica->model = m_model;
            replica->parameters = replica->model.parameters();
        }
    }

    // The optimizer and the replicas point into this object.
    BasicCodecTrainer(const BasicCodecTrainer&) = delete;
    BasicCodecTrainer& operator=(const BasicCodecTrainer&) = delete;

    /// The options in use (loss.data_variance is the corpus's).
    const TrainingOptions& options() const noexcept { return m_options; }
    CodecModel& model() noexcept { return m_model; }
    const CodecModel& model() const noexcept { return m_model; }

    /// The learning rate of 0-based step `step`.
    double learning_rate_at(std::int64_t step) const {
        const double peak = m_options.learning_rate;
        if (step < m_options.warmup_steps) return peak * double(step + 1) / double(m_options.warmup_steps);
        const double span = double(std::max<std::int64_t>(1, m_options.steps - m_options.warmup_steps));
        const double progress = std::min(1.0, double(step - m_options.warmup_steps) / span);
        const double floor = peak * m_options.final_learning_rate_fraction;
        return floor + 0.5 * (peak - floor) * (1.0 + std::cos(std::numbers::pi * progress));
    }

    /// One optimizer step.
    StepMetrics step() {
        const int levels = m_options.architecture.levels, d = m_options.architecture.chunk_size;
        Random step_random = m_random.split(1000 + std::uint64_t(m_steps_done));
        m_indices.resize(std::size_t(m_options.batch));
        m_levels.resize(std::size_t(m_options.batch));
        for (int i = 0; i < m_options.batch; ++i) {
            m_indices[std::size_t(i)] = std::int64_t(step_random.below(std::uint64_t(m_corpus->chunk_count())));
            m_levels[std::size_t(i)] = std::uint8_t(step_random.below(std::uint64_t(levels)));
        }
        const double batch_weights = double(m_options.batch) * d;
        parallel_for(std::int64_t(m_replicas.size()), m_options.threads, [&](std::int64_t shard) {
            Replica& replica = *m_replicas[std::size_t(shard)];
            for (std::size_t p = 0; p < m_parameters.size(); ++p) {
                replica.parameters[p]->value = m_parameters[p]->value;
                replica.parameters[p]->zero_grad();
            }
            const int begin = int(shard) * m_options.shard_rows;
            const int rows = std::min(m_options.shard_rows, m_options.batch - begin);
            replica.chunks.resize(rows, d);
            for (int row = 0; row < rows; ++row)
                std::copy_n(m_corpus->chunk(m_indices[std::size_t(begin + row)]), d, replica.chunks.row(row).data());
            Random noise = step_random.split(1'000'000 + std::uint64_t(shard));
            replica.tape.clear();
            replica.parts = replica.model.training_loss(replica.tape, replica.chunks,
                                                        std::span<const std::uint8_t>(m_levels).subspan(std::size_t(begin), std::size_t(rows)),
                                                        batch_weights, m_options.loss, noise);
            replica.loss = double(replica.tape.item(replica.parts.loss));
            replica.tape.backward(replica.parts.loss);
        });
        StepMetrics metrics;
        std::array<double, 8> level_bits{};
        std::array<std::int64_t, 8> level_rows{};
        for (std::uint8_t level : m_levels) ++level_rows[std::min<std::size_t>(level, 7)];
        for (std::size_t p = 0; p < m_parameters.size(); ++p) {
            m_parameters[p]->grad = m_replicas[0]->parameters[p]->grad;
            for (std::size_t shard = 1; shard < m_replicas.size(); ++shard) m_parameters[p]->grad += m_replicas[shard]->parameters[p]->grad;
        }
        for (const auto& replica : m_replicas) {
            metrics.loss += replica->loss;
            metrics.mse += replica->parts.squared_error;
            metrics.bits_per_weight += replica->parts.bits;
            for (std::size_t l = 0; l < level_bits.size(); ++l) level_bits[l] += replica->parts.bits_per_level[l];
        }
        metrics.mse /= batch_weights;
        metrics.bits_per_weight /= batch_weights;
        for (std::size_t l = 0; l < level_bits.size(); ++l)
            metrics.bits_per_weight_by_level[l] = level_rows[l] ? level_bits[l] / (double(level_rows[l]) * d) : 0.0;
        metrics.gradient_norm = m_options.gradient_clip > 0 ? autograd::clip_gradient_norm(m_parameters, m_options.gradient_clip)
                                                            : autograd::gradient_norm<float>(m_parameters);
        require(std::isfinite(metrics.loss) && std::isfinite(metrics.gradient_norm), errc::numerical, "training: step ", m_steps_done + 1,
                " produced a non-finite loss or gradient (loss ", metrics.loss, ", gradient norm ", metrics.gradient_norm,
                "); try a smaller learning rate");
        metrics.learning_rate = learning_rate_at(m_steps_done);
        m_adam->set_learning_rate(metrics.learning_rate);
        m_adam->step();
        metrics.step = ++m_steps_done;
        return metrics;
    }

    /// The frozen codec of the current weights.
    NeuralCodec freeze(dtype storage = default_codec_dtype, int precision = default_table_precision, std::string provenance = "{}",
                       double tail_mass = default_table_tail_mass) const {
        return m_model.freeze(storage, precision, std::move(provenance), tail_mass);
    }

private:
    struct Replica {
        CodecModel model;
        std::vector<autograd::Parameter<float>*> parameters;
        autograd::Tape<float> tape;
        RowMajorMatrix<float> chunks;
        CodecLossParts parts;
        double loss = 0.0;
    };

    TrainingOptions m_options;
    const TrainingCorpus* m_corpus;
    Random m_random;
    CodecModel m_model;
    std::vector<autograd::Parameter<float>*> m_parameters;
    std::unique_ptr<autograd::Adam<float>> m_adam;
    std::vector<std::unique_ptr<Replica>> m_replicas;
    std::vector<std::int64_t> m_indices;
    std::vector<std::uint8_t> m_levels;
    std::int64_t m_steps_done = 0;
};

using CodecTrainer = BasicCodecTrainer<>;

}  // namespace nwc
