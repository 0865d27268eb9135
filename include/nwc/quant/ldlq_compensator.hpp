// nwc::LDLQCompensator<Quantizer>: intra-layer error compensation (step 7 of the NWC pipeline).
//
// Read me first:
// - W (m x n, out x in) is coded input column by input column with the feedback of the columns
//   already coded: x_k = w_k + (W_done - What_done) a_k, a_k from the U D U^T factorization of the
//   damped Hessian (derivation and GPTQ equivalence: ldl_factorization.hpp).
// - Work is blocked: before a block of `block_size` columns, one GEMM adds the feedback of all
//   earlier blocks; inside the block the feedback is applied column by column (FeedbackMode::
//   per_column, exact LDLQ = GPTQ with RoundToNearest) or not at all (FeedbackMode::per_block, for
//   quantizers that code a block of chunks at once, such as the neural codec).
// - Rows of W never interact, so W is cut into row blocks of a fixed size that are coded on
//   parallel threads; each row block's arithmetic is the same whatever the thread count, so the
//   output is bit-identical for any number of threads.
// - The report's proxy loss is tr(dW H dW^T) / tr(W H W^T) with the UNDAMPED H (the identity when
//   none is given). A Hessian that cannot be factorized even after the damping retries is reported
//   (LDLQStatus::factorization_failed) and W is then coded without feedback.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/core/thread_pool.hpp"
#include "nwc/quant/ldl_factorization.hpp"
#include "nwc/quant/quantizer_concept.hpp"

namespace nwc {

/// What a compression did.
struct LDLQReport {
    LDLQStatus status = LDLQStatus::ok;
    bool used_feedback = false;  ///< false: plain quantization (no Hessian, diagonal H, or failure)
    double damping = 0.0;        ///< relative damping of the factorization used
    int retries = 0;             ///< damping retries the factorization needed
    double proxy_loss = 0.0;     ///< tr(dW H dW^T) / tr(W H W^T) (0 when both are 0)
    double weighted_error = 0.0; ///< tr(dW H dW^T), dW = W - What
    double weighted_norm = 0.0;  ///< tr(W H W^T)
};

/// The reconstruction What (m x n, row-major) and the report; codes live in the quantizer.
struct LDLQResult {
    Tensor<float> reconstructed;
    LDLQReport report;
};

/// LDLQ / GPTQ error compensation around any quantizer policy (quantizer_concept.hpp).
template <class Quantizer>
class LDLQCompensator {
    static_assert(BlockQuantizer<Quantizer>, "LDLQCompensator: the quantizer does not satisfy nwc::BlockQuantizer (quantizer_concept.hpp)");

public:
    explicit LDLQCompensator(LDLQOptions options = {}) : m_options(options) { m_options.validate(); }

    const LDLQOptions& options() const noexcept { return m_options; }

    /// Factorizes H once, for several matrices that share it (q, k, v of one layer).
    template <class Derived>
    LDLFeedback factorize(const Eigen::MatrixBase<Derived>& hessian) const {
        return ldl_feedback(hessian, m_options);
    }

    /// Factorizes H and codes W with feedback. `levels`: one importance level per column, or empty.
    template <class Derived>
    LDLQResult compress(TensorView<const float> weights, const Eigen::MatrixBase<Derived>& hessian, Quantizer& quantizer,
                        std::span<const std::uint8_t> levels = {}) const {
        check_hessian(weights, hessian);
        return compress(weights, factorize(hessian), hessian, quantizer, levels);
    }

