// LDLQCompensator: LDLQ beats plain quantization on real weights, equals GPTQ via the Cholesky
// factor of H^-1, retries the damping of a bad Hessian, never emits NaNs, and gives bit-identical
// results for any thread count.
//
// Weights: real trained matrices of Magenta MT3 (mt3.safetensors, F16) read with nwc's safetensors
// reader. Hessians: the test has no model to run, so H = X^T X / N comes from SYNTHETIC correlated
// activations: X = Z A diag(s), Z standard normal (N = 4n samples), A a dense random mixing matrix
// (correlated features, ill-conditioned H as in real layers) and s heavy-tailed (log-normal, sigma 1)
// per-feature scales (a few loud features, as LLM activations have).
// nwc-ctest-labels: data slow
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <string>

#include <Eigen/LU>

#include "nwc/core/random.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/quant/chunker.hpp"
#include "nwc/quant/ldlq_compensator.hpp"
#include "nwc/quant/scalar_quantizers.hpp"
#include "requirements.hpp"

namespace nwc_test_ldlq_compensator {

using namespace nwc;

namespace {
Eigen::MatrixXf synthetic_hessian(std::int64_t n, std::uint64_t seed) {
    Random random(seed);
    const std::int64_t samples = 4 * n;
    Eigen::MatrixXf z(samples, n), mixing(n, n);
    for (Eigen::Index i = 0; i < z.size(); ++i) z.data()[i] = random.normal();
    for (Eigen::Index i = 0; i < mixing.size(); ++i) mixing.data()[i] = random.normal() / std::sqrt(float(n));
    Eigen::VectorXf scales(n);
    for (Eigen::Index j = 0; j < n; ++j) scales(j) = std::exp(random.normal());
    const Eigen::MatrixXf activations = (z * mixing) * scales.asDiagonal();
    return activations.transpose() * activations / float(samples);
}

Tensor<float> gaussian_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
    Random random(seed);
    Tensor<float> matrix(Shape{rows, cols});
    for (auto& value : matrix.values()) value = 0.02f * random.normal();
    return matrix;
}

Tensor<float> mt3_matrix(const std::string& name) {
    static const SafetensorsFile file = SafetensorsFile::open(nwc::testing::data_path("mt3.safetensors"));
    return file.read_float32(name);
}

double relative_proxy(const Tensor<float>& weights, const Tensor<float>& reconstructed, const Eigen::MatrixXf& hessian) {
    const Eigen::MatrixXd w = weights.matrix().cast<double>(), what = reconstructed.matrix().cast<double>();
    const Eigen::MatrixXd h = hessian.cast<double>(), error = w - what;
    // tr(E H E^T) = sum((E H) .* E): m n^2 flops instead of m^2 n more for the full product.
    return (error * h).cwiseProduct(error).sum() / (w * h).cwiseProduct(w).sum();
}

// GPTQ (Frantar et al. 2022) in its reference form, in double: upper Cholesky factor G of the
// inverse of the damped, normalized Hessian (H^-1 = G^T G); columns in order; after each column
// w_k -= (x_j - q_j) / G_jj * G_jk for every later column k. Group parameters are fixed when a
// group's first column is reached, as LDLQCompensator does.
template <class Quantizer>
Tensor<float> gptq_reference(const Tensor<float>& weights, const Eigen::MatrixXf& hessian, double damping, Quantizer& quantizer) {
    const Eigen::Index m = weights.rows(), n = weights.cols();
    Eigen::MatrixXd h = hessian.cast<double>();
    h /= h.diagonal().mean();
    h.diagonal().array() += damping;
    const Eigen::MatrixXd inverse = h.llt().solve(Eigen::MatrixXd::Identity(n, n));
    const Eigen::MatrixXd g = inverse.llt().matrixU();
    Eigen::MatrixXd work = weights.matrix().cast<double>();
    quantizer.reset(m, n);
    Tensor<float> result(weights.shape());
    Eigen::VectorXf column(m), reconstructed(m);
    for (Eigen::Index j = 0; j < n; ++j) {
        if (j % quantizer.column_group() == 0) {
            const Eigen::MatrixXf group = work.middleCols(j, std::min<Eigen::Index>(quantizer.column_group(), n - j)).template cast<float>();
            quantizer.begin_group(BlockPosition{0, j, {}}, group);
        }
        column = work.col(j).cast<float>();
        quantizer.quantize_column(BlockPosition{0, j, {}}, std::span<const float>(column.data(), std::size_t(m)),
                                  std::span<float>(reconstructed.data(), std::size_t(m)));
        for (Eigen::Index r = 0; r < m; ++r) result(r, j) = reconstructed(r);
        const Eigen::VectorXd scaled_error = (work.col(j) - reconstructed.cast<double>()) / g(j, j);
        work.rightCols(n - j - 1) -= scaled_error * g.row(j).tail(n - j - 1);
    }
    return result;
}

/// Wraps a ColumnQuantizer and records the compensated input of every value (row-major m x n).
template <class Inner>
struct Recorder {
    explicit Recorder(Inner quantizer) : inner(std::move(quantizer)) {}
    int column_group() const { return inner.column_group(); }
    int row_group() const { return inner.row_group(); }
    void reset(std::int64_t rows, std::int64_t cols) {
        inner.reset(rows, cols);
        inputs.setZero(rows, cols);
    }
    void begin_group(const BlockPosition& position, ConstColumnBlock group) { inner.begin_group(position, group); }
    void quantize_column(const BlockPosition& position, std::span<const float> column, std::span<float> reconstructed) {
        for (std::size_t i = 0; i < column.size(); ++i) inputs(position.first_row + std::int64_t(i), position.first_column) = column[i];
        inner.quantize_column(position, column, reconstructed);
    }
    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        detail::quantize_block_by_columns(*this, position, block, reconstructed);
    }
    Inner inner;
    Eigen::MatrixXf inputs;
};

