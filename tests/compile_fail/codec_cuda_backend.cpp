// Must NOT compile: Codec<backend::cuda> decodes into host tensors, which the CUDA backend does
// not do; the static_assert in pipeline_codec.hpp names the CUDA entry point instead
// (tests/CMakeLists.txt checks the message).
#include "nwc/pipeline/pipeline_codec.hpp"

int main() {
    const nwc::Codec<nwc::backend::cuda> codec;
    (void)codec;
}
