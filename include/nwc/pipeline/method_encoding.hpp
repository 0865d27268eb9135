// What the built-in methods' encoders share and their decoders do not need: the LDLQ set-up, the
// error measure of a reconstruction and the Hessian's shape check.
//
// Read me first:
// - Apart from method_common.hpp (options, report, metadata prefix, bit packing: both halves) so
//   that a decoding half includes no encoder: this header brings in the LDLQ driver
//   (quant/ldlq_compensator.hpp); <nwc/decode.hpp> never includes it.
// - Proxy loss tr(dW H dW^T) / tr(W H W^T) is measured on the decoder's reconstruction with the
//   undamped Hessian, in double; relative MSE is ||dW||^2 / ||W||^2 (ErrorMeasure, method_common.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>

#include <Eigen/Core>

#include "nwc/core/config.hpp"
#include "nwc/core/error.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/pipeline/method_common.hpp"
#include "nwc/quant/ldlq_compensator.hpp"

namespace nwc::detail {

/// Measures the reconstruction of W (H: [cols, cols] or null). A template only so that the double
/// GEMM is instantiated where a method measures, not in every translation unit.
template <class HessianScalar = double>
ErrorMeasure measure_error(TensorView<const float> weights, TensorView<const float> reconstruction, const Tensor<HessianScalar>* hessian) {
    NWC_ASSERT(weights.numel() == reconstruction.numel());
    ErrorMeasure measure;
    for (std::int64_t i = 0; i < weights.numel(); ++i) add_error(measure, weights[i], reconstruction[i]);
    if (hessian != nullptr) {
        using Matrix = Eigen::Matrix<HessianScalar, Eigen::Dynamic, Eigen::Dynamic>;
        const Matrix original = weights.matrix().template cast<HessianScalar>();
        const Matrix error = original - reconstruction.matrix().template cast<HessianScalar>();
        const auto h = hessian->matrix();
        measure.weighted_error = (error * h).cwiseProduct(error).sum();
        measure.weighted_norm = (original * h).cwiseProduct(original).sum();
        measure.has_hessian = true;
    }
    return measure;
}

/// The LDLQ set-up every method shares: options' damping and threads, the given block size and
/// feedback mode, no proxy loss (the codec measures it on the decoder's output).
inline LDLQOptions ldlq_options(const MethodOptions& options, int block_size, FeedbackMode feedback) {
    LDLQOptions ldlq;
    ldlq.damping = options.damping;
    ldlq.block_size = block_size;
    ldlq.feedback = feedback;
    ldlq.threads = std::max(1, options.threads);
    ldlq.compute_proxy_loss = false;
    return ldlq;
}

/// Hessian shape check for a [rows, cols] weight.
inline void require_hessian_fits(const Tensor<double>* hessian, std::int64_t cols, std::string_view name) {
    if (hessian == nullptr) return;
    require(hessian->shape().rank() == 2 && hessian->rows() == cols && hessian->cols() == cols, errc::invalid_argument, "tensor '", name,
            "': Hessian is ", hessian->rows(), " x ", hessian->cols(), " but the weight has ", cols, " columns");
}

}  // namespace nwc::detail