/// Replays given reconstructions (ignoring its input, which it records): forces a second sweep to
/// take exactly the decisions of a first one.
struct Replayer {
    explicit Replayer(const Tensor<float>& decisions) : decided(decisions.matrix()) {}
    int column_group() const { return 32; }
    int row_group() const { return 1; }
    void reset(std::int64_t rows, std::int64_t cols) { inputs.setZero(rows, cols); }
    void begin_group(const BlockPosition&, ConstColumnBlock) {}
    void quantize_column(const BlockPosition& position, std::span<const float> column, std::span<float> reconstructed) {
        for (std::size_t i = 0; i < column.size(); ++i) {
            inputs(position.first_row + std::int64_t(i), position.first_column) = column[i];
            reconstructed[i] = decided(position.first_row + std::int64_t(i), position.first_column);
        }
    }
    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        detail::quantize_block_by_columns(*this, position, block, reconstructed);
    }
    Eigen::MatrixXf decided, inputs;
};

/// A block-only quantizer shaped like the neural codec: chunks of 16 rows of one column, coded
/// together; it checks the positions it is called with (single-threaded use: Catch's REQUIRE is
/// not thread-safe). Rounds to multiples of 1/8.
struct ChunkRecorder {
    int column_group() const { return 1; }
    int row_group() const { return 16; }
    void reset(std::int64_t, std::int64_t) { calls = 0; }
    void quantize_block(const BlockPosition& position, ConstColumnBlock block, ColumnBlock reconstructed) {
        REQUIRE(position.first_row % 16 == 0);
        REQUIRE(position.first_column % 64 == 0);
        REQUIRE(position.levels.size() == std::size_t(block.cols()));
        reconstructed = (block.array() * 8.0f).round() / 8.0f;
        ++calls;
    }
    int calls = 0;
};
static_assert(BlockQuantizer<ChunkRecorder> && !ColumnQuantizer<ChunkRecorder>);
}  // namespace

