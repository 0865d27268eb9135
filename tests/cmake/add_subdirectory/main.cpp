// Consumer of a vendored nwc: checks CRC-32C's published check value and half conversions.
// The decode-only entry header (<nwc/decode.hpp>) here; the installed consumer (find_package)
// compiles the umbrella <nwc/nwc.hpp>, so every header is checked to be installed and usable.
#include <nwc/decode.hpp>

#include <cstdio>
#include <string_view>

int main() {
    constexpr std::string_view check_input = "123456789";
    const auto crc = nwc::crc32c({reinterpret_cast<const std::uint8_t*>(check_input.data()), check_input.size()});
    if (crc != 0xE3069283u) {
        std::printf("crc32c(\"123456789\") = %08x, expected e3069283\n", unsigned(crc));
        return 1;
    }
    // 65504 is the largest half; 1 + 2^-11 is a tie that rounds to even (down to 1).
    if (nwc::to_half(65504.0f).bits != 0x7BFF || nwc::to_half(1.00048828125f).bits != 0x3C00 ||
        nwc::to_float(nwc::half{0x3555}) != 0.333251953125f) {
        std::printf("half conversion gave a wrong result\n");
        return 1;
    }
    std::printf("nwc %s via add_subdirectory: ok\n", nwc::version_string);
    return 0;
}
