// Llama models in Hugging Face's layout: config.json + model.safetensors (or sharded files listed
// in model.safetensors.index.json), names as transformers' LlamaForCausalLM saves them.
//
// Read me first -- RoPE row order. transformers' Llama applies RoPE with `rotate_half`, pairing
// dimensions (i, i + head_size/2) of every head, while llama2.c (and Meta's checkpoints) pair
// (2i, 2i+1). transformers' convert_llama_weights_to_hf.py therefore permutes the rows of q_proj
// and k_proj within every head: HF row j * head_size/2 + r holds Meta row 2r + j. This file does
// the same on write and the inverse on read, so a model written here runs unchanged in
// transformers, a real HF checkpoint reads back into llama2.c's convention, and write -> read
// gives back the same floats (a permutation moves values, it never rounds them).
//
// The functions keep the nwc::llm namespace of the LlamaWeights they read and write; the header
// lives in io/ with the other file formats (docs/ARCHITECTURE.md, dependency order).
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "nwc/core/error.hpp"
#include "nwc/core/file_io.hpp"
#include "nwc/core/tensor.hpp"
#include "nwc/io/safetensors.hpp"
#include "nwc/llm/llama_weights.hpp"

namespace nwc::llm {

/// Largest config.json / index file read, in bytes.
inline constexpr std::size_t hf_max_json_bytes = 16 << 20;

/// Rows of a q/k projection [heads * head_size, in] from llama2.c's order to HF's rotate_half order.
inline Tensor<float> permute_rows_to_hf(TensorView<const float> weight, int heads) {
    NWC_ASSERT(heads > 0 && weight.rows() % (2 * heads) == 0);
    const std::int64_t head_size = weight.rows() / heads, half = head_size / 2, cols = weight.cols();
    Tensor<float> result(weight.shape());
    for (std::int64_t head = 0; head < heads; ++head)
        for (std::int64_t r = 0; r < half; ++r)
            for (std::int64_t j = 0; j < 2; ++j)
                std::copy_n(weight.data() + (head * head_size + 2 * r + j) * cols, cols, result.data() + (head * head_size + j * half + r) * cols);
    return result;
}

/// The inverse of permute_rows_to_hf.
inline Tensor<float> permute_rows_from_hf(TensorView<const float> weight, int heads) {
    NWC_ASSERT(heads > 0 && weight.rows() % (2 * heads) == 0);
    const std::int64_t head_size = weight.rows() / heads, half = head_size / 2, cols = weight.cols();
    Tensor<float> result(weight.shape());
    for (std::int64_t head = 0; head < heads; ++head)
        for (std::int64_t r = 0; r < half; ++r)
            for (std::int64_t j = 0; j < 2; ++j)
                std::copy_n(weight.data() + (head * head_size + j * half + r) * cols, cols, result.data() + (head * head_size + 2 * r + j) * cols);
    return result;
}

namespace detail {

inline nlohmann::json read_json_file(const std::filesystem::path& path) {
    MappedFile file(path);
    require(file.size() <= hf_max_json_bytes, errc::limit, "'", path.string(), "': ", file.size(), " bytes exceeds ", hf_max_json_bytes);
    const char* text = reinterpret_cast<const char*>(file.bytes().data());
    nlohmann::json root = nlohmann::json::parse(text, text + file.size(), nullptr, /*allow_exceptions=*/false);
    require(!root.is_discarded() && root.is_object(), errc::corrupt, "'", path.string(), "' is not a JSON object");
    return root;
}

/// A float as the shortest decimal that reads back as the same float (1e-05, not 9.99999974e-06).
inline double shortest_double(float value) {
    char buffer[32];
    const auto end = std::to_chars(buffer, buffer + sizeof buffer, value).ptr;
    double result = 0.0;
    std::from_chars(buffer, end, result);
    return result;
}

/// Which q/k permutation a tensor name needs: the head count, or 0 for none.
inline int rope_heads_of(const LlamaConfig& config, std::string_view name) {
    if (name.ends_with("self_attn.q_proj.weight")) return config.n_heads;
    if (name.ends_with("self_attn.k_proj.weight")) return config.n_kv_heads;
    return 0;
}

}  // namespace detail

/// config.json of a LlamaForCausalLM with this configuration (float32 weights).
inline nlohmann::json hf_config_json(const LlamaConfig& config) {
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"hidden_size", config.dim},
            {"intermediate_size", config.hidden_dim},
            {"num_hidden_layers", config.n_layers},
            {"num_attention_heads", config.n_heads},
            {"num_key_value_heads", config.n_kv_heads},
            {"vocab_size", config.vocab_size},
            {"max_position_embeddings", config.seq_len},
            {"rms_norm_eps", detail::shortest_double(config.norm_eps)},
            {"rope_theta", detail::shortest_double(config.rope_theta)},
            {"tie_word_embeddings", config.shared_classifier},
            {"hidden_act", "silu"},
            {"attention_bias", false},
            {"mlp_bias", false},
            {"bos_token_id", 1},
            {"eos_token_id", 2},
            {"torch_dtype", "float32"}};
}

