// Fuzzes a whole .nwc decode: ContainerReader::from_bytes, then every tensor through the decoding
// halves of the built-in methods (nwc::decompress_tensor: raw, rtn/gptq, ecsq, tcq, nwc with the
// codec the file embeds, lossless), with the SIMD and the scalar backend, then
// nwc::decompress_model and the streamed decode to a .safetensors file
// (StreamingDecompressor, what `nwc decompress` runs). Invariants on success: the shape is the
// directory's, the coded tensors' values are finite, both backends agree (bit for bit except the
// nwc decoder network, whose float sums each backend orders its own way) and so does the
// whole-model decode; the streamed file is byte for byte the in-memory one, and when one path
// rejects the file so does the other, leaving no output.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/io/model_file.hpp"
#include "nwc/pipeline/model_decoding.hpp"
#include "nwc/pipeline/streaming_decompress.hpp"

namespace {
// The output files of this process (the fuzzers of scripts/test.sh run side by side), removed at exit.
struct ScratchDirectory {
    std::filesystem::path path = std::filesystem::temp_directory_path() / ("nwc_fuzz_container_" + std::to_string(::getpid()));
    ScratchDirectory() { std::filesystem::create_directories(path); }
    ~ScratchDirectory() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
    static const ScratchDirectory scratch_directory;
    const std::filesystem::path& scratch = scratch_directory.path;
    nwc::fuzz::rejects_cleanly([&] {
        const ContainerReader reader = ContainerReader::from_bytes(std::span<const std::uint8_t>(data, size), "fuzz container");
        bool every_tensor_decoded = true;
        std::vector<Tensor<float>> decoded(reader.tensor_count());
        for (std::size_t index = 0; index < reader.tensor_count(); ++index) {
            const ContainerEntry& entry = reader.entry(index);
            if (entry.method == "raw" && !is_floating_dtype(entry.original_dtype)) {
                every_tensor_decoded &= nwc::fuzz::rejects_cleanly([&] { reader.payload(index); });
                continue;
            }
            every_tensor_decoded &= nwc::fuzz::rejects_cleanly([&] {
                decoded[index] = decompress_tensor<backend::simd>(reader, index);
                NWC_FUZZ_CHECK(decoded[index].shape() == entry.shape);
                if (entry.method != "raw") NWC_FUZZ_CHECK(nwc::fuzz::all_finite(decoded[index].values()));
                const Tensor<float> scalar = decompress_tensor<backend::scalar>(reader, index);
                if (entry.method == "nwc") {
                    // The decoder network's float sums are ordered differently per backend, so the
                    // two agree to rounding of the network's activations, whose size follows the
                    // tensor's largest weight, not each weight's own (a weight of 0.36 next to larger
                    // ones differed by 1.0e-4 of itself: fuzz/corpus/container/crash-nwc-rounding).
                    float largest = 0.0f;
                    for (float value : scalar.values()) largest = std::max(largest, std::abs(value));
                    for (std::size_t i = 0; i < scalar.values().size(); ++i)
                        NWC_FUZZ_CHECK(std::abs(scalar.values()[i] - decoded[index].values()[i]) <= 1e-4f * (1.0f + largest));
                } else {
                    NWC_FUZZ_CHECK(std::memcmp(scalar.data(), decoded[index].data(), decoded[index].values().size() * sizeof(float)) == 0);
                }
            });
        }
        nwc::fuzz::rejects_cleanly([&] { reader.verify(); });
        if (!every_tensor_decoded) return;
        // Every tensor decodes alone; the whole-model path must then agree (or reject the metadata).
        const std::filesystem::path in_memory = scratch / "in_memory.safetensors", streamed = scratch / "streamed.safetensors";
        const bool written = nwc::fuzz::rejects_cleanly([&] {
            const ModelFile model = decompress_model(reader, 1);
            for (const ModelTensor& tensor : model.tensors) {
                const std::size_t index = reader.index_of(tensor.name);
                if (!tensor.is_floating()) continue;
                NWC_FUZZ_CHECK(tensor.values.values().size() == decoded[index].values().size());
                NWC_FUZZ_CHECK(std::memcmp(tensor.values.data(), decoded[index].data(), decoded[index].values().size() * sizeof(float)) == 0);
            }
            write_model_file(model, in_memory);
        });
        // `nwc decompress` to a .safetensors streams: the same bytes, or the same rejection with
        // nothing left behind.
        const bool streamed_ok = nwc::fuzz::rejects_cleanly([&] { StreamingDecompressor<>(reader).write_safetensors(streamed, 1); });
        NWC_FUZZ_CHECK(streamed_ok == written);
        NWC_FUZZ_CHECK(std::filesystem::exists(streamed) == streamed_ok);
        if (written) NWC_FUZZ_CHECK(read_file(in_memory) == read_file(streamed));
        std::filesystem::remove(in_memory);
        std::filesystem::remove(streamed);
    });
    return 0;
}