TEST_CASE("ldlq: LDLQ + RTN (GPTQ) and LDLQ + ECSQ beat plain quantization on real MT3 matrices", "[ldlq][data]") {
    for (const std::string name : {"encoder.layers_0.attention.query.weight", "decoder.layers_3.mlp.wi_0.weight", "encoder.layers_5.mlp.wo.weight"}) {
        const Tensor<float> weights = mt3_matrix(name);
        const Eigen::MatrixXf hessian = synthetic_hessian(weights.cols(), 1234);
        INFO(name << " " << weights.rows() << " x " << weights.cols());

        RoundToNearest rtn = RoundToNearest::q4_0();
        const LDLQCompensator<RoundToNearest> gptq;
        const LDLQResult plain = gptq.compress(weights.view(), LDLFeedback::none(), hessian, rtn);  // plain RTN, proxy under H
        const LDLQResult compensated = gptq.compress(weights.view(), hessian, rtn);
        CHECK(plain.report.status == LDLQStatus::ok);
        CHECK_FALSE(plain.report.used_feedback);
        REQUIRE(compensated.report.status == LDLQStatus::ok);
        REQUIRE(compensated.report.used_feedback);
        REQUIRE(rtn.dequantize().values() == compensated.reconstructed.values());  // the codes carry it all
        CHECK(compensated.report.proxy_loss == Approx(relative_proxy(weights, compensated.reconstructed, hessian)).epsilon(1e-3));
        CHECK(plain.report.proxy_loss == Approx(relative_proxy(weights, plain.reconstructed, hessian)).epsilon(1e-3));
        WARN(name << ": proxy loss rtn " << plain.report.proxy_loss << ", gptq " << compensated.report.proxy_loss);
        CHECK(compensated.report.proxy_loss < 0.8 * plain.report.proxy_loss);

        const LDLQCompensator<RoundToNearest> blockwise(LDLQOptions{.block_size = 32, .feedback = FeedbackMode::per_block});
        const LDLQResult block_result = blockwise.compress(weights.view(), hessian, rtn);
        CHECK(block_result.report.proxy_loss < plain.report.proxy_loss);

        // ECSQ on the normalized weights, at the step of 3 bits/weight for plain rounding.
        const Chunker chunker;
        const ChunkedWeights chunked = chunker.split(weights.view());
        Tensor<float> normalized(weights.shape());
        chunker.normalize(weights.view(), chunked.scales, normalized.view());
        const float step = EntropyCodedScalar::step_for_target_bits(normalized.values(), 3.0);
        EntropyCodedScalar ecsq(EntropyCodedScalarOptions{step, NormalizationAxis::per_column, chunked.scales});
        const LDLQCompensator<EntropyCodedScalar> ldlq;
        const LDLQResult ecsq_plain = ldlq.compress(weights.view(), LDLFeedback::none(), hessian, ecsq);
        const double plain_bits = ecsq.entropy_bits_per_weight();
        const LDLQResult ecsq_ldlq = ldlq.compress(weights.view(), hessian, ecsq);
        const double ldlq_bits = ecsq.entropy_bits_per_weight();
        WARN(name << ": ecsq proxy " << ecsq_plain.report.proxy_loss << " at " << plain_bits << " bits, ecsq+ldlq " << ecsq_ldlq.report.proxy_loss
                  << " at " << ldlq_bits << " bits");
        CHECK(plain_bits == Approx(3.0).margin(0.01));
        CHECK(ecsq_ldlq.report.proxy_loss < 0.8 * ecsq_plain.report.proxy_loss);
        CHECK(ldlq_bits < plain_bits + 0.1);
        // Fair at equal rate too: LDLQ with a step coarse enough to spend no more bits still wins.
        float coarser_step = step;
        EntropyCodedScalar coarser(EntropyCodedScalarOptions{step, NormalizationAxis::per_column, chunked.scales});
        LDLQResult ecsq_ldlq_equal_rate;
        for (double bits = ldlq_bits; bits > plain_bits;) {
            coarser_step *= std::exp2(float(bits - plain_bits) + 0.002f);
            coarser = EntropyCodedScalar(EntropyCodedScalarOptions{coarser_step, NormalizationAxis::per_column, chunked.scales});
            ecsq_ldlq_equal_rate = ldlq.compress(weights.view(), hessian, coarser);
            bits = coarser.entropy_bits_per_weight();
        }
        WARN(name << ": ecsq+ldlq at " << coarser.entropy_bits_per_weight() << " bits: proxy " << ecsq_ldlq_equal_rate.report.proxy_loss);
        CHECK(coarser.entropy_bits_per_weight() <= plain_bits);
        CHECK(ecsq_ldlq_equal_rate.report.proxy_loss < ecsq_plain.report.proxy_loss);
    }
}

