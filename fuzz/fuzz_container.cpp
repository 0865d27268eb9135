// Fuzzes a whole .nwc decode: ContainerReader::from_bytes, then every tensor through the method
// decoders (raw, rtn/gptq, ecsq, nwc with the codec the file embeds), with the SIMD and the scalar
// backend, then Codec::decompress_model. Invariants on success: the shape is the directory's, the
// coded tensors' values are finite, both backends agree (bit for bit except the nwc decoder
// network, whose float sums each backend orders its own way) and so does the whole-model decode.
#include <cmath>
#include <cstring>

#include "fuzz_support.hpp"
#include "nwc/pipeline/pipeline_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace nwc;
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
                decoded[index] = Codec<backend::simd>::decompress(reader, index);
                NWC_FUZZ_CHECK(decoded[index].shape() == entry.shape);
                if (entry.method != "raw") NWC_FUZZ_CHECK(nwc::fuzz::all_finite(decoded[index].values()));
                const Tensor<float> scalar = Codec<backend::scalar>::decompress(reader, index);
                if (entry.method == "nwc") {
                    // The decoder network's float sums are ordered differently per backend.
                    for (std::size_t i = 0; i < scalar.values().size(); ++i)
                        NWC_FUZZ_CHECK(std::abs(scalar.values()[i] - decoded[index].values()[i]) <= 1e-4f * (1.0f + std::abs(scalar.values()[i])));
                } else {
                    NWC_FUZZ_CHECK(std::memcmp(scalar.data(), decoded[index].data(), decoded[index].values().size() * sizeof(float)) == 0);
                }
            });
        }
        nwc::fuzz::rejects_cleanly([&] { reader.verify(); });
        if (!every_tensor_decoded) return;
        // Every tensor decodes alone; the whole-model path must then agree (or reject the metadata).
        nwc::fuzz::rejects_cleanly([&] {
            const ModelFile model = DefaultCodec::decompress_model(reader, 1);
            for (const ModelTensor& tensor : model.tensors) {
                const std::size_t index = reader.index_of(tensor.name);
                if (!tensor.is_floating()) continue;
                NWC_FUZZ_CHECK(tensor.values.values().size() == decoded[index].values().size());
                NWC_FUZZ_CHECK(std::memcmp(tensor.values.data(), decoded[index].data(), decoded[index].values().size() * sizeof(float)) == 0);
            }
        });
    });
    return 0;
}
