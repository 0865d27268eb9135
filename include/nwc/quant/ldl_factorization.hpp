// The factorization behind LDLQ: the feedback matrix A of a damped Hessian (used by
// LDLQCompensator, ldlq_compensator.hpp), with the status and damping retries of a factorization
// that fails.
//
// Derivation (per row w of W: tr(dW H dW^T) = sum_r dw_r H dw_r^T, so rows are independent).
// Columns are coded in order 0..n-1; column k is quantized from the compensated value
//     x_k = w_k + sum_{j<k} e_j a_jk,     e_j = w_j - what_j (ORIGINAL minus reconstruction).
// Let eta_k = what_k - x_k be the quantizer's own error. Then e_k = -eta_k - sum_{j<k} e_j a_jk:
//     e (I + A) = -eta   (A strictly upper triangular)   =>   e H e^T = eta (I+A)^-1 H (I+A)^-T eta^T.
// With I + A = U from H = U D U^T (U unit upper triangular, D diagonal) this is sum_k D_k eta_k^2:
// every value's own rounding error counted once, no cross terms. That is LDLQ (QuIP). U D U^T is
// the L D L^T factorization of H in reverse index order (P H P = L D L^T, P the reversal, U = P L P),
// so the notes' "a_k from L^T - I" is column k of U - I here. One Cholesky gives it:
//     P H P = C C^T,  R = P C P (upper, H = R R^T),  U = R diag(R)^-1,  D = diag(R)^2.
// GPTQ is the same algorithm written with eta instead of e: the upper Cholesky factor G of H^-1
// (H^-1 = G^T G) is G = D^-1/2 U^-1, and GPTQ's update w_k -= (x_j - what_j) G_jk / G_jj feeds eta
// through B = U^-1 - I; since U B = I - U = -A, both produce the same compensated x_k
// (tests/test_ldlq_compensator.cpp checks the identity and the two sweeps against each other).
//
// Block mode (FeedbackMode::per_block, b columns coded together): H = U_b D_b U_b^T with U_b unit
// block upper triangular and D_b block diagonal, U_b = U blockdiag(U_kk)^-1; the same argument
// gives e H e^T = sum_k eta_k D_b,kk eta_k^T, with feedback from earlier blocks only.
//
// Damping: H <- H / mean(diag H) + damping I. A failed Cholesky (H not positive definite) or a
// non-finite factor is retried with damping max(damping, 1e-4) growth^k for k = 1..max retries;
// if every attempt fails (or H is not finite, or mean(diag H) <= 0) the status says so and the
// feedback is empty: LDLQ then codes without feedback (plain quantization), never producing NaNs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "nwc/core/error.hpp"
#include "nwc/quant/quantizer_concept.hpp"

namespace nwc {

/// How a factorization went.
enum class LDLQStatus : std::uint8_t {
    ok = 0,                    ///< factorized with the requested damping
    damping_increased = 1,     ///< factorized after raising the damping (see `damping`, `retries`)
    factorization_failed = 2,  ///< no attempt worked (or H was not finite): coded without feedback
};

/// Options of the factorization and of the LDLQ sweep.
struct LDLQOptions {
    double damping = 0.01;         ///< relative to mean(diag H)
    double damping_growth = 10.0;  ///< factor per retry
    int max_damping_retries = 4;   ///< retries after the first attempt (0.01 -> 0.1 -> ... -> 100)
    int block_size = 128;          ///< columns per LDLQ block; a multiple of the quantizer's column_group()
    FeedbackMode feedback = FeedbackMode::per_column;
    int row_block = 128;            ///< rows per work item (rounded up to the quantizer's row_group())
    int threads = 0;                ///< worker threads, 0 = all cores; the result never depends on it
    bool compute_proxy_loss = true; ///< fill LDLQReport's proxy loss (two more m n^2 products)

    void validate() const {
        require(std::isfinite(damping) && damping >= 0.0, errc::invalid_argument, "LDLQ: damping ", damping, " must be finite and >= 0");
        require(std::isfinite(damping_growth) && damping_growth > 1.0, errc::invalid_argument, "LDLQ: damping growth ", damping_growth, " must be > 1");
        require(max_damping_retries >= 0 && max_damping_retries <= 30, errc::invalid_argument, "LDLQ: ", max_damping_retries,
                " damping retries (0..30)");
        require(block_size >= 1, errc::invalid_argument, "LDLQ: block size ", block_size, " must be >= 1");
        require(row_block >= 1, errc::invalid_argument, "LDLQ: row block ", row_block, " must be >= 1");
        require(threads >= 0, errc::invalid_argument, "LDLQ: ", threads, " threads");
    }
};

/// The feedback coefficients of a factorized Hessian.
struct LDLFeedback {
    LDLQStatus status = LDLQStatus::factorization_failed;
    double damping = 0.0;  ///< relative damping of the successful attempt
    int retries = 0;       ///< attempts after the first
    FeedbackMode mode = FeedbackMode::per_column;
    int block_size = 0;
    /// A (n x n): column k holds the a_jk of the columns j coded before k. Strictly upper triangular
    /// (per_column) or zero on and below the diagonal blocks (per_block). Empty: no feedback.
    Eigen::MatrixXf coefficients;
    /// D of H = U D U^T (the per-column factor), for diagnostics: D_k weighs eta_k^2 in the loss.
    Eigen::VectorXd pivots;