TEST_CASE("ldlq: the factorization is U D U^T of the damped H and equals GPTQ's Cholesky of H^-1", "[ldlq]") {
    const std::int64_t n = 96;
    const Eigen::MatrixXf hessian = synthetic_hessian(n, 77);
    const LDLFeedback feedback = ldl_feedback(hessian, LDLQOptions{});
    REQUIRE(feedback.status == LDLQStatus::ok);
    Eigen::MatrixXd h = hessian.cast<double>();
    h /= h.diagonal().mean();
    h.diagonal().array() += 0.01;
    const Eigen::MatrixXd unit_upper = Eigen::MatrixXd::Identity(n, n) + feedback.coefficients.cast<double>();
    CHECK(unit_upper.isUpperTriangular());
    const Eigen::MatrixXd rebuilt = unit_upper * feedback.pivots.asDiagonal() * unit_upper.transpose();
    CHECK((rebuilt - h).norm() / h.norm() < 1e-5);
    // GPTQ's factor: H^-1 = G^T G, G = D^-1/2 U^-1, so (diag(G)^-1 G) U = I.
    const Eigen::MatrixXd g = h.inverse().llt().matrixU();
    const Eigen::MatrixXd unit_g = g.diagonal().cwiseInverse().asDiagonal() * g;
    CHECK((unit_g * unit_upper - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff() < 1e-4);
    // Block mode: H = U_b D_b U_b^T with identity diagonal blocks and block-diagonal D_b.
    const LDLFeedback blocks = ldl_feedback(hessian, LDLQOptions{.block_size = 32, .feedback = FeedbackMode::per_block});
    const Eigen::MatrixXd block_unit = Eigen::MatrixXd::Identity(n, n) + blocks.coefficients.cast<double>();
    const Eigen::MatrixXd block_diagonal = block_unit.inverse() * h * block_unit.inverse().transpose();
    for (int a = 0; a < 3; ++a) {
        CHECK(blocks.coefficients.block(32 * a, 32 * a, 32, 32).isZero(0.0f));
        for (int b = 0; b < 3; ++b)
            if (a != b) CHECK(block_diagonal.block(32 * a, 32 * b, 32, 32).cwiseAbs().maxCoeff() < 1e-5);
    }
}

TEST_CASE("ldlq: the LDLQ sweep reproduces GPTQ's sweep via the Cholesky factor of H^-1", "[ldlq][data]") {
    const Tensor<float> weights = mt3_matrix("encoder.layers_1.attention.key.weight");
    const Eigen::MatrixXf hessian = synthetic_hessian(weights.cols(), 99);
    SECTION("same decisions => same compensated inputs (decisions replayed from the LDLQ run)") {
        Recorder<RoundToNearest> recorded(RoundToNearest::q4_0());
        const Tensor<float> reconstructed = LDLQCompensator<Recorder<RoundToNearest>>().compress(weights.view(), hessian, recorded).reconstructed;
        Replayer replayed(reconstructed);
        const Tensor<float> replayed_reconstruction = gptq_reference(weights, hessian, 0.01, replayed);
        REQUIRE(replayed_reconstruction.values() == reconstructed.values());
        const float largest = weights.matrix().cwiseAbs().maxCoeff();
        const float difference = (recorded.inputs - replayed.inputs).cwiseAbs().maxCoeff();
        WARN("largest |x_ldlq - x_gptq| = " << difference << " (max |w| = " << largest << ")");
        CHECK(difference < 1e-4f * largest);
    }
    SECTION("free-running sweeps: the same loss; at a fine ECSQ step the same values") {
        RoundToNearest rtn = RoundToNearest::q4_0();
        const double gptq_proxy = relative_proxy(weights, gptq_reference(weights, hessian, 0.01, rtn), hessian);
        const double ldlq_proxy = LDLQCompensator<RoundToNearest>().compress(weights.view(), hessian, rtn).report.proxy_loss;
        // One flipped code (a float tie) changes every later value of its row, so RTN runs agree
        // statistically, not value by value.
        CHECK(ldlq_proxy == Approx(gptq_proxy).epsilon(0.02));
        EntropyCodedScalar ecsq(0.004f);
        const Tensor<float> reference = gptq_reference(weights, hessian, 0.01, ecsq);
        const Tensor<float> ldlq = LDLQCompensator<EntropyCodedScalar>().compress(weights.view(), hessian, ecsq).reconstructed;
        std::int64_t same = 0;
        for (std::int64_t i = 0; i < weights.numel(); ++i) same += reference[i] == ldlq[i];
        CHECK(double(same) / double(weights.numel()) > 0.99);
    }
}

TEST_CASE("ldlq: damping retries for a singular or indefinite H, plain coding when nothing works, never NaN", "[ldlq]") {
    const Tensor<float> weights = gaussian_matrix(48, 64, 3);
    RoundToNearest rtn = RoundToNearest::q4_0();
    const LDLQCompensator<RoundToNearest> no_damping(LDLQOptions{.damping = 0.0});
    const LDLQResult plain = no_damping.compress(weights.view(), rtn);

    SECTION("rank-1 H with no damping: Cholesky fails, the retry with damping 1e-3 works") {
        const Eigen::MatrixXf singular = Eigen::MatrixXf::Ones(64, 64);
        const LDLQResult result = no_damping.compress(weights.view(), singular, rtn);
        CHECK(result.report.status == LDLQStatus::damping_increased);
        CHECK(result.report.retries == 1);
        CHECK(result.report.damping == Approx(1e-3));
        CHECK(result.reconstructed.matrix().allFinite());
        CHECK(std::isfinite(result.report.proxy_loss));
    }
    SECTION("indefinite H: the damping grows by 10 until the factorization works") {
        Eigen::MatrixXf indefinite = Eigen::MatrixXf::Identity(64, 64);
        indefinite(5, 5) = -3.0f;
        const LDLQResult result = LDLQCompensator<RoundToNearest>().compress(weights.view(), indefinite, rtn);
        CHECK(result.report.status == LDLQStatus::damping_increased);
        CHECK(result.report.damping == Approx(10.0));  // -3 / mean(diag) + 10 > 0; 0.01, 0.1 and 1 were not enough
        CHECK(result.reconstructed.matrix().allFinite());
    }
    SECTION("non-finite, zero, or hopeless H: reported, and W is coded without feedback") {
        Eigen::MatrixXf with_nan = synthetic_hessian(64, 5);
        with_nan(3, 7) = std::nanf("");
        Eigen::MatrixXf hopeless = -Eigen::MatrixXf::Identity(64, 64);
        for (const Eigen::MatrixXf& hessian : {with_nan, Eigen::MatrixXf(Eigen::MatrixXf::Zero(64, 64)), hopeless}) {
            const LDLQResult result = no_damping.compress(weights.view(), hessian, rtn);
            CHECK(result.report.status == LDLQStatus::factorization_failed);
            CHECK_FALSE(result.report.used_feedback);
            CHECK(result.reconstructed.values() == plain.reconstructed.values());
        }
    }
    SECTION("identity or diagonal H has no feedback: the result is plain quantization") {
        Eigen::MatrixXf diagonal = Eigen::MatrixXf::Zero(64, 64);
        for (int j = 0; j < 64; ++j) diagonal(j, j) = float(1 + j % 5);
        for (const Eigen::MatrixXf& hessian : {Eigen::MatrixXf(Eigen::MatrixXf::Identity(64, 64)), diagonal}) {
            const LDLQResult result = LDLQCompensator<RoundToNearest>().compress(weights.view(), hessian, rtn);
            CHECK(result.report.status == LDLQStatus::ok);
            CHECK_FALSE(result.report.used_feedback);
            CHECK(result.reconstructed.values() == plain.reconstructed.values());
        }
        CHECK(plain.report.proxy_loss == Approx(relative_proxy(weights, plain.reconstructed, Eigen::MatrixXf::Identity(64, 64))).epsilon(1e-4));
    }
}

TEST_CASE("ldlq: results are bit-identical for any thread count", "[ldlq][data]") {
    const Tensor<float> weights = mt3_matrix("decoder.layers_2.self_attention.out.weight");  // 512 x 384
    const Eigen::MatrixXf hessian = synthetic_hessian(weights.cols(), 31);
    for (auto mode : {FeedbackMode::per_column, FeedbackMode::per_block}) {
        std::vector<float> first_values;
        std::vector<std::uint8_t> first_codes;
        double first_proxy = 0.0;
        for (int threads : {1, 2, 3, 8}) {
            RoundToNearest rtn = RoundToNearest::q4_0();
            const LDLQCompensator<RoundToNearest> ldlq(LDLQOptions{.block_size = 64, .feedback = mode, .row_block = 48, .threads = threads});
            const LDLQResult result = ldlq.compress(weights.view(), hessian, rtn);
            if (threads == 1) {
                first_values = result.reconstructed.values();
                first_codes.assign(rtn.codes().begin(), rtn.codes().end());
                first_proxy = result.report.proxy_loss;
                continue;
            }
            INFO("threads " << threads);
            REQUIRE(result.reconstructed.values() == first_values);
            REQUIRE(std::vector<std::uint8_t>(rtn.codes().begin(), rtn.codes().end()) == first_codes);
            REQUIRE(result.report.proxy_loss == first_proxy);
        }
    }
}

TEST_CASE("ldlq: a block-only (chunk) quantizer plugs in through FeedbackMode::per_block", "[ldlq]") {
    const Tensor<float> weights = gaussian_matrix(100, 192, 8);  // 100 rows: the last row block is short
    const Eigen::MatrixXf hessian = synthetic_hessian(192, 4);
    std::vector<std::uint8_t> levels(192, 1);
    ChunkRecorder recorder;
    const LDLQCompensator<ChunkRecorder> ldlq(LDLQOptions{.block_size = 64, .feedback = FeedbackMode::per_block, .row_block = 40, .threads = 1});
    const LDLQResult result = ldlq.compress(weights.view(), hessian, recorder, levels);
    CHECK(recorder.calls == 3 * 3);  // row blocks of 48 (40 rounded up to 16s): 0..47, 48..95, 96..99; 3 column blocks
    CHECK(result.reconstructed.matrix().allFinite());
    const LDLQResult plain = ldlq.compress(weights.view(), LDLFeedback::none(), hessian, recorder, levels);
    CHECK(result.report.proxy_loss < plain.report.proxy_loss);
    const LDLQCompensator<ChunkRecorder> per_column;
    CHECK_THROWS_AS(per_column.compress(weights.view(), hessian, recorder), error);
}

TEST_CASE("ldlq: bad arguments are errors", "[ldlq]") {
    const Tensor<float> weights = gaussian_matrix(8, 64, 1);
    RoundToNearest rtn = RoundToNearest::q4_0();
    const LDLQCompensator<RoundToNearest> ldlq;
    auto id_of = [](auto&& body) {
        try {
            body();
        } catch (const error& failure) {
            return failure.id();
        }
        return errc::io;
    };
    CHECK(id_of([&] { ldlq.compress(weights.view(), Eigen::MatrixXf::Identity(63, 63), rtn); }) == errc::invalid_argument);
    CHECK(id_of([&] { ldlq.compress(weights.view(), rtn, std::vector<std::uint8_t>(10, 0)); }) == errc::invalid_argument);
    CHECK(id_of([&] { ldlq.compress(weights.view(), rtn, std::vector<std::uint8_t>(64, 4)); }) == errc::invalid_argument);
    CHECK(id_of([&] { LDLQCompensator<RoundToNearest>(LDLQOptions{.block_size = 48}).compress(weights.view(), rtn); }) == errc::invalid_argument);
    CHECK(id_of([] { LDLQCompensator<RoundToNearest>(LDLQOptions{.damping = -1.0}); }) == errc::invalid_argument);
    Tensor<float> with_nan = weights;
    with_nan(3, 9) = std::nanf("");
    CHECK(id_of([&] { ldlq.compress(with_nan.view(), rtn); }) == errc::invalid_argument);
}

}  // namespace nwc_test_ldlq_compensator
