// Fuzzes the codec formats: parse_codec (a .nwcc codec file, encoder included) and
// parse_codec_decoder (the decoder half a container embeds), then a decode of a few chunks at
// every level through the parsed decoder. Invariant on success: the output has the chunk shape.
#include <vector>

#include "fuzz_support.hpp"
#include "nwc/codec/codec_file.hpp"

namespace {

void decode_a_few_chunks(const nwc::NeuralDecoder& decoder) {
    const nwc::CodecArchitecture& architecture = decoder.architecture();
    const std::size_t count = std::size_t(architecture.levels);
    std::vector<std::int32_t> symbols(count * std::size_t(architecture.latents));
    for (std::size_t i = 0; i < symbols.size(); ++i) symbols[i] = std::int32_t(i % 5) - 2;
    std::vector<std::uint8_t> levels(count);
    for (std::size_t i = 0; i < count; ++i) levels[i] = std::uint8_t(i);
    nwc::Tensor<float> chunks(nwc::Shape{std::int64_t(count), architecture.chunk_size});
    decoder.decode(symbols, levels, chunks.view());
    NWC_FUZZ_CHECK(chunks.values().size() == count * std::size_t(architecture.chunk_size));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::uint8_t> bytes(data, size);
    nwc::fuzz::rejects_cleanly([&] {
        const nwc::NeuralCodec codec = nwc::parse_codec(bytes, "fuzz codec file");
        decode_a_few_chunks(codec.decoder());
    });
    nwc::fuzz::rejects_cleanly([&] { decode_a_few_chunks(nwc::parse_codec_decoder(bytes, "fuzz codec decoder")); });
    return 0;
}