    /// Codes W with the feedback of an earlier factorize(); `hessian` (undamped) is only used for
    /// the proxy loss.
    template <class Derived>
    LDLQResult compress(TensorView<const float> weights, const LDLFeedback& feedback, const Eigen::MatrixBase<Derived>& hessian,
                        Quantizer& quantizer, std::span<const std::uint8_t> levels = {}) const {
        check_hessian(weights, hessian);
        require(!feedback.has_feedback() || (feedback.coefficients.rows() == weights.cols() && feedback.mode == m_options.feedback &&
                                             feedback.block_size == m_options.block_size),
                errc::invalid_argument, "LDLQ: the factorization was made for another size, feedback mode or block size");
        // The undamped H is only needed for the proxy loss.
        const Eigen::MatrixXf hessian_float = m_options.compute_proxy_loss ? Eigen::MatrixXf(hessian.template cast<float>()) : Eigen::MatrixXf();
        const bool any_feedback = feedback.has_feedback() && !feedback.coefficients.isZero(0.0f);
        LDLQResult result = run(weights, any_feedback ? &feedback.coefficients : nullptr, &hessian_float, quantizer, levels);
        result.report.status = feedback.status;
        result.report.damping = feedback.damping;
        result.report.retries = feedback.retries;
        if (any_feedback && !result.reconstructed.matrix().allFinite()) {  // defensive: never hand out NaNs
            result = run(weights, nullptr, &hessian_float, quantizer, levels);
            result.report.status = LDLQStatus::factorization_failed;
        }
        return result;
    }

    /// Plain quantization without a Hessian (H = I: no feedback); the proxy loss is ||dW||^2 / ||W||^2.
    LDLQResult compress(TensorView<const float> weights, Quantizer& quantizer, std::span<const std::uint8_t> levels = {}) const {
        return run(weights, nullptr, nullptr, quantizer, levels);
    }

private:
    template <class Derived>
    static void check_hessian(TensorView<const float> weights, const Eigen::MatrixBase<Derived>& hessian) {
        require(hessian.rows() == weights.cols() && hessian.cols() == weights.cols(), errc::invalid_argument, "LDLQ: Hessian is ", hessian.rows(),
                " x ", hessian.cols(), " but W has ", weights.cols(), " columns");
    }

    void check_inputs(TensorView<const float> weights, const Quantizer& quantizer, std::span<const std::uint8_t> levels) const {
        const std::int64_t n = weights.cols();
        require(levels.empty() || std::int64_t(levels.size()) == n, errc::invalid_argument, "LDLQ: ", levels.size(), " importance levels for ", n,
                " columns");
        for (std::size_t j = 0; j < levels.size(); ++j)
            require(levels[j] <= 3, errc::invalid_argument, "LDLQ: importance level ", int(levels[j]), " of column ", j, " exceeds 3");
        require(m_options.block_size % quantizer.column_group() == 0, errc::invalid_argument, "LDLQ: block size ", m_options.block_size,
                " is not a multiple of the quantizer's column group ", quantizer.column_group());
        if constexpr (!ColumnQuantizer<Quantizer>)
            require(m_options.feedback == FeedbackMode::per_block, errc::invalid_argument,
                    "LDLQ: this quantizer codes whole blocks only; use FeedbackMode::per_block");
        for (std::int64_t i = 0; i < weights.numel(); ++i)
            if (!std::isfinite(weights[i])) fail(errc::invalid_argument, "LDLQ: weight (", i / n, ", ", i % n, ") is not finite");
    }

    LDLQResult run(TensorView<const float> weights, const Eigen::MatrixXf* feedback, const Eigen::MatrixXf* hessian, Quantizer& quantizer,
                   std::span<const std::uint8_t> levels) const {
        check_inputs(weights, quantizer, levels);
        const std::int64_t rows = weights.rows();
        const std::int64_t row_group = std::max<std::int64_t>(1, quantizer.row_group());
        const std::int64_t row_block = (m_options.row_block + row_group - 1) / row_group * row_group;
        const std::int64_t row_blocks = (rows + row_block - 1) / row_block;
        quantizer.reset(rows, weights.cols());
        LDLQResult result{Tensor<float>(weights.shape()), {}};
        std::vector<double> weighted_error(std::size_t(row_blocks), 0.0), weighted_norm(std::size_t(row_blocks), 0.0);
        parallel_for(row_blocks, m_options.threads, [&](std::int64_t index) {
            const std::int64_t first_row = index * row_block;
            code_rows(weights, first_row, std::min(row_block, rows - first_row), feedback, hessian, quantizer, levels, result.reconstructed,
                      weighted_error[std::size_t(index)], weighted_norm[std::size_t(index)]);
        });
        LDLQReport& report = result.report;
        report.used_feedback = feedback != nullptr;
        for (std::size_t i = 0; i < weighted_error.size(); ++i) {  // in index order: thread-count independent
            report.weighted_error += weighted_error[i];
            report.weighted_norm += weighted_norm[i];
        }
        report.proxy_loss = report.weighted_norm > 0.0 ? report.weighted_error / report.weighted_norm : 0.0;
        return result;
    }

