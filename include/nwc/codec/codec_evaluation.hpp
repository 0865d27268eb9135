// Rate-distortion of a codec (and of the ECSQ baseline) on held-out matrices, with real bytes.
//
// Every figure here comes from an actual bitstream: symbols go through rans::encode, the stream
// is decoded again (and checked to give the same symbols), and the reconstruction comes from the
// decoded symbols. Rates are bits per weight of the stream alone; the codec's own size (the decoder
// half a .nwc file embeds) is reported apart because it is paid once per file, not per weight.
// Distortion is the MSE of the NORMALIZED weights (each column scaled to unit standard deviation),
// so it compares directly with the unit-variance Gaussian bound D(R) = 2^(-2R).
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "nwc/codec/codec.hpp"
#include "nwc/codec/training_corpus.hpp"
#include "nwc/core/error.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/quant/entropy_coded_scalar.hpp"

namespace nwc {

/// Totals over a set of matrices; the derived figures are per weight.
struct RateDistortion {
    double weights = 0.0;        ///< real weights (rows x cols), padding excluded
    double coded_bits = 0.0;     ///< bytes written by the rANS coder x 8 (ECSQ: plus its table)
    double ideal_bits = 0.0;     ///< sum of -log2 p under the integer tables
    double squared_error = 0.0;  ///< over the normalized values
    double decode_seconds = 0.0;  ///< entropy decoding + g_s (codec only)

    double bits_per_weight() const noexcept { return weights > 0 ? coded_bits / weights : 0.0; }
    double ideal_bits_per_weight() const noexcept { return weights > 0 ? ideal_bits / weights : 0.0; }
    double mse() const noexcept { return weights > 0 ? squared_error / weights : 0.0; }
    /// 10 log10(1 / mse): SNR in dB of unit-variance data.
    double snr_db() const noexcept { return -10.0 * std::log10(std::max(mse(), 1e-300)); }
    RateDistortion& operator+=(const RateDistortion& other) noexcept {
        weights += other.weights;
        coded_bits += other.coded_bits;
        ideal_bits += other.ideal_bits;
        squared_error += other.squared_error;
        decode_seconds += other.decode_seconds;
        return *this;
    }
};

/// Codes every chunk of `matrices` at importance level `level` with `codec`, decodes, measures.
template <class Backend = backend::default_backend>
RateDistortion evaluate_codec(const NeuralCodec& codec, std::span<const HeldOutMatrix> matrices, int level, int threads = 1,
                              Backend backend_tag = {}) {
    require(level >= 0 && level < codec.architecture().levels, errc::invalid_argument, "evaluate_codec: level ", level, " outside 0..",
            codec.architecture().levels - 1);
    RateDistortion total;
    const int d = codec.architecture().chunk_size;
    for (const HeldOutMatrix& matrix : matrices) {
        require(matrix.chunk_size == d, errc::invalid_argument, "evaluate_codec: matrix '", matrix.name, "' has chunks of ", matrix.chunk_size,
                ", the codec ", d);
        const std::int64_t count = matrix.chunk_count();
        const std::vector<std::uint8_t> levels(static_cast<std::size_t>(count), static_cast<std::uint8_t>(level));
        const TensorView<const float> chunks(matrix.chunks.data(), {count, d});
        const std::vector<std::int32_t> symbols = codec.encode(chunks, levels, threads);
        const std::vector<std::uint8_t> stream = rans::encode(symbols, codec.tables(level), {.threads = threads});
        RateDistortion part;
        part.weights = double(matrix.rows) * double(matrix.cols);
        part.coded_bits = 8.0 * double(stream.size());
        part.ideal_bits = codec.tables(level).ideal_bits(symbols);
        std::vector<float> decoded(matrix.chunks.size());
        const auto start = std::chrono::steady_clock::now();
        const std::vector<std::int32_t> received = rans::decode(stream, codec.tables(level), backend_tag, threads);
        codec.decode(received, levels, TensorView<float>(decoded.data(), {count, d}), threads, backend_tag);
        part.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        require(received == symbols, errc::corrupt, "evaluate_codec: rANS round trip changed the symbols of '", matrix.name, "'");
        for (std::size_t i = 0; i < decoded.size(); ++i) {
            const double error = double(decoded[i]) - double(matrix.chunks[i]);
            part.squared_error += error * error;
        }
        total += part;
    }
    return total;
}

/// Entropy-coded scalar quantization of the same normalized values: symbol round(x / step), one
/// histogram table per matrix (its bytes counted in coded_bits), reconstruction symbol * step.
inline RateDistortion evaluate_ecsq(std::span<const HeldOutMatrix> matrices, float step, int threads = 1) {
    RateDistortion total;
    for (const HeldOutMatrix& matrix : matrices) {
        std::vector<std::int32_t> symbols(matrix.chunks.size());
        for (std::size_t i = 0; i < symbols.size(); ++i) symbols[i] = detail::ecsq_symbol(matrix.chunks[i], step);
        const SymbolHistogram histogram = detail::histogram_of(symbols);
        const CdfTableSet tables({histogram.to_cdf_table(16)});
        const std::vector<std::uint8_t> stream = rans::encode(symbols, tables, {.threads = threads});
        ByteWriter table_bytes;
        tables.write(table_bytes);
        RateDistortion part;
        part.weights = double(matrix.rows) * double(matrix.cols);
        part.coded_bits = 8.0 * double(stream.size() + table_bytes.size());
        part.ideal_bits = histogram.entropy_bits() * double(symbols.size());
        for (std::size_t i = 0; i < symbols.size(); ++i) {
            const double error = double(symbols[i]) * double(step) - double(matrix.chunks[i]);
            part.squared_error += error * error;
        }
        total += part;
    }
    return total;
}

}  // namespace nwc
