// nwc_make_synthetic_llama: writes a Hugging Face Llama checkpoint directory of any size with
// Gaussian BF16 weights, for measuring nwc on models larger than the real ones in the data folder
// (docs/bench/scale.md). The same options and seed always give the same bytes.
//
//   nwc_make_synthetic_llama OUT_DIR [--hidden 768] [--layers 12] [--heads 12] [--kv-heads H]
//       [--intermediate 2048] [--vocab 34000] [--untied] [--shard-size 100000000] [--seed 1]
//
// The defaults make a 111M-weight model (222 MB of BF16) in 3 shards. Weights are N(0, 0.02^2)
// (transformers' initializer_range), norm scales 1 + N(0, 0.02^2); each tensor draws from its own
// stream of the seed, so a tensor does not depend on the ones before it. Shards are split as
// write_hf_directory splits them, and each is written as its tensors are drawn (a tensor in memory
// at a time), so the size of the model is bounded by the disk only.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/half.hpp"
#include "nwc/core/random.hpp"
#include "nwc/io/hf_directory.hpp"
#include "nwc/io/safetensors_writer.hpp"

namespace {

struct Options {
    std::string output;
    nwc::llm::LlamaConfig config{.dim = 768, .hidden_dim = 2048, .n_layers = 12, .n_heads = 12, .n_kv_heads = 0, .vocab_size = 34000,
                                 .seq_len = 2048, .shared_classifier = true};
    std::uint64_t shard_bytes = 100'000'000;
    std::uint64_t seed = 1;
};

Options parse(int argc, char** argv) {
    Options options;
    const auto usage = [] {
        std::fprintf(stderr,
                     "usage: nwc_make_synthetic_llama OUT_DIR [--hidden N] [--layers N] [--heads N] [--kv-heads N] [--intermediate N]\n"
                     "       [--vocab N] [--untied] [--shard-size BYTES] [--seed S]\n");
        std::exit(2);
    };
    for (int i = 1; i < argc; ++i) {
        const std::string argument = argv[i];
        if (argument == "--untied") {
            options.config.shared_classifier = false;
            continue;
        }
        if (argument.rfind("--", 0) != 0) {
            if (!options.output.empty()) usage();
            options.output = argument;
            continue;
        }
        if (i + 1 >= argc) usage();
        char* end = nullptr;
        const unsigned long long value = std::strtoull(argv[++i], &end, 10);
        if (*end != '\0' || value == 0) usage();
        if (argument == "--hidden") options.config.dim = int(value);
        else if (argument == "--layers") options.config.n_layers = int(value);
        else if (argument == "--heads") options.config.n_heads = int(value);
        else if (argument == "--kv-heads") options.config.n_kv_heads = int(value);
        else if (argument == "--intermediate") options.config.hidden_dim = int(value);
        else if (argument == "--vocab") options.config.vocab_size = int(value);
        else if (argument == "--shard-size") options.shard_bytes = value;
        else if (argument == "--seed") options.seed = value;
        else usage();
    }
    if (options.output.empty()) usage();
    if (options.config.n_kv_heads == 0) options.config.n_kv_heads = options.config.n_heads;
    options.config.validate("nwc_make_synthetic_llama");
    return options;
}

// The BF16 bytes of tensor number `index`, drawn from its own stream.
std::vector<std::uint8_t> draw_tensor(const nwc::Random& seed, std::size_t index, const nwc::Shape& shape) {
    nwc::Random random = seed.split(index);
    const bool norm = shape.rank() == 1;
    std::vector<std::uint8_t> bytes(std::size_t(shape.numel()) * 2);
    for (std::size_t i = 0; i < bytes.size() / 2; ++i) {
        const float value = (norm ? 1.0f : 0.0f) + 0.02f * random.normal();
        const std::uint16_t bits = nwc::to_bfloat16(value).bits;
        bytes[2 * i] = std::uint8_t(bits & 0xFF);
        bytes[2 * i + 1] = std::uint8_t(bits >> 8);
    }
    return bytes;
}

void make_model(const Options& options) {
    // The tensors in checkpoint order, from LlamaWeights' names and shapes (nothing allocated).
    nwc::llm::LlamaWeights names;
    names.config = options.config;
    names.layers.resize(std::size_t(options.config.n_layers));
    std::vector<nwc::detail::SafetensorsEntry> tensors;
    names.for_each_tensor([&](const std::string& name, const nwc::Tensor<float>&, const nwc::Shape& shape) {
        tensors.push_back({name, nwc::dtype::bf16, shape});
    });
    std::vector<std::uint64_t> sizes;
    for (const auto& tensor : tensors) sizes.push_back(tensor.bytes());
    const std::vector<std::size_t> shard_of = nwc::detail::hf_shards_of(sizes, options.shard_bytes);
    const std::size_t shards = shard_of.back() + 1;

    nwc::detail::AtomicDirectory output(options.output, "writing '" + options.output + "'");
    nwc::HfDirectoryReport report;
    std::vector<std::vector<std::string>> shard_names(shards);
    const std::map<std::string, std::string> metadata{{"format", "pt"}};
    const nwc::Random seed(options.seed);
    for (std::size_t shard = 0; shard < shards; ++shard) {
        std::vector<nwc::detail::SafetensorsEntry> entries;
        std::vector<std::size_t> model_index;
        for (std::size_t k = 0; k < tensors.size(); ++k)
            if (shard_of[k] == shard) {
                entries.push_back(tensors[k]);
                model_index.push_back(k);
                shard_names[shard].push_back(tensors[k].name);
                report.tensor_bytes += sizes[k];
            }
        nwc::AtomicFileWriter file(output.path() / nwc::detail::hf_shard_name(shard, shards));
        file.write(nwc::detail::safetensors_header_bytes(entries, metadata));
        for (const std::size_t k : nwc::detail::safetensors_layout_order(entries))
            file.write(draw_tensor(seed, model_index[k], entries[k].shape));
        file.commit();
    }
    nlohmann::json config = nwc::llm::hf_config_json(options.config);
    config["torch_dtype"] = "bfloat16";
    nwc::detail::finish_hf_directory(output, config, {}, shard_names, report);
    output.commit();
    std::int64_t weights = 0;
    for (const auto& tensor : tensors) weights += tensor.shape.numel();
    std::printf("%s: %lld weights, %llu bytes of BF16 in %zu shards\n", options.output.c_str(), static_cast<long long>(weights),
                static_cast<unsigned long long>(report.tensor_bytes), shards);
}

}  // namespace

int main(int argc, char** argv) {
    try {
        make_model(parse(argc, argv));
        return 0;
    } catch (const std::exception& problem) {
        std::fprintf(stderr, "nwc_make_synthetic_llama: %s\n", problem.what());
        return 1;
    }
}
