// Consumer of a fetched nwc: builds a tensor, narrows it to half and bfloat16 and checks the values.
// The decode-only entry header (<nwc/decode.hpp>) here; the installed consumer (find_package)
// compiles the umbrella <nwc/nwc.hpp>, so every header is checked to be installed and usable.
#include <nwc/decode.hpp>

#include <cstdio>
#include <vector>

int main() {
    const nwc::Shape shape{2, 3};
    nwc::Tensor<float> weights(shape, std::vector<float>{1.0f, -2.0f, 0.1f, 3.0f, 65520.0f, 1.0f / 3.0f});
    nwc::Tensor<nwc::half> as_half(shape);
    nwc::Tensor<nwc::bfloat16> as_bfloat16(shape);
    nwc::convert<float, nwc::half>(weights.view(), as_half.view());
    nwc::convert<float, nwc::bfloat16>(weights.view(), as_bfloat16.view());

    const std::uint16_t expected_half[] = {0x3C00, 0xC000, 0x2E66, 0x4200, 0x7C00, 0x3555};  // 65520 overflows to inf
    const std::uint16_t expected_bfloat16[] = {0x3F80, 0xC000, 0x3DCD, 0x4040, 0x4780, 0x3EAB};
    for (std::int64_t i = 0; i < weights.numel(); ++i) {
        if (as_half[i].bits != expected_half[i] || as_bfloat16[i].bits != expected_bfloat16[i]) {
            std::printf("element %lld: half %04x (expected %04x), bfloat16 %04x (expected %04x)\n", static_cast<long long>(i),
                        unsigned(as_half[i].bits), unsigned(expected_half[i]), unsigned(as_bfloat16[i].bits),
                        unsigned(expected_bfloat16[i]));
            return 1;
        }
    }
    if (weights.rows() != 2 || weights.cols() != 3 || weights.matrix().row(1).sum() != 3.0f + 65520.0f + 1.0f / 3.0f) {
        std::printf("tensor shape or matrix view is wrong\n");
        return 1;
    }
    std::printf("nwc %s via FetchContent: ok\n", nwc::version_string);
    return 0;
}
