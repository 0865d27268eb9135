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
    if (const auto type = root.find("model_type"); type != root.end())
        require(*type == "llama", errc::unsupported, context, ": model_type ", type->dump(), " is not \"llama\"");
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
    config.shared_classifier = flag("tie_word_embeddings", false);
    if (const auto head_dim = root.find("head_dim"); head_dim != root.end() && !head_dim->is_null())
        require(*head_dim == config.dim / std::max(config.n_heads, 1), errc::unsupported, context, ": head_dim ", head_dim->dump(),
                " differs from hidden_size / num_attention_heads");
    config.validate(context);
    return config;
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

/// Reads a Llama model in HF layout from a directory (config.json plus model.safetensors or
/// model.safetensors.index.json) or from a .safetensors file with config.json beside it.
/// Every expected tensor must be present with its shape; extra tensors are errc::unsupported
/// except rotary_emb.inv_freq buffers and a redundant lm_head.weight of a tied model.
inline LlamaWeights read_hf_llama(const std::filesystem::path& path) {
    const bool is_directory = std::filesystem::is_directory(path);
    const std::filesystem::path directory = is_directory ? path : path.parent_path();
    const std::filesystem::path config_path = (directory.empty() ? std::filesystem::path(".") : directory) / "config.json";
    require(std::filesystem::exists(config_path), errc::io, "'", config_path.string(), "' not found (an HF model needs its config.json)");
    const LlamaConfig config = parse_hf_config(detail::read_json_file(config_path), nwc::detail::concat("'", config_path.string(), "'"));

    std::vector<std::filesystem::path> shard_paths;
    if (!is_directory) {
        shard_paths.push_back(path);
    } else if (std::filesystem::exists(directory / "model.safetensors")) {
        shard_paths.push_back(directory / "model.safetensors");
    } else {
        const auto index_path = directory / "model.safetensors.index.json";
        require(std::filesystem::exists(index_path), errc::io, "'", directory.string(), "' has neither model.safetensors nor model.safetensors.index.json");
        const nlohmann::json index = detail::read_json_file(index_path);
        const auto map = index.find("weight_map");
        require(map != index.end() && map->is_object(), errc::corrupt, "'", index_path.string(), "': no \"weight_map\" object");
        std::set<std::string> files;
        for (const auto& [name, file] : map->items()) {
            require(file.is_string(), errc::corrupt, "'", index_path.string(), "': weight_map[\"", name, "\"] is not a file name");
            const std::string& file_name = file.get_ref<const std::string&>();
            require(file_name.find('/') == std::string::npos && file_name.find('\\') == std::string::npos && file_name != ".." && !file_name.empty(),
                    errc::corrupt, "'", index_path.string(), "': shard name '", file_name, "' must be a plain file name");
            files.insert(file_name);
        }
        for (const auto& file : files) shard_paths.push_back(directory / file);
    }

    LlamaWeights weights = LlamaWeights::zeros(config);
    std::set<std::string> loaded;
    for (const auto& shard_path : shard_paths) {
        const SafetensorsFile shard = SafetensorsFile::open(shard_path);
        for (const auto& info : shard.tensors()) {
            const std::string context = nwc::detail::concat("'", shard_path.string(), "': tensor '", info.name, "'");
            if (info.name.ends_with("rotary_emb.inv_freq") || (config.shared_classifier && info.name == "lm_head.weight")) continue;
            require(weights.contains(info.name), errc::unsupported, context, " is not part of a Llama model");
            require(loaded.insert(info.name).second, errc::corrupt, context, " appears in two shards");
            Tensor<float>& target = weights.tensor(info.name);
            require(info.shape == target.shape(), errc::corrupt, context, " has ", LlamaWeights::describe(info.shape), ", config.json implies ",
                    LlamaWeights::describe(target.shape()));
            Tensor<float> values = shard.read_float32(info.name);
            if (const int heads = detail::rope_heads_of(config, info.name); heads > 0) values = permute_rows_from_hf(values.view(), heads);
            target = std::move(values);
        }
    }
    weights.for_each_tensor([&](const std::string& name, const Tensor<float>&, const Shape&) {
        require(loaded.contains(name), errc::corrupt, "HF model '", path.string(), "': tensor '", name, "' is missing");
    });
    return weights;
}

}  // namespace nwc::llm