    /// LDLQ on rows [first_row, first_row + count): independent of every other row block.
    void code_rows(TensorView<const float> weights, std::int64_t first_row, std::int64_t count, const Eigen::MatrixXf* feedback,
                   const Eigen::MatrixXf* hessian, Quantizer& quantizer, std::span<const std::uint8_t> levels, Tensor<float>& output,
                   double& weighted_error, double& weighted_norm) const {
        const std::int64_t n = weights.cols(), block_size = m_options.block_size;
        const Eigen::MatrixXf original = weights.matrix().middleRows(first_row, count);  // column-major: columns contiguous
        Eigen::MatrixXf reconstructed(count, n), error(count, n), work(count, std::min(block_size, n));
        auto levels_of = [&](std::int64_t first, std::int64_t width) {
            return levels.empty() ? levels : levels.subspan(std::size_t(first), std::size_t(width));
        };
        for (std::int64_t start = 0; start < n; start += block_size) {
            const std::int64_t width = std::min(block_size, n - start);
            auto block = work.leftCols(width);
            block = original.middleCols(start, width);
            if (feedback != nullptr && start > 0) block.noalias() += error.leftCols(start) * feedback->block(0, start, start, width);
            if (m_options.feedback == FeedbackMode::per_block) {
                quantizer.quantize_block(BlockPosition{first_row, start, levels_of(start, width)}, block, reconstructed.middleCols(start, width));
                error.middleCols(start, width) = original.middleCols(start, width) - reconstructed.middleCols(start, width);
                continue;
            }
            if constexpr (ColumnQuantizer<Quantizer>) {
                const std::int64_t group = quantizer.column_group();
                for (std::int64_t j = 0; j < width; ++j) {
                    const std::int64_t column = start + j;
                    if (column % group == 0) {
                        const std::int64_t group_width = std::min(group, n - column);
                        quantizer.begin_group(BlockPosition{first_row, column, levels_of(column, group_width)}, block.middleCols(j, group_width));
                    }
                    quantizer.quantize_column(BlockPosition{first_row, column, levels_of(column, 1)},
                                              std::span<const float>(block.col(j).data(), std::size_t(count)),
                                              std::span<float>(reconstructed.col(column).data(), std::size_t(count)));
                    error.col(column) = original.col(column) - reconstructed.col(column);
                    if (feedback != nullptr && j + 1 < width)  // rank-1 feedback to the rest of the block
                        block.rightCols(width - j - 1).noalias() += error.col(column) * feedback->block(column, column + 1, 1, width - j - 1);
                }
            }
        }
        output.matrix().middleRows(first_row, count) = reconstructed;
        if (!m_options.compute_proxy_loss) return;
        if (hessian == nullptr) {
            weighted_error = error.cast<double>().squaredNorm();
            weighted_norm = original.cast<double>().squaredNorm();
            return;
        }
        const Eigen::MatrixXf error_times_hessian = error * *hessian;
        weighted_error = error_times_hessian.cwiseProduct(error).cast<double>().sum();
        const Eigen::MatrixXf weights_times_hessian = original * *hessian;
        weighted_norm = weights_times_hessian.cwiseProduct(original).cast<double>().sum();
    }

    LDLQOptions m_options;
};

}  // namespace nwc
