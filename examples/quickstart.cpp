// Quickstart: the core types every nwc component builds on.
//
//   build/examples/nwc_example_quickstart
//
// Makes a weight matrix, stores it as float16 (what a .safetensors file holds), measures what the
// 16-bit rounding cost, and checksums the bytes the way every nwc file format does.
#include <nwc/nwc.hpp>

#include <cmath>
#include <cstdio>

int main() {
    // A 64 x 256 "weight matrix" of normal values (nwc::Random is reproducible on every platform).
    nwc::Random random(42);
    nwc::Tensor<float> weights(nwc::Shape{64, 256});
    for (float& value : weights.values()) value = 0.02f * random.normal();

    // Store it as float16 and read it back: float -> half rounds to nearest even.
    nwc::Tensor<nwc::half> stored(weights.shape());
    nwc::convert<float, nwc::half>(weights.view(), stored.view());
    const nwc::Tensor<float> restored = nwc::to_float32<nwc::half>(stored.view());

    // Tensors are Eigen maps as well, for the linear algebra.
    const double mse = (weights.matrix() - restored.matrix()).squaredNorm() / double(weights.numel());
    const double variance = weights.matrix().squaredNorm() / double(weights.numel());
    std::printf("weights %lld x %lld, float16 round trip: MSE %.3g, SNR %.1f dB\n", static_cast<long long>(weights.rows()),
                static_cast<long long>(weights.cols()), mse, 10.0 * std::log10(variance / mse));

    // Every nwc format ends with a CRC-32C of its bytes.
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(stored.data());
    const std::uint32_t checksum = nwc::crc32c({bytes, std::size_t(stored.numel()) * sizeof(nwc::half)});
    std::printf("crc32c of the float16 bytes: %08x\n", unsigned(checksum));

    // Bad input is an nwc::error with an id and a message saying what was wrong.
    try {
        (void)nwc::dtype_from_name("F8");
    } catch (const nwc::error& e) {
        std::printf("expected error: %s\n", e.what());
    }
    return 0;
}
