// Writes the fuzzers' seed corpora: small valid files made by nwc's own writers, one folder per
// fuzz target (corpus/<reader>/seed_*). Deterministic (nwc::Random), so rerunning it rewrites the
// checked-in seeds byte for byte:
//     nwc_make_seeds fuzz/corpus
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "nwc/codec/codec_file.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/entropy/cdf_table_fit.hpp"
#include "nwc/entropy/compact_cdf_table.hpp"
#include "nwc/entropy/range_coder.hpp"
#include "nwc/io/safetensors_writer.hpp"
#include "nwc/io/llama2c_file.hpp"
#include "nwc/llm/tokenizer.hpp"
#include "nwc/quant/trellis_quantizer.hpp"
#include "rans_fuzz_tables.hpp"
#include "reliability_support.hpp"

namespace {

using namespace nwc;
namespace fs = std::filesystem;

void write_seed(const fs::path& folder, const std::string& name, std::span<const std::uint8_t> bytes) {
    fs::create_directories(folder);
    write_file_atomic(folder / name, bytes);
    std::printf("%8zu bytes  %s\n", bytes.size(), (folder / name).string().c_str());
}

void container_seeds(const fs::path& folder) {
    for (std::string method : {"rtn", "gptq", "ecsq", "tcq", "lossless", "nwc"})
        write_seed(folder, "seed_" + std::string(method) + ".nwc", reliability::small_container(method));
    write_seed(folder, "seed_mixed.nwc", reliability::mixed_container());
    write_seed(folder, "seed_llama2c_rope.nwc", reliability::llama2c_container_with_rope_corrections());
    write_seed(folder, "seed_source_files.nwc", reliability::container_with_source_files());
}

// fuzz_method's input: u8 method index, u16 rows - 1, u16 cols - 1, u8 segments - 1, the first
// segments' u16 sizes, u16 metadata size, metadata, payload (see fuzz/fuzz_method.cpp).
void method_seeds(const fs::path& folder) {
    const ModelFile model = reliability::small_model();
    std::uint8_t index = 0;
    [&]<class... Methods>(MethodList<Methods...>) {
        const auto seed = [&]<class M>(std::type_identity<M>) {
            if constexpr (!uses_codec_blob<M>) {
                // rtn, gptq: grid scales, and fp16 scales of 32 (the Q4_0 layout) as seeds _2, _3.
                const bool grouped = M::knob.option == std::string_view("bits");
                for (const std::size_t k : {std::size_t(0), std::size_t(1), std::size_t(2), std::size_t(3)}) {  // F32 32 x 16 and BF16 16 x 48
                    if (k >= 2 && !grouped) break;
                    const ModelTensor& tensor = model.tensors[k % 2];
                    MethodOptions options = reliability::small_options(std::string(M::name));
                    if (k >= 2) options.fp16_group_scales = true, options.group_size = 32;
                    const ContainerTensor coded = DefaultCodec(options).compress(tensor.name, tensor.values.view(), nullptr, nullptr, tensor.original_dtype);
                    ByteWriter out;
                    out.put_u8(index);
                    out.put_u16(std::uint16_t(tensor.shape[0] - 1));  // of model.tensors[k % 2]
                    out.put_u16(std::uint16_t(tensor.shape[1] - 1));
                    const std::size_t segments = std::max<std::size_t>(1, coded.segment_sizes.size());
                    out.put_u8(std::uint8_t(segments - 1));
                    for (std::size_t s = 0; s + 1 < segments; ++s) out.put_u16(std::uint16_t(coded.segment_sizes[s]));
                    out.put_u16(std::uint16_t(coded.metadata.size()));
                    out.put_bytes(coded.metadata);
                    out.put_bytes(coded.payload);
                    write_seed(folder, "seed_" + std::string(M::name) + "_" + std::to_string(k) + ".bin", out.bytes());
                }
                ++index;
            }
        };
        (seed(std::type_identity<Methods>{}), ...);
    }(BuiltinMethods{});
}

void rans_seeds(const fs::path& folder) {
    const auto& sets = fuzz::rans_table_sets();
    Random random(11);
    for (std::size_t k = 0; k < sets.size(); ++k) {
        const std::uint32_t channels = std::uint32_t(sets[k].channel_count());
        for (double outside : {0.0, 0.1}) {
            std::vector<std::int32_t> symbols(std::size_t(200 * channels));
            for (auto& symbol : symbols)
                symbol = random.uniform() < outside ? std::int32_t(random.below(2000)) - 1000 : std::int32_t(random.below(5)) - 2;
            // Short segments of 1 lane, then one long segment of 4-16 lanes; checksum and fingerprint with the escapes.
            RangeCoderOptions options;
            options.segment_size = 64 * channels;
            options.checksum = outside > 0;
            options.table_fingerprint = outside > 0;
            for (std::uint32_t segment_size : {64 * channels, 8192 * channels}) {
                options.segment_size = segment_size;
                const std::size_t count = segment_size > 64 * channels ? 8192 * channels : 200 * channels;
                std::vector<std::int32_t> segment_symbols(count);
                for (std::size_t i = 0; i < count; ++i) segment_symbols[i] = symbols[i % symbols.size()];
                std::vector<std::uint8_t> input{std::uint8_t(k)};
                const std::vector<std::uint8_t> stream = rans::encode(segment_symbols, sets[k], options);
                input.insert(input.end(), stream.begin(), stream.end());
                write_seed(folder, "seed_tables" + std::to_string(k) + (outside > 0 ? "_escapes" : "") + (count > symbols.size() ? "_long" : "") + ".rans",
                           input);
            }
        }
    }
}

void trellis_code_seeds(const fs::path& folder) {
    Random random(5);
    int index = 0;
    for (int states : {4, 8, 256})
        for (bool escapes : {false, true}) {
            TrellisQuantizerOptions options;
            options.states = states;
            options.segment_size = 256;
            options.fit_passes = 1;
            options.table_precision = 12 + index % 3;
            std::vector<float> values(std::size_t(700 + 37 * index));
            for (float& value : values) value = 5.0f * random.normal();
            if (escapes) values[3] = 500.0f, values[100] = -900.0f;
            TrellisQuantizer quantizer(options);
            quantizer.fit(values);
            const TrellisCode code = TrellisCode::encode(quantizer.quantize_stream(values), quantizer.trellis(), options.table_precision,
                                                         options.segment_size);
            ByteWriter writer;
            code.write(writer);
            write_seed(folder, "seed_" + std::to_string(states) + "_states" + (escapes ? "_escapes" : "") + ".tcq", writer.bytes());
            ++index;
        }
}

void compact_table_seeds(const fs::path& folder) {
    Random random(12);
    // The three kinds: small heavy-tailed counts (fit_compact_table picks parametric), large bimodal
    // counts (code lengths), and an arbitrary table kept exactly.
    for (std::size_t samples : {2000u, 400000u}) {
        std::vector<std::uint64_t> counts(41);
        for (std::size_t i = 0; i < samples; ++i) {
            const double value = samples < 10000 ? 3.0 * random.normal() * random.normal() : 3.0 * random.normal() + (random.below(3) == 0 ? 9.0 : 0.0);
            ++counts[std::size_t(std::clamp(20 + std::lround(value), 0l, 40l))];
        }
        const CompactTableFit fit = fit_compact_table(-20, counts);
        ByteWriter writer;
        writer.put_u8(0);
        fit.compact.write(writer);
        write_seed(folder, "seed_" + std::to_string(samples) + (fit.compact.kind == CompactCdfTable::Kind::parametric ? "_parametric" : "_code_lengths") + ".bin",
                   writer.bytes());
    }
    ByteWriter exact;
    exact.put_u8(0);
    CompactCdfTable::exact(CdfTable::from_probabilities(-3, std::vector<double>{0.1, 0.2, 0.4, 0.2, 0.1}, 0.01, 14)).write(exact);
    write_seed(folder, "seed_frequencies.bin", exact.bytes());
    ByteWriter set;
    set.put_u8(1);
    write_compact(fuzz::rans_table_sets()[2], set);
    write_seed(folder, "seed_set.bin", set.bytes());
}

void codec_seeds(const fs::path& folder) {
    const auto codec = reliability::tiny_random_codec();
    write_seed(folder, "seed_codec.nwcc", serialize_codec(*codec));
    write_seed(folder, "seed_decoder.bin", serialize_codec_decoder(codec->decoder()));
}

void safetensors_seeds(const fs::path& folder) {
    SafetensorsWriter writer;
    for (const ModelTensor& tensor : reliability::small_model().tensors) {
        if (tensor.is_floating()) writer.add_float32(tensor.name, tensor.values.view(), tensor.original_dtype);
        else writer.add_raw(tensor.name, tensor.original_dtype, tensor.shape, tensor.raw_bytes);
    }
    writer.set_metadata("format", "pt");
    write_seed(folder, "seed_small.safetensors", writer.serialize());
    SafetensorsWriter f16;
    Tensor<float> values(Shape{3, 5}, 0.25f);
    f16.add_float32("a", values.view(), dtype::f16);
    f16.add_raw("b", dtype::u8, Shape{7}, std::vector<std::uint8_t>(7, 9));
    write_seed(folder, "seed_f16_u8.safetensors", f16.serialize());
}

void llama2c_seeds(const fs::path& folder) {
    write_seed(folder, "seed_shared.bin", reliability::tiny_llama2c(true));
    write_seed(folder, "seed_gqa_classifier.bin", reliability::tiny_llama2c(false));
}

void tokenizer_seeds(const fs::path& folder) {
    std::vector<std::string> pieces{"<unk>", "\n<s>\n", "\n</s>\n"};
    for (int byte = 0; byte < 256; ++byte) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", byte);
        pieces.push_back(name);
    }
    for (const char* piece : {" ", "e", "t", "a", "o", "n", "h", " t", "th", " th", " the", "he", "in", " a", "on", "ce", " up", "up", "O", "On",
                              "Once", " upon", " time", "ti", "me", ",", "."})
        pieces.push_back(piece);
    ByteWriter writer;
    std::int32_t longest = 1;
    for (const auto& piece : pieces) longest = std::max(longest, std::int32_t(piece.size()));
    writer.put_i32(longest);
    for (std::size_t id = 0; id < pieces.size(); ++id) {
        writer.put_f32(id < 259 ? 0.0f : -float(id - 259));
        writer.put_i32(std::int32_t(pieces[id].size()));
        writer.put_bytes({reinterpret_cast<const std::uint8_t*>(pieces[id].data()), pieces[id].size()});
    }
    const std::vector<std::uint8_t> bytes = writer.take();
    (void)llm::Tokenizer::parse(bytes, -1, "seed tokenizer");  // the seed must be valid
    write_seed(folder, "seed_small.bin", bytes);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: nwc_make_seeds CORPUS_FOLDER   (writes CORPUS_FOLDER/<reader>/seed_*)\n");
        return 2;
    }
    try {
        const fs::path root = argv[1];
        container_seeds(root / "container");
        method_seeds(root / "method");
        rans_seeds(root / "rans");
        trellis_code_seeds(root / "trellis_code");
        compact_table_seeds(root / "compact_cdf_table");
        codec_seeds(root / "codec_file");
        safetensors_seeds(root / "safetensors");
        llama2c_seeds(root / "llama2c");
        tokenizer_seeds(root / "tokenizer");
    } catch (const nwc::error& error) {
        std::fprintf(stderr, "nwc_make_seeds: %s\n", error.what());
        return 1;
    }
    return 0;
}
