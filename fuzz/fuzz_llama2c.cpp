// Fuzzes the llama2.c model reader: parse_llama2c (header, limits, exact file size). Invariant on
// success: writing the model back gives the input bytes (the format has one encoding).
#include <cstring>

#include "fuzz_support.hpp"
#include "nwc/io/llama2c_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    nwc::fuzz::rejects_cleanly([&] {
        const nwc::llm::Llama2cModel model = nwc::llm::parse_llama2c(std::span<const std::uint8_t>(data, size), "fuzz llama2.c model");
        const std::vector<std::uint8_t> written = nwc::llm::serialize_llama2c(model);
        NWC_FUZZ_CHECK(written.size() == size && std::memcmp(written.data(), data, size) == 0);
    });
    return 0;
}
