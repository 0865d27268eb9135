// Must NOT compile: a backend tag that derives from no host backend has no kernels; the one
// static_assert in pipeline_codec.hpp says how to write one (tests/CMakeLists.txt checks the message).
#include "nwc/pipeline/pipeline_codec.hpp"

struct my_accelerator {};

int main() {
    const nwc::Codec<my_accelerator> codec;
    (void)codec;
}