/// Parses a LlamaForCausalLM config.json; errc::unsupported for features this forward pass lacks
/// (rope_scaling, biases, another activation), errc::corrupt for missing or mistyped fields.
inline LlamaConfig parse_hf_config(const nlohmann::json& root, std::string_view context) {
    require(root.is_object(), errc::corrupt, context, ": not a JSON object");
    auto integer = [&](const char* key, std::optional<int> fallback = std::nullopt) -> int {
        const auto found = root.find(key);
        if (found == root.end() || found->is_null()) {
            require(fallback.has_value(), errc::corrupt, context, ": \"", key, "\" is missing");
            return *fallback;
        }
        require(found->is_number_integer(), errc::corrupt, context, ": \"", key, "\" must be an integer, not ", found->dump());
        const std::int64_t value = found->get<std::int64_t>();
        require(value > 0 && value <= (std::int64_t(1) << 30), errc::corrupt, context, ": \"", key, "\" is ", value);
        return int(value);
    };
    auto number = [&](const char* key, double fallback) -> float {
        const auto found = root.find(key);
        if (found == root.end() || found->is_null()) return float(fallback);
        require(found->is_number(), errc::corrupt, context, ": \"", key, "\" must be a number, not ", found->dump());
        return float(found->get<double>());
    };
    auto flag = [&](const char* key, bool fallback) -> bool {
        const auto found = root.find(key);
        if (found == root.end() || found->is_null()) return fallback;
        require(found->is_boolean(), errc::corrupt, context, ": \"", key, "\" must be true or false, not ", found->dump());
        return found->get<bool>();
    };
    // Mistral's layout and forward pass are Llama's; only its sliding window differs, and no
    // window nwc runs is longer than seq_len, which is capped at the window below.
    const auto type = root.find("model_type");
    const bool mistral = type != root.end() && *type == "mistral";
    if (type != root.end())
        require(*type == "llama" || mistral, errc::unsupported, context, ": model_type ", type->dump(), " is not \"llama\" or \"mistral\"");
    if (const auto act = root.find("hidden_act"); act != root.end())
        require(*act == "silu", errc::unsupported, context, ": hidden_act ", act->dump(), " (only silu is supported)");
    if (const auto scaling = root.find("rope_scaling"); scaling != root.end())
        require(scaling->is_null(), errc::unsupported, context, ": rope_scaling ", scaling->dump(), " is not supported");
    require(!flag("attention_bias", false) && !flag("mlp_bias", false), errc::unsupported, context, ": biases are not supported");
    LlamaConfig config;
    config.dim = integer("hidden_size");
    config.hidden_dim = integer("intermediate_size");
    config.n_layers = integer("num_hidden_layers");
    config.n_heads = integer("num_attention_heads");
    config.n_kv_heads = integer("num_key_value_heads", config.n_heads);
    config.vocab_size = integer("vocab_size");
    config.seq_len = integer("max_position_embeddings", 2048);
    config.norm_eps = number("rms_norm_eps", 1e-6);  // transformers' LlamaConfig defaults
    config.rope_theta = number("rope_theta", 10000.0);
    if (mistral) {
        if (const auto window = root.find("sliding_window"); window != root.end() && !window->is_null())
            config.seq_len = std::min(config.seq_len, integer("sliding_window"));
    }
    config.shared_classifier = flag("tie_word_embeddings", false);
    if (const auto head_dim = root.find("head_dim"); head_dim != root.end() && !head_dim->is_null())
        require(*head_dim == config.dim / std::max(config.n_heads, 1), errc::unsupported, context, ": head_dim ", head_dim->dump(),
                " differs from hidden_size / num_attention_heads");
    config.validate(context);
    return config;
}

/// "Qwen2ForCausalLM (model_type \"qwen2\")": how config.json names its architecture, for messages.
inline std::string hf_architecture_name(const nlohmann::json& config) {
    std::string name;
    if (const auto list = config.find("architectures"); list != config.end() && list->is_array())
        for (const auto& entry : *list)
            if (entry.is_string()) name += (name.empty() ? "" : ", ") + entry.get<std::string>();
    if (const auto type = config.find("model_type"); type != config.end())
        name += (name.empty() ? "model_type " : " (model_type ") + type->dump() + (name.empty() ? "" : ")");
    return name.empty() ? std::string("an unnamed architecture") : name;
}