    bool has_feedback() const noexcept { return coefficients.size() != 0; }

    /// No feedback at all, status ok: LDLQCompensator then codes plainly, while still reporting
    /// the proxy loss under a given Hessian (how plain RTN is compared with GPTQ).
    static LDLFeedback none() {
        LDLFeedback feedback;
        feedback.status = LDLQStatus::ok;
        return feedback;
    }
};

/// Damps, normalizes and factorizes H (n x n, symmetric: only one triangle is read) into the
/// LDLQ feedback for `options.feedback` and `options.block_size`. Never throws for a numerically
/// bad H: the status reports it. Throws invalid_argument if H is not square.
template <class Derived>
LDLFeedback ldl_feedback(const Eigen::MatrixBase<Derived>& hessian, const LDLQOptions& options) {
    options.validate();
    const Eigen::Index n = hessian.rows();
    require(hessian.cols() == n, errc::invalid_argument, "LDLQ: Hessian is ", hessian.rows(), " x ", hessian.cols(), ", not square");
    LDLFeedback result;
    result.mode = options.feedback;
    result.block_size = options.block_size;
    if (n == 0) {
        result.status = LDLQStatus::ok;
        return result;
    }
    if (!hessian.allFinite()) return result;
    const double mean_diagonal = hessian.diagonal().template cast<double>().mean();
    if (!(mean_diagonal > 0.0) || !std::isfinite(mean_diagonal)) return result;

    // Large buffers are few on purpose: first-touch page faults of fresh n x n buffers cost as
    // much as the Cholesky itself at n = 4096 on some systems.
    Eigen::MatrixXd factor(n, n);
    for (int attempt = 0; attempt <= options.max_damping_retries; ++attempt) {
        const double damping = attempt == 0 ? options.damping : std::max(options.damping, 1e-4) * std::pow(options.damping_growth, attempt);
        factor = hessian.reverse().template cast<double>() / mean_diagonal;  // P H P, normalized
        factor.diagonal().array() += damping;
        Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>> cholesky(factor);  // in place: C in the lower triangle
        if (cholesky.info() != Eigen::Success) continue;
        // R(i, j) = C(n-1-i, n-1-j) for i <= j is upper triangular with H = R R^T; U = R diag(R)^-1.
        auto upper = [&](Eigen::Index i, Eigen::Index j) { return factor(n - 1 - i, n - 1 - j); };
        Eigen::VectorXd pivots(n);
        bool finite = true;
        for (Eigen::Index j = 0; j < n; ++j) {
            pivots(j) = upper(j, j) * upper(j, j);
            finite = finite && std::isfinite(pivots(j)) && pivots(j) > 0.0;
        }
        if (!finite) continue;
        if (options.feedback == FeedbackMode::per_column) {
            result.coefficients.setZero(n, n);
            for (Eigen::Index j = 0; j < n; ++j) {
                const double diagonal = upper(j, j);
                for (Eigen::Index i = 0; i < j; ++i) result.coefficients(i, j) = float(upper(i, j) / diagonal);
            }
        } else {
            Eigen::MatrixXd unit_upper = Eigen::MatrixXd::Zero(n, n);
            for (Eigen::Index j = 0; j < n; ++j) {
                const double diagonal = upper(j, j);
                for (Eigen::Index i = 0; i < j; ++i) unit_upper(i, j) = upper(i, j) / diagonal;
                unit_upper(j, j) = 1.0;
            }
            // U_b = U blockdiag(U_kk)^-1: only the rows above each diagonal block change.
            for (Eigen::Index start = options.block_size; start < n; start += options.block_size) {
                const Eigen::Index width = std::min<Eigen::Index>(options.block_size, n - start);
                const Eigen::MatrixXd diagonal_block = unit_upper.block(start, start, width, width);
                auto above = unit_upper.block(0, start, start, width);
                diagonal_block.triangularView<Eigen::UnitUpper>().solveInPlace<Eigen::OnTheRight>(above);
            }
            for (Eigen::Index start = 0; start < n; start += options.block_size) {
                const Eigen::Index width = std::min<Eigen::Index>(options.block_size, n - start);
                unit_upper.block(start, start, width, width).setZero();  // A = U_b - I: nothing inside a block
            }
            result.coefficients = unit_upper.cast<float>();
        }
        if (!result.coefficients.allFinite()) {  // finite in double, beyond float: try more damping
            result.coefficients.resize(0, 0);
            continue;
        }
        result.pivots = std::move(pivots);
        result.status = attempt == 0 ? LDLQStatus::ok : LDLQStatus::damping_increased;
        result.damping = damping;
        result.retries = attempt;
        return result;
    }
    result.retries = options.max_damping_retries;
    return result;
}

}  // namespace nwc
