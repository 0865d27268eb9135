// Fuzzes the safetensors reader: SafetensorsFile::from_bytes (header JSON, dtypes, shapes, offsets,
// tiling), then every tensor's raw bytes and, for F32/F16/BF16, its float32 conversion.
// Invariant on success: the raw bytes have the size the dtype and shape imply.
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/io/safetensors_reader.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
    nwc::fuzz::rejects_cleanly([&] {
        const SafetensorsFile file = SafetensorsFile::from_bytes(std::vector<std::uint8_t>(data, data + size), "fuzz safetensors");
        for (const SafetensorsTensorInfo& info : file.tensors()) {
            const auto raw = file.raw_bytes(info.name);
            NWC_FUZZ_CHECK(raw.size() == info.byte_size());
            if (is_floating_dtype(info.type)) {
                const Tensor<float> values = file.read_float32(info.name);
                NWC_FUZZ_CHECK(values.shape() == info.shape);
            }
        }
        for (const auto& [key, value] : file.metadata()) NWC_FUZZ_CHECK(!key.empty() || value.size() < size);
    });
    return 0;
}