/// Why nwc cannot run the forward pass of the model config.json describes (Qwen2's q/k/v biases,
/// Qwen3's q_norm/k_norm, Gemma's activation and norms, rope_scaling, ...): parse_hf_config's
/// errc::unsupported message; nullopt when it can (Llama, Mistral). Missing or mistyped fields
/// of a Llama config still throw errc::corrupt.
inline std::optional<std::string> hf_forward_pass_missing(const nlohmann::json& config, std::string_view context) {
    try {
        parse_hf_config(config, context);
        return std::nullopt;
    } catch (const error& problem) {
        if (problem.id() != errc::unsupported) throw;
        return problem.message();
    }
}

/// Writes `weights` as `directory`/config.json + `directory`/model.safetensors (creating the
/// directory), q/k rows permuted to HF's order, values stored as `stored_as` (F32, F16, BF16).
/// Each file is written atomically.
inline void write_hf_llama(const std::filesystem::path& directory, const LlamaWeights& weights, dtype stored_as = dtype::f32) {
    weights.validate_shapes("hf writer");
    std::error_code problem;
    std::filesystem::create_directories(directory, problem);
    require(!problem, errc::io, "cannot create directory '", directory.string(), "': ", problem.message());
    SafetensorsWriter writer;
    writer.set_metadata("format", "pt");
    weights.for_each_tensor([&](const std::string& name, const Tensor<float>& tensor, const Shape&) {
        if (const int heads = detail::rope_heads_of(weights.config, name); heads > 0)
            writer.add_float32(name, permute_rows_to_hf(tensor.view(), heads).view(), stored_as);
        else
            writer.add_float32(name, tensor.view(), stored_as);
    });
    writer.write(directory / "model.safetensors");
    nlohmann::json config = hf_config_json(weights.config);
    config["torch_dtype"] = stored_as == dtype::f32 ? "float32" : stored_as == dtype::f16 ? "float16" : "bfloat16";
    const std::string text = config.dump(2) + "\n";
    write_file_atomic(directory / "config.json", {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

/// The files of an HF model: its config.json and its safetensors shards, in reading order.
struct HfModelFiles {
    std::filesystem::path config;
    std::vector<std::filesystem::path> shards;  ///< the file given, model.safetensors, or the index's files by name
    std::map<std::string, std::string> weight_map;  ///< tensor -> shard file name, from the index (empty without one)

    /// errc::corrupt, naming the file and the tensor, unless every tensor of `shard` (a file of
    /// `shards`) is where the index puts it.
    void check_placement(const std::filesystem::path& shard_path, const SafetensorsFile& shard) const {
        if (weight_map.empty()) return;
        const std::string file = shard_path.filename().string();
        for (const auto& info : shard.tensors()) {
            const auto entry = weight_map.find(info.name);
            require(entry != weight_map.end(), errc::corrupt, "'", shard_path.string(), "': tensor '", info.name, "' is not in the index");
            require(entry->second == file, errc::corrupt, "'", shard_path.string(), "': tensor '", info.name, "' is in this shard, the index puts it in '",
                    entry->second, "'");
        }
    }
    /// errc::corrupt for a tensor the index lists that no shard held (`was_read(name)` says).
    template <class WasRead>
    void check_complete(WasRead&& was_read) const {
        for (const auto& [name, file] : weight_map)
            require(was_read(name), errc::corrupt, "'", (config.parent_path() / "model.safetensors.index.json").string(), "': tensor '", name,
                    "' is listed in '", file, "', which does not hold it");
    }
};

/// The files of the HF model at `path`: a directory (config.json plus model.safetensors or a
/// model.safetensors.index.json) or a .safetensors file with config.json beside it. errc::io when
/// config.json or the weights are missing, errc::corrupt for a bad index (shard names must be
/// plain file names: an index cannot point outside its directory).
inline HfModelFiles hf_model_files(const std::filesystem::path& path) {
    const bool is_directory = std::filesystem::is_directory(path);
    std::filesystem::path directory = is_directory ? path : path.parent_path();
    if (directory.empty()) directory = ".";
    HfModelFiles files{directory / "config.json", {}, {}};
    require(std::filesystem::exists(files.config), errc::io, "'", files.config.string(), "' not found (an HF model needs its config.json)");
    if (!is_directory) {
        files.shards.push_back(path);
    } else if (std::filesystem::exists(directory / "model.safetensors")) {
        files.shards.push_back(directory / "model.safetensors");
    } else {
        const auto index_path = directory / "model.safetensors.index.json";
        require(std::filesystem::exists(index_path), errc::io, "'", directory.string(), "' has neither model.safetensors nor model.safetensors.index.json");
        const nlohmann::json index = detail::read_json_file(index_path);
        const auto map = index.find("weight_map");
        require(map != index.end() && map->is_object(), errc::corrupt, "'", index_path.string(), "': no \"weight_map\" object");
        std::set<std::string> names;
        for (const auto& [name, file] : map->items()) {
            require(file.is_string(), errc::corrupt, "'", index_path.string(), "': weight_map[\"", name, "\"] is not a file name");
            const std::string& file_name = file.get_ref<const std::string&>();
            require(!file_name.empty() && file_name.find('/') == std::string::npos && file_name.find('\\') == std::string::npos && file_name != "..",
                    errc::corrupt, "'", index_path.string(), "': shard name '", file_name, "' must be a plain file name");
            names.insert(file_name);
            files.weight_map.emplace(name, file_name);
        }
        for (const auto& name : names) files.shards.push_back(directory / name);
    }
    return files;
}

/// Puts HF-named tensors into LlamaWeights, undoing the q/k permutation: the one mapping of every
/// reader of the layout (read_hf_llama here, llama_weights_of in model_file.hpp). What is not a
/// weight (rotary_emb.inv_freq buffers, a tied model's redundant lm_head.weight) is skipped;
/// foreign names are errc::unsupported, repeats, wrong shapes and missing tensors errc::corrupt.
class HfWeightsAssembler {
public:
    explicit HfWeightsAssembler(const LlamaConfig& config) : m_weights(LlamaWeights::zeros(config)) {}

    /// False for the buffers the checkpoint may carry that are not weights.
    bool is_weight(std::string_view name) const {
        return !name.ends_with("rotary_emb.inv_freq") && !(m_weights.config.shared_classifier && name == "lm_head.weight");
    }

    /// Checks `name` and `shape` against the config, then stores read() (a Tensor<float> in HF row
    /// order); the values are read only once the name and shape are known to be right.
    template <class Read>
    void add(const std::string& name, const Shape& shape, Read&& read, std::string_view context) {
        require(m_weights.contains(name), errc::unsupported, context, ": tensor '", name, "' is not part of a Llama model");
        require(m_loaded.insert(name).second, errc::corrupt, context, ": tensor '", name, "' appears twice");
        Tensor<float>& target = m_weights.tensor(name);
        require(shape == target.shape(), errc::corrupt, context, ": tensor '", name, "' has ", LlamaWeights::describe(shape),
                ", config.json implies ", LlamaWeights::describe(target.shape()));
        Tensor<float> values = read();
        const int heads = detail::rope_heads_of(m_weights.config, name);
        target = heads > 0 ? permute_rows_from_hf(values.view(), heads) : std::move(values);
    }

    /// The weights; errc::corrupt naming `context` if a tensor never came.
    LlamaWeights finish(std::string_view context) && {
        m_weights.for_each_tensor([&](const std::string& name, const Tensor<float>&, const Shape&) {
            require(m_loaded.contains(name), errc::corrupt, context, ": tensor '", name, "' is missing");
        });
        return std::move(m_weights);
    }

private:
    LlamaWeights m_weights;
    std::set<std::string> m_loaded;
};

/// Reads the weights of a Llama model in HF layout (see hf_model_files for what `path` may be).
/// To open a model whatever its format, use load_model_file or read_llama_weights (model_file.hpp).
inline LlamaWeights read_hf_llama(const std::filesystem::path& path) {
    const HfModelFiles files = hf_model_files(path);
    HfWeightsAssembler assembler(parse_hf_config(detail::read_json_file(files.config), nwc::detail::concat("'", files.config.string(), "'")));
    std::set<std::string> names_read;
    for (const auto& shard_path : files.shards) {
        const SafetensorsFile shard = SafetensorsFile::open(shard_path);
        files.check_placement(shard_path, shard);
        const std::string context = nwc::detail::concat("'", shard_path.string(), "'");
        for (const auto& info : shard.tensors())
            if (assembler.is_weight(info.name)) assembler.add(info.name, info.shape, [&] { return shard.read_float32(info.name); }, context);
        for (const auto& info : shard.tensors()) names_read.insert(info.name);
    }
    files.check_complete([&](const std::string& name) { return names_read.contains(name); });
    return std::move(assembler).finish(nwc::detail::concat("HF model '", path.string(), "'"));
}

}  // namespace nwc::llm
