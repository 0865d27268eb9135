// Must NOT compile: the decode-only entry point with a backend tag that derives from no host
// backend; the one static_assert in pipeline/model_decoding.hpp says how to write one
// (tests/CMakeLists.txt checks the message).
#include "nwc/decode.hpp"

struct my_accelerator {};

int main() {
    const nwc::ContainerReader reader = nwc::ContainerReader::from_bytes(std::vector<std::uint8_t>{});
    (void)nwc::decompress_model<my_accelerator>(reader);
}
